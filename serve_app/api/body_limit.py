"""POST /analyze bodies are read here, bounded, before FastAPI sees them.

FastAPI reads a whole body into memory before it validates it, and uvicorn sets no limit, so one huge
upload could fill the Ingress's memory. `BodyLimit` reads each POST /analyze body itself: one larger than
any valid request could be (`LimitSettings.max_body_bytes`) gets a 413 as soon as that many bytes
arrived (or at once, from its Content-Length), and the rest is never read. Every other body is handed
to FastAPI unchanged, whose route does all the parsing, validation and answering: there is one request
path. (An earlier bypass that answered valid bodies without FastAPI's route saved ~0.2 ms of Ingress CPU
a request, within the benchmark's run-to-run spread: docs/benchmark.md, "Settings and their evidence".)

Why not FastAPI's own `max_body_size` (FastAPI >= 0.164, on Starlette's RequestBodyLimitMiddleware): that
release needs Python >= 3.11, and the inf1 image runs Python 3.10 (torch-neuron, docker/Dockerfile.inf1),
where FastAPI has no body limit. Once inf1 is dropped, `FastAPI(max_body_size=...)` replaces this file.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from serve_app.api.errors import TooLarge, service_error_response

ASGIApp = Callable[..., Awaitable[None]]


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


class BodyLimit:
    """ASGI app: `POST {path}` bodies are read here (at most `max_body_bytes`: 413 past it, before the rest
    is read) and replayed into `app` (the FastAPI app); every other request goes to `app` as it came."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, path: str = "/analyze") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path = path

    def applies(self, scope: dict) -> bool:
        return scope["type"] == "http" and scope["method"] == "POST" and route_path(scope) == self.path

    async def __call__(self, scope, receive, send) -> None:
        if not self.applies(scope):
            return await self.app(scope, receive, send)
        try:
            declared = declared_length(scope)
            if declared is not None and declared > self.max_body_bytes:
                raise BodyTooLarge(f"the request body has {declared} bytes; the limit is {self.max_body_bytes}")
            body = await read_body(receive, self.max_body_bytes)
        except BodyTooLarge as exc:
            request_id = scope.get("state", {}).get("request_id")
            return await service_error_response(TooLarge(str(exc)), request_id)(scope, receive, send)
        if body is None:
            return  # the client went away before sending its body
        await self.app(scope, replaying(body, receive), send)
