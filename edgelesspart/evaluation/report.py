"""The evaluation record: ``evaluation.json``, ``evaluation.csv`` and the terminal table."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelesspart.errors import BundleError
from edgelesspart.evaluation.baselines import BaselineResult
from edgelesspart.evaluation.compute import format_saving
from edgelesspart.evaluation.sweep import ThresholdResult

EVALUATION_VERSION = 1
JSON_NAME = "evaluation.json"
CSV_NAME = "evaluation.csv"
_CSV_METRICS = (
    "accuracy",
    "offload_rate",
    "latency_mean_ms",
    "latency_p50_ms",
    "latency_p95_ms",
    "edge_memory_bytes",
    "cloud_memory_bytes",
    "expected_memory_bytes",
    "cloud_cost_per_million",
)


@dataclass(frozen=True)
class Evaluation:
    """Everything ``edgelesspart evaluate`` measured on one bundle.

    Attributes:
        bundle_id: the evaluated bundle.
        placement: the plan's exit placement (``linear``/``pareto``), for overlays.
        split: the data split the results are on (``test``).
        settings: devices, factors, link, provider, memory, codec ratio, cold start, thresholds.
        pricing: the price table used (:meth:`PriceTable.to_dict`).
        results: one row per threshold.
        baselines: edge-only, cloud-only and split-no-exits.
        exit_accuracy: each exit's own accuracy on the split.
        full_accuracy: the final classifier's accuracy (the full model).
        calibration: temperatures and ECE before/after (empty when not calibrated).
        selection: the threshold picked under ``--max-accuracy-drop`` (``None`` when not asked).
    """

    bundle_id: str
    placement: str
    split: str
    settings: dict[str, Any]
    pricing: dict[str, Any]
    results: tuple[ThresholdResult, ...]
    baselines: dict[str, BaselineResult]
    exit_accuracy: dict[str, float]
    full_accuracy: float
    calibration: dict[str, Any] = field(default_factory=dict)
    selection: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready content of ``evaluation.json``."""
        return {
            "version": EVALUATION_VERSION,
            "bundle_id": self.bundle_id,
            "placement": self.placement,
            "split": self.split,
            "settings": dict(self.settings),
            "pricing": dict(self.pricing),
            "full_accuracy": self.full_accuracy,
            "exit_accuracy": dict(self.exit_accuracy),
            "results": [r.to_dict() for r in self.results],
            "baselines": {k: v.to_dict() for k, v in self.baselines.items()},
            "calibration": dict(self.calibration),
            "selection": self.selection,
        }


