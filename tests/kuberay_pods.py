"""The pods the KubeRay operator (v1.7) creates for a RayService, rendered from the manifest as data.

Source: ray-project/kuberay `ray-operator/controllers/ray/common/pod.go` (DefaultHeadPodTemplate,
DefaultWorkerPodTemplate, BuildPod, setMissingRayStartParams, generateRayStartCommand, setContainerEnvVars,
configureTokenAuth, initLivenessAndReadinessProbe) and `utils/constant.go`, read with the search tool:
- `ray start` gets the group's rayStartParams plus `block`, `dashboard-agent-listen-port=52365`,
  `metrics-export-port` (8080 unless set); the head `dashboard-host=0.0.0.0` and, with in-tree autoscaling,
  `no-monitor`; workers `address=<head FQDN>:6379`. `num-cpus` and `memory` come from the container's limits
  unless set; `aws.amazon.com/neuroncore` maps to `neuron_cores` unless `resources` already names it. Flags
  are sorted; `true` becomes a bare flag. The container runs `/bin/bash -c -- "ulimit -n ...; ray start ..."`,
  after the container's own command and args when it has them (`<them> && ulimit ...; ray start ...`).
- env: the template's own, then RAY_CLUSTER_NAME, RAY_CLOUD_INSTANCE_ID, RAY_NODE_TYPE_NAME,
  KUBERAY_GEN_RAY_START_CMD, RAY_PORT, (RayService) RAY_timeout_ms_task_wait_for_death_info=0,
  RAY_gcs_server_request_timeout_seconds=5, RAY_SERVE_KV_TIMEOUT_S=5, RAY_ADDRESS, usage-stats tags,
  (workers) FQ_RAY_IP / RAY_IP, and with `authOptions.mode: token` RAY_AUTH_MODE=token and RAY_AUTH_TOKEN from
  the Secret's `auth_token` key (also on the workers' `wait-gcs-ready` init container).
- volumes: /dev/shm as a memory emptyDir sized to the memory limit; with in-tree autoscaling the head's
  /tmp/ray is an emptyDir shared with the autoscaler sidecar.
- probes for Ray >= 2.53 (one HTTP health endpoint): liveness and readiness `GET :52365/api/healthz` (Ray's
  dashboard agent, ray/dashboard/modules/reporter/healthz_agent.py); a RayService worker's readiness is instead
  `bash -c "wget ... :52365/api/local_raylet_healthz | grep success && wget ... :8000/-/healthz | grep success"`
  (failureThreshold 1), so a worker leaves the Serve service when its proxy is not healthy.
What is left out: the autoscaler sidecar (it needs a Kubernetes API server) and the head's serve-label
reconciliation, which the operator does from outside the pod.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field

AGENT_PORT = 52365
GCS_PORT = 6379
SERVE_PORT = 8000
WGET = "wget --tries 1 -T {timeout} -q -O- http://localhost:{port}/{path} | grep success"
UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9}


def quantity(value) -> float:
    """A Kubernetes resource quantity as a number (cpu `250m` -> 0.25, memory `8Gi` -> bytes)."""
    text = str(value)
    if text.endswith("m"):
        return float(text[:-1]) / 1000
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    if not match or (match.group(2) and match.group(2) not in UNITS):
        raise ValueError(f"not a quantity: {value!r}")
    return float(match.group(1)) * UNITS.get(match.group(2), 1)


@dataclass(frozen=True)
class Probe:
    """Either an HTTP GET on the pod's IP (`port`, `path`) or a command run in the container (`command`)."""
    port: int | None = None
    path: str | None = None
    command: tuple[str, ...] | None = None
    failure_threshold: int = 10


