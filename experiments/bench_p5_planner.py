"""P5: the planner's chosen plan vs the brute-force optimum, and how long planning takes.

On a real host profile of ResNet50 (the P1 bundle's ``profile.json`` when present, else profiled
here with LiteRT) scaled to each edge device, for every scenario (edge device x link x exits per
part x placement rule) this runs ``plan_objective(objective="expected-latency")`` and
``brute_force_optimum`` (every split x every exit subset with at most the same number of exits
per part) on the same inputs, interleaved. Exit rates are the planner's documented prior
(``default_exit_rates``), the same for both.

Headline: the worst ratio (predicted expected latency of the chosen plan / optimum) of the
planner as ``edgelesspart build --constraint expected-latency`` runs it (``search="placement"``)
over all scenarios, and the slowest planning time. ``search="exhaustive"`` is reported too.

Usage::

    .venv/bin/python experiments/bench_p5_planner.py [--quick] [--profile profile.json]
"""

from __future__ import annotations

import inspect
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

GOAL_RATIO = 1.02
GOAL_SECONDS = 1.0
EDGE_DEVICES = ("rpi4", "jetson-orin-nano")
LINKS = ("wifi", "lte", "5g", "3g")
EXITS = ((2, 2), (3, 3))
PLACEMENTS = ("linear", "pareto")
CLOUD_DEVICE = "gcf-2gb"
P1_PROFILE = Path("bundles") / "p1-resnet50" / "profile.json"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--profile", type=Path, default=None, help="host profile.json")
        parser.add_argument("--repeats", type=int, default=None, help="timed runs per plan")

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def host_profile(args: Any) -> tuple[Any, str]:
    """The host profile to plan on and where it came from."""
    from edgelesspart.profile import ModelProfile

    candidates = [args.profile] if args.profile else [args.out / P1_PROFILE]
    for path in candidates:
        if path is not None and Path(path).is_file():
            return ModelProfile.load(path), str(path)
    from edgelesspart import profiler, zoo

    name, size, cuts, method = (
        ("small_cnn", 32, 8, "tf-function") if args.quick else ("resnet50", 32, 20, "litert")
    )
    model = zoo.build_model(name, (size, size, 3), 10, seed=args.seed)
    benchlib.log(f"profiling {name} ({cuts} cut points, {method})")
    profile = profiler.profile_model(
        model, model_name=name, max_cut_points=cuts, method=method, show_progress=False
    )
    return profile, f"profiled here: {name} {size}x{size}x3, {cuts} cut points, {method}"


def _codec_kwargs(fn: Any) -> dict[str, Any]:
    """Plan with raw boundaries where the planner takes a codec (both sides alike)."""
    return {"codec": "raw"} if "codec" in inspect.signature(fn).parameters else {}


def scenario(host: Any, edge_name: str, link_name: str, exits: tuple[int, int], repeats: int):
    """Chosen plans (each placement rule and the exhaustive search) vs the brute force."""
    from edgelesspart import devices, links, planner

    edge_dev = devices.load_device(edge_name)
    cloud_dev = devices.load_device(CLOUD_DEVICE)
    common = {
        "objective": "expected-latency",
        "link": links.load_link(link_name),
        "exits_per_part": exits,
        "edge_device": edge_dev,
        "cloud_device": cloud_dev,
    }
    edge = devices.profile_for_device(host, edge_dev)
    cloud = devices.profile_for_device(host, cloud_dev)
    calls = {
        f"placement-{p}": lambda p=p: planner.plan_objective(
            edge, cloud, placement=p, **common, **_codec_kwargs(planner.plan_objective)
        )
        for p in PLACEMENTS
    }
    calls["exhaustive"] = lambda: planner.plan_objective(
        edge, cloud, search="exhaustive", **common, **_codec_kwargs(planner.plan_objective)
    )
    calls["brute-force"] = lambda: planner.brute_force_optimum(
        edge, cloud, **common, **_codec_kwargs(planner.brute_force_optimum)
    )
    times = benchlib.interleaved(calls, repeats=repeats, warmup=1)
    optimum = calls["brute-force"]()
    rows = {
        "brute-force": {
            "value_ms": optimum.value,
            "split": optimum.split,
            "evaluated": optimum.evaluated,
            "seconds": statistics.median(times["brute-force"]) / 1000.0,
        }
    }
    for name in (*(f"placement-{p}" for p in PLACEMENTS), "exhaustive"):
        plan = calls[name]()
        value = float(plan.parameters["objective_value"])
        rows[name] = {
            "value_ms": value,
            "ratio": value / optimum.value,
            "split": plan.split,
            "exits": [list(s.exits) for s in plan.stages],
            "seconds": statistics.median(times[name]) / 1000.0,
        }
    return {"edge": edge_name, "link": link_name, "exits_per_part": list(exits), "plans": rows}


def _worst(rows: list[dict], name: str, key: str) -> float:
    return max(r["plans"][name][key] for r in rows)


def main(argv: list[str] | None = None) -> int:
    """Run P5 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    host, source = host_profile(args)
    repeats = args.repeats or (2 if args.quick else 5)
    grid = list(itertools.product(EDGE_DEVICES, LINKS, EXITS))
    if args.quick:
        grid = grid[:2]
    rows = [scenario(host, e, ln, x, repeats) for e, ln, x in grid]
    default = "placement-linear"
    worst = {
        n: _worst(rows, n, "ratio") for n in (*(f"placement-{p}" for p in PLACEMENTS), "exhaustive")
    }
    slowest = max(_worst(rows, n, "seconds") for n in worst)
    for r in rows:
        p = r["plans"]
        print(
            f"{r['edge']:>16} {r['link']:>5} {r['exits_per_part']}: linear "
            f"{p['placement-linear']['ratio']:.3f}x pareto {p['placement-pareto']['ratio']:.3f}x"
            f" exhaustive {p['exhaustive']['ratio']:.4f}x  (brute force "
            f"{p['brute-force']['seconds']:.3f} s, {p['brute-force']['evaluated']} combinations)"
        )
    ratio = worst[default]
    details = {
        "profile_source": source,
        "model": host.model,
        "cut_points": len(host.cut_points),
        "cloud_device": CLOUD_DEVICE,
        "exit_rates": "default_exit_rates (the planner's documented prior)",
        "headline_search": "plan_objective(search='placement', placement='linear'), the build "
        "default for --constraint expected-latency",
        "worst_ratio": worst,
        "slowest_planning_seconds": slowest,
        "scenarios": rows,
    }
    result = benchlib.BenchResult(
        bench="P5",
        what="predicted expected latency of the chosen plan, and planning time (ResNet50)",
        baseline="brute-force optimum over every split x exit subset",
        headline=benchlib.Headline(
            "P5",
            f"plan/optimum worst (planning {slowest:.3f} s)",
            ratio,
            "x",
            f"<= {GOAL_RATIO}x, < {GOAL_SECONDS:g} s",
            ratio <= GOAL_RATIO and slowest < GOAL_SECONDS,
        ),
        quick=args.quick,
        reduced=[f"{len(grid)} scenarios; {source}"] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
