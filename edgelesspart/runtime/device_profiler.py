"""Profile a model on the device itself: run a profiling kit with LiteRT, no TensorFlow.

A **profiling kit** (written at build time by :mod:`edgelesspart.profiling.kit`; format and
checks in :mod:`edgelesspart.runtime.kit`) is a directory:

    kit.json                 model, input shape, one entry per candidate cut point (name, slice
                             file, boundary shape/bytes, memory/weight bytes), sha256 of each file
    slices/stretch_<k>.tflite the stretch of the model from cut point k-1 to cut point k
    slices/whole.tflite      the whole model in one file (the per-invoke cost attribution)

:func:`profile_kit` loads every slice into its own interpreter (the way the runtime keeps one
interpreter per segment), runs the chain input -> cut point 1 -> ... -> output ``repeats`` times
after ``warmup`` untimed runs and records, per cut point, the median and 95th percentile of the
cumulative time (the same repetition's stretches summed, so the spread is real), the resident
memory with every interpreter up to that cut point loaded and run, and the process's peak RSS.
As in the host profiler, cumulative times are scaled so the output equals one whole-model invoke
(each stretch pays the runtime's fixed per-invoke cost once); the raw chain times are kept too.
The result, a :class:`MeasuredProfile` with the device's identity, is what ``edgelesspart build
--edge-device DEVICE.json`` plans with, without any factor.

Must not import TensorFlow (the lean install runs it on a Raspberry Pi or a Jetson).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ProfileError
from edgelesspart.runtime.kit import KitManifest, kit_path, load_kit

MEASURED_KIND = "measured-device-profile"
MEASURED_VERSION = 1
SIGNATURE = "serving_default"


def _read_first(path: str, keys: tuple[str, ...]) -> str | None:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    found: dict[str, str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in keys and value.strip():
            found.setdefault(key, value.strip())
    return next((found[k] for k in keys if k in found), None)


def _memory_bytes() -> int | None:
    total = _read_first("/proc/meminfo", ("memtotal",))
    if total and total.split()[0].isdigit():
        return int(total.split()[0]) * 1024
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return None


def _board_model() -> str | None:
    """The board name a Raspberry Pi or Jetson writes in the device tree, if any."""
    try:
        return Path("/proc/device-tree/model").read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def device_identity(delegates: tuple[str, ...] = ()) -> dict[str, Any]:
    """Who measured: CPU model, cores, memory, board, OS, Python and LiteRT versions.

    Args:
        delegates: the LiteRT delegates the measurement used (``()`` = the default CPU
            path, XNNPACK).
    """
    cpu = _read_first("/proc/cpuinfo", ("model name", "hardware", "cpu model", "model"))
    try:
        litert = metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        litert = None
    return {
        "cpu_model": cpu or platform.processor() or platform.machine(),
        "board": _board_model(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "memory_bytes": _memory_bytes(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "litert_version": litert,
        "delegates": list(delegates) or ["xnnpack (LiteRT default CPU path)"],
    }


def _rss_bytes() -> int:
    """Current resident set size of this process (Linux ``/proc/self/statm``; else peak)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return _peak_rss_bytes()


def _peak_rss_bytes() -> int:
    """This process's peak resident memory.

    Linux: ``VmHWM`` of ``/proc/self/status``, which starts afresh at ``exec``; ``ru_maxrss``
    keeps the high-water mark of the parent it was forked from (a profile-device started from a
    TensorFlow process would report the parent's gigabyte), so it is only the fallback.
    """
    hwm = _read_first("/proc/self/status", ("vmhwm",))
    if hwm and hwm.split()[0].isdigit():
        return int(hwm.split()[0]) * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if platform.system() == "Darwin" else peak * 1024)


@dataclass(frozen=True)
class MeasuredCutPoint:
    """One cut point as measured on the device (cumulative from the model input)."""

    name: str
    index: int
    latency_ms: float
    latency_p95_ms: float
    chain_median_ms: float
    rss_bytes: int

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "index": self.index,
            "latency_ms": self.latency_ms,
            "latency_p95_ms": self.latency_p95_ms,
            "chain_median_ms": self.chain_median_ms,
            "rss_bytes": self.rss_bytes,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> MeasuredCutPoint:
        """Build from :meth:`to_dict` output."""
        return cls(
            name=str(data["name"]),
            index=int(data["index"]),
            latency_ms=float(data["latency_ms"]),
            latency_p95_ms=float(data["latency_p95_ms"]),
            chain_median_ms=float(data["chain_median_ms"]),
            rss_bytes=int(data["rss_bytes"]),
        )


