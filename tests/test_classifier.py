"""Unit tests (no Ray) for the model core on a tiny real BERT: tokenization, buckets, backends agree."""

from __future__ import annotations

import pytest
import torch

from serve_app.backends import create_backend
from serve_app.classifier import Classifier
from serve_app.config import AppConfig
from serve_app.model_source import load_classifier

TEXTS = [
    "a masterpiece",
    "the plot is thin , the acting wooden and the whole thing drags on for far too long",
    "fine",
    "I love using this product!",
    "this is the worst service I have ever had , never again",
] * 3


def classify_with(model_dir, backend: str, **extra):
    config = AppConfig(model=str(model_dir), backend=backend, **extra)
    loaded = load_classifier(config.model)
    classifier = Classifier(loaded.tokenizer, create_backend(config, loaded), loaded.labels)
    return classifier


@pytest.fixture(scope="module")
def cpu_classifier(tiny_model_dir):
    return classify_with(tiny_model_dir, "cpu")


def test_one_prediction_per_text_in_order(cpu_classifier):
    predictions, report = cpu_classifier.classify(TEXTS)
    assert len(predictions) == len(TEXTS) and report.texts == len(TEXTS)
    singles = [cpu_classifier.classify([t])[0][0] for t in TEXTS]
    for batched, single in zip(predictions, singles):
        assert batched.label == single.label
        assert batched.score == pytest.approx(single.score, abs=1e-4)
        assert batched.label in ("NEGATIVE", "POSITIVE") and 0.5 <= batched.score <= 1.0


def test_long_text_is_truncated_not_refused(cpu_classifier):
    predictions, report = cpu_classifier.classify(["word " * 2000])
    assert len(predictions) == 1 and report.real_tokens == 128


def test_jit_matches_cpu_in_every_bucket(tiny_model_dir, cpu_classifier, tmp_path):
    jit = classify_with(
        tiny_model_dir, "jit", compile_cache_dir=str(tmp_path),
        buckets={"batch_sizes": [1, 4, 8], "seq_lens": [16, 32, 128]},
    )
    expected, _ = cpu_classifier.classify(TEXTS)
    for size in (1, 3, 8, len(TEXTS)):
        got = [p for i in range(0, len(TEXTS), size) for p in jit.classify(TEXTS[i : i + size])[0]]
        for a, b in zip(expected, got):
            assert a.label == b.label and a.score == pytest.approx(b.score, abs=1e-4)


def test_matches_plain_transformers_pipeline(tiny_model_dir, cpu_classifier):
    from transformers import pipeline

    reference = pipeline("sentiment-analysis", model=str(tiny_model_dir), device="cpu")(TEXTS[:5])
    ours, _ = cpu_classifier.classify(TEXTS[:5])
    for ref, got in zip(reference, ours):
        assert ref["label"] == got.label and ref["score"] == pytest.approx(got.score, abs=1e-4)


def test_int8_quantization_replaces_linear_layers(tiny_model_dir, cpu_classifier):
    quantized = classify_with(tiny_model_dir, "cpu", quantize="int8")
    predictions, _ = quantized.classify(TEXTS)
    assert len(predictions) == len(TEXTS)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantized.backend._module.modules())
