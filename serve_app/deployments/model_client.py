"""The Ingress's side of the handle: one call carries whole requests to the model deployment.

`HandleClient` maps Ray's failures to the service's error taxonomy. `RequestForwarder` is what the HTTP
route calls: while `calls_in_flight` calls run, the requests that arrive queue, and the next call
carries them all, each kept whole (the model replica batches, and isolates a failing request). A handle
call costs the Ingress, Ray's router and the replica CPU whatever it carries: paid per call, not per
request (docs/benchmark.md, "Settings and their evidence": the `calls_in_flight` row).
"""

from __future__ import annotations

import asyncio
import logging

from ray.serve.handle import DeploymentHandle

from serve_app.api.errors import BackendFailure, Overloaded
from serve_app.api.schemas import ModelInfo, Prediction
from serve_app.batching.coalesce import Coalescer, QueueFull
from serve_app.config import CallSettings, LimitSettings

logger = logging.getLogger("ray.serve")

DEFAULT_CALLS = CallSettings()
DEFAULT_OVERLOAD_STATUS = LimitSettings().overload_status


class HandleClient:
    """Calls over a DeploymentHandle, Ray's failures mapped to the service's error taxonomy.

    Inference is idempotent, so a call whose replica died (SIGKILL, lost node) is sent again; Serve
    routes it to a live or replacement replica. The ingress's request timeout bounds the retries.
    """

    RETRIES = 20

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def _call(self, method: str, *args):
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError

        for attempt in range(self.RETRIES + 1):
            try:
                return await getattr(self.handle, method).remote(*args)
            except BackPressureError:
                raise Overloaded("the service is at capacity; retry shortly") from None
            except (RayActorError, ActorUnavailableError) as exc:
                if attempt == self.RETRIES:
                    logger.error("model call %s failed after %d retries: %r", method, attempt, exc)
                    raise BackendFailure("model replica unavailable") from exc
                logger.warning("model replica lost during %s (%s); retrying", method, type(exc).__name__)
                await asyncio.sleep(min(0.1 * 2**attempt, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged with its text; the client sees a fixed message
                logger.error("model call %s failed: %r", method, exc)
                raise BackendFailure("model call failed") from exc

    async def classify(self, requests: list[list[str]]) -> list[list[Prediction] | BackendFailure]:
        """Per request, its predictions or the BackendFailure it failed with alone."""
        return await self._call("classify", requests)

    async def info(self) -> ModelInfo:
        return await self._call("info")


class RequestForwarder:
    """The route's ModelClient: forwards each request whole, with the requests queued beside it in one call."""

    def __init__(self, inner: HandleClient, settings: CallSettings = DEFAULT_CALLS,
                 overload_status: int = DEFAULT_OVERLOAD_STATUS) -> None:
        self.inner = inner
        self.settings = settings
        self.overload_status = overload_status
        self._coalescer = self._make_coalescer(settings)

    def _make_coalescer(self, settings: CallSettings) -> Coalescer:
        return Coalescer(self.inner.classify, settings.max_texts, settings.calls_in_flight, size_of=len,
                         max_queued=settings.max_queued, gather_s=settings.gather_ms / 1000)

    def apply(self, settings: CallSettings) -> None:
        if settings != self.settings:  # calls already queued finish in the old coalescer
            self._coalescer = self._make_coalescer(settings)
            self.settings = settings

    async def classify(self, texts: list[str]) -> list[Prediction]:
        """The texts' predictions, in order."""
        coalescer = self._coalescer
        try:
            return await coalescer.submit(texts)
        except (QueueFull, Overloaded):  # this Ingress's queue, or the model deployment's, is full
            raise Overloaded("the service is at capacity; retry after the Retry-After seconds",
                             retry_after_s=coalescer.retry_after_s(), status_code=self.overload_status) from None

    async def info(self) -> ModelInfo:
        return await self.inner.info()
