"""serve_app/api/body_limit.py: POST /analyze bodies are bounded while FastAPI reads them; everything else
passes through unchanged, and FastAPI's route answers every request."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from serve_app.api.routes import create_api
from fastapi import HTTPException

from serve_app.api.body_limit import BodyLimit, counting, declared_length, route_path
from serve_app.config import AppConfig
from tests.test_api import FakeClient

LIMITS = {"max_texts_per_request": 5, "max_text_chars": 40}


def run(coro):
    return asyncio.run(coro)


def http_scope(path="/analyze", method="POST", content_type: bytes | None = b"application/json", root_path=""):
    headers = [(b"content-type", content_type)] if content_type is not None else []
    return {"type": "http", "method": method, "path": path, "root_path": root_path, "headers": headers}

@pytest.mark.parametrize("path,root,expected", [
    ("/analyze", "", "/analyze"),
    ("/api/analyze", "/api", "/analyze"),
    ("/api", "/api", ""),
    ("/apix/analyze", "/api", "/apix/analyze"),  # not under the root path
    ("/analyze", "/api", "/analyze"),
])
def test_route_path_strips_root_path_like_starlette(path, root, expected):
    assert route_path({"path": path, "root_path": root}) == expected


def test_counting_passes_messages_until_the_limit_then_refuses():
    async def go():
        queue = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3

        async def receive():
            return queue.pop(0)

        counted = counting(receive, limit=1000)
        first = await counted()
        with pytest.raises(HTTPException) as refused:
            await counted()
        return first, refused.value.status_code, len(queue)

    first, status, left = run(go())
    assert first["body"] == b"x" * 600 and status == 413 and left == 1  # the third chunk was never read


@pytest.mark.parametrize("value,expected", [(b"12", 12), (b"", None), (b"-1", None), (b"1e3", None)])
def test_declared_length(value, expected):
    assert declared_length({"headers": [(b"content-length", value)]}) == expected


class Recorder:
    """An ASGI fallback app that records what reached it and answers 418."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        chunks, more = [], True
        while more:
            message = await receive()
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        self.bodies.append(b"".join(chunks))
        await send({"type": "http.response.start", "status": 418, "headers": []})
        await send({"type": "http.response.body", "body": b""})


def call(app, scope, body: bytes):
    async def go():
        sent = []

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent

    return run(go())


@pytest.mark.parametrize("scope,body", [
    (http_scope(), b'{"text": "good"}'),  # counted as the app reads it
    (http_scope(content_type=b"text/plain"), b"anything"),
    (http_scope(path="/healthz", method="GET"), b""),
    (http_scope(path="/other"), b'{"text": "good"}'),
    (http_scope(path="/api/analyze", root_path="/api"), b'{"text": "good"}'),
])
def test_every_request_within_the_limit_reaches_the_app_with_its_whole_body(scope, body):
    app = Recorder()
    sent = call(BodyLimit(app, max_body_bytes=100), scope, body)
    assert app.bodies == [body] and sent[0]["status"] == 418


def test_a_post_body_declared_past_the_limit_never_reaches_the_app():
    app = Recorder()
    scope = http_scope()
    scope["headers"].append((b"content-length", b"24"))
    sent = call(BodyLimit(app, max_body_bytes=10), scope, b'{"text": "far too long"}')
    assert app.bodies == [] and sent[0]["status"] == 413
    assert json.loads(sent[1]["body"])["error"]["code"] == "too_large"


class Observer:
    def __init__(self) -> None:
        self.records: list[tuple] = []

    def record(self, status, code, texts) -> None:
        self.records.append((status, code, texts))


def test_request_id_and_metrics_for_answers_and_errors():
    observer = Observer()
    app = create_api(FakeClient(fail_with=None), AppConfig(limits=LIMITS), observer)

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            ok = await client.post("/analyze", json={"text": ["good", "bad"]}, headers={"x-request-id": "abc123"})
            bad = await client.post("/analyze", json={"text": ""}, headers={"x-request-id": "def456"})
            return ok, bad

    ok, bad = run(go())
    assert ok.status_code == 200 and ok.headers["x-request-id"] == "abc123"
    assert bad.status_code == 422 and bad.headers["x-request-id"] == "def456"
    assert bad.json()["error"]["request_id"] == "def456"
    assert observer.records == [(200, None, 2), (422, "invalid_input", None)]


@pytest.mark.parametrize("declare", [True, False])
def test_body_larger_than_any_valid_request_is_413_before_it_is_read(declare):
    limits = {"max_texts_per_request": 2, "max_text_chars": 10}  # max_body_bytes = 2 * 124 + 1024 = 1272
    fake = FakeClient()
    app = create_api(fake, AppConfig(limits=limits))
    body = json.dumps({"text": ["good " * 300]}).encode()  # 1514 bytes
    chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
    scope = {"type": "http", "method": "POST", "path": "/analyze", "root_path": "", "query_string": b"",
             "headers": [(b"content-type", b"application/json")] + ([(b"content-length", str(len(body)).encode())] if declare else [])}

    async def go():
        sent, read = [], []

        async def receive():
            read.append(chunks[len(read)])
            return {"type": "http.request", "body": read[-1], "more_body": len(read) < len(chunks)}

        async def send(message):
            sent.append(message)

        await app(scope, receive, send)
        return sent, len(read)

    sent, chunks_read = run(go())
    assert sent[0]["status"] == 413 and fake.calls == []
    error = json.loads(sent[1]["body"])["error"]
    assert error["code"] == "too_large" and ("limit is 1272" in error["message"] or "exceeds 1272" in error["message"])
    assert chunks_read == (0 if declare else 13)  # 13 x 100 bytes pass 1272: the last 3 chunks are never read


def test_request_id_is_echoed_once_or_left_to_the_server():
    async def go(echo):
        app = create_api(FakeClient(), AppConfig(limits=LIMITS), echo_request_id=echo)
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.post("/analyze", content=body, headers={"content-type": "application/json", "x-request-id": "r1"})
                    for body in (b'{"text": "good"}', b'{"text": ""}', b"{bad")]

    for response in run(go(True)):
        assert response.headers.get_list("x-request-id") == ["r1"], response.text
    for response in run(go(False)):  # under Ray Serve, its RequestIdMiddleware adds the header
        assert "x-request-id" not in response.headers
    assert run(go(False))[1].json()["error"]["request_id"] == "r1"
