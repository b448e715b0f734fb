"""A shared store of compiled bucket artifacts (S3, or any URI pyarrow.fs opens), used by every replica.

Layout under the URI, one pair per cache key (the key hashes weights digest, backend, compiler version and
bucket shape, serve_app/backends/compiled.py):

    <uri>/<key>.pt      the artifact
    <uri>/<key>.json    {"sha256": ..., "backend": ..., "compiler_version": ..., "bucket": ..., "weights_sha256": ...}

The `.json` is written after the `.pt`, so a key with metadata is complete. A fetched artifact is kept only
if its bytes hash to the metadata's sha256. The store is an optimisation: a replica that cannot use it
compiles locally. A store it may not list or write is named in one warning line (at start, or at the first
refused upload), and the replica then neither asks nor logs again: the IAM grant it needs is in docs/eks.md.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from serve_app.model.source import sha256_file

logger = logging.getLogger(__name__)
CHUNK = 1 << 20


class ArtifactStore:
    def __init__(self, uri: str) -> None:
        import pyarrow.fs

        self.uri = uri.rstrip("/")
        self.fs, self.root = pyarrow.fs.FileSystem.from_uri(self.uri)
        self.writable = True
        # S3 has no directories: only a local store needs its folder made before the first upload (Arrow's
        # CreateDir on S3 would send HeadBucket, which AWS authorizes as s3:ListBucket).
        self._local = isinstance(self.fs, pyarrow.fs.LocalFileSystem)

    @classmethod
    def open(cls, uri: str) -> "ArtifactStore | None":
        """The store at `uri` once it answers a listing of its prefix, or None (one warning line): replicas
        then compile locally. Without s3:ListBucket, S3 answers 403 instead of 404 for a key not stored yet,
        so a store that cannot be listed could not tell "not compiled yet" from "refused"."""
        import pyarrow.fs

        try:
            store = cls(uri)
            store.fs.get_file_info(pyarrow.fs.FileSelector(store.root, allow_not_found=True))
            return store
        except Exception as exc:
            logger.warning("compile cache %s is not usable (%s): every replica compiles its buckets itself; an S3 "
                           "store needs s3:ListBucket, s3:GetObject and s3:PutObject on its prefix (docs/eks.md)",
                           uri, _one_line(exc))
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
        """Upload an artifact, then its metadata (so readers never see a partial key). After a refused upload
        the store is read-only for this replica: one warning line, no further attempts."""
        if not self.writable:
            return False
        try:
            if self._local:
                self.fs.create_dir(self.root, recursive=True)
            with open(artifact, "rb") as src, self.fs.open_output_stream(self._path(f"{key}.pt")) as out:
                while block := src.read(CHUNK):
                    out.write(block)
            with self.fs.open_output_stream(self._path(f"{key}.json")) as out:
                out.write(json.dumps(meta, sort_keys=True).encode())
            return True
        except Exception as exc:
            self.writable = False
            logger.warning("compile cache %s refused an upload (%s): this replica shares nothing it compiles; an S3 "
                           "store needs s3:PutObject on its prefix (docs/eks.md)", self.uri, _one_line(exc))
            return False


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
