"""SlimEdge: the verified choice (validation split) checked on the test split, per scenario.

Re-plans scenarios of an earlier ``slimedge_sim.py`` run (``results/slimedge/sim.json``: the same
device mixes and memory limits, the same NSGA-II seed) with
:func:`~edgelesspart.slimedge.verify.verified_nsga2_plan`: the NSGA-II front is checked on the
real 4-view model on the VALIDATION split (pruned backbones at the measured ratios the runtime
deploys) and the fastest plan that really clears the floor is chosen. Each choice is then
measured on the TEST split (never used for the choice), next to the unverified NSGA-II choice of
the same scenario. The first ``--count`` feasible scenarios are the ones the simulation itself
verified (its ``within_2_points`` figure), so the two numbers compare like for like.

Writes ``results/slimedge/verify_plans.json``. Usage::

    .venv/bin/python experiments/slimedge_verify_plans.py [--count 20] [--z 1.645]
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
from slimedge_sim import CATALOGUE, MAX_DROP, OUT, cpu_times  # noqa: E402


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--count", type=int, default=20, help="feasible scenarios to check")
        parser.add_argument("--z", type=float, default=None, help="confidence, default the lib's")
        parser.add_argument("--sim", type=Path, default=OUT / "sim.json")

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    if args.out == benchlib.RESULTS_DIR:
        args.out = OUT
    return args


def verifiers(deployment: Path, seed: int) -> dict[str, Any]:
    """A :class:`PlanVerifier` per split (val for choosing, test for checking)."""
    import keras

    from edgelesspart.slimedge.model import fusion_layers
    from edgelesspart.slimedge.verify import PlanVerifier
    from edgelesspart.slimedge.views import digits_views

    fusion_layers()
    manifest = json.loads((deployment / "deployment.json").read_text())
    data = digits_views(manifest["views"], seed=seed)
    load = lambda rel: keras.saving.load_model(deployment / rel, safe_mode=True)  # noqa: E731
    pruned = {(s["view"], s["ratio"]): load(s["tflite"].replace(".tflite", ".keras"))
              for s in manifest["segments"].values()}  # fmt: skip
    fusion = load("segments/fusion.keras")
    return {
        "val": PlanVerifier.from_backbones(fusion, pruned, data.val, data.y_val),
        "test": PlanVerifier.from_backbones(fusion, pruned, data.test, data.y_test),
    }


def check(rows: list[tuple[int, dict]], model: Any, checks: dict[str, Any], z: float) -> list:
    """Per scenario: the verified choice and the unverified one, on test."""
    from edgelesspart.profiling.devices import load_device
    from edgelesspart.slimedge import optimize, verify
    from edgelesspart.slimedge.deploy import slots_for

    catalogue = {s.name: s for s in slots_for([load_device(d) for d in CATALOGUE])}
    unpruned_memory = float(model.curves.memory_bytes[0])
    val, test = checks["val"], checks["test"]
    floor = optimize.Bound(accuracy_floor=val.accuracy((0.0,) * 4) - MAX_DROP)
    base_test = test.accuracy((0.0,) * 4)
    out = []
    for i, row in rows:
        slots = [optimize.DeviceSlot(name, catalogue[name].factor, m * unpruned_memory)
                 for name, m in zip(row["devices"], row["memory_ratio"])]  # fmt: skip
        plain = optimize.nsga2_plan(model, slots, floor, seed=i)
        chosen = verify.verified_nsga2_plan(model, slots, floor, val, seed=i, z=z)
        unpruned = optimize.unpruned_plan(model, slots, floor)
        evaluator = optimize.Evaluator(model, slots, range(4))
        snapped = np.array([val.snap(plain.ratios)])
        plain_fits = bool((evaluator.memory_excess(snapped) <= 1e-9).all())
        out.append({
            "scenario": i,
            "devices": row["devices"],
            "plain": {"ratios": val.snap(plain.ratios), "fits_memory_as_deployed": plain_fits,
                      "test_drop_points": 100 * (base_test - test.accuracy(plain.ratios))},
            "verified": {"ratios": chosen.ratios, "feasible": chosen.feasible,
                         "val_accuracy": chosen.verified_accuracy,
                         "test_drop_points": 100 * (base_test - test.accuracy(chosen.ratios)),
                         "latency_ms": chosen.latency_ms, "seconds": chosen.seconds},
            "speedup_vs_unpruned_plain": unpruned.latency_ms / plain.latency_ms,
            "speedup_vs_unpruned_verified": unpruned.latency_ms / chosen.latency_ms,
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    """Re-plan, verify, check on test; print the counts."""
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves
    from edgelesspart.slimedge.verify import DEFAULT_Z

    args = _args(argv)
    z = DEFAULT_Z if args.z is None else args.z
    start, cpu0, load0 = time.perf_counter(), cpu_times(), os.getloadavg()
    sim = json.loads(args.sim.read_text())
    deployment = Path(sim["deployment"])
    model = CurveModel(ViewCurves.load(deployment / "curves.json"))
    feasible = [(i, r) for i, r in enumerate(sim["scenarios"]) if r["slimedge"]["feasible"]]
    results = check(feasible[: args.count], model, verifiers(deployment, args.seed), z)
    cpu1 = cpu_times()
    within = lambda key: sum(r[key]["test_drop_points"] <= 2.0 + 1e-9 for r in results)  # noqa: E731
    ok = [r for r in results if r["verified"]["feasible"]]
    record = {
        "count": len(results),
        "z": z,
        "within_2_points_test_verified": within("verified"),
        "within_2_points_test_plain": within("plain"),
        "verified_feasible": len(ok),
        "within_2_points_test_verified_feasible": sum(
            r["verified"]["test_drop_points"] <= 2.0 + 1e-9 for r in ok
        ),
        "plain_fits_memory_as_deployed": sum(
            r["plain"]["fits_memory_as_deployed"] for r in results
        ),
        "worst_drop_points_verified": max(r["verified"]["test_drop_points"] for r in results),
        "worst_drop_points_plain": max(r["plain"]["test_drop_points"] for r in results),
        "mean_speedup_plain": statistics.fmean(r["speedup_vs_unpruned_plain"] for r in results),
        "mean_speedup_verified": statistics.fmean(r["speedup_vs_unpruned_verified"] for r in ok)
        if ok
        else None,  # fmt: skip
        "mean_choice_seconds": statistics.fmean(r["verified"]["seconds"] for r in results),
        "load_average": [list(load0), list(os.getloadavg())],
        "host_cpu_utilisation_percent": round(100 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]), 1)
        if cpu0 and cpu1 and cpu1[1] > cpu0[1]
        else None,  # fmt: skip
        "seconds": round(time.perf_counter() - start, 1),
        "machine": benchlib.machine_info(),
        "scenarios": results,
    }
    path = args.out / "verify_plans.json"
    path.write_text(json.dumps(benchlib.to_json_ready(record), indent=1) + "\n")
    print(json.dumps({k: v for k, v in record.items() if k not in ("scenarios", "machine")},
                     indent=1))  # fmt: skip
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
