"""The one contract every inference backend implements.

A backend runs forward on tensors that the model deployment already tokenized, grouped and padded to one
of `grid`'s buckets, and returns logits. It knows nothing of HTTP, batching or labels.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from serve_app.batching.buckets import BucketGrid
from serve_app.model.pooling import MeanPooledLogits, has_mean_pooling


class BackendError(RuntimeError):
    """A backend failed to load, compile or run."""


@runtime_checkable
class Backend(Protocol):
    #: Registry name ("cpu", "jit", "neuronx", "neuron").
    name: str
    #: Shapes this backend runs: fixed (compiled) buckets, or a dynamic grid (any shape up to the maximum).
    grid: BucketGrid
    #: True when forward computes on the host CPU (cpu, jit): the model deployment runs it on the replica's
    #: event loop, since the replica's core has nothing else to do meanwhile. False when it waits on an
    #: accelerator (neuronx, neuron): it runs on a thread, so the replica keeps taking calls during it.
    on_host: bool

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits of shape (batch, num_labels) for a batch already padded to a bucket of `grid`."""
        ...

    def warm_up(self) -> None:
        """Run one forward per bucket so the first request pays no compile or allocation cost."""
        ...


class LogitsOnly(torch.nn.Module):
    """Wraps a Hugging Face classifier so it takes positional tensors and returns a tensor (traceable)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=False)[0]


def logits_module(model: torch.nn.Module) -> torch.nn.Module:
    """The traceable module a backend runs: a mean-pooled classifier (serve_app/model/pooling.py) evaluates its
    pooling layer at [CLS] only; any other classifier runs as is."""
    return (MeanPooledLogits(model) if has_mean_pooling(model) else LogitsOnly(model)).eval()


def example_inputs(batch_size: int, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic inputs of a bucket's shape, used for tracing and warm-up."""
    input_ids = torch.full((batch_size, seq_len), 1000, dtype=torch.long)
    input_ids[:, 0] = 101  # [CLS]
    input_ids[:, -1] = 102  # [SEP]
    return input_ids, torch.ones((batch_size, seq_len), dtype=torch.long)