@dataclass
class PodPlan:
    name: str
    group: str                      # "headgroup" or the worker group's name
    image: str
    args: str                       # what `/bin/bash -c --` runs
    env: dict[str, str]
    user: int
    group_id: int
    fs_group: int | None
    read_only_root: bool
    tmpfs: dict[str, int]           # mount path -> size in bytes (emptyDirs)
    shm_bytes: int
    cpu_limit: float
    memory_limit: int
    ports: dict[str, int]
    liveness: Probe
    readiness: Probe
    init_args: str | None = None    # the workers' wait-gcs-ready init container
    drop_capabilities: bool = True
    no_new_privileges: bool = True
    ray_start_params: dict[str, str] = field(default_factory=dict)


def _flags(params: dict[str, str]) -> str:
    parts = []
    for key in sorted(params):
        value = str(params[key])
        if value.lower() in ("true", "false") and key not in ("log-color", "include-dashboard"):
            if value.lower() == "true":
                parts.append(f"--{key}")
        else:
            parts.append(f"--{key}={value}")
    return " ".join(parts)


def advertised_resources(params: dict) -> dict:
    """rayStartParams' `resources` as a dict (KubeRay's quoted-JSON form, '"{\\"neuron_cores\\": 2}"', too)."""
    raw = params.get("resources")
    if not raw:
        return {}
    if raw.startswith("'"):   # the form KubeRay writes itself when it adds neuron_cores
        return json.loads(raw.strip("'"))
    value = json.loads(raw)
    return json.loads(value) if isinstance(value, str) else value


def ray_start_params(params: dict, container: dict, head: bool, autoscaling: bool, head_fqdn: str) -> dict[str, str]:
    params = {k: str(v) for k, v in params.items()}
    if head:
        params.setdefault("dashboard-host", "0.0.0.0")
        if autoscaling:
            params["no-monitor"] = "true"
    else:
        params.setdefault("address", f"{head_fqdn}:{GCS_PORT}")
    params.setdefault("metrics-export-port", "8080")
    params["block"] = "true"
    params.setdefault("dashboard-agent-listen-port", str(AGENT_PORT))
    limits = container.get("resources", {}).get("limits", {})
    if "num-cpus" not in params and "cpu" in limits:
        params["num-cpus"] = str(math.ceil(quantity(limits["cpu"])))
    if "memory" not in params and "memory" in limits:
        params["memory"] = str(int(quantity(limits["memory"])))
    cores = limits.get("aws.amazon.com/neuroncore")
    if cores and "neuron_cores" not in advertised_resources(params):
        amount = quantity(cores)
        amount = int(amount) if amount.is_integer() else amount   # Go's json.Marshal writes 2.0 as 2
        params["resources"] = "'" + json.dumps({**advertised_resources(params), "neuron_cores": amount}) + "'"
    return params


def _probes(head: bool) -> tuple[Probe, Probe]:
    """A RayService's probes (the only kind rendered here): a worker's readiness also asks its Serve proxy."""
    http = Probe(port=AGENT_PORT, path="/api/healthz")
    if head:
        return http, http
    raylet = WGET.format(timeout=1, port=AGENT_PORT, path="api/local_raylet_healthz")
    proxy = WGET.format(timeout=10, port=SERVE_PORT, path="-/healthz")
    return http, Probe(command=("bash", "-c", f"{raylet} && {proxy}"), failure_threshold=1)


