"""The model deployment's class on the tiny model, outside Ray, with its backend wrapped by a test."""

from __future__ import annotations

import types

from serve_app.config import AppConfig
from serve_app.deployments.model import SentimentModel


class WrappedBackend:
    """A real backend behind a wrapper: the same name, grid, on_host and warm-up; subclasses change forward."""

    def __init__(self, inner):
        self.inner = inner
        self.name, self.grid, self.on_host = inner.name, inner.grid, inner.on_host

    def forward(self, input_ids, attention_mask):
        return self.inner.forward(input_ids, attention_mask)

    def warm_up(self):
        self.inner.warm_up()


def build_replica(monkeypatch, tiny_model_dir, wrap=WrappedBackend, **config):
    """The deployment's class on the tiny model, its backend wrapped by `wrap`, able to batch in this
    process (`outside_a_replica`); returns (model, wrapper)."""
    outside_a_replica(monkeypatch)
    from serve_app.backends import create_backend

    holder = {}

    def factory(config, loaded):
        holder["backend"] = wrap(create_backend(config, loaded))
        return holder["backend"]

    model = SentimentModel.func_or_class(AppConfig(model=str(tiny_model_dir), **config).model_dump(), factory)
    model.reconfigure({})  # the default batch settings, also on the process's one `@serve.batch` queue
    return model, holder["backend"]


def outside_a_replica(monkeypatch, max_ongoing_requests: int = 64) -> None:
    """Lets Ray Serve's own `@serve.batch` run in this process for one test: it reads the replica's
    max_ongoing_requests from the replica context, the one thing of a replica it needs. `@serve.batch` keeps
    one queue per decorated method for the process (a Serve replica has one instance and one loop); the test
    starts with none, and the queue it makes (bound to its event loop, and unpicklable) is dropped after it,
    so later tests can still deploy the class with `serve.run`."""
    from ray import serve

    context = types.SimpleNamespace(_deployment_config=types.SimpleNamespace(max_ongoing_requests=max_ongoing_requests))
    monkeypatch.setattr(serve, "get_replica_context", lambda: context)
    lazy_queue = SentimentModel.func_or_class._run_batch.set_max_batch_size.__self__  # Ray's _LazyBatchQueueWrapper
    monkeypatch.setattr(lazy_queue, "_queue", None)

