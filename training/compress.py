"""A fully fine-tuned classifier as a small PEFT LoRA adapter over its base, so the repo can carry it.

Each encoder Linear's weight change is factored by SVD into a rank-r LoRA pair (exact when r reaches
the change's rank); biases (`bias="all"`), LayerNorms, position and token-type embeddings, pooler and
classifier are stored in full. The word embeddings stay out of the adapter (30k x hidden would not fit).
The result loads like any adapter (`serve_app.model.source`), merged once at start-up, so requests pay
nothing for the factoring. What the factors miss, and the word-embedding rows the fine-tune moved (only
tokens seen in training move beyond weight decay: ~11k of 30k on SST-2, worth ~0.8 pt of dev accuracy),
are `residuals`: stored next to the adapter quantized per row (serve_app/model/residuals.py), added back at load.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

#: The Linear layers of a BERT encoder layer that get LoRA factors.
ENCODER_LINEARS = (
    "attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
    "intermediate.dense", "output.dense",
)
STORED_IN_FULL = ["classifier", "pooler", "LayerNorm", "position_embeddings", "token_type_embeddings"]
#: A word-embedding row counts as moved when it changed by more than this fraction of its norm (weight
#: decay alone moves every row by ~1e-4 of it in an epoch).
MOVED_ROW_THRESHOLD = 1e-3


@dataclass
class Factored:
    model: "object"  # the PEFT model over the base
    residuals: dict[str, torch.Tensor]  # merged-model parameter name -> weight change the factors miss
    rows: dict[str, torch.Tensor]  # name -> row indices, for a residual of some rows only (word embeddings)
    relative_residuals: list[float]  # |residual| / |change| per factored Linear


def adapter_from_full(base, tuned, rank: int, num_layers: int) -> Factored:
    """Wrap `base` (in place) in a PEFT model whose merged weights approximate `tuned` (same architecture).

    `num_layers` counts the tuned encoder layers that get factors (a mean-pooling layer on top is fixed and
    left out).
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
    residuals: dict[str, torch.Tensor] = {}
    relative: list[float] = []
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
            residuals[f"{key}.weight"] = residual
            relative.append(float(residual.norm() / delta.norm().clamp(min=1e-12)))
        embeddings = next(key for key in tuned_state if key.endswith("embeddings.word_embeddings.weight"))
        base_embeddings = model.get_base_model().state_dict()[embeddings]
        delta = (tuned_state[embeddings] - base_embeddings).float()
        moved = (delta.norm(dim=1) > MOVED_ROW_THRESHOLD * base_embeddings.float().norm(dim=1)).nonzero().flatten()
        residuals[embeddings], rows = delta[moved], {embeddings: moved}
        for name, param in model.named_parameters():
            if "lora_" in name or not param.requires_grad:
                continue
            key = name.split("base_model.model.", 1)[1].replace(".modules_to_save.default", "")
            key = key.replace(".base_layer", "")
            param.copy_(tuned_state[key])
    return Factored(model, residuals, rows, relative)
