"""The HTTP surface: a FastAPI app built around any `ModelClient` (a Serve handle in production, a fake in tests)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serve_app.config import AppConfig, LimitSettings
from serve_app.errors import InvalidInput, ServiceError, Timeout, TooLarge, install_error_handlers
from serve_app.schemas import AnalyzeRequest, ErrorResponse, HealthStatus, ModelInfo, Prediction

request_logger = logging.getLogger("serve_app.requests")

#: Texts per call to the model deployment: a long list is split so several replicas can share it.
TEXTS_PER_CALL = 32


class ModelClient(Protocol):
    async def classify(self, texts: list[str]) -> list[Prediction]: ...

    async def info(self) -> ModelInfo: ...


class RequestObserver(Protocol):
    def record(self, status: int, code: str | None, texts: int | None) -> None: ...


def validate_texts(request: AnalyzeRequest, limits: LimitSettings) -> list[str]:
    """Enforce the limits pydantic's schema cannot express; raise a ServiceError naming the problem."""
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
    return texts


def create_api(client: ModelClient, config: AppConfig, observer: RequestObserver | None = None) -> FastAPI:
    limits = config.limits
    api = FastAPI(
        title="Sentiment analysis",
        version="1.0.0",
        description="POST /analyze classifies text as POSITIVE or NEGATIVE, in transformers.pipeline's format.",
    )
    install_error_handlers(api)
    errors = {code: {"model": ErrorResponse} for code in (413, 422, 500, 503, 504)}

    @api.middleware("http")
    async def request_id(request: Request, call_next):
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["X-Request-Id"] = request.state.request_id
        if observer is not None and request.url.path == "/analyze":
            try:
                observer.record(response.status_code, response.headers.get("X-Error-Code"), getattr(request.state, "texts", None))
            except Exception:  # metrics must never fail a request
                request_logger.warning("recording request metrics failed", exc_info=True)
        if config.log_requests:
            request_logger.info(
                "request_id=%s method=%s path=%s status=%d texts=%s latency_ms=%.1f",
                request.state.request_id, request.method, request.url.path, response.status_code,
                getattr(request.state, "texts", "-"), (time.perf_counter() - started) * 1000,
            )
        return response

    @api.post("/analyze", response_model=list[Prediction], responses=errors, summary="Classify text sentiment")
    async def analyze(body: AnalyzeRequest, request: Request) -> list[Prediction]:
        texts = validate_texts(body, limits)
        request.state.texts = len(texts)
        chunks = [texts[i : i + TEXTS_PER_CALL] for i in range(0, len(texts), TEXTS_PER_CALL)]
        try:
            results = await asyncio.wait_for(
                asyncio.gather(*(client.classify(chunk) for chunk in chunks)), timeout=limits.request_timeout_s
            )
        except asyncio.TimeoutError:
            raise Timeout(f"the model did not answer within {limits.request_timeout_s:g} s") from None
        return [prediction for chunk in results for prediction in chunk]

    @api.get("/healthz", response_model=HealthStatus, responses={503: {"model": HealthStatus}}, summary="Readiness")
    async def healthz():
        try:
            info = await asyncio.wait_for(client.info(), timeout=5.0)
        except (asyncio.TimeoutError, ServiceError):
            return JSONResponse(status_code=503, content=HealthStatus(status="unavailable").model_dump())
        return HealthStatus(status="ok", model=info.source, backend=info.backend, labels=list(info.labels))

    return api

