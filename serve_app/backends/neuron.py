"""torch-neuron (inf1, Neuron SDK <= 2.26, torch 1.13, Python 3.10): `torch.neuron.trace` per bucket.

Imported only here. inf1 images install `torch-neuron` and `neuron-cc` from the AWS Neuron index.
"""

from __future__ import annotations

import importlib

import torch

from serve_app.backends.base import BackendError
from serve_app.backends.compiled import Compiler
from serve_app.backends.neuronx import log_visible_cores


def neuron_compiler() -> Compiler:
    log_visible_cores()
    try:
        torch_neuron = importlib.import_module("torch_neuron")  # registers torch.neuron
    except ImportError as exc:
        raise BackendError("backend 'neuron' needs torch-neuron (inf1 images only; see docs/neuron.md)") from exc
    version = getattr(torch_neuron, "__version__", "unknown")
    return Compiler(
        backend="neuron",
        version=f"torch_neuron-{version}|torch-{torch.__version__}",
        trace=lambda module, example: torch_neuron.trace(module, example_inputs=list(example)),
        save=lambda module, path: torch.jit.save(module, path),
        load=lambda path: torch.jit.load(path),
    )
