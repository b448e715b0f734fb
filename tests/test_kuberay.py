"""kuberay/ manifests: offline validation against the real CRD and Kubernetes schemas, checkov, and
the RayService's serveConfigV2 serving the same application as serve_config.yaml."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from serve_app.config import parse_app_args
from tests.conftest import REPO
from tests.kuberay_pods import render_rayservice

pytestmark = pytest.mark.k8s
TOOLS = (REPO / ".." / "shared" / "tools" / "k8s").resolve()
FOLDERS = ["kuberay/", "kuberay/inf1/"]


def tool(name: str) -> Path:
    path = TOOLS / name
    if not path.is_file():
        pytest.skip(f"{path} not found (the offline k8s validator ships in ../shared/tools/k8s)")
    return path


def documents(folder: str) -> list[dict]:
    docs = []
    for path in sorted((REPO / folder).glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def rayservices(folder: str) -> list[dict]:
    return [d for d in documents(folder) if d["kind"] == "RayService"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_validator_reports_no_problems(folder):
    result = subprocess.run(["bash", str(tool("run.sh")), folder], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 problems" in result.stdout


@pytest.mark.parametrize("folder", FOLDERS)
def test_checkov_has_no_unlisted_findings(folder):
    result = subprocess.run(["bash", str(tool("checkov.sh")), folder], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout


def test_folder_layout():
    names = sorted(p.name for p in (REPO / "kuberay").iterdir() if p.is_file())
    assert "kustomization.yaml" not in names and "kustomization.yml" not in names
    assert all(n[:2].isdigit() for n in names if n.endswith(".yaml"))
    for folder in FOLDERS:
        assert documents(folder)[0]["kind"] == "Namespace"


@pytest.mark.parametrize("folder", FOLDERS)
def test_serve_config_v2_serves_the_same_app(folder):
    local = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    [service] = rayservices(folder)
    remote = yaml.safe_load(service["spec"]["serveConfigV2"])
    [local_app], [remote_app] = local["applications"], remote["applications"]
    for key in ("name", "import_path", "route_prefix"):
        assert remote_app[key] == local_app[key]
    assert remote["http_options"]["port"] == local["http_options"]["port"] == 8000
    differing = {k for k in set(local_app["args"]) | set(remote_app["args"]) if local_app["args"].get(k) != remote_app["args"].get(k)}
    # backend-specific only (buckets: the laptop's cpu forward cap vs the Neuron cluster's compiled grid;
    # dtype: the cpu backend's)
    assert differing <= {"backend", "model", "compile_cache_dir", "compile_cache_uri", "torch_threads", "buckets", "dtype"}, differing
    assert parse_app_args(remote_app["args"]).backend in ("neuronx", "neuron")
    assert [d["name"] for d in remote_app["deployments"]] == [d["name"] for d in local_app["deployments"]]


@pytest.mark.parametrize("folder", FOLDERS)
def test_neuron_workers_advertise_their_cores(folder):
    [service] = rayservices(folder)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    neuron_groups = [g for g in cluster["workerGroupSpecs"]
                     if "aws.amazon.com/neuroncore" in g["template"]["spec"]["containers"][0]["resources"]["requests"]]
    assert len(neuron_groups) == 1 and neuron_groups[0]["minReplicas"] >= 2  # one lost node leaves capacity
    for group in neuron_groups:
        [container] = group["template"]["spec"]["containers"]
        requests, limits = container["resources"]["requests"], container["resources"]["limits"]
        assert requests["aws.amazon.com/neuroncore"] == limits["aws.amazon.com/neuroncore"]
        advertised = json.loads(json.loads(group["rayStartParams"]["resources"]))
        assert advertised["neuron_cores"] == int(requests["aws.amazon.com/neuroncore"])
    # Karpenter fills a weighted on-demand pool with room for the minimum workers before the spot-first one.
    selector = neuron_groups[0]["template"]["spec"]["nodeSelector"]
    pools = [d for d in documents(folder) if d["kind"] == "NodePool"
             and d["spec"]["template"]["metadata"]["labels"].get("workload") == selector["workload"]]
    on_demand = [p for p in pools if p["spec"].get("weight", 0) == max(q["spec"].get("weight", 0) for q in pools)]
    [requirement] = [r for r in on_demand[0]["spec"]["template"]["spec"]["requirements"] if r["key"] == "karpenter.sh/capacity-type"]
    assert len(pools) == 2 and len(on_demand) == 1 and requirement["values"] == ["on-demand"]
    node_cpus = 4  # inf1.xlarge and inf2.xlarge
    assert int(on_demand[0]["spec"]["limits"]["cpu"]) >= node_cpus * neuron_groups[0]["minReplicas"]
    deployments = {d["name"]: d for d in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["deployments"]}
    model = deployments["SentimentModel"]
    assert model["ray_actor_options"]["resources"]["neuron_cores"] >= 1
    # @serve.batch refuses a call with more texts than its max_batch_size: every Ingress call must fit.
    assert model["user_config"]["max_batch_size"] >= deployments["Ingress"]["user_config"]["max_texts"]


@pytest.mark.parametrize("folder", FOLDERS)
def test_cluster_runs_in_ray_serve_throughput_mode(folder):
    [service] = rayservices(folder)
    cluster = service["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    for group in groups:
        env = {e["name"]: e["value"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env["RAY_SERVE_THROUGHPUT_OPTIMIZED"] == "1" and env["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
        # A lost Ingress replica's unanswered requests are replayed on another (POST /analyze is idempotent).
        assert "empty-response" in env["RAY_SERVE_HAPROXY_RETRY_ON"].split() and int(env["RAY_SERVE_HAPROXY_RETRIES"]) >= 1


@pytest.mark.parametrize("folder", FOLDERS)
def test_an_ingress_replica_can_be_lost_without_an_outage(folder):
    [service] = rayservices(folder)
    app = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]
    [ingress] = [d for d in app["deployments"] if d["name"] == "Ingress"]
    assert ingress["autoscaling_config"]["min_replicas"] >= 2


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_head_and_nodes_survive_node_churn(folder):
    docs = documents(folder)
    [service] = [d for d in docs if d["kind"] == "RayService"]
    head = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]
    assert head["metadata"]["annotations"]["karpenter.sh/do-not-disrupt"] == "true"
    for node_class in (d for d in docs if d["kind"] == "EC2NodeClass"):
        aliases = [t["alias"] for t in node_class["spec"]["amiSelectorTerms"]]
        assert aliases and all(a.startswith("al2023@v") for a in aliases), aliases  # pinned, never @latest


def test_rayjob_reads_its_data_and_config_from_absolute_places():
    [job] = [d for d in documents("kuberay/") if d["kind"] == "RayJob"]
    entrypoint = job["spec"]["entrypoint"].split()
    config = entrypoint[entrypoint.index("--config") + 1]
    assert config.startswith("/opt/app/") and (REPO / config.removeprefix("/opt/app/")).is_file()
    overrides = dict(arg.split("=", 1) for arg in entrypoint if "=" in arg)
    assert overrides["data.source"].startswith("s3://") and overrides["storage_path"].startswith("s3://")
    assert job["spec"]["ttlSecondsAfterFinished"] <= 300


def load_render():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render", REPO / "kuberay" / "render.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    return render


def test_a_value_that_looks_like_a_placeholder_is_kept():
    """One pass: the bucket `models-us-west-2` with region eu-west-1 stays `models-us-west-2`."""
    render = load_render()
    values = {"account": "111122223333", "region": "eu-west-1", "cluster": "c", "bucket": "models-us-west-2",
              "ami_alias": "al2023@v20260828"}
    text = "s3://sentiment-models-123456789012/x 123456789012.dkr.ecr.us-west-2.amazonaws.com sentiment-cluster"
    assert render.render_text(text, values) == "s3://models-us-west-2/x 111122223333.dkr.ecr.eu-west-1.amazonaws.com c"


def test_render_fills_in_every_example_value(tmp_path):
    render = load_render()
    assert render.main(["--account", "111122223333", "--region", "eu-west-1", "--cluster", "prod-eks",
                        "--bucket", "acme-sentiment", "--out", str(tmp_path / "out")]) == 0
    rendered = {p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*.yaml")}
    assert rendered == {p.relative_to(REPO / "kuberay") for p in (REPO / "kuberay").rglob("*.yaml")}
    text = "".join(p.read_text() for p in (tmp_path / "out").rglob("*.yaml"))
    for example in render.PLACEHOLDERS:
        if example != "al2023@v20260828":
            assert example not in text
    assert "s3://acme-sentiment/compile-cache" in text and "111122223333.dkr.ecr.eu-west-1.amazonaws.com" in text
    assert "arn:aws:iam::111122223333:role/sentiment-ray" in text and "karpenter.sh/discovery: prod-eks" in text
    assert render.main(["--account", "1234", "--region", "eu-west-1", "--cluster", "c", "--bucket", "b",
                        "--out", str(tmp_path / "bad")]) == 2
    result = subprocess.run(["bash", str(tool("run.sh")), str(tmp_path / "out")], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0 and " 0 problems" in result.stdout, result.stdout + result.stderr


def test_rendered_pods_follow_kuberay():
    """The pods the images tier starts (tests/test_images.py), as KubeRay v1.7 renders them from the manifest."""
    [doc] = rayservices("kuberay/")
    pods = {p.group: p for p in render_rayservice(doc, "t" * 64)}
    head, cpu, inf2 = pods["headgroup"], pods["cpu"], pods["inf2"]
    assert head.env["KUBERAY_GEN_RAY_START_CMD"] == (
        "ray start --head --block --dashboard-agent-listen-port=52365 --dashboard-host=0.0.0.0 "
        "--memory=8589934592 --metrics-export-port=8080 --no-monitor --num-cpus=0")
    assert re.search(r"--address=sentiment-head-svc\.sentiment\.svc\.cluster\.local:6379 ", inf2.args)
    assert '--resources="{\\"neuron_cores\\": 2}"' in inf2.args and "--num-cpus=3" in inf2.args
    assert '--resources="{\\"serve_ingress\\": 1}"' in cpu.args
    assert inf2.args.startswith(" [ -z ") and "serve_app.neuron_cores" in inf2.args.split(" && ")[0]
    for pod in pods.values():
        assert pod.env["RAY_AUTH_MODE"] == "token" and pod.env["RAY_AUTH_TOKEN"] == "t" * 64
        assert pod.env["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and pod.read_only_root and pod.user == 10001
        assert "/tmp" in pod.tmpfs and pod.liveness.path == "/api/healthz"
    assert "/tmp/ray" in head.tmpfs and head.readiness.command is None
    assert cpu.readiness.command and "8000/-/healthz" in cpu.readiness.command[-1]
    assert cpu.init_args and "ray health-check --address sentiment-head-svc" in cpu.init_args


def test_kuberay_maps_the_neuroncore_limit_when_rayStartParams_do_not():
    [doc] = rayservices("kuberay/")
    group = next(g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] == "inf2")
    del group["rayStartParams"]["resources"]
    inf2 = {p.group: p for p in render_rayservice(doc, "t")}["inf2"]
    assert "--resources='{\"neuron_cores\": 2}'" in inf2.args
