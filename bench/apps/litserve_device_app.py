"""The LitServe peer given this service's stand-in device (bench/device_time.py), for `bench.device_mode`.

    PYTHONPATH=. bench/.venvs/litserve/bin/python bench/apps/litserve_device_app.py MODEL_DIR PORT

As bench/apps/litserve_app.py (two workers, one per core, standing for the two NeuronCores as this service's two
model replicas do; dynamic batching of up to 32 requests with a 5 ms window), but the model costs no CPU: the
real tokenizer runs, then the worker sleeps for the NeuronCore time of the padded forwards (GIL released) and
answers with zero logits, as the service's device-time backend does. Bodies of one text or of a list.
"""

import sys
import time

import litserve as ls
import torch
from transformers import AutoConfig, AutoTokenizer

from bench.device_time import padded_batches_seconds


class DeviceTimeAPI(ls.LitAPI):
    def setup(self, device):
        torch.set_num_threads(1)
        self.tokenizer = AutoTokenizer.from_pretrained(sys.argv[1])
        config = AutoConfig.from_pretrained(sys.argv[1])
        self.labels = config.id2label
        self.num_labels = len(self.labels)

    def decode_request(self, request):
        texts = request["text"]
        return [texts] if isinstance(texts, str) else texts

    def predict(self, requests):
        flat = [text for texts in requests for text in texts]
        counts = [len(ids) for ids in self.tokenizer(flat, truncation=True)["input_ids"]]
        time.sleep(padded_batches_seconds(counts))
        probabilities = torch.softmax(torch.zeros((len(flat), self.num_labels)), dim=-1)
        scores, classes = probabilities.max(dim=-1)
        answers = [{"label": self.labels[int(c)], "score": float(s)} for s, c in zip(scores, classes)]
        out, start = [], 0
        for texts in requests:
            out.append(answers[start:start + len(texts)])
            start += len(texts)
        return out

    def encode_response(self, output):
        return output


if __name__ == "__main__":
    api = DeviceTimeAPI(max_batch_size=32, batch_timeout=0.005)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=2)
    server.run(port=int(sys.argv[2]), host="127.0.0.1", generate_client_file=False)
