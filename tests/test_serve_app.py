"""Real Ray Serve tests: the deployment graph on a tiny random BERT, through real HTTP on loopback."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from tests.ports import free_port

pytestmark = pytest.mark.serve


METRICS_PORT = free_port()


@pytest.fixture(scope="module")
def metrics_url() -> str:
    return f"http://127.0.0.1:{METRICS_PORT}/metrics"


@pytest.fixture(scope="module")
def serve_url(tiny_model_dir):
    import ray
    from ray import serve

    from serve_app.app import build_app

    port = free_port()
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False, _metrics_export_port=METRICS_PORT)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    app = build_app(
        {"model": str(tiny_model_dir), "backend": "cpu", "limits": {"max_texts_per_request": 8, "max_text_chars": 500}}
    )
    serve.run(app, name="sentiment", route_prefix="/")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


def analyze(url, body, **kw):
    return httpx.post(f"{url}/analyze", json=body, timeout=60, **kw)


def test_single_text(serve_url, tiny_model_dir):
    """Through HTTP, the answer the model gives in process (the tiny model's label is arbitrary, not its source)."""
    from serve_app.config import AppConfig
    from serve_app.model.classifier import build_classifier
    from serve_app.model.source import load_classifier

    response = analyze(serve_url, {"text": "I love using this product!"})
    assert response.status_code == 200, response.text
    [prediction] = response.json()
    config = AppConfig(model=str(tiny_model_dir))
    [expected] = build_classifier(config, load_classifier(config.model)).classify(["I love using this product!"])[0]
    assert prediction["label"] == expected.label and prediction["score"] == pytest.approx(expected.score, abs=1e-5)
    assert len(response.headers.get_list("x-request-id")) == 1  # Ray's server echoes it; the app does not again


def test_request_id_reaches_error_bodies_once(serve_url):
    response = analyze(serve_url, {"text": ""}, headers={"X-Request-Id": "trace-42"})
    assert response.status_code == 422
    assert response.headers.get_list("x-request-id") == ["trace-42"]
    assert response.json()["error"]["request_id"] == "trace-42"


def test_body_too_large_for_any_valid_request_is_413(serve_url):
    # limits: 8 texts of <= 500 chars -> max_body_bytes = 8 * (12 * 500 + 4) + 1024 = 49056
    response = httpx.post(f"{serve_url}/analyze", content=b"x" * 60_000, headers={"content-type": "application/json"},
                          timeout=30)
    assert response.status_code == 413 and response.json()["error"]["code"] == "too_large"
    assert analyze(serve_url, {"text": "still here"}).status_code == 200


def test_list_in_order_equals_single_calls(serve_url):
    texts = ["great film", "awful , boring and far too long", "ok", "a joy from start to finish"]
    batched = analyze(serve_url, {"text": texts}).json()
    singles = [analyze(serve_url, {"text": t}).json()[0] for t in texts]
    assert [p["label"] for p in batched] == [p["label"] for p in singles]
    assert [p["score"] for p in batched] == pytest.approx([p["score"] for p in singles], abs=1e-4)


def test_concurrent_requests_are_batched_correctly(serve_url):
    texts = [f"review number {i} : {'good' if i % 2 else 'bad'} {'!' * (i % 7)}" for i in range(48)]
    expected = analyze(serve_url, {"text": texts[:8]}).json() + analyze(serve_url, {"text": texts[8:16]}).json()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda t: analyze(serve_url, {"text": t}), texts))
    assert all(r.status_code == 200 for r in results)
    got = [r.json()[0] for r in results[:16]]
    assert [p["label"] for p in got] == [p["label"] for p in expected]
    assert [p["score"] for p in got] == pytest.approx([p["score"] for p in expected], abs=1e-4)


@pytest.mark.parametrize(
    "kwargs,status",
    [
        ({"content": b"{oops", "headers": {"content-type": "application/json"}}, 422),
        ({"json": {}}, 422),
        ({"json": {"text": None}}, 422),
        ({"json": {"text": 3}}, 422),
        ({"json": {"text": " "}}, 422),
        ({"json": {"text": []}}, 422),
        ({"json": {"text": ["a"] * 9}}, 413),
        ({"json": {"text": "x" * 501}}, 413),
    ],
)
def test_bad_input_is_4xx_json_and_service_stays_up(serve_url, kwargs, status):
    response = httpx.post(f"{serve_url}/analyze", timeout=30, **kwargs)
    assert response.status_code == status
    assert response.json()["error"]["message"]
    assert analyze(serve_url, {"text": "still here"}).status_code == 200


def test_wrong_method_is_405(serve_url):
    response = httpx.get(f"{serve_url}/analyze", timeout=30)
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_healthz_and_docs(serve_url):
    health = httpx.get(f"{serve_url}/healthz", timeout=30).json()
    assert health["status"] == "ok" and health["backend"] == "cpu"
    assert health["labels"] == ["NEGATIVE", "POSITIVE"]
    assert httpx.get(f"{serve_url}/docs", timeout=30).status_code == 200