@dataclass(frozen=True)
class MeasuredProfile:
    """``DEVICE.json``: a model's per cut point latency and memory measured on one device.

    Attributes:
        name: the device name the plan will show (``--name``, default from the board/CPU).
        identity: :func:`device_identity` of the machine that measured.
        model: the kit's model name; input_shape: its input shape.
        kit_id: the kit measured (a build checks it profiles the same cut points).
        cut_points: one :class:`MeasuredCutPoint` per kit cut point, in model order.
        full_model_ms: median of one whole-model invoke.
        peak_rss_bytes: the profiling process's peak resident memory.
        memory_budget_bytes: what a model part may use on the device (planning budget).
        settings: warm-up, repeats, threads, delegate.
    """

    name: str
    identity: dict[str, Any]
    model: str
    input_shape: tuple[int, ...]
    kit_id: str
    cut_points: tuple[MeasuredCutPoint, ...]
    full_model_ms: float
    peak_rss_bytes: int
    memory_budget_bytes: int
    settings: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    version: int = MEASURED_VERSION

    def at(self, name: str) -> MeasuredCutPoint:
        """The measurement at cut point ``name``."""
        for cp in self.cut_points:
            if cp.name == name:
                return cp
        known = ", ".join(cp.name for cp in self.cut_points)
        raise ProfileError(f"Cut point {name!r} was not measured on {self.name!r}; has {known}.")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the ``DEVICE.json`` format)."""
        return {
            "kind": MEASURED_KIND,
            "version": self.version,
            "name": self.name,
            "identity": dict(self.identity),
            "model": self.model,
            "input_shape": list(self.input_shape),
            "kit_id": self.kit_id,
            "full_model_ms": self.full_model_ms,
            "peak_rss_bytes": self.peak_rss_bytes,
            "memory_budget_bytes": self.memory_budget_bytes,
            "settings": dict(self.settings),
            "created": self.created,
            "cut_points": [cp.to_dict() for cp in self.cut_points],
        }

    @classmethod
    def from_dict(cls, data: Any) -> MeasuredProfile:
        """Build from :meth:`to_dict` output; raise :class:`ProfileError` when malformed."""
        if not is_measured_profile(data):
            raise ProfileError(f"Not a measured device profile (kind != {MEASURED_KIND!r}).")
        if data.get("version") != MEASURED_VERSION:
            raise ProfileError(
                f"Unsupported measured profile version {data.get('version')!r}; expected "
                f"{MEASURED_VERSION}. Measure again with this edgelesspart's profile-device."
            )
        try:
            return cls(
                name=str(data["name"]),
                identity=dict(data["identity"]),
                model=str(data["model"]),
                input_shape=tuple(int(d) for d in data["input_shape"]),
                kit_id=str(data["kit_id"]),
                cut_points=tuple(MeasuredCutPoint.from_dict(c) for c in data["cut_points"]),
                full_model_ms=float(data["full_model_ms"]),
                peak_rss_bytes=int(data["peak_rss_bytes"]),
                memory_budget_bytes=int(data["memory_budget_bytes"]),
                settings=dict(data.get("settings", {})),
                created=str(data.get("created", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ProfileError(f"Malformed measured profile: missing or bad field {exc}.") from exc

    def save(self, path: str | Path) -> Path:
        """Write ``DEVICE.json``."""
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out


def is_measured_profile(data: Any) -> bool:
    """Whether a parsed JSON document is a ``profile-device`` output."""
    return isinstance(data, dict) and data.get("kind") == MEASURED_KIND


def _runner(path: Path, num_threads: int) -> Any:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        return interpreter.get_signature_runner(SIGNATURE)
    except (ValueError, RuntimeError) as exc:
        raise BundleError(f"Kit slice {path.name} is not a loadable LiteRT model: {exc}") from exc


def _percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def _time_chain(runners: list[Any], x: np.ndarray, warmup: int, repeats: int) -> np.ndarray:
    """(repeats, stretches) milliseconds of running the chain from ``x``."""
    times = np.zeros((repeats, len(runners)))
    for rep in range(-warmup, repeats):
        value = x
        for k, run in enumerate(runners):
            start = time.perf_counter()
            out = run(x=value)
            elapsed = (time.perf_counter() - start) * 1000.0
            value = out.get("boundary", value)
            if rep >= 0:
                times[rep, k] = elapsed
    return times


def _load_chain(root: Path, kit: KitManifest, x: np.ndarray, threads: int) -> tuple[list, list]:
    """Load the slices one by one, running each once; the RSS after each (prefix resident)."""
    runners, rss = [], []
    value = x
    for cp in kit.cut_points:
        runner = _runner(kit_path(root, cp.slice), threads)
        value = runner(x=value).get("boundary", value)
        runners.append(runner)
        rss.append(_rss_bytes())
    return runners, rss


def profile_kit(
    kit_dir: str | Path,
    *,
    name: str | None = None,
    warmup: int = 3,
    repeats: int = 30,
    num_threads: int = 1,
    memory_fraction: float = 0.5,
    seed: int = 0,
) -> MeasuredProfile:
    """Measure every cut point of a profiling kit on this machine (see the module docstring).

    Args:
        kit_dir: the kit directory.
        name: the device name recorded (default: the board name or ``<machine>-measured``).
        warmup: untimed chain runs first.
        repeats: timed chain runs; median and p95 over them.
        num_threads: LiteRT threads per interpreter (the runtime's default is 1).
        memory_fraction: share of the machine's memory a model part may plan with.
        seed: seed of the random probe input.

    Raises:
        BundleError: the kit is missing, modified or unloadable.
        ProfileError: ``repeats``/``warmup``/``num_threads`` out of range.
    """
    if repeats < 3 or warmup < 0 or num_threads < 1 or not 0 < memory_fraction <= 1:
        raise ProfileError(
            f"Need repeats >= 3, warmup >= 0, num_threads >= 1 and 0 < memory_fraction <= 1; got "
            f"{repeats}, {warmup}, {num_threads}, {memory_fraction}."
        )
    root = Path(kit_dir)
    kit = load_kit(root)
    x = np.random.default_rng(seed).random((1, *kit.input_shape), dtype=np.float32)
    baseline = _rss_bytes()
    runners, rss = _load_chain(root, kit, x, num_threads)
    chain = np.cumsum(_time_chain(runners, x, warmup, repeats), axis=1)
    whole = _time_chain([_runner(kit_path(root, kit.whole), num_threads)], x, warmup, repeats)
    full_ms = float(np.median(whole[:, 0]))
    chain_total = float(np.median(chain[:, -1]))
    scale = full_ms / chain_total if chain_total > 0 else 1.0
    measured = tuple(
        MeasuredCutPoint(
            name=cp.name,
            index=cp.index,
            latency_ms=round(float(np.median(chain[:, k])) * scale, 6),
            latency_p95_ms=round(_percentile(list(chain[:, k]), 95) * scale, 6),
            chain_median_ms=round(float(np.median(chain[:, k])), 6),
            rss_bytes=max(0, rss[k] - baseline),
        )
        for k, cp in enumerate(kit.cut_points)
    )
    identity = device_identity()
    memory = identity.get("memory_bytes") or 0
    return MeasuredProfile(
        name=name or _default_name(identity),
        identity=identity,
        model=kit.model,
        input_shape=kit.input_shape,
        kit_id=kit.kit_id,
        cut_points=measured,
        full_model_ms=round(full_ms, 6),
        peak_rss_bytes=_peak_rss_bytes(),
        memory_budget_bytes=int(memory * memory_fraction) or 1,
        settings={
            "warmup": warmup,
            "repeats": repeats,
            "num_threads": num_threads,
            "memory_fraction": memory_fraction,
            "latency_attribution": "cumulative chain medians scaled so the output entry equals "
            "full_model_ms (one whole-model invoke); chain_median_ms is unscaled",
            "baseline_rss_bytes": baseline,
            "whole_model_p95_ms": round(_percentile(list(whole[:, 0]), 95), 6),
            "timer": "time.perf_counter around each signature-runner call",
        },
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )


def _default_name(identity: dict[str, Any]) -> str:
    board = identity.get("board")
    base = board if board else f"{identity.get('machine') or 'device'}"
    slug = "".join(ch if ch.isalnum() else "-" for ch in str(base).lower()).strip("-")
    return f"{'-'.join(p for p in slug.split('-') if p)}-measured"


def load_measured_profile(path: str | Path) -> MeasuredProfile:
    """Read a ``DEVICE.json`` written by ``profile-device``.

    Raises:
        ProfileError: unreadable or not a measured profile.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ProfileError(f"Cannot read measured profile {path}: {exc}.") from exc
    return MeasuredProfile.from_dict(data)


def pretty_summary(profile: MeasuredProfile) -> str:
    """Human lines for the CLI."""
    ident = profile.identity
    lines = [
        f"device: {profile.name} ({ident.get('cpu_model')}, {ident.get('cores')} cores, "
        f"{(ident.get('memory_bytes') or 0) / 2**30:.1f} GiB, "
        f"LiteRT {ident.get('litert_version')})",
        f"model: {profile.model} {list(profile.input_shape)}, full model "
        f"{profile.full_model_ms:.3f} ms, peak RSS {profile.peak_rss_bytes / 2**20:.0f} MiB",
    ]
    width = max(len(cp.name) for cp in profile.cut_points)
    for cp in profile.cut_points:
        lines.append(
            f"  {cp.name:<{width}}  median {cp.latency_ms:9.3f} ms  p95 {cp.latency_p95_ms:9.3f} ms"
            f"  +{cp.rss_bytes / 2**20:6.1f} MiB"
        )
    return "\n".join(lines)
