"""The model deployment: the service's one batching owner, over a CPU or Neuron backend."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional

from ray import serve

from serve_app.api.errors import BackendFailure
from serve_app.api.schemas import ModelInfo, Prediction
from serve_app.batching.groups import cut, merge
from serve_app.batching.isolation import classify_isolating
from serve_app.config import AppConfig, BatchSettings
from serve_app.metrics import ModelMetrics
from serve_app.model.classifier import build_classifier

logger = logging.getLogger("ray.serve")

BackendFactory = Callable  # (AppConfig, LoadedModel) -> Backend
DEFAULT_BATCH = BatchSettings()
#: Batches with fewer texts run on one intra-op thread (measured: docs/benchmark.md).
PARALLEL_MIN_TEXTS = 8
#: What a request that failed alone gets in its answer's place (the replica's log has the exception).
REQUEST_FAILED = "the model failed on this request"

#: A call's answer per request: its predictions in order, or BackendFailure when the request failed alone.
RequestAnswer = "list[Prediction] | BackendFailure"


@serve.deployment(
    name="SentimentModel",
    # Calls a replica accepts at once, running or queued (each carries one or more whole requests); at
    # least max_batch_size x max_concurrent_batches below, as Ray asks (it counts texts there).
    max_ongoing_requests=128,
    # Past this many calls waiting at each caller, the handle raises BackPressureError: the ingress
    # answers 429 (limits.overload_status) + Retry-After instead of queueing without bound.
    max_queued_requests=16,
    ray_actor_options={"num_cpus": 1},
    health_check_period_s=10,
    health_check_timeout_s=30,
)
class SentimentModel:
    """Takes calls of whole requests, merges the requests that reach it into batches of at most
    `max_batch_size` texts (`@serve.batch`, one batch at a time), cuts each batch into bucket-shaped
    forwards once (the classifier), and, when a merged batch fails, runs each of its requests alone, so
    only a request that fails gets an error, whichever caller sent it and whatever it was merged with."""

    def __init__(self, config: dict, backend_factory: Optional[BackendFactory] = None) -> None:
        import torch

        from serve_app.model.source import load_classifier

        self.config = AppConfig.model_validate(config)
        self.batch = DEFAULT_BATCH
        if self.config.torch_threads:
            torch.set_num_threads(self.config.torch_threads)
        # Tokenize on this replica's thread: `tokenizers`' pool has a thread per core of the node, whose
        # other cores belong to other replicas; on a busy node it costs more CPU than it saves (14-18 vs
        # 21-25 us/text for 128 short texts). An operator's own setting wins.
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
        self._run_batch.set_max_batch_size(settings.max_batch_size)
        self._run_batch.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)

    async def classify(self, requests: list[list[str]]) -> list[RequestAnswer]:
        """The deployment's entry: one call carries whole requests (each a list of texts). Answers per
        request, in order; a request that failed alone gets a BackendFailure in its place."""
        answers = await asyncio.gather(*(self._classify_request(texts) for texts in requests), return_exceptions=True)
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer  # cancellation
        return [self._answer(answer) for answer in answers]

    async def _classify_request(self, texts: list[str]) -> list[Prediction]:
        # A request of more than max_batch_size texts joins batches in parts (@serve.batch refuses a call
        # larger than its batch); it fails if any part fails.
        parts = cut(texts, self.batch.max_batch_size)
        if len(parts) == 1:
            return self._raise_failed(await self._run_batch(texts))
        return merge(self._raise_failed(part) for part in await asyncio.gather(*map(self._run_batch, parts)))

    @staticmethod
    def _raise_failed(answer):
        if isinstance(answer, Exception):
            raise answer
        return answer

    @staticmethod
    def _answer(answer) -> RequestAnswer:
        if isinstance(answer, Exception):
            # A request that failed alone; its traceback was logged where it failed. The caller sees a fixed
            # message (a 500 never carries exception text), and the other requests of the call are unaffected.
            return answer if isinstance(answer, BackendFailure) else BackendFailure(REQUEST_FAILED)
        return answer

    @serve.batch(
        max_batch_size=DEFAULT_BATCH.max_batch_size,
        batch_wait_timeout_s=DEFAULT_BATCH.batch_wait_timeout_s,
        # Two batches at once: on an accelerator, the next batch is tokenized and padded on the event loop
        # while this one's forwards run on the device (the forward thread runs them one batch at a time).
        # On the host CPU a batch runs on the event loop without yielding, so batches still run one by one,
        # each taking everything that queued meanwhile.
        max_concurrent_batches=2,
        batch_size_fn=lambda parts: sum(len(texts) for texts in parts),  # counts texts, not calls
    )
    async def _run_batch(self, parts: list[list[str]]) -> list[list[Prediction] | Exception]:
        results = await classify_isolating(self._classify_texts, parts)
        for texts, answer in zip(parts, results.answers):
            if isinstance(answer, Exception):
                logger.error("a request of %d texts failed", len(texts), exc_info=answer)
        try:
            for report in results.reports:
                self.metrics.record(report)
        except Exception:  # metrics must never fail a request
            logger.warning("recording batch metrics failed", exc_info=True)
        return results.answers

    async def _classify_texts(self, texts: list[str]):
        if self._forward_thread is None:  # the host CPU: the whole classification here, on the event loop
            threads = self._threads if len(texts) >= PARALLEL_MIN_TEXTS else 1
            if threads != self._forward_threads_now:  # only ever touched from the event loop's thread
                self._set_threads(threads)
                self._forward_threads_now = threads
            return self.classifier.classify(texts)
        # An accelerator: the host's parts on the loop, the forwards on the forward thread (the device).
        batch = self.classifier.prepare(texts)
        started = time.perf_counter()
        logits = await asyncio.get_running_loop().run_in_executor(self._forward_thread, self.classifier.run_forwards, batch)
        return self.classifier.label(batch, logits, time.perf_counter() - started)

    def batch_settings(self) -> BatchSettings:
        return self.batch

    def info(self) -> ModelInfo:
        return self.info_value

    def check_health(self) -> None:
        """A tiny real forward: a wedged backend or a lost NeuronCore fails it, and Serve restarts the replica."""
        self.classifier.classify(["ok"])
