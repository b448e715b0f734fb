"""The seed article's app.py, as written there (Flask + transformers.pipeline, one request at a time),
except that the model is the directory `python -m serve_app.model.export DIR` wrote (same weights as
ours) instead of the pipeline's hub default.

    python bench/apps/seed_app.py DIR PORT
"""

import sys

from flask import Flask, jsonify, request
from transformers import pipeline

app = Flask(__name__)
sentiment_model = pipeline("sentiment-analysis", model=sys.argv[1])


@app.route("/analyze", methods=["POST"])
def analyze():
    data = request.get_json()
    result = sentiment_model(data["text"])
    return jsonify(result)


if __name__ == "__main__":
    app.run(host="127.0.0.1", port=int(sys.argv[2]))
