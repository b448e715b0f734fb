"""The two Serve deployments: `SentimentModel` (batching + backend) and `Ingress` (FastAPI over a handle)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ray import serve
from ray.serve.handle import DeploymentHandle

from serve_app.api.routes import create_api
from serve_app.model.classifier import build_classifier
from serve_app.batching.coalesce import Coalescer, QueueFull, merge, split_like
from serve_app.config import AppConfig, BatchSettings, CoalesceSettings, LimitSettings
from serve_app.api.errors import BackendFailure, Overloaded
from serve_app.metrics import IngressMetrics, ModelMetrics
from serve_app.api.schemas import ModelInfo, Prediction

logger = logging.getLogger("ray.serve")

BackendFactory = Callable  # (AppConfig, LoadedModel) -> Backend
DEFAULT_BATCH = BatchSettings()
DEFAULT_COALESCE = CoalesceSettings()
DEFAULT_OVERLOAD_STATUS = LimitSettings().overload_status
#: Batches with fewer texts run on one intra-op thread (measured: docs/benchmark.md).
PARALLEL_MIN_TEXTS = 8


@serve.deployment(
    name="SentimentModel",
    # Calls (each carrying the texts an Ingress merged) a replica accepts at once, running or queued: at least
    # max_batch_size (which counts texts), so a batch can fill even from one-text calls.
    max_ongoing_requests=64,
    # Past this many calls waiting at each caller, the handle raises BackPressureError: the ingress
    # answers 429 (limits.overload_status) + Retry-After instead of queueing without bound.
    max_queued_requests=16,
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class SentimentModel:
    def __init__(self, config: dict, backend_factory: Optional[BackendFactory] = None) -> None:
        import torch

        from serve_app.model.source import load_classifier

        self.config = AppConfig.model_validate(config)
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        # Forwards run on one OS thread (which one: below). torch's intra-op thread count is per OS
        # thread under OpenMP (a new thread starts from OMP_NUM_THREADS, which Ray sets to num_cpus), so it is
        # set there, per batch: small batches run on one thread (intra-op parallelism costs more than it
        # saves on a few texts, and leaves the other cores to the HTTP side), large ones on all of them.
        self._threads = torch.get_num_threads()
        self._set_threads = torch.set_num_threads
        self._forward_threads_now = 0  # unknown until the first batch
        loaded = load_classifier(self.config.model)
        self.classifier = build_classifier(self.config, loaded, backend_factory)
        backend = self.classifier.backend
        # On the host CPU the replica's core has nothing else to do during a forward, so it runs on the event
        # loop and no thread hop is paid each way (docs/benchmark.md, "Settings and their evidence"). An
        # accelerator's forward waits on the device: on a thread, the loop keeps taking calls meanwhile.
        self._forward_thread = None if backend.on_host else ThreadPoolExecutor(1, thread_name_prefix="forward")
        self.info_value = ModelInfo(
            source=loaded.source, backend=backend.name, labels=self.classifier.labels,
            buckets=len(backend.grid.all()), pid=os.getpid(),
        )
        self.metrics = ModelMetrics()
        logger.info("SentimentModel ready: %s", self.info_value)

    def reconfigure(self, user_config: dict) -> None:
        settings = BatchSettings.model_validate(user_config or {})
        self.batch = settings
        self.classify_batch.set_max_batch_size(settings.max_batch_size)
        self.classify_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    # The second and last place texts are merged (the Ingress's CoalescingClient is the first): calls that
    # reach this replica together (from several Ingress replicas on a cluster) run as one batch of at most
    # `max_batch_size` texts, which the classifier cuts into bucket-shaped forwards. One batch at a time:
    # the replica has one core (or NeuronCore).
    @serve.batch(
        max_batch_size=DEFAULT_BATCH.max_batch_size,
        batch_wait_timeout_s=DEFAULT_BATCH.batch_wait_timeout_s,
        max_concurrent_batches=1,
        batch_size_fn=lambda calls: sum(len(texts) for _, texts in calls),
    )
    async def classify_batch(self, calls: list[tuple[float, list[str]]]) -> list[list[Prediction]]:
        started = time.monotonic()
        groups = [texts for _, texts in calls]
        flat = merge(groups)
        if self._forward_thread is None:
            predictions, report = self._classify_texts(flat)
        else:
            predictions, report = await asyncio.get_running_loop().run_in_executor(
                self._forward_thread, self._classify_texts, flat
            )
        try:
            self.metrics.record(report, [started - arrived for arrived, _ in calls])
        except Exception:  # metrics must never fail a request
            logger.warning("recording batch metrics failed", exc_info=True)
        return split_like(predictions, groups)

    def _classify_texts(self, texts: list[str]):
        threads = self._threads if len(texts) >= PARALLEL_MIN_TEXTS else 1
        if threads != self._forward_threads_now:  # only ever touched from the one thread forwards run on
            self._set_threads(threads)
            self._forward_threads_now = threads
        return self.classifier.classify(texts)

    async def classify(self, texts: list[str]) -> list[Prediction]:
        return await self.classify_batch((time.monotonic(), texts))

    def batch_settings(self) -> BatchSettings:
        return getattr(self, "batch", DEFAULT_BATCH)

    def info(self) -> ModelInfo:
        return self.info_value

    def check_health(self) -> None:
        """A tiny real forward: a wedged backend or a lost NeuronCore fails it, and Serve restarts the replica."""
        self.classifier.classify(["ok"])


class HandleClient:
    """ModelClient over a DeploymentHandle: maps Ray's failures to the service's error taxonomy.

    Inference is idempotent, so a call whose replica died (SIGKILL, lost node) is sent again; Serve
    routes it to a live or replacement replica. The ingress's request timeout bounds the retries.
    """

    RETRIES = 20

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def _call(self, method: str, *args):
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError

        for attempt in range(self.RETRIES + 1):
            try:
                return await getattr(self.handle, method).remote(*args)
            except BackPressureError:
                raise Overloaded("the service is at capacity; retry shortly") from None
            except (RayActorError, ActorUnavailableError) as exc:
                if attempt == self.RETRIES:
                    logger.error("model call %s failed after %d retries: %r", method, attempt, exc)
                    raise BackendFailure("model replica unavailable") from exc
                logger.warning("model replica lost during %s (%s); retrying", method, type(exc).__name__)
                await asyncio.sleep(min(0.1 * 2**attempt, 1.0))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # logged with its text; the client sees a fixed message
                logger.error("model call %s failed: %r", method, exc)
                raise BackendFailure("model call failed") from exc

    async def classify(self, texts: list[str]) -> list[Prediction]:
        return await self._call("classify", texts)

    async def info(self) -> ModelInfo:
        return await self._call("info")


class CoalescingClient:
    """ModelClient that merges the texts of concurrent requests into one model call of at most `max_texts`
    texts (and cuts a larger request into calls of `max_texts`, which the model replicas share).

    Each DeploymentHandle call costs the ingress, the router and the model replica a few ms of CPU
    whatever it carries, and a forward of one text costs the model far more per text than a forward of
    32; paid per HTTP request, both cap throughput far below the model's. While `calls_in_flight` calls
    run, new requests queue; the next call carries all of them (serve_app/batching/coalesce.py). Answers are
    split back in order. When a merged call fails (BackendFailure), each of its requests is sent again alone,
    so a request that poisons the call fails by itself; overload and timeouts fail the whole call.
    """

    def __init__(self, inner: HandleClient, settings: CoalesceSettings = DEFAULT_COALESCE,
                 overload_status: int = DEFAULT_OVERLOAD_STATUS) -> None:
        self.inner = inner
        self.settings = settings
        self.overload_status = overload_status
        self._coalescer = self._make_coalescer(settings)

    def _make_coalescer(self, settings: CoalesceSettings) -> Coalescer:
        return Coalescer(
            self._classify_merged, settings.max_texts, settings.calls_in_flight, size_of=len, max_queued=settings.max_queued,
            gather_s=settings.gather_ms / 1000,
        )

    def apply(self, settings: CoalesceSettings) -> None:
        if settings != self.settings:  # calls already queued finish in the old coalescer
            self._coalescer = self._make_coalescer(settings)
            self.settings = settings

    async def _classify_merged(self, chunks: list[list[str]]) -> list[list[Prediction] | BackendFailure]:
        try:
            return split_like(await self.inner.classify(merge(chunks)), chunks)
        except BackendFailure:
            if len(chunks) == 1:
                raise
        # One request's texts failed the merged call: send each request alone, so only the request that
        # fails gets the error and every other one in the call still gets its answer.
        results = await asyncio.gather(*(self.inner.classify(chunk) for chunk in chunks), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation
        return list(results)

    async def classify(self, texts: list[str]) -> list[Prediction]:
        """The texts' predictions, in order. A request of more than `max_texts` texts is cut into calls of
        `max_texts` (queued together, so the model replicas share it); when one part fails, the others are
        cancelled and its error is raised."""
        coalescer, size = self._coalescer, self.settings.max_texts
        tasks: list[asyncio.Future] = []
        try:
            if len(texts) <= size:
                return await coalescer.submit(texts)
            tasks = [asyncio.ensure_future(coalescer.submit(texts[i : i + size])) for i in range(0, len(texts), size)]
            return merge(await asyncio.gather(*tasks))
        except (QueueFull, Overloaded):  # this Ingress's queue, or the model deployment's, is full
            raise Overloaded("the service is at capacity; retry after the Retry-After seconds",
                             retry_after_s=coalescer.retry_after_s(), status_code=self.overload_status) from None
        finally:
            for task in tasks:  # after a failure (or our own cancellation): stop the parts still queued or running
                task.cancel()

    async def info(self) -> ModelInfo:
        return await self.inner.info()


def warn_if_slow_mode(environ=os.environ) -> bool:
    """Log, once per Ingress replica, when Ray Serve runs without its high-throughput mode (a config without
    serve_config.yaml's `controller_options`, or `serve.run` from Python): about half the throughput on a
    small machine (docs/benchmark.md). Returns whether it warned."""
    if environ.get("RAY_SERVE_THROUGHPUT_OPTIMIZED") == "1":
        return False
    logger.warning(
        "Ray Serve's high-throughput mode is off: requests go through Ray's Python proxy at about half the "
        "throughput. Run `serve run serve_config.yaml` (its controller_options turn the mode on), or start Ray "
        "with RAY_SERVE_THROUGHPUT_OPTIMIZED=1 RAY_SERVE_ENABLE_HA_PROXY=1."
    )
    return True


@serve.deployment(
    name="Ingress",
    max_ongoing_requests=256,
    # Requests beyond this many waiting at the proxy get 429 (or 503: `limits.overload_status`, applied by
    # serve_app.app) + Retry-After from Serve itself.
    max_queued_requests=256,
    backpressure_config={"status_code": DEFAULT_OVERLOAD_STATUS, "retry_after_s": 1},
    ray_actor_options={"num_cpus": 0},
)
@serve.ingress()
class Ingress:
    def __init__(self, model: DeploymentHandle, config: dict) -> None:
        self.config = AppConfig.model_validate(config)
        warn_if_slow_mode()
        self.client = CoalescingClient(HandleClient(model), overload_status=self.config.limits.overload_status)

    def reconfigure(self, user_config: dict) -> None:
        self.client.apply(CoalesceSettings.model_validate(user_config or {}))

    def __serve_build_asgi_app__(self):
        # Ray's HTTP servers echo X-Request-Id themselves (the app still reads it for logs and error bodies).
        return create_api(self.client, self.config, IngressMetrics(), echo_request_id=False)
