"""Figures of an evaluation against the threshold, laid out like the paper's Fig. 2/3.

A 2x2 panel figure: (a) latency, (b) memory, (c) cloud cost per 1M requests, (d) accuracy and
offload rate, all against the confidence threshold. :func:`plot_overlay` draws several
evaluations (e.g. linear vs pareto placement) on the same axes so they compare directly.
matplotlib is imported lazily with the Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgelesspart._lazy import optional
from edgelesspart.evaluation.report import Evaluation

MB = 2**20
_STYLES = ("-", "--", "-.", ":")


def _pyplot() -> Any:
    matplotlib = optional("matplotlib", "pip install 'edgelesspart[build]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _as_dict(evaluation: Evaluation | Mapping[str, Any]) -> Mapping[str, Any]:
    return evaluation.to_dict() if isinstance(evaluation, Evaluation) else evaluation


def _series(data: Mapping[str, Any], key: str, scale: float = 1.0) -> list[float]:
    return [float(r[key]) / scale for r in data["results"]]


def _draw(axes: Any, data: Mapping[str, Any], label: str, color: str) -> None:
    thr = _series(data, "threshold")
    (lat, mem), (cost, acc) = axes
    lat.plot(thr, _series(data, "latency_mean_ms"), "o-", color=color, label=f"{label} E[latency]")
    lat.plot(thr, _series(data, "latency_p95_ms"), "^--", color=color, alpha=0.6,
             label=f"{label} p95")
    edge = _series(data, "edge_memory_bytes", MB)
    expected = _series(data, "expected_memory_bytes", MB)
    mem.plot(thr, edge, "s-", color=color, label=f"{label} edge")
    mem.plot(thr, [e - d for e, d in zip(expected, edge)], "v--", color=color, alpha=0.7,
             label=f"{label} cloud x offload")
    cost.plot(thr, _series(data, "cloud_cost_per_million"), "o-", color=color, label=label)
    acc.plot(thr, _series(data, "accuracy"), "o-", color=color, label=f"{label} accuracy")
    acc.plot(thr, _series(data, "offload_rate"), "x:", color=color, label=f"{label} offload")
    base = data.get("baselines", {})
    for style, name in zip(_STYLES[1:], ("edge-only", "cloud-only", "split-no-exits")):
        if name in base:
            lat.axhline(base[name]["latency_mean_ms"], color=color, ls=style, lw=0.8, alpha=0.5,
                        label=f"{label} {name}")
    if "cloud-only" in base:
        cost.axhline(base["cloud-only"]["cloud_cost_per_million"], color=color, ls="--", lw=0.8,
                     alpha=0.5, label=f"{label} cloud-only")


def plot_overlay(
    evaluations: Mapping[str, Evaluation | Mapping[str, Any]],
    path: str | Path,
    *,
    title: str | None = None,
) -> Path:
    """Draw one or more evaluations on the same 2x2 axes and save a PNG.

    Args:
        evaluations: legend label -> :class:`Evaluation` or loaded ``evaluation.json`` dict.
        path: where to write the PNG.
        title: figure title (defaults to the bundle ids).

    Returns:
        The written path.
    """
    plt = _pyplot()
    fig, axes = plt.subplots(2, 2, figsize=(11, 8), sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    datas = {label: _as_dict(ev) for label, ev in evaluations.items()}
    for i, (label, data) in enumerate(datas.items()):
        _draw(axes, data, label, colors[i % len(colors)])
    (lat, mem), (cost, acc) = axes
    lat.set(title="(a) latency per request", ylabel="ms")
    mem.set(title="(b) memory", ylabel="MB")
    cost.set(title="(c) cloud cost", ylabel="USD per 1M requests", xlabel="confidence threshold")
    acc.set(title="(d) accuracy and offload rate", ylabel="fraction", xlabel="confidence threshold",
            ylim=(0.0, 1.05))
    for ax in (lat, mem, cost, acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title or " vs ".join(f"{k} ({d.get('bundle_id', '?')})" for k, d in datas.items()))
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_evaluation(
    evaluation: Evaluation | Mapping[str, Any], path: str | Path, *, label: str | None = None
) -> Path:
    """Save the 2x2 figure of one evaluation (labelled by its placement unless given)."""
    data = _as_dict(evaluation)
    return plot_overlay({label or str(data.get("placement", "plan")): data}, path)
