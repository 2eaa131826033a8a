"""Shared helpers of the ``experiments/bench_*.py`` benchmarks (``make bench``).

Every benchmark measures ours and its baseline in the same run (interleaved, after a warm-up),
writes one JSON file under the git-ignored ``results/bench/`` with the machine it ran on, and
prints its headline ratio as its **last** line, e.g.::

    P2 executor/raw = 1.03x (goal <= 1.05x): MET

This module holds only what every script needs: argument parsing (``--quick``, ``--out``),
machine information, interleaved timing and statistics (summary, MAPE), the budget rule of
``bench_all.py``, the result record and its strict JSON, running a child process with a time
limit, and the shared benchmark bundle. It imports TensorFlow nowhere; the bundle helper imports
the build pipeline lazily. ``benchtable.py`` turns the records into the Markdown table.
"""

from __future__ import annotations

import argparse
import filecmp
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "results" / "bench"
SCHEMA = "edgelesspart-bench/1"
MET, MISSED, SKIPPED = "MET", "MISSED", "SKIPPED"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


# ------------------------------------------------------------------------------ arguments


def parse_args(
    description: str,
    argv: Sequence[str] | None = None,
    extra: Callable[[argparse.ArgumentParser], None] | None = None,
) -> argparse.Namespace:
    """Parse the common flags (``--quick``, ``--out``, ``--seed``) plus a script's own.

    Args:
        description: the script's one-line purpose (shown by ``--help``).
        argv: arguments (default ``sys.argv[1:]``).
        extra: adds the script's own arguments to the parser.
    """
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sample counts and models (smoke test)"
    )
    parser.add_argument(
        "--out", type=Path, default=RESULTS_DIR, help="result folder (default results/bench)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of data splits and probes")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    return args


# ------------------------------------------------------------------------------ machine


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args: str) -> str | None:
    """``git ARGS`` in the repository: its stripped stdout, or ``None`` when git cannot run."""
    try:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def _git_commit() -> str | None:
    return _git("rev-parse", "--short", "HEAD") or None


