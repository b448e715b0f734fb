"""Serve application builder: `import_path: serve_app.app:build_app` in serve_config.yaml."""

from __future__ import annotations

from ray.serve import Application

from serve_app.config import AppConfig, parse_app_args
from serve_app.deployments.ingress import Ingress
from serve_app.deployments.model import SentimentModel
from serve_app.model.source import DEFAULT_SOURCE, packaged_base_dir


def compose_app(config: AppConfig, backend_factory=None) -> Application:
    """Ingress -> SentimentModel. `backend_factory` lets tests inject a backend."""
    if config.model == DEFAULT_SOURCE:
        packaged_base_dir()  # the pinned sha256 is checked before anything is deployed
    settings = config.model_dump()
    # Serve's own refusals (the Ingress's max_queued_requests) answer with the status the Ingress uses.
    ingress = Ingress.options(backpressure_config={"status_code": config.limits.overload_status, "retry_after_s": 1})
    return ingress.bind(SentimentModel.bind(settings, backend_factory), settings)


def build_app(args: dict) -> Application:
    """Validate serve_config.yaml's `args` (unknown keys fail here, before any replica starts)."""
    return compose_app(parse_app_args(args))
