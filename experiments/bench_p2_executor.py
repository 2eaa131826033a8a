"""P2: per-sample time of the progressive executor vs the raw LiteRT invokes it made.

For each test sample (batch 1) the progressive path runs in one process: the edge stage's
:class:`ProgressiveExecutor` and, for a sample no edge exit answered, the cloud stage's executor
on its boundary tensor (no codec, no network). The baseline runs exactly the segments that
sample ran, as bare native LiteRT calls (``SetTensor``/``Invoke``/``GetTensor``) on the
executor's own interpreters (sized to batch 1 by its warm-up: two interpreters of one model can
differ by several percent through memory placement alone; ``--separate-interpreters`` gives the
baseline its own, as before), and sums their times. Both run interleaved, repeated, after a
warm-up; the headline is total executor time / total raw time over every sample (per-sample
medians), on the shared bundle (the default small-CNN build). The same runs are also timed on
the thread's CPU clock (``details.cpu_ratio``): on a host shared with other work the wall ratio
moves with the load, the CPU one much less (it leaves out the waits for a core, not cache
effects).

The executor's extra time is mostly a fixed cost per segment run, so the ratio depends on how
long a segment takes. When P1's ResNet50 bundle exists (``make bench`` runs P1 first), the same
measurement on it is reported too (``details.larger_bundle``), not as the headline.

Usage::

    .venv/bin/python experiments/bench_p2_executor.py [--quick] [--bundle DIR] [--threshold 0.8]
        [--resnet50 | --large-bundle DIR]
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import rawlite  # noqa: E402

GOAL = 1.10  # issue 24: <= 1.10x on the small CNN, <= 1.03x on the ResNet50 bundle
GOAL_LARGE = 1.03
#: A ResNet50 bundle for speed only (1 epoch), when P1's trained one is not there: P2 measures
#: the executor's cost over the bare invokes, which does not depend on accuracy.
RESNET50_SPEED = {"model": "resnet50", "dataset": "digits", "constraint": "memory", "epochs": 1,
                  "exit_epochs": 1, "max_cut_points": 12,
                  "temperatures_in_graph": "yes"}  # fmt: skip


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--bundle", type=Path, default=None, help="bundle to run")
        parser.add_argument("--separate-interpreters", action="store_true",
                            help="give the raw baseline interpreters of its own (the old "
                            "baseline; their memory placement alone moves a ResNet50 ratio by "
                            "several percent)")  # fmt: skip
        parser.add_argument("--large-bundle", type=Path, default=None,
                            help="the ResNet50 row's bundle (default: P1's, else with "
                            "--resnet50 the speed-only one)")  # fmt: skip
        parser.add_argument("--threshold", type=float, default=0.8, help="exit threshold")
        parser.add_argument("--samples", type=int, default=None, help="test samples to use")
        parser.add_argument("--repeats", type=int, default=None, help="timed rounds per sample")
        parser.add_argument("--resnet50", action="store_true",
                            help="without P1's ResNet50 bundle, build (or reuse) a speed-only "
                            "one (1 epoch) for the larger-bundle row")  # fmt: skip
        parser.add_argument(
            "--large-threshold",
            type=float,
            default=None,
            help="threshold of the ResNet50 row (default: --threshold)",
        )

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def measure(
    bundle_path: Path, threshold: float, samples: int, repeats: int, shared: bool = True
) -> dict[str, Any]:
    """Interleaved per-sample times of the executor and of the raw invokes it made.

    ``shared``: the raw invokes run on the executor's own interpreters (the default; else on
    interpreters of their own, as before 7 December 2026, see :class:`rawlite.SharedRawSegment`).
    """
    from edgelesspart.runtime.bundle import Bundle

    bundle = Bundle.load(bundle_path, pool_size=1)
    x, _ = benchlib.eval_split(bundle_path, samples)
    ours = benchlib.Progressive(bundle, threshold)
    rows = [x[i : i + 1] for i in range(len(x))]
    chains = [ours.chain(row) for row in rows]  # also the warm-up of every interpreter
    # the baseline invokes the executor's own interpreters (sized to batch 1 just now), so
    # where two copies of a model landed in memory cannot enter the ratio
    raw = rawlite.shared_raw_segments(bundle) if shared else rawlite.raw_segments(bundle)
    for row, chain in zip(rows, chains):
        rawlite.run_chain(raw, chain, row)
    ours_ms: list[list[float]] = [[] for _ in rows]
    raw_ms: list[list[float]] = [[] for _ in rows]
    ours_cpu: list[list[float]] = [[] for _ in rows]
    raw_cpu: list[list[float]] = [[] for _ in rows]
    for r in range(repeats):
        for i, (row, chain) in enumerate(zip(rows, chains)):
            first_ours = (r + i) % 2 == 0
            for which in ("ours", "raw") if first_ours else ("raw", "ours"):
                if which == "ours":
                    start, start_cpu = time.perf_counter(), time.thread_time()
                    ours(row)
                    ours_cpu[i].append((time.thread_time() - start_cpu) * 1000.0)
                    ours_ms[i].append((time.perf_counter() - start) * 1000.0)
                else:
                    wall, cpu = rawlite.run_chain_clocks(raw, chain, row)
                    raw_ms[i].append(wall)
                    raw_cpu[i].append(cpu)
    ours_med = [statistics.median(v) for v in ours_ms]
    raw_med = [statistics.median(v) for v in raw_ms]
    per_sample = [a / b for a, b in zip(ours_med, raw_med) if b > 0]
    lengths = [len(c) for c in chains]
    cpu_ours = sum(statistics.median(v) for v in ours_cpu)
    cpu_raw = sum(statistics.median(v) for v in raw_cpu)
    return {
        "ratio": sum(ours_med) / sum(raw_med),
        # the same runs on this thread's CPU clock: what the host's other work cannot inflate
        # (time spent waiting for a core); on a quiet host it is close to the wall ratio
        "cpu_ratio": cpu_ours / cpu_raw if cpu_raw > 0 else None,
        "cpu_overhead_ms_per_sample": (cpu_ours - cpu_raw) / len(rows),
        "per_sample_ratio": benchlib.summary(per_sample),
        "executor_ms": benchlib.summary(ours_med),
        "raw_ms": benchlib.summary(raw_med),
        "overhead_ms_per_sample": (sum(ours_med) - sum(raw_med)) / len(rows),
        "segments_run": {str(n): lengths.count(n) for n in sorted(set(lengths))},
        "mean_segments_run": sum(lengths) / len(lengths),
        "segments": [s.name for st in bundle.stages for s in bundle.segments(st)],
        "samples": len(rows),
        "repeats": repeats,
        "threshold": threshold,
        "baseline_interpreters": "shared with the executor" if shared else "separate",
        "load_average": benchlib.load_average(),
    }


def _larger_bundle(args: Any) -> Path | None:
    """``--large-bundle``, else P1's ResNet50 bundle when it exists (else, with ``--resnet50``,
    a speed-only one); none when ``--bundle`` names the headline's bundle."""
    if args.large_bundle is not None:
        return args.large_bundle
    if args.bundle is not None:
        return None
    name = "p1-resnet50-quick" if args.quick else "p1-resnet50"
    path = args.out / "bundles" / name
    if (path / "manifest.json").is_file():
        return path
    if args.resnet50:
        return benchlib.ensure_bundle(args.out / "bundles" / "p2-resnet50", **RESNET50_SPEED)[0]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run P2 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    bundle_path, bundle_info = benchlib.shared_bundle(args.out, args.quick, args.bundle)
    samples = args.samples or (40 if args.quick else 200)
    repeats = args.repeats or (3 if args.quick else 7)
    shared = not args.separate_interpreters
    details = measure(bundle_path, args.threshold, samples, repeats, shared)
    details["bundle"] = bundle_info
    ratio = details["ratio"]
    per_segment = details["overhead_ms_per_sample"] / details["mean_segments_run"]
    print(
        f"{bundle_path.name}: executor {details['executor_ms']['mean']:.3f} ms vs raw "
        f"{details['raw_ms']['mean']:.3f} ms per sample ({per_segment:.3f} ms per segment run); "
        f"= {ratio:.3f}x wall, {details['cpu_ratio']:.3f}x on the thread's CPU clock "
        f"(load {details['load_average']})"
    )
    other = _larger_bundle(args)
    more: dict[str, Any] = {}
    if other is not None:  # the same fixed cost on larger segments (reported, not the headline)
        threshold = args.threshold if args.large_threshold is None else args.large_threshold
        more = measure(other, threshold, min(samples, 60), repeats, shared)
        more.update(goal=GOAL_LARGE, met=more["ratio"] <= GOAL_LARGE)
        details["larger_bundle"] = {"path": str(other), **more}
        print(
            f"{other.name}: executor {more['executor_ms']['mean']:.3f} ms vs raw "
            f"{more['raw_ms']['mean']:.3f} ms per sample = {more['ratio']:.3f}x wall, "
            f"{more['cpu_ratio']:.3f}x CPU clock"
        )
    result = benchlib.BenchResult(
        bench="P2",
        what="per-sample time of the progressive executor (every stage in one process, batch 1)",
        baseline="sum of raw LiteRT set_tensor/invoke/get_tensor times of the segments it ran",
        headline=benchlib.Headline(
            "P2",
            "executor/raw"
            + (f" (ResNet50 bundle {more['ratio']:.3f}x)" if other is not None else ""),
            ratio,
            "x",
            f"<= {GOAL}x" + (f"; ResNet50 <= {GOAL_LARGE}x" if other is not None else ""),
            ratio <= GOAL and (other is None or more["ratio"] <= GOAL_LARGE),
            ours=f"{details['executor_ms']['mean']:.3f} ms/sample",
            reference=f"{details['raw_ms']['mean']:.3f} ms/sample (raw invokes)",
        ),
        quick=args.quick,
        reduced=[f"{samples} test samples x {repeats} rounds"] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
