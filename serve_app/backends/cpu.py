"""Eager PyTorch on the CPU, any shape (the grid is dynamic); optional int8 quantization or bfloat16."""

from __future__ import annotations

import copy
import platform
from pathlib import Path

import torch

from serve_app.backends.base import example_inputs, logits_module
from serve_app.batching.buckets import BucketGrid

#: CPU feature flags (as /proc/cpuinfo names them) that mean bf16 matrix math in hardware.
NATIVE_BF16_FLAGS = {"x86_64": {"avx512_bf16", "amx_bf16"}, "aarch64": {"bf16"}}


def has_native_bf16(cpuinfo: str, machine: str) -> bool:
    """Whether /proc/cpuinfo text lists a bf16 matrix-math flag for this architecture."""
    wanted = NATIVE_BF16_FLAGS.get(machine, set())
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and wanted & set(value.split()):
            return True
    return False


#: The cpu backend's float precisions by config name.
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _dtype_name(dtype: str) -> str:
    """'auto' is 'bfloat16' where the CPU does bf16 natively (Linux /proc/cpuinfo), else 'float32'."""
    if dtype != "auto":
        return dtype
    cpuinfo = Path("/proc/cpuinfo")
    native = cpuinfo.exists() and has_native_bf16(cpuinfo.read_text(errors="replace"), platform.machine())
    return "bfloat16" if native else "float32"


def resolve_dtype(dtype: str) -> torch.dtype:
    """The torch dtype a `dtype` setting runs in ('auto' resolved for this CPU)."""
    return DTYPES[_dtype_name(dtype)]


def resolve_precision(quantize: str, dtype: str) -> str:
    """What the cpu backend runs: 'int8' (quantize wins: `dtype: auto` with `quantize: int8` is int8),
    else the resolved dtype, 'bfloat16' or 'float32'."""
    return "int8" if quantize == "int8" else _dtype_name(dtype)


class PackedLinear(torch.nn.Module):
    """nn.Linear with its weight reordered once, at load, into oneDNN's blocked layout.

    Eager torch reorders a float weight for oneDNN on every call: at the small batches a replica runs
    under light load that reorder is most of a forward (one seed sentence 8.9 -> 6.5 ms in bfloat16 on
    one thread here; 32 sentences 58 -> 49 ms). The same ops torch.compile's CPU freezing emits
    (`mkldnn._reorder_linear_weight`, `mkldnn._linear_pointwise`), without its minute of compiling.
    Hand-written because torch has no public eager API for it; it stays while `python -m bench.in_process.packed_linears`
    (the A/B against eager nn.Linear) shows it pays, and `pack_linears` falls back to eager where the ops are missing.
    """

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")


def pack_linears(module: torch.nn.Module) -> torch.nn.Module:
    """`module` with every nn.Linear replaced by a PackedLinear. The module tree is copied (its other
    tensors shared, not copied), so the caller's model is left as it was. Where torch has no oneDNN,
    `module` itself is returned (it then runs as eager torch)."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return module
    shared = {id(t): t for t in list(module.parameters()) + list(module.buffers())}
    packed = copy.deepcopy(module, shared)
    for parent in list(packed.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is torch.nn.Linear:
                setattr(parent, name, PackedLinear(child))
    return packed


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Dynamic int8 quantization of every Linear layer (weights int8, activations quantized per batch)."""
    from torch.ao.quantization import quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


class CpuBackend:
    """`name` is 'cpu', or 'cpu-int8' / 'cpu-bf16' (shown by GET /healthz) when the weights are converted.

    Quantization and the bfloat16 cast convert the model in place: load a fresh one per backend."""

    def __init__(self, model: torch.nn.Module, grid: BucketGrid, quantize: str = "none", dtype: str = "float32") -> None:
        module = logits_module(model.eval())  # reads the float weights, so before quantization
        precision = resolve_precision(quantize, dtype)
        if precision == "int8":
            module = quantize_int8(module)
        else:
            module = pack_linears(module.to(DTYPES[precision]))
        self._module = module.eval()
        self.name = {"float32": "cpu", "bfloat16": "cpu-bf16", "int8": "cpu-int8"}[precision]
        self.grid = grid
        self.on_host = True

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # Logits leave in float32 whatever the compute dtype (softmax and scores stay full precision).
        return self._module(input_ids, attention_mask).float()

    def warm_up(self) -> None:
        for batch_size in (1, self.grid.max_batch_size):
            self.forward(*example_inputs(batch_size, min(32, self.grid.max_seq_len)))
