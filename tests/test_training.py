"""Real Ray Train runs (2 DDP workers on the CPU) on a tiny BERT and a few hundred SST-2 rows."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from training.config import TrainConfig, load_config
from training.finetune import main as finetune_main
from training.finetune import run

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def ray_cluster():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def tiny_config(tmp_path, tiny_model_dir, sst2_dir, **overrides) -> TrainConfig:
    tree = {
        "base_model": str(tiny_model_dir),
        "data": {"source": str(sst2_dir), "max_train_rows": 256, "max_eval_rows": 64},
        "num_workers": 2,
        "batch_size": 16,
        "epochs": 1,
        "eval_every_steps": 3,
        "learning_rate": 1e-3,
        "storage_path": str(tmp_path / "runs"),
        "run_name": "tiny",
        "log_every_steps": 2,
    }
    tree.update(overrides)
    return TrainConfig.model_validate(tree)


def test_two_worker_run_exports_a_model_the_service_loads(ray_cluster, tmp_path, tiny_model_dir, sst2_dir):
    from serve_app.backends import create_backend
    from serve_app.model.classifier import Classifier
    from serve_app.config import AppConfig
    from serve_app.model.source import load_classifier

    from training.config import DataConfig
    from training.data import load_split

    summary = run(tiny_config(tmp_path, tiny_model_dir, sst2_dir))
    assert summary["step"] in (3, 6, 8)  # 8 steps, evaluated every 3 and at the end: the best is one of those
    # The exports are the best checkpoint: served, they score what training reported for it. Rank 0 reports
    # its shard of the 64 evaluation rows (every other row).
    rows = load_split(DataConfig(source=str(sst2_dir)), "dev", 64)
    for kind in ("model", "adapter"):
        loaded = load_classifier(summary["exported"][kind])
        assert loaded.labels == ("NEGATIVE", "POSITIVE")
        classifier = Classifier(loaded.tokenizer, create_backend(AppConfig(), loaded), loaded.labels)
        accuracies = []
        for shard in (rows[0::2], rows):
            predictions, _ = classifier.classify([r.text for r in shard])
            accuracies.append(sum(p.label == loaded.labels[r.label] for p, r in zip(predictions, shard)) / len(shard))
        assert any(a == pytest.approx(summary["eval_accuracy"], abs=1e-9) for a in accuracies), (accuracies, summary)


def test_exported_label_mapping(ray_cluster, tmp_path, tiny_model_dir, sst2_dir):
    summary = run(tiny_config(tmp_path, tiny_model_dir, sst2_dir, max_steps=3, run_name="labels"))
    config = json.loads((tmp_path / "runs/labels/export/model/config.json").read_text())
    assert config["id2label"] == {"0": "NEGATIVE", "1": "POSITIVE"}
    assert config["label2id"] == {"NEGATIVE": 0, "POSITIVE": 1}
    adapter = tmp_path / "runs/labels/export/adapter"
    assert json.loads((adapter / "labels.json").read_text())["labels"] == ["NEGATIVE", "POSITIVE"]
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == str(tiny_model_dir)
    assert summary["exported"]["model"].endswith("export/model")


def test_injected_worker_failure_restores_from_checkpoint(ray_cluster, tmp_path, tiny_model_dir, sst2_dir):
    """Rank 1 raises once at step 5, after the step-3 checkpoint: Ray Train restarts the workers,
    they restore step 3 and the run finishes."""
    config = tiny_config(
        tmp_path, tiny_model_dir, sst2_dir, run_name="faulty", max_failures=1,
        fault_injection={"fail_at_step": 5, "rank": 1, "marker_dir": str(tmp_path / "markers")},
    )
    summary = run(config)
    assert (tmp_path / "markers/fault-at-step-5").exists()
    assert summary["step"] in (3, 6, 8)
    assert summary["resumed_from_step"] == 3


def test_rerun_resumes_an_interrupted_run(ray_cluster, tmp_path, tiny_model_dir, sst2_dir):
    """A run that dies (no retries left) is resumed by re-running the same command: it restarts at its
    last checkpoint instead of step 0."""
    from ray.train import TrainingFailedError

    faulty = tiny_config(
        tmp_path, tiny_model_dir, sst2_dir, run_name="resume", max_failures=0,
        fault_injection={"fail_at_step": 7, "rank": 0, "marker_dir": str(tmp_path / "markers")},
    )
    with pytest.raises((TrainingFailedError, RuntimeError)):
        run(faulty)
    summary = run(faulty)  # same storage path and name; the marker makes the fault fire only once
    assert summary["resumed_from_step"] == 6
    assert summary["last_step"] == 8


def test_config_errors_are_clear(tmp_path, capsys):
    with pytest.raises(ValidationError, match="learning_rat"):
        TrainConfig.model_validate({"data": {"source": "x"}, "learning_rat": 1})
    with pytest.raises(ValidationError, match="data"):
        TrainConfig.model_validate({})
    with pytest.raises(ValidationError):
        load_config(None, ["data.source=x", "num_workers=0"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config(None, ["epochs"])
    assert finetune_main(["data.source=./does/not/exist"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert finetune_main(["data.source=x", "method=qlora"]) == 2
    assert "method" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["default", "lora", "mean", "top2", "eks"])
def test_shipped_configs_are_valid(name):
    config = load_config(f"training/configs/{name}.yaml")
    assert config.base_model == "packaged:all-MiniLM-L6-v2"
    if name == "default":  # the recipe of serve_app/default_model: a full fine-tune that fits in git
        assert config.method == "full" and config.pooling == "mean" and config.full_export_bits == 4


def test_top_layers_in_full_export_fp16_and_load(ray_cluster, tmp_path, tiny_model_dir, sst2_dir):
    """full_top_layers=1: the top layer and pooler are trained in full, stored float16, and the service
    loads the adapter with the same predictions as the merged full export."""
    from safetensors import safe_open

    from serve_app.model.source import load_classifier

    summary = run(tiny_config(tmp_path, tiny_model_dir, sst2_dir, max_steps=3, run_name="top1",
                              lora={"full_top_layers": 1}))
    adapter = tmp_path / "runs/top1/export/adapter/adapter_model.safetensors"
    with safe_open(str(adapter), "pt") as weights:
        keys = list(weights.keys())
        assert any("encoder.layer.1." in k and "lora_" not in k for k in keys)
        assert any("encoder.layer.0." in k and "lora_" in k for k in keys)
        assert {str(weights.get_tensor(k).dtype) for k in keys} == {"torch.float16"}
    texts = ["a fine film", "dull and lifeless", "ok"]
    from_adapter, from_model = (load_classifier(summary["exported"][k]) for k in ("adapter", "model"))
    for loaded in (from_adapter, from_model):
        assert loaded.labels == ("NEGATIVE", "POSITIVE")
    import torch

    def logits(loaded):
        batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            return loaded.model(**batch).logits

    assert torch.allclose(logits(from_adapter), logits(from_model), atol=1e-2)


def test_mean_pooling_exports_agree_and_the_pooling_layer_is_not_stored(ray_cluster, tmp_path, tiny_model_dir, sst2_dir):
    """pooling=mean: the adapter holds no tensor of the appended pooling layer (it is rebuilt at load),
    labels.json says how to rebuild it, and adapter and merged exports give the same logits."""
    import torch
    from safetensors import safe_open

    from serve_app.model.source import load_classifier

    summary = run(tiny_config(tmp_path, tiny_model_dir, sst2_dir, max_steps=3, run_name="mean", pooling="mean"))
    adapter_dir = tmp_path / "runs/mean/export/adapter"
    assert json.loads((adapter_dir / "labels.json").read_text())["pooling"] == "mean"
    with safe_open(str(adapter_dir / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert any("encoder.layer.1." in k and "lora_" in k for k in keys)
    assert not any("encoder.layer.2." in k for k in keys)
    assert any("pooler" in k and "lora_" not in k for k in keys)
    from_adapter, from_model = (load_classifier(summary["exported"][k]) for k in ("adapter", "model"))
    assert from_model.model.config.num_hidden_layers == 3 == from_adapter.model.config.num_hidden_layers
    texts = ["a fine film", "dull and lifeless", "ok"]

    def logits(loaded):
        batch = loaded.tokenizer(texts, padding=True, return_tensors="pt")
        with torch.no_grad():
            return loaded.model(**batch).logits

    assert torch.allclose(logits(from_adapter), logits(from_model), atol=1e-2)


def test_learning_rates_per_parameter_group(tiny_model_dir):
    """Full fine-tuning trains every weight at `learning_rate`; `lora.full_lr_scale` only scales the
    encoder layers that a LoRA run trains in full."""
    from training.modeling import build_model, parameter_groups

    full = TrainConfig.model_validate({"base_model": str(tiny_model_dir), "data": {"source": "x"}, "method": "full",
                                       "learning_rate": 1e-4})
    _, model = build_model(full)
    assert [g["lr"] for g in parameter_groups(model, full)] == [1e-4]
    top = full.model_copy(update={"method": "lora", "lora": full.lora.model_copy(update={"full_top_layers": 1})})
    _, model = build_model(top)
    groups = parameter_groups(model, top)
    assert [g["lr"] for g in groups] == [1e-4, 1e-4 * top.lora.full_lr_scale]
    assert all(p.requires_grad for g in groups for p in g["params"])
