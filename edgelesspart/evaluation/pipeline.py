"""Evaluate a bundle end to end: reload its data split, trace it once, sweep, baselines, selection.

This is the I/O edge of the evaluation package; the math lives in the pure modules. TensorFlow is
not needed: segments run through the TF-free runtime executor (LiteRT).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ConfigError, EdgeLessPartError, ProfileError
from edgelesspart.evaluation import calibration, compute
from edgelesspart.evaluation.baselines import Backbone, backbone_from_trace, baselines
from edgelesspart.evaluation.report import Evaluation
from edgelesspart.evaluation.sweep import (
    LatencyModel,
    MeasuredSegment,
    StageMemory,
    concat_traces,
    exit_accuracy,
    parse_thresholds,
    sweep,
)
from edgelesspart.profiling.pricing import load_prices, make_price_fn

DEFAULT_THRESHOLDS = parse_thresholds("0.3:0.9:0.05")
DEFAULT_MEMORY_MB = 2048


@dataclass(frozen=True)
class EvaluationConfig:
    """What ``edgelesspart evaluate`` is asked to do (defaults mirror the CLI flags).

    ``edge_device``/``cloud_device`` default to the plan's devices; ``memory_mb`` to the cloud
    device's memory tier (else 2048). ``max_accuracy_drop=None`` skips threshold selection.
    """

    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    edge_device: str | None = None
    cloud_device: str | None = None
    link: str = "wifi"
    provider: str = "gcf"
    architecture: str = "x86_64"
    memory_mb: int | None = None
    cold_start_ms: float = 0.0
    cold_start_prob: float = 0.0
    offload_overhead_ms: float = 0.0
    response_bytes: int = 512
    calibrate: bool = False
    max_accuracy_drop: float | None = None
    batch_size: int = 256


def device_factor(name: str, model_name: str) -> tuple[float, str, Any]:
    """Latency factor of a device for a model: ``(factor, how it was derived, device)``."""
    from edgelesspart.profiling import devices

    device = devices.load_device(name)
    with_reason = getattr(devices, "latency_factor_with_reason", None)
    if with_reason is not None:
        factor, reason = with_reason(device, model_name)
    else:
        factor, reason = devices.latency_factor(device, model_name), "latency_factor"
    return float(factor), str(reason), device


def plan_factor(
    manifest: Any, role: str, device_name: str, factor: float, reason: str
) -> tuple[float, str]:
    """The latency factor the build recorded for ``role`` when ``device_name`` is that device.

    ``build`` scales its host profile by a factor measured at build time (``host-reference``:
    the device's published latency over this host's); deriving it again here would price the
    same bundle on another device speed. A device measured with ``profile-device`` (factor 1,
    own latencies) and a device other than the plan's keep ``(factor, reason)``.
    """
    if reason == "measured-profile":
        return factor, reason
    sources = manifest.plan.parameters.get("latency_sources") or {}
    entry = sources.get(role)
    if not isinstance(entry, dict) or entry.get("device") != device_name:
        return factor, reason
    recorded = entry.get("factor")
    if not isinstance(recorded, (int, float)) or not recorded > 0:
        return factor, reason
    how = str(entry.get("source", "scaled")).removeprefix("scaled (").removesuffix(")")
    return float(recorded), f"{how}, recorded in the plan"


def codec_size_ratio(codec: dict[str, Any]) -> float:
    """Encoded/raw size of a boundary tensor from the manifest's codec entry (1.0 if unknown).

    Reads ``size_ratio`` (encoded / raw) or ``compression_ratio``/``ratio`` (raw / encoded).
    """
    if "size_ratio" in codec:
        value = float(codec["size_ratio"])
    elif "compression_ratio" in codec or "ratio" in codec:
        value = 1.0 / float(codec.get("compression_ratio", codec.get("ratio")))
    else:
        return 1.0
    if not np.isfinite(value) or value <= 0:
        raise BundleError(f"manifest.json codec entry has a bad size ratio: {codec!r}.")
    return value


def load_eval_data(manifest: Any) -> Any:
    """Reload the build's dataset (same spec, seed and fractions) from ``manifest.extra``."""
    from edgelesspart.model.datasets import load_dataset

    spec = manifest.extra.get("dataset")
    if not isinstance(spec, dict) or "spec" not in spec:
        raise BundleError(
            "manifest.json has no extra['dataset'] entry (spec, seed, split fractions), so the "
            "evaluation cannot reload the build's test split. Rebuild with `edgelesspart build`."
        )
    keys = ("val_fraction", "test_fraction", "image_size", "limit")
    kwargs = {k: spec[k] for k in keys if spec.get(k) is not None}
    return load_dataset(str(spec["spec"]), seed=int(spec.get("seed", 0)), **kwargs)


