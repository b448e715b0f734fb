"""A fully fine-tuned classifier as a small PEFT LoRA adapter over its base, so the repo can carry it.

Each encoder Linear's weight change is factored by SVD into a rank-r LoRA pair (exact when r reaches
the change's rank); biases (`bias="all"`), LayerNorms, position and token-type embeddings, pooler and
classifier are stored in full. The word embeddings stay the base's (30k x hidden would not fit; a full
fine-tune moves them little). The result loads like any adapter (`serve_app.model_source`), merged once
at start-up, so requests pay nothing for the factoring.
"""

from __future__ import annotations

import torch

#: The Linear layers of a BERT encoder layer that get LoRA factors.
ENCODER_LINEARS = (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense",
)
STORED_IN_FULL = ["classifier", "pooler", "LayerNorm", "position_embeddings", "token_type_embeddings"]


def adapter_from_full(base, tuned, rank: int, num_layers: int):
    """Return a PEFT model over `base` whose merged weights approximate `tuned` (same architecture).

    `base` is modified in place (wrapped); `num_layers` counts the tuned encoder layers that get factors
    (a mean-pooling layer on top is fixed and left out). Also returns the relative residual of each factoring.
    """
    from peft import LoraConfig, get_peft_model

    layers = "|".join(str(i) for i in range(num_layers))
    linears = "|".join(name.replace(".", r"\.") for name in ENCODER_LINEARS)
    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, bias="all", task_type="SEQ_CLS",
        target_modules=rf".*encoder\.layer\.({layers})\.({linears})$", modules_to_save=STORED_IN_FULL,
    )
    model = get_peft_model(base, config)
    tuned_state = tuned.state_dict()
    residuals: list[float] = []
    with torch.no_grad():
        for name, module in model.named_modules():
            if "default" not in getattr(module, "lora_A", {}):
                continue
            key = name.split("base_model.model.", 1)[1]
            delta = (tuned_state[f"{key}.weight"] - module.base_layer.weight).float()
            u, s, vh = torch.linalg.svd(delta, full_matrices=False)
            root = s[:rank].sqrt()
            module.lora_B["default"].weight.copy_(u[:, :rank] * root)
            module.lora_A["default"].weight.copy_(root[:, None] * vh[:rank])
            residual = delta - (u[:, :rank] * s[:rank]) @ vh[:rank]
            residuals.append(float(residual.norm() / delta.norm().clamp(min=1e-12)))
        for name, param in model.named_parameters():
            if "lora_" in name or not param.requires_grad:
                continue
            key = name.split("base_model.model.", 1)[1].replace(".modules_to_save.default", "")
            key = key.replace(".base_layer", "")
            param.copy_(tuned_state[key])
    return model, residuals
