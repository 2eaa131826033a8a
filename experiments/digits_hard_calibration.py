"""How hard digits-hard is: the small CNN trained on it, accuracy per split and per epoch.

Trains ``small_cnn`` on ``--dataset`` (default ``digits-hard``) with the build's backbone
trainer (:func:`edgelesspart.model.training.fit_backbone`: Adam 3e-3, batch 64, learning rate
halved after 2 flat epochs, early stopping with ``--patience``, best validation weights kept), up
to ``--epochs``, then reports train/validation/test accuracy, the epochs run, why it stopped, the
validation accuracy of every epoch, the logistic-regression reference and the wall time. Writes
``<out>/digits_hard_calibration.json``.

    PYTHONPATH=. .venv/bin/python experiments/digits_hard_calibration.py --epochs 14 --patience 5
    PYTHONPATH=. .venv/bin/python experiments/digits_hard_calibration.py --quick   # 1 epoch, 300
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import numpy as np  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Train, measure, write the JSON, print one line."""

    def extra(parser: Any) -> None:
        parser.add_argument("--dataset", default="digits-hard")
        parser.add_argument("--epochs", type=int, default=60, help="cap (the build's default)")
        parser.add_argument("--patience", type=int, default=6)

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    from edgelesspart.model import datasets, training, zoo

    limit = 300 if args.quick else None
    epochs = 1 if args.quick else args.epochs
    data = datasets.load_dataset(args.dataset, seed=args.seed, limit=limit)
    model = zoo.build_model("small_cnn", data.input_shape, data.num_classes, seed=args.seed)
    config = training.TrainingConfig(
        epochs=epochs, patience=args.patience, seed=args.seed, verbose=2
    )
    start = time.perf_counter()
    run = training.fit_backbone(model, data, config)
    seconds = time.perf_counter() - start

    def accuracy(x: np.ndarray, y: np.ndarray) -> float:
        return round(float(np.mean(model.predict(x, verbose=0).argmax(1) == y)), 4)

    record = {
        "dataset": args.dataset,
        "sizes": {s: int(len(getattr(data, f"y_{s}"))) for s in ("train", "val", "test")},
        "accuracy": {
            s: accuracy(getattr(data, f"x_{s}"), getattr(data, f"y_{s}"))
            for s in ("train", "val", "test")
        },
        "reference_val_accuracy": round(training.reference_accuracy(data, seed=args.seed), 4),
        "run": run.to_dict(config.patience),
        "train_s": round(seconds, 1),
        "loadavg_1min": os.getloadavg()[0],
        "quick": bool(args.quick),
    }
    path = args.out / "digits_hard_calibration.json"
    path.write_text(json.dumps(record, indent=1) + "\n")
    acc = record["accuracy"]
    print(
        f"small_cnn on {args.dataset}: test {acc['test']:.3f}, val {acc['val']:.3f}, train "
        f"{acc['train']:.3f} after {run.epochs} epochs ({run.reason(config.patience)}); "
        f"reference {record['reference_val_accuracy']:.3f}; {seconds:.0f} s -> {path}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
