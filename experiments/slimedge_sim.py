"""SlimEdge simulation: 1,000 device mixes, speedup at an accuracy floor, accuracy under failures.

The measured input is a SlimEdge deployment (``edgelesspart build --views 4 ...``: a 4-view
model on the bundled digits, its per-view curves and pruned backbones), built here on first use
under ``results/slimedge/deployment-fine`` (or ``--deployment``; ratios 0, 0.1 .. 0.9). Each
scenario draws:

* one device per view from the edge catalogue (``edgelesspart/profiling/catalog/*.json``: rpi4-tf,
  rpi4, rpi4-1gb, rpi5, jetson-nano, jetson-orin-nano), latency = host LiteRT curve x factor;
* a memory limit per device, uniform in [0.2, 1.5] x the unpruned backbone's memory (about
  a third of the devices cannot hold the unpruned backbone);
* a failure probability per device, uniform in [0, 0.5].

Per scenario: SlimEdge at the accuracy floor ``unpruned - 2 points`` -- the NSGA-II front checked
on the real model on the validation split (:mod:`edgelesspart.slimedge.verify`: the measured
ratios the runtime deploys, their memory, the real fused accuracy; the purely predicted pick is
kept as ``slimedge_predicted``) -- uniform pruning at the same floor (predicted, continuous
ratios), and no pruning; speedups are slowest-device latency ratios (+ fusion head).
Failures: 1 .. V/2 devices fail (drawn by their failure probabilities); the survivors are
re-planned (:func:`~edgelesspart.slimedge.optimize.replan`) and their predicted accuracy is
compared with the all-devices plan. Predictions are verified on the real model for
``--verify`` scenarios (test split, pruned backbones at the nearest measured ratio not above
the plan's), and the accuracy with half the views lost is measured on the real model too.

Writes ``results/slimedge/sim.json`` and ``sim.png``. Usage::

    .venv/bin/python experiments/slimedge_sim.py [--quick] [--scenarios 1000]
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

CATALOGUE = ("rpi4-tf", "rpi4", "rpi4-1gb", "rpi5", "jetson-nano", "jetson-orin-nano")
OUT = benchlib.ROOT / "results" / "slimedge"
MAX_DROP = 0.02
MEMORY_RANGE = (0.2, 1.5)
FAILURE_RANGE = (0.0, 0.5)
VIEWS = 4
#: the measured ratios (the segment library the runtime deploys from): the verified choice snaps
#: to them, so a finer library than the optimiser's 5-point curves keeps more of its speedup
LIBRARY_RATIOS = tuple(round(0.1 * i, 1) for i in range(10))


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--scenarios", type=int, default=1000)
        parser.add_argument("--deployment", type=Path, default=None)
        parser.add_argument("--verify", type=int, default=20, help="scenarios checked for real")
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--workers", type=int, default=2, help="scenario processes")
        parser.add_argument("--z", type=float, default=None, help="verification confidence")
        parser.add_argument("--dataset", default="digits", help="digits or digits-hard")

    args = benchlib.parse_args(__doc__.splitlines()[0], argv, extra)
    if args.out == benchlib.RESULTS_DIR:
        args.out = OUT
        args.out.mkdir(parents=True, exist_ok=True)
    if args.quick:
        args.scenarios, args.verify, args.epochs = min(args.scenarios, 40), 4, 3
    return args


def cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs, for the host utilisation over the run."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def ensure_deployment(args: Any) -> Path:
    """The measured deployment: reuse ``--deployment``/the cache, or build it (minutes)."""
    name = "deployment-quick" if args.quick else "deployment-fine"
    if args.dataset != "digits":
        name += f"-{args.dataset}"
    path = args.deployment or (args.out / name)
    if (path / "deployment.json").is_file():
        benchlib.log(f"slimedge_sim: reusing the measured deployment {path}")
        return path
    from edgelesspart.profiling.devices import load_device
    from edgelesspart.slimedge import deploy, optimize, verify
    from edgelesspart.slimedge.curves import CurveModel
    from edgelesspart.slimedge.views import digits_views

    benchlib.log(f"slimedge_sim: training the {VIEWS}-view model and measuring its curves")
    data = digits_views(
        VIEWS, seed=args.seed, limit=400 if args.quick else None, dataset=args.dataset
    )
    build = deploy.build_multiview(data, epochs=args.epochs, seed=args.seed,
                                   ratios=deploy.DEFAULT_RATIOS if args.quick else LIBRARY_RATIOS,
                                   finetune_epochs=1 if args.quick else 3)  # fmt: skip
    slots = deploy.slots_for([load_device(d) for d in ("rpi4", "rpi5", "jetson-nano", "rpi4-1gb")])
    model = CurveModel(build.curves)
    bound = optimize.Bound(accuracy_floor=build.curves.base_accuracy - MAX_DROP)
    verifier = verify.PlanVerifier.from_backbones(
        build.model.fusion, build.pruned, build.data.val, build.data.y_val
    )
    chosen = verify.verified_nsga2_plan(model, slots, bound, verifier)
    baselines = {"uniform": optimize.uniform_plan(model, slots, bound),
                 "unpruned": optimize.unpruned_plan(model, slots, bound)}  # fmt: skip
    failures = verify.verified_failure_plans(model, slots, verifier, max_drop=MAX_DROP)
    out = deploy.export_deployment(path, build, slots, chosen, baselines=baselines,
                                   failures=failures, overwrite=True,
                                   max_accuracy_drop=MAX_DROP)  # fmt: skip
    record = json.loads((path / "deployment.json").read_text())
    record["dataset"] = args.dataset  # verify() and split_verifier() rebuild the same views
    (path / "deployment.json").write_text(json.dumps(record, indent=1) + "\n")
    return out


def draw_scenario(rng: np.random.Generator, catalogue: list[Any], unpruned_memory: float) -> dict:
    """One random device mix with memory limits and failure probabilities."""
    from edgelesspart.slimedge.deploy import slots_for
    from edgelesspart.slimedge.optimize import DeviceSlot

    picked = [catalogue[i] for i in rng.integers(0, len(catalogue), VIEWS)]
    memory = rng.uniform(*MEMORY_RANGE, VIEWS) * unpruned_memory
    slots = [DeviceSlot(s.name, s.factor, float(m)) for s, m in zip(slots_for(picked), memory)]
    return {"slots": slots, "failure_p": rng.uniform(*FAILURE_RANGE, VIEWS)}


def run_scenario(
    model: Any,
    scenario: dict,
    rng: np.random.Generator,
    seed: int,
    verifier: Any = None,
    z: float | None = None,
) -> dict:
    """Plans, speedups and failure accuracies of one scenario.

    With a ``verifier`` (validation split), SlimEdge's choice is the verified one (measured
    ratios as deployed, real accuracy); the purely predicted pick is kept as
    ``slimedge_predicted``.
    """
    from edgelesspart.slimedge import optimize

    slots = scenario["slots"]
    floor = optimize.Bound(accuracy_floor=model.curves.base_accuracy - MAX_DROP)
    start = time.perf_counter()
    xs, front = optimize.nsga2_front(model, slots, floor, seed=seed)
    evaluator = optimize.Evaluator(model, slots, range(len(slots)))
    pick = optimize.pick(evaluator.accuracy(xs), evaluator.latency_ms(xs), floor) if front else 0
    predicted = evaluator.plan(xs[pick], "nsga2", floor, time.perf_counter() - start, front)
    slim = predicted
    if verifier is not None:
        extra = {} if z is None else {"z": z}
        slim = verifier.choose(evaluator, floor, xs, seconds=time.perf_counter() - start,
                               front=front, **extra)  # fmt: skip
    uniform = optimize.uniform_plan(model, slots, floor)
    unpruned = optimize.unpruned_plan(model, slots, floor)
    row = {
        "devices": [s.name for s in slots],
        "memory_ratio": [s.memory_bytes / float(model.curves.memory_bytes[0]) for s in slots],
        "slimedge": slim.to_dict() | {"front": len(slim.front)},
        "slimedge_predicted": predicted.to_dict() | {"front": len(front)},
        "speedup_vs_unpruned_predicted": unpruned.latency_ms / predicted.latency_ms,
        "uniform": uniform.to_dict(),
        "unpruned": unpruned.to_dict(),
        "speedup_vs_unpruned": unpruned.latency_ms / slim.latency_ms,
        "speedup_vs_uniform": uniform.latency_ms / slim.latency_ms,
        "failures": {},
    }
    weights = scenario["failure_p"] + 1e-6
    for k in range(1, VIEWS // 2 + 1):
        lost = rng.choice(VIEWS, size=k, replace=False, p=weights / weights.sum())
        alive = [v for v in range(VIEWS) if v not in set(lost.tolist())]
        replanned = optimize.replan(model, slots, alive, max_drop=MAX_DROP, seed=seed)
        kept = model.accuracy(np.asarray(slim.ratios)[None, :], alive)[0]
        row["failures"][str(k)] = {
            "lost": sorted(int(v) for v in lost),
            "replanned_accuracy": replanned.accuracy,
            "kept_ratios_accuracy": float(kept),
            "replan_seconds": replanned.seconds,
            "replanned_latency_ms": replanned.latency_ms,
        }
    return row


def verify(deployment: Path, rows: list[dict], count: int, seed: int) -> dict:
    """Real test accuracy of ``count`` chosen plans and of every half-failed view subset."""
    import keras

    from edgelesspart.slimedge.model import MultiViewModel, fusion_layers
    from edgelesspart.slimedge.views import digits_views

    fusion_layers()
    manifest = json.loads((deployment / "deployment.json").read_text())
    data = digits_views(manifest["views"], seed=seed, dataset=manifest.get("dataset", "digits"))
    load = lambda rel: keras.saving.load_model(deployment / rel, safe_mode=True)  # noqa: E731
    library = {(s["view"], s["ratio"]): s["tflite"].replace(".tflite", ".keras")
               for s in manifest["segments"].values()}  # fmt: skip
    fusion = load("segments/fusion.keras")
    feats = {key: MultiViewModel([load(rel)], fusion).features((data.test[key[0]],))[0]
             for key, rel in library.items()}  # fmt: skip
    probe = MultiViewModel([None] * manifest["views"], fusion)
    everything = (1,) * manifest["views"]
    base = probe.accuracy_from_features(
        [feats[(v, 0.0)] for v in range(4)], data.y_test, everything
    )
    checked = []
    for row in rows[:count]:
        ratios = [_floor_ratio(library, v, r) for v, r in enumerate(row["slimedge"]["ratios"])]
        got = probe.accuracy_from_features([feats[(v, r)] for v, r in enumerate(ratios)],
                                           data.y_test, everything)  # fmt: skip
        checked.append({"ratios": ratios, "test_accuracy": got, "drop_points": 100 * (base - got),
                        "predicted": row["slimedge"]["accuracy"]})  # fmt: skip
    half = [f for f in itertools.combinations(range(4), 2)]
    unpruned = [feats[(v, 0.0)] for v in range(4)]
    halves = [probe.accuracy_from_features(unpruned, data.y_test,
              tuple(1 if v in keep else 0 for v in range(4))) for keep in half]  # fmt: skip
    return {
        "test_accuracy_unpruned": base,
        "plans": checked,
        "within_2_points": sum(c["drop_points"] <= 2.0 + 1e-9 for c in checked),
        "half_failed_test_accuracy": dict(zip(["".join(map(str, h)) for h in half], halves)),
        "half_failed_ratio": statistics.fmean(halves) / base,
    }


def _floor_ratio(library: dict, view: int, ratio: float) -> float:
    below = sorted(r for v, r in library if v == view and r <= ratio + 1e-9)
    return below[-1] if below else 0.0


def summarise(rows: list[dict]) -> dict:
    """Distributions of speedup and failure accuracy over the scenarios."""
    ok = [r for r in rows if r["slimedge"]["feasible"]]
    fits = [r for r in ok if r["unpruned"]["feasible"]]
    uni = [r for r in ok if r["uniform"]["feasible"]]

    def dist(values: list[float]) -> dict:
        if not values:
            return {"n": 0}
        q = np.percentile(values, [5, 25, 50, 75, 95]).tolist()
        return {"n": len(values), "mean": statistics.fmean(values), "p5_p25_p50_p75_p95": q}

    failures = {}
    for k in map(str, range(1, VIEWS // 2 + 1)):
        rel = [r["failures"][k]["replanned_accuracy"] / r["slimedge"]["accuracy"] for r in ok]
        kept = [r["failures"][k]["kept_ratios_accuracy"] / r["slimedge"]["accuracy"] for r in ok]
        secs = [r["failures"][k]["replan_seconds"] for r in ok]
        failures[f"{100 * int(k) // VIEWS}%"] = {
            "accuracy_ratio_replanned": dist(rel), "accuracy_ratio_kept_ratios": dist(kept),
            "replan_seconds": dist(secs),
        }  # fmt: skip
    return {
        "scenarios": len(rows),
        "slimedge_feasible": len(ok),
        "speedup_vs_unpruned_all": dist([r["speedup_vs_unpruned"] for r in ok]),
        "speedup_vs_unpruned_where_unpruned_fits": dist([r["speedup_vs_unpruned"] for r in fits]),
        "speedup_vs_unpruned_predicted_choice": dist(
            [
                r["speedup_vs_unpruned_predicted"]
                for r in rows
                if r["slimedge_predicted"]["feasible"]
            ]
        ),
        "speedup_vs_uniform_where_uniform_feasible": dist([r["speedup_vs_uniform"] for r in uni]),
        "uniform_infeasible": len(ok) - len(uni),
        "unpruned_does_not_fit": len(ok) - len(fits),
        "failures": failures,
    }


def plot(rows: list[dict], path: Path) -> None:
    """Speedup histograms and accuracy ratio vs failed share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["slimedge"]["feasible"]]
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    axes[0].hist([r["speedup_vs_unpruned"] for r in ok], bins=40)
    axes[0].set_title("speedup vs no pruning (same floor)")
    uni = [r["speedup_vs_uniform"] for r in ok if r["uniform"]["feasible"]]
    axes[1].hist(uni, bins=40)
    axes[1].set_title("speedup vs uniform pruning (same floor)")
    shares = ["0%"] + [f"{100 * k // VIEWS}%" for k in range(1, VIEWS // 2 + 1)]
    data = [[1.0] * len(ok)] + [
        [r["failures"][str(k)]["replanned_accuracy"] / r["slimedge"]["accuracy"] for r in ok]
        for k in range(1, VIEWS // 2 + 1)
    ]
    axes[2].boxplot(data)
    axes[2].set_xticks(range(1, len(shares) + 1), shares)
    axes[2].axhline(0.9, color="red", linestyle="--", label="P11 goal 0.9")
    axes[2].set_title("accuracy / all-devices accuracy vs devices failed")
    axes[2].legend()
    for ax in axes[:2]:
        ax.set_xlabel("x faster")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_WORKER: dict[str, Any] = {}


def _init_worker(curves: dict, deployment: str, seed: int, z: float | None = None) -> None:
    """Per worker process: the curve model, the device catalogue and the validation-split
    verifier (every pruned backbone's features), loaded once."""
    from edgelesspart.profiling.devices import load_device
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves

    _WORKER["model"] = CurveModel(ViewCurves.from_dict(curves))
    _WORKER["catalogue"] = [load_device(d) for d in CATALOGUE]
    _WORKER["verifier"] = split_verifier(Path(deployment), seed, "val")
    _WORKER["z"] = z


def split_verifier(deployment: Path, seed: int, split: str) -> Any:
    """A :class:`PlanVerifier` over the deployment's pruned backbones on one split."""
    import keras

    from edgelesspart.slimedge.model import fusion_layers
    from edgelesspart.slimedge.verify import PlanVerifier
    from edgelesspart.slimedge.views import digits_views

    fusion_layers()
    manifest = json.loads((deployment / "deployment.json").read_text())
    data = digits_views(manifest["views"], seed=seed, dataset=manifest.get("dataset", "digits"))
    load = lambda rel: keras.saving.load_model(deployment / rel, safe_mode=True)  # noqa: E731
    pruned = {(s["view"], s["ratio"]): load(s["tflite"].replace(".tflite", ".keras"))
              for s in manifest["segments"].values()}  # fmt: skip
    views, y = (data.val, data.y_val) if split == "val" else (data.test, data.y_test)
    return PlanVerifier.from_backbones(load("segments/fusion.keras"), pruned, views, y)


def _scenario_job(job: tuple[int, int]) -> dict:
    """Scenario ``i``: its own random stream ``(seed, i)``, so results do not depend on workers."""
    i, seed = job
    rng = np.random.default_rng([seed, i])
    model = _WORKER["model"]
    scenario = draw_scenario(rng, _WORKER["catalogue"], float(model.curves.memory_bytes[0]))
    return run_scenario(model, scenario, rng, seed=i, verifier=_WORKER["verifier"], z=_WORKER["z"])


def simulate(args: Any) -> dict:
    """Run everything; returns the JSON record (also written to ``sim.json``)."""
    from edgelesspart.slimedge.curves import ViewCurves

    start, cpu0 = time.perf_counter(), cpu_times()
    deployment = ensure_deployment(args)
    curves = ViewCurves.load(deployment / "curves.json")
    jobs = [(i, args.seed) for i in range(args.scenarios)]
    context = multiprocessing.get_context("spawn")  # no fork after TensorFlow was imported
    init = (curves.to_dict(), str(deployment), args.seed, args.z)
    with ProcessPoolExecutor(args.workers, context, _init_worker, init) as pool:
        rows = []
        for row in pool.map(_scenario_job, jobs, chunksize=10):
            rows.append(row)
            if len(rows) % 100 == 0:
                benchlib.log(f"slimedge_sim: {len(rows)}/{args.scenarios} scenarios")
    summary = summarise(rows)
    checked = verify(deployment, [r for r in rows if r["slimedge"]["feasible"]], args.verify,
                     args.seed)  # fmt: skip
    cpu1 = cpu_times()
    util = None
    if cpu0 and cpu1 and cpu1[1] > cpu0[1]:
        util = round(100 * (cpu1[0] - cpu0[0]) / (cpu1[1] - cpu0[1]), 1)
    record = {
        "summary": summary,
        "verification": checked,
        "curves": curves.to_dict(),
        "deployment": str(deployment),
        "settings": {"max_drop": MAX_DROP, "workers": args.workers, "z": args.z,
                     "memory_range": MEMORY_RANGE,
                     "failure_range": FAILURE_RANGE, "catalogue": CATALOGUE, "views": VIEWS},
        "host_cpu_utilisation_percent": util,
        "machine": benchlib.machine_info(),
        "seconds": round(time.perf_counter() - start, 1),
        "quick": args.quick,
        "scenarios": rows,
    }  # fmt: skip
    (args.out / "sim.json").write_text(
        json.dumps(benchlib.to_json_ready(record), indent=1, allow_nan=False) + "\n"
    )
    plot(rows, args.out / "sim.png")
    return record


def main(argv: list[str] | None = None) -> int:
    """Simulate and print the headline distributions."""
    args = _args(argv)
    record = simulate(args)
    s, v = record["summary"], record["verification"]
    print(json.dumps({k: s[k] for k in s if k != "failures"}, indent=1))
    print(json.dumps(s["failures"], indent=1))
    print(
        f"verified on the real model: {v['within_2_points']}/{len(v['plans'])} plans within 2 "
        f"points (test); half the views failed: {v['half_failed_ratio']:.3f} of all-views"
    )
    print(f"wrote {args.out / 'sim.json'} and sim.png in {record['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
