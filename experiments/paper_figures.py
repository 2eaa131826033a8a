"""Reproduce the EdgeLessPart paper's Fig. 2/3 comparison: linear vs Pareto early exits.

For each model (ResNet50, MobileNetV2, InceptionV3; Keras applications, ``weights=None``) this
trains the backbone **once**, then builds one bundle per exit placement (linear, pareto) from
that same backbone with the paper's memory rule (the edge part holds 70 % of the model's
memory, at most three exits per part), evaluates each over ``c_thr`` 0.3..0.9 with the Google
Cloud Functions cost model, and writes into ``--out`` (default ``results/paper/``, git-ignored):

* ``backbones/<model>.keras`` (+ ``.json``): the trained backbone and its accuracy;
* ``<model>-<placement>/``: the bundle with its ``evaluation.json`` / ``evaluation.csv``;
* ``table.csv`` and ``table.md``: per model x placement x threshold the accuracy, expected and
  p95 latency, edge and cloud memory, cloud cost per 1M requests and offload rate, plus the
  three baselines (edge-only, cloud-only, split-no-exits) per model;
* ``<model>.png``: linear and Pareto overlaid on the 2x2 axes of the paper's figures;
* ``findings.json``: the paper's three claims recomputed from the measured numbers;
* ``run.json``: the settings, what is reduced against the paper, and how long each step took.

Sharing one backbone makes the exits the only difference between the two placements. After
training, every BatchNormalization layer's moving statistics are recomputed on the training
images ("precise BN"): Keras applications use momentum 0.99/0.999, so after a few epochs the
moving averages still hold their initial values and the trained network predicts at chance in
inference mode. Everything else is the library's own pipeline (``load_dataset``,
``build_model``, ``run_build``, ``evaluate_bundle``, ``plot_overlay``). Metric definitions:
``docs/evaluation.md``; what the numbers say: ``docs/paper_comparison.md``.

Usage::

    .venv/bin/python experiments/paper_figures.py                  # offline default (digits)
    .venv/bin/python experiments/paper_figures.py --dataset cifar10  # 30 epochs, all samples
    .venv/bin/python experiments/paper_figures.py --quick --models mobilenetv2 --out /tmp/p
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

MODELS = ("resnet50", "mobilenetv2", "inceptionv3")
PLACEMENTS = ("linear", "pareto")
BASELINE_NAMES = ("edge-only", "cloud-only", "split-no-exits")
HIGH_THRESHOLD = 0.8  # the paper's "c_thr >= 0.8"
MIB = 2**20
#: Training images whose batch statistics replace the BatchNormalization moving averages.
SETTLE_SAMPLES = 2048
SETTLE_BATCH = 256

# The paper's numbers, for findings.json (Sec. III, "Outcomes").
PAPER_CLAIMS = {
    "resnet50_pareto_cheaper": (
        "ResNet50: placing exits linearly costs 20 % more than Pareto for c_thr >= 0.8 "
        "(linear / pareto cost = 1.2)."
    ),
    "inceptionv3_exits_faster": (
        "InceptionV3: 40 % (Pareto) and 50 % (linear) faster inference with exits; cost 5 % "
        "(linear) and 10 % (Pareto) 'compared to cloud-only inference'."
    ),
    "mobilenetv2_exit_overhead": (
        "MobileNetV2: for higher c_thr the overhead of intermediate classifiers and network "
        "traffic outweighs the original model."
    ),
}


@dataclass(frozen=True)
class PaperSettings:
    """What the experiment runs; the command-line flags mirror these names.

    ``limit=None`` uses every sample of each split. The offline defaults (the bundled digits,
    4 epochs, 10 profiled cut points) train three backbones and build six bundles in 13
    minutes on two CPU cores (measured; 30 is the budget); ``--dataset cifar10`` switches to
    :data:`CIFAR10` and ``--quick`` to :data:`QUICK`.
    """

    dataset: str = "digits"
    epochs: int = 4
    limit: int | None = None
    batch_size: int = 32
    max_cut_points: int = 10
    exits_per_part: tuple[int, int] = (3, 3)
    models: tuple[str, ...] = MODELS
    placements: tuple[str, ...] = PLACEMENTS
    out: Path = Path("results/paper")
    edge_device: str = "jetson-orin-nano"
    cloud_device: str = "gcf-2gb"
    link: str = "wifi"
    thresholds: str = "0.3:0.9:0.05"
    seed: int = 0
    rebuild: bool = False


#: ``--dataset cifar10``: every sample, 30 epochs, the build's default 16 profiled cut points.
CIFAR10 = {"epochs": 30, "limit": None, "max_cut_points": 16}
#: ``--quick``: no training (random weights), 32 samples, 3 profiled cut points, 1 exit per part.
QUICK = {"epochs": 0, "limit": 32, "max_cut_points": 3, "exits_per_part": (1, 1)}


def reductions(settings: PaperSettings) -> list[str]:
    """What this run does differently from the paper's setup, in words (for run.json)."""
    notes = [
        f"edge {settings.edge_device} and cloud {settings.cloud_device} are this host's LiteRT "
        "profile scaled by device factors (docs/planner.md), not measured on the devices",
        "one backbone per model, shared by both placements, BatchNorm statistics recomputed "
        f"on up to {SETTLE_SAMPLES} training images after training",
    ]
    if settings.dataset != "cifar10":
        notes.append(
            f"dataset {settings.dataset} ("
            + (
                "upscaled 8x8 digits, 1,797 images"
                if settings.dataset == "digits"
                else "digits rendered MNIST-M style, 5,391 images"
                if settings.dataset == "digits-hard"
                else "a user dataset"
            )
            + ") "
            "instead of CIFAR-10"
        )
    if settings.epochs < CIFAR10["epochs"]:
        notes.append(f"{settings.epochs} training epochs for backbone and exits")
    if settings.limit is not None:
        notes.append(f"at most {settings.limit} samples per split")
    if settings.max_cut_points < CIFAR10["max_cut_points"]:
        notes.append(f"{settings.max_cut_points} candidate cut points profiled")
    return notes


