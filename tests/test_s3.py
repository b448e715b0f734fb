"""The `s3` tier: every S3 path of the deployed form against a real S3 server (SeaweedFS, tests/s3_server.py).

Each identity holds the grant docs/eks.md gives the IAM role it stands for (`sentiment-ray` for the serving
pods, `sentiment-train` for the RayJob), and the code reaches the server as the pods reach S3: pyarrow's S3
filesystem with credentials from the environment, only the endpoint overridden (AWS_ENDPOINT_URL).
Exercised: the shared compile cache between two "pods" (`compile_cache_uri`), `model: s3://` from
`serve_app.model.export` output, the RayJob's `data.source=s3://...` (parquet, uploaded as docs/eks.md does)
and Ray Train's `storage_path` on S3 with a resume from its checkpoint; and what the earlier, object-only grant
(no s3:ListBucket) does: Arrow's CreateDir is refused (HeadBucket), and the compile cache says so in one line.
What it does NOT prove: IRSA / Pod Identity credentials, AWS's own authorization engine (tests/s3_server.py
names the two places SeaweedFS differs), S3 latency or throughput.
"""

from __future__ import annotations

import logging
import os

import pytest

from serve_app.backends import create_backend
from serve_app.config import AppConfig
from serve_app.model.source import ModelLoadError, load_classifier
from tests.s3_server import start_seaweedfs

pytestmark = pytest.mark.s3
BUCKET = "sentiment-models-test"
BUCKETS = {"batch_sizes": [1, 4, 8], "seq_lens": [16, 64]}
SERVING_OBJECTS = [f"Read:{BUCKET}/runs/*", f"Read:{BUCKET}/compile-cache/*", f"Read:{BUCKET}/compile-cache-inf1/*",
                   f"Write:{BUCKET}/compile-cache/*", f"Write:{BUCKET}/compile-cache-inf1/*"]
GRANTS = {
    # docs/eks.md, role sentiment-ray: objects of runs/ and the compile caches, and s3:ListBucket on those prefixes
    "serving": SERVING_OBJECTS + [f"List:{BUCKET}"],
    # the grant docs/eks.md gave before: object actions only
    "serving-objects-only": SERVING_OBJECTS,
    # a role that may read the compile cache but not write it
    "serving-read-only": [f"Read:{BUCKET}/compile-cache/*", f"List:{BUCKET}"],
    # docs/eks.md, role sentiment-train: read data/, read and write runs/, s3:ListBucket (and Read:<bucket> for
    # HeadBucket, which SeaweedFS authorizes as Read where AWS authorizes it as ListBucket)
    "training": [f"Read:{BUCKET}/data/*", f"Read:{BUCKET}/runs/*", f"Write:{BUCKET}/runs/*", f"List:{BUCKET}",
                 f"Read:{BUCKET}"],
}
STORE_LOGGER = "serve_app.backends.artifact_store"


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = start_seaweedfs(tmp_path_factory.mktemp("seaweedfs"), BUCKET, GRANTS)
    yield server
    server.stop()


@pytest.fixture
def as_identity(s3, monkeypatch):
    def use(identity: str) -> None:
        for key, value in s3.env(identity).items():
            monkeypatch.setenv(key, value)
    return use


@pytest.fixture(scope="module")
def loaded(tiny_model_dir):
    return load_classifier(str(tiny_model_dir))


def build_pod(loaded, cache_dir, uri):
    return create_backend(AppConfig(model="x", backend="jit", compile_cache_dir=str(cache_dir), compile_cache_uri=uri,
                                    buckets=BUCKETS), loaded)


def store_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == STORE_LOGGER and r.levelno >= logging.WARNING]


def test_compile_cache_is_shared_between_two_pods(s3, as_identity, loaded, tmp_path, caplog):
    as_identity("serving")
    uri = f"s3://{BUCKET}/compile-cache"
    first = build_pod(loaded, tmp_path / "pod-a", uri)
    assert first.stats.compiled == 6 and first.stats.pushed == 6
    assert len(s3.keys("compile-cache")) == 12   # one .pt and one .json per bucket
    second = build_pod(loaded, tmp_path / "pod-b", uri)
    assert second.stats.compiled == 0 and second.stats.fetched == 6 and second.stats.loaded == 6
    assert store_warnings(caplog) == []


def test_the_object_only_grant_is_refused_and_said_once(s3, as_identity, loaded, tmp_path, caplog):
    """The earlier docs' grant: Arrow's CreateDir (which the store called before every upload) is refused at
    HeadBucket, and the store cannot be listed. The replica now says so in one line at start and compiles."""
    import pyarrow.fs

    fs = s3.filesystem("serving-objects-only")
    with pytest.raises(OSError, match="HeadBucket"):
        fs.create_dir(f"{BUCKET}/compile-cache", recursive=True)
    with pytest.raises(OSError, match="ACCESS_DENIED"):
        fs.get_file_info(pyarrow.fs.FileSelector(f"{BUCKET}/compile-cache", allow_not_found=True))
    as_identity("serving-objects-only")
    backend = build_pod(loaded, tmp_path / "pod", f"s3://{BUCKET}/compile-cache-inf1")
    assert backend.stats.compiled == 6 and backend.stats.fetched == 0 and backend.stats.pushed == 0
    [warning] = store_warnings(caplog)
    assert "not usable" in warning and "s3:ListBucket" in warning and "ACCESS_DENIED" in warning


