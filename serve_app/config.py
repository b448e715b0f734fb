"""The service's configuration: one pydantic tree, validated when the app is built from serve_config.yaml.

`AppConfig` is filled from the application's `args`; `BatchSettings` from the model deployment's
`user_config` and `CallSettings` from the Ingress's (applied in `reconfigure()`, so they change without
restarting replicas). Each block is validated whole; none depends on another. Unknown keys fail.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.batching.buckets import BucketGrid

BackendName = Literal["auto", "cpu", "jit", "neuronx", "neuron"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BucketSettings(_Strict):
    batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 4, 8, 16, 32],
        description="Compiled batch sizes (jit/neuron backends); the largest also caps a forward on cpu.",
    )
    seq_lens: list[int] = Field(
        default_factory=lambda: [16, 32, 64, 128, 256, 512],
        description="Compiled sequence lengths in tokens. The largest is the truncation length (capped by the "
        "model's own window, 512 for BERT: the window transformers.pipeline truncates to); short texts still run "
        "in short buckets.",
    )
    max_waste: float = Field(
        0.5, ge=0.0, le=1.0, description="Split a group when more than this fraction of its bucket would be padding."
    )

    def grid(self, fixed: bool) -> BucketGrid:
        if fixed:
            return BucketGrid(tuple(self.batch_sizes), tuple(self.seq_lens))
        return BucketGrid.dynamic(max(self.batch_sizes), max(self.seq_lens))


class LimitSettings(_Strict):
    max_texts_per_request: int = Field(256, ge=1, description="Most texts in one POST /analyze body.")
    max_text_chars: int = Field(
        10_000,
        ge=1,
        description="Longest accepted text in characters; longer is refused with 413. Below it, texts are "
        "truncated to the model's token limit (the largest seq_len bucket), as transformers.pipeline does.",
    )
    max_request_tokens: int = Field(
        32_768,
        ge=1,
        description="Most tokens one request may cost the model, counted before tokenizing as the sum over its "
        "texts of min(characters, token window) (a WordPiece token covers at least one character); beyond it 413. "
        "Bounds one request's model CPU (docs/benchmark.md: worst-case cost).",
    )
    request_timeout_s: float = Field(30.0, gt=0, description="Ingress gives up on the model after this long (504).")
    overload_status: Literal[429, 503] = Field(
        429,
        description="Status of a request refused because the queues are full (the Ingress's and Serve's own "
        "max_queued_requests), with Retry-After. 429, as Hugging Face TEI answers an overloaded queue: HTTP "
        "clients and SDKs retry 429 with back-off and read it as 'slow down', while 503 also means 'down'.",
    )

    @property
    def max_body_bytes(self) -> int:
        """The largest POST /analyze body that can be valid (each character escaped as a \\uXXXX surrogate pair,
        12 bytes, plus quotes and commas); larger bodies are refused with 413 before they are read in full."""
        return self.max_texts_per_request * (12 * self.max_text_chars + 4) + 1024


class BatchSettings(_Strict):
    """The model replica's batching (its `user_config`, applied in `reconfigure()`): the one place texts
    are merged into batches. A replica takes calls of any size: a request of more texts than a batch
    holds joins batches in parts."""

    max_batch_size: int = Field(
        64,
        ge=1,
        description="Most texts in one batch (@serve.batch counts the texts of the requests it merges). The "
        "classifier cuts a batch into bucket-shaped forwards of at most buckets.batch_sizes' largest.",
    )
    batch_wait_timeout_s: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="How long a batch waits to fill once its first request arrived. 0: take what is queued "
        "(requests queue while the previous batch runs).",
    )


class CallSettings(_Strict):
    """How the Ingress sends requests to the model deployment (its `user_config`).

    A handle call costs the Ingress, Ray's router and the model replica CPU whatever it carries, so the
    requests that arrive while `calls_in_flight` calls run go together in the next call, each kept whole
    (the model replica batches them). A lone request is sent at once.
    """

    max_texts: int = Field(
        64, ge=1, description="Most texts in one call: queued requests join a call while they fit (a request of "
        "more texts goes alone). Spreads the queue over the model replicas."
    )
    max_queued: int = Field(
        128,
        ge=1,
        description="Requests waiting for a call slot, at most; beyond it, 429 (limits.overload_status) + Retry-After at once "
        "(bounded latency). Requests whose client timed out or left give their place back.",
    )
    gather_ms: float = Field(
        0.0,
        ge=0.0,
        le=100.0,
        description="While another call is running, a call that is not full waits this long for more "
        "requests before it goes (the clients just answered are sending their next ones). A request that "
        "finds no call running never waits. 0: every call goes as soon as a slot is free.",
    )
    calls_in_flight: int = Field(
        1,
        ge=1,
        le=256,
        description="Calls running at once per Ingress replica: about model replicas / Ingress replicas "
        "(requests gather while those calls run).",
    )


class AppConfig(_Strict):
    model: str = Field(
        "default",
        description="'default' (the embedded fine-tuned MiniLM, offline), a local Hugging Face model "
        "directory (full or LoRA adapter), or a hub id (needs a network).",
    )
    backend: BackendName = Field("cpu", description="Inference backend; 'auto' picks neuronx/neuron when present.")
    compile_cache_dir: Optional[str] = Field(
        None, description="Directory of precompiled bucket artifacts (jit/neuron backends); compiled on demand if unset."
    )
    compile_cache_uri: Optional[str] = Field(
        None,
        description="Shared store of compiled artifacts (s3://bucket/prefix, or any URI pyarrow opens): missing "
        "buckets are fetched from it into compile_cache_dir (sha256-verified) and what a replica compiles is "
        "pushed to it, so each model and compiler version is compiled once for the whole cluster.",
    )
    torch_threads: Optional[int] = Field(None, ge=1, description="torch intra-op threads per model replica.")
    quantize: Literal["none", "int8"] = Field("none", description="'int8': dynamic int8 quantization (cpu backend).")
    dtype: Literal["float32", "bfloat16", "auto"] = Field(
        "float32",
        description="Weights and activations of the cpu backend. 'bfloat16' halves the bytes each forward reads "
        "and doubles the math rate on CPUs with native bf16 (x86 avx512_bf16/AMX, Arm bf16); elsewhere it is "
        "emulated and slower. 'auto': bfloat16 where this CPU has it natively, else float32 (with quantize "
        "'int8': int8).",
    )
    buckets: BucketSettings = Field(default_factory=BucketSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    labels: Optional[list[str]] = Field(
        None, description="Override the model's label names, in class-id order (default: the model's own)."
    )
    log_requests: bool = Field(False, description="Log one structured line per request (never the texts).")

    @model_validator(mode="after")
    def _check(self) -> "AppConfig":
        if self.compile_cache_uri and not self.compile_cache_dir:
            raise ValueError("compile_cache_uri needs compile_cache_dir (the local directory it is fetched into)")
        if self.quantize != "none" and self.backend not in ("cpu", "auto"):
            raise ValueError("quantize applies to the cpu backend only")
        if self.dtype == "bfloat16" and self.backend not in ("cpu", "auto"):
            raise ValueError("dtype bfloat16 applies to the cpu backend only (compiled backends fix their own)")
        if self.dtype == "bfloat16" and self.quantize != "none":
            raise ValueError("dtype bfloat16 and quantize int8 are alternatives; choose one")
        return self


def parse_app_args(args: dict | None) -> AppConfig:
    """Validate serve_config.yaml `args` (raises pydantic.ValidationError naming every bad key)."""
    return AppConfig.model_validate(args or {})
