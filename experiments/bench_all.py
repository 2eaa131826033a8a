"""Run every benchmark (P1-P7) in sequence within a total time budget; print and save a table.

``make bench`` runs this. Each benchmark runs as its own process (so one model's memory is
freed before the next) with whatever is left of the budget as its time limit; what does not
fit is reported as not run, never silently dropped. Writes ``results/bench/summary.json`` and
``results/bench/summary.md`` next to each benchmark's own JSON.

What is reduced to fit 20 minutes on 2 cores (every script prints its own ``reduced:`` lines):
P1 trains each zoo model for 2 backbone + 2 exit epochs on digits with 8 candidate cut points
and times 120 test samples; the serving benchmarks (P2, P3, P4, P6) use the default small-CNN
bundle trained for 4 epochs; P4 runs on P1's ResNet50 bundle when it exists.

Usage::

    .venv/bin/python experiments/bench_all.py [--quick] [--budget 1200] [--only P2,P5]
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

HERE = Path(__file__).resolve().parent
#: (id, script) in run order: P7 first on a quiet machine, P1 before P5 and P4 (its bundles).
BENCHES = (
    ("P7", "bench_p7_demo.py"),
    ("P1", "bench_p1_exits.py"),
    ("P5", "bench_p5_planner.py"),
    ("P4", "bench_p4_payload.py"),
    ("P2", "bench_p2_executor.py"),
    ("P3", "bench_p3_throughput.py"),
    ("P6", "bench_p6_latency.py"),
)
DEFAULT_BUDGET_S = 1200.0


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--budget", type=float, default=DEFAULT_BUDGET_S, help="seconds")
        parser.add_argument("--only", default=None, help="comma-separated ids, e.g. P2,P5")

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def command(script: str, args: Any) -> list[str]:
    """The command line of one benchmark (relative script path, as a user would type it)."""
    cmd = [sys.executable, str(HERE / script), "--out", str(args.out)]
    if args.quick:
        cmd.append("--quick")
    p1_resnet = args.out / "bundles" / "p1-resnet50" / "manifest.json"
    if script.startswith("bench_p4") and p1_resnet.is_file() and not args.quick:
        cmd += ["--bundle", str(p1_resnet.parent)]
    return cmd


def run_one(bench: str, script: str, args: Any, remaining: float) -> dict[str, Any]:
    """Run one benchmark within ``remaining`` seconds; its headline line and JSON."""
    cmd = command(script, args)
    shown = " ".join([".venv/bin/python", f"experiments/{script}", *cmd[2:]])
    start = time.perf_counter()
    benchlib.log(f"== {bench}: {shown} (budget left {remaining:.0f} s)")
    try:
        done = subprocess.run(
            cmd,
            cwd=benchlib.ROOT,
            capture_output=True,
            text=True,
            timeout=max(1.0, remaining),
            check=False,
        )
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        lines = done.stdout.strip().splitlines()
        tail = done.stderr[-2000:] if done.returncode else ""
    except subprocess.TimeoutExpired:
        status, lines, tail = "not finished within the budget", [], ""
    seconds = time.perf_counter() - start
    data = _load(args.out / f"{bench.lower()}.json") if status == "ok" else None
    return {
        "bench": bench,
        "command": shown,
        "status": status,
        "seconds": round(seconds, 1),
        "headline": lines[-1] if lines and status == "ok" else None,
        "verdict": data["headline"]["verdict"] if data else "NOT RUN" if not lines else "ERROR",
        "what": data["what"] if data else None,
        "baseline": data["baseline"] if data else None,
        "reduced": data["reduced"] if data else [],
        "stderr_tail": tail,
    }


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(rows: list[dict[str, Any]], machine: dict[str, Any]) -> str:
    """The Markdown summary: one row per benchmark, then the machine."""
    lines = [
        "| id | result (last line of the script) | verdict | seconds | command |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        figure = r["headline"] or r["status"]
        lines.append(
            f"| {r['bench']} | {figure} | {r['verdict']} | {r['seconds']} | `{r['command']}` |"
        )
    lines += [
        "",
        f"Machine: {machine['cpu_model']}, {machine['cores']} cores, load {machine['load_average']}"
        f"; Python {machine['python']}, TensorFlow {machine['tensorflow']}, ai-edge-litert "
        f"{machine['ai_edge_litert']}; commit {machine['git_commit']}"
        f"{' (uncommitted changes)' if machine['git_dirty'] else ''}; {machine['date']}.",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks, print the table, write summary.json and summary.md."""
    args = _args(argv)
    wanted = {b.strip().upper() for b in args.only.split(",")} if args.only else None
    start = time.perf_counter()
    machine_before = benchlib.machine_info()
    rows = []
    for bench, script in BENCHES:
        if wanted is not None and bench not in wanted:
            continue
        remaining = args.budget - (time.perf_counter() - start)
        if remaining <= 5:
            rows.append(
                {
                    "bench": bench,
                    "command": f"experiments/{script}",
                    "seconds": 0,
                    "status": "not run: budget spent",
                    "headline": None,
                    "verdict": "NOT RUN",
                    "reduced": [],
                }
            )
            continue
        rows.append(run_one(bench, script, args, remaining))
        print(rows[-1]["headline"] or f"{bench}: {rows[-1]['status']}", flush=True)
    total = time.perf_counter() - start
    machine = benchlib.machine_info()
    summary = {
        "schema": benchlib.SCHEMA,
        "machine": machine,
        "machine_at_start": machine_before,
        "total_seconds": round(total, 1),
        "budget_seconds": args.budget,
        "quick": args.quick,
        "benchmarks": sorted(rows, key=lambda r: r["bench"]),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    md = table(summary["benchmarks"], machine)
    md += (
        f"\nTotal {total:.0f} s (budget {args.budget:.0f} s){', --quick' if args.quick else ''}.\n"
    )
    (args.out / "summary.md").write_text(md)
    print(md)
    verdicts = [r["verdict"] for r in rows]
    print(
        f"bench_all: {verdicts.count('MET')} met, {verdicts.count('MISSED')} missed, "
        f"{len(verdicts) - verdicts.count('MET') - verdicts.count('MISSED')} other, "
        f"{total:.0f} s (budget {args.budget:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
