"""HTTP request and response models (shown in the OpenAPI schema at /docs) and the typed hand-offs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictStr


class AnalyzeRequest(BaseModel):
    """One text, or a list of texts, to classify."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"text": "I love using this product!"}, {"text": ["Great!", "Awful."]}]},
    )
    text: Union[StrictStr, list[StrictStr]] = Field(description="A text or a list of texts (results keep its order).")

    def texts(self) -> list[str]:
        return [self.text] if isinstance(self.text, str) else list(self.text)


class PredictionBody(BaseModel):
    """One text's label and its probability, as transformers.pipeline('sentiment-analysis') returns it (the
    response's schema: FastAPI validates and writes each answer through it)."""

    label: str = Field(description="POSITIVE or NEGATIVE (the model's label names).")
    score: float = Field(ge=0.0, le=1.0, description="Probability of `label`.")


class Prediction(NamedTuple):
    """One text's label and probability, from the model replica to the Ingress: a plain tuple to build,
    pickle across the handle and unpickle (a pydantic model per text cost several times that)."""

    label: str
    score: float


class ErrorDetail(BaseModel):
    code: Literal["invalid_input", "too_large", "overloaded", "not_ready", "timeout", "backend_failure", "not_found", "method_not_allowed"]
    message: str
    details: Optional[list[dict]] = None
    request_id: Optional[str] = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class HealthStatus(BaseModel):
    status: Literal["ok", "unavailable"]
    model: Optional[str] = None
    backend: Optional[str] = None
    labels: Optional[list[str]] = None


@dataclass(frozen=True)
class ModelInfo:
    """What a model replica reports about itself (health route, logs)."""

    source: str
    backend: str
    labels: tuple[str, ...]
    buckets: int
    pid: int = 0  # the replica's process (for operators and failure tests)
