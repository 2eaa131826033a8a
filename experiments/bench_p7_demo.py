"""P7: wall time of ``make demo`` (build, inspect and evaluate the default bundle).

Runs ``make demo`` in a subprocess from the repository root; it reuses ``.venv`` (already
installed: ``make -o .venv/.installed`` keeps make from re-running the one-time ``pip install``
when ``pyproject.toml`` is newer than the install stamp), and writes the demo bundle under
``results/bench/demo-bundle`` (``DEMO_BUNDLE=``) so it never overwrites a bundle someone else is
using. The work is otherwise that of plain ``make demo``: build, inspect, evaluate. The load
average before and after is recorded: other processes on the machine slow the build down.
``--quick`` only checks the target with ``make -n`` (no timing).

Usage::

    .venv/bin/python experiments/bench_p7_demo.py [--quick]
"""

from __future__ import annotations

import os
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


def run_demo(out: Path, dry_run: bool, timeout: float) -> dict[str, Any]:
    """Run (or dry-run) ``make demo``; wall seconds, exit code and the output's tail."""
    bundle = out / "demo-bundle"
    # -o: treat the install stamp as up to date, so a stale stamp (pyproject.toml touched since
    # the last install) times the demo's own work, not a pip install.
    cmd = ["make", "-n" if dry_run else "-s", "-o", STAMP, "demo", f"DEMO_BUNDLE={bundle}"]
    before = benchlib.load_average()
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
        "output_tail": tail,
    }


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
        what="`make demo` wall time (build + inspect + evaluate the default bundle)",
        baseline="none (absolute goal)",
        headline=benchlib.Headline(
            "P7",
            label,
            wall,
            " s",
            f"<= {GOAL_S:g} s on 2 cores",
            met,
            ours="" if wall is None else f"{wall:.0f} s (load {details['load_before']} before)",
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
