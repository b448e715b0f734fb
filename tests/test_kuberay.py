"""kuberay/ manifests: offline validation against the real CRD and Kubernetes schemas, checkov, and
the RayService's serveConfigV2 serving the same application as serve_config.yaml."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml

from serve_app.config import parse_app_args
from tests.conftest import REPO

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
    assert differing <= {"backend", "model", "compile_cache_dir", "torch_threads", "buckets", "dtype"}, differing
    assert parse_app_args(remote_app["args"]).backend in ("neuronx", "neuron")
    assert [d["name"] for d in remote_app["deployments"]] == [d["name"] for d in local_app["deployments"]]


@pytest.mark.parametrize("folder", FOLDERS)
def test_neuron_workers_advertise_their_cores(folder):
    [service] = rayservices(folder)
    cluster = service["spec"]["rayClusterConfig"]
    assert cluster["enableInTreeAutoscaling"] is True
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    [group] = cluster["workerGroupSpecs"]
    [container] = group["template"]["spec"]["containers"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests["aws.amazon.com/neuroncore"] == limits["aws.amazon.com/neuroncore"]
    advertised = json.loads(json.loads(group["rayStartParams"]["resources"]))
    assert advertised["neuron_cores"] == int(requests["aws.amazon.com/neuroncore"])
    model = next(d for d in yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["deployments"]
                 if d["name"] == "SentimentModel")
    assert model["ray_actor_options"]["resources"]["neuron_cores"] >= 1
    assert model["max_ongoing_requests"] >= model["user_config"]["max_batch_size"]
