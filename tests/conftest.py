"""Shared fixtures: a tiny random BERT classifier saved to a temp dir (real config, tokenizer and weights)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SST2_DIR = (REPO / ".." / "shared" / "data" / "sst2").resolve()

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def build_tiny_model(out_dir: Path, seed: int = 0, layers: int = 2) -> Path:
    """A 2-layer, 32-wide BERT for sequence classification with the packaged MiniLM tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from serve_app.model.source import packaged_base_dir

    torch.manual_seed(seed)
    tokenizer = AutoTokenizer.from_pretrained(str(packaged_base_dir()))
    config = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
        num_labels=2,
        id2label={0: "NEGATIVE", 1: "POSITIVE"},
        label2id={"NEGATIVE": 0, "POSITIVE": 1},
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(str(out_dir), safe_serialization=True)
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SST2_DIR / "dev.tsv").is_file():
        pytest.skip(f"SST-2 not found at {SST2_DIR}")
    return SST2_DIR
