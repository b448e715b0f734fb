"""Building the trainable classifier (base encoder + LoRA or full fine-tuning) and saving its state."""

from __future__ import annotations

from pathlib import Path

import torch

from serve_app.model_source import resolve_base
from training.config import TrainConfig

TRAIN_STATE_FILE = "train_state.pt"


def build_model(config: TrainConfig):
    """Return (tokenizer, model) with only the weights that fine-tuning changes marked trainable."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    base = resolve_base(config.base_model)
    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base,
        num_labels=len(config.labels),
        id2label=dict(enumerate(config.labels)),
        label2id={label: i for i, label in enumerate(config.labels)},
    )
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora.rank,
                lora_alpha=config.lora.alpha,
                lora_dropout=config.lora.dropout,
                target_modules=config.lora.target_modules,
                modules_to_save=["classifier"],
                task_type="SEQ_CLS",
            ),
        )
    return tokenizer, model


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)


def write_exports(config: TrainConfig, model, tokenizer, out_dir: Path) -> dict[str, Path]:
    """Write `model/` (plain HF directory, adapters merged) and, for LoRA, `adapter/` (what the repo embeds)."""
    import json

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if config.method == "lora":
        adapter_dir = out_dir / "adapter"
        model.save_pretrained(str(adapter_dir), safe_serialization=True)
        adapter_config = adapter_dir / "adapter_config.json"  # portable: no site-packages path inside
        settings = json.loads(adapter_config.read_text())
        settings["base_model_name_or_path"] = config.base_model
        adapter_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
        (adapter_dir / "labels.json").write_text(
            json.dumps({"labels": config.labels, "base_model": config.base_model}, indent=2) + "\n"
        )
        written["adapter"] = adapter_dir
        model = model.merge_and_unload()
    model.config.id2label = dict(enumerate(config.labels))
    model.config.label2id = {label: i for i, label in enumerate(config.labels)}
    model_dir = out_dir / "model"
    model.save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    written["model"] = model_dir
    return written
