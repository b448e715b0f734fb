"""Waiting on a live system in the slow tiers: a printed timeline, and polling with a deadline."""

from __future__ import annotations

import time

import httpx


class Timeline:
    def __init__(self, name: str = "cluster") -> None:
        self.name = name
        self.start = time.monotonic()
        self.events: list[tuple[float, str]] = []

    def mark(self, what: str) -> None:
        self.events.append((time.monotonic() - self.start, what))
        print(f"[{self.name} +{self.events[-1][0]:6.1f}s] {what}", flush=True)

    def at(self, prefix: str) -> float:
        return next(t for t, what in self.events if what.startswith(prefix))


def wait_for(predicate, timeout_s: float, what: str, every_s: float = 1.0):
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            if value := predicate():
                return value
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(every_s)
    raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what} (last error: {last!r})")


def format_timeline(timeline: Timeline, title: str) -> str:
    text = f"\n{title}:\n" + "\n".join(f"  +{t:6.1f}s  {what}" for t, what in timeline.events)
    return text
