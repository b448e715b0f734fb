"""torch-neuronx (inf2 / trn1): `torch_neuronx.trace` per bucket on the NeuronCores Ray gave this replica
(Ray sets NEURON_RT_VISIBLE_CORES for an actor holding `neuron_cores`).

torch-neuronx comes from AWS's Neuron package index (pip --extra-index-url
https://pip.repos.neuron.amazonaws.com), not PyPI, whose `torch-neuronx` is a placeholder. It is imported
only here, when the backend is built.
"""

from __future__ import annotations

import importlib
import logging
import os

import torch

from serve_app.backends.base import BackendError
from serve_app.backends.compiled import Compiler

logger = logging.getLogger("ray.serve")


def log_visible_cores() -> str | None:
    """Log the NeuronCores this replica's runtime will use. Ray sets NEURON_RT_VISIBLE_CORES itself for an
    actor that holds `neuron_cores` (ray/_private/accelerators/neuron.py), before any user code runs."""
    cores = os.environ.get("NEURON_RT_VISIBLE_CORES")
    logger.info("NeuronCores visible to this replica: %s", cores or "all")
    return cores


def neuronx_compiler(compiler_args: list[str] | None = None) -> Compiler:
    log_visible_cores()
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
