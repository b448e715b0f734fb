"""The POST /analyze fast path (serve_app/fast_path.py): it answers exactly what FastAPI's route answers.

Unit tests of its ASGI helpers, then the same requests through `create_api(fast_path=True)` and
`create_api(fast_path=False)` (FastAPI's route alone), compared byte for byte but for the request id.
"""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.api import create_api
from serve_app.config import AppConfig
from serve_app.errors import BackendFailure, Overloaded
from serve_app.fast_path import BodyTooLarge, FastAnalyze, declared_length, media_type, read_body, replaying, route_path
from serve_app.schemas import Prediction
from tests.test_api import FakeClient
from tests.test_api_properties import json_values

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


@pytest.mark.parametrize("header,expected", [
    (b"application/json", "application/json"),
    (b"Application/JSON; charset=utf-8", "application/json"),
    (b"text/plain", "text/plain"),
    (None, None),
])
def test_media_type(header, expected):
    assert media_type(http_scope(content_type=header)) == expected


def test_read_body_joins_chunks_and_reports_disconnect():
    async def go(messages):
        queue = list(messages)

        async def receive():
            return queue.pop(0)

        return await read_body(receive)

    chunks = [{"type": "http.request", "body": b'{"te', "more_body": True},
              {"type": "http.request", "body": b'xt": "a"}', "more_body": False}]
    assert run(go(chunks)) == b'{"text": "a"}'
    assert run(go([chunks[0], {"type": "http.disconnect"}])) is None


def test_read_body_stops_past_the_limit():
    async def go():
        queue = [{"type": "http.request", "body": b"x" * 600, "more_body": True}] * 3

        async def receive():
            return queue.pop(0)

        with pytest.raises(BodyTooLarge):
            await read_body(receive, limit=1000)
        return len(queue)

    assert run(go()) == 1  # the third chunk was never read


@pytest.mark.parametrize("value,expected", [(b"12", 12), (b"", None), (b"-1", None), (b"1e3", None)])
def test_declared_length(value, expected):
    assert declared_length({"headers": [(b"content-length", value)]}) == expected


def test_replaying_hands_out_the_body_once_then_the_original_receive():
    async def go():
        async def receive():
            return {"type": "http.disconnect"}

        again = replaying(b"abc", receive)
        return await again(), await again()

    first, second = run(go())
    assert first == {"type": "http.request", "body": b"abc", "more_body": False}
    assert second == {"type": "http.disconnect"}


