"""P1: compute per sample with early exits vs the full model, at an accuracy-preserving threshold.

For each model (ResNet50, MobileNetV2, InceptionV3; zoo versions built and trained on the default
data, digits) a bundle is built (or reused, see below). Its validation split is traced once;
from that trace the threshold sweep (``edgelesspart.evaluation.sweep``, host factors 1, no link)
picks the fastest threshold whose validation accuracy is within 1 point of the final exit's
(``select_threshold``), so the threshold is never tuned on the samples it is judged on. Then,
per test sample at batch 1 and interleaved:

* ours (the headline): every stage of the bundle in this process with early exits
  (``ProgressiveExecutor``), the compute one device spends until the sample is answered (no
  codec, no network). It counts the cloud part for samples the edge exits do not answer, so it
  is the saving of the early exits alone, wherever the split is;
* edge stage alone (reported, not the headline): the edge executor only, i.e. what the edge
  device computes per sample when unanswered samples are offloaded at the split;
* baseline: the full backbone without exits, converted by the same LiteRT exporter and run as a
  bare interpreter. It is the same zoo architecture built by the same code as the bundle's
  backbone; its weights are freshly initialised (float32 LiteRT kernel time does not depend on
  weight values), and accuracy is taken from the bundle's own final exit.

All three are timed ``--repeats`` times per sample (taking turns, which goes first rotating)
after a warm-up; each sample's median is kept. Headline: ResNet50's mean over samples of the
full model's per-sample median / the same mean with exits (compute per sample, the exit mix
included).

Bundles: ``results/bench/bundles/p1-<model>`` (``p1-<model>-quick`` with ``--quick``) is reused
when its build settings match; else a bundle from ``results/paper/<model>-linear``
(experiments/paper_figures.py) is reused when it was built on the same data (same dataset and
sample limit); else one is built here.

Usage::

    .venv/bin/python experiments/bench_p1_exits.py [--quick] [--models resnet50,...] [--epochs 2]
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import rawlite  # noqa: E402

GOAL = 2.5
MAX_DROP = 0.01
MODELS = ("resnet50", "mobilenetv2", "inceptionv3")
THRESHOLDS = tuple(round(0.3 + 0.05 * i, 2) for i in range(14)) + (0.97, 0.99, 1.01)
PAPER_DIR = benchlib.ROOT / "results" / "paper"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", default=",".join(MODELS), help="comma-separated models")
        parser.add_argument("--epochs", type=int, default=None, help="backbone/exit epochs")
        parser.add_argument("--samples", type=int, default=None, help="timed test samples")
        parser.add_argument("--repeats", type=int, default=None, help="timed rounds per sample")

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def build_options(model: str, quick: bool, epochs: int | None) -> dict[str, Any]:
    """Build settings of a P1 bundle (reduced epochs and cut points to fit ``make bench``)."""
    n = epochs if epochs is not None else (1 if quick else 2)
    options = {
        "model": model,
        "dataset": "digits",
        "constraint": "memory",
        "epochs": n,
        "exit_epochs": n,
        "max_cut_points": 8,
        "exits_per_part": [2, 2],
    }
    if quick:
        options["limit"] = 120
    return options


def find_bundle(out: Path, model: str, options: dict[str, Any]) -> tuple[Path, dict]:
    """Our own matching bundle, else a paper-figures bundle on the same data, else build one."""
    own = out / "bundles" / (f"p1-{model}-quick" if options.get("limit") else f"p1-{model}")
    if benchlib.bundle_matches(own, options):
        return own, {"path": str(own), "reused": True, "options": options}
    paper = PAPER_DIR / f"{model}-linear"
    same_data = {"model": model, "dataset": options["dataset"], "limit": options.get("limit")}
    if benchlib.bundle_matches(paper, same_data):
        config = json.loads((paper / "manifest.json").read_text())["extra"]["build_config"]
        return paper, {"path": str(paper), "reused": True, "options": config, "from": "paper"}
    return benchlib.ensure_bundle(own, **options)


def choose_threshold(bundle: Any, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Trace a split once; the fastest threshold within 1 point of the final exit there.

    Called on the validation split: the threshold is chosen there and judged on test.
    """
    from edgelesspart.evaluation import LatencyModel, exit_accuracy, select_threshold, sweep
    from edgelesspart.runtime.executor import ProgressiveExecutor

    trace = ProgressiveExecutor(bundle, bundle.stages[0]).trace(x, batch_size=64)
    rows = sweep(trace, y, THRESHOLDS, latency_model=LatencyModel(), price_fn=lambda ms: 0.0)
    final = exit_accuracy(trace, y)[trace.exits[-1]]
    chosen = select_threshold(rows, final, MAX_DROP)
    return {
        "threshold": chosen.threshold,
        "final_exit_accuracy": final,
        "sweep_accuracy": chosen.accuracy,
        "sweep_exit_mix": chosen.exit_mix,
        "exit_accuracy": exit_accuracy(trace, y),
        "sweep": [
            {"threshold": r.threshold, "accuracy": r.accuracy, "latency_mean_ms": r.latency_mean_ms}
            for r in rows
        ],
    }


