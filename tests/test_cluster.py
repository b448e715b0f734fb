"""The `cluster` tier: the RayService's own cluster, run here with Ray's real autoscaler.

`kuberay/10-rayservice.yaml` is read as KubeRay reads it (tests/fake_cluster.py): a head with its
rayStartParams, one node type per workerGroupSpec (CPU from the container, `neuron_cores` only where
rayStartParams advertises it). Ray's autoscaler launches and removes those nodes (fake_multinode provider),
and the manifest's own serveConfigV2 is deployed through the dashboard's Serve REST API with the manifest's
token auth, as the KubeRay operator deploys it.

Scaled to this machine (and nothing else changed): the Inferentia group starts at 1 node (2 in the manifest)
and may add 1; one Ingress replica on one `cpu` node (two of each in the manifest); the idle timeout is 5 s; Serve's autoscaling delays are 2 s up and 10 s down (the load goes on
until a new replica has served, so Serve never takes back a replica that is still starting); the model's
max_replicas is 4 (two inf2 nodes' worth); the compile cache is a temp dir and the shared store a file:// URI.

What it does NOT prove: Neuron compilation or runtime (`torch_neuronx.trace` is torch.jit.trace from
tests/standin, on every Ray worker's PYTHONPATH), pods, Karpenter or the Kubernetes scheduler (nodes are
processes on this machine), Ray Serve's throughput mode with HAProxy that the manifest sets (in it, worker
nodes run HAProxy instead of a Python proxy, and the HAProxies of several fake nodes, which share this
machine's network namespace, would share their ports; this test runs the Python proxy on every node), and
latency. The `images` tier (tests/test_images.py) runs the same manifest in throughput mode with token auth,
each node a container with a network namespace of its own; only the autoscaler's part is this tier's.
"""

from __future__ import annotations

import concurrent.futures
import copy
import json
import re
import secrets
import threading
from pathlib import Path

import httpx
import pytest
import yaml

from tests.conftest import REPO
from tests.fake_cluster import FakeCluster, cluster_shape, serve_config, unplaceable_deployments
from tests.ports import free_port
from tests.waiting import Timeline, format_timeline, wait_for

MANIFESTS = {"inf2": REPO / "kuberay" / "10-rayservice.yaml", "inf1": REPO / "kuberay" / "inf1" / "10-rayservice.yaml"}
NEURON_GROUP = {"inf2": "inf2", "inf1": "inf1"}
CLIENTS = 8
THROUGHPUT_MODE = ("RAY_SERVE_THROUGHPUT_OPTIMIZED", "RAY_SERVE_ENABLE_HA_PROXY")


def rayservice(name: str) -> dict:
    [doc] = [d for d in yaml.safe_load_all(MANIFESTS[name].read_text()) if d and d["kind"] == "RayService"]
    return doc


def model_deployment(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == "SentimentModel")


# --- the shape, without Ray ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_every_deployment_fits_a_node_type(name):
    doc = rayservice(name)
    shape = cluster_shape(doc)
    assert unplaceable_deployments(shape, serve_config(doc)) == []
    cores = {w.name: w.resources.get("neuron_cores", 0) for w in shape.workers}
    assert cores[NEURON_GROUP[name]] >= 2 and shape.head_resources["CPU"] == 0


@pytest.mark.parametrize("name", sorted(MANIFESTS))
def test_neuron_cores_not_advertised_breaks_the_shape(name):
    doc = copy.deepcopy(rayservice(name))
    for group in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"]:
        group["rayStartParams"].pop("resources", None)
    problems = unplaceable_deployments(cluster_shape(doc), serve_config(doc))
    assert any("SentimentModel" in p for p in problems) and any("Ingress" in p for p in problems)


def test_a_resource_no_node_type_has_breaks_the_shape():
    doc = copy.deepcopy(rayservice("inf2"))
    config = serve_config(doc)
    model_deployment(config)["ray_actor_options"]["resources"] = {"neuron_devices": 1}
    assert any("SentimentModel" in p for p in unplaceable_deployments(cluster_shape(doc), config))


# --- the live cluster ---------------------------------------------------------------------------------

