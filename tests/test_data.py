"""Training data sources: a local directory and the same files under a URI (file:// stands in for s3://)."""

from __future__ import annotations

import pytest

from training.config import DataConfig
from training.data import DataError, load_split


def test_uri_source_reads_the_same_rows_as_the_directory(sst2_dir):
    local = load_split(DataConfig(source=str(sst2_dir)), "dev")
    remote = load_split(DataConfig(source=sst2_dir.as_uri() + "/"), "dev")
    assert len(remote) == 872 and remote == local


def test_uri_source_without_the_split_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no validation.tsv"):
        load_split(DataConfig(source=tmp_path.as_uri()), "validation")


def test_eks_config_reads_a_uri_not_the_hub():
    from training.config import load_config

    config = load_config("training/configs/eks.yaml")
    assert config.data.source.startswith("s3://") and config.data.eval_split == "dev"
