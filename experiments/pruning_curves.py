"""Pruning curves: parameters, LiteRT latency, memory (and accuracy) vs pruning ratio.

For each model this prunes uniformly at each ratio with :func:`edgelesspart.pruning.prune_model`
(L1-ranked filters, channel groups respected) and measures the rebuilt model: parameter count,
LiteRT batch-1 latency on this host (1 thread, interleaved over the ratios, median), memory
(weights + peak activations) and the ``.tflite`` size. small_cnn is first trained on the bundled
digits and every pruned model is fine-tuned briefly, so its curve has accuracy too; ResNet50 is
measured with random weights (latency and size do not depend on the weights; training it on
2 shared cores would take most of the budget) unless ``--train-resnet`` is given.

Writes ``results/pruning/<model>.json`` (a :class:`PruningCurve` plus machine and load) and
``results/pruning/curves.png``.

Usage::

    .venv/bin/python experiments/pruning_curves.py [--quick] [--models small_cnn,resnet50]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9)
OUT = benchlib.ROOT / "results" / "pruning"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", default="small_cnn,resnet50")
        parser.add_argument("--epochs", type=int, default=8, help="small_cnn training epochs")
        parser.add_argument("--finetune-epochs", type=int, default=2)
        parser.add_argument("--train-resnet", action="store_true")
        parser.add_argument(
            "--resnet-size", type=int, default=32, help="input side of the untrained ResNet50"
        )

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    if args.out == benchlib.RESULTS_DIR:
        args.out = OUT
        args.out.mkdir(parents=True, exist_ok=True)
    return args


def curve_for(name: str, args: Any, data: Any) -> Any:
    """Measure one model's curve (trained when it is small_cnn or --train-resnet)."""
    from edgelesspart.model.training import TrainingConfig, settle_batchnorm, train_backbone
    from edgelesspart.model.zoo import build_model
    from edgelesspart.pruning.curves import accuracy, finetune, measure_curve

    trained = name == "small_cnn" or args.train_resnet
    shape = data.input_shape
    if not trained and args.resnet_size != shape[0]:
        shape = (args.resnet_size, args.resnet_size, shape[2])
        name = f"{name}-{args.resnet_size}"
    model = build_model(name.split("-")[0], shape, data.num_classes, seed=args.seed)
    evaluate = retrain = None
    if trained:
        epochs = 1 if args.quick else args.epochs
        train_backbone(model, data, TrainingConfig(epochs=epochs, seed=args.seed, patience=3))
        settle_batchnorm(model, data.x_train[:1024])

        def evaluate(m: Any) -> float:
            return accuracy(m, data.x_test, data.y_test)

        def retrain(m: Any) -> Any:
            ft = 1 if args.quick else args.finetune_epochs
            return finetune(m, data.x_train, data.y_train, epochs=ft, seed=args.seed)

    repeats = 10 if args.quick else 60
    curve = measure_curve(name, model, RATIOS, evaluate=evaluate, retrain=retrain, repeats=repeats)
    details = {**curve.details, "trained": trained, "input_shape": list(shape), "seed": args.seed}
    return type(curve)(curve.model, curve.ratios, curve.metrics, details)


def plot(curves: list[Any], path: Path) -> None:
    """One panel per metric, relative to the unpruned model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = ["params", "latency_ms", "memory_bytes", "accuracy"]
    fig, axes = plt.subplots(1, len(metrics), figsize=(16, 3.6))
    for ax, metric in zip(axes, metrics):
        for c in curves:
            if metric not in c.metrics:
                continue
            values = c.metrics[metric]
            shown = values if metric == "accuracy" else [v / values[0] for v in values]
            ax.plot(c.ratios, shown, marker="o", label=c.model)
        ax.set_xlabel("pruning ratio")
        ax.set_title(metric if metric == "accuracy" else f"{metric} (x unpruned)")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    """Measure, print a table, write JSON and the plot."""
    from edgelesspart.model.datasets import load_dataset

    args = _args(argv)
    start = time.perf_counter()
    data = load_dataset("digits", seed=args.seed, limit=300 if args.quick else None)
    curves = []
    for name in args.models.split(","):
        curve = curve_for(name.strip(), args, data)
        curves.append(curve)
        record = {**curve.to_dict(), "machine": benchlib.machine_info(), "quick": args.quick}
        path = args.out / f"{curve.model}.json"
        path.write_text(benchlib.json.dumps(benchlib.to_json_ready(record), indent=2) + "\n")
        m = curve.metrics
        print(f"{curve.model}: (ratio, params, LiteRT ms, memory MB, accuracy)")
        for i, r in enumerate(curve.ratios):
            acc = f"{m['accuracy'][i]:.3f}" if "accuracy" in m else "-"
            print(
                f"  {r:.2f}  {m['params'][i]:>11.0f} ({m['params'][i] / m['params'][0]:.2f}x)  "
                f"{m['latency_ms'][i]:7.3f} ({m['latency_ms'][0] / m['latency_ms'][i]:.1f}x "
                f"faster)  {m['memory_bytes'][i] / 1e6:7.2f}  {acc}"
            )
        print(f"wrote {path}")
    plot(curves, args.out / "curves.png")
    print(f"wrote {args.out / 'curves.png'} in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
