"""Neuron code paths on the CPU, with an injected stand-in compiler.

The stand-in modules (tests/standin: `torch_neuronx` / `torch_neuron`, whose `trace` is torch.jit.trace) are
registered under those names by these tests only (never shipped as a fallback); the `cluster` tier puts the
same modules on its Ray workers' path. So these tests exercise our bucket planning, padding, compile cache,
manifest, invalidation and core pinning on the real code path of the neuronx/neuron backends, but NOT the
Neuron compiler (neuronx-cc / neuron-cc), its numerics (bf16 auto-cast), the Neuron runtime, or NeuronCore
placement on real inf1/inf2 hardware.
"""

from __future__ import annotations

import importlib
import json
import sys

import pytest
import torch

from serve_app.backends import BackendError, create_backend, resolve_backend_name
from serve_app.model.classifier import Classifier
from serve_app.config import AppConfig
from serve_app.model.source import load_classifier

pytestmark = pytest.mark.neuron

BUCKETS = {"batch_sizes": [1, 4, 8], "seq_lens": [16, 64]}
TEXTS = ["good", "a long and winding review that goes on , and on , about nothing much at all", "bad !", "meh"] * 3


class StandIn:
    """A stand-in module from tests/standin, registered under its SDK name, with its compilations counted."""

    def __init__(self, name: str, monkeypatch) -> None:
        self.module = importlib.import_module(f"tests.standin.{name}")
        self.calls: list[tuple[int, ...]] = []
        trace = self.module.trace

        def counted(module, *args, **kwargs):
            example = args[0] if args else kwargs["example_inputs"]
            self.calls.append(tuple(example[0].shape))
            return trace(module, *args, **kwargs)

        monkeypatch.setattr(self.module, "trace", counted)
        monkeypatch.setitem(sys.modules, name, self.module)


@pytest.fixture
def neuronx(monkeypatch):
    monkeypatch.delenv("NEURON_RT_VISIBLE_CORES", raising=False)
    return StandIn("torch_neuronx", monkeypatch)


@pytest.fixture
def neuron_inf1(monkeypatch):
    return StandIn("torch_neuron", monkeypatch)


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_classifier(str(tiny_model_dir))


def build(loaded, backend, cache_dir, sha=None, **extra):
    config = AppConfig(model="x", backend=backend, compile_cache_dir=str(cache_dir), buckets=BUCKETS, **extra)
    if sha is not None:
        loaded = type(loaded)(**{**loaded.__dict__, "weights_sha256": sha})
    return create_backend(config, loaded)


def test_one_artifact_per_bucket_and_manifest(neuronx, loaded, tmp_path):
    """Does not prove: that neuronx-cc accepts these graphs or what its artifacts weigh."""
    backend = build(loaded, "neuronx", tmp_path)
    artifacts = sorted(p.name for p in tmp_path.glob("*.pt"))
    assert len(artifacts) == 6 and all(a.startswith("neuronx-b") for a in artifacts)
    manifest = json.loads((tmp_path / "manifest.json").read_text())["entries"]
    assert len(manifest) == 6
    entry = next(iter(manifest.values()))
    assert entry["weights_sha256"] == loaded.weights_sha256 and entry["backend"] == "neuronx"
    assert "standin-1.0" in entry["compiler_version"]
    assert backend.stats.compiled == 6 and sorted(neuronx.calls) == sorted({(b, s) for b in (1, 4, 8) for s in (16, 64)})


def test_cache_hits_skip_compilation(neuronx, loaded, tmp_path):
    """Does not prove: that the Neuron runtime loads artifacts compiled on another instance."""
    build(loaded, "neuronx", tmp_path)
    neuronx.calls.clear()
    again = build(loaded, "neuronx", tmp_path)
    assert neuronx.calls == [] and again.stats.loaded == 6 and again.stats.compiled == 0


def test_changed_model_hash_invalidates(neuronx, loaded, tmp_path):
    """Does not prove: anything about the Neuron compiler; only our cache keys."""
    build(loaded, "neuronx", tmp_path)
    neuronx.calls.clear()
    other = build(loaded, "neuronx", tmp_path, sha="f" * 64)
    assert other.stats.compiled == 6 and len(neuronx.calls) == 6
    assert len(json.loads((tmp_path / "manifest.json").read_text())["entries"]) == 12


