"""POST /analyze for well-formed requests without FastAPI's per-request layers; FastAPI keeps everything else.

On a small machine the Ingress's CPU per request competes with the model for the same cores, and a
request through FastAPI passes five middlewares, the router, dependency solving and response
validation before and after its few microseconds of real work (docs/benchmark.md, item 16: ~0.2 ms of
the Ingress's ~0.65 ms a request here). `FastAnalyze` serves the common case directly: a JSON body
that `AnalyzeRequest` and the limits accept is classified and answered with the same bytes FastAPI's
route would send. Anything else (another route or method, a non-JSON content type, a body that fails
validation) is replayed unchanged into the FastAPI app, whose route owns every 4xx body and the
OpenAPI schema. Errors after validation (overloaded, timeout, backend failure) go through
`serve_app.errors`, the same mapping FastAPI's handlers use. Every POST /analyze body is read here, and
one larger than any valid request could be (`LimitSettings.max_body_bytes`) gets a 413 before the rest
of it is read, so a huge upload cannot fill the Ingress's memory.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from pydantic import TypeAdapter, ValidationError

from serve_app.errors import ServiceError, TooLarge, service_error_response, unexpected_error_response
from serve_app.schemas import AnalyzeRequest, Prediction

ASGIApp = Callable[..., Awaitable[None]]
PREDICTIONS = TypeAdapter(list[Prediction])
JSON_MEDIA_TYPE = "application/json"


def route_path(scope: dict) -> str:
    """The path the app routes on: `scope["path"]` less a `root_path` prefix (as Starlette's router does)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def header(scope: dict, name: bytes) -> bytes | None:
    """The first value of header `name` in an ASGI scope or `http.response.start` message (header names
    are lower-case bytes there); None if absent."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def media_type(scope: dict) -> str | None:
    """The request's Content-Type without parameters, lower-cased; None when there is none."""
    value = header(scope, b"content-type")
    return None if value is None else value.split(b";", 1)[0].strip().lower().decode("latin-1")


class BodyTooLarge(Exception):
    pass


def declared_length(scope: dict) -> int | None:
    """The request's Content-Length, when it sends a well-formed one."""
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


async def read_body(receive, limit: int | None = None) -> bytes | None:
    """The whole request body, or None if the client disconnected first. Raises BodyTooLarge as soon as
    more than `limit` bytes arrived (the rest is never read)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if limit is not None and size > limit:
            raise BodyTooLarge(f"the request body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def replaying(body: bytes, receive):
    """A `receive` that hands out `body` (already read) once, then defers to the original (disconnects)."""
    pending = True

    async def receive_again():
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return receive_again


class FastAnalyze:
    """ASGI app: `POST {path}` bodies read here (at most `max_body_bytes`: 413 past it, before reading the
    rest), answered here when they are valid JSON requests; `fallback` (the FastAPI app) for the rest.

    `validate(request) -> texts` and `analyze(texts) -> predictions` are the route's own functions
    (serve_app.api), so both paths do the same work; `analyze` raises ServiceError for the taxonomy.
    `fast=False` reads and bounds the body but hands every request to FastAPI (tests compare the two).
    """

    def __init__(self, fallback: ASGIApp, validate: Callable[[AnalyzeRequest], list[str]],
                 analyze: Callable[[list[str]], Awaitable[list[Prediction]]], max_body_bytes: int,
                 path: str = "/analyze", fast: bool = True) -> None:
        self.fallback = fallback
        self.validate = validate
        self.analyze = analyze
        self.max_body_bytes = max_body_bytes
        self.path = path
        self.fast = fast

    def routes(self, scope: dict) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and route_path(scope) == self.path

    async def __call__(self, scope, receive, send) -> None:
        if not self.routes(scope):
            return await self.fallback(scope, receive, send)
        state = scope.setdefault("state", {})
        try:
            declared = declared_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                raise BodyTooLarge(f"the request body has {declared} bytes; the limit is {self.max_body_bytes}")
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge as exc:
            return await service_error_response(TooLarge(str(exc)), state.get("request_id"))(scope, receive, send)
        if body is None:
            return  # the client went away before sending its body
        if not self.fast or media_type(scope) != JSON_MEDIA_TYPE:
            return await self.fallback(scope, replaying(body, receive), send)
        try:
            texts = self.validate(AnalyzeRequest.model_validate_json(body))
        except (ValidationError, ServiceError):  # FastAPI's route answers it, with its error body
            return await self.fallback(scope, replaying(body, receive), send)
        state["texts"] = len(texts)
        try:
            predictions = await self.analyze(texts)
        except ServiceError as exc:
            return await service_error_response(exc, state.get("request_id"))(scope, receive, send)
        except Exception:
            return await unexpected_error_response(state.get("request_id"))(scope, receive, send)
        payload = PREDICTIONS.dump_json(predictions)
        await send({
            "type": "http.response.start", "status": 200,
            "headers": [(b"content-length", str(len(payload)).encode()), (b"content-type", JSON_MEDIA_TYPE.encode())],
        })
        await send({"type": "http.response.body", "body": payload})
