"""Building the trainable classifier (base encoder + LoRA or full fine-tuning) and saving its state."""

from __future__ import annotations

from pathlib import Path

import torch

from serve_app.model.source import resolve_base
from serve_app.model.pooling import add_mean_pooling_layer
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
    base_layers = model.config.num_hidden_layers
    if config.pooling == "mean":
        add_mean_pooling_layer(model)  # frozen: a fixed function, rebuilt at load, never in the adapter
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        targets, saved = lora_targets(config, base_layers)
        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora.rank,
                lora_alpha=config.lora.alpha,
                lora_dropout=config.lora.dropout,
                target_modules=targets,
                modules_to_save=saved,
                task_type="SEQ_CLS",
            ),
        )
    return tokenizer, model


def lora_targets(config: TrainConfig, num_layers: int) -> tuple[list[str] | str, list[str]]:
    """(adapter targets, fully trained modules) for a base encoder of `num_layers` layers. With
    full_top_layers=k the top k encoder layers and the pooler are trained in full, and adapters go on the
    layers below them. With mean pooling the pooler (which never saw mean-pooled input) is trained in full
    and the pooling layer gets no adapter."""
    k = config.lora.full_top_layers
    if k == 0 and config.pooling == "cls":
        return config.lora.target_modules, ["classifier"]
    if k > num_layers:
        raise ValueError(f"lora.full_top_layers={k} exceeds the model's {num_layers} layers")
    lower = "|".join(str(i) for i in range(num_layers - k))
    names = "|".join(config.lora.target_modules)
    targets = rf".*encoder\.layer\.({lower})\..*({names})$" if lower else r"^$"
    return targets, ["classifier", "pooler"] + [f"encoder.layer.{i}" for i in range(num_layers - k, num_layers)]


def parameter_groups(model: torch.nn.Module, config: TrainConfig) -> list[dict]:
    """LoRA: adapters and the head at the full learning rate, encoder layers trained in full
    (`lora.full_top_layers`) scaled by `lora.full_lr_scale`. Full fine-tuning: one learning rate."""
    base, scaled = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        in_full = config.method == "lora" and ".encoder.layer." in name and "lora_" not in name
        (scaled if in_full else base).append(param)
    groups = [{"params": base, "lr": config.learning_rate}]
    if scaled:
        groups.append({"params": scaled, "lr": config.learning_rate * config.lora.full_lr_scale})
    return groups


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}


def load_trainable_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing = [name for name, p in model.named_parameters() if p.requires_grad and name not in state]
    if missing:
        raise ValueError(f"checkpoint lacks {len(missing)} trainable tensors, e.g. {missing[:3]}")
    model.load_state_dict(state, strict=False)


def _save_adapter(config: TrainConfig, peft_model, adapter_dir: Path) -> Path:
    import json

    peft_model.save_pretrained(str(adapter_dir), safe_serialization=True)
    adapter_config = adapter_dir / "adapter_config.json"  # portable: no site-packages path inside
    settings = json.loads(adapter_config.read_text())
    settings["base_model_name_or_path"] = config.base_model
    adapter_config.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    if config.lora.store_fp16:
        from safetensors.torch import load_file, save_file

        weights = adapter_dir / "adapter_model.safetensors"
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in load_file(str(weights)).items()}
        save_file(tensors, str(weights), metadata={"format": "pt"})
    (adapter_dir / "labels.json").write_text(
        json.dumps({"labels": config.labels, "base_model": config.base_model, "pooling": config.pooling}, indent=2)
        + "\n"
    )
    return adapter_dir


def write_exports(config: TrainConfig, model, tokenizer, out_dir: Path) -> dict[str, Path]:
    """Write `model/` (plain HF directory, adapters merged) and `adapter/` (what the repo embeds): for
    LoRA the trained adapter; for full fine-tuning with `full_export_rank`, the change factored into a
    LoRA adapter (training/compress.py), with `full_export_bits` plus what the factors miss, quantized."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    if config.method == "lora":
        written["adapter"] = _save_adapter(config, model, out_dir / "adapter")
        model = model.merge_and_unload()
    elif config.full_export_rank:
        from training.compress import adapter_from_full

        _, base = build_model(config)  # the untouched base (+ the fixed pooling layer)
        layers = model.config.num_hidden_layers - (1 if config.pooling == "mean" else 0)
        factored = adapter_from_full(base, model, config.full_export_rank, layers)
        relative = factored.relative_residuals
        print(f"[train] factored the fine-tune at rank {config.full_export_rank}: relative residual "
              f"mean {sum(relative) / len(relative):.3f}, max {max(relative):.3f}", flush=True)
        written["adapter"] = _save_adapter(config, factored.model, out_dir / "adapter")
        if config.full_export_bits:
            from serve_app.model.source import RESIDUALS_FILE
            from serve_app.model.residuals import save_residuals

            save_residuals(factored.residuals, config.full_export_bits, written["adapter"] / RESIDUALS_FILE,
                           rows=factored.rows)
    model.config.id2label = dict(enumerate(config.labels))
    model.config.label2id = {label: i for i, label in enumerate(config.labels)}
    model_dir = out_dir / "model"
    model.save_pretrained(str(model_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(model_dir))
    written["model"] = model_dir
    return written
