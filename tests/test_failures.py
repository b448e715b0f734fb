"""Failure paths without Ray: the handle client's retries and error mapping, back-pressure answers,
reconfiguring with requests queued, and the quantizer on zero rows."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import torch

from serve_app.api.routes import create_api
from serve_app.batching.coalesce import Coalescer, QueueFull
from serve_app.config import AppConfig, CallSettings
from serve_app.deployments.model_client import HandleClient, RequestForwarder
from serve_app.api.errors import BackendFailure, NotReady, Overloaded
from serve_app.model.residuals import dequantize_rows, quantize_rows
from serve_app.api.schemas import Prediction


def run(coro):
    return asyncio.run(coro)


class FakeHandle:
    """A DeploymentHandle whose `classify.remote(...)` raises the queued exceptions, then answers."""

    def __init__(self, *failures: Exception) -> None:
        self.failures = list(failures)
        self.calls = 0
        self.classify = self.info = self

    def remote(self, requests):
        self.calls += 1

        async def answer():
            if self.failures:
                raise self.failures.pop(0)
            return [[Prediction(label="POSITIVE", score=1.0) for _ in texts] for texts in requests]

        return answer()


def actor_died():
    from ray.exceptions import ActorUnavailableError

    return ActorUnavailableError("replica lost", b"0" * 16)


@pytest.fixture
def no_backoff(monkeypatch):
    """The retry back-off without its waits (this patches asyncio.sleep for the whole test)."""
    real_sleep = asyncio.sleep
    monkeypatch.setattr(asyncio, "sleep", lambda seconds: real_sleep(0))


def test_handle_client_retries_a_lost_replica_then_answers(no_backoff):
    handle = FakeHandle(actor_died(), actor_died())
    assert run(HandleClient(handle).classify([["a"]])) == [[Prediction(label="POSITIVE", score=1.0)]]
    assert handle.calls == 3


def test_handle_client_gives_up_after_its_retries(monkeypatch, no_backoff):
    monkeypatch.setattr(HandleClient, "RETRIES", 2)
    handle = FakeHandle(*(actor_died() for _ in range(5)))
    with pytest.raises(BackendFailure, match="unavailable"):
        run(HandleClient(handle).classify([["a"]]))
    assert handle.calls == 3


def test_handle_client_maps_back_pressure_and_other_errors():
    from ray.serve.exceptions import BackPressureError

    with pytest.raises(Overloaded):
        run(HandleClient(FakeHandle(BackPressureError(num_queued_requests=3, max_queued_requests=2))).classify([["a"]]))
    handle = FakeHandle(ValueError("tokenizer exploded at /secret/path"))
    with pytest.raises(BackendFailure) as failure:
        run(HandleClient(handle).classify([["a"]]))
    assert "secret" not in failure.value.message and handle.calls == 1  # not retried: the request itself failed


def test_back_pressure_from_the_model_deployment_gets_the_configured_status_and_an_estimate():
    from ray.serve.exceptions import BackPressureError

    client = RequestForwarder(HandleClient(FakeHandle(BackPressureError(num_queued_requests=3, max_queued_requests=2))),
                              overload_status=503)
    with pytest.raises(Overloaded) as refused:
        run(client.classify(["a"]))
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "1"}


def test_callers_that_gave_up_leave_the_queue():
    """Two requests time out while waiting: their places are free for the next ones (no false 429)."""

    async def main():
        gate = asyncio.Event()

        async def handler(items):
            await gate.wait()
            return items

        coalescer = Coalescer(handler, max_size=1, max_queued=2)
        running = asyncio.create_task(coalescer.submit("running"))
        await asyncio.sleep(0)
        for item in ("late-1", "late-2"):
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(coalescer.submit(item), 0.01)
        queued = [asyncio.create_task(coalescer.submit(f"next-{i}")) for i in range(2)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull):  # now the queue really is full
            await coalescer.submit("one too many")
        gate.set()
        return await asyncio.gather(running, *queued)

    assert run(main()) == ["running", "next-0", "next-1"]


def test_retry_after_is_the_queued_work_at_the_measured_rate():
    """Calls of 10 items take 0.1 s (100 items/s on one slot): 300 queued items are ~3 s of work."""

    async def main():
        async def handler(items):
            await asyncio.sleep(0.1)
            return items

        coalescer = Coalescer(handler, max_size=10, size_of=len, max_queued=100)
        assert coalescer.retry_after_s() == 1  # nothing measured yet
        await coalescer.submit(["x"] * 10)
        first = asyncio.create_task(coalescer.submit(["x"] * 10))
        while not coalescer._in_flight:  # the first call is running
            await asyncio.sleep(0)
        waiting = [asyncio.create_task(coalescer.submit(["y"] * 10)) for _ in range(29)]
        await asyncio.sleep(0)
        estimate = coalescer.retry_after_s()
        await asyncio.gather(first, *waiting)
        return estimate

    assert 2 <= run(main()) <= 5  # 10 running + 290 queued at ~100/s (timer jitter allowed)


def test_retry_after_is_kept_within_a_minute():
    coalescer = Coalescer(lambda items: items, max_size=1)
    coalescer._rate, coalescer._in_flight = 0.001, 10
    assert coalescer.retry_after_s() == 60


class RecordingModel:
    """A model client that records each call's texts and answers after `delay_s`, scoring with `score`."""

    def __init__(self, delay_s: float, score) -> None:
        self.delay_s, self.score = delay_s, score
        self.calls: list[list[str]] = []

    async def classify(self, requests):
        self.calls.append([t for texts in requests for t in texts])
        await asyncio.sleep(self.delay_s)
        return [[Prediction(label="POSITIVE", score=self.score(t)) for t in texts] for texts in requests]


