"""Unit tests (no Ray) for model loading: the pinned base checksum, directories, adapters and errors."""

from __future__ import annotations

import json
import shutil

import pytest

from serve_app.model import source as model_source
from serve_app.model.source import ModelLoadError, load_classifier, packaged_base_dir


def test_packaged_base_checksum_is_checked():
    assert (packaged_base_dir() / "model.safetensors").is_file()
    with pytest.raises(ModelLoadError, match="sha256"):
        packaged_base_dir(expected_sha256="0" * 64)


def test_directory_without_config_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_classifier(str(tmp_path))


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError):
        load_classifier(str(tmp_path / "nope"))


def test_full_directory_keeps_label_names(tiny_model_dir):
    loaded = load_classifier(str(tiny_model_dir))
    assert loaded.labels == ("NEGATIVE", "POSITIVE")
    assert len(loaded.weights_sha256) == 64


def test_label_names_are_the_configs_as_the_pipeline_reports_them(tiny_model_dir, tmp_path):
    copy = tmp_path / "generic"
    shutil.copytree(tiny_model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["id2label"] = {"1": "positive", "0": "LABEL_0"}
    config["label2id"] = {"LABEL_0": 0, "positive": 1}
    (copy / "config.json").write_text(json.dumps(config))
    assert load_classifier(str(copy)).labels == ("LABEL_0", "positive")  # verbatim, in class-id order


def test_default_slot_missing_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(model_source, "DEFAULT_ADAPTER_DIR", tmp_path)
    with pytest.raises(ModelLoadError, match="embedded default"):
        load_classifier("default")


def test_remote_export_is_cached_by_version_and_renamed_into_place(tiny_model_dir, tmp_path):
    """file:// stands in for s3:// (the same pyarrow.fs calls). A new export under the same URI is fetched
    again; an unchanged one is not; no partial copy is left behind."""
    from serve_app.model.source import fetch_remote_dir, load_classifier
    from tests.conftest import build_tiny_model

    export = tmp_path / "bucket" / "runs" / "r1" / "export" / "model"
    shutil.copytree(tiny_model_dir, export)
    cache = tmp_path / "cache"
    first = fetch_remote_dir(export.as_uri(), str(cache))
    assert fetch_remote_dir(export.as_uri(), str(cache)) == first
    assert load_classifier(str(first)).weights_sha256 == load_classifier(str(tiny_model_dir)).weights_sha256
    build_tiny_model(export, seed=7)  # a new export under the same prefix
    second = fetch_remote_dir(export.as_uri(), str(cache))
    assert second != first
    assert load_classifier(str(second)).weights_sha256 != load_classifier(str(first)).weights_sha256
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.name, second.name])  # no .partial-* left
