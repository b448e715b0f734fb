"""A shared store of compiled bucket artifacts (S3, or any URI pyarrow.fs opens), used by every replica.

Layout under the URI, one pair per cache key (the key hashes weights digest, backend, compiler version and
bucket shape, serve_app/backends/compiled.py):

    <uri>/<key>.pt      the artifact
    <uri>/<key>.json    {"sha256": ..., "backend": ..., "compiler_version": ..., "bucket": ..., "weights_sha256": ...}

The `.json` is written after the `.pt`, so a key with metadata is complete. A fetched artifact is kept only
if its bytes hash to the metadata's sha256. The store is an optimisation: any failure to reach it is
logged and the replica compiles locally instead.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from serve_app.model_source import sha256_file

logger = logging.getLogger(__name__)
CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self.uri = uri.rstrip("/")
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)

    @classmethod
    def open(cls, uri: str) -> "ArtifactStore | None":
        """The store at `uri`, or None (logged) when it cannot be opened: replicas then compile locally."""
        try:
            return cls(uri)
        except Exception:
            logger.warning("compile cache %s cannot be opened; compiling locally", uri, exc_info=True)
            return None

    def _path(self, name: str) -> str:
        return f"{self.root}/{name}"

    def fetch(self, key: str, directory: Path) -> Path | None:
        """Download `key`'s artifact into a temp file in `directory`, kept only if its bytes hash to the sha256
        in `key`'s metadata; None when the store lacks it (or it does not verify)."""
        try:
            with self.fs.open_input_stream(self._path(f"{key}.json")) as handle:
                meta = json.loads(handle.read())
        except FileNotFoundError:
            return None
        except Exception:
            logger.warning("compile cache %s: cannot read %s.json; compiling locally", self.uri, key, exc_info=True)
            return None
        directory.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=directory, suffix=".fetch")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out, self.fs.open_input_stream(self._path(f"{key}.pt")) as src:
                while block := src.read(CHUNK):
                    out.write(block)
            actual = sha256_file(tmp)
            if actual != meta.get("sha256"):
                logger.warning("compile cache %s: %s.pt has sha256 %s, metadata says %s; ignored",
                               self.uri, key, actual, meta.get("sha256"))
                tmp.unlink(missing_ok=True)
                return None
        except Exception:
            logger.warning("compile cache %s: cannot download %s.pt; compiling locally", self.uri, key, exc_info=True)
            tmp.unlink(missing_ok=True)
            return None
        return tmp

    def push(self, key: str, artifact: Path, meta: dict) -> bool:
        """Upload an artifact, then its metadata (so readers never see a partial key)."""
        try:
            self.fs.create_dir(self.root, recursive=True)  # a no-op where the store has no directories
            with open(artifact, "rb") as src, self.fs.open_output_stream(self._path(f"{key}.pt")) as out:
                while block := src.read(CHUNK):
                    out.write(block)
            with self.fs.open_output_stream(self._path(f"{key}.json")) as out:
                out.write(json.dumps(meta, sort_keys=True).encode())
            return True
        except Exception:
            logger.warning("compile cache %s: cannot upload %s (continuing without sharing it)", self.uri, key, exc_info=True)
            return False
