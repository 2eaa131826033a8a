"""Run every benchmark (P1-P12) in sequence within a total time budget; print and save a table.

``make bench`` runs this. Each benchmark runs as its own process (so one model's memory is
freed before the next). Its time limit is what is left of the budget minus the reserve of every
benchmark after it, so one slow benchmark cannot starve the rest; what does not finish, fails or
finds no time left is reported as such, never silently dropped, and a benchmark's old JSON is
deleted before it runs. Writes ``results/bench/summary.json`` and ``results/bench/summary.md``
(the table ``id | what | ours | baseline | ratio | goal | met? | command`` and the machine)
next to each benchmark's own JSON.

What is reduced to fit on 2 cores (every script prints its own ``reduced:`` lines;
``docs/benchmarks.md`` has the table): P1 trains each zoo backbone on digits until its
validation accuracy reaches 98.5 % (at most 40 epochs; InceptionV3 4) and caches it; the serving
benchmarks (P2, P3, P4, P6) use small bundles on digits; P4 runs on P1's ResNet50 bundle when it
exists; P8 and P9 emulate Raspberry-Pi-speed nodes by sleeping; P10 simulates 1,000 device mixes
on the measured curves of a 4-view digits model.

Usage::

    .venv/bin/python experiments/bench_all.py [--quick] [--strict] [--budget S] [--only P2,P5]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import benchtable  # noqa: E402

HERE = Path(__file__).resolve().parent
#: (id, script, reserve seconds) in run order: P7 first on a quiet machine, P1 before P4 (its
#: ResNet50 bundle). The reserve is what a benchmark is expected to need at
#: full size; while one runs, every later one's reserve is held back from its time limit.
BENCHES = (
    ("P7", "bench_p7_demo.py", 300.0, 240.0),
    # P1 trains and caches its three backbones on the first run (about 50 min on 2 busy cores;
    # `bench_p1_exits.py --backbones-only` does it ahead); later runs reuse results/bench/backbones.
    ("P1", "bench_p1_exits.py", 1800.0, 240.0),
    ("P5", "bench_p5_planner.py", 90.0, 60.0),
    ("P4", "bench_p4_payload.py", 60.0, 120.0),
    ("P2", "bench_p2_executor.py", 60.0, 120.0),
    ("P3", "bench_p3_throughput.py", 240.0, 120.0),
    ("P6", "bench_p6_latency.py", 240.0, 120.0),
    ("P9", "bench_p9_dynamic.py", 600.0, 180.0),
    ("P10", "bench_p10_slimedge.py", 1500.0, 180.0),
    ("P11", "bench_p11_slimedge.py", 20.0, 60.0),
    ("P8", "bench_p8_pipeline.py", 720.0, 180.0),
    # P12 trains a 5-stage chain CNN width bundle with exit heads per width (cached), then its
    # arms on Ray; quick: 486 s at nice 10 and load 10-17, so a reserve of 360 s on a CI host.
    ("P12", "bench_p12_composed.py", 600.0, 360.0),
)
#: The full-size reserves (third column) add up to about 94 minutes: a first `make bench` trains
#: and exports every model it measures (P1's backbones, P9's width bundles, P10's multi-view
#: deployment, P8's ResNet50 export); a second one reuses them and takes about half of that.
#: The fourth column is the reserve of ``--quick`` (``make bench-smoke``, run by CI so that a
#: change that breaks a benchmark script does not land): generous for 2 busy cores, since a
#: smoke run must finish every script rather than race it.
DEFAULT_BUDGET_S = 6000.0
#: ``--quick``'s default budget: the sum of the quick reserves.
QUICK_BUDGET_S = sum(b[3] for b in BENCHES)


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument(
            "--budget",
            type=float,
            default=None,
            help=f"seconds (default {DEFAULT_BUDGET_S:.0f}; with --quick {QUICK_BUDGET_S:.0f})",
        )
        parser.add_argument(
            "--strict",
            action="store_true",
            help="exit 1 unless every benchmark ran to completion and wrote its JSON "
            "(make bench-smoke)",
        )
        parser.add_argument("--only", default=None, help="comma-separated ids, e.g. P2,P5")

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def command(script: str, args: Any) -> list[str]:
    """The command line of one benchmark."""
    cmd = [sys.executable, str(HERE / script)]
    if args.out.resolve() != benchlib.RESULTS_DIR.resolve():
        cmd += ["--out", str(args.out)]
    if args.quick:
        cmd.append("--quick")
    p1_resnet = args.out / "bundles" / "p1-resnet50" / "manifest.json"
    if script.startswith("bench_p4") and p1_resnet.is_file() and not args.quick:
        cmd += ["--bundle", str(p1_resnet.parent)]
    return cmd


def shown_command(script: str, cmd: list[str]) -> str:
    """``cmd`` as a user would type it from the repository root."""
    rest = [benchlib.relative_to_root(a) for a in cmd[2:]]
    return " ".join([".venv/bin/python", f"experiments/{script}", *rest])


def run_one(bench: str, script: str, args: Any, limit_s: float) -> dict[str, Any]:
    """Run one benchmark for at most ``limit_s`` seconds; its record, or a placeholder."""
    cmd = command(script, args)
    shown = shown_command(script, cmd)
    result_path = args.out / f"{bench.lower()}.json"
    result_path.unlink(missing_ok=True)  # never report a figure from an earlier run
    start = time.perf_counter()
    benchlib.log(f"== {bench}: {shown} (time limit {limit_s:.0f} s)")
    done = benchlib.run_command(cmd, limit_s, cwd=benchlib.ROOT)
    if done.returncode is None:
        status = f"not finished within {limit_s:.0f} s"
    else:
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
    lines = done.stdout.strip().splitlines()
    tail = done.stderr[-2000:] if status != "ok" else ""
    seconds = round(time.perf_counter() - start, 1)
    record = _load(result_path) if status == "ok" else None
    if record is None:
        if status == "ok":
            status = "finished without writing its JSON"
        benchlib.log(f"{bench}: {status}\n{tail}")
        return {
            "bench": bench,
            "status": status,
            "command": shown,
            "seconds": seconds,
            "last_line": lines[-1] if lines else None,
            "stderr_tail": tail,
        }
    record["command"] = shown
    record["wall_seconds"] = seconds
    return record


def _load(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if benchtable.is_record(data) else None


def not_run(bench: str, script: str) -> dict[str, Any]:
    """The placeholder of a benchmark the budget had no time left for."""
    return {
        "bench": bench,
        "status": "not run: budget spent",
        "command": f".venv/bin/python experiments/{script}",
        "seconds": 0.0,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    """``summary.md``: the table, the machine line and the total time."""
    machine = summary["machine"]
    quick = ", --quick (smoke test: figures are not meaningful)" if summary["quick"] else ""
    return (
        benchtable.markdown_table(summary["benchmarks"])
        + "\n"
        + benchtable.machine_line(machine, summary["machine_at_start"].get("load_average"))
        + f"\n\nTotal {summary['total_seconds']:.0f} s (budget {summary['budget_seconds']:.0f} s)"
        + f"{quick}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, write summary.json and summary.md."""
    args = _args(argv)
    if args.budget is None:
        args.budget = QUICK_BUDGET_S if args.quick else DEFAULT_BUDGET_S
    column = 3 if args.quick else 2
    wanted = {b.strip().upper() for b in args.only.split(",")} if args.only else None
    benches = [b for b in BENCHES if wanted is None or b[0] in wanted]
    start = time.perf_counter()
    machine_before = benchlib.machine_info()
    records = []
    for i, (bench, script, *_) in enumerate(benches):
        remaining = args.budget - (time.perf_counter() - start)
        limit = benchlib.timeout_for(remaining, [b[column] for b in benches[i + 1 :]])
        if remaining <= 5:
            records.append(not_run(bench, script))
            (args.out / f"{bench.lower()}.json").unlink(missing_ok=True)
        else:
            records.append(run_one(bench, script, args, limit))
        head = records[-1].get("headline")
        print(head["line"] if head else f"{bench}: {records[-1]['status']}", flush=True)
    summary = {
        "schema": benchlib.SCHEMA,
        "machine": benchlib.machine_info(),
        "machine_at_start": machine_before,
        "total_seconds": round(time.perf_counter() - start, 1),
        "budget_seconds": args.budget,
        "quick": args.quick,
        "benchmarks": records,
    }
    (args.out / "summary.json").write_text(
        json.dumps(benchlib.to_json_ready(summary), indent=2, allow_nan=False) + "\n"
    )
    md = summary_markdown(summary)
    (args.out / "summary.md").write_text(md)
    print(md)
    verdicts = [r["headline"]["verdict"] if "headline" in r else "NOT RUN" for r in records]
    met, missed = verdicts.count("MET"), verdicts.count("MISSED")
    print(
        f"bench_all: {met} met, {missed} missed, {len(verdicts) - met - missed} other, "
        f"{summary['total_seconds']:.0f} s (budget {args.budget:.0f} s)"
    )
    broken = [r["bench"] for r in records if "headline" not in r]
    if args.strict and broken:
        print(f"bench_all: did not complete: {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
