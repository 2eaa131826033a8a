"""P10: SlimEdge mean speedup over unpruned deployment, accuracy within 2 points (goal >= 4.7x).

Runs the 1,000-scenario simulation (``experiments/slimedge_sim.py``: random device mixes from the
catalogue, random memory limits and failure probabilities) on the measured 4-view digits model
and reports the mean, over the scenarios where SlimEdge finds a feasible plan, of the slowest
device's latency unpruned / with SlimEdge's ratios at the floor "unpruned validation
accuracy - 2 points": the NSGA-II front verified on the real model (validation split, measured
ratios as deployed; :mod:`edgelesspart.slimedge.verify`). The speedup over uniform pruning
at the same floor and the real test accuracy of a sample of chosen plans are in the details.
It also writes P11 (accuracy with half the devices failed / all devices) from the same run,
read by ``bench_p11_slimedge.py``.

Usage::

    .venv/bin/python experiments/bench_p10_slimedge.py [--quick] [--scenarios 1000]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import slimedge_sim  # noqa: E402

GOAL_SPEEDUP = 4.7
GOAL_FAILED_RATIO = 0.9
SIM_JSON = "slimedge-sim.json"


def p10_result(record: dict, args: Any, seconds: float) -> benchlib.BenchResult:
    """The P10 record from a simulation record."""
    s, v = record["summary"], record["verification"]
    speed = s["speedup_vs_unpruned_all"]
    mean = speed.get("mean")
    uniform = s["speedup_vs_uniform_where_uniform_feasible"].get("mean")
    return benchlib.BenchResult(
        bench="P10",
        what=f"SlimEdge (NSGA-II, verified) slowest-device latency speedup over no pruning, mean "
        f"over "
        f"{speed['n']} feasible of {s['scenarios']} scenarios, accuracy floor unpruned - 2 points",
        baseline="no pruning (and uniform pruning at the same floor, in details)",
        headline=benchlib.Headline(
            "P10",
            f"mean speedup vs unpruned (vs uniform {uniform:.2f}x; "
            f"{v['within_2_points']}/{len(v['plans'])} plans within 2 points on the real model)",
            mean,
            "x",
            f">= {GOAL_SPEEDUP}x",
            None if mean is None else mean >= GOAL_SPEEDUP,
            ours="SlimEdge NSGA-II",
            reference="unpruned",
        ),
        quick=args.quick,
        reduced=[f"{s['scenarios']} scenarios, model trained {args.epochs} epochs"]
        if args.quick
        else [],
        details={k: record[k] for k in record if k != "scenarios"},
        seconds=seconds,
    )


def p11_result(record: dict, quick: bool, seconds: float) -> benchlib.BenchResult:
    """The P11 record: re-planned accuracy with half the devices failed / all devices."""
    failures = record["summary"]["failures"]
    half = failures["50%"]["accuracy_ratio_replanned"]
    measured = record["verification"]["half_failed_ratio"]
    return benchlib.BenchResult(
        bench="P11",
        what="predicted accuracy with half the devices failed (survivors re-planned) / "
        f"all-devices accuracy, mean over {half['n']} scenarios",
        baseline="all devices alive",
        headline=benchlib.Headline(
            "P11",
            f"accuracy ratio, half failed (real model, unpruned, test: {measured:.3f})",
            half.get("mean"),
            "",
            f">= {GOAL_FAILED_RATIO}",
            None if half.get("mean") is None else half["mean"] >= GOAL_FAILED_RATIO,
            ours="half the devices failed",
            reference="all devices",
        ),
        quick=quick,
        details={"failures": failures, "verification": record["verification"],
                 "simulation_json": str(record.get("path", ""))},
        seconds=seconds,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Simulate, write p10.json (and the simulation for P11), print the headline."""

    def extra(parser: Any) -> None:
        parser.add_argument("--scenarios", type=int, default=1000)
        parser.add_argument("--deployment", type=Path, default=None)
        parser.add_argument("--verify", type=int, default=20)
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--dataset", default="digits", help="digits or digits-hard")

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    if args.quick:
        args.scenarios, args.verify, args.epochs = min(args.scenarios, 40), 4, 3
    start = time.perf_counter()
    sim_args = slimedge_sim._args(_sim_argv(args))
    record = slimedge_sim.simulate(sim_args)
    record["path"] = str(sim_args.out / "sim.json")
    record["dataset"] = args.dataset
    (args.out / SIM_JSON).write_text(
        benchlib.json.dumps(benchlib.to_json_ready({k: record[k] for k in record
                                                    if k != "scenarios"}), indent=1) + "\n"
    )  # fmt: skip
    seconds = round(time.perf_counter() - start, 1)
    return benchlib.finish(p10_result(record, args, seconds), args.out)


def _sim_argv(args: Any) -> list[str]:
    argv = ["--scenarios", str(args.scenarios), "--verify", str(args.verify),
            "--epochs", str(args.epochs), "--seed", str(args.seed),
            "--dataset", args.dataset]  # fmt: skip
    if args.deployment:
        argv += ["--deployment", str(args.deployment)]
    return argv + (["--quick"] if args.quick else [])


if __name__ == "__main__":
    raise SystemExit(main())
