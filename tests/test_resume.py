"""Unit test (no Ray cluster): resuming reads a remote checkpoint from each rank's own copy.

Ray Train's `Checkpoint.as_directory()` gives every rank on a node one shared download directory for a
remote checkpoint; a rank that starts after another finished downloading downloads again into the same
files while the first reads them (ray-project/ray#48726), which corrupted a resume from S3 in CI. The
checkpoint here is a local directory behind an fsspec filesystem, which Ray treats as remote as it treats S3.
On `as_directory()` this fails every run: both ranks read the same directory, and in some runs one rank's
read fails outright (the second download truncated or removed its file). What it does not show: S3 itself
(the S3 tier's resume test runs the real thing).
"""

from __future__ import annotations

import threading

import pyarrow.fs
import pytest
import torch
from fsspec.implementations.local import LocalFileSystem
from ray.train import Checkpoint

import training.loop
from training.loop import load_train_state
from training.modeling import TRAIN_STATE_FILE


@pytest.fixture()
def remote_checkpoint(tmp_path) -> Checkpoint:
    torch.save({"step": 7, "model": {"w": torch.arange(4.0)}}, tmp_path / TRAIN_STATE_FILE)
    filesystem = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(LocalFileSystem()))
    return Checkpoint(str(tmp_path), filesystem=filesystem)


def test_two_ranks_resuming_at_once_read_their_own_copies(remote_checkpoint, monkeypatch):
    both_reading = threading.Barrier(2, timeout=30)
    read_from: dict[int, str] = {}
    real_load = torch.load

    def load_when_both_read(path, *args, **kwargs):
        rank = int(threading.current_thread().name)
        read_from[rank] = str(path.parent)
        both_reading.wait()  # both ranks are reading now: neither's files may be another's download target
        return real_load(path, *args, **kwargs)

    monkeypatch.setattr(training.loop.torch, "load", load_when_both_read)
    states: dict[int, dict] = {}
    ranks = [threading.Thread(target=lambda r=r: states.__setitem__(r, load_train_state(remote_checkpoint, r)), name=str(r))
             for r in (0, 1)]
    for thread in ranks:
        thread.start()
    for thread in ranks:
        thread.join(timeout=60)

    assert sorted(states) == [0, 1], "a rank did not finish reading its checkpoint"
    assert read_from[0] != read_from[1]
    for state in states.values():
        assert state["step"] == 7 and torch.equal(state["model"]["w"], torch.arange(4.0))
