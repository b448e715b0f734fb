"""TorchScript per bucket on the CPU: the same bucket path as Neuron, and useful on its own."""

from __future__ import annotations

import torch

from serve_app.backends.compiled import Compiler


def _trace(module: torch.nn.Module, example: tuple[torch.Tensor, torch.Tensor]) -> torch.nn.Module:
    traced = torch.jit.trace(module, example, check_trace=False)
    return torch.jit.freeze(traced.eval())


def jit_compiler() -> Compiler:
    return Compiler(
        backend="jit",
        version=f"torch-{torch.__version__}",
        trace=_trace,
        save=lambda module, path: torch.jit.save(module, path),
        load=lambda path: torch.jit.load(path, map_location="cpu"),
        on_host=True,
    )
