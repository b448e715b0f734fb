"""The model deployment's class outside Ray (its batching: tests/test_batching.py)."""

from __future__ import annotations

import pytest

from tests.replicas import WrappedBackend, build_replica


class BrokenAfterWarmUp(WrappedBackend):
    """Fails every forward once `broken` is set (a wedged device)."""

    broken = False

    def forward(self, input_ids, attention_mask):
        if self.broken:
            raise RuntimeError("NeuronCore lost")
        return super().forward(input_ids, attention_mask)


@pytest.fixture
def replica(tiny_model_dir, monkeypatch):
    return build_replica(monkeypatch, tiny_model_dir, BrokenAfterWarmUp)


def test_check_health_runs_a_real_forward(replica):
    model, backend = replica
    model.check_health()
    backend.broken = True
    with pytest.raises(RuntimeError, match="NeuronCore lost"):
        model.check_health()


class SlowForward(WrappedBackend):
    """Each forward sleeps first and records the thread it ran on; `on_host` as given."""

    def __init__(self, inner, on_host: bool, delay_s: float = 0.2):
        super().__init__(inner)
        self.on_host, self.delay_s = on_host, delay_s
        self.threads: list[int] = []

    def forward(self, input_ids, attention_mask):
        import threading
        import time

        self.threads.append(threading.get_ident())
        time.sleep(self.delay_s)
        return super().forward(input_ids, attention_mask)


@pytest.mark.parametrize("on_host", [True, False])
def test_a_host_forward_runs_on_the_event_loop_and_an_accelerators_on_a_thread(tiny_model_dir, on_host, monkeypatch):
    """cpu/jit forwards run on the replica's event loop (no thread hop); a device's forward runs on the
    forward thread, so the loop keeps running (taking calls) while the device works."""
    import asyncio
    import threading
    import time

    model, backend = build_replica(monkeypatch, tiny_model_dir, lambda inner: SlowForward(inner, on_host))
    backend.threads.clear()  # warm-up forwards

    async def classify_while_ticking():
        ticks = []

        async def tick():
            while True:
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0.02)
        started = time.monotonic()
        [predictions] = await model.classify([["a good film", "a bad film"]])
        ended = time.monotonic()
        ticker.cancel()
        during = [t for t in ticks if started + 0.05 < t < ended - 0.05]
        return predictions, threading.get_ident(), during

    predictions, loop_thread, ticks_during_forward = asyncio.run(classify_while_ticking())
    assert len(predictions) == 2 and {p.label for p in predictions} <= set(model.classifier.labels)
    assert len(backend.threads) == 1
    if on_host:
        assert backend.threads == [loop_thread] and not ticks_during_forward
    else:
        assert backend.threads[0] != loop_thread and len(ticks_during_forward) >= 3


def test_reconfigure_rejects_unknown_keys(replica):
    model, _ = replica
    with pytest.raises(Exception, match="max_batch"):
        model.reconfigure({"max_batch": 3})


def test_the_ingress_names_the_slow_mode_and_the_fast_command(caplog):
    """Without throughput mode (a config lacking serve_config.yaml's controller_options) the Ingress logs
    which mode it runs in and the command for the fast one; in throughput mode it says nothing."""
    import logging

    from serve_app.deployments.ingress import warn_if_slow_mode

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert warn_if_slow_mode({}) is True
        assert not warn_if_slow_mode({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})
    [record] = caplog.records
    assert "high-throughput mode is off" in record.getMessage()
    assert "serve run serve_config.yaml" in record.getMessage()
