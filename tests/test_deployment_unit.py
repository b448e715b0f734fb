"""The model deployment's class outside Ray (batching itself needs a replica: see test_serve_app.py)."""

from __future__ import annotations

import pytest

from serve_app.config import AppConfig
from serve_app.deployments import SentimentModel


class BrokenAfterWarmUp:
    """Wraps a real backend; fails every forward once `broken` is set (a wedged device)."""

    def __init__(self, inner):
        self.inner, self.broken = inner, False
        self.name, self.grid = inner.name, inner.grid

    def forward(self, input_ids, attention_mask):
        if self.broken:
            raise RuntimeError("NeuronCore lost")
        return self.inner.forward(input_ids, attention_mask)

    def warm_up(self):
        self.inner.warm_up()


@pytest.fixture
def replica(tiny_model_dir):
    from serve_app.backends import create_backend

    holder = {}

    def factory(config, loaded):
        holder["backend"] = BrokenAfterWarmUp(create_backend(config, loaded))
        return holder["backend"]

    model = SentimentModel.func_or_class(AppConfig(model=str(tiny_model_dir)).model_dump(), factory)
    return model, holder


def test_check_health_runs_a_real_forward(replica):
    model, holder = replica
    model.check_health()
    holder["backend"].broken = True
    with pytest.raises(RuntimeError, match="NeuronCore lost"):
        model.check_health()


def test_reconfigure_rejects_unknown_keys(replica):
    model, _ = replica
    with pytest.raises(Exception, match="max_batch"):
        model.reconfigure({"max_batch": 3})


def test_the_ingress_names_the_slow_mode_and_the_fast_command(caplog):
    """Without throughput mode (a config lacking serve_config.yaml's controller_options) the Ingress logs
    which mode it runs in and the command for the fast one; in throughput mode it says nothing."""
    import logging

    from serve_app.deployments import warn_if_slow_mode

    with caplog.at_level(logging.WARNING, logger="ray.serve"):
        assert warn_if_slow_mode({}) is True
        assert not warn_if_slow_mode({"RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"})
    [record] = caplog.records
    assert "high-throughput mode is off" in record.getMessage()
    assert "serve run serve_config.yaml" in record.getMessage()
