"""Quantized weight residuals stored next to an adapter.

A full fine-tune exported as an adapter (training/compress.py) keeps each encoder Linear's weight change as
a low-rank LoRA pair; what the pair misses can be stored here, quantized per output row to int8 or int4
(two values per byte), as can the rows of the word embeddings that the fine-tune moved. The loader
(`serve_app.model.source`, file name `RESIDUALS_FILE`) adds it to the merged weights once at start-up,
so requests pay nothing for it.
"""

from __future__ import annotations

from pathlib import Path

import torch

BITS_CHOICES = (4, 8)


def quantize_rows(matrix: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row quantization: (codes, float16 scales). int4 codes are packed two per byte."""
    if bits not in BITS_CHOICES:
        raise ValueError(f"bits must be one of {BITS_CHOICES}, got {bits}")
    if matrix.dim() != 2 or (bits == 4 and matrix.shape[1] % 2):
        raise ValueError(f"expected a matrix with an even number of columns for int4, got {tuple(matrix.shape)}")
    levels = 2 ** (bits - 1) - 1  # 7 or 127: symmetric, zero is exact
    scale = (matrix.abs().amax(dim=1).float() / levels).half()
    # A row of zeros (or of values below float16's range) has scale 0: its codes are 0 with scale 1, not 0/0.
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    codes = torch.round(matrix.float() / scale.float()[:, None]).clamp(-levels, levels).to(torch.int8)
    if bits == 4:
        nibbles = (codes + 8).to(torch.uint8)  # 1..15
        codes = nibbles[:, 0::2] | (nibbles[:, 1::2] << 4)
    return codes, scale


def dequantize_rows(codes: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    if bits == 4:
        low = (codes & 0x0F).to(torch.int8) - 8
        high = (codes >> 4).to(torch.int8) - 8
        codes = torch.stack((low, high), dim=-1).flatten(1)
    return codes.float() * scale.float()[:, None]


def save_residuals(
    residuals: dict[str, torch.Tensor], bits: int, path: Path, rows: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write {parameter name: residual matrix} quantized to `bits`. `rows[name]`, where given, says which
    rows of the parameter the matrix holds (e.g. the word embeddings of the tokens a fine-tune moved)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    for name, matrix in residuals.items():
        tensors[f"{name}.codes"], tensors[f"{name}.scale"] = quantize_rows(matrix, bits)
        if rows and name in rows:
            tensors[f"{name}.rows"] = rows[name].to(torch.int64)
    save_file(tensors, str(path), metadata={"format": "pt", "bits": str(bits)})
    return path


def apply_residuals(model: torch.nn.Module, path: Path) -> int:
    """Add the residuals in `path` to `model`'s parameters in place; return how many were applied."""
    from safetensors import safe_open

    params = dict(model.named_parameters())
    with safe_open(str(path), "pt") as stored:
        bits = int((stored.metadata() or {}).get("bits", 0))
        if bits not in BITS_CHOICES:
            raise ValueError(f"{path}: missing or unknown 'bits' metadata")
        keys = set(stored.keys())
        names = sorted({key.rsplit(".", 1)[0] for key in keys})
        with torch.no_grad():
            for name in names:
                param = params.get(name)
                residual = dequantize_rows(stored.get_tensor(f"{name}.codes"), stored.get_tensor(f"{name}.scale"), bits)
                rows = stored.get_tensor(f"{name}.rows") if f"{name}.rows" in keys else None
                expected = None if param is None else (param.shape if rows is None else (len(rows), *param.shape[1:]))
                in_range = rows is None or param is None or bool((rows >= 0).all() and (rows < len(param)).all())
                if expected != residual.shape or not in_range:
                    raise ValueError(f"{path}: residual {name} {tuple(residual.shape)} does not match the model")
                if rows is None:
                    param.add_(residual.to(param.dtype))
                else:
                    param.index_add_(0, rows, residual.to(param.dtype))
    return len(names)