def trace_split(bundle: Any, x: np.ndarray, *, batch_size: int, label: str, show: bool) -> Any:
    """Trace ``x`` through every stage of ``bundle`` in chunks, drawing a progress bar."""
    from edgelesspart.progress import progress
    from edgelesspart.runtime.executor import ProgressiveExecutor

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}.")
    executor = ProgressiveExecutor(bundle, bundle.manifest.stage_names[0])
    starts = range(0, len(x), batch_size)
    chunks = (x[i : i + batch_size] for i in starts)
    traces = [
        executor.trace(chunk, batch_size=batch_size)
        for chunk in progress(chunks, len(starts), label, enabled=show)
    ]
    return concat_traces(traces)


def load_backbone(bundle: Any, trace: Any, memory: StageMemory) -> Backbone:
    """Backbone timings from the bundle's host profile, else from the trace."""
    from edgelesspart.profiling.profile import ModelProfile
    from edgelesspart.runtime.manifest import safe_path

    manifest = bundle.manifest
    input_bytes = manifest.input.tensor.nbytes
    if "profile.json" in manifest.files:
        try:
            profile = ModelProfile.load(safe_path(bundle.path, "profile.json"))
            split = manifest.plan.split
            cut = profile.at(split) if split != "output" else profile.total
            return Backbone(
                full_ms=profile.total.latency_ms,
                split_ms=cut.latency_ms,
                input_bytes=input_bytes,
                boundary_bytes=cut.boundary_bytes if split != "output" else 0,
                full_memory_bytes=profile.total.memory_bytes,
                source="profile",
                split=split,
            )
        except EdgeLessPartError:
            pass
    return backbone_from_trace(trace, input_bytes=input_bytes, memory=memory)


def _settings(config: EvaluationConfig, manifest: Any, model: LatencyModel, **more: Any) -> dict:
    return {
        "thresholds": list(config.thresholds),
        "link": config.link,
        "provider": config.provider,
        "architecture": config.architecture,
        "edge_factor": model.edge_factor,
        "cloud_factor": model.cloud_factor,
        "codec": dict(manifest.codec),
        "codec_size_ratio": model.codec_ratio,
        "cold_start_ms": model.cold_start_ms,
        "cold_start_prob": model.cold_start_prob,
        "offload_overhead_ms": model.offload_overhead_ms,
        "response_bytes": config.response_bytes,
        "calibrate": config.calibrate,
        "max_accuracy_drop": config.max_accuracy_drop,
        "model": manifest.model.get("name", ""),
        **more,
    }


def _host_profile(bundle_path: str | Path | None, manifest: Any, device: Any) -> Any:
    """The bundle's host ``profile.json``, which a measured device's latencies replace."""
    from edgelesspart.profiling.profile import ModelProfile
    from edgelesspart.runtime.manifest import safe_path

    if bundle_path is None or "profile.json" not in manifest.files:
        raise BundleError(
            f"Device {device.measured.name!r} was measured with profile-device; using its "
            "latencies needs the bundle's profile.json (its cut points), which this bundle "
            "lacks. Rebuild it with `edgelesspart build`."
        )
    return ModelProfile.load(safe_path(bundle_path, "profile.json"))