def render_pod(cluster: dict, spec: dict, *, cluster_name: str, namespace: str, token: str, head: bool) -> PodPlan:
    """One pod of `cluster` (a RayService's rayClusterConfig) for the head group or one worker group spec."""
    head_fqdn = f"{cluster_name}-head-svc.{namespace}.svc.cluster.local"
    autoscaling = bool(cluster.get("enableInTreeAutoscaling"))
    template = spec["template"]["spec"]
    container = template["containers"][0]
    group = "headgroup" if head else spec["groupName"]
    params = ray_start_params(spec.get("rayStartParams", {}), container, head, autoscaling, head_fqdn)
    start = f"ray start {'--head ' if head else ''}{_flags(params)}"
    generated = f"ulimit -n ${{RAY_START_ULIMIT_OPEN_FILES:-65536}}; {start}"
    # The container's own command and args run first, in the same shell (KubeRay: "cmd && generatedCmd").
    user_command = "".join(f" {part} " for part in container.get("command", []) + container.get("args", []))
    name = f"{cluster_name}-{'head' if head else group + '-worker'}"
    env = {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}
    address = "127.0.0.1" if head else head_fqdn
    env.update({
        "RAY_CLUSTER_NAME": cluster_name, "RAY_CLOUD_INSTANCE_ID": name, "RAY_NODE_TYPE_NAME": group,
        "KUBERAY_GEN_RAY_START_CMD": start, "RAY_PORT": str(GCS_PORT),
        "RAY_timeout_ms_task_wait_for_death_info": "0", "RAY_gcs_server_request_timeout_seconds": "5",
        "RAY_SERVE_KV_TIMEOUT_S": "5", "RAY_ADDRESS": f"{address}:{GCS_PORT}",
        "RAY_USAGE_STATS_KUBERAY_IN_USE": "1", "RAY_DASHBOARD_ENABLE_K8S_DISK_USAGE": "1",
    })
    if not head:
        env.update({"FQ_RAY_IP": head_fqdn, "RAY_IP": f"{cluster_name}-head-svc"})
    if cluster.get("authOptions", {}).get("mode") == "token":
        env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token})
    pod_security = template.get("securityContext", {})
    container_security = container.get("securityContext", {})
    volumes = {v["name"]: v for v in template.get("volumes", [])}
    tmpfs = {}
    for mount in container.get("volumeMounts", []):
        empty_dir = volumes[mount["name"]].get("emptyDir")
        if empty_dir is None:
            raise ValueError(f"{name}: volume {mount['name']} is not an emptyDir")
        tmpfs[mount["mountPath"]] = int(quantity(empty_dir.get("sizeLimit", "1Gi")))
    if head and autoscaling:
        tmpfs.setdefault("/tmp/ray", tmpfs.get("/tmp", 2**30))
    limits = container.get("resources", {}).get("limits", {})
    liveness, readiness = _probes(head)
    init = None
    if not head:
        init = (f"SECONDS=0; while true; do if ray health-check --address {head_fqdn}:{GCS_PORT} > /dev/null 2>&1; "
                f"then echo 'GCS is ready.'; break; fi; echo \"$SECONDS seconds elapsed: Waiting for GCS to be ready.\"; "
                f"sleep 5; done")
    return PodPlan(
        name=name, group=group, image=container["image"],
        args=f"{user_command} && {generated}" if user_command else generated, env=env,
        user=int(container_security.get("runAsUser", pod_security.get("runAsUser", 0))),
        group_id=int(container_security.get("runAsGroup", pod_security.get("runAsGroup", 0))),
        fs_group=pod_security.get("fsGroup"),
        read_only_root=bool(container_security.get("readOnlyRootFilesystem")),
        tmpfs=tmpfs, shm_bytes=int(quantity(limits.get("memory", "1Gi"))),
        cpu_limit=quantity(limits.get("cpu", 1)), memory_limit=int(quantity(limits.get("memory", "1Gi"))),
        ports={p["name"]: p["containerPort"] for p in container.get("ports", [])},
        liveness=liveness, readiness=readiness, init_args=init,
        drop_capabilities="ALL" in container_security.get("capabilities", {}).get("drop", []),
        no_new_privileges=container_security.get("allowPrivilegeEscalation") is False,
        ray_start_params=params,
    )


def render_rayservice(doc: dict, token: str, cluster_name: str | None = None) -> list[PodPlan]:
    """The head and one pod of each worker group of a RayService manifest."""
    cluster = doc["spec"]["rayClusterConfig"]
    name = cluster_name or doc["metadata"]["name"]
    namespace = doc["metadata"]["namespace"]
    pods = [render_pod(cluster, cluster["headGroupSpec"], cluster_name=name, namespace=namespace, token=token, head=True)]
    for group in cluster.get("workerGroupSpecs", []):
        pods.append(render_pod(cluster, group, cluster_name=name, namespace=namespace, token=token, head=False))
    return pods
