"""Evaluate a chain of edge nodes with a cloud tail (``build --nodes N --cloud-device D``).

The bundle's test split is traced once through every segment (every exit's output for every
row, :meth:`~edgelesspart.runtime.executor.ProgressiveExecutor.trace`). At each threshold a row
answers at the first exit, in model order, whose calibrated confidence reaches it: an exit of
an edge stage keeps the row on the chain; a row no edge exit answered is offloaded from the
last edge stage and answers at the first cloud exit that reaches it, else at the final
classifier. Reported per threshold: accuracy, the exit mix per edge stage, the offload share,
and the cloud cost per request and per million requests (one invocation per offload at the
plan's cloud-part duration, the plan's expected cold start billed as the tier's table says).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError


def has_cloud_tail(manifest: Any) -> bool:
    """Whether the bundle's plan marks a stage ``tier: cloud`` (an N-node chain + cloud)."""
    return any(s.options.get("tier") == "cloud" for s in manifest.plan.stages)


def evaluate_chain_cloud(
    bundle_path: str | Path,
    *,
    thresholds: Sequence[float] | None = None,
    limit: int | None = None,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Accuracy, edge-stage exit mix, offload share and cost per threshold (JSON-ready).

    Raises:
        BundleError: the bundle has no cloud tail, or its plan records no tail costs.
    """
    from edgelesspart.evaluation.pipeline import load_eval_data
    from edgelesspart.profiling.devices import pricing_provider
    from edgelesspart.profiling.pricing import cost_per_invocation, load_prices
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.confidence import scorer_for, serving_threshold
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(bundle_path, pool_size=1)
    manifest = bundle.manifest
    if not has_cloud_tail(manifest):
        raise BundleError(
            f"{bundle_path} has no cloud tail (no plan stage marked tier: cloud); build one with "
            "`edgelesspart build --nodes N --cloud-device DEVICE`."
        )
    tail = manifest.plan.parameters.get("cloud_tail")
    if not isinstance(tail, dict):
        raise BundleError(f"{bundle_path}: plan.parameters has no cloud_tail costs; rebuild it.")
    data = load_eval_data(manifest)
    x, y = data.x_test, np.asarray(data.y_test)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    trace = ProgressiveExecutor(bundle, manifest.stage_names[0]).trace(x, batch_size=batch_size)
    scorer = scorer_for(manifest.serving)
    edge = {s.name for s in manifest.plan.stages if s.options.get("tier") != "cloud"}
    order = list(trace.exits)  # model order, the final classifier last
    labels, confidence = {}, {}
    for name in order:
        calibrated = scorer.calibrate(name, trace.probs[name])
        labels[name] = calibrated.argmax(axis=1)
        confidence[name] = scorer.confidence(calibrated)
    table = load_prices(pricing_provider(str(tail.get("provider") or "gcf")))
    memory = int(tail.get("memory_mb") or 2048)
    cold_prob = float(tail.get("cold_start_prob", 0.0))
    price = cost_per_invocation(table, float(tail["cloud_ms"]), memory) + cold_prob * (
        cost_per_invocation(table, 0.0, memory, init_ms=float(tail.get("cold_start_ms", 0.0)))
        - cost_per_invocation(table, 0.0, memory)
    )
    default = serving_threshold(manifest.serving)
    rows = []
    for t in sorted({float(v) for v in (thresholds or ())} | {default}):
        chosen = _first_exit(order, confidence, t)
        predicted = np.array([labels[name][i] for i, name in enumerate(chosen)])
        stage_of = [trace.exit_stage[name] for name in chosen]
        offloaded = np.array([s not in edge for s in stage_of])
        share = float(offloaded.mean()) if len(chosen) else 0.0
        mix = Counter(name for name, s in zip(chosen, stage_of) if s in edge)
        per_stage = Counter(s for s in stage_of if s in edge)
        rows.append({
            "threshold": t,
            "served": t == default,
            "accuracy": float(np.mean(predicted == y)),
            "edge_exit_mix": {k: int(v) for k, v in sorted(mix.items())},
            "edge_stage_share": {k: int(v) / len(chosen) for k, v in sorted(per_stage.items())},
            "offload_share": share,
            "cloud_exit_mix": {k: int(v) for k, v in sorted(
                Counter(n for n, s in zip(chosen, stage_of) if s not in edge).items())},
            "cost_per_request": share * price,
            "cost_per_million": share * price * 1e6,
        })  # fmt: skip
    return {
        "bundle": str(bundle_path),
        "bundle_id": manifest.bundle_id,
        "samples": int(len(y)),
        "edge_stages": sorted(edge),
        "handoff": tail.get("handoff"),
        "provider": table.name,
        "memory_mb": memory,
        "price_per_offload": price,
        "plan_latency_ms_per_offload": tail.get("latency_ms"),
        "rows": rows,
    }


def _first_exit(order: list[str], confidence: dict[str, np.ndarray], t: float) -> list[str]:
    """Per row, the first exit whose confidence reaches ``t`` (the final classifier else)."""
    n = len(next(iter(confidence.values())))
    chosen = [order[-1]] * n
    open_rows = np.ones(n, dtype=bool)
    for name in order[:-1]:
        hit = open_rows & (confidence[name] >= t)
        for i in np.flatnonzero(hit):
            chosen[i] = name
        open_rows &= ~hit
    return chosen


def format_chain_cloud(report: dict[str, Any]) -> str:
    """The table ``edgelesspart evaluate`` prints for a chain with a cloud tail."""
    lines = [
        f"chain + cloud tail {report['bundle_id']}: {report['samples']} test samples, edge "
        f"stages {', '.join(report['edge_stages'])}, hand-off at {report['handoff']}, "
        f"${report['price_per_offload'] * 1e6:.3g} per 1M offloads ({report['provider']}, "
        f"{report['memory_mb']} MB)",
        f"{'threshold':>9}  {'accuracy':>8}  {'offload':>7}  {'$/1M req':>9}  edge exit mix",
    ]
    for row in report["rows"]:
        mix = ", ".join(f"{k} {v}" for k, v in row["edge_exit_mix"].items()) or "-"
        mark = " *" if row["served"] else ""
        lines.append(
            f"{row['threshold']:>9.3g}  {row['accuracy']:>8.1%}  {row['offload_share']:>7.1%}  "
            f"{row['cost_per_million']:>9.3g}  {mix}{mark}"
        )
    lines.append("* the bundle's serving threshold")
    return "\n".join(lines)
