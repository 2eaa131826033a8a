"""Prune reports: requested vs achieved pruning ratio and parameters on models users bring.

Prunes each model uniformly (random weights: the channel structure, not the weights, decides
what can be pruned) and prints :class:`edgelesspart.pruning.PruneReport`'s line: the requested
and achieved ratio of filters removed, the parameter ratio, and the layers that held filters
back. EfficientNetB0 (squeeze-excite blocks) is the model the pruner was not written for.

Writes ``results/pruning/prune_report.json``.

Usage::

    .venv/bin/python experiments/prune_report.py [--quick] [--ratio 0.5] [--size 64]
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

OUT = benchlib.ROOT / "results" / "pruning"
MODELS = ("efficientnetb0", "mobilenetv2", "resnet50")


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", default=",".join(MODELS))
        parser.add_argument("--ratio", type=float, default=0.5)
        parser.add_argument("--size", type=int, default=64, help="input side")
        parser.add_argument("--classes", type=int, default=1000)

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    if args.out == benchlib.RESULTS_DIR:
        args.out = OUT
        args.out.mkdir(parents=True, exist_ok=True)
    return args


def _build(name: str, size: int, classes: int) -> Any:
    import keras

    shape = (size, size, 3)
    if name == "efficientnetb0":
        return keras.applications.EfficientNetB0(weights=None, input_shape=shape, classes=classes)
    from edgelesspart.model.zoo import build_model

    return build_model(name, shape, classes)


def main(argv: list[str] | None = None) -> int:
    """Prune every model and print/write its report."""
    from edgelesspart.pruning import prune_model

    args = _args(argv)
    names = ["efficientnetb0"] if args.quick else args.models.split(",")
    rows = []
    for name in names:
        start = time.perf_counter()
        model = _build(name, args.size, args.classes)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = prune_model(model, args.ratio)
        report = result.report
        print(f"{name} ({args.size}x{args.size}, {args.classes} classes): {report.summary()}")
        for w in caught:
            print(f"  warning: {w.message}")
        rows.append(
            {
                "model": name,
                "params_before": result.params_before,
                "params_after": result.params_after,
                "report": report.to_dict(),
                "warnings": [str(w.message) for w in caught],
                "seconds": round(time.perf_counter() - start, 1),
            }
        )
    out = args.out / "prune_report.json"
    payload = {
        "ratio": args.ratio,
        "input": [args.size, args.size, 3],
        "classes": args.classes,
        "rows": rows,
        "machine": benchlib.machine_info(),
    }
    out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
