"""P11: SlimEdge accuracy with half the devices failed >= 90 % of the all-devices accuracy.

Reads the simulation P10 just ran (``results/bench/slimedge-sim.json``); when it is missing or
older than an hour it runs P10 first. The headline is the mean, over the feasible scenarios, of
the predicted fused accuracy after half the devices failed and the survivors were re-planned,
divided by the all-devices plan's accuracy; the same ratio measured on the real model (unpruned
backbones, test split, every pair of surviving views) is in the label and details.

Usage::

    .venv/bin/python experiments/bench_p11_slimedge.py [--quick]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_p10_slimedge as p10  # noqa: E402
import benchlib  # noqa: E402

MAX_AGE_S = 3600.0


def main(argv: list[str] | None = None) -> int:
    """Write p11.json from the latest simulation."""
    def extra(parser: Any) -> None:
        parser.add_argument("--dataset", default="digits", help="digits or digits-hard")

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    start = time.perf_counter()
    path = args.out / p10.SIM_JSON
    record = json.loads(path.read_text()) if path.is_file() else {}
    stale = not path.is_file() or time.time() - path.stat().st_mtime > MAX_AGE_S
    if stale or record.get("dataset", "digits") != args.dataset:
        p10.main(["--out", str(args.out), "--dataset", args.dataset,
                  *(["--quick"] if args.quick else [])])  # fmt: skip
    record = json.loads(path.read_text())
    seconds = round(time.perf_counter() - start, 1)
    return benchlib.finish(p10.p11_result(record, args.quick, seconds), args.out)


if __name__ == "__main__":
    raise SystemExit(main())
