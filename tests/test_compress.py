"""A full fine-tune exported as a factored LoRA adapter (training/compress.py), on a tiny BERT, no Ray."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig
from training.modeling import build_model, write_exports

TEXTS = ["a fine film", "dull and lifeless, far too long", "ok"]


def tuned_exports(tmp_path, tiny_model_dir, rank: int, pooling: str = "mean") -> dict:
    config = TrainConfig.model_validate({
        "base_model": str(tiny_model_dir), "data": {"source": "unused"}, "method": "full", "pooling": pooling,
        "full_export_rank": rank,
    })
    tokenizer, model = build_model(config)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every trainable weight but the word embeddings
        for name, param in model.named_parameters():
            if param.requires_grad and "word_embeddings" not in name:
                param.add_(torch.randn_like(param) * 0.05)
    return write_exports(config, model.eval(), tokenizer, tmp_path / "export")


def logits(loaded):
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_full_rank_factors_reproduce_the_fine_tune(tmp_path, tiny_model_dir, pooling):
    from safetensors import safe_open

    from serve_app.model_source import load_classifier

    written = tuned_exports(tmp_path, tiny_model_dir, rank=32, pooling=pooling)  # hidden 32: full rank
    with safe_open(str(written["adapter"] / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert not any("word_embeddings" in k for k in keys)  # the base's, never stored
    assert any("lora_A" in k for k in keys) and any("LayerNorm" in k for k in keys)
    adapter, full = load_classifier(str(written["adapter"])), load_classifier(str(written["model"]))
    assert torch.allclose(logits(adapter), logits(full), atol=5e-3)  # float16 storage


def test_low_rank_factors_still_load_and_stay_close(tmp_path, tiny_model_dir):
    from serve_app.model_source import load_classifier

    written = tuned_exports(tmp_path, tiny_model_dir, rank=4)
    adapter, full = load_classifier(str(written["adapter"])), load_classifier(str(written["model"]))
    difference = (logits(adapter) - logits(full)).abs().max()
    assert 0 < difference < 1.0