def full_model(bundle: Any, model_name: str, seed: int, folder: Path) -> rawlite.RawSegment:
    """The bundle's backbone architecture without exits as a bare batch-1 LiteRT interpreter.

    The ``.tflite`` is cached in ``folder`` under the model name, input shape and class count
    (what fixes the architecture; the weights do not change float32 kernel time).
    """
    from edgelesspart import zoo
    from edgelesspart.graph import extract, functional_model
    from edgelesspart.litert_export import to_tflite

    shape = tuple(bundle.manifest.input.tensor.shape)
    classes = len(bundle.classes)
    path = folder / f"full-{model_name}-{'x'.join(map(str, shape))}-{classes}.tflite"
    if not path.is_file():
        model, _ = zoo.resolve_model(model_name, shape, classes, seed=seed)
        model = functional_model(model)
        whole = extract(model, "input", {"probs": model.outputs[0]}, name="full_model")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(to_tflite(whole))
    return rawlite.RawSegment(path, shape, None)


def time_per_sample(fns: dict[str, Any], rows: list[np.ndarray], repeats: int) -> dict:
    """Per callable and sample, the median of ``repeats`` timings (ms).

    The callables take turns on every sample; which goes first rotates with the sample and the
    round, so machine noise and cache state hit each of them alike.
    """
    names = list(fns)
    times: dict[str, list[list[float]]] = {n: [[] for _ in rows] for n in names}
    for r in range(repeats):
        for i, row in enumerate(rows):
            shift = (r + i) % len(names)
            for name in names[shift:] + names[:shift]:
                times[name][i].append(benchlib.time_ms(lambda f=fns[name], row=row: f(row)))
    return {n: [statistics.median(v) for v in times[n]] for n in names}


def measure_model(args: Any, model: str, samples: int, repeats: int) -> dict[str, Any]:
    """Build/reuse, pick the threshold, then time exits vs full model interleaved."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    options = build_options(model, args.quick, args.epochs)
    path, bundle_info = find_bundle(args.out, model, options)
    bundle = Bundle.load(path, pool_size=1)
    x_val, y_val = benchlib.eval_split(path, split="val")
    choice = choose_threshold(bundle, x_val, y_val)  # chosen on validation, reported on test
    x, y = benchlib.eval_split(path)
    on_test = choose_threshold(bundle, x, y)  # only for its final-exit accuracy on test
    ours = benchlib.Progressive(bundle, choice["threshold"])
    edge = ProgressiveExecutor(bundle, bundle.stages[0], choice["threshold"])
    full = full_model(bundle, model, args.seed, args.out / "bundles")
    n = min(samples, len(x))
    rows = [np.ascontiguousarray(x[i : i + 1], dtype=np.float32) for i in range(n)]
    answers = [ours(row) for row in rows]  # warm-up (and the answers, for the accuracy check)
    for row in rows[:3]:
        full(row)
        edge.run(row)
    med = time_per_sample({"ours": ours, "edge": edge.run, "full": full}, rows, repeats)
    labels = np.array([a.label for a in answers])
    exits = [a.exit for a in answers]
    return {
        "bundle": bundle_info,
        "split": bundle.manifest.plan.split,
        **choice,
        "timed_samples": len(rows),
        "repeats": repeats,
        "threshold_chosen_on": "validation",
        "test_final_exit_accuracy": on_test["final_exit_accuracy"],
        "measured_accuracy": float(np.mean(labels == y[: len(rows)])),
        "measured_exit_mix": {e: exits.count(e) / len(exits) for e in sorted(set(exits))},
        "exits_ms": benchlib.summary(med["ours"]),
        "edge_stage_ms": benchlib.summary(med["edge"]),
        "full_model_ms": benchlib.summary(med["full"]),
        "speedup": float(np.mean(med["full"]) / np.mean(med["ours"])),
        "edge_only_speedup": float(np.mean(med["full"]) / np.mean(med["edge"])),
    }


def main(argv: list[str] | None = None) -> int:
    """Run P1 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    samples = args.samples or (20 if args.quick else 120)
    repeats = args.repeats or (2 if args.quick else 3)
    results = {}
    for model in models:
        benchlib.log(f"P1: {model}")
        results[model] = measure_model(args, model, samples, repeats)
        r = results[model]
        print(
            f"{model:>12}: threshold {r['threshold']}, accuracy {r['measured_accuracy']:.3f} "
            f"(final exit on test {r['test_final_exit_accuracy']:.3f}), "
            f"exits {r['exits_ms']['mean']:.2f} ms"
            f" vs full {r['full_model_ms']['mean']:.2f} ms = {r['speedup']:.2f}x (edge stage "
            f"alone {r['edge_stage_ms']['mean']:.2f} ms = {r['edge_only_speedup']:.2f}x)"
        )
    head = "resnet50" if "resnet50" in results else models[0]
    speedup = results[head]["speedup"]
    opts = build_options(head, args.quick, args.epochs)
    reduced = [
        f"digits, {opts['epochs']} backbone + {opts['exit_epochs']} exit epochs, "
        f"{opts['max_cut_points']} cut points, {samples} timed samples x {repeats}"
    ]
    result = benchlib.BenchResult(
        bench="P1",
        what="mean compute per sample with early exits at the fastest threshold within 1 point "
        "of the final exit's validation accuracy (all stages on this host, batch 1)",
        baseline="the full model without exits on LiteRT (bare interpreter, batch 1)",
        headline=benchlib.Headline(
            "P1",
            f"{head} full/exits (all stages; edge stage alone "
            f"{results[head]['edge_only_speedup']:.2f}x)",
            speedup,
            "x",
            f">= {GOAL}x",
            speedup >= GOAL,
            ours=f"{results[head]['exits_ms']['mean']:.2f} ms/sample at threshold "
            f"{results[head]['threshold']:g}",
            reference=f"{results[head]['full_model_ms']['mean']:.2f} ms/sample (full model)",
        ),
        quick=args.quick,
        reduced=reduced,
        details={"models": results},
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
