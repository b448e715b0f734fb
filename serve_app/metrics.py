"""The service's own metrics, through Ray's metrics API; exported beside Ray's ray_serve_* metrics on
each node's metrics port (Prometheus names get Ray's `ray_` prefix: ray_sentiment_requests_total ...).

Documented in docs/observability.md; plotted by docs/grafana/sentiment-dashboard.json.
"""

from __future__ import annotations

from collections import Counter as Tally
from functools import cached_property

from serve_app.model.classifier import BatchReport

LATENCY_BOUNDS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
SIZE_BOUNDS = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]


class IngressMetrics:
    """Per HTTP request: outcome and texts per request."""

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
        self._requests.inc(1, tags={"outcome": outcome})
        if texts:
            self._texts.observe(texts)


class ModelMetrics:
    """Per batch the model deployment runs: size, padding, queue wait, model time, buckets."""

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
        m = self._m
        m["batch"].observe(report.texts)
        m["model"].observe(report.model_s)
        for wait in queue_waits_s:
            m["queue"].observe(wait)
        if report.padded_tokens > 0:  # Ray counters refuse increments of 0
            m["padded"].inc(report.padded_tokens)
        if report.real_tokens > 0:
            m["real"].inc(report.real_tokens)
        for name, count in Tally(report.bucket_names).items():
            m["bucket"].inc(count, tags={"bucket": name})
