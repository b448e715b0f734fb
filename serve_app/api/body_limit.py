"""POST /analyze bodies are bounded while FastAPI reads them: a byte-counting `receive` (as LitServe's
MaxSizeMiddleware), so one huge upload cannot fill the Ingress's memory (uvicorn sets no limit).

A body declared larger than any valid request can be (`LimitSettings.max_body_bytes`) gets a 413 at once
from its Content-Length; one that streams past the limit gets a 413 as soon as that many bytes arrived,
and the rest is never read. Nothing is read or replayed here: FastAPI's route reads the body, through
this `receive`.

Why not FastAPI's own `max_body_size` (FastAPI >= 0.164): that release needs Python >= 3.11, and the inf1
image runs Python 3.10 (torch-neuron, docker/Dockerfile.inf1). Once inf1 is dropped, `FastAPI(max_body_size=...)`
replaces this file.
"""

from __future__ import annotations

from typing import Awaitable, Callable

from fastapi import HTTPException

from serve_app.api.errors import TooLarge, service_error_response

ASGIApp = Callable[..., Awaitable[None]]


def route_path(scope: dict) -> str:
    """The path the app routes on: `scope["path"]` less a `root_path` prefix (as Starlette's router does)."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and (len(path) == len(root) or path[len(root)] == "/"):
        return path[len(root):]
    return path


def header(scope: dict, name: bytes) -> bytes | None:
    """The first value of header `name` in an ASGI scope (header names are lower-case bytes there); None if absent."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return value
    return None


def declared_length(scope: dict) -> int | None:
    """The request's Content-Length, when it sends a well-formed one."""
    value = header(scope, b"content-length")
    return int(value) if value is not None and value.isdigit() else None


def counting(receive, limit: int):
    """`receive`, raising HTTPException(413) once the body's bytes exceed `limit` (FastAPI re-raises an
    HTTPException from its body read; the app's handler answers it)."""
    size = 0

    async def receive_counted():
        nonlocal size
        message = await receive()
        size += len(message.get("body", b""))
        if size > limit:
            raise HTTPException(status_code=413, detail=f"the request body exceeds {limit} bytes")
        return message

    return receive_counted


class BodyLimit:
    """ASGI middleware: `POST {path}` bodies are counted as they are read (413 past `max_body_bytes`);
    every other request goes to `app` as it came."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, path: str = "/analyze") -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.path = path

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or route_path(scope) != self.path:
            return await self.app(scope, receive, send)
        declared = declared_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            refused = TooLarge(f"the request body has {declared} bytes; the limit is {self.max_body_bytes}")
            return await service_error_response(refused, scope.setdefault("state", {}))(scope, receive, send)
        await self.app(scope, counting(receive, self.max_body_bytes), send)
