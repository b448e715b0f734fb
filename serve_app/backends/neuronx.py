"""torch-neuronx (inf2 / trn1): `torch_neuronx.trace` per bucket on the NeuronCores Ray gave this replica.

torch-neuronx comes from AWS's Neuron package index (pip --extra-index-url
https://pip.repos.neuron.amazonaws.com), not PyPI, whose `torch-neuronx` is a placeholder. It is imported
only here, when the backend is built.
"""

from __future__ import annotations

import importlib
import os

import torch

from serve_app.backends.base import BackendError
from serve_app.backends.compiled import Compiler


def pin_neuron_cores(core_ids: list[str] | None) -> str | None:
    """Make the Neuron runtime use exactly the cores Ray assigned (must run before the runtime loads)."""
    if core_ids:
        os.environ["NEURON_RT_VISIBLE_CORES"] = ",".join(str(c) for c in core_ids)
    return os.environ.get("NEURON_RT_VISIBLE_CORES")


def ray_assigned_neuron_cores() -> list[str] | None:
    try:
        import ray

        if not ray.is_initialized():
            return None
        return list(ray.get_runtime_context().get_accelerator_ids().get("neuron_cores", [])) or None
    except Exception:  # outside a Ray actor
        return None


def neuronx_compiler(compiler_args: list[str] | None = None) -> Compiler:
    pin_neuron_cores(ray_assigned_neuron_cores())
    try:
        torch_neuronx = importlib.import_module("torch_neuronx")
    except ImportError as exc:
        raise BackendError(
            "backend 'neuronx' needs torch-neuronx from the AWS Neuron index (see docs/neuron.md)"
        ) from exc
    version = getattr(torch_neuronx, "__version__", "unknown")
    args = compiler_args or ["--auto-cast", "matmult", "--auto-cast-type", "bf16"]
    return Compiler(
        backend="neuronx",
        version=f"torch_neuronx-{version}|torch-{torch.__version__}|{' '.join(args)}",
        trace=lambda module, example: torch_neuronx.trace(module, example, compiler_args=args),
        save=lambda module, path: torch.jit.save(module, path),
        load=lambda path: torch.jit.load(path),
    )
