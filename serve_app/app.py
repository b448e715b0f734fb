"""Serve application builder: `import_path: serve_app.app:build_app` in serve_config.yaml."""

from __future__ import annotations

from ray.serve import Application

from serve_app.config import parse_app_args
from serve_app.deployments import Ingress, SentimentModel
from serve_app.model_source import DEFAULT_SOURCE, packaged_base_dir


def build_app(args: dict | None = None, backend_factory=None) -> Application:
    """Validate `args` (unknown keys fail here, before any replica starts) and compose the deployments."""
    config = parse_app_args(args)
    if config.model == DEFAULT_SOURCE:
        packaged_base_dir()  # the pinned sha256 is checked before anything is deployed
    settings = config.model_dump()
    model = SentimentModel.bind(settings, backend_factory)
    return Ingress.bind(model, settings)
