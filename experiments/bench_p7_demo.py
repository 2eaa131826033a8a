"""P7: wall time of ``make demo`` (build, inspect and evaluate the default bundle).

Runs ``make demo`` in a subprocess from the repository root; it reuses ``.venv`` (already
installed), and writes the demo bundle under ``results/bench/demo-bundle`` (``DEMO_BUNDLE=``) so
it never overwrites a bundle someone else is using. The work is the same as plain
``make demo``. The load average before and after is recorded: other processes on the machine
slow the build down. ``--quick`` only checks the target with ``make -n`` (no timing).

Usage::

    .venv/bin/python experiments/bench_p7_demo.py [--quick]
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

GOAL_S = 300.0


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--timeout", type=float, default=900.0, help="give up after seconds")

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def run_demo(out: Path, dry_run: bool, timeout: float) -> dict[str, Any]:
    """Run (or dry-run) ``make demo``; wall seconds, exit code and the output's tail."""
    bundle = out / "demo-bundle"
    cmd = ["make", "-n" if dry_run else "-s", "demo", f"DEMO_BUNDLE={bundle}"]
    before = benchlib.load_average()
    start = time.perf_counter()
    try:
        done = subprocess.run(
            cmd, cwd=benchlib.ROOT, capture_output=True, text=True, timeout=timeout, check=False,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
        )
        code, tail = done.returncode, (done.stdout + done.stderr)[-3000:]
    except subprocess.TimeoutExpired as exc:
        code, tail = None, f"timed out after {timeout} s: {str(exc.stdout or '')[-2000:]}"
    return {
        "command": " ".join(cmd),
        "wall_s": time.perf_counter() - start,
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
        headline=benchlib.Headline("P7", label, wall, " s", f"<= {GOAL_S:g} s on 2 cores", met),
        quick=args.quick,
        reduced=["--quick: `make -n demo` only, not timed"] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
