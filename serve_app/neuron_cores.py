"""NEURON_RT_VISIBLE_CORES in the form Ray reads: a comma-separated list.

The Neuron runtime takes ranges too ("0-1", "0-3,6"), but Ray 2.60 splits the variable on commas only
(ray/_private/accelerators/neuron.py), so a range set in the pod makes `ray start` with `neuron_cores` refuse
to start ("... NEURON_RT_VISIBLE_CORES contains ['0-1']"). The Inferentia worker pods run this before
`ray start` (the container's `args` in kuberay/; KubeRay runs them ahead of its generated command):

    python -m serve_app.neuron_cores        # prints NEURON_RT_VISIBLE_CORES as a list ("0-1" -> "0,1")

Only the standard library: it runs before anything else in the pod.
"""

from __future__ import annotations

import os
import sys

VARIABLE = "NEURON_RT_VISIBLE_CORES"


def as_list(spec: str) -> str:
    """'0-1' -> '0,1'; '0-1,4' -> '0,1,4'; a list stays as it is. Raises ValueError on anything else."""
    cores: list[int] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        low, dash, high = part.partition("-")
        if not low.isdigit() or (dash and not high.isdigit()):
            raise ValueError(f"{VARIABLE}={spec!r}: {part!r} is neither a core id nor a range of them")
        first, last = int(low), int(high) if dash else int(low)
        if last < first:
            raise ValueError(f"{VARIABLE}={spec!r}: range {part!r} runs backwards")
        cores.extend(range(first, last + 1))
    return ",".join(str(c) for c in cores)


def main() -> int:
    try:
        print(as_list(os.environ.get(VARIABLE, "")))
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
