"""Shape buckets as data: which compiled (batch, sequence) shape a group of texts runs in, and padding to it.

Neuron (and the `jit` backend) run only shapes compiled ahead of time. A batch of tokenized texts is sorted
by length, cut into groups that each fit one bucket without padding much, and each group is padded once to
its bucket. Dynamic backends (`cpu`) use the same planner with `BucketGrid.dynamic(...)`: groups are still
length-sorted, and padded only to their own longest text.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Bucket:
    batch_size: int
    seq_len: int

    @property
    def name(self) -> str:
        return f"b{self.batch_size}_s{self.seq_len}"


@dataclass(frozen=True)
class BucketGrid:
    """Sorted batch sizes x sequence lengths. `fixed=False` means any shape up to the largest is allowed."""

    batch_sizes: tuple[int, ...]
    seq_lens: tuple[int, ...]
    fixed: bool = True

    def __post_init__(self) -> None:
        for values, what in ((self.batch_sizes, "batch_sizes"), (self.seq_lens, "seq_lens")):
            if not values or any(v < 1 for v in values) or list(values) != sorted(set(values)):
                raise ValueError(f"{what} must be a non-empty increasing list of positive integers, got {values}")

    @classmethod
    def dynamic(cls, max_batch_size: int, max_seq_len: int) -> "BucketGrid":
        return cls((max_batch_size,), (max_seq_len,), fixed=False)

    @property
    def max_batch_size(self) -> int:
        return self.batch_sizes[-1]

    @property
    def max_seq_len(self) -> int:
        return self.seq_lens[-1]

    def all(self) -> list[Bucket]:
        return [Bucket(b, s) for b in self.batch_sizes for s in self.seq_lens]


def _smallest_at_least(values: tuple[int, ...], needed: int) -> int | None:
    index = bisect_left(values, needed)
    return values[index] if index < len(values) else None


def pick_bucket(grid: BucketGrid, batch_size: int, seq_len: int) -> Bucket:
    """Smallest bucket that holds `batch_size` rows of `seq_len` tokens (exact shape on a dynamic grid)."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"empty shape ({batch_size}, {seq_len})")
    if batch_size > grid.max_batch_size or seq_len > grid.max_seq_len:
        raise ValueError(f"shape ({batch_size}, {seq_len}) exceeds the largest bucket ({grid.max_batch_size}, {grid.max_seq_len})")
    if not grid.fixed:
        return Bucket(batch_size, seq_len)
    return Bucket(_smallest_at_least(grid.batch_sizes, batch_size), _smallest_at_least(grid.seq_lens, seq_len))


@dataclass(frozen=True)
class Group:
    """Indices (into the request's texts) that run together in one forward, and the bucket they fill."""

    indices: tuple[int, ...]
    bucket: Bucket


def plan_groups(lengths: list[int], grid: BucketGrid, max_waste: float = 0.5) -> list[Group]:
    """Cut texts into groups, each run as one forward padded to one bucket.

    Texts are taken longest first, so a group's sequence length is set by its first text. A group closes
    when it fills the largest batch bucket, or when the next text would need a bucket at most
    (1 - max_waste) as long as the group's: one long text then never drags short ones into its long
    bucket, while texts of similar length share a forward.
    """
    if any(n < 1 or n > grid.max_seq_len for n in lengths):
        raise ValueError(f"token lengths must be within 1..{grid.max_seq_len}")
    order = sorted(range(len(lengths)), key=lengths.__getitem__, reverse=True)  # stable: ties keep their order
    seq_lens = grid.seq_lens
    groups: list[Group] = []
    current: list[int] = []
    seq_len = 0
    for index in order:
        row_len = _smallest_at_least(seq_lens, lengths[index]) if grid.fixed else lengths[index]
        if current and (len(current) == grid.max_batch_size or 1.0 - row_len / seq_len >= max_waste):
            groups.append(_close(lengths, current, grid))
            current = []
        if not current:
            seq_len = row_len
        current.append(index)
    if current:
        groups.append(_close(lengths, current, grid))
    return groups


def _close(lengths: list[int], indices: list[int], grid: BucketGrid) -> Group:
    return Group(tuple(indices), pick_bucket(grid, len(indices), max(lengths[i] for i in indices)))


def pad_to_bucket(
    token_ids: list[list[int]], bucket: Bucket, pad_id: int, filler: list[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Build (input_ids, attention_mask) of exactly the bucket's shape.

    Rows past the real texts are `filler` (e.g. [CLS, SEP]) rather than all padding, so no row has an
    all-zero attention mask; their outputs are dropped by the caller.
    """
    if len(token_ids) > bucket.batch_size:
        raise ValueError(f"{len(token_ids)} rows do not fit bucket {bucket.name}")
    seq_len = bucket.seq_len
    rows = token_ids + [filler] * (bucket.batch_size - len(token_ids))
    lengths = [len(ids) for ids in rows]
    if max(lengths) > seq_len:
        raise ValueError(f"a text of {max(lengths)} tokens does not fit bucket {bucket.name}")
    # One flat buffer, viewed as the bucket's shape: converting nested lists (or a row at a time) costs more.
    flat = array("q")
    for ids, length in zip(rows, lengths):
        flat.extend(ids)
        flat.extend([pad_id] * (seq_len - length))
    input_ids = torch.frombuffer(flat, dtype=torch.long).view(bucket.batch_size, seq_len)
    attention_mask = (torch.arange(seq_len) < torch.tensor(lengths)[:, None]).long()
    return input_ids, attention_mask


def padding_waste(groups: list[Group], lengths: list[int]) -> tuple[int, int]:
    """(padded tokens, real tokens) over a plan: the figure the metrics and the closing note report."""
    real = sum(lengths)
    total = sum(g.bucket.batch_size * g.bucket.seq_len for g in groups)
    return total - real, real
