"""The service's metrics go straight to Ray's metrics API, one call per observation (no buffering)."""

from __future__ import annotations

from serve_app.model.classifier import BatchReport
from serve_app.metrics import IngressMetrics, ModelMetrics


class Sink:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def inc(self, value, tags=None):
        self.calls.append(("inc", value, tags))

    def observe(self, value, tags=None):
        self.calls.append(("observe", value, tags))


def test_ingress_outcomes_and_text_counts():
    observer = IngressMetrics()
    requests, texts = Sink(), Sink()
    observer.__dict__.update(_requests=requests, _texts=texts)  # cached_property slots
    for status, code, n in ((200, None, 1), (200, None, 3), (503, "overloaded", None), (422, None, None), (500, None, None)):
        observer.record(status, code, n)
    assert requests.calls == [("inc", 1, {"outcome": outcome}) for outcome in
                              ("ok", "ok", "overloaded", "client_error", "server_error")]
    assert texts.calls == [("observe", 1, None), ("observe", 3, None)]


def test_model_batch_report():
    recorder = ModelMetrics()
    sinks = {name: Sink() for name in ("padded", "real", "bucket")}
    recorder.__dict__["_m"] = sinks
    report = BatchReport(texts=3, forwards=3, padded_tokens=4, real_tokens=20, bucket_names=("b1_s16", "b2_s16", "b1_s16"),
                         tokenize_s=0.001, model_s=0.01)
    recorder.record(report)
    assert sinks["padded"].calls == [("inc", 4, None)] and sinks["real"].calls == [("inc", 20, None)]
    assert sorted(sinks["bucket"].calls, key=str) == [("inc", 1, {"bucket": "b2_s16"}), ("inc", 2, {"bucket": "b1_s16"})]
    recorder.record(BatchReport(texts=1, forwards=1, padded_tokens=0, real_tokens=5, bucket_names=("b1_s8",),
                                tokenize_s=0, model_s=0.001))
    assert len(sinks["padded"].calls) == 1  # Ray counters refuse increments of 0
