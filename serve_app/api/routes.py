"""The HTTP surface: a FastAPI app built around any `ModelClient` (a Serve handle in production, a fake in tests)."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.datastructures import MutableHeaders

from serve_app.api.body_limit import BodyLimit, header
from serve_app.config import AppConfig, LimitSettings
from serve_app.api.errors import InvalidInput, ServiceError, Timeout, TooLarge, install_error_handlers
from serve_app.api.schemas import AnalyzeRequest, ErrorResponse, HealthStatus, ModelInfo, Prediction

request_logger = logging.getLogger("serve_app.requests")

#: Client request ids that are used as given; anything else is replaced by a generated id.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._-]{1,64}")


class ModelClient(Protocol):
    async def classify(self, texts: list[str]) -> list[Prediction]: ...

    async def info(self) -> ModelInfo: ...


class RequestObserver(Protocol):
    def record(self, status: int, code: str | None, texts: int | None) -> None: ...


def validate_texts(request: AnalyzeRequest, limits: LimitSettings, window: int) -> list[str]:
    """Enforce the limits pydantic's schema cannot express; raise a ServiceError naming the problem.
    `window` is the most tokens the model reads of one text (the largest sequence bucket)."""
    texts = request.texts()
    if not texts:
        raise InvalidInput("'text' must not be an empty list")
    if len(texts) > limits.max_texts_per_request:
        raise TooLarge(f"{len(texts)} texts in one request; the limit is {limits.max_texts_per_request}")
    for i, text in enumerate(texts):
        where = "'text'" if isinstance(request.text, str) else f"'text[{i}]'"
        if not text.strip():
            raise InvalidInput(f"{where} is empty or only whitespace")
        if len(text) > limits.max_text_chars:
            raise TooLarge(f"{where} has {len(text)} characters; the limit is {limits.max_text_chars}")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as exc:  # a lone surrogate (valid JSON escape, not valid text): the tokenizer would fail
                raise InvalidInput(f"{where} is not valid Unicode text: a lone surrogate at character {exc.start}") from None
    tokens = sum(min(len(text), window) for text in texts)  # an upper bound: a token covers >= 1 character
    if tokens > limits.max_request_tokens:
        raise TooLarge(
            f"these texts may cost up to {tokens} tokens (each text counts min(characters, {window})); the limit "
            f"per request is {limits.max_request_tokens}: split them into several requests"
        )
    return texts


async def analyze_texts(client: ModelClient, texts: list[str], limits: LimitSettings) -> list[Prediction]:
    """Classify validated texts within the request timeout (Timeout, a ServiceError, past it)."""
    try:
        return await _with_timeout(client.classify(texts), limits.request_timeout_s)
    except asyncio.TimeoutError:
        raise Timeout(f"the model did not answer within {limits.request_timeout_s:g} s") from None


async def _with_timeout(awaitable, seconds: float):
    """asyncio.timeout where it exists (3.11+: no extra task per request), else wait_for (3.10, inf1 image)."""
    if hasattr(asyncio, "timeout"):
        async with asyncio.timeout(seconds):
            return await awaitable
    return await asyncio.wait_for(awaitable, seconds)


class RequestContext:
    """Request id, metrics and the optional access log, as a pure ASGI middleware: the outermost layer of
    `IngressAPI`, so every request and every answer (413s from `BodyLimit` included) goes through it.

    (Starlette's BaseHTTPMiddleware runs each request through an extra task group and memory streams:
    measurable CPU per request on a small machine.) The endpoint leaves the text count in scope state.
    """

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
        outcome = {"status": 500, "code": "internal"}  # what the client gets if the app raises

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                if self.echo_request_id:
                    MutableHeaders(scope=message)["X-Request-Id"] = request_id
                code = header(message, b"x-error-code")
                if code is not None:  # internal: errors.error_response names the code for this layer only
                    message["headers"] = [(k, v) for k, v in message["headers"] if k != b"x-error-code"]
                outcome["status"], outcome["code"] = message["status"], code and code.decode("latin-1")
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, outcome, started)

    def _record(self, scope, state: dict, outcome: dict, started: float) -> None:
        texts = state.get("texts")
        if self.observer is not None and scope["path"] == "/analyze":
            try:
                self.observer.record(outcome["status"], outcome["code"], texts)
            except Exception:  # metrics must never fail a request
                request_logger.warning("recording request metrics failed", exc_info=True)
        if self.log_requests:
            request_logger.info(
                "request_id=%s method=%s path=%s status=%d texts=%s latency_ms=%.1f",
                state["request_id"], scope["method"], scope["path"], outcome["status"],
                texts if texts is not None else "-", (time.perf_counter() - started) * 1000,
            )


class IngressAPI(FastAPI):
    """The service's FastAPI app, entered through `RequestContext` and `BodyLimit` (pure ASGI layers).

    Still a FastAPI (Ray Serve reads its docs path; tests and /docs see its routes and OpenAPI schema):
    only the ASGI entry point is put in front of FastAPI's own.
    """

    entry = None  # set by create_api: the ASGI app requests enter through

    async def __call__(self, scope, receive, send) -> None:
        await (self.entry or self.call_fastapi)(scope, receive, send)

    async def call_fastapi(self, scope, receive, send) -> None:
        await super().__call__(scope, receive, send)


def create_api(client: ModelClient, config: AppConfig, observer: RequestObserver | None = None,
               echo_request_id: bool = True) -> IngressAPI:
    """The Ingress's app: every request is answered by FastAPI's routes. `echo_request_id=False` where the
    server already echoes X-Request-Id (Ray Serve's HTTP servers add it to every response, with the id they
    put in the request's headers, which this app then uses)."""
    limits = config.limits
    window = max(config.buckets.seq_lens)
    api = IngressAPI(
        title="Sentiment analysis",
        version="1.0.0",
        description="POST /analyze classifies text as POSITIVE or NEGATIVE, in transformers.pipeline's format.",
    )
    install_error_handlers(api)
    errors = {code: {"model": ErrorResponse} for code in (413, 422, 429, 500, 503, 504)}

    @api.post("/analyze", response_model=list[Prediction], responses=errors, summary="Classify text sentiment")
    async def analyze(body: AnalyzeRequest, request: Request) -> list[Prediction]:
        texts = validate_texts(body, limits, window)
        request.state.texts = len(texts)
        return await analyze_texts(client, texts, limits)

    @api.get("/healthz", response_model=HealthStatus, responses={503: {"model": HealthStatus}}, summary="Readiness")
    async def healthz():
        try:
            info = await asyncio.wait_for(client.info(), timeout=5.0)
        except (asyncio.TimeoutError, ServiceError):
            return JSONResponse(status_code=503, content=HealthStatus(status="unavailable").model_dump())
        return HealthStatus(status="ok", model=info.source, backend=info.backend, labels=list(info.labels))

    bounded = BodyLimit(api.call_fastapi, limits.max_body_bytes)
    api.entry = RequestContext(bounded, observer=observer, log_requests=config.log_requests,
                               echo_request_id=echo_request_id)
    return api