def test_a_store_that_refuses_uploads_is_said_once(s3, as_identity, loaded, tmp_path, caplog):
    """A role that may read the cache but not write it: the first refused upload is one warning line, and the
    replica tries no more uploads (weights of their own, so no bucket is in the store yet)."""
    as_identity("serving-read-only")
    other = type(loaded)(**{**loaded.__dict__, "weights_sha256": "f" * 64})
    backend = build_pod(other, tmp_path / "pod", f"s3://{BUCKET}/compile-cache")
    assert backend.stats.compiled == 6 and backend.stats.pushed == 0
    [warning] = store_warnings(caplog)
    assert "refused an upload" in warning and "s3:PutObject" in warning


def test_model_from_an_s3_export(s3, as_identity, tmp_path, monkeypatch):
    """`python -m serve_app.model.export DIR`, uploaded under runs/ as a fine-tune's export is, then served
    from `model: s3://...` by the serving identity: the same weights, labels and answers."""
    import torch

    from serve_app.model.export import main as export_main

    assert export_main([str(tmp_path / "export")]) == 0
    s3.upload_dir(tmp_path / "export", "runs/exported/export/model")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache"))
    as_identity("serving")
    remote = load_classifier(f"s3://{BUCKET}/runs/exported/export/model")
    local = load_classifier(str(tmp_path / "export"))
    assert remote.labels == local.labels == ("NEGATIVE", "POSITIVE")
    assert remote.weights_sha256 == local.weights_sha256
    batch = local.tokenizer(["I love using this product!", "It broke in a day."], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert torch.equal(remote.model(**batch).logits, local.model(**batch).logits)
    as_identity("serving-objects-only")
    monkeypatch.setenv("MODEL_CACHE_DIR", str(tmp_path / "model-cache-2"))
    with pytest.raises(ModelLoadError, match="ACCESS_DENIED"):
        load_classifier(f"s3://{BUCKET}/runs/exported/export/model")


@pytest.mark.train
def test_rayjob_data_and_train_storage_on_s3_resume(s3, tmp_path, tiny_model_dir, sst2_dir, monkeypatch):
    """The RayJob's command on S3: SST-2 as parquet under data/sst2 (docs/eks.md's upload), checkpoints under
    runs/, the export beside them. A run that dies after its step-6 checkpoint is resumed from S3 by running
    the same command again."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import ray
    from ray.train import TrainingFailedError

    from training.config import DataConfig, TrainConfig
    from training.data import load_split
    from training.finetune import run

    data = tmp_path / "sst2-parquet"
    data.mkdir()
    for split, name in (("train", "train"), ("dev", "dev")):
        rows = load_split(DataConfig(source=str(sst2_dir)), split, None)
        pq.write_table(pa.table({"sentence": [r.text for r in rows], "label": [r.label for r in rows]}),
                       data / f"{name}.parquet")
    s3.upload_dir(data, "data/sst2")
    env = s3.env("training")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = TrainConfig.model_validate({
        "base_model": str(tiny_model_dir),
        "data": {"source": f"s3://{BUCKET}/data/sst2", "max_train_rows": 256, "max_eval_rows": 64},
        "num_workers": 2, "batch_size": 16, "epochs": 1, "eval_every_steps": 3, "learning_rate": 1e-3,
        "storage_path": f"s3://{BUCKET}/runs", "run_name": "resume-on-s3", "log_every_steps": 2, "max_failures": 0,
        "fault_injection": {"fail_at_step": 7, "rank": 0, "marker_dir": str(tmp_path / "markers")},
    })
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": env})
    try:
        with pytest.raises((TrainingFailedError, RuntimeError)):
            run(config)
        assert any(k.startswith("runs/resume-on-s3/") for k in s3.keys("runs/resume-on-s3"))
        summary = run(config)   # the same command again: it restores the last checkpoint from S3
    finally:
        ray.shutdown()
    assert summary["resumed_from_step"] == 6 and summary["last_step"] == 8
    assert summary["best_checkpoint"].startswith(f"{BUCKET}/runs/resume-on-s3") or "s3://" in summary["best_checkpoint"]
    exported = s3.keys("runs/resume-on-s3/export/model")
    assert "runs/resume-on-s3/export/model/config.json" in exported, exported
    assert os.environ["AWS_ENDPOINT_URL"] == s3.endpoint
