"""A local Ray cluster shaped like a KubeRay RayService, with Ray's own autoscaler (fake_multinode provider).

`cluster_shape(rayservice)` reads the manifest the way the KubeRay operator and the Ray autoscaler read it:
the head's `rayStartParams`, and for each `workerGroupSpecs` entry a node type whose CPU comes from
`rayStartParams.num-cpus` or else the container's CPU limit, whose custom resources come from
`rayStartParams.resources` (only what a group advertises there exists for the autoscaler, ray-project/ray#44361),
and whose min/max come from `minReplicas`/`maxReplicas` (optionally capped to fit this machine).

`FakeCluster` starts `ray start --head --autoscaling-config=... --block` with RAY_FAKE_CLUSTER=1 in a new
process session, so every process of this cluster (head daemons, the autoscaler, and the worker "nodes" it
launches) can be found by session id and stopped without touching any other Ray on the machine
(never `ray stop`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml

from tests.kuberay_pods import advertised_resources
from tests.ports import free_port

HEAD_NODE_TYPE = "ray.head.default"


@dataclass(frozen=True)
class NodeType:
    name: str
    resources: dict
    min_workers: int
    max_workers: int


@dataclass(frozen=True)
class ClusterShape:
    head_resources: dict
    workers: tuple[NodeType, ...]
    idle_timeout_s: float

    def worker(self, name: str) -> NodeType:
        return next(w for w in self.workers if w.name == name)


def _cpu_quantity(value) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _group_resources(params: dict, template: dict) -> dict:
    container = template["spec"]["containers"][0]
    if "num-cpus" in params:
        cpu = float(params["num-cpus"])
    else:
        limits = container.get("resources", {}).get("limits", {})
        cpu = _cpu_quantity(limits.get("cpu", 0))
    return {"CPU": cpu, **advertised_resources(params)}


def cluster_shape(rayservice: dict, max_workers_cap: int | None = None, min_workers: dict | None = None,
                  idle_timeout_s: float | None = None) -> ClusterShape:
    """The Ray autoscaler's view of a RayService's cluster; caps and overrides only scale it to this machine."""
    cluster = rayservice["spec"]["rayClusterConfig"]
    head = cluster["headGroupSpec"]
    workers = []
    for group in cluster.get("workerGroupSpecs", []):
        high = int(group.get("maxReplicas", group.get("replicas", 0)))
        low = int(group.get("minReplicas", 0))
        if min_workers and group["groupName"] in min_workers:
            low = min_workers[group["groupName"]]
        if max_workers_cap is not None:
            high = min(high, max_workers_cap)
        workers.append(NodeType(group["groupName"], _group_resources(group.get("rayStartParams", {}), group["template"]),
                                min(low, high), high))
    timeout = idle_timeout_s if idle_timeout_s is not None else cluster.get("autoscalerOptions", {}).get("idleTimeoutSeconds", 60)
    return ClusterShape(_group_resources(head.get("rayStartParams", {}), head["template"]), tuple(workers), float(timeout))


def serve_config(rayservice: dict) -> dict:
    return yaml.safe_load(rayservice["spec"]["serveConfigV2"])


def unplaceable_deployments(shape: ClusterShape, config: dict) -> list[str]:
    """Deployments whose one replica fits no node type (it would stay PENDING forever)."""
    problems = []
    for app in config["applications"]:
        for deployment in app.get("deployments", []):
            options = deployment.get("ray_actor_options", {})
            need = {"CPU": float(options.get("num_cpus", 1)), **{k: float(v) for k, v in options.get("resources", {}).items()}}
            candidates = [shape.head_resources] + [w.resources for w in shape.workers if w.max_workers > 0]
            if not any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in candidates):
                problems.append(f"{app['name']}/{deployment['name']} needs {need}; node types offer {candidates}")
    return problems


def autoscaling_config(shape: ClusterShape, gcs_address: str) -> dict:
    types = {HEAD_NODE_TYPE: {"resources": shape.head_resources, "node_config": {}, "max_workers": 0}}
    for worker in shape.workers:
        types[worker.name] = {"resources": worker.resources, "node_config": {},
                              "min_workers": worker.min_workers, "max_workers": worker.max_workers}
    return {
        "cluster_name": "fake-rayservice",
        "max_workers": sum(w.max_workers for w in shape.workers),
        "upscaling_speed": 1.0,
        "idle_timeout_minutes": shape.idle_timeout_s / 60,
        "provider": {"type": "fake_multinode", "gcs_address": gcs_address, "use_node_id_as_ip": True,
                     "disable_node_updaters": True, "disable_launch_config_check": True},
        "available_node_types": types,
        "head_node_type": HEAD_NODE_TYPE,
        "auth": {"ssh_user": "ray"},
        "docker": {},
        "file_mounts": {},
        "cluster_synced_files": [],
        "file_mounts_sync_continuously": False,
        "rsync_exclude": [],
        "rsync_filter": [],
        "initialization_commands": [],
        "setup_commands": [],
        "head_setup_commands": [],
        "worker_setup_commands": [],
        "head_start_ray_commands": [],
        "worker_start_ray_commands": [],
    }


def _session_of(pid: int) -> int | None:
    """The session id of a live process (None for zombies and processes that are gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else int(fields[3])  # fields 3 and 6 of stat: state, session id


def processes_in_session(sid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid() and _session_of(int(entry.name)) == sid:
            pids.append(int(entry.name))
    return pids


@dataclass
class FakeCluster:
    shape: ClusterShape
    workdir: Path
    env: dict = field(default_factory=dict)
    head_params: dict = field(default_factory=dict)

    def start(self, timeout_s: float = 120) -> "FakeCluster":
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.gcs_address = f"127.0.0.1:{self.gcs_port}"
        config_path = self.workdir / "autoscaling.yaml"
        config_path.write_text(yaml.safe_dump(autoscaling_config(self.shape, self.gcs_address)))
        head = dict(self.shape.head_resources)
        cmd = [str(Path(sys.executable).with_name("ray")), "start", "--head", "--block",
               f"--port={self.gcs_port}", f"--autoscaling-config={config_path}",
               f"--num-cpus={int(head.pop('CPU', 0))}", "--node-ip-address=127.0.0.1",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--metrics-export-port={free_port()}", "--include-dashboard=true"]
        if head:
            cmd.append(f"--resources={json.dumps(head)}")
        env = {**os.environ, "RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", **self.env}
        self.log = open(self.workdir / "ray-start.log", "w")
        self.process = subprocess.Popen(cmd, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        self.sid = self.process.pid
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"ray start exited {self.process.returncode}: {(self.workdir / 'ray-start.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.dashboard_url}/api/version", headers=self.headers, timeout=2).status_code == 200:
                    return self
            except Exception:
                pass
            time.sleep(1)
        self.stop()
        raise TimeoutError("the fake cluster's dashboard did not come up")

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def headers(self) -> dict:
        token = self.env.get("RAY_AUTH_TOKEN")
        return {"Authorization": f"Bearer {token}"} if token else {}

    def stop(self) -> None:
        """End every process of this cluster's session (SIGTERM, then SIGKILL), and nothing else."""
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 5)):
            pids = processes_in_session(self.sid)
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and processes_in_session(self.sid):
                time.sleep(0.5)
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()
        # `ray start` records the cluster for later `ray.init()` calls to join; `ray stop` would remove it.
        current = Path(os.environ.get("RAY_TMPDIR", "/tmp")) / "ray" / "ray_current_cluster"
        try:
            if current.read_text().strip().endswith(f":{self.gcs_port}"):
                current.unlink()
        except OSError:
            pass
