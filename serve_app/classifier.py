"""The model core, free of Ray and HTTP: tokenize once, group by length into buckets, run the backend, label.

The Serve model deployment wraps this; tests and the benchmark call it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from serve_app.backends.base import Backend
from serve_app.buckets import pad_to_bucket, padding_waste, plan_groups
from serve_app.schemas import Prediction


@dataclass(frozen=True)
class BatchReport:
    """What one classify() call did, for metrics and logs."""

    texts: int
    forwards: int
    padded_tokens: int
    real_tokens: int
    bucket_names: tuple[str, ...]
    tokenize_s: float
    model_s: float


def build_classifier(config, loaded, backend_factory=None) -> "Classifier":
    """The one way to go from an AppConfig and a LoadedModel to a ready Classifier (backend warmed up)."""
    from serve_app.backends import create_backend

    backend = (backend_factory or create_backend)(config, loaded)
    backend.warm_up()
    labels = tuple(config.labels) if config.labels else loaded.labels
    return Classifier(loaded.tokenizer, backend, labels, config.buckets.max_waste)


class Classifier:
    def __init__(self, tokenizer, backend: Backend, labels: tuple[str, ...], max_waste: float = 0.5) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.labels = labels
        self.max_waste = max_waste
        self.max_tokens = backend.grid.max_seq_len
        self._filler = [tokenizer.cls_token_id, tokenizer.sep_token_id]
        self._pad_id = tokenizer.pad_token_id or 0

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the largest bucket (as transformers.pipeline truncates)."""
        return self.tokenizer(texts, truncation=True, max_length=self.max_tokens, padding=False)["input_ids"]

    def classify(self, texts: list[str]) -> tuple[list[Prediction], BatchReport]:
        started = time.perf_counter()
        token_ids = self.tokenize(texts)
        lengths = [len(ids) for ids in token_ids]
        groups = plan_groups(lengths, self.backend.grid, self.max_waste)
        tokenized = time.perf_counter()
        probabilities = torch.empty((len(texts), len(self.labels)), dtype=torch.float32)
        for group in groups:
            input_ids, attention_mask = pad_to_bucket(
                [token_ids[i] for i in group.indices], group.bucket, self._pad_id, self._filler
            )
            logits = self.backend.forward(input_ids, attention_mask)
            rows = logits[: len(group.indices)].float()
            probabilities[list(group.indices)] = torch.softmax(rows, dim=-1)
        finished = time.perf_counter()
        scores, classes = probabilities.max(dim=-1)
        predictions = [
            Prediction(label=self.labels[int(c)], score=float(s)) for s, c in zip(scores.tolist(), classes.tolist())
        ]
        padded, real = padding_waste(groups, lengths)
        report = BatchReport(
            texts=len(texts),
            forwards=len(groups),
            padded_tokens=padded,
            real_tokens=real,
            bucket_names=tuple(g.bucket.name for g in groups),
            tokenize_s=tokenized - started,
            model_s=finished - tokenized,
        )
        return predictions, report
