"""ONNX Runtime behind the `Backend` contract, for `python -m bench.in_process.backends` only (not served).

The issue asked for ONNX Runtime "only if it clearly beats torch"; this measures it on the same model,
the same tokenization and the same dynamic padding as the cpu backend. Needs `pip install onnxruntime
onnx onnxscript` (not a project dependency: docs/benchmark.md has the figures and why it was dropped).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from serve_app.backends.base import example_inputs, logits_module
from serve_app.batching.buckets import BucketGrid


def available() -> bool:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        return False
    return True


def export_onnx(model: torch.nn.Module, path: Path) -> Path:
    """The cpu backend's module (`logits_module`), exported with dynamic batch and sequence axes."""
    module = logits_module(model.eval())
    batch, seq = torch.export.Dim("batch", min=1, max=1024), torch.export.Dim("seq", min=2, max=512)
    torch.onnx.export(
        module, example_inputs(2, 16), str(path), input_names=["input_ids", "attention_mask"], output_names=["logits"],
        dynamic_shapes={"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}, dynamo=True,
    )
    return path


class OnnxRuntimeBackend:
    def __init__(self, model: torch.nn.Module, grid: BucketGrid, threads: int | None = None) -> None:
        import onnxruntime as ort

        self.grid = grid
        self.name = "onnxruntime"
        self.on_host = True
        self._dir = tempfile.TemporaryDirectory(prefix="onnx-")
        path = export_onnx(model, Path(self._dir.name) / "model.onnx")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        (logits,) = self._session.run(None, {"input_ids": input_ids.numpy().astype(np.int64),
                                             "attention_mask": attention_mask.numpy().astype(np.int64)})
        return torch.from_numpy(logits).float()

    def warm_up(self) -> None:
        for batch_size in (1, self.grid.max_batch_size):
            self.forward(*example_inputs(batch_size, min(32, self.grid.max_seq_len)))


def onnx_backend_factory(config, loaded) -> OnnxRuntimeBackend:
    """A `build_classifier` backend factory: ONNX Runtime on the cpu backend's dynamic grid."""
    return OnnxRuntimeBackend(loaded.model, config.buckets.grid(fixed=False))
