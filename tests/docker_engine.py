"""A Docker engine for the images tier, and the images it builds (tests/test_images.py).

`DockerEngine.obtain()` uses the engine at $DOCKER_HOST when one answers there, or else starts `dockerd` as
root with its own data root (kept under the cache folder, so a second run reuses its layers) and its own
socket in a temp dir, and `stop()` ends only a daemon it started, by PID. Without either it returns None
with the reason, and the tier is skipped (or fails, under CI=true).

Images, each built only when missing (the cache is `$SENTIMENT_IMAGES_CACHE`, default
/var/tmp/sentiment-images):
- `sentiment-standin/debian:bookworm`: a Debian 12 root filesystem from `debootstrap` against the mirror apt
  uses, imported as an image (Docker Hub cannot be reached here);
- `sentiment-standin/ray:2.60.0-py311-cpu`: tests/standin/ray-base/Dockerfile, the stand-in for
  rayproject/ray:2.60.0-py311-cpu;
- `sentiment-standin/wheels:torch-2.13.0-cpu`: this machine's CPU torch wheel (download.pytorch.org cannot be
  reached), which docker/Dockerfile.* take through their WHEELS_IMAGE argument;
- the project's images from docker/Dockerfile.cpu and docker/Dockerfile.inf2 (NEURON_SDK_SOURCE=standin).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

CACHE = Path(os.environ.get("SENTIMENT_IMAGES_CACHE", "/var/tmp/sentiment-images"))
DEBIAN = "sentiment-standin/debian:bookworm"
RAY_BASE = "sentiment-standin/ray:2.60.0-py311-cpu"
WHEELS = "sentiment-standin/wheels:torch-2.13.0-cpu"
DEBIAN_PACKAGES = "python3,python3-venv,wget,ca-certificates,gnupg,netbase"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")


def docker_cli() -> str | None:
    # Debian's docker.io client has BuildKit built in (DOCKER_BUILDKIT=1); a newer client needs buildx for it.
    for candidate in ("/usr/bin/docker", shutil.which("docker")):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def apt_mirror() -> str:
    for source in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]:
        text = source.read_text(errors="replace") if source.is_file() else ""
        for line in text.splitlines():
            words = line.split()
            if words[:1] == ["URIs:"] and "/debian" in words[1] and "security" not in words[1]:
                return words[1]
            if words[:1] == ["deb"] and "/debian" in line and "security" not in line:
                return next(w for w in words[1:] if w.startswith("http"))
    return "http://deb.debian.org/debian"


@dataclass
class DockerEngine:
    host: str
    cli: str
    pid: int | None = None          # set when this engine was started here (and is stopped here)
    run_dir: Path | None = None

    @property
    def env(self) -> dict:
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "1"}

    def docker(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([self.cli, *args], env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args[:3])} ... exited {result.returncode}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result

    def answers(self) -> bool:
        try:
            return self.docker("version", "--format", "{{.Server.Version}}", timeout=20, check=False).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    @classmethod
    def obtain(cls) -> tuple["DockerEngine | None", str]:
        cli = docker_cli()
        if cli is None:
            return None, "no docker client (apt-get install docker.io)"
        if os.environ.get("DOCKER_HOST"):
            engine = cls(os.environ["DOCKER_HOST"], cli)
            if engine.answers():
                return engine, f"the engine at {engine.host}"
        dockerd = shutil.which("dockerd")
        if dockerd is None or os.geteuid() != 0:
            return None, "no Docker engine answers at $DOCKER_HOST, and dockerd cannot be started here (needs docker.io and root)"
        run_dir = Path(tempfile.mkdtemp(prefix="dk", dir="/tmp"))  # short: unix socket paths are limited
        (CACHE / "docker").mkdir(parents=True, exist_ok=True)
        log = open(run_dir / "dockerd.log", "wb")
        proc = subprocess.Popen([dockerd, "--data-root", str(CACHE / "docker"), "--exec-root", str(run_dir / "x"),
                                 "--host", f"unix://{run_dir}/docker.sock", "--pidfile", str(run_dir / "docker.pid")],
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        engine = cls(f"unix://{run_dir}/docker.sock", cli, pid=proc.pid, run_dir=run_dir)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None, f"dockerd exited {proc.returncode}: {(run_dir / 'dockerd.log').read_text()[-2000:]}"
            if engine.answers():
                return engine, f"dockerd pid {proc.pid} started here (data root {CACHE / 'docker'})"
            time.sleep(1)
        engine.stop()
        return None, "dockerd did not answer within 90 s"

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                os.kill(self.pid, 0)
                if Path(f"/proc/{self.pid}/stat").read_text().split()[2] == "Z":
                    os.waitpid(self.pid, 0)
                    break
            except (ProcessLookupError, ChildProcessError, FileNotFoundError):
                break
            time.sleep(0.5)
        else:
            os.kill(self.pid, signal.SIGKILL)
        self.pid = None
        if self.run_dir is not None:
            shutil.rmtree(self.run_dir, ignore_errors=True)

    # --- networks ------------------------------------------------------------------------------------------

    def block_egress(self, network: str) -> list[str] | None:
        """Reject traffic from `network` to anything outside its subnet (the containers reach each other and
        the ports published on 127.0.0.1, nothing else). Returns the iptables rule, or None where this engine
        is not this machine's (then nothing is done)."""
        on_this_machine = self.pid is not None or self.host.startswith("unix://")
        if not on_this_machine or shutil.which("iptables") is None:
            return None
        subnet = self.docker("network", "inspect", "-f", "{{(index .IPAM.Config 0).Subnet}}", network).stdout.strip()
        rule = ["DOCKER-USER", "-s", subnet, "!", "-d", subnet, "-j", "REJECT"]
        subprocess.run(["iptables", "-I", *rule], check=True, capture_output=True, timeout=30)
        return rule

    def unblock_egress(self, rule: list[str] | None) -> None:
        if rule:
            subprocess.run(["iptables", "-D", *rule], capture_output=True, timeout=30)

    # --- images ------------------------------------------------------------------------------------------

    def has_image(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def build(self, tag: str, dockerfile: Path, context: Path, build_args: dict[str, str] | None = None,
              timeout: float = 1800) -> None:
        args = ["build", "-q", "-f", str(dockerfile), "-t", tag]
        for key, value in (build_args or {}).items():
            args += ["--build-arg", f"{key}={value}"]
        self.docker(*args, str(context), timeout=timeout)

    def ensure_debian(self) -> None:
        if self.has_image(DEBIAN):
            return
        if shutil.which("debootstrap") is None:
            raise RuntimeError("debootstrap is needed for the Debian root filesystem (apt-get install debootstrap)")
        with tempfile.TemporaryDirectory(prefix="rootfs-") as tmp:
            root = Path(tmp) / "root"
            subprocess.run(["debootstrap", "--variant=minbase", f"--include={DEBIAN_PACKAGES}", "bookworm", str(root),
                            apt_mirror()], check=True, capture_output=True, timeout=900)
            tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
            imported = subprocess.run([self.cli, "import", "-", DEBIAN], stdin=tar.stdout, env=self.env,
                                      capture_output=True, timeout=600)
            tar.wait()
            if imported.returncode != 0:
                raise RuntimeError(f"docker import failed: {imported.stderr.decode()[-2000:]}")

    def ensure_ray_base(self) -> None:
        if self.has_image(RAY_BASE):
            return
        with tempfile.TemporaryDirectory(prefix="ray-base-") as tmp:
            shutil.copy(REPO / "tests" / "standin" / "ray-base" / "Dockerfile", tmp)
            shutil.copy(CA_BUNDLE, Path(tmp) / "ca-certificates.crt")
            self.build(RAY_BASE, Path(tmp) / "Dockerfile", Path(tmp), {"DEBIAN_IMAGE": DEBIAN})

    def ensure_wheels(self) -> None:
        if self.has_image(WHEELS):
            return
        with tempfile.TemporaryDirectory(prefix="wheels-") as tmp:
            subprocess.run(["python3", "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                            "--python-version", "3.11", "-d", tmp, "torch==2.13.0"], check=True, timeout=900)
            [wheel] = Path(tmp).glob("torch-*.whl")
            if "+cpu" not in wheel.name:
                raise RuntimeError(f"{wheel.name} is not the CPU build of torch")
            (Path(tmp) / "Dockerfile").write_text("FROM scratch\nCOPY *.whl /\n")
            self.build(WHEELS, Path(tmp) / "Dockerfile", Path(tmp))

    def build_project_images(self, tags: dict[str, str]) -> None:
        """`tags`: {"cpu": tag, "inf2": tag}. Rebuilt each run (BuildKit reuses unchanged layers)."""
        common = {"BASE_IMAGE": RAY_BASE, "WHEELS_IMAGE": WHEELS}
        self.build(tags["cpu"], REPO / "docker" / "Dockerfile.cpu", REPO,
                   {**common, "TORCH_INDEX_URL": "https://pypi.org/simple"})
        self.build(tags["inf2"], REPO / "docker" / "Dockerfile.inf2", REPO, {**common, "NEURON_SDK_SOURCE": "standin"})
