"""P7: wall time of ``make demo`` (build, inspect, evaluate, then serve and replay the bundle).

Runs ``make demo`` in a subprocess from the repository root; it reuses ``.venv`` (already
installed: ``make -o .venv/.installed`` keeps make from re-running the one-time ``pip install``
when ``pyproject.toml`` is newer than the install stamp), and writes the demo bundle under
``results/bench/demo-bundle`` (``DEMO_BUNDLE=``) so it never overwrites a bundle someone else is
using. The work is otherwise that of plain ``make demo``: build, inspect, evaluate, then
``serve-cloud`` + ``serve-edge`` as real processes and ``edgelesspart replay`` of the test split
as PNG images (``experiments/demo_serve.py``). The replay's report (edge share, accuracy,
latency, cost) is copied into the result, with the final classifier's test accuracy, so the
"demo at the default threshold" goal (>= 50 % answered on the edge, accuracy within 1 point) is
recorded beside the wall time. The load average before and after and the host CPU utilisation
during the run are recorded: other processes on the machine slow the build down.
``--quick`` only checks the target with ``make -n`` (no timing).

Usage::

    .venv/bin/python experiments/bench_p7_demo.py [--quick]
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

GOAL_S = 300.0
STAMP = ".venv/.installed"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=900.0, help="give up after seconds")

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def _cpu_times() -> tuple[float, float] | None:
    """(busy, total) jiffies of all CPUs from /proc/stat, or None off Linux."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def cpu_utilisation(before: tuple[float, float] | None, after: tuple[float, float] | None):
    """Share of all CPUs busy between two :func:`_cpu_times` readings (whole host)."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return round((after[0] - before[0]) / (after[1] - before[1]), 3)


def _children_cpu_s(before: resource.struct_rusage) -> float:
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return round(used, 1)


def demo_goal(bundle: Path) -> dict[str, Any]:
    """The replay report and the final classifier's test accuracy, and whether the goal holds."""
    try:
        report = json.loads((bundle / "replay.json").read_text(encoding="utf-8"))
        manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"measured": False}
    final = manifest.get("training", {}).get("accuracy", {}).get("test", {}).get("final")
    share, accuracy = report.get("edge_share"), report.get("accuracy")
    drop = None if final is None or accuracy is None else (final - accuracy) * 100
    return {
        "measured": True,
        "edge_share": share,
        "accuracy": accuracy,
        "final_accuracy": final,
        "accuracy_drop_points": drop,
        "threshold": report.get("threshold"),
        "met": bool(share is not None and share >= 0.5 and drop is not None and drop <= 1.0),
        "replay": report,
        "serving": manifest.get("serving", {}),
    }


def run_demo(out: Path, dry_run: bool, timeout: float) -> dict[str, Any]:
    """Run (or dry-run) ``make demo``; wall seconds, exit code and the output's tail."""
    bundle = out / "demo-bundle"
    # -o: treat the install stamp as up to date, so a stale stamp (pyproject.toml touched since
    # the last install) times the demo's own work, not a pip install.
    cmd = ["make", "-n" if dry_run else "-s", "-o", STAMP, "demo", f"DEMO_BUNDLE={bundle}"]
    before = benchlib.load_average()
    cpu_before = _cpu_times()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = benchlib.run_command(
        cmd, timeout, cwd=benchlib.ROOT, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    )
    code, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    if code is None:
        tail = f"killed after {timeout:g} s: {tail[-2000:]}"
    return {
        "command": " ".join(cmd),
        "wall_s": done.seconds,
        "returncode": code,
        "load_before": before,
        "load_after": benchlib.load_average(),
        "host_cpu_utilisation": cpu_utilisation(cpu_before, _cpu_times()),
        # CPU seconds of make and everything it ran: load-independent; on an idle 2-core host
        # the wall time is at least cpu_s / 2
        "demo_cpu_s": _children_cpu_s(children_before),
        "output_tail": tail,
        "demo_goal": {} if dry_run else demo_goal(bundle),
    }


def _goal_text(goal: dict[str, Any]) -> str:
    if not goal.get("measured"):
        return "served replay not measured"
    drop = goal["accuracy_drop_points"]
    return (
        f"served replay: {goal['edge_share']:.1%} on the edge, accuracy "
        f"{goal['accuracy']:.1%} vs final {goal['final_accuracy']:.1%} "
        f"({'n/a' if drop is None else f'{-drop:+.1f}'} pt) at threshold {goal['threshold']}: "
        + ("goal met" if goal["met"] else "goal MISSED")
    )


def main(argv: list[str] | None = None) -> int:
    """Run P7 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    details = run_demo(args.out, args.quick, args.timeout)
    ok = details["returncode"] == 0
    wall = None if args.quick or not ok else details["wall_s"]
    met = None if args.quick else bool(ok and wall <= GOAL_S)
    label = "make demo wall" if ok else f"make demo wall (FAILED rc={details['returncode']})"
    print(details["output_tail"][-800:])
    result = benchlib.BenchResult(
        bench="P7",
        what="`make demo` wall time (build + inspect + evaluate + served replay of the test "
        "split)",
        baseline="none (absolute goal)",
        headline=benchlib.Headline(
            "P7",
            label,
            wall,
            " s",
            f"<= {GOAL_S:g} s on 2 cores",
            met,
            ours="" if wall is None else f"{wall:.0f} s (load {details['load_before']} before, "
            f"{details['demo_cpu_s']:.0f} CPU s); "
            + _goal_text(details.get("demo_goal", {})),
            reference="none (absolute goal)",
        ),
        quick=args.quick,
        reduced=["--quick: `make -n demo` only, not timed"] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
