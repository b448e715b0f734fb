"""The Ingress's calls (serve_app/batching/coalesce.py and RequestForwarder), without Ray."""

from __future__ import annotations

import asyncio

import pytest

from serve_app.batching.coalesce import Coalescer
from serve_app.api.errors import BackendFailure
from serve_app.api.schemas import ModelInfo, Prediction
from serve_app.config import CallSettings
from serve_app.deployments.model_client import RequestForwarder


class SlowHandler:
    """Records each batch it gets; each call takes `delay_s` (the model working), after `gate` is set when
    one is given (a call that stays in flight until the test lets it go, whatever the machine's load)."""

    def __init__(self, delay_s: float = 0.05, fail: bool = False, gate: asyncio.Event | None = None) -> None:
        self.delay_s, self.fail, self.gate = delay_s, fail, gate
        self.batches: list[list] = []
        self.running = self.most_running = 0

    async def __call__(self, items: list) -> list:
        self.batches.append(list(items))
        self.running += 1
        self.most_running = max(self.most_running, self.running)
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay_s)
            if self.fail:
                raise RuntimeError("model replica lost")
            return [f"r{item}" for item in items]
        finally:
            self.running -= 1


def run(coro):
    return asyncio.run(coro)


async def until(condition, turns: int = 1000) -> None:
    """Yield to the event loop until `condition()` holds: orders events by state, not by sleeping."""
    for _ in range(turns):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("the condition never held")


def test_lone_request_is_sent_at_once():
    async def main():
        handler = SlowHandler(delay_s=0.0)
        coalescer = Coalescer(handler, max_size=64)
        started = asyncio.get_running_loop().time()
        assert await coalescer.submit(1) == "r1"
        return asyncio.get_running_loop().time() - started, handler.batches

    elapsed, batches = run(main())
    assert batches == [[1]]
    assert elapsed < 0.05  # no batching timer


def test_requests_arriving_while_a_call_runs_form_the_next_batch():
    async def main():
        gate = asyncio.Event()
        handler = SlowHandler(delay_s=0, gate=gate)
        coalescer = Coalescer(handler, max_size=64, slots=1)
        first = asyncio.create_task(coalescer.submit(0))
        await until(lambda: handler.running == 1)  # the first call is held in flight
        rest = [asyncio.create_task(coalescer.submit(i)) for i in range(1, 11)]
        await until(lambda: len(coalescer._queue) == 10)
        gate.set()
        results = await asyncio.gather(first, *rest)
        return results, handler

    results, handler = run(main())
    assert results == [f"r{i}" for i in range(11)]  # each caller gets its own answer, in order
    assert handler.batches == [[0], list(range(1, 11))]
    assert handler.most_running == 1


def test_gather_waits_only_while_another_call_runs():
    """gather_s: a lone request goes at once; while a call runs, the next (not full) call waits gather_s and
    takes what arrived meanwhile; a full one goes at once."""

    async def main():
        gate = asyncio.Event()
        handler = SlowHandler(delay_s=0, gate=gate)
        coalescer = Coalescer(handler, max_size=4, slots=2, gather_s=0.5)
        first = asyncio.create_task(coalescer.submit(0))
        await until(lambda: handler.running == 1)  # sent at once: nothing else was running
        second = asyncio.create_task(coalescer.submit(1))  # slot free, a call running: gathers for 0.5 s
        for _ in range(20):  # many loop turns, far less than 0.5 s: without the gather, [1] would go alone now
            await asyncio.sleep(0)
        third = asyncio.create_task(coalescer.submit(2))  # arrives within the gather window
        gate.set()
        await asyncio.gather(first, second, third)
        return handler.batches

    assert run(main()) == [[0], [1, 2]]

    async def full():
        handler = SlowHandler(delay_s=0.3)
        coalescer = Coalescer(handler, max_size=2, slots=2, gather_s=5.0)
        first = asyncio.create_task(coalescer.submit(0))
        await until(lambda: handler.running == 1)
        rest = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]  # a full batch: no gather wait
        started = asyncio.get_running_loop().time()
        await asyncio.gather(first, *rest)
        return handler.batches, asyncio.get_running_loop().time() - started

    batches, elapsed = run(full())
    assert batches == [[0], [1, 2]] and elapsed < 1.0


