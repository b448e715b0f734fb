"""The model core, free of Ray and HTTP: tokenize once, group by length into buckets, run the backend, label.

Labels, the score function and the token window follow what `transformers.pipeline("sentiment-analysis")`
derives from the model's config, so answers match the pipeline's with `truncation=True`.

The Serve model deployment wraps this; tests and the benchmark call it directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch

from serve_app.backends.base import Backend
from serve_app.batching.buckets import Group, pad_to_bucket, padding_waste, plan_groups
from serve_app.api.schemas import Prediction
from serve_app.model.window import WindowEncoder

ScoreFunction = Literal["softmax", "sigmoid"]


class ModelMismatch(ValueError):
    """The configuration does not fit the model (label count, score function): a start-up error."""


def score_function(model_config) -> ScoreFunction:
    """What transformers.pipeline applies to the logits: sigmoid for one logit or multi-label models,
    softmax for single-label models of several logits. Regression heads have no label to give."""
    problem = getattr(model_config, "problem_type", None)
    if problem == "regression":
        raise ModelMismatch("the model is a regression head (problem_type 'regression'): it has no labels to classify into")
    if problem == "multi_label_classification" or model_config.num_labels == 1:
        return "sigmoid"
    return "softmax"


def token_window(grid_max: int, tokenizer, model_config) -> int:
    """Tokens kept per text: the largest bucket, at most what the tokenizer and position embeddings allow
    (the pipeline's `truncation=True` cuts at the tokenizer's model_max_length)."""
    limits = [grid_max, getattr(tokenizer, "model_max_length", None), getattr(model_config, "max_position_embeddings", None)]
    return min(int(limit) for limit in limits if limit)


@dataclass(frozen=True)
class PreparedBatch:
    """A batch on the host, ready for the backend: one padded (input_ids, attention_mask) per bucket."""

    texts: int
    groups: list[Group]
    inputs: list[tuple[torch.Tensor, torch.Tensor]]
    lengths: list[int]
    prepare_s: float


@dataclass(frozen=True)
class BatchReport:
    """What one classify() call did, for metrics and logs."""

    texts: int
    forwards: int
    padded_tokens: int
    real_tokens: int
    bucket_names: tuple[str, ...]
    tokenize_s: float  # tokenize, plan and pad (the host's part before the forwards)
    model_s: float  # the forwards


def build_classifier(config, loaded, backend_factory=None) -> "Classifier":
    """The one way to go from an AppConfig and a LoadedModel to a ready Classifier (backend warmed up)."""
    from serve_app.backends import create_backend

    labels = tuple(config.labels) if config.labels else loaded.labels
    model_config = loaded.model.config
    if len(labels) != model_config.num_labels:  # before any compile: a clear error, not a shape error per request
        raise ModelMismatch(
            f"{len(labels)} label names ({', '.join(labels)}) for a model with {model_config.num_labels} output(s): "
            "set `labels` to one name per output, in class-id order"
        )
    scoring = score_function(model_config)
    backend = (backend_factory or create_backend)(config, loaded)
    backend.warm_up()
    return Classifier(loaded.tokenizer, backend, labels, config.buckets.max_waste, scoring,
                      token_window(backend.grid.max_seq_len, loaded.tokenizer, model_config))


class Classifier:
    def __init__(self, tokenizer, backend: Backend, labels: tuple[str, ...], max_waste: float = 0.5,
                 scoring: ScoreFunction = "softmax", max_tokens: int | None = None) -> None:
        self.tokenizer = tokenizer
        self.backend = backend
        self.labels = labels
        self.max_waste = max_waste
        self.scoring = scoring
        self.max_tokens = max_tokens or token_window(backend.grid.max_seq_len, tokenizer, None)
        self.encode_window = WindowEncoder(tokenizer, self.max_tokens)
        self._filler = [tokenizer.cls_token_id, tokenizer.sep_token_id]
        self._pad_id = tokenizer.pad_token_id or 0

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated to the window (as transformers.pipeline truncates), reading only
        the part of a long text the window can use (serve_app/model/window.py)."""
        return self.encode_window(texts)

    def prepare(self, texts: list[str]) -> PreparedBatch:
        """The host's part before the forwards: tokenize once, cut by length into buckets, pad each."""
        started = time.perf_counter()
        token_ids = self.tokenize(texts)
        lengths = [len(ids) for ids in token_ids]
        groups = plan_groups(lengths, self.backend.grid, self.max_waste)
        inputs = [pad_to_bucket([token_ids[i] for i in g.indices], g.bucket, self._pad_id, self._filler) for g in groups]
        return PreparedBatch(len(texts), groups, inputs, lengths, time.perf_counter() - started)

    def run_forwards(self, batch: PreparedBatch) -> list[torch.Tensor]:
        """The backend's part: one forward per bucket (on an accelerator, the device's time)."""
        return [self.backend.forward(input_ids, attention_mask) for input_ids, attention_mask in batch.inputs]

    def label(self, batch: PreparedBatch, logits: list[torch.Tensor], model_s: float) -> tuple[list[Prediction], BatchReport]:
        """The host's part after the forwards: scores and labels, in the texts' order."""
        probabilities = torch.empty((batch.texts, len(self.labels)), dtype=torch.float32)
        for group, group_logits in zip(batch.groups, logits):
            rows = group_logits[: len(group.indices)].float()
            probabilities[list(group.indices)] = torch.softmax(rows, dim=-1) if self.scoring == "softmax" else torch.sigmoid(rows)
        scores, classes = probabilities.max(dim=-1)
        labels = self.labels
        predictions = [Prediction(label=labels[c], score=s) for s, c in zip(scores.tolist(), classes.tolist())]
        padded, real = padding_waste(batch.groups, batch.lengths)
        report = BatchReport(
            texts=batch.texts,
            forwards=len(batch.groups),
            padded_tokens=padded,
            real_tokens=real,
            bucket_names=tuple(g.bucket.name for g in batch.groups),
            tokenize_s=batch.prepare_s,
            model_s=model_s,
        )
        return predictions, report

    def classify(self, texts: list[str]) -> tuple[list[Prediction], BatchReport]:
        """prepare, run_forwards and label in one call (what a host-CPU replica, tests and benches run)."""
        batch = self.prepare(texts)
        started = time.perf_counter()
        logits = self.run_forwards(batch)
        return self.label(batch, logits, time.perf_counter() - started)
