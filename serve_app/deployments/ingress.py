"""The Ingress deployment: the FastAPI app (serve_app/api) over the model deployment's handle."""

from __future__ import annotations

import logging
import os

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.routes import create_api
from serve_app.config import AppConfig, CallSettings
from serve_app.deployments.model_client import DEFAULT_OVERLOAD_STATUS, HandleClient, RequestForwarder
from serve_app.metrics import IngressMetrics

logger = logging.getLogger("ray.serve")


def warn_if_slow_mode(environ=os.environ) -> bool:
    """Log, once per Ingress replica, when Ray Serve runs without its high-throughput mode (a config without
    serve_config.yaml's `controller_options`, or `serve.run` from Python): about half the throughput on a
    small machine (docs/benchmark.md). Returns whether it warned."""
    if environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1":
        return False
    logger.warning(
        "Ray Serve's high-throughput mode is off: requests go through Ray's Python proxy at about half the "
        "throughput. Run `serve run serve_config.yaml` (its controller_options turn the mode on), or start Ray "
        "with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1."
    )
    return True


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=256,
    # Requests beyond this many waiting at the proxy get 429 (or 503: `limits.overload_status`, applied by
    # serve_app.app) + Retry-After from Serve itself.
    max_queued_requests=256,
    backpressure_config={"status_code": DEFAULT_OVERLOAD_STATUS, "retry_after_s": 1},
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class Ingress:
    def __init__(self, model: DeploymentHandle, config: dict) -> None:
        self.config = AppConfig.model_validate(config)
        warn_if_slow_mode()
        self.client = RequestForwarder(HandleClient(model), overload_status=self.config.limits.overload_status)

    def reconfigure(self, user_config: dict) -> None:
        self.client.apply(CallSettings.model_validate(user_config or {}))

    def __serve_build_asgi_app__(self):
        # Ray's HTTP servers echo X-Request-Id themselves (the app still reads it for logs and error bodies).
        return create_api(self.client, self.config, IngressMetrics(), echo_request_id=False)
