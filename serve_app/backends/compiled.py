"""Backends that run ahead-of-time compiled modules, one per shape bucket, with an on-disk compile cache.

`jit`, `neuronx` and `neuron` differ only in their `Compiler` (how a module is traced, saved and loaded);
the bucket handling, the cache and its manifest are shared here.

Cache layout (a local directory: the pod's emptyDir, or a mounted volume):

    DIR/manifest.json             {"entries": {"<key>": {"file": ..., "sha256": ..., "bucket": ..., ...}}}
    DIR/<backend>-<bucket>-<key[:12]>.pt   one artifact per bucket
    DIR/.locks/                   one lock file per key, and one for the manifest

The key hashes the model weights' sha256, backend, compiler version and bucket shape, so a new model or
compiler never loads a stale artifact. Processes sharing DIR (two replicas in one pod) coordinate with file
locks: one compiles a bucket while the others wait, then load it. An artifact is loaded only when its bytes
hash to the manifest's sha256 and its file lies inside DIR. With a shared store (`compile_cache_uri`,
serve_app/backends/artifact_store.py) a missing bucket is fetched before it is compiled, and what is
compiled is pushed, so each model version is compiled once per compiler version, not once per pod.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from serve_app.backends.artifact_store import ArtifactStore
from serve_app.backends.base import BackendError, example_inputs, logits_module
from serve_app.batching.buckets import Bucket, BucketGrid
from serve_app.model.source import sha256_file

logger = logging.getLogger(__name__)
MANIFEST = "manifest.json"
LOCKS = ".locks"
#: What a manifest entry's file may be called: a plain name inside the cache directory.
ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*\.pt$")


@dataclass(frozen=True)
class Compiler:
    backend: str
    version: str
    trace: Callable[[torch.nn.Module, tuple[torch.Tensor, torch.Tensor]], torch.nn.Module]
    save: Callable[[torch.nn.Module, str], None]
    load: Callable[[str], torch.nn.Module]
    #: Whether the compiled modules compute on the host CPU (jit) or on an accelerator (Backend.on_host).
    on_host: bool = False


def artifact_meta(compiler: Compiler, bucket: Bucket, weights_sha256: str) -> dict:
    """What a manifest entry records besides the file and its sha256 (all of it is in the cache key)."""
    return {
        "backend": compiler.backend,
        "compiler_version": compiler.version,
        "bucket": {"batch_size": bucket.batch_size, "seq_len": bucket.seq_len},
        "weights_sha256": weights_sha256,
    }


def cache_key(weights_sha256: str, compiler: Compiler, bucket: Bucket) -> str:
    material = json.dumps(
        {"weights": weights_sha256, "backend": compiler.backend, "compiler": compiler.version, "bucket": bucket.name},
        sort_keys=True,
    )
    return hashlib.sha256(material.encode()).hexdigest()


class CompileCache:
    """A directory of compiled artifacts plus a manifest; safe for concurrent processes on one node."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory).expanduser().resolve()

    @contextlib.contextmanager
    def _flock(self, name: str) -> Iterator[None]:
        locks = self.directory / LOCKS
        locks.mkdir(parents=True, exist_ok=True)
        with open(locks / f"{name}.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def locked(self, key: str):
        """Held while a key is looked up, fetched or compiled: one process does the work, the others wait."""
        return self._flock(key[:32])

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
        """The artifact for `key` if the manifest names one inside DIR whose bytes match its sha256."""
        entry = self._read_manifest()["entries"].get(key)
        if not entry:
            return None
        name = str(entry.get("file", ""))
        if not ARTIFACT_NAME.match(name):
            logger.warning("compile cache: manifest entry %s names %r, not a file in %s; ignored", key[:12], name, self.directory)
            return None
        path = self.directory / name
        if not path.is_file():
            return None
        if entry.get("sha256") != sha256_file(path):
            logger.warning("compile cache: %s does not match its manifest sha256; recompiling", path)
            return None
        return path

    def store(self, key: str, module: torch.nn.Module, compiler: Compiler, bucket: Bucket, weights_sha256: str) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_path = tempfile.mkstemp(dir=self.directory, suffix=".tmp")
        os.close(fd)
        compiler.save(module, tmp_path)
        return self.adopt(key, Path(tmp_path), compiler, bucket, weights_sha256)

    def adopt(self, key: str, artifact: Path, compiler: Compiler, bucket: Bucket, weights_sha256: str) -> Path:
        """Move a finished artifact (compiled here, or fetched and verified) into the cache and record it in the
        manifest. Names and metadata come from this process's compiler and bucket, never from a remote file."""
        final = self.directory / f"{compiler.backend}-{bucket.name}-{key[:12]}.pt"
        entry = {**artifact_meta(compiler, bucket, weights_sha256), "file": final.name, "sha256": sha256_file(artifact)}
        os.replace(artifact, final)
        with self._flock("manifest"):
            manifest = self._read_manifest()
            manifest["entries"][key] = entry
            fd, manifest_tmp = tempfile.mkstemp(dir=self.directory, suffix=".manifest")
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(manifest_tmp, self.directory / MANIFEST)
        return final

    def entry(self, key: str) -> dict:
        return self._read_manifest()["entries"][key]


@dataclass
class CompileStats:
    compiled: int = 0
    loaded: int = 0
    fetched: int = 0
    pushed: int = 0


class CompiledBackend:
    """Runs one compiled module per bucket of a fixed grid."""

    def __init__(
        self,
        model: torch.nn.Module,
        grid: BucketGrid,
        compiler: Compiler,
        weights_sha256: str,
        cache_dir: str | Path | None = None,
        cache_uri: str | None = None,
    ) -> None:
        if not grid.fixed:
            raise BackendError(f"the {compiler.backend} backend needs fixed buckets")
        self.name = compiler.backend
        self.grid = grid
        self.on_host = compiler.on_host
        self.compiler = compiler
        self.stats = CompileStats()
        self._modules: dict[Bucket, torch.nn.Module] = {}
        cache = CompileCache(cache_dir) if cache_dir else None
        # AppConfig refuses compile_cache_uri without compile_cache_dir (the store is fetched into the dir).
        store = ArtifactStore.open(cache_uri) if cache_uri and cache is not None else None
        wrapped = logits_module(model.eval())
        for bucket in grid.all():
            self._modules[bucket] = self._load_or_compile(wrapped, bucket, cache, store, weights_sha256)

    def _load_or_compile(self, wrapped, bucket: Bucket, cache: CompileCache | None, store: ArtifactStore | None,
                         weights_sha256: str):
        key = cache_key(weights_sha256, self.compiler, bucket)
        if cache is None:
            return self._compile(wrapped, bucket)
        with cache.locked(key):  # another process on this node may be compiling the same bucket: wait for it
            path = cache.lookup(key)
            if path is None and store is not None and (fetched := store.fetch(key, cache.directory)) is not None:
                path = cache.adopt(key, fetched, self.compiler, bucket, weights_sha256)
                self.stats.fetched += 1
            if path is not None:
                try:
                    module = self.compiler.load(str(path))
                    self.stats.loaded += 1
                    return module
                except Exception:  # a corrupt artifact is recompiled, never fatal
                    logger.warning("compiled artifact %s failed to load; recompiling", path, exc_info=True)
            module = self._compile(wrapped, bucket)
            path = cache.store(key, module, self.compiler, bucket, weights_sha256)
            if store is not None and store.push(key, path, cache.entry(key)):
                self.stats.pushed += 1
            return module

    def _compile(self, wrapped, bucket: Bucket):
        try:
            with torch.inference_mode(False), torch.no_grad():
                module = self.compiler.trace(wrapped, example_inputs(bucket.batch_size, bucket.seq_len))
        except Exception as exc:
            raise BackendError(f"{self.compiler.backend}: compiling bucket {bucket.name} failed: {exc}") from exc
        self.stats.compiled += 1
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
