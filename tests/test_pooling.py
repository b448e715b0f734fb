"""The mean-pooling layer (serve_app/model/pooling.py) on a tiny random BERT: no Ray, no training."""

from __future__ import annotations

import pytest
import torch

from serve_app.model.pooling import add_mean_pooling_layer, mean_pool

TEXTS = ["a fine film", "a dull, lifeless and far too long film that nobody should see", "ok"]


@pytest.fixture()
def tiny(tiny_model_dir):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return (
        AutoTokenizer.from_pretrained(str(tiny_model_dir)),
        AutoModelForSequenceClassification.from_pretrained(str(tiny_model_dir)).eval(),
    )


def test_cls_output_is_the_layer_norm_of_the_masked_mean(tiny):
    tokenizer, model = tiny
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        last = model.bert(**batch).last_hidden_state
        expected = torch.nn.functional.layer_norm(mean_pool(last, batch["attention_mask"]), last.shape[-1:],
                                                  eps=model.config.layer_norm_eps)
        add_mean_pooling_layer(model)
        pooled = model.bert(**batch).last_hidden_state[:, 0]
    assert model.config.num_hidden_layers == 3
    assert torch.allclose(pooled, expected, atol=5e-3)
    # the reference ignores padding: the short text's mean is over its own 5 tokens, not the padded length
    assert batch["attention_mask"][2].sum() < batch["attention_mask"].shape[1]


def test_padding_does_not_change_a_prediction(tiny):
    """The service pads every batch to a shape bucket; a mean over padding would move the scores."""
    tokenizer, model = tiny
    add_mean_pooling_layer(model)
    with torch.no_grad():
        alone = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits
        padded = model(**tokenizer(TEXTS[:1], padding="max_length", max_length=32, return_tensors="pt")).logits
    assert torch.allclose(alone, padded, atol=1e-4)


def test_the_pooling_layer_is_frozen_and_saved_as_a_plain_bert(tiny, tmp_path):
    from transformers import pipeline

    tokenizer, model = tiny
    add_mean_pooling_layer(model)
    assert not any(p.requires_grad for p in model.bert.encoder.layer[-1].parameters())
    model.save_pretrained(str(tmp_path), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp_path))
    classify = pipeline("sentiment-analysis", model=str(tmp_path))  # what the seed's app.py does
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS[:1], return_tensors="pt")).logits
    answer = classify(TEXTS[0])[0]
    assert answer["label"] == model.config.id2label[int(logits.argmax())]
    assert answer["score"] == pytest.approx(float(logits.softmax(-1).max()), abs=1e-5)


def test_a_model_without_an_encoder_is_refused():
    class NotBert(torch.nn.Module):
        config = None

    with pytest.raises(ValueError, match="BERT-style encoder"):
        add_mean_pooling_layer(NotBert())


def test_the_served_module_skips_the_pooling_layer_and_gives_the_same_logits(tiny):
    from serve_app.backends.base import LogitsOnly, logits_module
    from serve_app.model.pooling import MeanPooledLogits

    tokenizer, model = tiny
    assert isinstance(logits_module(model), LogitsOnly)  # a [CLS] classifier runs as is
    add_mean_pooling_layer(model)
    with torch.no_grad():  # train a little away from the initial pooling weights' symmetry
        for param in model.bert.pooler.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    served = logits_module(model)
    assert isinstance(served, MeanPooledLogits)
    assert [len(m.bert.encoder.layer) for m in (model,)] == [3] and len(served.trunk.encoder.layer) == 2
    batch = tokenizer(TEXTS, padding="max_length", max_length=24, return_tensors="pt")
    with torch.no_grad():
        full = model(**batch).logits
        fast = served(batch["input_ids"], batch["attention_mask"])
    assert torch.allclose(full, fast, atol=1e-4), (full, fast)


def test_a_layer_that_does_not_attend_uniformly_is_not_skipped(tiny):
    from serve_app.backends.base import LogitsOnly, logits_module

    _, model = tiny
    add_mean_pooling_layer(model)
    with torch.no_grad():
        model.bert.encoder.layer[-1].attention.self.query.bias.fill_(0.5)
    assert isinstance(logits_module(model), LogitsOnly)


@pytest.mark.parametrize("backend", ["cpu-int8", "jit"])
def test_backends_serve_a_mean_pooled_model(tiny, backend):
    from serve_app.backends.compiled import CompiledBackend
    from serve_app.backends.cpu import CpuBackend
    from serve_app.backends.jit import jit_compiler
    from serve_app.batching.buckets import BucketGrid

    tokenizer, model = tiny
    add_mean_pooling_layer(model)
    batch = tokenizer(TEXTS, padding="max_length", max_length=16, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
    if backend == "jit":
        runner = CompiledBackend(model, BucketGrid((4,), (16,)), jit_compiler(), weights_sha256="test")
        ids = torch.cat([batch["input_ids"], batch["input_ids"][:1]])
        mask = torch.cat([batch["attention_mask"], batch["attention_mask"][:1]])
        got = runner.forward(ids, mask)[: len(TEXTS)]
        atol = 1e-4
    else:
        runner = CpuBackend(model, BucketGrid.dynamic(8, 16), quantize="int8")
        got = runner.forward(batch["input_ids"], batch["attention_mask"])
        atol = 0.05  # int8 weights
    assert torch.allclose(got, expected, atol=atol), (got, expected)
