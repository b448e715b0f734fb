"""The HTTP surface: a FastAPI app built around any `ModelClient` (a Serve handle in production, a fake in tests)."""

from __future__ import annotations

import asyncio
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from serve_app.api.body_limit import BodyLimit
from serve_app.api.context import RequestContext, RequestObserver
from serve_app.config import AppConfig, LimitSettings
from serve_app.api.errors import InvalidInput, ServiceError, Timeout, TooLarge, install_error_handlers
from serve_app.api.schemas import AnalyzeRequest, ErrorResponse, HealthStatus, ModelInfo, Prediction, PredictionBody


class ModelClient(Protocol):
    async def classify(self, texts: list[str]) -> list[Prediction]: ...

    async def info(self) -> ModelInfo: ...


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


def create_api(client: ModelClient, config: AppConfig, observer: RequestObserver | None = None,
               echo_request_id: bool = True) -> FastAPI:
    """The Ingress's app: FastAPI's routes behind two pure ASGI middlewares, the request context (id, metrics,
    access log) outermost, then the body limit. `echo_request_id=False` where the server already echoes
    X-Request-Id (Ray Serve's HTTP servers add it to every response, with the id they put in the request's
    headers, which this app then uses)."""
    limits = config.limits
    window = max(config.buckets.seq_lens)
    api = FastAPI(
        title="Sentiment analysis",
        version="1.0.0",
        description="POST /analyze classifies text as POSITIVE or NEGATIVE, in transformers.pipeline's format.",
    )
    install_error_handlers(api)
    errors = {code: {"model": ErrorResponse} for code in (413, 422, 429, 500, 503, 504)}

    @api.post("/analyze", response_model=list[PredictionBody], responses=errors, summary="Classify text sentiment")
    async def analyze(body: AnalyzeRequest, request: Request) -> list[dict]:
        texts = validate_texts(body, limits, window)
        request.state.texts = len(texts)
        return [{"label": label, "score": score} for label, score in await analyze_texts(client, texts, limits)]

    @api.get("/healthz", response_model=HealthStatus, responses={503: {"model": HealthStatus}}, summary="Readiness")
    async def healthz():
        try:
            info = await asyncio.wait_for(client.info(), timeout=5.0)
        except (asyncio.TimeoutError, ServiceError):
            return JSONResponse(status_code=503, content=HealthStatus(status="unavailable").model_dump())
        return HealthStatus(status="ok", model=info.source, backend=info.backend, labels=list(info.labels))

    api.add_middleware(BodyLimit, max_body_bytes=limits.max_body_bytes)
    api.add_middleware(RequestContext, observer=observer, log_requests=config.log_requests, echo_request_id=echo_request_id)
    return api
