"""A full fine-tune exported as a factored LoRA adapter (training/compress.py), on a tiny BERT, no Ray."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from training.config import TrainConfig
from training.modeling import build_model, write_exports

TEXTS = ["a fine film", "dull and lifeless, far too long", "ok"]


def tuned_exports(
    tmp_path, tiny_model_dir, rank: int, pooling: str = "mean", bits: int | None = None, moved_tokens: tuple = ()
) -> dict:
    config = TrainConfig.model_validate({
        "base_model": str(tiny_model_dir), "data": {"source": "unused"}, "method": "full", "pooling": pooling,
        "full_export_rank": rank, "full_export_bits": bits,
    })
    tokenizer, model = build_model(config)
    torch.manual_seed(1)
    with torch.no_grad():  # stand-in for training: move every trainable weight but the word embeddings
        for name, param in model.named_parameters():
            if param.requires_grad and "word_embeddings" not in name:
                param.add_(torch.randn_like(param) * 0.05)
            elif "word_embeddings" in name:  # a fine-tune moves the rows of the tokens it saw
                param[list(moved_tokens)] += torch.randn(len(moved_tokens), param.shape[1]) * 0.5
    return write_exports(config, model.eval(), tokenizer, tmp_path / "export")


def logits(loaded):
    batch = loaded.tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        return loaded.model(**batch).logits


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_full_rank_factors_reproduce_the_fine_tune(tmp_path, tiny_model_dir, pooling):
    from safetensors import safe_open

    from serve_app.model.source import load_classifier

    written = tuned_exports(tmp_path, tiny_model_dir, rank=32, pooling=pooling)  # hidden 32: full rank
    with safe_open(str(written["adapter"] / "adapter_model.safetensors"), "pt") as weights:
        keys = list(weights.keys())
    assert not any("word_embeddings" in k for k in keys)  # the base's, never stored
    assert any("lora_A" in k for k in keys) and any("LayerNorm" in k for k in keys)
    adapter, full = load_classifier(str(written["adapter"])), load_classifier(str(written["model"]))
    assert torch.allclose(logits(adapter), logits(full), atol=5e-3)  # float16 storage


def test_low_rank_factors_still_load_and_stay_close(tmp_path, tiny_model_dir):
    from serve_app.model.source import load_classifier

    written = tuned_exports(tmp_path, tiny_model_dir, rank=4)
    adapter, full = load_classifier(str(written["adapter"])), load_classifier(str(written["model"]))
    difference = (logits(adapter) - logits(full)).abs().max()
    assert 0 < difference < 1.0


@pytest.mark.parametrize("bits", [8, 4])
def test_quantized_residuals_recover_what_low_rank_factors_miss(tmp_path, tiny_model_dir, bits):
    from serve_app.model.source import RESIDUALS_FILE, load_classifier

    from safetensors import safe_open

    text_tokens = tuple(sorted({t for ids in AutoTokenizer.from_pretrained(str(tiny_model_dir))(TEXTS)["input_ids"]
                                for t in ids}))
    factors_only = tuned_exports(tmp_path / "plain", tiny_model_dir, rank=1, moved_tokens=text_tokens)
    with_residuals = tuned_exports(tmp_path / "residuals", tiny_model_dir, rank=1, bits=bits, moved_tokens=text_tokens)
    assert not (factors_only["adapter"] / RESIDUALS_FILE).exists()
    with safe_open(str(with_residuals["adapter"] / RESIDUALS_FILE), "pt") as stored:
        moved = stored.get_tensor("bert.embeddings.word_embeddings.weight.rows").tolist()
    assert moved == list(text_tokens)  # only the rows the fine-tune moved
    full = logits(load_classifier(str(with_residuals["model"])))
    miss_plain = (logits(load_classifier(str(factors_only["adapter"]))) - full).abs().max()
    loaded = load_classifier(str(with_residuals["adapter"]))
    miss_quantized = (logits(loaded) - full).abs().max()
    assert miss_quantized < miss_plain / 4
    assert miss_quantized < (0.02 if bits == 8 else 0.1)
    # the residuals are part of the weights' identity (compile caches key on it)
    assert loaded.weights_sha256 != load_classifier(str(factors_only["adapter"])).weights_sha256


def test_residual_bits_need_a_factored_full_fine_tune():
    with pytest.raises(ValueError, match="full_export_bits needs"):
        TrainConfig.model_validate({"base_model": "x", "data": {"source": "unused"}, "full_export_bits": 4})


def test_export_flag_writes_a_kept_checkpoint_with_new_export_settings(tmp_path, tiny_model_dir, capsys):
    from training.finetune import main as finetune_main
    from training.modeling import TRAIN_STATE_FILE, trainable_state

    from serve_app.model.source import RESIDUALS_FILE, load_classifier

    settings = [f"base_model={tiny_model_dir}", "data.source=unused", "method=full", "pooling=mean"]
    config = TrainConfig.model_validate({"base_model": str(tiny_model_dir), "data": {"source": "unused"},
                                         "method": "full", "pooling": "mean"})
    _, model = build_model(config)
    with torch.no_grad():
        model.classifier.weight.add_(1.0)
    checkpoint = tmp_path / "checkpoint"
    checkpoint.mkdir()
    torch.save({"model": trainable_state(model)}, checkpoint / TRAIN_STATE_FILE)
    out = tmp_path / "export"
    code = finetune_main(["--export", str(checkpoint), *settings, "full_export_rank=1", "full_export_bits=4",
                          f"export_dir={out}"])
    assert code == 0 and "[train] exported" in capsys.readouterr().out
    assert (out / "adapter" / RESIDUALS_FILE).is_file()
    exported = load_classifier(str(out / "adapter"))
    assert torch.allclose(exported.model.classifier.weight, model.classifier.weight, atol=1e-2)
    assert finetune_main(["--export", str(tmp_path), *settings]) == 2  # not a checkpoint
    assert "no train_state.pt" in capsys.readouterr().err
