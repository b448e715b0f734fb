"""Per-row int4/int8 quantization of weight residuals (serve_app/model/residuals.py): pure unit tests."""

from __future__ import annotations

import pytest
import torch

from serve_app.model.residuals import apply_residuals, dequantize_rows, quantize_rows, save_residuals


@pytest.mark.parametrize("bits", [4, 8])
def test_round_trip_error_is_at_most_half_a_step(bits):
    torch.manual_seed(0)
    matrix = torch.randn(6, 10) * torch.linspace(0.01, 3.0, 6)[:, None]  # rows of very different scale
    codes, scale = quantize_rows(matrix, bits)
    assert codes.shape == ((6, 5) if bits == 4 else (6, 10))  # int4: two codes per byte
    restored = dequantize_rows(codes, scale, bits)
    step = scale.float()[:, None]
    assert torch.all((restored - matrix).abs() <= step / 2 + 1e-3 * step)
    assert torch.allclose(restored.abs().amax(dim=1), matrix.abs().amax(dim=1), rtol=2e-3)  # extremes exact


def test_zero_rows_and_exact_zeros_survive():
    matrix = torch.zeros(3, 4)
    matrix[1, 2] = 0.5
    restored = dequantize_rows(*quantize_rows(matrix, 4), 4)
    assert torch.equal(restored == 0, matrix == 0)
    assert restored[1, 2] == pytest.approx(0.5, rel=1e-3)


def test_bad_shapes_and_bits_are_refused():
    with pytest.raises(ValueError, match="even number of columns"):
        quantize_rows(torch.ones(2, 3), 4)
    with pytest.raises(ValueError, match="bits must be"):
        quantize_rows(torch.ones(2, 4), 2)


def test_apply_adds_to_the_named_parameters_and_refuses_a_mismatch(tmp_path):
    layer = torch.nn.Linear(4, 3)
    before = layer.weight.detach().clone()
    residual = torch.full((3, 4), 0.25)
    path = save_residuals({"weight": residual}, 8, tmp_path / "r.safetensors")
    assert apply_residuals(layer, path) == 1
    assert torch.allclose(layer.weight, before + residual, atol=1e-3)
    wrong = save_residuals({"weight": torch.ones(4, 4)}, 8, tmp_path / "wrong.safetensors")
    with pytest.raises(ValueError, match="does not match"):
        apply_residuals(layer, wrong)


def test_row_residuals_touch_only_their_rows(tmp_path):
    embedding = torch.nn.Embedding(10, 4)
    before = embedding.weight.detach().clone()
    rows = torch.tensor([2, 7])
    path = save_residuals({"weight": torch.ones(2, 4)}, 4, tmp_path / "rows.safetensors", rows={"weight": rows})
    apply_residuals(embedding, path)
    changed = (embedding.weight - before).abs().sum(dim=1) > 0
    assert changed.nonzero().flatten().tolist() == [2, 7]
    assert torch.allclose(embedding.weight[rows], before[rows] + 1, atol=1e-3)
    outside = save_residuals({"weight": torch.ones(1, 4)}, 4, tmp_path / "o.safetensors", rows={"weight": torch.tensor([10])})
    with pytest.raises(ValueError, match="does not match"):
        apply_residuals(embedding, outside)
