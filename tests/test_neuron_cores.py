"""NEURON_RT_VISIBLE_CORES normalised to the list form Ray parses (serve_app/neuron_cores.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from serve_app.neuron_cores import as_list
from tests.conftest import REPO


@pytest.mark.parametrize("spec, expected", [("0-1", "0,1"), ("0,1", "0,1"), ("0-3,6", "0,1,2,3,6"), ("2", "2"),
                                            ("0-1,", "0,1"), ("", "")])
def test_ranges_become_lists(spec, expected):
    assert as_list(spec) == expected


@pytest.mark.parametrize("spec", ["a", "1-", "-1", "3-1", "0..1"])
def test_malformed_values_are_refused(spec):
    with pytest.raises(ValueError, match="NEURON_RT_VISIBLE_CORES"):
        as_list(spec)


@pytest.mark.parametrize("manifest", ["kuberay/10-rayservice.yaml", "kuberay/inf1/10-rayservice.yaml"])
def test_the_pod_command_rewrites_the_variable(manifest):
    """What the Inferentia pods' container args run before KubeRay's `ray start`, read from the manifest."""
    [doc] = [d for d in yaml.safe_load_all((REPO / manifest).read_text()) if d and d["kind"] == "RayService"]
    [neuron_group] = [g for g in doc["spec"]["rayClusterConfig"]["workerGroupSpecs"] if g["groupName"] != "cpu"]
    [line] = neuron_group["template"]["spec"]["containers"][0]["args"]
    path = f"{os.path.dirname(sys.executable)}:{os.environ['PATH']}"
    ranged = {**os.environ, "PATH": path, "NEURON_RT_VISIBLE_CORES": "0-3"}
    out = subprocess.run(["bash", "-c", f"{line} && echo $NEURON_RT_VISIBLE_CORES"], env=ranged, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "0,1,2,3", out.stderr
    unset = {k: v for k, v in ranged.items() if k != "NEURON_RT_VISIBLE_CORES"}
    out = subprocess.run(["bash", "-c", f"{line} && echo \"[${{NEURON_RT_VISIBLE_CORES-unset}}]\""], env=unset,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[unset]", out.stderr
