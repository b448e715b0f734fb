"""Metrics are buffered in the event loop and handed to Ray's metrics API in aggregate, off the request path."""

from __future__ import annotations

import asyncio

from serve_app import metrics
from serve_app.classifier import BatchReport
from serve_app.metrics import IngressMetrics, ModelMetrics


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inc(self, value, tags=None):
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags=None):
        self.calls.append(("observe", value, tags))


def test_ingress_outcomes_are_counted_in_aggregate_after_the_interval(monkeypatch):
    monkeypatch.setattr(metrics, "FLUSH_INTERVAL_S", 0.05)
    observer = IngressMetrics()
    requests, texts = Sink(), Sink()
    observer.__dict__.update(_requests=requests, _texts=texts)  # cached_property slots

    async def main():
        for status, code, n in ((200, None, 1), (200, None, 3), (503, "overloaded", None), (422, None, None)):
            observer.record(status, code, n)
        assert requests.calls == []  # nothing on the request path
        await asyncio.sleep(0.15)

    asyncio.run(main())
    assert sorted(requests.calls, key=str) == sorted(
        [("inc", 2, {"outcome": "ok"}), ("inc", 1, {"outcome": "overloaded"}), ("inc", 1, {"outcome": "client_error"})],
        key=str,
    )
    assert texts.calls == [("observe", 1, None), ("observe", 3, None)]


def test_model_batches_flush_outside_a_loop_at_once():
    recorder = ModelMetrics()
    sinks = {name: Sink() for name in ("batch", "queue", "model", "padded", "real", "bucket")}
    recorder.__dict__["_m"] = sinks
    report = BatchReport(texts=3, forwards=2, padded_tokens=4, real_tokens=20, bucket_names=("1x16", "2x16"),
                         tokenize_s=0.001, model_s=0.01)
    recorder.record(report, [0.002, 0.003])
    recorder.record(report, [0.001])
    assert sinks["batch"].calls == [("observe", 3, None), ("observe", 3, None)]
    assert sinks["padded"].calls == [("inc", 4, None), ("inc", 4, None)]  # no loop: each record flushes
    assert len(sinks["queue"].calls) == 3