def write_outputs(evaluation: Evaluation, directory: str | Path) -> tuple[Path, Path]:
    """Write ``evaluation.json`` and ``evaluation.csv`` into ``directory``; return both paths."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / JSON_NAME
    json_path.write_text(json.dumps(evaluation.to_dict(), indent=2, sort_keys=True) + "\n", "utf-8")
    csv_path = out / CSV_NAME
    exits = list(evaluation.exit_accuracy)
    header = ["kind", "name", "threshold", *_CSV_METRICS, *(f"exit_mix_{e}" for e in exits)]
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        for r in evaluation.results:
            row = r.to_dict()
            mix = [row["exit_mix"].get(e, 0.0) for e in exits]
            writer.writerow(["threshold", "", r.threshold, *(row[m] for m in _CSV_METRICS), *mix])
        for b in evaluation.baselines.values():
            row = {
                **b.to_dict(),
                "expected_memory_bytes": b.edge_memory_bytes
                + b.offload_rate * b.cloud_memory_bytes,
            }
            writer.writerow(
                ["baseline", b.name, "", *(row[m] for m in _CSV_METRICS), *([""] * len(exits))]
            )
    return json_path, csv_path


def load_evaluation(path: str | Path) -> dict[str, Any]:
    """Read an ``evaluation.json`` (a file, or a bundle directory holding one)."""
    target = Path(path)
    if target.is_dir():
        target = target / JSON_NAME
    if not target.is_file():
        raise BundleError(f"No evaluation at {target}. Run `edgelesspart evaluate BUNDLE` first.")
    try:
        data = json.loads(target.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{target} is not valid JSON: {exc}.") from exc
    if not isinstance(data, dict) or data.get("version") != EVALUATION_VERSION:
        raise BundleError(
            f"{target} is not an evaluation of version {EVALUATION_VERSION}; re-run "
            "`edgelesspart evaluate`."
        )
    return data


def _size(nbytes: float) -> str:
    """Human-readable binary size: 980B, 9.8K, 1.2M, 3.4G."""
    value = float(nbytes)
    for unit in ("B", "K", "M"):
        if abs(value) < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}G"


def format_table(evaluation: Evaluation) -> str:
    """A fixed-width summary: one line per threshold, then the baselines."""
    head = (
        f"{'thr':>6} {'acc':>6} {'offload':>7} {'E[lat]':>8} {'p50':>8} {'p95':>8} "
        f"{'edge':>7} {'E[cloud]':>8} {'$/1M':>8}  exit mix"
    )
    lines = [head, "-" * len(head)]
    chosen = (evaluation.selection or {}).get("threshold")
    serving = (evaluation.selection or {}).get("serving_threshold")
    for r in evaluation.results:
        mix = " ".join(f"{k}:{v:.2f}" for k, v in r.exit_mix.items())
        mark = "*" if chosen is not None and r.threshold == chosen else " "
        if serving is not None and r.threshold == serving:
            mark = "S"
        cloud_in_use = r.expected_memory_bytes - r.edge_memory_bytes
        lines.append(
            f"{r.threshold:>5.2f}{mark} {r.accuracy:>6.3f} {r.offload_rate:>7.2f} "
            f"{r.latency_mean_ms:>8.2f} {r.latency_p50_ms:>8.2f} {r.latency_p95_ms:>8.2f} "
            f"{_size(r.edge_memory_bytes):>7} {_size(cloud_in_use):>8} "
            f"{r.cloud_cost_per_million:>8.3f}  {mix}"
        )
    lines.append("-" * len(head))
    for b in evaluation.baselines.values():
        lines.append(
            f"{b.name:<14} acc {b.accuracy:.3f}  offload {b.offload_rate:.2f}  "
            f"latency {b.latency_mean_ms:.2f} ms  edge {_size(b.edge_memory_bytes)}  "
            f"cloud {_size(b.cloud_memory_bytes)}  ${b.cloud_cost_per_million:.3f}/1M"
        )
    compute = (evaluation.selection or {}).get("compute")
    if compute:
        saving = compute["saving"]
        verdict = (
            "less compute"
            if saving and saving >= 1
            else "MORE compute (the exits cost more than they save)"
        )
        lines.append(
            f"S serving threshold {compute['threshold']:g} (the manifest's, which the services "
            f"use): measured host compute {compute['served_host_ms']:.3f} ms per sample against "
            f"{compute['full_model_host_ms']:.3f} ms for the full model without exits "
            f"({compute['full_model_source']}): {format_saving(compute)} "
            f"{verdict}"
            f"; running every segment costs {compute['exit_overhead_ms']:+.3f} ms over the "
            "backbone alone (exit heads and per-segment overhead)"
        )
    if evaluation.selection and evaluation.selection.get("threshold") is not None:
        s = evaluation.selection
        lines.append(
            f"* chosen threshold {s['threshold']:.2f}: validation accuracy within "
            f"{s['max_accuracy_drop']:.3f} of the full model; "
            f"test accuracy {s['test']['accuracy']:.3f}"
        )
    elif evaluation.selection and "max_accuracy_drop" in evaluation.selection:
        lines.append(
            "no threshold kept validation accuracy within "
            f"{evaluation.selection['max_accuracy_drop']:.3f} of the full model; add a threshold "
            "> 1 (the full model) or allow a larger drop"
        )
    return "\n".join(lines)