class ClusterClient:
    def __init__(self, cluster: FakeCluster) -> None:
        self.cluster = cluster
        self.http = httpx.Client(base_url=cluster.dashboard_url, headers=cluster.headers, timeout=10)

    def deploy(self, config: dict) -> None:
        response = self.http.put("/api/serve/applications/", json=config, timeout=60)
        assert response.status_code == 200, response.text

    def app(self) -> dict:
        return self.http.get("/api/serve/applications/").json()["applications"].get("sentiment", {})

    def replicas(self, deployment: str) -> list[dict]:
        return self.app().get("deployments", {}).get(deployment, {}).get("replicas", [])

    def target(self, deployment: str) -> int:
        return self.app().get("deployments", {}).get(deployment, {}).get("target_num_replicas", 0)

    def nodes(self) -> list[dict]:
        rows = self.http.get("/nodes", params={"view": "summary"}).json()["data"]["summary"]
        return [r["raylet"] for r in rows if r["raylet"]["state"] == "ALIVE"]

    def neuron_nodes(self) -> list[str]:
        return sorted(n["nodeId"] for n in self.nodes() if n.get("resourcesTotal", {}).get("neuronCores", 0) > 0)

    def actor_resources(self, actor_id: str) -> dict:
        rows = self.http.get("/api/v0/actors", params={"detail": "true", "filter_keys": "actor_id",
                                                         "filter_predicates": "=", "filter_values": actor_id}).json()
        return rows["data"]["result"]["result"][0]["required_resources"]


def visible_cores(log_dir: Path, replica_id: str) -> str | None:
    """What the replica's backend logged as its NEURON_RT_VISIBLE_CORES."""
    for path in log_dir.glob(f"replica_sentiment_SentimentModel_{replica_id}*.log"):
        found = re.search(r"NeuronCores visible to this replica: (\S+)", path.read_text(errors="replace"))
        if found:
            return found.group(1)
    return None


def replica_served(log_dir: Path, replica_id: str) -> bool:
    """The replica's own Serve log shows a handled classify call (Serve writes one access line per call)."""
    texts = (path.read_text(errors="replace") for path in log_dir.glob(f"replica_sentiment_SentimentModel_{replica_id}*.log"))
    return any("classify" in text and " OK " in text for text in texts)


