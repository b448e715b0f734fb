"""The service's own metrics, through Ray's metrics API; exported beside Ray's ray_serve_* metrics on
each node's metrics port (Prometheus names get Ray's `ray_` prefix: ray_sentiment_requests_total ...).

Documented in docs/observability.md; plotted by docs/grafana/sentiment-dashboard.json.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter as Tally
from functools import cached_property

from serve_app.classifier import BatchReport

logger = logging.getLogger("ray.serve")

#: Observations are buffered and handed to Ray's metrics API this often, off the request path (each
#: Ray metric call costs tens of microseconds; a request on a 2-core machine has a few ms in all).
FLUSH_INTERVAL_S = 0.5


class Buffered:
    """Collects observations in the event loop; `flush()` runs FLUSH_INTERVAL_S after the first of a round."""

    def __init__(self) -> None:
        self._pending = False

    def _schedule(self) -> None:
        if self._pending:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (direct calls in tests): flush now
            self.flush()
            return
        self._pending = True
        loop.call_later(FLUSH_INTERVAL_S, self._flush_safely)

    def _flush_safely(self) -> None:
        self._pending = False
        try:
            self.flush()
        except Exception:  # metrics must never fail the service
            logger.warning("flushing metrics failed", exc_info=True)

    def flush(self) -> None:
        raise NotImplementedError

LATENCY_BOUNDS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
SIZE_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class IngressMetrics(Buffered):
    """Per HTTP request: outcome and texts per request."""

    def __init__(self) -> None:
        super().__init__()
        self._outcomes: Tally[str] = Tally()
        self._text_counts: list[int] = []

    @cached_property
    def _requests(self):
        from ray.serve.metrics import Counter

        return Counter("sentiment_requests", "POST /analyze requests by outcome (ok, client_error, overloaded, ...).",
                       tag_keys=("outcome",))

    @cached_property
    def _texts(self):
        from ray.serve.metrics import Histogram

        return Histogram("sentiment_texts_per_request", "Texts in one accepted POST /analyze body.", SIZE_BOUNDS)

    def record(self, status: int, code: str | None, texts: int | None) -> None:
        outcome = "ok" if status < 400 else (code or ("client_error" if status < 500 else "server_error"))
        self._outcomes[outcome] += 1
        if texts:
            self._text_counts.append(texts)
        self._schedule()

    def flush(self) -> None:
        outcomes, self._outcomes = self._outcomes, Tally()
        text_counts, self._text_counts = self._text_counts, []
        for outcome, count in outcomes.items():
            self._requests.inc(count, tags={"outcome": outcome})
        for texts in text_counts:
            self._texts.observe(texts)


class ModelMetrics(Buffered):
    """Per batch the model deployment runs: size, padding, queue wait, model time, buckets."""

    def __init__(self) -> None:
        super().__init__()
        self._batches: list[tuple[BatchReport, list[float]]] = []

    @cached_property
    def _m(self):
        from ray.serve.metrics import Counter, Histogram

        return {
            "batch": Histogram("sentiment_batch_texts", "Texts in one batch the model ran.", SIZE_BOUNDS),
            "queue": Histogram("sentiment_queue_wait_seconds", "Wait from a request's arrival at the replica to its batch's start.", LATENCY_BOUNDS_S),
            "model": Histogram("sentiment_model_seconds", "Forward time of one batch (all its buckets).", LATENCY_BOUNDS_S),
            "padded": Counter("sentiment_padded_tokens", "Padding tokens run through the model."),
            "real": Counter("sentiment_real_tokens", "Real (text) tokens run through the model."),
            "bucket": Counter("sentiment_bucket_hits", "Forwards per shape bucket.", tag_keys=("bucket",)),
        }

    def record(self, report: BatchReport, queue_waits_s: list[float]) -> None:
        self._batches.append((report, queue_waits_s))
        self._schedule()

    def flush(self) -> None:
        batches, self._batches = self._batches, []
        if not batches:
            return
        m = self._m
        padded = real = 0
        buckets: Tally[str] = Tally()
        for report, queue_waits_s in batches:
            m["batch"].observe(report.texts)
            m["model"].observe(report.model_s)
            for wait in queue_waits_s:
                m["queue"].observe(wait)
            padded += report.padded_tokens
            real += report.real_tokens
            buckets.update(report.bucket_names)
        if padded > 0:  # Ray counters refuse increments of 0
            m["padded"].inc(padded)
        if real > 0:
            m["real"].inc(real)
        for name, count in buckets.items():
            m["bucket"].inc(count, tags={"bucket": name})
