"""In-process HTTP tests (httpx.ASGITransport, no Ray): the FastAPI app over a fake model client."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from serve_app.api.routes import create_api
from serve_app.config import AppConfig
from serve_app.api.errors import BackendFailure, Overloaded
from serve_app.api.schemas import ModelInfo, Prediction


class FakeClient:
    """Labels a text POSITIVE when it contains 'good'; records the chunks it was sent."""

    def __init__(self, fail_with: Exception | None = None, delay_s: float = 0.0) -> None:
        self.calls: list[list[str]] = []
        self.fail_with = fail_with
        self.delay_s = delay_s

    async def classify(self, texts):
        self.calls.append(list(texts))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.fail_with:
            raise self.fail_with
        return [Prediction(label="POSITIVE" if "good" in t else "NEGATIVE", score=0.9) for t in texts]

    async def info(self):
        return ModelInfo(source="fake", backend="cpu", labels=("NEGATIVE", "POSITIVE"), buckets=1)


def make_client(fake: FakeClient, **config) -> httpx.AsyncClient:
    app = create_api(fake, AppConfig(**config))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, raise_app_exceptions=False), base_url="http://test")


async def post(fake, body=None, content=None, **config):
    async with make_client(fake, **config) as client:
        if content is not None:
            return await client.post("/analyze", content=content, headers={"content-type": "application/json"})
        return await client.post("/analyze", json=body)


def run(coro):
    return asyncio.run(coro)


def test_single_text_returns_pipeline_format():
    response = run(post(FakeClient(), {"text": "good stuff"}))
    assert response.status_code == 200
    assert response.json() == [{"label": "POSITIVE", "score": 0.9}]
    assert response.headers["x-request-id"]


def test_list_keeps_order():
    fake = FakeClient()
    texts = [f"good {i}" if i % 3 == 0 else f"bad {i}" for i in range(70)]
    response = run(post(fake, {"text": texts}))
    assert response.status_code == 200
    labels = [p["label"] for p in response.json()]
    assert labels == ["POSITIVE" if i % 3 == 0 else "NEGATIVE" for i in range(70)]
    assert fake.calls == [texts]  # one client call per request: batching is the model replica's


@pytest.mark.parametrize(
    "body,content,status,fragment",
    [
        (None, b"{not json", 422, "not valid JSON"),
        (None, b"", 422, "'text' field"),
        ({}, None, 422, "'text' field"),
        ({"text": None}, None, 422, "string or a list"),
        ({"text": 42}, None, 422, "string or a list"),
        ({"text": ["ok", 1]}, None, 422, "string or a list"),
        ({"text": ""}, None, 422, "empty"),
        ({"text": "  "}, None, 422, "empty"),
        ({"text": []}, None, 422, "empty list"),
        ({"text": ["a"] * 257}, None, 413, "limit is 256"),
        ({"text": "x" * 10_001}, None, 413, "limit is 10000"),
        ([1, 2], None, 422, "'text' field"),
        # Bodies FastAPI cannot parse at all (it raises HTTP 400 for them): 422 as every malformed body.
        (None, b'\xff\xfe{"text": "hi"}', 422, "not valid JSON"),
        (None, b'{"text": ' + b"[" * 5000 + b"]" * 5000 + b"}", 422, "not valid JSON"),
        (None, b'{"text": ' + b"1" * 5000 + b"}", 422, "not valid JSON"),
        ({"text": ["x" * 600] * 200}, None, 413, "split them into several requests"),  # 200 x 512 tokens > 32,768
    ],
)
def test_bad_input_gets_4xx_json(body, content, status, fragment):
    fake = FakeClient()
    response = run(post(fake, body, content))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert fragment in error["message"] and error["code"] in ("invalid_input", "too_large")
    assert fake.calls == []


def test_wrong_method_and_unknown_path():
    async def go():
        async with make_client(FakeClient()) as client:
            return await client.get("/analyze"), await client.post("/nope", json={})

    wrong, missing = run(go())
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"


def test_backend_failure_is_500_without_leaking_text():
    response = run(post(FakeClient(fail_with=BackendFailure("secret internal detail")), {"text": "good"}))
    assert response.status_code == 500
    assert "secret" not in response.text
    assert response.json()["error"]["code"] == "backend_failure"


def test_unexpected_exception_is_500_fixed_message():
    response = run(post(FakeClient(fail_with=RuntimeError("boom /etc/passwd")), {"text": "good"}))
    assert response.status_code == 500 and "boom" not in response.text


@pytest.mark.parametrize("status", [429, 503])
def test_overloaded_has_its_status_and_retry_after(status):
    response = run(post(FakeClient(fail_with=Overloaded("busy", retry_after_s=7, status_code=status)), {"text": "good"}))
    assert response.status_code == status and response.headers["retry-after"] == "7"
    assert response.json()["error"]["code"] == "overloaded"


def test_timeout_is_504_json():
    response = run(post(FakeClient(delay_s=1.0), {"text": "good"}, limits={"request_timeout_s": 0.05}))
    assert response.status_code == 504 and response.json()["error"]["code"] == "timeout"


def test_healthz_and_openapi():
    async def go():
        async with make_client(FakeClient()) as client:
            return await client.get("/healthz"), await client.get("/openapi.json")

    health, schema = run(go())
    assert health.json() == {"status": "ok", "model": "fake", "backend": "cpu", "labels": ["NEGATIVE", "POSITIVE"]}
    paths = schema.json()["paths"]
    assert "/analyze" in paths and "/healthz" in paths
    assert "AnalyzeRequest" in schema.json()["components"]["schemas"]


def test_lone_surrogate_is_refused_before_the_model():
    """A lone surrogate is a valid JSON escape but not text: the tokenizer would raise and fail every request
    merged with it. It gets 422 here and never reaches a model call."""
    fake = FakeClient()
    app = create_api(fake, AppConfig())

    async def go():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
            return await client.post("/analyze", content=b'{"text": ["fine", "\\ud800 hi"]}',
                                     headers={"content-type": "application/json"})

    response = run(go())
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input" and "text[1]" in response.json()["error"]["message"]
    assert fake.calls == []
    paired = run(post(fake, content=b'{"text": "\\ud83d\\ude00 good"}'))  # a surrogate *pair* is one emoji: fine
    assert paired.status_code == 200


def test_lone_surrogate_fails_the_real_tokenizer_it_is_kept_from(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    with pytest.raises(Exception):
        tokenizer(["ok", "\ud800 hi"], truncation=True, max_length=16)


@pytest.mark.parametrize("given, kept", [("trace-42.a_B", True), ("x" * 64, True), ("x" * 65, False),
                                         ("a b status=200", False), ("", False), ("id\u00e9", False)])
def test_request_ids_that_could_forge_log_fields_are_replaced(given, kept):
    async def go():
        async with make_client(FakeClient()) as client:
            return await client.post("/analyze", json={"text": ""}, headers={"x-request-id": given.encode("utf-8")})

    response = run(go())
    echoed, in_body = response.headers["x-request-id"], response.json()["error"]["request_id"]
    assert echoed == in_body
    assert (echoed == given) is kept and len(echoed) <= 64


def test_internal_error_code_header_is_not_sent():
    for response in (run(post(FakeClient(), {"text": ""})), run(post(FakeClient(fail_with=Overloaded("busy")), {"text": "a"})),
                     run(post(FakeClient(), {"text": "good"}))):
        assert "x-error-code" not in response.headers, response.headers