def test_batches_respect_max_size_by_item_size():
    async def main():
        gate = asyncio.Event()
        handler = SlowHandler(delay_s=0, gate=gate)
        coalescer = Coalescer(handler, max_size=5, size_of=len)
        blocker = asyncio.create_task(coalescer.submit(["x"]))
        await until(lambda: handler.running == 1)
        items = [["a", "b"], ["c", "d"], ["e", "f"], ["g"] * 9]  # the last is larger than max_size
        waiting = [asyncio.create_task(coalescer.submit(item)) for item in items]
        await until(lambda: len(coalescer._queue) == 4)
        gate.set()
        results = await asyncio.gather(*waiting)
        await blocker
        return results, handler.batches

    results, batches = run(main())
    assert len(results) == 4
    assert batches[1:] == [[["a", "b"], ["c", "d"]], [["e", "f"]], [["g"] * 9]]  # an oversize item goes alone


def test_slots_bound_concurrent_calls():
    async def main():
        handler = SlowHandler(delay_s=0.03)
        coalescer = Coalescer(handler, max_size=1, slots=3)
        await asyncio.gather(*(coalescer.submit(i) for i in range(9)))
        return handler

    handler = run(main())
    assert handler.most_running == 3
    assert len(handler.batches) == 9


def test_a_failed_call_fails_every_request_in_it_and_the_next_batch_still_runs():
    async def main():
        gate = asyncio.Event()
        handler = SlowHandler(delay_s=0, fail=True, gate=gate)
        coalescer = Coalescer(handler, max_size=64)
        blocker = asyncio.create_task(coalescer.submit(0))
        await until(lambda: handler.running == 1)
        batch = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2, 3)]
        await until(lambda: len(coalescer._queue) == 3)
        gate.set()
        outcomes = await asyncio.gather(blocker, *batch, return_exceptions=True)
        handler.fail = False
        after = await coalescer.submit(4)
        return outcomes, after

    outcomes, after = run(main())
    assert all(isinstance(o, RuntimeError) for o in outcomes)
    assert after == "r4"


def test_a_cancelled_caller_is_left_out_of_the_batch():
    async def main():
        running = asyncio.Event()
        handler = SlowHandler(delay_s=0, gate=running)
        coalescer = Coalescer(handler, max_size=64)
        blocker = asyncio.create_task(coalescer.submit(0))
        await until(lambda: handler.running == 1)  # the first call is in flight (held until `running` is set)
        gone = asyncio.create_task(coalescer.submit(1))
        kept = asyncio.create_task(coalescer.submit(2))
        await until(lambda: len(coalescer._queue) == 2)
        gone.cancel()  # e.g. the ingress's request timeout fired
        running.set()
        await asyncio.gather(blocker, kept)
        return handler.batches

    assert run(main()) == [[0], [2]]


def test_a_full_queue_refuses_at_once():
    from serve_app.batching.coalesce import QueueFull

    async def main():
        gate = asyncio.Event()
        handler = SlowHandler(delay_s=0, gate=gate)
        coalescer = Coalescer(handler, max_size=1, max_queued=2)
        running = asyncio.create_task(coalescer.submit(0))
        await until(lambda: handler.running == 1)
        waiting = [asyncio.create_task(coalescer.submit(i)) for i in (1, 2)]
        await until(lambda: len(coalescer._queue) == 2)
        with pytest.raises(QueueFull):
            await coalescer.submit(3)
        gate.set()
        return await asyncio.gather(running, *waiting)

    assert run(main()) == ["r0", "r1", "r2"]


def test_handler_returning_the_wrong_count_is_an_error_not_a_hang():
    async def short(items):
        return items[:-1]

    async def main():
        coalescer = Coalescer(short, max_size=8)
        return await asyncio.wait_for(coalescer.submit(1), timeout=2)

    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        run(main())


class FakeModel:
    """Stands in for HandleClient: answers each request of a call (each text scored by its length), records
    each call's requests; a request holding "fail" gets a BackendFailure in its place, as a replica answers."""

    def __init__(self) -> None:
        self.calls: list[list[list[str]]] = []

    async def classify(self, requests: list[list[str]]) -> list:
        self.calls.append([list(texts) for texts in requests])
        await asyncio.sleep(0.02)
        return [BackendFailure("the model failed on this request") if "fail" in texts else
                [Prediction(label="POSITIVE" if len(t) % 2 else "NEGATIVE", score=len(t) / 100) for t in texts]
                for texts in requests]

    async def info(self) -> ModelInfo:
        return ModelInfo(source="fake", backend="cpu", labels=("NEGATIVE", "POSITIVE"), buckets=1, pid=0)


