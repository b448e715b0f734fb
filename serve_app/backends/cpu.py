"""Eager PyTorch on the CPU, any shape (the grid is dynamic); optional dynamic int8 quantization."""

from __future__ import annotations

import torch

from serve_app.backends.base import example_inputs, logits_module
from serve_app.buckets import BucketGrid


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per batch)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class CpuBackend:
    name = "cpu"

    def __init__(self, model: torch.nn.Module, grid: BucketGrid, quantize: str = "none") -> None:
        module = logits_module(model.eval())  # reads the float weights, so before quantization
        self._module = quantize_int8(module).eval() if quantize == "int8" else module
        self.grid = grid

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self._module(input_ids, attention_mask)

    def warm_up(self) -> None:
        for batch_size in (1, self.grid.max_batch_size):
            self.forward(*example_inputs(batch_size, min(32, self.grid.max_seq_len)))
