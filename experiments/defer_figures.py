"""Redraw DEFER's throughput-vs-nodes and energy-vs-nodes plots from our P8 measurements.

Reads ``results/bench/p8.json`` (written by ``experiments/bench_p8_pipeline.py``) and draws:

* ``defer-throughput.png``: measured steady-state throughput (inputs/s) against the number of
  emulated RPi4 nodes, one line per link codec, the planner's prediction dashed, and DEFER's
  reported 8-node gain (1.53x its single device) as a marker scaled to our 1-node figure;
* ``defer-energy.png``: modelled energy per inference *per node* and *for the whole chain*
  against nodes (RPi4 3.1 W idle / 6.1 W busy; a model, not a measurement), with DEFER's
  reported -63 % per node at 8 nodes as a marker.

Runs flagged host-bound (the 2-core host, not the emulated nodes, set the pace) are drawn with
hollow markers. Writes into ``--out-dir`` (default ``results/figures``); ``--docs`` also copies
them to ``docs/img/``. Usage::

    .venv/bin/python experiments/defer_figures.py [--p8 results/bench/p8.json] [--docs]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFER_SPEEDUP_8 = 1.53
DEFER_ENERGY_PER_NODE_8 = -0.63


def _series(runs: dict[str, Any], key: Any) -> tuple[list[int], list[float], list[bool]]:
    nodes = sorted(int(n) for n in runs)
    values = [key(runs[str(n)]) for n in nodes]
    bound = [bool(runs[str(n)].get("host_bound")) for n in nodes]
    return nodes, values, bound


def _baseline(data: dict[str, Any]) -> dict[str, Any]:
    """P8's 1-node baseline (best valid 1-node run); older files: the first series' 1-node."""
    base = data["details"].get("baseline")
    if base:
        return base
    first = next(iter(data["details"]["runs"].values())).get("1", {})
    if not first:
        return {}
    return {
        "throughput_per_s": first["throughput_per_s"],
        "energy_j_per_item": first["energy"]["mean_node_j_per_item"],
    }


def _plot_points(ax: Any, nodes: list[int], values: list[float], bound: list[bool], **kw) -> None:
    line = ax.plot(nodes, values, "-", **kw)[0]
    for n, v, b in zip(nodes, values, bound):
        face = "none" if b else line.get_color()
        ax.plot([n], [v], "o", color=line.get_color(), markerfacecolor=face)


def throughput_figure(data: dict[str, Any], out: Path) -> Path:
    """Throughput vs nodes per codec, predicted dashed, DEFER's 8-node gain as a marker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["details"]["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for codec, by_n in runs.items():
        nodes, tput, bound = _series(by_n, lambda r: r["throughput_per_s"])
        _plot_points(ax, nodes, tput, bound, label=f"{codec} (measured)")
        _, pred, _ = _series(by_n, lambda r: r["plan"]["predicted_per_s"])
        ax.plot(nodes, pred, "--", color=ax.lines[-1].get_color(), alpha=0.5)
    base = _baseline(data).get("throughput_per_s")
    if base:
        ax.plot([8], [base * DEFER_SPEEDUP_8], "k*", markersize=12, label="DEFER 8 nodes (1.53x)")
    ax.set_xlabel("emulated RPi4 nodes (hollow marker: host-bound run)")
    ax.set_ylabel("throughput (inputs/s)")
    ax.set_title("ResNet50 224x224 chain, 100 Mbit/s link (dashed: planner)")
    ax.set_xticks(sorted({int(n) for r in runs.values() for n in r}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "defer-throughput.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def energy_figure(data: dict[str, Any], out: Path) -> Path:
    """Modelled energy per inference per node and per chain vs nodes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = data["details"]["runs"]
    fig, ax = plt.subplots(figsize=(6, 4))
    for codec, by_n in runs.items():
        nodes, per_node, bound = _series(by_n, lambda r: r["energy"]["mean_node_j_per_item"])
        _plot_points(ax, nodes, per_node, bound, label=f"{codec}: per node")
        _, chain, _ = _series(by_n, lambda r: r["energy"]["chain_j_per_item"])
        ax.plot(nodes, chain, ":", color=ax.lines[-1].get_color(), label=f"{codec}: whole chain")
    one = _baseline(data).get("energy_j_per_item")
    if one:
        ax.plot(
            [8],
            [one * (1 + DEFER_ENERGY_PER_NODE_8)],
            "k*",
            markersize=12,
            label="DEFER 8 nodes (-63 % per node)",
        )
    ax.set_xlabel("emulated RPi4 nodes (hollow marker: host-bound run)")
    ax.set_ylabel("energy per inference (J, model)")
    ax.set_title("RPi4 power model 3.1 W idle / 6.1 W busy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "defer-energy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    """Draw both figures; print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--p8", type=Path, default=ROOT / "results" / "bench" / "p8.json")
    parser.add_argument("--out-dir", type=Path, default=ROOT / "results" / "figures")
    parser.add_argument("--docs", action="store_true", help="also copy to docs/img/")
    args = parser.parse_args(argv)
    if not args.p8.is_file():
        print(f"{args.p8} not found; run experiments/bench_p8_pipeline.py first")
        return 1
    data = json.loads(args.p8.read_text())
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for path in (throughput_figure(data, args.out_dir), energy_figure(data, args.out_dir)):
        print(f"wrote {path}")
        if args.docs:
            shutil.copy(path, ROOT / "docs" / "img" / path.name)
            print(f"copied to docs/img/{path.name}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