def test_the_forwarder_sends_queued_requests_whole_in_one_call_and_answers_each():
    async def main():
        model = FakeModel()
        client = RequestForwarder(model, CallSettings(max_texts=64, calls_in_flight=1))
        first = asyncio.create_task(client.classify(["a"]))
        await until(lambda: model.calls)  # the first call is sent; the next requests queue behind it
        requests = [["bb", "ccc"], ["fail"], ["e" * 5, "f" * 6, "g" * 7]]
        answers = await asyncio.gather(*(client.classify(texts) for texts in requests), return_exceptions=True)
        await first
        return model.calls, answers, requests

    calls, answers, requests = run(main())
    assert calls == [[["a"]], requests]  # boundaries kept: the replica batches and isolates
    assert isinstance(answers[1], BackendFailure)
    for texts, answer in [(requests[0], answers[0]), (requests[2], answers[2])]:
        assert [p.score for p in answer] == [len(t) / 100 for t in texts]


def test_a_request_of_more_than_max_texts_goes_whole_in_a_call_of_its_own():
    async def main():
        model = FakeModel()
        client = RequestForwarder(model, CallSettings(max_texts=4, calls_in_flight=1))
        first = asyncio.create_task(client.classify(["a"]))
        await until(lambda: model.calls)
        answers = await asyncio.gather(client.classify(["b"] * 6), client.classify(["c"]))
        await first
        return model.calls, answers

    calls, answers = run(main())
    assert calls == [[["a"]], [["b"] * 6], [["c"]]] and [len(a) for a in answers] == [6, 1]


def test_the_forwarder_applies_new_settings():
    """After reconfigure: calls carry at most the new max_texts, and two run at once."""

    class Counting(FakeModel):
        in_flight = most = 0

        async def classify(self, requests):
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await super().classify(requests)
            finally:
                self.in_flight -= 1

    async def main():
        model = Counting()
        client = RequestForwarder(model, CallSettings(max_texts=64, calls_in_flight=1))
        client.apply(CallSettings(max_texts=3, calls_in_flight=2))
        await asyncio.gather(*(client.classify([f"t{i}"]) for i in range(6)))
        return model

    model = run(main())
    assert max(len(call) for call in model.calls) <= 3 and sum(len(call) for call in model.calls) == 6
    assert model.most == 2
    with pytest.raises(ValueError):
        CallSettings(calls_in_flight=0)


def test_the_next_call_starts_before_the_finished_callers_resume():
    """Answering a batch wakes every caller; the next model call must not wait behind them."""

    async def main():
        events: list[str] = []
        release_first = asyncio.Event()

        async def handler(items):
            events.append(f"call {items}")
            if items == [0]:
                await release_first.wait()
            return items

        async def caller(item):
            await coalescer.submit(item)
            events.append(f"answered {item}")

        coalescer = Coalescer(handler, max_size=64, slots=1)
        first = asyncio.create_task(caller(0))
        await until(lambda: events == ["call [0]"])
        rest = [asyncio.create_task(caller(i)) for i in (1, 2)]
        await until(lambda: len(coalescer._queue) == 2)
        release_first.set()
        await asyncio.gather(first, *rest)
        return events

    events = run(main())
    assert events.index("call [1, 2]") < events.index("answered 0"), events


def test_overload_fails_the_requests_of_the_call_with_retry_after():
    from serve_app.api.errors import Overloaded

    class Busy(FakeModel):
        async def classify(self, requests):
            self.calls.append(requests)
            raise Overloaded("busy")

    async def main():
        model = Busy()
        client = RequestForwarder(model, CallSettings(max_texts=64, calls_in_flight=1))
        results = await asyncio.gather(client.classify(["a"]), client.classify(["b"]), return_exceptions=True)
        return model.calls, results

    calls, results = run(main())
    assert all(isinstance(r, Overloaded) and r.headers["Retry-After"] for r in results) and len(calls) <= 2
