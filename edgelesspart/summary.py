"""Human-readable summaries of plans and bundles (pure text; no TensorFlow)."""

from __future__ import annotations

from edgelesspart.runtime.manifest import Manifest
from edgelesspart.runtime.plan import Plan


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:.1f} KiB"


def format_plan(plan: Plan) -> str:
    """The split, the exits and the predicted latency and memory of every stage."""
    lines = [
        f"plan: constraint={plan.constraint} placement={plan.placement} split after {plan.split!r}"
    ]
    if plan.rationale:
        lines.append(f"  why: {plan.rationale}")
    for i, stage in enumerate(plan.stages):
        exits = ", ".join(stage.exits) if stage.exits else "none"
        lines.append(
            f"  stage {stage.name:<6} on {stage.device:<17} {stage.start} -> {stage.end}: "
            f"predicted {stage.predicted_latency_ms:.3f} ms, {_mib(stage.predicted_memory_bytes)}; "
            f"exits at: {exits}"
        )
        if i < len(plan.boundary_bytes):
            lines.append(f"    boundary to next stage: {_kib(plan.boundary_bytes[i])} raw fp32")
    return "\n".join(lines)


def format_bundle(manifest: Manifest) -> str:
    """A summary of a bundle: model, input, plan, segments, exits and accuracy."""
    model = manifest.model
    spec = manifest.input.tensor
    lines = [
        f"bundle {manifest.bundle_id} (schema {manifest.schema_version}, "
        f"created {manifest.created})",
        f"model: {model.get('name', '?')} ({model.get('source', '?')}, "
        f"{model.get('params', 0):,} params)",
        f"input: {list(spec.shape)} {spec.dtype}; {len(manifest.classes)} classes; "
        f"codec {manifest.codec.get('name', 'raw')}",
        format_plan(manifest.plan),
        "segments:",
    ]
    for seg in manifest.segments:
        out = seg.boundary.shape if seg.boundary else "-"
        lines.append(
            f"  {seg.name:<9} [{seg.stage}] {seg.start} -> {seg.end}  exit={seg.exit or '-'}  "
            f"in={list(seg.input.shape)} boundary={list(out) if out != '-' else out}"
        )
    lines.append("exits:")
    for info in manifest.exits:
        metrics = ", ".join(f"{k}={v:.3f}" for k, v in sorted(info.metrics.items()))
        lines.append(f"  {info.name:<7} at {info.cut_point:<28} [{info.stage}] {metrics}")
    lines.append(f"files: {len(manifest.files)} (sha256 verified on load)")
    return "\n".join(lines)