def _dirty() -> bool | None:
    status = _git("status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def load_average() -> list[float] | None:
    """The 1/5/15-minute load averages (``None`` where the OS has none)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load, OS, Python/TF/LiteRT/numpy versions, git commit and date."""
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "tensorflow": _version("tensorflow") or _version("tensorflow-cpu"),
        "keras": _version("keras"),
        "ai_edge_litert": _version("ai-edge-litert"),
        "numpy": _version("numpy"),
        "git_commit": _git_commit(),
        "git_dirty": _dirty(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


# ------------------------------------------------------------------------------ timing


def time_ms(fn: Callable[[], Any]) -> float:
    """Wall time of one call of ``fn`` in milliseconds."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000.0


def interleaved(
    fns: Mapping[str, Callable[[], Any]], *, repeats: int, warmup: int = 3
) -> dict[str, list[float]]:
    """Time several callables round-robin so machine noise hits each of them alike.

    Each round calls every function once; the order rotates every round. ``warmup`` rounds
    are run first and discarded.

    Returns:
        name -> ``repeats`` times in milliseconds.
    """
    names = list(fns)
    times: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            ms = time_ms(fns[name])
            if round_ >= warmup:
                times[name].append(ms)
    return times


def summary(samples: Sequence[float]) -> dict[str, float]:
    """Median, mean, 10th/90th percentile, min and count of a list of timings."""
    values = sorted(float(v) for v in samples)
    if not values:
        return {"n": 0}

    def pct(q: float) -> float:
        return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]

    return {
        "n": len(values),
        "median": statistics.median(values),
        "mean": statistics.fmean(values),
        "p10": pct(0.1),
        "p90": pct(0.9),
        "min": values[0],
    }


def mape(measured: Sequence[float], predicted: Sequence[float]) -> float:
    """Mean absolute percentage error of ``predicted`` against ``measured``, in percent.

    ``100 * mean(|measured - predicted| / |measured|)``; the measured values are the reference.

    Raises:
        ValueError: the lists are empty, of different lengths, or a measured value is 0.
    """
    pairs = list(zip(measured, predicted, strict=True))
    if not pairs:
        raise ValueError("MAPE needs at least one (measured, predicted) pair.")
    if any(m == 0 for m, _ in pairs):
        raise ValueError("MAPE is undefined when a measured value is 0.")
    return 100.0 * statistics.fmean(abs(m - p) / abs(m) for m, p in pairs)


# ------------------------------------------------------------------------------ budget


def timeout_for(
    remaining_s: float, later_reserve_s: Sequence[float], floor_s: float = 5.0
) -> float:
    """Seconds one benchmark may run: what is left of the budget minus what later ones need.

    Each later benchmark keeps its reserve, so one slow benchmark cannot starve all the others;
    the benchmark still gets at least ``floor_s`` (or all that is left, if less).
    """
    left = max(0.0, float(remaining_s))
    return min(left, max(floor_s, left - sum(later_reserve_s)))


# ------------------------------------------------------------------------------ results


def significant(value: float) -> str:
    """Three significant digits, trailing zeros kept (``1.00``, ``0.279``, ``19.2``, ``123``)."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:.0f}"
    return f"{value:#.3g}".rstrip(".")


@dataclass(frozen=True)
class Headline:
    """The one figure a benchmark is compared on, and whether it met its goal.

    ``met`` is ``None`` when the figure was not measured (e.g. skipped in ``--quick`` mode).
    ``ours`` and ``reference`` are the two measured figures behind the ratio, as short text
    with units (e.g. ``"0.82 ms/sample"``), for the summary table.
    """

    bench: str
    label: str
    value: float | None
    unit: str
    goal: str
    met: bool | None
    ours: str = ""
    reference: str = ""

    @property
    def verdict(self) -> str:
        """``MET``, ``MISSED`` or ``SKIPPED``."""
        if self.met is None:
            return SKIPPED
        return MET if self.met else MISSED

    @property
    def shown(self) -> str:
        """The value with its unit, three significant digits (``n/a`` when not measured)."""
        return "n/a" if self.value is None else f"{significant(self.value)}{self.unit}"

    def line(self) -> str:
        """E.g. ``P2 executor/raw = 1.03x (goal <= 1.05x): MET``."""
        return f"{self.bench} {self.label} = {self.shown} (goal {self.goal}): {self.verdict}"


@dataclass(frozen=True)
class BenchResult:
    """What one benchmark writes to ``results/bench/<id>.json``."""

    bench: str
    what: str
    baseline: str
    headline: Headline
    quick: bool
    reduced: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    command: str = ""

    def to_dict(self, machine: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """JSON-ready dict with the machine information and the headline's verdict and line.

        Args:
            machine: the machine record (default: :func:`machine_info` now).
        """
        data = asdict(self)
        data["headline"]["verdict"] = self.headline.verdict
        data["headline"]["line"] = self.headline.line()
        return {"schema": SCHEMA, "machine": dict(machine or machine_info()), **data}


def write_result(result: BenchResult, out: Path, machine: Mapping[str, Any] | None = None) -> Path:
    """Write ``<out>/<bench id lower>.json`` (strict JSON: NaN/inf become null); its path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{result.bench.lower()}.json"
    data = to_json_ready(result.to_dict(machine))
    path.write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    return path


def to_json_ready(value: Any) -> Any:
    """``value`` with numpy values as Python ones, paths as text and NaN/inf as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): to_json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_ready(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return to_json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    raise TypeError(f"Cannot write {type(value).__name__} to JSON: {value!r}")


def command_line(argv: Sequence[str] | None = None) -> str:
    """How this script was run, as a user would type it from the repository root."""
    argv = list(sys.argv if argv is None else argv)
    script = Path(argv[0]) if argv else Path("?")
    shown = f"experiments/{script.name}" if script.suffix == ".py" else str(script)
    return " ".join([".venv/bin/python", shown, *(relative_to_root(a) for a in argv[1:])])


def relative_to_root(arg: str) -> str:
    """An absolute path inside the repository as a relative one; anything else unchanged."""
    path = Path(arg)
    if not path.is_absolute():
        return arg
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return arg


def finish(result: BenchResult, out: Path) -> int:
    """Write the JSON, print where it went, then the headline as the last line; exit code 0."""
    if not result.command:
        result = replace(result, command=command_line())
    path = write_result(result, out)
    for note in result.reduced:
        print(f"reduced: {note}")
    print(f"wrote {path}")
    print(result.headline.line(), flush=True)
    return 0


@dataclass(frozen=True)
class Finished:
    """What :func:`run_command` got back; ``returncode`` is ``None`` when it was killed."""

    returncode: int | None
    stdout: str
    stderr: str
    seconds: float


def run_command(cmd: Sequence[str], timeout_s: float, **kwargs: Any) -> Finished:
    """Run ``cmd`` in its own process group; past ``timeout_s`` kill the whole group.

    A benchmark starts children of its own (``make`` and the build under it, P3's load
    generator); killing only the direct child would leave them running after the time limit.
    """
    start = time.perf_counter()
    proc = subprocess.Popen(
        list(cmd),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=max(0.1, timeout_s))
        code: int | None = proc.returncode
    except subprocess.TimeoutExpired:
        _kill_group(proc.pid)
        out, err = proc.communicate()
        code = None
    except BaseException:  # Ctrl-C reaches only our group: take the child's group down too
        _kill_group(proc.pid)
        proc.wait()
        raise
    return Finished(code, out or "", err or "", time.perf_counter() - start)


def _kill_group(pid: int) -> None:
    """SIGKILL the process group ``run_command`` created for ``pid`` (nothing else)."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def log(message: str) -> None:
    """Progress line on stderr (stdout ends with the headline)."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------ bundles


def bundle_matches(path: Path, wanted: Mapping[str, Any]) -> bool:
    """True when ``path`` holds a bundle whose build config has every ``wanted`` value."""
    manifest = path / "manifest.json"
    if not manifest.is_file():
        return False
    try:
        config = json.loads(manifest.read_text())["extra"]["build_config"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(
        _same_model(config.get(key), value) if key == "model" else _same(config.get(key), value)
        for key, value in wanted.items()
    )


def _same_model(a: Any, b: Any) -> bool:
    """Zoo names must be equal; ``.keras`` backbones match when the files are byte-identical
    (a cached bundle stays valid when its backbone file was copied to another folder)."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str) and a.endswith(".keras")):
        return False
    first, second = Path(a), Path(b)
    if not (first.is_file() and second.is_file()):
        return False
    return first.resolve() == second.resolve() or filecmp.cmp(first, second, shallow=False)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) or isinstance(b, (list, tuple)):
        return list(a or []) == list(b or [])
    return a == b


def ensure_bundle(path: Path, **options: Any) -> tuple[Path, dict[str, Any]]:
    """Reuse the bundle at ``path`` if it was built with ``options``, else build it there.

    ``options`` are :class:`edgelesspart.build.BuildConfig` fields. Returns the path and a
    record of what happened (``reused`` and the build seconds).
    """
    if bundle_matches(path, options):
        return path, {"path": str(path), "reused": True, "options": dict(options)}
    from edgelesspart.build import BuildConfig, run_build

    start = time.perf_counter()
    log(f"building {path} with {options}")
    config = BuildConfig(**{**options, "out": str(path), "overwrite": True})
    result = run_build(config, show_progress=False, log=log)
    return path, {
        "path": str(path),
        "reused": False,
        "options": dict(options),
        "build_seconds": round(time.perf_counter() - start, 1),
        "steps": result.seconds,
    }


#: The bundle P2/P3/P4/P6 run on: the default build (what ``make demo`` builds: the small CNN,
#: digits, memory rule), trained for fewer epochs to keep ``make bench`` inside its budget.
#: ``temperatures_in_graph`` is the default too; it is named so that a bundle built before
#: the temperatures went into the exit heads (its build config lacks it) is rebuilt.
SHARED_BUNDLE_OPTIONS = {
    "model": "small_cnn",
    "dataset": "digits",
    "constraint": "memory",
    "epochs": 4,
    "exit_epochs": 4,
    "max_cut_points": 12,
    "temperatures_in_graph": "yes",
}
QUICK_BUNDLE_OPTIONS = {**SHARED_BUNDLE_OPTIONS, "epochs": 1, "exit_epochs": 1, "limit": 200}


def shared_bundle(out: Path, quick: bool, given: Path | None = None) -> tuple[Path, dict]:
    """The bundle a serving benchmark runs on: ``given`` if set, else the shared bench bundle."""
    if given is not None:
        return Path(given), {"path": str(given), "reused": True, "options": "given"}
    if quick:
        return ensure_bundle(out / "bundles" / "shared-quick", **QUICK_BUNDLE_OPTIONS)
    return ensure_bundle(out / "bundles" / "shared", **SHARED_BUNDLE_OPTIONS)


def eval_split(bundle_path: Path, limit: int | None = None, split: str = "test") -> tuple[Any, Any]:
    """The bundle build's ``test`` (or ``val``) split ``(x, y)``, reloaded from the manifest."""
    from edgelesspart.evaluation.pipeline import load_eval_data
    from edgelesspart.runtime.manifest import load_manifest

    data = load_eval_data(load_manifest(bundle_path, verify=False))
    x, y = (data.x_val, data.y_val) if split == "val" else (data.x_test, data.y_test)
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return x, y


class Progressive:
    """Every loaded stage of a bundle in this process: the edge executor, then the next ones'.

    Calling it on one sample returns that sample's :class:`Answer`; no codec, no network: it is
    the compute a sample needs on one device with early exits.
    """

    def __init__(self, bundle: Any, threshold: float) -> None:
        from edgelesspart.runtime.executor import ProgressiveExecutor

        self.executors = [ProgressiveExecutor(bundle, s, threshold) for s in bundle.stages]

    def __call__(self, x: Any) -> Any:
        """The answer of a batch-1 ``x`` (the first stage's input).

        What P2 times as "the executor": only the stages' :meth:`run` calls (no list of the
        segments that ran, which :meth:`run` adds for the baseline's chain).
        """
        first, *later = self.executors
        result = first.run(x)
        for executor in later:
            if result.boundary is None:
                break
            # a later stage's input is the boundary tensor the previous stage just made:
            # validated once, at the first stage, as the services validate at their boundary
            result = executor.run(result.boundary, trusted=True)
        if result.boundary is not None:
            raise RuntimeError("The last stage handed the sample on: it has no final classifier.")
        return result.answers[0]

    def run(self, x: Any) -> tuple[Any, list[str]]:
        """The answer of a batch-1 ``x`` and the segments it ran, in order.

        A stage that hands the sample on ran all of its segments; in the stage that answers,
        the segments are the ones in the answer's timings (each stage times only its own).
        """
        current, ran = x, []
        for k, executor in enumerate(self.executors):
            # a later stage's input is the boundary tensor the previous stage just made:
            # validated once, at the first stage, as the services validate at their boundary
            result = executor.run(current, trusted=k > 0)
            names = [s.name for s in executor.segments]
            if result.boundary is None:
                answer = result.answers[0]
                return answer, ran + [n for n in names if n in answer.timings]
            ran += names
            current = result.boundary
        raise RuntimeError("The last stage handed the sample on: it has no final classifier.")

    def chain(self, x: Any) -> list[str]:
        """The segments sample ``x`` runs, in order."""
        return self.run(x)[1]
