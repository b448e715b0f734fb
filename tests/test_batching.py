"""The model replica as the service's one batching owner (serve_app/deployments/model.py), with Ray Serve's
own `@serve.batch` running in this process, the real tokenizer and the tiny BERT.

Callers are separate calls into one replica, as from two Ingress replicas (or any handle): what a replica
merges, it isolates. What this does not cover: Ray's routing of calls to replicas (tests/test_serve_app.py).
"""

from __future__ import annotations

import asyncio
import threading

import pytest

from serve_app.api.errors import BackendFailure
from serve_app.batching.isolation import classify_isolating
from tests.replicas import WrappedBackend, build_replica

POISON = "\ud800 broken"  # a lone surrogate: the real tokenizer raises on it (the HTTP layer refuses it with 422)


@pytest.fixture
def replica(tiny_model_dir, monkeypatch):
    """A replica whose classifier records the texts of every classification it runs."""
    model, _ = build_replica(monkeypatch, tiny_model_dir)
    runs: list[list[str]] = []
    classify = model.classifier.classify

    def recording(texts):
        runs.append(list(texts))
        return classify(texts)

    model.classifier.classify = recording
    return model, runs


def labels_and_scores(predictions):
    return [p.label for p in predictions], [p.score for p in predictions]


def test_a_poisoned_request_fails_alone_among_requests_from_two_callers(replica):
    """Caller A sends a good request and a poisoned one in one call; caller B, in another call, two good
    ones. The replica merges all four into one batch (it fills max_batch_size, so it runs at once); the
    batch fails, each request runs alone, and only the poisoned request fails. Every other request's
    answer equals its answer alone."""
    model, runs = replica
    call_a = [["a fine film"], ["fine", POISON]]
    call_b = [["dull , far too long", "great"], ["ok"]]
    model.reconfigure({"max_batch_size": 6, "batch_wait_timeout_s": 1.0})

    async def main():
        return await asyncio.gather(model.classify(call_a), model.classify(call_b))

    answers_a, answers_b = asyncio.run(main())
    assert sorted(runs[0]) == sorted(t for request in call_a + call_b for t in request)
    assert isinstance(answers_a[1], BackendFailure) and "surrogate" not in str(answers_a[1])
    alone = {tuple(texts): labels_and_scores(model.classifier.classify(texts)[0]) for texts in [call_a[0], *call_b]}
    for texts, answer in [(call_a[0], answers_a[0]), (call_b[0], answers_b[0]), (call_b[1], answers_b[1])]:
        labels, scores = labels_and_scores(answer)
        assert labels == alone[tuple(texts)][0]
        assert scores == pytest.approx(alone[tuple(texts)][1], abs=1e-5)


def test_a_request_longer_than_a_batch_joins_batches_in_parts_and_is_answered_in_order(replica):
    model, runs = replica
    model.reconfigure({"max_batch_size": 4})
    texts = [f"{'good' if i % 3 else 'awful'} film number {i}" for i in range(10)]
    [answer] = asyncio.run(model.classify([texts]))
    assert max(len(run) for run in runs) <= 4 and sum(len(run) for run in runs) == 10
    assert labels_and_scores(answer) == labels_and_scores(model.classifier.classify(texts)[0])


def test_a_failing_part_fails_only_its_own_request(replica):
    model, _ = replica
    model.reconfigure({"max_batch_size": 3})
    long_poisoned = ["good"] * 4 + [POISON] + ["fine"] * 3
    answers = asyncio.run(model.classify([long_poisoned, ["a good film"]]))
    assert isinstance(answers[0], BackendFailure)
    assert len(answers[1]) == 1 and not isinstance(answers[1], BackendFailure)


def test_isolation_runs_each_request_alone_only_after_a_merged_failure():
    calls = []

    async def classify(texts):
        calls.append(list(texts))
        if "bad" in texts:
            raise ValueError("bad text")
        return [t.upper() for t in texts], len(texts)

    ok = asyncio.run(classify_isolating(classify, [["a"], ["b", "c"]]))
    assert ok.answers == [["A"], ["B", "C"]] and ok.reports == [3] and calls == [["a", "b", "c"]]
    calls.clear()
    failed = asyncio.run(classify_isolating(classify, [["a"], ["bad"], ["c"]]))
    assert failed.answers[0] == ["A"] and isinstance(failed.answers[1], ValueError) and failed.answers[2] == ["C"]
    assert calls == [["a", "bad", "c"], ["a"], ["bad"], ["c"]] and failed.reports == [1, 1]


class HeldDevice(WrappedBackend):
    """An accelerator stand-in: each forward waits (GIL released) until the test lets it finish."""

    on_host = False

    def __init__(self, inner):
        super().__init__(inner)
        self.on_host = False
        self.release = threading.Event()
        self.forwards = 0

    def forward(self, input_ids, attention_mask):
        self.forwards += 1
        self.release.wait(10)
        return super().forward(input_ids, attention_mask)


def test_on_an_accelerator_the_next_batch_is_prepared_while_the_device_runs(tiny_model_dir, monkeypatch):
    """Tokenizing and padding the next batch overlaps the device's forwards of the current one."""
    model, device = build_replica(monkeypatch, tiny_model_dir, HeldDevice)
    device.release.set()  # warm-up done
    device.release.clear()
    device.forwards = 0
    prepared: list[int] = []
    prepare = model.classifier.prepare

    def recording(texts):
        prepared.append(len(texts))
        return prepare(texts)

    model.classifier.prepare = recording

    async def main():
        first = asyncio.ensure_future(model.classify([["a good film"]]))
        for _ in range(1000):  # until the first batch's forward is running on the device
            if device.forwards:
                break
            await asyncio.sleep(0.001)
        second = asyncio.ensure_future(model.classify([["a bad film", "fine"]]))
        for _ in range(1000):
            if len(prepared) == 2:
                break
            await asyncio.sleep(0.001)
        overlapped = len(prepared) == 2 and device.forwards == 1  # the second batch is ready, the first still on the device
        device.release.set()
        return overlapped, await first, await second

    overlapped, first, second = asyncio.run(main())
    assert overlapped
    assert len(first[0]) == 1 and len(second[0]) == 2
