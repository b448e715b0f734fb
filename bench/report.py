"""bench.run's report: each server's best pass per level, the markdown table, issue 18's target ratios,
the per-pass (paired) ratios to the peers and the plot."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from bench.servers import Server

#: The peer frameworks bench.run measures beside this service.
PEERS = ("infinity", "litserve")


def summarize(rows: list[dict], servers: list[Server], levels: list[int]) -> dict:
    """Per server and level: the best pass (req/s; its p50 and p99), the range over passes and the errors."""
    summary = {}
    for server in servers:
        for c in levels:
            runs = [r for r in rows if r["server"] == server.name and r["connections"] == c]
            if not runs:
                continue
            best = max(runs, key=lambda r: r["rps"])
            summary[(server.name, c)] = {
                "rps": best["rps"], "p50_ms": best["p50_ms"], "p99_ms": best["p99_ms"],
                "rps_range": (min(r["rps"] for r in runs), max(r["rps"] for r in runs)),
                "p50_range": (min(r["p50_ms"] for r in runs), max(r["p50_ms"] for r in runs)),
                "errors": sum(r["errors"] for r in runs),
            }
    return summary


def render_table(summary: dict, servers: list[Server], levels: list[int]) -> str:
    header = "| server | " + " | ".join(f"c={c} req/s (p50 ms)" for c in levels) + " | errors |"
    lines = [header, "|---|" + "---:|" * len(levels) + "---:|"]
    for server in servers:
        cells, errors = [], 0
        for c in levels:
            cell = summary.get((server.name, c))
            if cell is None:
                cells.append("-")
                continue
            low, high = cell["rps_range"]
            spread = f" [{low:.0f}-{high:.0f}]" if high - low >= 0.5 else ""
            cells.append(f"{cell['rps']:.0f}{spread} ({cell['p50_ms']:.1f})")
            errors += cell["errors"]
        lines.append(f"| {server.label} | " + " | ".join(cells) + f" | {errors} |")
    return "\n".join(lines)


def render_targets(summary: dict, levels: list[int], ours: str = "serve") -> str:
    """Issue 18's targets: >= 1.1x the best peer at 8, 32, 128; p50 at 1 <= the best peer's; seed ratio."""
    lines = []
    peers = sorted({name for name, _ in summary} & set(PEERS))
    for c in levels:
        mine = summary.get((ours, c))
        rivals = [(summary[(p, c)]["rps"], p) for p in peers if (p, c) in summary]
        if not mine or not rivals:
            continue
        rate, peer = max(rivals)
        line = f"c={c}: {ours} {mine['rps']:.0f} req/s = {mine['rps'] / rate:.2f}x the best peer ({peer} {rate:.0f})"
        if c == 1:
            p50, p50_peer = min((summary[(p, c)]["p50_ms"], p) for p in peers if (p, c) in summary)
            line += f"; p50 {mine['p50_ms']:.1f} ms vs the best peer's {p50:.1f} ({p50_peer})"
        if ("seed", c) in summary:
            line += f"; {mine['rps'] / summary[('seed', c)]['rps']:.1f}x the seed"
        lines.append(line)
    return "\n".join(lines)


def paired_ratios(rows: list[dict], ours: str = "serve") -> dict[tuple[str, int], list[float]]:
    """Per peer and level: our req/s over the peer's, one ratio per pass. Within a pass the two servers run
    back to back, so a ratio compares them in about the same state of a shared machine; across passes it
    varies far less than either server's own req/s."""
    rates = {(r["server"], r["connections"], r["run"]): r["rps"] for r in rows}
    ratios: dict[tuple[str, int], list[float]] = {}
    for (server, c, run), rate in sorted(rates.items()):
        mine = rates.get((ours, c, run))
        if server in PEERS and mine is not None and rate > 0:
            ratios.setdefault((server, c), []).append(mine / rate)
    return ratios


def render_paired(rows: list[dict], ours: str = "serve") -> str:
    """The paired ratios' median and range per peer and level (meaningful from 3 passes on)."""
    lines = []
    for (peer, c), values in sorted(paired_ratios(rows, ours).items()):
        lines.append(f"c={c}: {ours} / {peer} per pass {statistics.median(values):.2f}x median "
                     f"[{min(values):.2f}-{max(values):.2f}] over {len(values)} passes")
    return "\n".join(lines)


def plot(summary: dict, servers: list[Server], levels: list[int], ceiling: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for server, style in zip(servers, ("o--", "s-", "d-.", "^-", "v:", "x-")):
        pts = [(c, summary[(server.name, c)]) for c in levels if (server.name, c) in summary]
        left.plot([c for c, _ in pts], [p["rps"] for _, p in pts], style, label=server.label)
        right.plot([c for c, _ in pts], [p["p99_ms"] for _, p in pts], style, label=server.label)
    left.axhline(ceiling, color="grey", linestyle=":", label="in-process ceiling")
    for axis, title in ((left, "throughput, best pass (req/s)"), (right, "p99 latency, best pass (ms)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent connections")
        axis.set_title(title)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    right.set_yscale("log")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
