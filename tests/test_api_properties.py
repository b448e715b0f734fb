"""Property-based tests (hypothesis) of the request schema: any JSON body gets a 200 or a 4xx JSON error."""

from __future__ import annotations

import asyncio
import json

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_app.api.routes import create_api
from serve_app.config import AppConfig
from tests.test_api import FakeClient

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
LIMITS = {"max_texts_per_request": 5, "max_text_chars": 40}
APP = create_api(FakeClient(), AppConfig(limits=LIMITS))


async def post(content: bytes) -> httpx.Response:
    transport = httpx.ASGITransport(app=APP, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return await client.post("/analyze", content=content, headers={"content-type": "application/json"})


def expected_ok(body) -> bool:
    if not isinstance(body, dict) or set(body) != {"text"}:
        return False
    text = body["text"]
    texts = [text] if isinstance(text, str) else text
    if not isinstance(texts, list) or not texts or len(texts) > LIMITS["max_texts_per_request"]:
        return False
    return all(isinstance(t, str) and t.strip() and len(t) <= LIMITS["max_text_chars"] for t in texts)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(json_values, st.fixed_dictionaries({"text": json_values}),
                 st.fixed_dictionaries({"text": st.lists(st.text(max_size=50), max_size=7)})))
def test_any_json_body_gets_200_or_4xx(body):
    response = asyncio.run(post(json.dumps(body).encode()))
    if expected_ok(body):
        assert response.status_code == 200
        texts = [body["text"]] if isinstance(body["text"], str) else body["text"]
        assert len(response.json()) == len(texts)
    else:
        assert 400 <= response.status_code < 500, (body, response.text)
        assert response.json()["error"]["message"]


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=60))
def test_arbitrary_bytes_never_5xx(raw):
    response = asyncio.run(post(raw))
    assert response.status_code < 500