def measured_latencies(
    manifest: Any, host: Any, device: Any, stages: set[str]
) -> tuple[dict[str, MeasuredSegment], dict[str, float]]:
    """A measured device's time for every segment of ``stages``, and its cumulative latencies.

    As the planner does (:func:`edgelesspart.profiling.devices.profile_for_device`): the device's
    own
    latency per cut point, no factor; a segment's backbone time is the difference between its
    end and start cut points. ``host`` is the bundle's host profile.

    Raises:
        ProfileError: the measurement is of another model or lacks one of the cut points.
    """
    from edgelesspart.profiling import devices

    on_device = devices.profile_for_device(host, device)
    cumulative = {"input": 0.0, **{cp.name: cp.latency_ms for cp in on_device.cut_points}}
    host_cum = {"input": 0.0, **{cp.name: cp.latency_ms for cp in host.cut_points}}
    rest_factor = on_device.total.latency_ms / max(host.total.latency_ms, 1e-9)
    segments = {}
    for seg in manifest.segments:
        if seg.stage not in stages:
            continue
        missing = [c for c in (seg.start, seg.end) if c not in cumulative]
        if missing:
            raise ProfileError(
                f"Segment {seg.name!r} starts or ends at {missing}, which the bundle's "
                "profile.json does not list; rebuild the bundle."
            )
        segments[seg.name] = MeasuredSegment(
            device_ms=cumulative[seg.end] - cumulative[seg.start],
            host_ms=host_cum[seg.end] - host_cum[seg.start],
            rest_factor=rest_factor,
        )
    return segments, cumulative


def build_latency_model(
    manifest: Any, config: EvaluationConfig, bundle_path: str | Path | None = None
) -> tuple[LatencyModel, dict, Any]:
    """Device factors (or a measured device's latencies), link, codec ratio and cold start for
    a bundle; plus what was chosen. ``bundle_path`` is needed for a measured device."""
    from edgelesspart.profiling.links import load_link

    model_name = str(manifest.model.get("name", ""))
    stages = manifest.plan.stages
    edge_name = config.edge_device or stages[0].device
    cloud_name = config.cloud_device or stages[-1].device
    edge_factor, edge_reason, edge_device = device_factor(edge_name, model_name)
    cloud_factor, cloud_reason, cloud_device = device_factor(cloud_name, model_name)
    # one device model per bundle: the plan's own devices keep the factors the build planned
    # with (recorded in plan.parameters["latency_sources"]), not a re-derivation
    edge_factor, edge_reason = plan_factor(manifest, "edge", edge_name, edge_factor, edge_reason)
    cloud_factor, cloud_reason = plan_factor(
        manifest, "cloud", cloud_name, cloud_factor, cloud_reason
    )
    measured: dict[str, MeasuredSegment] = {}
    cumulative: dict[str, dict[str, float]] = {"edge": {}, "cloud": {}}
    for role, device in (("edge", edge_device), ("cloud", cloud_device)):
        if getattr(device, "measured", None) is None:
            continue
        names = {stages[0].name} if role == "edge" else {s.name for s in stages[1:]}
        host = _host_profile(bundle_path, manifest, device)
        segments, cumulative[role] = measured_latencies(manifest, host, device, names)
        measured.update(segments)
    model = LatencyModel(
        edge_factor=edge_factor,
        cloud_factor=cloud_factor,
        link=load_link(config.link),
        codec_ratio=codec_size_ratio(manifest.codec),
        cold_start_ms=config.cold_start_ms,
        cold_start_prob=config.cold_start_prob,
        offload_overhead_ms=config.offload_overhead_ms,
        measured_segments=measured,
        edge_cumulative_ms=cumulative["edge"],
        cloud_cumulative_ms=cumulative["cloud"],
    )
    info = {
        "edge_device": edge_name,
        "cloud_device": cloud_name,
        "edge_factor_reason": edge_reason,
        "cloud_factor_reason": cloud_reason,
        "edge_latency_source": _source(edge_reason, cumulative["edge"]),
        "cloud_latency_source": _source(cloud_reason, cumulative["cloud"]),
    }
    return model, info, cloud_device


def _source(reason: str, cumulative: dict[str, float]) -> str:
    if cumulative:
        return f"measured-profile (full model {cumulative.get('output', 0.0):.4g} ms, no factor)"
    return f"scaled ({reason})"


def _pricing(config: EvaluationConfig, cloud_device: Any) -> tuple[Any, Any, int]:
    memory_mb = int(config.memory_mb or getattr(cloud_device, "memory_mb", 0) or DEFAULT_MEMORY_MB)
    table = load_prices(config.provider, config.architecture)
    price_fn = make_price_fn(
        table, memory_mb, egress_bytes=config.response_bytes,
        cold_start_ms=config.cold_start_ms, cold_start_prob=config.cold_start_prob,
    )
    return table, price_fn, memory_mb


