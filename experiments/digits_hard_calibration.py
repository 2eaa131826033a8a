"""How hard digits-hard is: the small CNN trained on it, accuracy per split and per epoch.

Trains ``small_cnn`` on ``--dataset`` (default ``digits-hard``) with the build's backbone
trainer (:func:`edgelesspart.model.training.fit_backbone` with the build's defaults: Adam 3e-3,
batch 64, learning rate halved after 2 flat epochs, early stopping with patience 6, best
validation weights kept) up to ``--epochs`` (60, the build's cap), then reports
train/validation/test accuracy, the epochs run, why it stopped, the validation accuracy of every
epoch, the ridge-classifier reference, the wall time and the load. Writes
``<out>/digits_hard_calibration.json``. The trained model is the one P1 uses for its small-CNN
row (``bench_p1_exits.train_backbone_to_convergence``, cached under ``<out>/backbones``), so
whichever script runs first trains it and the other reuses it.

    PYTHONPATH=. .venv/bin/python experiments/digits_hard_calibration.py
    PYTHONPATH=. .venv/bin/python experiments/digits_hard_calibration.py --quick   # 1 epoch, 120
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Train (or reuse), measure, write the JSON, print one line."""

    def extra(parser: Any) -> None:
        parser.add_argument("--dataset", default="digits-hard")
        parser.add_argument("--epochs", type=int, default=60, help="cap (the build's default)")

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    import bench_p1_exits

    from edgelesspart.model import datasets, training

    data = datasets.load_dataset(args.dataset, seed=args.seed, limit=120 if args.quick else None)
    path, info = bench_p1_exits.train_backbone_to_convergence(
        "small_cnn", args.out / "backbones", args.quick, args.seed, args.dataset, args.epochs
    )
    record = {
        "dataset": args.dataset,
        "sizes": {s: int(len(getattr(data, f"y_{s}"))) for s in ("train", "val", "test")},
        "accuracy": info["accuracy"],
        "reference_val_accuracy": round(training.reference_accuracy(data, seed=args.seed), 4),
        "run": info["run"],
        "train_s": info["train_s"],
        "load_average_at_end_of_training": info["load_average"],
        "model": str(path),
        "reused": info["reused"],
        "quick": bool(args.quick),
    }
    out = args.out / "digits_hard_calibration.json"
    out.write_text(json.dumps(record, indent=1) + "\n")
    acc, run = record["accuracy"], record["run"]
    print(
        f"small_cnn on {args.dataset}: test {acc['test']:.3f}, val {acc['val']:.3f}, train "
        f"{acc['train']:.3f} after {run['epochs']} epochs ({run['reason']}); "
        f"reference {record['reference_val_accuracy']:.3f}; {record['train_s']:.0f} s -> {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
