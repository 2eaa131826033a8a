"""Which exit heads and exit training make the edge exits of the digits-hard small CNN pay off.

Issue 22 (Deliver 3): the demo-style build on digits-hard (small CNN, memory rule: split after
``block2_pool``) answers only a third of the samples on the edge within 1 point, because its
edge exits (``stem``, ``block1_add``) reach 51 % and 66 % on test against 81.5 % for the final
classifier. This script trains exit heads on the converged backbone (cached by
``experiments/digits_hard_calibration.py``; frozen unless ``--training joint``) at the edge part's
cut points, including the split point itself, with one head / training variant per run, and
reports per exit the validation and test accuracy and, for several edge exit sets, what the
build's serving rule gives: per-exit temperatures fitted on validation, the fastest threshold
whose one-sided 95 % bound of the paired accuracy drop vs the final classifier is within 1 point
on validation (here: the one answering most samples on the edge), judged on test.

One variant per run (each is an exit training: minutes on 2 shared cores); results are appended
to ``results/bench/digits-hard/exit_heads.json`` under the variant's name.

Usage::

    PYTHONPATH=. .venv/bin/python experiments/exit_heads_digits_hard.py --head sdn \
        [--training distill|joint] [--temperature 3] [--alpha 0.5] [--exit-epochs N]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

#: the edge part of the memory rule's split (after block2_pool) and its cut points
EDGE_CUTS = ("stem_relu", "block1_add", "block2_pool")
#: edge exit sets scored with the serving rule (the build's exits are stem + block1_add)
EXIT_SETS = (
    ("stem_relu", "block1_add"),
    ("block1_add",),
    ("block1_add", "block2_pool"),
    ("stem_relu", "block1_add", "block2_pool"),
    ("block2_pool",),
)
BACKBONE = Path("results/bench/backbones/p1-small_cnn-digits-hard.keras")
MAX_DROP = 0.01


@dataclass(frozen=True)
class _Trace:
    """What the evaluation helpers read of a trace: exits in order and their probabilities."""

    exits: tuple[str, ...]
    probs: dict[str, np.ndarray] = field(default_factory=dict)
    measure: str = "max-softmax"


def serving_rule(val: _Trace, y_val: np.ndarray, test: _Trace, y_test: np.ndarray) -> dict:
    """Temperatures and threshold on validation (1-pt bound), judged on test."""
    from dataclasses import replace

    from edgelesspart.evaluation.calibration import (
        apply_temperature,
        fit_temperatures,
        threshold_drop_bounds,
    )
    from edgelesspart.evaluation.serving import SERVING_THRESHOLDS
    from edgelesspart.evaluation.sweep import answering_exit, confidences

    temps = fit_temperatures(val, y_val)

    def calibrated(trace: _Trace) -> _Trace:
        return replace(trace, probs={e: apply_temperature(trace.probs[e], temps[e])
                                     for e in trace.exits})  # fmt: skip

    val, test = calibrated(val), calibrated(test)
    bounds = threshold_drop_bounds(val, y_val, SERVING_THRESHOLDS)
    conf_v, _ = confidences(val)
    ok = [t for t in SERVING_THRESHOLDS if t > 1.0 or bounds[t][1] <= MAX_DROP + 1e-12]
    edge_v = {t: float((answering_exit(conf_v, t) < len(val.exits) - 1).mean()) for t in ok}
    best = max(ok, key=lambda t: (edge_v[t], -t))
    conf_t, pred_t = confidences(test, y_test)
    idx = answering_exit(conf_t, best)
    rows = np.arange(len(y_test))
    accuracy = float((pred_t[rows, idx] == y_test).mean())
    final = float((pred_t[:, -1] == y_test).mean())
    return {
        "threshold": best,
        "val_edge_share": round(edge_v[best], 4),
        "val_drop_bound_pp": round(100 * bounds[best][1], 3),
        "test_edge_share": round(float((idx < len(test.exits) - 1).mean()), 4),
        "test_accuracy": round(accuracy, 4),
        "test_final_accuracy": round(final, 4),
        "test_loss_pp": round(100 * (final - accuracy), 3),
        "test_mix": {e: round(float((idx == k).mean()), 4) for k, e in enumerate(test.exits)},
    }


def main(argv: list[str] | None = None) -> int:
    """Train one variant's edge exits on the cached backbone and score it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--head", default="sdn")
    parser.add_argument("--training", default="distill", choices=("distill", "joint"))
    parser.add_argument("--temperature", type=float, default=3.0)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--exit-epochs", type=int, default=None)
    parser.add_argument("--name", default=None, help="variant name (default: from the options)")
    parser.add_argument("--out", type=Path, default=Path("results/bench/digits-hard"))
    args = parser.parse_args(argv)
    name = args.name or f"{args.head}-{args.training}-T{args.temperature:g}-a{args.alpha:g}"

    from edgelesspart._lazy import keras
    from edgelesspart.exits import heads
    from edgelesspart.exits.training import train_exits_distilled
    from edgelesspart.model.datasets import load_dataset
    from edgelesspart.model.graph import cut_tensor
    from edgelesspart.model.training import TrainingConfig

    start = time.perf_counter()
    k = keras()
    k.utils.set_random_seed(0)
    data = load_dataset("digits-hard", seed=0)
    model = k.models.load_model(BACKBONE, safe_mode=True)
    definition = heads.load_exit_definition(pooling=heads.classifier_pooling(model), head=args.head)
    builder = heads.compile_exit_builder(definition)
    exits = {
        f"exit_{cut}": heads.attach_exit(builder, cut_tensor(model, cut), data.num_classes,
                                         f"exit_{cut}")
        for cut in EDGE_CUTS
    }  # fmt: skip
    config = TrainingConfig(exit_epochs=args.exit_epochs, progress=False, seed=0)
    joint, result = train_exits_distilled(
        model, exits, data, config, mode=args.training, temperature=args.temperature,
        alpha=args.alpha,
    )  # fmt: skip
    order = (*exits, "final")
    out_v = joint.predict(data.x_val, batch_size=256, verbose=0)
    out_t = joint.predict(data.x_test, batch_size=256, verbose=0)
    val = _Trace(order, {e: np.asarray(out_v[e]) for e in order})
    test = _Trace(order, {e: np.asarray(out_t[e]) for e in order})
    accuracy = {
        split: {e: round(float((np.argmax(t.probs[e], 1) == y).mean()), 4) for e in order}
        for split, t, y in (("val", val, data.y_val), ("test", test, data.y_test))
    }
    sets = {}
    for cuts in EXIT_SETS:
        chosen = tuple(f"exit_{c}" for c in cuts) + ("final",)
        sub_v = _Trace(chosen, {e: val.probs[e] for e in chosen})
        sub_t = _Trace(chosen, {e: test.probs[e] for e in chosen})
        sets["+".join(cuts)] = serving_rule(sub_v, data.y_val, sub_t, data.y_test)
    record = {
        "head": args.head,
        "training": result.to_dict(),
        "temperature": args.temperature,
        "alpha": args.alpha,
        "accuracy": accuracy,
        "serving_1pt": sets,
        "seconds": round(time.perf_counter() - start, 1),
        "load": os.getloadavg(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "exit_heads.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    results[name] = record
    path.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps({name: {"accuracy": accuracy["test"], "epochs": result.epochs,
                             "seconds": record["seconds"]}}, indent=1))  # fmt: skip
    for key, row in sets.items():
        print(f"{key:40s} edge {100 * row['test_edge_share']:5.1f}% test loss "
              f"{row['test_loss_pp']:+.2f} pt (val bound {row['val_drop_bound_pp']:.2f}, "
              f"thr {row['threshold']})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