# --- backbone -----------------------------------------------------------------------------------


def backbone_options(settings: PaperSettings) -> dict[str, Any]:
    """The settings a trained backbone depends on (a stored one is reused when they match)."""
    keys = ("dataset", "epochs", "limit", "batch_size", "seed")
    return {key: getattr(settings, key) for key in keys}


def train_backbone(settings: PaperSettings, model_name: str) -> tuple[Any, dict[str, Any]]:
    """Build the zoo model (random weights), train it, settle BatchNorm; return (model, info)."""
    import numpy as np

    from edgelesspart._lazy import keras
    from edgelesspart.model import datasets, zoo
    from edgelesspart.model.training import TrainingConfig, settle_batchnorm

    data = datasets.load_dataset(settings.dataset, seed=settings.seed, limit=settings.limit)
    model = zoo.build_model(model_name, data.input_shape, data.num_classes, seed=settings.seed)
    start = time.perf_counter()
    if settings.epochs:
        keras().utils.set_random_seed(settings.seed)
        model.compile(
            optimizer=keras().optimizers.Adam(TrainingConfig().learning_rate),
            loss="sparse_categorical_crossentropy",
        )
        model.fit(
            data.x_train,
            data.y_train,
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            shuffle=True,
            verbose=0,
        )
    settled = settle_batchnorm(model, data.x_train[:SETTLE_SAMPLES], batch_size=SETTLE_BATCH)

    def accuracy(x: Any, y: Any) -> float:
        predicted = np.argmax(model.predict(x, batch_size=256, verbose=0), axis=1)
        return round(float(np.mean(predicted == y)), 4)

    info = {
        "options": backbone_options(settings),
        "train_samples": len(data.x_train),
        "batchnorm_layers_settled": settled,
        "accuracy": {
            "val": accuracy(data.x_val, data.y_val),
            "test": accuracy(data.x_test, data.y_test),
        },
        "train_s": round(time.perf_counter() - start, 1),
    }
    return model, info


def backbone(
    settings: PaperSettings, model_name: str, log: Callable[[str], None]
) -> tuple[Path, dict[str, Any], bool]:
    """Train and save (or reuse) a model's backbone; return (path, info, freshly trained)."""
    folder = settings.out / "backbones"
    path, sidecar = folder / f"{model_name}.keras", folder / f"{model_name}.json"
    if path.is_file() and sidecar.is_file() and not settings.rebuild:
        info = json.loads(sidecar.read_text(encoding="utf-8"))
        if info.get("options") == backbone_options(settings):
            log(
                f"[{model_name}] reusing backbone {path} (test accuracy "
                f"{info['accuracy']['test']:.3f})"
            )
            return path, info, False
    log(f"[{model_name}] training backbone: {settings.epochs} epochs on {settings.dataset}")
    model, info = train_backbone(settings, model_name)
    folder.mkdir(parents=True, exist_ok=True)
    model.save(path)
    sidecar.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    log(
        f"[{model_name}] backbone: {info['train_s']} s, accuracy val "
        f"{info['accuracy']['val']:.3f} test {info['accuracy']['test']:.3f}"
    )
    return path, info, True


