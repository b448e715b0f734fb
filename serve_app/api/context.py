"""Request id, metrics and the optional access log, as a pure ASGI middleware around the app's routes.

(Starlette's BaseHTTPMiddleware runs each request through an extra task group and memory streams:
measurable CPU per request on a small machine.) The route leaves the text count, and the error handlers
the error code, in the request's scope state.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from typing import Protocol

from starlette.datastructures import MutableHeaders

from serve_app.api.body_limit import header

request_logger = logging.getLogger("serve_app.requests")

#: Client request ids that are used as given; anything else is replaced by a generated id.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class RequestObserver(Protocol):
    def record(self, status: int, code: str | None, texts: int | None) -> None: ...


class RequestContext:
    def __init__(self, app, observer: RequestObserver | None, log_requests: bool, echo_request_id: bool = True) -> None:
        self.app = app
        self.observer = observer
        self.log_requests = log_requests
        self.echo_request_id = echo_request_id

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        given = header(scope, b"x-request-id")
        # A client's id is used (logs, error bodies, the echo) only when it cannot forge log fields.
        request_id = given.decode("ascii") if given and REQUEST_ID.fullmatch(given) else uuid.uuid4().hex[:16]
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        status = [500]  # what the client gets if the app raises

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                if self.echo_request_id:
                    MutableHeaders(scope=message)["X-Request-Id"] = request_id
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status[0], started)

    def _record(self, scope, state: dict, status: int, started: float) -> None:
        texts = state.get("texts")
        code = state.get("error_code", "backend_failure" if status >= 500 else None)
        if self.observer is not None and scope["path"] == "/analyze":
            try:
                self.observer.record(status, code, texts)
            except Exception:  # metrics must never fail a request
                request_logger.warning("recording request metrics failed", exc_info=True)
        if self.log_requests:
            request_logger.info(
                "request_id=%s method=%s path=%s status=%d texts=%s latency_ms=%.1f",
                state["request_id"], scope["method"], scope["path"], status,
                texts if texts is not None else "-", (time.perf_counter() - started) * 1000,
            )
