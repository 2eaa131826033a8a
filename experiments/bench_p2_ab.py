"""P2 A/B: this tree's executor against another commit's, alternating processes in one run.

P2's ratio (executor time / raw LiteRT invokes, :mod:`bench_p2_executor`) moves with the
host's load by more than a change to the executor does, so a before/after comparison must be
made in one run, interleaved. This script extracts ``--base`` (a commit, e.g. ``main``) with
``git archive``, then runs P2's own measurement (this tree's harness, ``bench_p2_executor.
measure``) in a fresh process with the base's ``edgelesspart`` package, then with this tree's,
alternating which goes first each round, on the same bundle. It reports both ratios per round
(wall clock and the thread's CPU clock), their medians and the load, and writes
``<out>/p2_ab.json``.

Usage::

    .venv/bin/python experiments/bench_p2_ab.py --base main [--rounds 4] [--samples 100]
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

HERE = Path(__file__).resolve().parent


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--base", default="main", help="commit to compare with")
        parser.add_argument("--bundle", type=Path, default=None, help="bundle (default shared)")
        parser.add_argument("--threshold", type=float, default=0.8, help="exit threshold")
        parser.add_argument("--rounds", type=int, default=4, help="alternations")
        parser.add_argument("--samples", type=int, default=100, help="test samples per run")
        parser.add_argument("--repeats", type=int, default=3, help="timed rounds per sample")
        parser.add_argument("--child", default=None, help=argparse_suppress())

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def argparse_suppress() -> str:
    """Help text of the internal ``--child`` flag."""
    import argparse

    return argparse.SUPPRESS


def extract(rev: str, into: Path) -> Path:
    """``edgelesspart/`` of commit ``rev`` under ``into`` (``git archive``); returns ``into``."""
    data = subprocess.run(["git", "-C", str(benchlib.ROOT), "archive", rev, "edgelesspart"],
                          capture_output=True, check=True).stdout  # fmt: skip
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def child(args: Any) -> int:
    """Measure once with the ``edgelesspart`` that is first on ``sys.path``; print JSON."""
    import bench_p2_executor

    import edgelesspart

    result = bench_p2_executor.measure(args.bundle, args.threshold, args.samples, args.repeats)
    keep = ("ratio", "cpu_ratio", "overhead_ms_per_sample", "cpu_overhead_ms_per_sample",
            "mean_segments_run", "load_average")  # fmt: skip
    out = {k: result[k] for k in keep}
    out["package"] = str(Path(edgelesspart.__file__).parent)
    print(json.dumps(out), flush=True)
    return 0


def run_once(args: Any, tree: Path) -> dict[str, Any]:
    """One measurement in a fresh process whose ``edgelesspart`` comes from ``tree``."""
    env_path = f"{tree}:{benchlib.ROOT}"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "1", "--out", str(args.out),
           "--bundle", str(args.bundle), "--threshold", str(args.threshold),
           "--samples", str(args.samples), "--repeats", str(args.repeats)]  # fmt: skip
    import os

    env = {**os.environ, "PYTHONPATH": env_path, "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True, timeout=1800)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the A/B and print the medians last."""
    start = time.perf_counter()
    args = _args(argv)
    if args.bundle is None:
        args.bundle = benchlib.shared_bundle(args.out, args.quick)[0]
    if args.child:
        sys.path.insert(0, str(HERE))
        return child(args)
    runs: dict[str, list[dict[str, Any]]] = {"base": [], "this": []}
    with tempfile.TemporaryDirectory(prefix="p2ab-") as tmp:
        trees = {"base": extract(args.base, Path(tmp)), "this": benchlib.ROOT}
        for r in range(args.rounds):
            for name in ("base", "this") if r % 2 == 0 else ("this", "base"):
                got = run_once(args, trees[name])
                runs[name].append(got)
                print(f"round {r} {name}: {got['ratio']:.3f}x wall, {got['cpu_ratio']:.3f}x "
                      f"CPU (load {got['load_average']})", flush=True)  # fmt: skip
    summary = {
        name: {
            "ratio_median": statistics.median(g["ratio"] for g in got),
            "cpu_ratio_median": statistics.median(g["cpu_ratio"] for g in got),
            "cpu_overhead_ms_per_sample_median": statistics.median(
                g["cpu_overhead_ms_per_sample"] for g in got
            ),
        }
        for name, got in runs.items()
    }
    commit = subprocess.run(["git", "-C", str(benchlib.ROOT), "rev-parse", "--short", args.base],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    record = {
        "bench": "P2-AB",
        "base": args.base,
        "base_commit": commit,
        "bundle": str(args.bundle),
        "samples": args.samples,
        "repeats": args.repeats,
        "rounds": runs,
        "summary": summary,
        "machine": benchlib.machine_info(),
        "command": benchlib.command_line(),
        "seconds": round(time.perf_counter() - start, 1),
    }
    path = args.out / "p2_ab.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {path}")
    for name, s in summary.items():
        print(f"P2 A/B {name}: {s['ratio_median']:.3f}x wall, {s['cpu_ratio_median']:.3f}x CPU "
              f"(medians of {args.rounds})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