def test_reconfigure_with_requests_queued_answers_every_one():
    """Requests queued in the old coalescer when new settings arrive are answered; new ones use the new settings."""

    async def main():
        model = RecordingModel(0.05, lambda text: len(text) / 100)
        calls = model.calls
        client = RequestForwarder(model, CallSettings(max_texts=64, calls_in_flight=1))
        before = [asyncio.create_task(client.classify([f"old-{i}"])) for i in range(6)]
        for _ in range(20):  # one call running (0.05 s), five queued
            await asyncio.sleep(0)
        assert len(calls) == 1
        client.apply(CallSettings(max_texts=2, calls_in_flight=1))
        after = [asyncio.create_task(client.classify([f"new-{i}"])) for i in range(4)]
        answers = await asyncio.wait_for(asyncio.gather(*before, *after), 5)
        return calls, answers

    calls, answers = run(main())
    assert [len(a) for a in answers] == [1] * 10
    assert sorted(t for call in calls for t in call) == sorted([f"old-{i}" for i in range(6)] + [f"new-{i}" for i in range(4)])
    assert all(len(call) <= 2 for call in calls if call[0].startswith("new"))


class NotReadyModel:
    def __init__(self, error: Exception) -> None:
        self.error = error

    async def classify(self, texts):
        raise AssertionError("not called")

    async def info(self):
        raise self.error


@pytest.mark.parametrize("error", [NotReady("loading"), BackendFailure("model replica unavailable")])
def test_healthz_is_503_while_the_model_is_unavailable(error):
    async def main():
        app = create_api(NotReadyModel(error), AppConfig())
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.get("/healthz")

    response = run(main())
    assert response.status_code == 503 and response.json()["status"] == "unavailable"


@pytest.mark.parametrize("bits", [4, 8])
def test_quantizer_keeps_zero_and_tiny_rows_finite(bits):
    matrix = torch.zeros(4, 8)
    matrix[1] = torch.linspace(-1, 1, 8)
    matrix[2] = 1e-9  # below float16's range: its scale rounds to 0
    codes, scale = quantize_rows(matrix, bits)
    restored = dequantize_rows(codes, scale, bits)
    assert torch.isfinite(restored).all() and torch.isfinite(scale.float()).all()
    assert torch.equal(restored[0], torch.zeros(8)) and restored[2].abs().max() <= 1e-8
    assert torch.allclose(restored[1], matrix[1], atol=1.0 / (2 ** (bits - 1) - 1))
