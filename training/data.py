"""Reading labelled text: TSV/CSV/Parquet splits in a local directory or under a URI (s3://bucket/prefix, read
with pyarrow.fs and the pod's IRSA credentials), or a Hugging Face dataset id where a network exists."""

from __future__ import annotations

import csv
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from training.config import DataConfig


@dataclass(frozen=True)
class Example:
    text: str
    label: int


class DataError(ValueError):
    """The data source cannot be read as labelled text."""


def _find_split_file(directory: Path, split: str) -> Path:
    for suffix in (".tsv", ".csv", ".parquet"):
        candidate = directory / f"{split}{suffix}"
        if candidate.is_file():
            return candidate
    raise DataError(f"no {split}.tsv, {split}.csv or {split}.parquet in {directory}")


def _rows_from_uri(config: DataConfig, split: str) -> list[Example]:
    """Read `<source>/<split>.{tsv,csv,parquet}` (the first that exists) through a temp copy, removed after."""
    import pyarrow.fs

    uri = config.source
    try:
        fs, root = pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
        for suffix in (".tsv", ".csv", ".parquet"):
            remote = f"{root}/{split}{suffix}"
            if fs.get_file_info(remote).type == pyarrow.fs.FileType.File:
                with tempfile.TemporaryDirectory(prefix="sentiment-data-") as directory:
                    local = Path(directory) / f"{split}{suffix}"
                    with fs.open_input_stream(remote) as src, open(local, "wb") as out:
                        shutil.copyfileobj(src, out, 1 << 20)
                    return _rows_from_file(local, config.text_column, config.label_column)
    except (OSError, ValueError) as exc:  # pyarrow raises OSError subclasses for access and network errors
        if isinstance(exc, DataError):
            raise
        raise DataError(f"cannot read {uri}: {exc}") from exc
    raise DataError(f"no {split}.tsv, {split}.csv or {split}.parquet under {uri}")


def _rows_from_file(path: Path, text_column: str, label_column: str) -> list[Example]:
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path, columns=[text_column, label_column]).to_pydict()
        pairs = zip(table[text_column], table[label_column])
    else:
        delimiter = "\t" if path.suffix == ".tsv" else ","
        # SST-2 text holds bare quotes: TSV is read without quote handling, as GLUE distributes it.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle, delimiter=delimiter, quoting=quoting)
            missing = {text_column, label_column} - set(reader.fieldnames or [])
            if missing:
                raise DataError(f"{path}: missing column(s) {sorted(missing)}; has {reader.fieldnames}")
            pairs = [(row[text_column], row[label_column]) for row in reader]
    examples = []
    for line, (text, label) in enumerate(pairs, start=2):
        try:
            value = int(label)
        except (TypeError, ValueError):
            raise DataError(f"{path}:{line}: label {label!r} is not an integer") from None
        if value not in (0, 1):
            raise DataError(f"{path}:{line}: label {value} is not 0 or 1")
        examples.append(Example(text=str(text).strip(), label=value))
    return examples


def _rows_from_hub(config: DataConfig, split: str) -> list[Example]:
    try:
        import datasets
    except ImportError as exc:
        raise DataError(f"{config.source!r} is not a local path, and reading hub datasets needs `pip install datasets`") from exc
    loaded = datasets.load_dataset(config.source, config.hub_config, split=split)
    text_column, label_column = config.text_column, config.label_column
    return [Example(text=str(r[text_column]).strip(), label=int(r[label_column])) for r in loaded]


def load_split(config: DataConfig, split: str, limit: int | None = None) -> list[Example]:
    path = Path(config.source).expanduser()
    if "://" in config.source:
        rows = _rows_from_uri(config, split)
    elif path.is_dir():
        rows = _rows_from_file(_find_split_file(path, split), config.text_column, config.label_column)
    elif path.is_file():
        rows = _rows_from_file(path, config.text_column, config.label_column)
    elif config.source.startswith((".", "/", "~")):
        raise DataError(f"data source {config.source!r} does not exist")
    else:
        rows = _rows_from_hub(config, split)
    if not rows:
        raise DataError(f"split {split!r} of {config.source!r} is empty")
    return rows[:limit] if limit else rows
