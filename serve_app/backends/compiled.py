"""Backends that run ahead-of-time compiled modules, one per shape bucket, with an on-disk compile cache.

`jit`, `neuronx` and `neuron` differ only in their `Compiler` (how a module is traced, saved and loaded);
the bucket handling, the cache and its manifest are shared here.

Cache layout (a local directory, a mounted volume, or a directory synced from S3 before start):

    DIR/manifest.json             {"entries": {"<key>": {"file": ..., "bucket": ..., ...}}}
    DIR/<backend>-<bucket>-<key[:12]>.pt   one artifact per bucket

The key hashes the model weights' sha256, backend, compiler version and bucket shape, so a new model or
compiler never loads a stale artifact.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from serve_app.backends.base import BackendError, example_inputs, logits_module
from serve_app.buckets import Bucket, BucketGrid

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"


@dataclass(frozen=True)
class Compiler:
    backend: str
    version: str
    trace: Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.nn.Module]
    save: Callable[[torch.nn.Module, str], None]
    load: Callable[[str], torch.nn.Module]


def cache_key(weights_sha256: str, compiler: Compiler, bucket: Bucket) -> str:
    material = json.dumps(
        {"weights": weights_sha256, "backend": compiler.backend, "compiler": compiler.version, "bucket": bucket.name},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


class CompileCache:
    """A directory of compiled artifacts plus a manifest; safe for one writer per process."""

    _lock = threading.Lock()

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser()

    def _read_manifest(self) -> dict:
        path = self.directory / MANIFEST
        if not path.is_file():
            return {"entries": {}}
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            logger.warning("compile cache manifest %s is unreadable; recompiling", path)
            return {"entries": {}}

    def lookup(self, key: str) -> Path | None:
        entry = self._read_manifest()["entries"].get(key)
        if not entry:
            return None
        path = self.directory / entry["file"]
        return path if path.is_file() else None

    def store(self, key: str, module: torch.nn.Module, compiler: Compiler, bucket: Bucket, weights_sha256: str) -> Path:
        with self._lock:
            self.directory.mkdir(parents=True, exist_ok=True)
            file_name = f"{compiler.backend}-{bucket.name}-{key[:12]}.pt"
            final = self.directory / file_name
            with tempfile.NamedTemporaryFile(dir=self.directory, suffix=".tmp", delete=False) as tmp:
                tmp_path = tmp.name
            compiler.save(module, tmp_path)
            os.replace(tmp_path, final)
            manifest = self._read_manifest()
            manifest["entries"][key] = {
                "file": file_name,
                "backend": compiler.backend,
                "compiler_version": compiler.version,
                "bucket": {"batch_size": bucket.batch_size, "seq_len": bucket.seq_len},
                "weights_sha256": weights_sha256,
            }
            manifest_tmp = self.directory / (MANIFEST + ".tmp")
            manifest_tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(manifest_tmp, self.directory / MANIFEST)
            return final


@dataclass
class CompileStats:
    compiled: int = 0
    loaded: int = 0


class CompiledBackend:
    """Runs one compiled module per bucket of a fixed grid."""

    def __init__(
        self,
        model: torch.nn.Module,
        grid: BucketGrid,
        compiler: Compiler,
        weights_sha256: str,
        cache_dir: str | Path | None = None,
    ) -> None:
        if not grid.fixed:
            raise BackendError(f"the {compiler.backend} backend needs fixed buckets")
        self.name = compiler.backend
        self.grid = grid
        self.compiler = compiler
        self.stats = CompileStats()
        self._modules: dict[Bucket, torch.nn.Module] = {}
        cache = CompileCache(cache_dir) if cache_dir else None
        wrapped = logits_module(model.eval())
        for bucket in grid.all():
            self._modules[bucket] = self._load_or_compile(wrapped, bucket, cache, weights_sha256)

    def _load_or_compile(self, wrapped, bucket: Bucket, cache: CompileCache | None, weights_sha256: str):
        key = cache_key(weights_sha256, self.compiler, bucket)
        if cache is not None and (path := cache.lookup(key)) is not None:
            try:
                module = self.compiler.load(str(path))
                self.stats.loaded += 1
                return module
            except Exception:  # a corrupt artifact is recompiled, never fatal
                logger.warning("compiled artifact %s failed to load; recompiling", path, exc_info=True)
        try:
            with torch.inference_mode(False), torch.no_grad():
                module = self.compiler.trace(wrapped, example_inputs(bucket.batch_size, bucket.seq_len))
        except Exception as exc:
            raise BackendError(f"{self.compiler.backend}: compiling bucket {bucket.name} failed: {exc}") from exc
        self.stats.compiled += 1
        if cache is not None:
            cache.store(key, module, self.compiler, bucket, weights_sha256)
        return module

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        bucket = Bucket(int(input_ids.shape[0]), int(input_ids.shape[1]))
        module = self._modules.get(bucket)
        if module is None:
            raise BackendError(f"no compiled module for shape {bucket.name}")
        with torch.no_grad():
            return module(input_ids, attention_mask)

    def warm_up(self) -> None:
        for bucket in self.grid.all():
            self.forward(*example_inputs(bucket.batch_size, bucket.seq_len))
