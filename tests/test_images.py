"""The `images` tier: the project's images built, and the RayService's pods run from them as containers.

`pytest -m images` (CI runs it after `make test`; see .ci/run). What it does:
1. builds the stand-in base (tests/standin/ray-base, on a debootstrapped Debian 12), then docker/Dockerfile.cpu
   and docker/Dockerfile.inf2 (`NEURON_SDK_SOURCE=standin`) on it (tests/docker_engine.py);
2. starts the head, one `cpu` worker and one `inf2` worker of kuberay/10-rayservice.yaml as containers, each as
   KubeRay v1.7 builds its pod (tests/kuberay_pods.py): the generated `ray start` line, the template's env plus
   the operator's (token auth from a generated secret, throughput mode, HAProxy retries), read-only root, uid
   10001 / gid 100 with fsGroup 100, all capabilities dropped, no privilege escalation, every emptyDir as a
   tmpfs at its mount path, /dev/shm sized to the memory limit, the workers' wait-gcs-ready init container;
   the containers share a bridge network this test creates, out of which an iptables rule (DOCKER-USER) lets
   nothing but traffic to its own subnet, and the head's :8000 and :8265 are published on 127.0.0.1 only;
3. deploys the manifest's serveConfigV2 through the head's dashboard with the token, as the operator does;
4. asserts: every container's liveness and readiness probe succeeds inside it; POST /analyze through the
   head's HAProxy answers 200 with the default model; the model replicas run on the inf2 worker, whose compile
   cache is filled under its tmpfs; no process met a read-only file system (Ray's logs) and no container wrote
   to its root filesystem (`docker diff`).

Scaled to this machine (2 cores): one Ingress replica (the manifest asks for 2, on 2 `cpu` pods), CPU limits
capped at the machine's cores (Ray still gets the manifest's num-cpus), the compile cache local (the S3 store
is the `s3` tier's), and the short sequence buckets (16-128; the long ones cost ~40 s of CPU per replica here).
What it does NOT prove: the real rayproject/ray base (Ubuntu, conda; tests/standin/ray-base says what the
stand-in lacks), AWS's Neuron SDK (neuronx-cc, the runtime, NEFFs: torch_neuronx is tests/standin's
torch.jit.trace), Kubernetes itself (kubelet, Services, the operator's reconciliation, the autoscaler sidecar),
IRSA, and any latency.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import uuid

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.docker_engine import DockerEngine
from tests.kuberay_pods import PodPlan, Probe, advertised_resources, render_rayservice
from tests.waiting import Timeline, format_timeline, wait_for

pytestmark = pytest.mark.images
MANIFEST = REPO / "kuberay" / "10-rayservice.yaml"
TAGS = {"cpu": "sentiment-serve:images-test-cpu", "inf2": "sentiment-serve:images-test-inf2"}


@pytest.fixture(scope="module")
def engine():
    engine, how = DockerEngine.obtain()
    if engine is None:
        if os.environ.get("CI"):
            pytest.fail(f"images tier: no Docker engine in CI ({how}); .ci/run installs docker.io")
        pytest.skip(f"images tier: {how}")
    print(f"\nimages tier: {how}", flush=True)
    try:
        yield engine
    finally:
        engine.docker("image", "prune", "-f", check=False)   # dangling layers of replaced builds
        engine.stop()


def image_for(manifest_image: str) -> str:
    return TAGS["inf2"] if manifest_image.endswith("-inf2") else TAGS["cpu"]


class Pods:
    """The containers, networks and names of one run; `remove()` takes them all away."""

    def __init__(self, engine: DockerEngine) -> None:
        self.engine = engine
        self.run = uuid.uuid4().hex[:8]
        self.network = f"sentiment-pods-{self.run}"
        self.containers: dict[str, str] = {}
        engine.docker("network", "create", self.network)
        self.egress_rule = engine.block_egress(self.network)

    def run_args(self, pod: PodPlan) -> list[str]:
        cpus = min(pod.cpu_limit, os.cpu_count() or 1)
        args = ["--read-only"] if pod.read_only_root else []
        # The open-files limit is the engine's: where its hard limit is under 65536 (20000 on these machines),
        # KubeRay's `ulimit -n 65536` fails and `ray start` runs anyway (the command joins them with `;`).
        args += ["--user", f"{pod.user}:{pod.group_id}", "--cpus", f"{cpus:g}", "--memory", str(pod.memory_limit),
                 "--shm-size", str(pod.shm_bytes)]
        if pod.fs_group is not None:
            args += ["--group-add", str(pod.fs_group)]
        if pod.drop_capabilities:
            args += ["--cap-drop", "ALL"]
        if pod.no_new_privileges:
            args += ["--security-opt", "no-new-privileges"]
        for path, size in sorted(pod.tmpfs.items()):
            args += ["--tmpfs", f"{path}:rw,exec,size={size},mode=1777"]
        # Ray reports usage statistics to a public host unless told not to: nothing here leaves this machine.
        for key, value in {**pod.env, "RAY_USAGE_STATS_ENABLED": "0"}.items():
            args += ["-e", f"{key}={value}"]
        return args

    def start(self, pod: PodPlan, head_alias: str | None = None) -> str:
        name = f"{pod.name}-{self.run}"
        args = ["run", "-d", "--name", name, "--hostname", pod.name, "--network", self.network, *self.run_args(pod)]
        if head_alias:
            args += ["--network-alias", head_alias, "--network-alias", head_alias.split(".")[0],
                     "-p", "127.0.0.1::8000", "-p", "127.0.0.1::8265"]
        self.engine.docker(*args, image_for(pod.image), "/bin/bash", "-c", "--", pod.args)
        self.containers[pod.group] = name
        return name

    def init(self, pod: PodPlan, timeout_s: float = 180) -> None:
        """The worker's wait-gcs-ready init container: same image, env and security, run to completion."""
        name = f"{pod.name}-init-{self.run}"
        self.engine.docker("run", "--rm", "--name", name, "--network", self.network, *self.run_args(pod),
                           image_for(pod.image), "/bin/bash", "-c", "--", pod.init_args, timeout=timeout_s)

    def port(self, group: str, container_port: int) -> int:
        out = self.engine.docker("port", self.containers[group], str(container_port)).stdout
        return int(out.strip().splitlines()[0].rsplit(":", 1)[1])

    def exec(self, group: str, *command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        return self.engine.docker("exec", self.containers[group], *command, timeout=timeout, check=False)

    def ip(self, group: str) -> str:
        out = self.engine.docker("inspect", "-f", f"{{{{(index .NetworkSettings.Networks \"{self.network}\").IPAddress}}}}",
                                 self.containers[group]).stdout
        return out.strip()

    def probe(self, group: str, probe: Probe) -> tuple[bool, str]:
        """Run a probe as the kubelet would: an HTTP GET on the pod's IP, or the exec command inside it."""
        if probe.command:
            result = self.exec(group, *probe.command)
        else:
            result = self.exec(group, "wget", "--tries", "1", "-T", "2", "-q", "-O", "-",
                               f"http://{self.ip(group)}:{probe.port}{probe.path}")
        return result.returncode == 0, (result.stdout + result.stderr)[-300:]

    def logs(self, group: str) -> str:
        result = self.engine.docker("logs", "--tail", "80", self.containers[group], check=False)
        return result.stdout + result.stderr

    def remove(self) -> None:
        for name in self.containers.values():
            self.engine.docker("rm", "-f", "-v", name, check=False)
        self.engine.unblock_egress(self.egress_rule)
        self.engine.docker("network", "rm", self.network, check=False)


def serve_config_for_this_machine(doc: dict) -> dict:
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    app = config["applications"][0]
    app["args"].pop("compile_cache_uri", None)
    app["args"]["buckets"] = {**app["args"].get("buckets", {}), "seq_lens": [16, 32, 64, 128]}
    deployments = {d["name"]: d for d in app["deployments"]}
    deployments["Ingress"]["autoscaling_config"]["min_replicas"] = 1
    return config


def test_rayservice_pods_run_from_the_images(engine, capsys):
    doc = yaml.safe_load(MANIFEST.read_text())
    token = secrets.token_hex(32)
    pods = {p.group: p for p in render_rayservice(doc, token)}
    assert set(pods) == {"headgroup", "cpu", "inf2"}
    # As the Neuron device plugin may hand it to the pod: a range, which `ray start` refuses unless the pod's
    # args (serve_app/neuron_cores.py) rewrite it first.
    pods["inf2"].env["NEURON_RT_VISIBLE_CORES"] = "0-1"
    timeline = Timeline("images")
    engine.ensure_debian()
    timeline.mark("Debian 12 root filesystem image (debootstrap)")
    engine.ensure_ray_base()
    engine.ensure_wheels()
    timeline.mark("stand-in rayproject/ray base and the CPU torch wheel image")
    engine.build_project_images(TAGS)
    timeline.mark("docker/Dockerfile.cpu and docker/Dockerfile.inf2 (Neuron stand-in) built")

    run = Pods(engine)
    try:
        head = pods["headgroup"]
        head_alias = head.env.get("FQ_RAY_IP") or pods["cpu"].env["FQ_RAY_IP"]
        run.start(head, head_alias=head_alias)
        dashboard = f"http://127.0.0.1:{run.port('headgroup', 8265)}"
        http = httpx.Client(base_url=dashboard, headers={"Authorization": f"Bearer {token}"}, timeout=10)
        wait_for(lambda: run.probe("headgroup", head.readiness)[0], 120, "the head's readiness probe", every_s=2)
        timeline.mark("head ready (GCS, dashboard, agent: GET :52365/api/healthz)")
        assert httpx.get(f"{dashboard}/api/serve/applications/", timeout=10).status_code == 401  # token auth is on

        for group in ("cpu", "inf2"):
            run.init(pods[group])
            timeline.mark(f"{group}: wait-gcs-ready init container finished (ray health-check with the token)")
            run.start(pods[group])
        wait_for(lambda: len([n for n in http.get("/nodes", params={"view": "summary"}).json()["data"]["summary"]
                              if n["raylet"]["state"] == "ALIVE"]) == 3, 180, "three Ray nodes", every_s=2)
        nodes = http.get("/api/v0/nodes", params={"detail": "true"}).json()["data"]["result"]["result"]
        totals = {node["node_ip"]: node["resources_total"] for node in nodes}
        for group, pod in pods.items():
            advertised = totals[run.ip(group)]
            assert advertised.get("CPU", 0) == float(pod.ray_start_params["num-cpus"]), (group, advertised)
            for name, amount in advertised_resources(pod.ray_start_params).items():
                assert advertised.get(name) == amount, (group, name, advertised)
        timeline.mark("cpu and inf2 workers joined with the resources their rayStartParams advertise")

        config = serve_config_for_this_machine(doc)
        response = http.put("/api/serve/applications/", json=config, timeout=60)
        assert response.status_code == 200, response.text
        timeline.mark("serveConfigV2 deployed through the dashboard with the token")
        app = lambda: http.get("/api/serve/applications/").json()["applications"].get("sentiment", {})  # noqa: E731
        try:
            wait_for(lambda: app().get("status") == "RUNNING", 600, "the application to run", every_s=3)
        except AssertionError:
            raise AssertionError(f"{app()}\n" + "\n".join(f"--- {g}\n{run.logs(g)}" for g in run.containers))
        timeline.mark("application RUNNING")

        serve_port = run.port("headgroup", 8000)
        answer = httpx.post(f"http://127.0.0.1:{serve_port}/analyze", json={"text": "I love using this product!"}, timeout=60)
        assert answer.status_code == 200, answer.text
        [prediction] = answer.json()
        assert prediction["label"] == "POSITIVE" and prediction["score"] > 0.9, prediction
        assert httpx.post(f"http://127.0.0.1:{serve_port}/analyze", json={"text": "It broke in a day."},
                          timeout=60).json()[0]["label"] == "NEGATIVE"
        health = httpx.get(f"http://127.0.0.1:{serve_port}/healthz", timeout=10).json()
        assert health["backend"].startswith("neuronx"), health
        timeline.mark(f"POST /analyze through the head's HAProxy: 200 ({prediction['label']} {prediction['score']:.3f})")

        nodes = {n["raylet"]["nodeManagerAddress"]: n["raylet"]["nodeId"]
                 for n in http.get("/nodes", params={"view": "summary"}).json()["data"]["summary"]}
        inf2_node = nodes[run.ip("inf2")]
        replicas = app()["deployments"]["SentimentModel"]["replicas"]
        assert replicas and all(r["node_id"] == inf2_node for r in replicas), (replicas, nodes)
        cache = run.exec("inf2", "sh", "-c", "ls /tmp/compile-cache").stdout.split()
        assert "manifest.json" in cache and any(name.startswith("neuronx-") for name in cache), cache
        timeline.mark(f"{len(replicas)} model replicas on the inf2 worker; {len(cache)} entries in its /tmp/compile-cache")

        for group, pod in pods.items():
            for kind, probe in (("liveness", pod.liveness), ("readiness", pod.readiness)):
                ok, out = run.probe(group, probe)
                assert ok, f"{group} {kind} probe failed: {probe}\n{out}"
        timeline.mark("every container's liveness and readiness probe succeeds")

        for group in pods:
            erofs = run.exec(group, "sh", "-c", "grep -rl 'Read-only file system' /tmp/ray/session_latest/logs || true")
            assert not erofs.stdout.strip(), f"{group}: {erofs.stdout}"
            changed = engine.docker("diff", run.containers[group]).stdout.strip()
            assert not changed, f"{group} wrote outside its tmpfs: {changed}"
            assert run.exec(group, "sh", "-c", "touch /opt/app/x").returncode != 0
        timeline.mark("no writes outside the tmpfs mounts (docker diff, Ray's logs)")
    finally:
        run.remove()
        timeline.mark("containers and networks removed")
        with capsys.disabled():
            print(format_timeline(timeline, "images timeline"), flush=True)

