"""Backend registry: `create_backend(config, loaded)` builds the backend the config names."""

from __future__ import annotations

import importlib.util

from serve_app.backends.base import Backend, BackendError
from serve_app.config import AppConfig
from serve_app.model.source import LoadedModel

__all__ = ["Backend", "BackendError", "create_backend", "resolve_backend_name"]


def resolve_backend_name(name: str) -> str:
    """'auto' becomes neuronx or neuron where that runtime is installed, else cpu."""
    if name != "auto":
        return name
    if importlib.util.find_spec("torch_neuronx") is not None:
        return "neuronx"
    if importlib.util.find_spec("torch_neuron") is not None:
        return "neuron"
    return "cpu"


def create_backend(config: AppConfig, loaded: LoadedModel) -> Backend:
    name = resolve_backend_name(config.backend)
    if name == "cpu":
        from serve_app.backends.cpu import CpuBackend

        return CpuBackend(loaded.model, config.buckets.grid(fixed=False), quantize=config.quantize, dtype=config.dtype)
    from serve_app.backends.compiled import CompiledBackend

    if name == "jit":
        from serve_app.backends.jit import jit_compiler as make_compiler
    elif name == "neuronx":
        from serve_app.backends.neuronx import neuronx_compiler as make_compiler
    elif name == "neuron":
        from serve_app.backends.neuron import neuron_compiler as make_compiler
    else:
        raise BackendError(f"unknown backend {name!r}")
    return CompiledBackend(
        loaded.model,
        config.buckets.grid(fixed=True),
        make_compiler(),
        loaded.weights_sha256,
        cache_dir=config.compile_cache_dir,
        cache_uri=config.compile_cache_uri,
    )