def test_user_config_reaches_reconfigure(serve_url, tiny_model_dir):
    """A user_config reaches the replica's batching; requests work. (Its own app: the shared one is untouched.)"""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.deployments.ingress import Ingress
    from serve_app.deployments.model import SentimentModel

    settings = AppConfig(
        model=str(tiny_model_dir), limits={"max_texts_per_request": 8, "max_text_chars": 500}
    ).model_dump()
    model = SentimentModel.options(user_config={"max_batch_size": 4, "batch_wait_timeout_s": 0.01})
    serve.run(Ingress.bind(model.bind(settings, None), settings), name="reconfigure", route_prefix="/reconfigure")
    try:
        handle = serve.get_deployment_handle("SentimentModel", app_name="reconfigure")
        assert handle.batch_settings.remote().result().max_batch_size == 4
        response = httpx.post(f"{serve_url}/reconfigure/analyze", json={"text": ["good"] * 6}, timeout=30)
        assert response.status_code == 200 and len(response.json()) == 6  # more texts than a batch: in parts
    finally:
        serve.delete("reconfigure")


def slow_backend_factory(delay_s: float):
    """A real cpu backend whose forward also sleeps: makes a tiny model slow enough to overload."""

    def factory(config, loaded):
        import time as _time

        from serve_app.backends import create_backend

        backend = create_backend(config, loaded)
        inner = backend.forward

        def forward(input_ids, attention_mask):
            _time.sleep(delay_s)
            return inner(input_ids, attention_mask)

        backend.forward = forward
        return backend

    return factory


def test_overload_gets_fast_429s_then_recovers(serve_url, tiny_model_dir):
    """Far more concurrent clients than capacity: only 200s and 429s (with Retry-After), then normal service."""
    from ray import serve

    from serve_app.config import AppConfig
    from serve_app.deployments.ingress import Ingress
    from serve_app.deployments.model import SentimentModel

    settings = AppConfig(model=str(tiny_model_dir)).model_dump()
    model = SentimentModel.options(
        max_ongoing_requests=2, max_queued_requests=2, user_config={"max_batch_size": 2, "batch_wait_timeout_s": 0}
    ).bind(settings, slow_backend_factory(0.2))
    # The ingress sheds load once 4 requests wait for the (single) model call slot.
    ingress = Ingress.options(user_config={"max_texts": 2, "max_queued": 4, "calls_in_flight": 1})
    serve.run(ingress.bind(model, settings), name="overload", route_prefix="/overload")
    url = f"{serve_url}/overload/analyze"
    with concurrent.futures.ThreadPoolExecutor(48) as pool:
        responses = list(pool.map(lambda i: httpx.post(url, json={"text": f"text {i}"}, timeout=60), range(96)))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert codes.count(200) >= 2 and codes.count(429) >= 10
    rejected = next(r for r in responses if r.status_code == 429)
    assert rejected.headers.get("retry-after") and rejected.json()["error"]["code"] == "overloaded"
    assert httpx.post(url, json={"text": "after the storm"}, timeout=60).status_code == 200
    serve.delete("overload")


def test_replica_sigkill_under_load_loses_no_request(serve_url):
    """SIGKILL the model replica while clients send requests: they see latency, not errors."""
    import os
    import signal
    import threading
    import time

    from ray import serve

    handle = serve.get_deployment_handle("SentimentModel", app_name="sentiment")
    pid = handle.info.remote().result().pid
    stop = threading.Event()

    def client(n):
        codes = []
        while not stop.is_set():
            codes.append(analyze(serve_url, {"text": [f"steady load {n}", "second text"]}).status_code)
        return codes

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, n) for n in range(4)]
        time.sleep(2)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if handle.info.remote().result(timeout_s=5).pid != pid:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        time.sleep(2)
        stop.set()
        codes = [c for f in futures for c in f.result()]
    assert handle.info.remote().result().pid != pid, "Serve did not replace the killed replica"
    assert codes and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def test_metrics_on_rays_endpoint(serve_url, metrics_url):
    """Our metrics appear on Ray's Prometheus endpoint next to ray_serve_* after traffic."""
    import time

    for _ in range(3):
        analyze(serve_url, {"text": ["metrics please", "and again"]})
    wanted = ["ray_sentiment_requests_total", "ray_sentiment_padded_tokens", "ray_sentiment_bucket_hits",
              # the replica's batches, in Ray's own @serve.batch metrics (what docs/observability.md lists)
              'ray_serve_actual_batch_size_bucket{', 'function_name="_run_batch"', "ray_serve_batch_execution_time_ms"]
    deadline = time.monotonic() + 90
    text = ""
    while time.monotonic() < deadline:
        text = httpx.get(metrics_url, timeout=10).text
        if all(w in text for w in wanted):
            break
        time.sleep(3)
    missing = [w for w in wanted if w not in text]
    assert not missing, missing