class Recorder:
    """An ASGI fallback app that records what reached it and answers 418."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope, receive, send) -> None:
        self.bodies.append(await read_body(receive) or b"")
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


def make_fast(fallback):
    async def analyze(texts):
        return [Prediction(label="POSITIVE", score=0.5) for _ in texts]

    def validate(request):
        texts = request.texts()
        if not all(t.strip() for t in texts):
            from serve_app.errors import InvalidInput
            raise InvalidInput("empty")
        return texts

    return FastAnalyze(fallback, validate, analyze, max_body_bytes=1000)


def test_valid_body_is_answered_without_the_fallback():
    fallback = Recorder()
    sent = call(make_fast(fallback), http_scope(), b'{"text": ["a", "b"]}')
    assert fallback.bodies == []
    assert sent[0]["status"] == 200 and (b"content-type", b"application/json") in sent[0]["headers"]
    assert json.loads(sent[1]["body"]) == [{"label": "POSITIVE", "score": 0.5}] * 2


@pytest.mark.parametrize("scope,body", [
    (http_scope(), b'{"text": 1}'),                          # fails AnalyzeRequest
    (http_scope(), b'{"text": " "}'),                        # fails validate
    (http_scope(), b"{not json"),
    (http_scope(content_type=b"text/plain"), b'{"text": "a"}'),
    (http_scope(content_type=None), b'{"text": "a"}'),
    (http_scope(method="GET"), b""),
    (http_scope(path="/healthz"), b'{"text": "a"}'),
])
def test_everything_else_reaches_the_fallback_with_its_whole_body(scope, body):
    fallback = Recorder()
    sent = call(make_fast(fallback), scope, body)
    assert fallback.bodies == [body] and sent[0]["status"] == 418


# --- the fast path against FastAPI's route: same status, headers that matter and body -------------------

def apps(fake_factory=FakeClient, **config):
    config = AppConfig(**{"limits": LIMITS, **config})
    fast, slow = fake_factory(), fake_factory()
    return (fast, create_api(fast, config)), (slow, create_api(slow, config, fast_path=False))


async def post(app, content: bytes, content_type="application/json"):
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/analyze", content=content, headers={"content-type": content_type})


def comparable(response: httpx.Response):
    body = response.json()
    if isinstance(body, dict) and "error" in body:
        body["error"].pop("request_id", None)
    headers = {k: v for k, v in response.headers.items() if k not in ("x-request-id", "content-length")}
    return response.status_code, headers, body


def assert_same(content: bytes, fake_factory=FakeClient, content_type="application/json", **config):
    (fast_fake, fast_app), (slow_fake, slow_app) = apps(fake_factory, **config)
    fast, slow = run(post(fast_app, content, content_type)), run(post(slow_app, content, content_type))
    assert comparable(fast) == comparable(slow), content
    assert fast_fake.calls == slow_fake.calls, content
    return fast


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.fixed_dictionaries({"text": json_values}),
                 st.fixed_dictionaries({"text": st.lists(st.text(max_size=50), max_size=7)})),
       st.booleans())
def test_any_json_body_gets_the_same_answer_both_ways(body, ascii_only):
    assert_same(json.dumps(body, ensure_ascii=ascii_only).encode())


@pytest.mark.parametrize("content", [
    b'{"text": "good", "text": "bad"}',          # duplicate keys: the last wins in both parsers
    b'{"text": "\\ud83d\\ude00 good"}',           # escaped surrogate pair
    b'{"text": "a\\u0000b good"}',
    b'  {"text": "good"}  \n',
    b'{"text": "good"} trailing',
    b'\xef\xbb\xbf{"text": "good"}',              # UTF-8 byte order mark
    b'{"text": "caf\xc3\xa9 good"}',
    b'{"text": "\xff good"}',                     # not UTF-8
    b'{"text": ["good", "good"]}',
])
def test_awkward_bodies_get_the_same_answer_both_ways(content):
    assert_same(content)


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "APPLICATION/JSON", "text/plain"])
def test_content_types_get_the_same_answer_both_ways(content_type):
    assert_same(b'{"text": "good"}', content_type=content_type)


@pytest.mark.parametrize("error", [BackendFailure("secret detail"), Overloaded("busy"), RuntimeError("boom /etc/passwd")])
def test_errors_after_validation_get_the_same_answer_both_ways(error):
    response = assert_same(b'{"text": "good"}', fake_factory=lambda: FakeClient(fail_with=error))
    assert response.status_code in (500, 429) and "secret" not in response.text and "boom" not in response.text


def test_timeout_gets_the_same_answer_both_ways():
    response = assert_same(b'{"text": "good"}', fake_factory=lambda: FakeClient(delay_s=1.0),
                           limits={**LIMITS, "request_timeout_s": 0.05})
    assert response.status_code == 504


class Observer:
    def __init__(self) -> None:
        self.records: list[tuple] = []

    def record(self, status, code, texts) -> None:
        self.records.append((status, code, texts))


def test_request_id_and_metrics_on_both_paths():
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


def test_create_api_answers_valid_bodies_on_the_fast_path(monkeypatch):
    import serve_app.fast_path as fast_path

    dumped = []
    real = fast_path.PREDICTIONS

    class Spy:
        def dump_json(self, predictions):
            dumped.append(len(predictions))
            return real.dump_json(predictions)

    monkeypatch.setattr(fast_path, "PREDICTIONS", Spy())
    (_, fast_app), (_, slow_app) = apps()
    assert run(post(fast_app, b'{"text": ["good", "bad", "good"]}')).status_code == 200
    assert run(post(slow_app, b'{"text": ["good"]}')).status_code == 200
    assert run(post(fast_app, b'{"text": ""}')).status_code == 422
    assert dumped == [3]


@pytest.mark.parametrize("fast_path", [True, False])
@pytest.mark.parametrize("declare", [True, False])
def test_body_larger_than_any_valid_request_is_413_before_it_is_read(fast_path, declare):
    limits = {"max_texts_per_request": 2, "max_text_chars": 10}  # max_body_bytes = 2 * 124 + 1024 = 1272
    fake = FakeClient()
    app = create_api(fake, AppConfig(limits=limits), fast_path=fast_path)
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