def test_corrupt_artifact_is_recompiled(neuronx, loaded, tmp_path):
    """Does not prove: Neuron runtime behaviour on a truncated NEFF."""
    build(loaded, "neuronx", tmp_path)
    next(tmp_path.glob("*.pt")).write_bytes(b"garbage")
    neuronx.calls.clear()
    again = build(loaded, "neuronx", tmp_path)
    assert again.stats.compiled == 1 and again.stats.loaded == 5


def test_same_results_across_buckets_and_batch_compositions(neuronx, loaded, tmp_path):
    """Padding never changes a result (within 1e-4). Does not prove: bf16 auto-cast numerics on Neuron."""
    cpu = Classifier(loaded.tokenizer, create_backend(AppConfig(model="x", backend="cpu"), loaded), loaded.labels)
    nx = Classifier(loaded.tokenizer, build(loaded, "neuronx", tmp_path), loaded.labels)
    expected, _ = cpu.classify(TEXTS)
    for size in (1, 2, 5, len(TEXTS)):
        got = [p for i in range(0, len(TEXTS), size) for p in nx.classify(TEXTS[i : i + size])[0]]
        for a, b in zip(expected, got):
            assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-4)


def test_batch_is_split_at_bucket_edges(neuronx, loaded, tmp_path):
    """9 texts with batch buckets up to 8 run as two forwards, each of a compiled shape.
    Does not prove: Neuron latency per bucket."""
    backend = build(loaded, "neuronx", tmp_path)
    shapes = []
    original = backend.forward
    backend.forward = lambda ids, mask: shapes.append(tuple(ids.shape)) or original(ids, mask)
    predictions, report = Classifier(loaded.tokenizer, backend, loaded.labels).classify(["fine film"] * 9)
    assert len(predictions) == 9 and report.forwards == 2
    assert sorted(shapes) == [(1, 16), (8, 16)]
    with pytest.raises(BackendError):
        original(*[torch.ones((3, 16), dtype=torch.long)] * 2)  # not a compiled shape


def test_inf1_neuron_backend(neuron_inf1, loaded, tmp_path):
    """torch-neuron (inf1) path: artifacts per bucket, results equal to cpu.
    Does not prove: neuron-cc (frozen at torch 1.13) accepts this transformers version's graph."""
    backend = build(loaded, "neuron", tmp_path)
    assert backend.name == "neuron" and len(list(tmp_path.glob("neuron-b*.pt"))) == 6
    cpu = Classifier(loaded.tokenizer, create_backend(AppConfig(model="x", backend="cpu"), loaded), loaded.labels)
    got, _ = Classifier(loaded.tokenizer, backend, loaded.labels).classify(TEXTS)
    expected, _ = cpu.classify(TEXTS)
    assert [p.label for p in got] == [p.label for p in expected]


def test_only_device_backends_run_forwards_off_the_event_loop(neuronx, neuron_inf1, loaded, tmp_path):
    """cpu and jit compute on the host (forward on the replica's event loop); neuronx and neuron wait on a
    NeuronCore (forward thread). Does not prove: how long a real NeuronCore forward leaves the loop free."""
    assert create_backend(AppConfig(model="x", backend="cpu"), loaded).on_host is True
    assert build(loaded, "jit", tmp_path / "jit").on_host is True
    assert build(loaded, "neuronx", tmp_path / "neuronx").on_host is False
    assert build(loaded, "neuron", tmp_path / "neuron").on_host is False


def test_auto_picks_neuronx_when_present(neuronx):
    """Does not prove: detection on a real Neuron image; only our selection order."""
    assert resolve_backend_name("auto") == "neuronx"