# --- build and evaluate ------------------------------------------------------------------------


def build_config(
    settings: PaperSettings, model: str, placement: str, backbone_path: Path | None = None
) -> Any:
    """The :class:`BuildConfig` of one model x placement (paper: memory rule at 70 %).

    With ``backbone_path`` the build takes that trained ``.keras`` backbone as it is
    (``train_backbone="no"``) and only trains the exits.
    """
    from edgelesspart.build import BuildConfig

    return BuildConfig(
        constraint="memory",
        model=str(backbone_path) if backbone_path else model,
        train_backbone="no" if backbone_path else "auto",
        dataset=settings.dataset,
        memory_fraction=0.7,
        placement=placement,
        exits_per_part=settings.exits_per_part,
        edge_device=settings.edge_device,
        cloud_device=settings.cloud_device,
        link=settings.link,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        seed=settings.seed,
        limit=settings.limit,
        max_cut_points=settings.max_cut_points,
        # the paper's exits: a copy of the model's head, trained on labels with the backbone
        # frozen, scored by raw softmax confidence (the product's defaults are sdn, distill and
        # temperature scaling; see README "What the default changes against the paper")
        exit_head="paper",
        exit_training="frozen",
        temperature_scaling="no",
        split_exit="no",  # the paper's k/(n+1) spacing, no exit pinned at the split
        out=str(settings.out / f"{model}-{placement}"),
        overwrite=True,
    )


def reusable(config: Any) -> tuple[bool, str]:
    """Whether the bundle at ``config.bundle_dir`` was built with the same options."""
    from edgelesspart.errors import EdgeLessPartError
    from edgelesspart.runtime.manifest import load_manifest

    if not (config.bundle_dir / "manifest.json").is_file():
        return False, "no bundle yet"
    try:
        stored = load_manifest(config.bundle_dir).extra.get("build_config", {})
    except EdgeLessPartError as exc:
        return False, f"unreadable bundle ({exc})"
    wanted = {k: v for k, v in config.to_dict().items() if k not in ("out", "overwrite")}
    changed = sorted(k for k, v in wanted.items() if stored.get(k) != v)
    if changed:
        return False, f"built with other options ({', '.join(changed)})"
    return True, "same options"


