"""The service's own metrics, through Ray's metrics API; exported beside Ray's ray_serve_* metrics on
each node's metrics port (Prometheus names get Ray's `ray_` prefix: ray_sentiment_requests_total ...).

Documented in docs/observability.md; plotted by docs/grafana/sentiment-dashboard.json.
"""

from __future__ import annotations

from collections import Counter as Tally
from functools import cached_property

from serve_app.model.classifier import BatchReport

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
    """Per batch the model deployment runs: the tokens it padded and the buckets it used. Batch sizes, the
    wait for a batch and its run time are Ray's own (ray_serve_actual_batch_size, ray_serve_batch_wait_time_ms,
    ray_serve_batch_execution_time_ms: @serve.batch records them, its batch_size_fn counting texts)."""

    @cached_property
    def _m(self):
        from ray.serve.metrics import Counter

        return {
            "padded": Counter("sentiment_padded_tokens", "Padding tokens run through the model."),
            "real": Counter("sentiment_real_tokens", "Real (text) tokens run through the model."),
            "bucket": Counter("sentiment_bucket_hits", "Forwards per shape bucket.", tag_keys=("bucket",)),
        }

    def record(self, report: BatchReport) -> None:
        m = self._m
        if report.padded_tokens > 0:  # Ray counters refuse increments of 0
            m["padded"].inc(report.padded_tokens)
        if report.real_tokens > 0:
            m["real"].inc(report.real_tokens)
        for name, count in Tally(report.bucket_names).items():
            m["bucket"].inc(count, tags={"bucket": name})
