"""Unit tests (no Ray) for shape buckets: picking, grouping and padding."""

import pytest
import torch

from serve_app.batching.buckets import Bucket, BucketGrid, pad_to_bucket, padding_waste, pick_bucket, plan_groups

GRID = BucketGrid((1, 4, 8, 16, 32), (16, 32, 64, 128))


def test_pick_bucket_smallest_that_fits():
    assert pick_bucket(GRID, 1, 5) == Bucket(1, 16)
    assert pick_bucket(GRID, 3, 17) == Bucket(4, 32)
    assert pick_bucket(GRID, 4, 16) == Bucket(4, 16)
    assert pick_bucket(GRID, 32, 128) == Bucket(32, 128)


def test_pick_bucket_rejects_too_large_and_empty():
    with pytest.raises(ValueError):
        pick_bucket(GRID, 33, 10)
    with pytest.raises(ValueError):
        pick_bucket(GRID, 1, 129)
    with pytest.raises(ValueError):
        pick_bucket(GRID, 0, 10)


def test_dynamic_grid_returns_exact_shape():
    grid = BucketGrid.dynamic(32, 128)
    assert pick_bucket(grid, 3, 17) == Bucket(3, 17)


def test_grid_validation():
    with pytest.raises(ValueError):
        BucketGrid((4, 1), (16,))
    with pytest.raises(ValueError):
        BucketGrid((), (16,))


def test_plan_groups_covers_every_index_once():
    lengths = [5, 120, 17, 33, 9, 64, 3] * 7
    groups = plan_groups(lengths, GRID)
    seen = sorted(i for g in groups for i in g.indices)
    assert seen == list(range(len(lengths)))
    for g in groups:
        assert len(g.indices) <= g.bucket.batch_size
        assert max(lengths[i] for i in g.indices) <= g.bucket.seq_len


def test_plan_groups_splits_long_from_short():
    """One long text must not force 31 short ones into a 128-token bucket."""
    lengths = [120] + [8] * 31
    groups = plan_groups(lengths, GRID)
    assert len(groups) == 2
    assert groups[0].bucket == Bucket(1, 128)
    assert groups[1].bucket == Bucket(32, 16)
    padded, real = padding_waste(groups, lengths)
    assert padded + real == 1 * 128 + 32 * 16  # vs 32 * 128 if they shared one bucket


def test_plan_groups_splits_at_largest_batch_bucket():
    groups = plan_groups([10] * 33, GRID)
    assert [len(g.indices) for g in groups] == [32, 1]
    assert [g.bucket for g in groups] == [Bucket(32, 16), Bucket(1, 16)]


def test_pad_to_bucket_shape_and_filler():
    ids, mask = pad_to_bucket([[101, 7, 102], [101, 102]], Bucket(4, 8), pad_id=0, filler=[101, 102])
    assert ids.shape == mask.shape == (4, 8)
    assert ids[0, :3].tolist() == [101, 7, 102] and ids[0, 3:].sum() == 0
    assert mask.sum(dim=1).tolist() == [3, 2, 2, 2]  # filler rows are never all-zero masks
    assert ids.dtype == torch.long


def test_pad_to_bucket_rejects_overflow():
    with pytest.raises(ValueError):
        pad_to_bucket([[1] * 9], Bucket(1, 8), 0, [101, 102])
    with pytest.raises(ValueError):
        pad_to_bucket([[1]] * 2, Bucket(1, 8), 0, [101, 102])