def build_and_evaluate(
    settings: PaperSettings,
    model: str,
    placement: str,
    log: Callable[[str], None],
    backbone_path: Path | None = None,
    fresh_backbone: bool = False,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build (or reuse) one bundle, evaluate it, write its outputs; return (evaluation, timing).

    A bundle is rebuilt when its options changed, when ``--rebuild`` is given, or when its
    backbone was trained again in this run (``fresh_backbone``).
    """
    from edgelesspart.build import run_build
    from edgelesspart.evaluation import write_outputs
    from edgelesspart.evaluation.pipeline import EvaluationConfig, evaluate_bundle
    from edgelesspart.evaluation.sweep import parse_thresholds

    config = build_config(settings, model, placement, backbone_path)
    tag = f"[{model}/{placement}]"
    ok, why = reusable(config)
    if fresh_backbone:
        ok, why = False, "backbone trained again"
    timing: dict[str, Any] = {"bundle": str(config.bundle_dir)}
    start = time.perf_counter()
    if ok and not settings.rebuild:
        log(f"{tag} reusing {config.bundle_dir} ({why}; --rebuild to build again)")
        timing["build"] = "reused"
    else:
        log(f"{tag} building ({why})")
        result = run_build(config, show_progress=False, log=lambda m: log(f"{tag} {m}"))
        timing["build"] = result.seconds
    timing["build_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    eval_config = EvaluationConfig(
        thresholds=parse_thresholds(settings.thresholds), link=settings.link, provider="gcf"
    )
    evaluation = evaluate_bundle(config.bundle_dir, eval_config, show_progress=False)
    write_outputs(evaluation, config.bundle_dir)
    timing["evaluate_s"] = round(time.perf_counter() - start, 1)
    log(f"{tag} done: build {timing['build_s']} s, evaluate {timing['evaluate_s']} s")
    return evaluation.to_dict(), timing


# --- table --------------------------------------------------------------------------------------

COLUMNS = (
    "model", "placement", "kind", "threshold", "accuracy", "offload_rate", "latency_mean_ms",
    "latency_p95_ms", "edge_memory_mib", "cloud_memory_mib", "cloud_in_use_mib",
    "cloud_cost_per_million",
)  # fmt: skip


def _metrics(row: Mapping[str, Any], offload: float) -> dict[str, Any]:
    edge, cloud = float(row["edge_memory_bytes"]), float(row["cloud_memory_bytes"])
    return {
        "accuracy": round(float(row["accuracy"]), 4),
        "offload_rate": round(offload, 4),
        "latency_mean_ms": round(float(row["latency_mean_ms"]), 3),
        "latency_p95_ms": round(float(row["latency_p95_ms"]), 3),
        "edge_memory_mib": round(edge / MIB, 2),
        "cloud_memory_mib": round(cloud / MIB, 2),
        "cloud_in_use_mib": round(offload * cloud / MIB, 2),
        "cloud_cost_per_million": round(float(row["cloud_cost_per_million"]), 4),
    }


def table_rows(evaluations: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> list[dict]:
    """Flatten ``{model: {placement: evaluation dict}}`` into table rows.

    Every threshold row of every placement, then the model's three baselines, taken from its
    first evaluated placement (the split, and so the baselines, do not depend on the placement).
    """
    rows: list[dict[str, Any]] = []
    for model, by_placement in evaluations.items():
        for placement, ev in by_placement.items():
            for r in ev["results"]:
                rows.append(
                    {
                        "model": model,
                        "placement": placement,
                        "kind": "threshold",
                        "threshold": round(float(r["threshold"]), 4),
                        **_metrics(r, float(r["offload_rate"])),
                    }
                )
        first = next(iter(by_placement))
        for name in BASELINE_NAMES:
            b = by_placement[first]["baselines"][name]
            rows.append(
                {
                    "model": model,
                    "placement": first,
                    "kind": name,
                    "threshold": "",
                    **_metrics(b, float(b["offload_rate"])),
                }
            )
    return rows


def write_csv(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """Write the table rows as CSV."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _accuracy_line(placement: str, ev: Mapping[str, Any]) -> str:
    exits = ", ".join(f"{name} {float(acc):.3f}" for name, acc in ev["exit_accuracy"].items())
    return f"Test accuracy if every sample answered there ({placement}): {exits}."


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    settings: PaperSettings,
    evaluations: Mapping[str, Mapping[str, Mapping[str, Any]]] | None = None,
) -> str:
    """One markdown table per model: thresholds of each placement, then the baselines.

    With ``evaluations``, each model's section also lists every exit's own test accuracy.
    """
    head = (
        "| placement | c_thr | accuracy | offload | E[latency] ms | p95 ms | edge MiB "
        "| cloud MiB | cloud in use MiB | $ per 1M |"
    )
    lines = [
        "# EdgeLessPart paper comparison (Fig. 2/3)",
        "",
        f"Dataset `{settings.dataset}`, {settings.epochs} epochs, "
        f"{'all samples' if settings.limit is None else f'at most {settings.limit} per split'}, "
        f"memory rule 0.7, exits per part {settings.exits_per_part}, edge "
        f"`{settings.edge_device}`, cloud `{settings.cloud_device}`, link `{settings.link}`, "
        "GCF 1st-gen prices. Cloud in use = offload rate x cloud memory.",
    ]
    for model in dict.fromkeys(r["model"] for r in rows):
        lines += ["", f"## {model}", ""]
        for placement, ev in (evaluations or {}).get(model, {}).items():
            lines += [_accuracy_line(placement, ev), ""]
        lines += [head, "|" + "---|" * 10]
        for r in (r for r in rows if r["model"] == model):
            label = r["placement"] if r["kind"] == "threshold" else f"**{r['kind']}**"
            thr = f"{r['threshold']:.2f}" if r["kind"] == "threshold" else "-"
            lines.append(
                f"| {label} | {thr} | {r['accuracy']:.3f} | {r['offload_rate']:.2f} "
                f"| {r['latency_mean_ms']:.2f} | {r['latency_p95_ms']:.2f} "
                f"| {r['edge_memory_mib']:.2f} | {r['cloud_memory_mib']:.2f} "
                f"| {r['cloud_in_use_mib']:.2f} | {r['cloud_cost_per_million']:.3f} |"
            )
    return "\n".join(lines) + "\n"


