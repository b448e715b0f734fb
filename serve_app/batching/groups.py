"""Requests as groups of texts: merged into one list for a batch, split back in order, cut to a size."""

from __future__ import annotations

from typing import Sequence, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


def merge(groups: Sequence[Sequence[Item]]) -> list[Item]:
    """One flat list of every group's items, in order (the inverse of `split_like`)."""
    return [item for group in groups for item in group]


def split_like(flat: Sequence[Result], groups: Sequence[Sequence[object]]) -> list[list[Result]]:
    """Cut `flat` back into lists as long as `groups`, in order."""
    results, start = [], 0
    for group in groups:
        results.append(list(flat[start : start + len(group)]))
        start += len(group)
    if start != len(flat):
        raise ValueError(f"{len(flat)} results for {start} items")
    return results


def cut(items: Sequence[Item], size: int) -> list[list[Item]]:
    """`items` in consecutive parts of at most `size` (one part when it fits)."""
    if size < 1:
        raise ValueError("size must be >= 1")
    return [list(items[i : i + size]) for i in range(0, len(items), size)] or [[]]
