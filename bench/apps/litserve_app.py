"""The LitServe peer: the same exported model behind LitServe, as its docs set up batching on a CPU.

    bench/.venvs/litserve/bin/python bench/apps/litserve_app.py MODEL_DIR PORT [DTYPE]

Runs in its own virtualenv (bench/peers.py creates it). Two worker processes of one torch thread each
(one per core), dynamic batching of up to 32 requests with a 5 ms window; the body and answer are this
project's (`{"text": ...}` -> `[{"label", "score"}]`).
"""

import sys

import litserve as ls
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class SentimentAPI(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        dtype = getattr(torch, sys.argv[3] if len(sys.argv) > 3 else "float32")
        self.tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
        self.model = AutoModelForSequenceClassification.from_pretrained(sys.argv[1], dtype=dtype).eval()
        self.labels = self.model.config.id2label

    def decode_request(self, request):
        return request["text"]

    def predict(self, texts):
        inputs = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt")
        with torch.inference_mode():
            probabilities = torch.softmax(self.model(**inputs).logits.float(), dim=-1)
        scores, classes = probabilities.max(dim=-1)
        return [{"label": self.labels[int(c)], "score": float(s)} for s, c in zip(scores, classes)]

    def encode_response(self, output):
        return [output]


if __name__ == "__main__":
    api = SentimentAPI(max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2)
    server.run(port=int(sys.argv[2]), host="127.0.0.1", generate_client_file=False)