# --- findings -----------------------------------------------------------------------------------


def _mean(values: Sequence[float]) -> float | None:
    return float(sum(values) / len(values)) if values else None


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else round(a / b, 4)


def _high(ev: Mapping[str, Any], key: str) -> list[float]:
    return [float(r[key]) for r in ev["results"] if r["threshold"] >= HIGH_THRESHOLD - 1e-9]


def _not_evaluated(claim: str, needs: str) -> dict[str, Any]:
    return {
        "paper": PAPER_CLAIMS[claim],
        "evaluated": False,
        "holds": None,
        "reason": f"needs {needs} in --models/--placements",
    }


def resnet50_claim(evaluations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Pareto cheaper than linear for ResNet50 at c_thr >= 0.8 (mean cloud cost per 1M)."""
    claim = "resnet50_pareto_cheaper"
    evs = evaluations.get("resnet50", {})
    if not {"linear", "pareto"} <= set(evs):
        return _not_evaluated(claim, "resnet50 with both placements")
    lin = _mean(_high(evs["linear"], "cloud_cost_per_million"))
    par = _mean(_high(evs["pareto"], "cloud_cost_per_million"))
    thresholds = [
        r["threshold"] for r in evs["linear"]["results"] if r["threshold"] >= HIGH_THRESHOLD - 1e-9
    ]
    return {
        "paper": PAPER_CLAIMS[claim],
        "evaluated": bool(thresholds),
        "holds": None if lin is None or par is None else bool(par < lin),
        "thresholds": thresholds,
        "linear_cost_per_million": lin,
        "pareto_cost_per_million": par,
        "pareto_over_linear": _ratio(par, lin),
        "linear_over_pareto": _ratio(lin, par),
        "paper_linear_over_pareto": 1.2,
        "offload_rate": {p: _mean(_high(evs[p], "offload_rate")) for p in ("linear", "pareto")},
        "accuracy": {p: _mean(_high(evs[p], "accuracy")) for p in ("linear", "pareto")},
        # The paper also reports Pareto faster than linear; mean over every threshold.
        "mean_latency_ms": {
            p: _mean([float(r["latency_mean_ms"]) for r in evs[p]["results"]])
            for p in ("linear", "pareto")
        },
    }


def inception_claim(evaluations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """InceptionV3 with exits faster than cloud-only (and split-no-exits), mean over c_thr."""
    claim = "inceptionv3_exits_faster"
    evs = evaluations.get("inceptionv3", {})
    if not evs:
        return _not_evaluated(claim, "inceptionv3")
    per: dict[str, Any] = {}
    for placement, ev in evs.items():
        lat = _mean([float(r["latency_mean_ms"]) for r in ev["results"]])
        cost = _mean([float(r["cloud_cost_per_million"]) for r in ev["results"]])
        base = ev["baselines"]
        cloud, split, edge = base["cloud-only"], base["split-no-exits"], base["edge-only"]
        per[placement] = {
            "mean_latency_ms": lat,
            "cloud_only_latency_ms": cloud["latency_mean_ms"],
            "split_no_exits_latency_ms": split["latency_mean_ms"],
            "edge_only_latency_ms": edge["latency_mean_ms"],
            "speedup_vs_cloud_only": round(1 - lat / cloud["latency_mean_ms"], 4),
            "speedup_vs_split_no_exits": round(1 - lat / split["latency_mean_ms"], 4),
            "speedup_vs_edge_only": round(1 - lat / edge["latency_mean_ms"], 4),
            "mean_accuracy": _mean([float(r["accuracy"]) for r in ev["results"]]),
            "full_accuracy": ev.get("full_accuracy"),
            "mean_cost_per_million": cost,
            "cost_over_cloud_only": _ratio(cost, cloud["cloud_cost_per_million"]),
            "mean_offload_rate": _mean([float(r["offload_rate"]) for r in ev["results"]]),
        }
    return {
        "paper": PAPER_CLAIMS[claim],
        "evaluated": True,
        "holds": all(p["speedup_vs_cloud_only"] > 0 for p in per.values()),
        "faster_than_split_no_exits": all(p["speedup_vs_split_no_exits"] > 0 for p in per.values()),
        "faster_than_edge_only": all(p["speedup_vs_edge_only"] > 0 for p in per.values()),
        "paper_speedup": {"linear": 0.5, "pareto": 0.4},
        "per_placement": per,
    }


def mobilenet_claim(evaluations: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """MobileNetV2 at c_thr >= 0.8 slower than its best deployment without exits.

    ``holds`` compares with the fastest baseline (the original model deployed without exits);
    ``slower_than_split_no_exits`` isolates the exits' own overhead on the same split.
    """
    claim = "mobilenetv2_exit_overhead"
    evs = evaluations.get("mobilenetv2", {})
    if not evs:
        return _not_evaluated(claim, "mobilenetv2")
    per: dict[str, Any] = {}
    for placement, ev in evs.items():
        lat = _mean(_high(ev, "latency_mean_ms"))
        cost = _mean(_high(ev, "cloud_cost_per_million"))
        base = {n: ev["baselines"][n] for n in BASELINE_NAMES}
        best = min(BASELINE_NAMES, key=lambda n: base[n]["latency_mean_ms"])
        per[placement] = {
            "high_threshold_latency_ms": lat,
            "baseline_latency_ms": {n: b["latency_mean_ms"] for n, b in base.items()},
            "best_baseline": best,
            "latency_over_best_baseline": _ratio(lat, base[best]["latency_mean_ms"]),
            "latency_over_split_no_exits": _ratio(lat, base["split-no-exits"]["latency_mean_ms"]),
            "high_threshold_cost_per_million": cost,
            "cost_over_split_no_exits": _ratio(
                cost, base["split-no-exits"]["cloud_cost_per_million"]
            ),
            "cost_over_cloud_only": _ratio(cost, base["cloud-only"]["cloud_cost_per_million"]),
            "high_threshold_offload_rate": _mean(_high(ev, "offload_rate")),
            "exits_slower": lat is not None and lat > base[best]["latency_mean_ms"],
        }
    return {
        "paper": PAPER_CLAIMS[claim],
        "evaluated": all(p["high_threshold_latency_ms"] is not None for p in per.values()),
        "holds": all(p["exits_slower"] for p in per.values()),
        "slower_than_split_no_exits": all(
            (p["latency_over_split_no_exits"] or 0) > 1 for p in per.values()
        ),
        "threshold_from": HIGH_THRESHOLD,
        "per_placement": per,
    }


def findings(evaluations: Mapping[str, Mapping[str, Mapping[str, Any]]]) -> dict[str, Any]:
    """The paper's three claims, each with ``holds`` (bool, or None if not run) and its numbers."""
    return {
        "resnet50_pareto_cheaper": resnet50_claim(evaluations),
        "inceptionv3_exits_faster": inception_claim(evaluations),
        "mobilenetv2_exit_overhead": mobilenet_claim(evaluations),
    }


# --- command line -------------------------------------------------------------------------------


def _names(text: str, allowed: Sequence[str], what: str) -> tuple[str, ...]:
    from edgelesspart.errors import ConfigError

    names = tuple(n.strip() for n in text.split(",") if n.strip())
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise ConfigError(
            f"Unknown {what} {', '.join(unknown) or '(none)'}; choose from {', '.join(allowed)} "
            "(comma-separated)."
        )
    return names


def parse_args(argv: Sequence[str] | None = None) -> PaperSettings:
    """Parse the command line into :class:`PaperSettings` (``--quick`` shrinks the defaults)."""
    from edgelesspart.build import parse_exits_per_part

    d = PaperSettings()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--dataset",
        default=d.dataset,
        help="digits (default, offline), digits-hard (offline, MNIST-M style) or cifar10 (needs "
        "the CIFAR-10 files; "
        f"defaults become {CIFAR10})",
    )
    p.add_argument("--epochs", type=int, help=f"backbone and exit epochs (default {d.epochs})")
    p.add_argument(
        "--limit", type=int, help=f"at most N samples per split; 0 = all (default {d.limit})"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=d.batch_size,
        help="training batch size; small batches settle BatchNorm statistics in "
        "fewer epochs (default %(default)s)",
    )
    p.add_argument(
        "--max-cut-points",
        type=int,
        help=f"candidate cut points to profile (default {d.max_cut_points})",
    )
    p.add_argument("--exits-per-part", help="exits per part, N or EDGE,CLOUD (default 3)")
    p.add_argument("--models", default=",".join(MODELS), help="comma list (default: all three)")
    p.add_argument("--placements", default=",".join(PLACEMENTS), help="comma list (default: both)")
    p.add_argument("--out", default=str(d.out), help="results folder (default %(default)s)")
    p.add_argument("--edge-device", default=d.edge_device, help="edge device (paper: Jetson)")
    p.add_argument("--cloud-device", default=d.cloud_device, help="cloud device profile")
    p.add_argument("--link", default=d.link, help="edge-cloud link (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed, help="data split, weights, training")
    p.add_argument(
        "--rebuild",
        action="store_true",
        help="train the backbones and build the bundles again even if --out has them",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings for a smoke test: no training, 32 samples, 3 cut points, "
        "1 exit per part",
    )
    a = p.parse_args(argv)
    base = replace(d, **CIFAR10) if a.dataset == "cifar10" else d
    base = replace(base, **QUICK) if a.quick else base
    limit = base.limit if a.limit is None else (a.limit or None)
    return replace(
        base,
        dataset=a.dataset,
        epochs=base.epochs if a.epochs is None else a.epochs,
        limit=limit,
        batch_size=a.batch_size,
        max_cut_points=a.max_cut_points or base.max_cut_points,
        exits_per_part=(
            parse_exits_per_part(a.exits_per_part) if a.exits_per_part else base.exits_per_part
        ),
        models=_names(a.models, MODELS, "model"),
        placements=_names(a.placements, PLACEMENTS, "placement"),
        out=Path(a.out),
        edge_device=a.edge_device,
        cloud_device=a.cloud_device,
        link=a.link,
        seed=a.seed,
        rebuild=a.rebuild,
    )


def write_results(
    settings: PaperSettings,
    evaluations: dict,
    timings: dict,
    started: float,
    backbones: Mapping[str, Any] | None = None,
) -> tuple[str, dict[str, Any]]:
    """Write the table, the overlay figures, findings.json and run.json; return (md, findings)."""
    from edgelesspart.evaluation import plot_overlay

    out = settings.out
    rows = table_rows(evaluations)
    write_csv(rows, out / "table.csv")
    table = markdown_table(rows, settings, evaluations)
    (out / "table.md").write_text(table, encoding="utf-8")
    for model, by_placement in evaluations.items():
        plot_overlay(
            by_placement,
            out / f"{model}.png",
            title=f"{model}: {' vs '.join(by_placement)} exits ({settings.dataset})",
        )
    found = findings(evaluations)
    (out / "findings.json").write_text(json.dumps(found, indent=2) + "\n", encoding="utf-8")
    run = {
        "settings": {**asdict(settings), "out": str(out)},
        "reduced_against_paper": reductions(settings),
        "cpu_count": os.cpu_count(),
        "backbones": dict(backbones or {}),
        "steps": timings,
        "total_s": round(time.perf_counter() - started, 1),
    }
    (out / "run.json").write_text(json.dumps(run, indent=2) + "\n", encoding="utf-8")
    return table, found


def main(argv: Sequence[str] | None = None) -> int:
    """Run the experiment; print the table and the findings; return the exit code."""
    from edgelesspart.errors import EdgeLessPartError

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    started = time.perf_counter()

    def log(message: str) -> None:
        print(f"{time.perf_counter() - started:7.1f}s {message}", file=sys.stderr, flush=True)

    try:
        settings = parse_args(argv)
        settings.out.mkdir(parents=True, exist_ok=True)
        evaluations: dict[str, dict[str, Any]] = {}
        timings: dict[str, Any] = {}
        backbones: dict[str, Any] = {}
        for model in settings.models:
            path, backbones[model], fresh = backbone(settings, model, log)
            for placement in settings.placements:
                ev, timing = build_and_evaluate(settings, model, placement, log, path, fresh)
                evaluations.setdefault(model, {})[placement] = ev
                timings[f"{model}-{placement}"] = timing
        table, found = write_results(settings, evaluations, timings, started, backbones)
    except EdgeLessPartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(table)
    print(json.dumps(found, indent=2))
    log(
        f"wrote {settings.out}/table.md, table.csv, findings.json, run.json and "
        f"{', '.join(f'{m}.png' for m in evaluations)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
