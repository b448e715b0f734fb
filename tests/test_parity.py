"""Unit tests (no Ray): answers equal transformers.pipeline's, and each text is read only as far as its
window needs (serve_app/model/window.py), on the real MiniLM tokenizer."""

from __future__ import annotations

import json
import shutil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from serve_app.model.classifier import ModelMismatch, build_classifier, score_function
from serve_app.config import AppConfig
from serve_app.model.source import load_classifier, packaged_base_dir
from serve_app.model.window import WindowEncoder


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(packaged_base_dir()))


# Pieces that stress the cut: CJK (a token per character), punctuation, accents (NFD + strip), long words
# (WordPiece's [UNK] past 100 characters), whitespace runs, control and zero-width characters.
PIECES = st.sampled_from(["good", "film", " ", "   ", "\n\t", "好", "的", "!", ",", "é", "e\u0301", "unbelievable",
                          "x" * 120, "\u0000", "\u200b", "😀", "ﬁ", "İ", "Ⅻ"])
TEXTS = st.lists(PIECES, min_size=0, max_size=300).map("".join) | st.text(max_size=400)


@settings(max_examples=300, deadline=None)
@given(texts=st.lists(TEXTS, min_size=1, max_size=3), window=st.sampled_from([3, 8, 16, 64]),
       chars_per_token=st.sampled_from([1, 2, 6]))
def test_window_ids_equal_the_plain_truncated_call(tokenizer, texts, window, chars_per_token):
    """On the Rust tokenizer directly (short texts, and long ones whose prefix falls short) and through
    the probe of prefixes: the ids transformers' own truncated call gives, for a batch of texts."""
    expected = tokenizer(texts, truncation=True, max_length=window)["input_ids"]
    assert WindowEncoder(tokenizer, window, chars_per_token)(texts) == expected


def test_window_reads_a_prefix_of_a_long_text(tokenizer, monkeypatch):
    """The point of the cut: a 10,000-character text is tokenized from a few thousand characters."""
    encoder = WindowEncoder(tokenizer, 512)
    seen: list[int] = []

    def spy(read):
        def reading(texts):
            seen.extend(len(t) for t in texts)
            return read(texts)
        return reading

    monkeypatch.setattr(encoder, "encode_whole", spy(encoder.encode_whole))
    monkeypatch.setattr(encoder, "split_prefixes", spy(encoder.split_prefixes))
    text = "a fine and moving film . " * 400
    assert len(text) == 10_000
    ids = encoder([text, "short"])
    assert len(ids[0]) == 512
    assert ids == tokenizer([text, "short"], truncation=True, max_length=512)["input_ids"]
    assert sorted(seen) == [5, 512 * 6], seen  # never the whole text


@pytest.fixture(scope="module")
def default_model():
    return load_classifier("default")


def _text_of_tokens(tokenizer, n: int) -> str:
    """A review whose tokenization has exactly n tokens with [CLS] and [SEP] (n >= 2)."""
    words = ("the film is a warm , funny and honest look at a family that falls apart and finds itself again . " * 60).split()
    text = " ".join(words[: n - 2])
    assert len(tokenizer(text)["input_ids"]) == n
    return text


@pytest.mark.default_model
def test_default_model_matches_pipeline_up_to_and_past_the_window(default_model):
    """1, 100, 200 and 600 tokens (600: past BERT's 512, both truncate) through the service's own build."""
    from transformers import pipeline

    classifier = build_classifier(AppConfig(), default_model)
    tokenizer = default_model.tokenizer
    texts = ["", *(_text_of_tokens(tokenizer, n) for n in (100, 200))]
    texts[0] = "ok"  # 1 content token
    long = _text_of_tokens(tokenizer, 600)
    texts += [long, "a dull , lifeless and tedious mess . " * 40 + long]
    assert [min(len(tokenizer(t)["input_ids"]), 9999) for t in texts][:3] == [3, 100, 200]
    reference = pipeline("sentiment-analysis", model=default_model.model, tokenizer=tokenizer, device="cpu", truncation=True)
    expected = reference(texts)
    got, report = classifier.classify(texts)
    assert classifier.max_tokens == 512 and report.real_tokens == 3 + 100 + 200 + 512 + 512
    for ref, ours in zip(expected, got):
        assert ours.label == ref["label"] and ours.score == pytest.approx(ref["score"], abs=1e-4)


def _variant(tiny_model_dir, tmp_path, **changes):
    """The tiny model with its head resized to `num_labels` and its config changed."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    num_labels = changes.pop("num_labels")
    torch.manual_seed(1)
    model = AutoModelForSequenceClassification.from_pretrained(
        str(tiny_model_dir), num_labels=num_labels, ignore_mismatched_sizes=True, **changes
    )
    out = tmp_path / f"tiny-{num_labels}"
    model.save_pretrained(str(out))
    AutoTokenizer.from_pretrained(str(tiny_model_dir)).save_pretrained(str(out))
    return out


@pytest.mark.parametrize("num_labels, changes, function", [
    (3, {"id2label": {0: "neg", 1: "neu", 2: "pos"}, "label2id": {"neg": 0, "neu": 1, "pos": 2}}, "softmax"),
    (1, {"id2label": {0: "POSITIVE"}, "label2id": {"POSITIVE": 0}}, "sigmoid"),
    (3, {"problem_type": "multi_label_classification", "id2label": {0: "a", 1: "b", 2: "c"},
         "label2id": {"a": 0, "b": 1, "c": 2}}, "sigmoid"),
])
def test_labels_and_score_function_as_the_pipeline_derives_them(tiny_model_dir, tmp_path, num_labels, changes, function):
    from transformers import pipeline

    directory = _variant(tiny_model_dir, tmp_path, num_labels=num_labels, **changes)
    loaded = load_classifier(str(directory))
    assert score_function(loaded.model.config) == function
    classifier = build_classifier(AppConfig(model=str(directory)), loaded)
    texts = ["a masterpiece", "dull", "I love using this product!", "never again"]
    expected = pipeline("sentiment-analysis", model=str(directory), device="cpu", truncation=True)(texts)
    got, _ = classifier.classify(texts)
    for ref, ours in zip(expected, got):
        assert ours.label == ref["label"] and ours.score == pytest.approx(ref["score"], abs=1e-5)


def test_label_count_that_does_not_fit_the_model_fails_at_start_up(tiny_model_dir):
    loaded = load_classifier(str(tiny_model_dir))
    with pytest.raises(ModelMismatch, match="3 label names .* 2 output"):
        build_classifier(AppConfig(model=str(tiny_model_dir), labels=["a", "b", "c"]), loaded)


def test_regression_head_fails_at_start_up(tiny_model_dir, tmp_path):
    copy = tmp_path / "regression"
    shutil.copytree(tiny_model_dir, copy)
    config = json.loads((copy / "config.json").read_text())
    config["problem_type"] = "regression"
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelMismatch, match="regression"):
        build_classifier(AppConfig(model=str(copy)), load_classifier(str(copy)))