def _calibrate(val: Any, y_val: np.ndarray) -> tuple[dict[str, float], dict[str, Any]]:
    temps = calibration.fit_temperatures(val, y_val)
    after = calibration.calibrate_trace(val, temps)
    ece = calibration.expected_calibration_error
    record = {
        "split": "val",
        "temperatures": temps,
        "ece_before": {e: ece(val.probs[e], y_val) for e in val.exits},
        "ece_after": {e: ece(after.probs[e], y_val) for e in val.exits},
    }
    return temps, record


def _select(config: EvaluationConfig, val: Any, y_val: np.ndarray, test_rows: list,
            **sweep_kwargs: Any) -> dict[str, Any]:
    val_rows = sweep(val, y_val, config.thresholds, **sweep_kwargs)
    full = exit_accuracy(val, y_val)[val.exits[-1]]
    chosen = calibration.select_threshold(val_rows, full, float(config.max_accuracy_drop))
    test_row = next((r for r in test_rows if chosen and r.threshold == chosen.threshold), None)
    return {
        "threshold": chosen.threshold if chosen else None,
        "max_accuracy_drop": config.max_accuracy_drop,
        "validation_full_accuracy": full,
        "validation": chosen.to_dict() if chosen else None,
        "test": test_row.to_dict() if test_row else None,
    }


def evaluate_bundle(
    path: str | Path, config: EvaluationConfig | None = None, *, show_progress: bool = True
) -> Evaluation:
    """Evaluate a bundle over thresholds on its build's test split.

    Args:
        path: the bundle directory.
        config: what to evaluate (defaults: :class:`EvaluationConfig`).
        show_progress: draw progress bars on stderr while tracing.

    Returns:
        The :class:`Evaluation` (write it with :func:`write_outputs`).
    """
    from edgelesspart.runtime.bundle import Bundle

    config = config or EvaluationConfig()
    bundle = Bundle.load(path)
    manifest = bundle.manifest
    latency_model, device_info, cloud_device = build_latency_model(manifest, config, path)
    table, price_fn, memory_mb = _pricing(config, cloud_device)
    stages = manifest.plan.stages
    memory = StageMemory(
        stages[0].predicted_memory_bytes, sum(s.predicted_memory_bytes for s in stages[1:])
    )
    data = load_eval_data(manifest)
    trace_kw = {"batch_size": config.batch_size, "show": show_progress}
    test = trace_split(bundle, data.x_test, label="tracing test", **trace_kw)
    calibration_record: dict[str, Any] = {}
    val = None
    if config.calibrate or config.max_accuracy_drop is not None:
        val = trace_split(bundle, data.x_val, label="tracing val ", **trace_kw)
    if config.calibrate and val is not None:
        temps, calibration_record = _calibrate(val, data.y_val)
        val = calibration.calibrate_trace(val, temps)
        test = calibration.calibrate_trace(test, temps)
    kwargs = {"latency_model": latency_model, "price_fn": price_fn, "memory": memory}
    serving = getattr(manifest, "serving", None) or {}
    thresholds = tuple(config.thresholds)
    if serving.get("threshold") is not None:  # always show the threshold the services use
        thresholds = tuple(sorted({*thresholds, float(serving["threshold"])}))
    rows = sweep(test, data.y_test, thresholds, **kwargs)
    selection = None
    if config.max_accuracy_drop is not None and val is not None:
        selection = _select(config, val, data.y_val, rows, **kwargs)
    per_exit = exit_accuracy(test, data.y_test)
    full = per_exit[test.exits[-1]]
    backbone = load_backbone(bundle, test, memory)
    if serving.get("threshold") is not None:  # the build's helper: full model timed interleaved
        timing = compute.time_interleaved(bundle, data.x_test)
        saving = compute.measured_compute(
            test, float(serving["threshold"]), timing, backbone.full_ms
        )
        selection = {**(selection or {}), "serving_threshold": float(serving["threshold"]),
                     "compute": saving}  # fmt: skip
    return Evaluation(
        bundle_id=manifest.bundle_id,
        placement=manifest.plan.placement,
        split="test",
        settings=_settings(config, manifest, latency_model, memory_mb=memory_mb,
                           backbone_source=backbone.source, **device_info),
        pricing=table.to_dict(),
        results=tuple(rows),
        baselines=baselines(backbone, full, latency_model=latency_model, price_fn=price_fn,
                            memory=memory),
        exit_accuracy=per_exit,
        full_accuracy=full,
        calibration=calibration_record,
        selection=selection,
    )
