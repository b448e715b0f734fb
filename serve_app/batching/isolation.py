"""Run a batch of requests as one merged classification; when it fails, run each request alone, so that
only a request that fails gets an error and every other request in the batch still gets its answer.

This runs where the forward runs (the model replica), so it covers every request the replica merged,
whichever Ingress replica or handle sent it. Pure Python, unit-tested without Ray.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence, TypeVar

from serve_app.batching.groups import merge, split_like

logger = logging.getLogger("ray.serve")

Answer = TypeVar("Answer")
Report = TypeVar("Report")
#: Classifies a flat list of texts: (one answer per text, a report of the work done).
ClassifyTexts = Callable[[list[str]], Awaitable["tuple[list[Answer], Report]"]]


@dataclass(frozen=True)
class IsolatedResults:
    """Per request: its answers, or the exception its own classification raised; and the reports of the
    classifications that ran (one when the merged run succeeded)."""

    answers: list
    reports: list


async def classify_isolating(classify: ClassifyTexts, requests: Sequence[list[str]]) -> IsolatedResults:
    """`classify` over every request's texts at once; if that raises, over each request alone (a request
    whose own run raises gets that exception in its place)."""
    try:
        answers, report = await classify(merge(requests))
        return IsolatedResults(split_like(answers, requests), [report])
    except Exception as exc:
        if len(requests) == 1:
            return IsolatedResults([exc], [])
        logger.warning("a batch of %d requests failed (%r); running each request alone", len(requests), exc)
    results: list = []
    reports = []
    for texts in requests:
        try:
            answers, report = await classify(texts)
        except Exception as exc:
            results.append(exc)
        else:
            results.append(answers)
            reports.append(report)
    return IsolatedResults(results, reports)