@pytest.mark.cluster
def test_rayservice_cluster_scales_out_and_back(tmp_path, capsys):
    doc = rayservice("inf2")
    shape = cluster_shape(doc, max_workers_cap=2, min_workers={NEURON_GROUP["inf2"]: 1, "cpu": 1}, idle_timeout_s=5)
    token = secrets.token_hex(16)
    head_port, worker_port = free_port(), free_port()
    container_env = {e["name"]: e["value"] for e in
                     doc["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["env"]}
    # Without Ray Serve's throughput mode: in it, worker nodes get no Python proxy (direct ingress behind one
    # HAProxy per node), and HAProxies of several fake nodes on one machine would share their ports.
    env = {k: v for k, v in container_env.items() if k not in THROUGHPUT_MODE}
    env.update({
        # KubeRay's authOptions {mode: token} sets these on every Ray container from the Secret.
        "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
        "PYTHONPATH": f"{REPO}:{REPO / 'tests' / 'standin'}",
        # worker nodes' proxies on their own port, so a request provably goes through a worker's proxy
        "RAY_SERVE_WORKER_PROXY_HTTP_PORT": str(worker_port),
        "HF_HOME": str(tmp_path / "hf"), "TOKENIZERS_PARALLELISM": "false",
    })
    config = serve_config(doc)
    config["http_options"]["port"] = head_port
    app = config["applications"][0]
    app["args"]["compile_cache_dir"] = str(tmp_path / "compile-cache")
    app["args"]["compile_cache_uri"] = (tmp_path / "shared-store").as_uri()
    # The stand-in compiler traces and warms every bucket with CPU forwards: the manifest's 256- and 512-token
    # buckets (pipeline parity) would add ~40 s of CPU to each replica start on these 2 cores, which on
    # Inferentia are NEFF loads. This tier is about scaling out and back, so it keeps the short buckets;
    # the long ones run the same compile, store and load code (tests/test_neuron_backends.py, and a 512-token
    # jit bucket in tests/test_classifier.py).
    app["args"]["buckets"] = {**app["args"].get("buckets", {}), "seq_lens": [16, 32, 64, 128]}
    model = model_deployment(config)
    model["autoscaling_config"].update(max_replicas=4, upscale_delay_s=2, downscale_delay_s=10)
    # One Ingress replica: the manifest's two each take a `cpu` pod of their own (serve_ingress: 1).
    next(d for d in app["deployments"] if d["name"] == "Ingress")["autoscaling_config"]["min_replicas"] = 1
    min_replicas = model["autoscaling_config"]["min_replicas"]
    cores_per_node = shape.worker(NEURON_GROUP["inf2"]).resources["neuron_cores"]
    assert 4 > cores_per_node >= min_replicas  # the load must ask for more replicas than one node holds

    timeline = Timeline()
    cluster = FakeCluster(shape, tmp_path, env=env).start()
    try:
        client = ClusterClient(cluster)
        timeline.mark(f"head up (dashboard {cluster.dashboard_url})")
        log_dir = Path(wait_for(lambda: next(Path("/tmp/ray").glob(f"session_*_{cluster.sid}"), None), 30, "session dir")) / "logs" / "serve"
        client.deploy(config)
        timeline.mark("serveConfigV2 deployed through the dashboard's Serve REST API")
        wait_for(lambda: client.app().get("status") == "RUNNING", 420, "the application to run", every_s=2)
        timeline.mark("application RUNNING")
        base_nodes = client.neuron_nodes()
        assert len(base_nodes) == 1, base_nodes

        answer = httpx.post(f"http://127.0.0.1:{worker_port}/analyze", json={"text": "I love using this product!"}, timeout=60)
        assert answer.status_code == 200, answer.text
        [prediction] = answer.json()
        assert prediction["label"] == "POSITIVE" and prediction["score"] > 0.5
        timeline.mark("POST /analyze answered through a worker node's proxy")

        replicas = client.replicas("SentimentModel")
        assert len(replicas) == min_replicas
        for replica in replicas:
            resources = client.actor_resources(replica["actor_id"])
            assert resources.get("neuron_cores") == 1, resources
            assert replica.get("node_id") in base_nodes
        # Ray itself gives each replica its own NeuronCore through NEURON_RT_VISIBLE_CORES (the backend only logs it).
        visible = [visible_cores(log_dir, r["replica_id"]) for r in replicas]
        assert all(v is not None and v.isdigit() for v in visible) and len(set(visible)) == len(visible), visible
        ingress_nodes = {r.get("node_id") for r in client.replicas("Ingress")}
        assert not ingress_nodes & set(base_nodes), "an Ingress replica landed on an Inferentia node"

        stop = threading.Event()
        outcomes: list[int] = []

        def load():
            with httpx.Client(timeout=60) as http:
                while not stop.is_set():
                    try:
                        outcomes.append(http.post(f"http://127.0.0.1:{head_port}/analyze",
                                                  json={"text": ["a fine film", "dull and far too long"]}).status_code)
                    except httpx.HTTPError:
                        outcomes.append(-1)

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            for _ in range(CLIENTS):
                pool.submit(load)
            timeline.mark(f"load started ({CLIENTS} clients, closed loop)")
            try:
                wait_for(lambda: client.target("SentimentModel") > cores_per_node, 120, "Serve to ask for more replicas")
                timeline.mark(f"replicas asked: target {client.target('SentimentModel')} > {cores_per_node} cores per node")
                new_node = wait_for(lambda: next(iter(set(client.neuron_nodes()) - set(base_nodes)), None), 180,
                                    "the autoscaler to add an Inferentia node")
                timeline.mark(f"node up: {new_node[-5:]} ({NEURON_GROUP['inf2']} group)")
                new_replicas = wait_for(lambda: [r for r in client.replicas("SentimentModel")
                                                 if r.get("node_id") == new_node and r.get("state") == "RUNNING"], 300,
                                        "replicas on the new node")
                timeline.mark(f"{len(new_replicas)} replica(s) RUNNING on the new node")
                wait_for(lambda: any(replica_served(log_dir, r["replica_id"]) for r in new_replicas), 60,
                         "a new replica to serve a request")
                timeline.mark("a replica on the new node served requests")
            finally:
                stop.set()
        timeline.mark(f"load stopped: {len(outcomes)} requests, {sum(o == 200 for o in outcomes)} answered 200")
        assert outcomes and all(o in (200, 429) for o in outcomes), sorted(set(outcomes))

        wait_for(lambda: len([r for r in client.replicas("SentimentModel") if r.get("state") == "RUNNING"]) == min_replicas
                 and client.target("SentimentModel") == min_replicas, 180, "replicas back to the minimum")
        timeline.mark(f"replicas back to {min_replicas}")
        # Serve keeps the replicas on whichever node it chooses; the other one goes idle and is removed.
        gone = wait_for(lambda: len(client.neuron_nodes()) == len(base_nodes) and
                        (set(base_nodes) | {new_node}) - set(client.neuron_nodes()), 180, "the idle node to be removed")
        timeline.mark(f"idle Inferentia node {sorted(gone)[0][-5:]} removed")
        assert httpx.post(f"http://127.0.0.1:{head_port}/analyze", json={"text": "still here"}, timeout=60).status_code == 200
    finally:
        cluster.stop()
        summary = {what: round(t, 1) for t, what in timeline.events}
        (tmp_path / "timeline.json").write_text(json.dumps(summary, indent=2))
        with capsys.disabled():  # shown in every run's output, passed or failed
            print(format_timeline(timeline, "cluster timeline"), flush=True)