def test_missing_sdk_is_a_clear_error(loaded, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_neuronx", None)  # import fails
    with pytest.raises(BackendError, match="AWS Neuron index"):
        build(loaded, "neuronx", tmp_path)


def test_compile_cli_writes_one_artifact_per_bucket(tiny_model_dir, tmp_path, capsys):
    from serve_app.backends.precompile import main

    assert main(["--backend", "jit", "--out", str(tmp_path), "--model", str(tiny_model_dir),
                 "--batch-sizes", "1,4", "--seq-lens", "16,32"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["compiled"] == 4 and len(list(tmp_path.glob("jit-b*.pt"))) == 4
    assert main(["--backend", "jit", "--out", str(tmp_path), "--model", str(tiny_model_dir),
                 "--batch-sizes", "1,4", "--seq-lens", "16,32"]) == 0
    assert json.loads(capsys.readouterr().out)["loaded_from_cache"] == 4


def build_shared(loaded, cache_dir, store_dir):
    config = AppConfig(model="x", backend="neuronx", compile_cache_dir=str(cache_dir),
                       compile_cache_uri=store_dir.as_uri(), buckets=BUCKETS)
    return create_backend(config, loaded)


def test_shared_store_compiles_once_per_cluster(neuronx, loaded, tmp_path):
    """A second pod (fresh local dir) fetches every bucket from the shared store instead of compiling.
    file:// stands in for s3:// (same pyarrow.fs code path). Does not prove: S3 credentials or throughput."""
    store = tmp_path / "store"
    first = build_shared(loaded, tmp_path / "pod-a", store)
    assert first.stats.compiled == 6 and first.stats.pushed == 6
    assert len(list(store.glob("*.pt"))) == 6 and len(list(store.glob("*.json"))) == 6
    neuronx.calls.clear()
    second = build_shared(loaded, tmp_path / "pod-b", store)
    assert neuronx.calls == [] and second.stats.fetched == 6 and second.stats.loaded == 6 and second.stats.compiled == 0
    manifest = json.loads((tmp_path / "pod-b" / "manifest.json").read_text())["entries"]
    assert len(manifest) == 6 and all(len(e["sha256"]) == 64 for e in manifest.values())


def test_shared_store_artifact_with_wrong_digest_is_not_loaded(neuronx, loaded, tmp_path):
    store = tmp_path / "store"
    build_shared(loaded, tmp_path / "pod-a", store)
    tampered = sorted(store.glob("*.pt"))[0]
    tampered.write_bytes(tampered.read_bytes() + b"\0")  # still a loadable zip for torch.jit.load
    second = build_shared(loaded, tmp_path / "pod-b", store)
    assert second.stats.fetched == 5 and second.stats.compiled == 1


def test_unreachable_store_falls_back_to_compiling(neuronx, loaded, tmp_path):
    store = tmp_path / "store-file"
    store.write_text("not a directory")  # every read and write of the store fails
    backend = build_shared(loaded, tmp_path / "pod", store)
    assert backend.stats.compiled == 6 and backend.stats.fetched == 0 and backend.stats.pushed == 0


def test_local_artifact_with_wrong_digest_is_recompiled(neuronx, loaded, tmp_path):
    build(loaded, "neuronx", tmp_path)
    artifact = sorted(tmp_path.glob("*.pt"))[0]
    artifact.write_bytes(artifact.read_bytes() + b"\0")
    neuronx.calls.clear()
    again = build(loaded, "neuronx", tmp_path)
    assert again.stats.compiled == 1 and again.stats.loaded == 5


def test_manifest_cannot_point_outside_the_cache(neuronx, loaded, tmp_path):
    cache = tmp_path / "cache"
    build(loaded, "neuronx", cache)
    outside = tmp_path / "evil.pt"
    manifest_path = cache / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    key, entry = next(iter(manifest["entries"].items()))
    outside.write_bytes((cache / entry["file"]).read_bytes())
    manifest["entries"][key] = {**entry, "file": "../evil.pt"}
    manifest_path.write_text(json.dumps(manifest))
    again = build(loaded, "neuronx", cache)
    assert again.stats.compiled == 1 and again.stats.loaded == 5


def test_concurrent_processes_compile_each_bucket_once(tiny_model_dir, tmp_path):
    """Two replicas starting together on one node (two processes, one cache dir): each bucket is compiled
    by one of them; the other waits on the bucket's file lock and loads it."""
    import subprocess

    cmd = [sys.executable, "-m", "serve_app.backends.precompile", "--backend", "jit", "--out", str(tmp_path / "cache"),
           "--model", str(tiny_model_dir), "--batch-sizes", "1,4,8", "--seq-lens", "16,32"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    results = [json.loads(p.communicate(timeout=300)[0]) for p in procs]
    assert sum(r["compiled"] for r in results) == 6 and sum(r["loaded_from_cache"] for r in results) == 6
    assert len(json.loads((tmp_path / "cache" / "manifest.json").read_text())["entries"]) == 6


def test_store_that_cannot_be_opened_falls_back_to_compiling(neuronx, loaded, tmp_path):
    config = AppConfig(model="x", backend="neuronx", compile_cache_dir=str(tmp_path / "pod"),
                       compile_cache_uri="nosuchscheme://bucket/compile-cache", buckets=BUCKETS)
    backend = create_backend(config, loaded)
    assert backend.stats.compiled == 6 and backend.stats.fetched == 0
