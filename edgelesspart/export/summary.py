"""Human-readable summaries of plans and bundles (pure text; no TensorFlow)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgelesspart.runtime.manifest import Manifest
from edgelesspart.runtime.plan import Plan


def _mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def _kib(nbytes: float) -> str:
    return f"{nbytes / 1024:.1f} KiB"


def _pipeline_lines(plan: Plan) -> list[str]:
    """Per-stage cost breakdown, link codecs and DEFER's equal-layer split (pipeline plans)."""
    p = plan.parameters
    lines = []
    for stage in plan.stages:
        cost = stage.options.get("cost") or {}
        if cost:
            lines.append(
                f"    {stage.name}: compute {cost['compute_ms']:.2f} + decode "
                f"{cost['decode_ms']:.2f} + encode {cost['encode_ms']:.2f} + link "
                f"{cost['transfer_ms']:.2f} ms (paces {cost.get('pace_ms', 0):.2f} ms); sends "
                f"{_kib(cost['out_bytes'])} with "
                f"{stage.options.get('codec_out') or 'raw (result)'}"
            )
    equal = p.get("equal_layer") or {}
    if "bottleneck_ms" in p:
        lines.append(
            f"  bottleneck {p['bottleneck_ms']:.2f} ms -> {p.get('throughput_per_s', 0):.2f} "
            f"inputs/s predicted, {p.get('predicted_speedup_vs_one_node', 0):.2f}x one node "
            f"(codec times {p.get('codec_times', '?')})"
        )
    if equal:
        lines.append(
            f"  DEFER equal-layer split at {', '.join(equal['cuts']) or '-'} "
            f"({', '.join(equal.get('link_codecs', [])) or '-'}): bottleneck "
            f"{equal['bottleneck_ms']:.2f} ms"
        )
    return lines


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
    if plan.constraint == "pipeline":
        lines.extend(_pipeline_lines(plan))
    sources = plan.parameters.get("latency_sources") or {}
    for role, entry in sources.items():  # the device model build and evaluate both use
        if isinstance(entry, dict) and entry.get("summary"):
            lines.append(f"  {role} latencies: {entry['summary']}")
    encoded = plan.parameters.get("boundary_encoded_bytes")
    if plan.parameters.get("codec") and isinstance(encoded, (int, float)):
        wire = plan.parameters.get("boundary_wire_bytes", encoded)
        event = f" ({_kib(wire)} as a base64 Lambda event)" if wire != encoded else ""
        lines.append(
            f"  planned codec: {plan.parameters['codec']}, {_kib(encoded)} per sample on the "
            f"wire{event}"
        )
    return "\n".join(lines)


def format_codec_table(codec: dict[str, Any]) -> list[str]:
    """Lines of a manifest ``codec`` entry's measured table (empty when it has none).

    Columns: wire bytes per sample, compression vs raw float32, accuracy delta in percentage
    points (negative = loss), median encode/decode ms at batch 1; ``*`` marks the chosen codec.
    """
    rows = codec.get("table") or []
    if not rows:
        return []
    lines = [
        f"codec table at {codec.get('cut_point', '?')} ({codec.get('samples', '?')} validation "
        f"samples, {codec.get('selected_by', '?')}, max loss {codec.get('max_loss_pp', '?')} pp):",
        f"  {'codec':<10} {'bytes/sample':>12} {'vs raw':>7} {'dAcc pp':>8} {'enc ms':>7} "
        f"{'dec ms':>7}",
    ]
    neck = codec.get("bottleneck")
    for row in rows:
        ratio = float(row.get("size_ratio", 0.0))
        factor = 1.0 / ratio if ratio else 0.0
        mark = "  *" if row.get("codec") == codec.get("name") and not neck else ""
        lines.append(
            f"  {row.get('codec', '?'):<10} {float(row.get('bytes_per_sample', 0)):>12,.0f} "
            f"{factor:>6.2f}x {float(row.get('accuracy_delta_pp', 0)):>+8.2f} "
            f"{float(row.get('encode_ms', 0)):>7.3f} {float(row.get('decode_ms', 0)):>7.3f}{mark}"
        )
    if neck:
        lines.append(
            f"  {neck.get('label', '?') + '+' + str(codec.get('name')):<10} "
            f"{float(neck.get('bytes_per_sample', 0)):>12,.0f} "
            f"{_factor({'size_ratio': neck.get('boundary_size_ratio', 0)}):>6.2f}x "
            f"{float(neck.get('accuracy_delta_pp', 0)):>+8.2f} "
            f"{float(neck.get('encoder_ms', 0)) + float(neck.get('encode_ms', 0)):>7.3f} "
            f"{float(neck.get('decoder_ms', 0)) + float(neck.get('decode_ms', 0)):>7.3f}  * "
            f"learned bottleneck {neck.get('boundary_shape')} -> code {neck.get('code_shape')}"
        )
    elif codec.get("bottleneck_reason"):
        lines.append(f"  no bottleneck: {codec['bottleneck_reason']}")
    return lines


def _factor(row: Mapping[str, Any]) -> float:
    """How many times fewer bytes than the raw float32 tensor (0 when unknown)."""
    ratio = float(row.get("size_ratio", 0.0))
    return 1.0 / ratio if ratio > 0 else 0.0


def format_codec_markdown(table: Mapping[str, Any], chosen: str | None = None) -> str:
    """A Markdown table of a measured codec table (``codecs.json`` or a manifest ``codec`` entry).

    One row per codec, in the table's order: wire bytes per sample (frame header included),
    how many times fewer bytes than the raw float32 tensor, accuracy delta in percentage points
    on the validation samples (negative = loss), median encode / decode ms at batch 1, and a
    check mark on ``chosen``. A caption line above says where and on what it was measured;
    codecs that could not be measured are listed below with the reason.
    """
    rows = table.get("rows", table.get("table")) or []
    shape = table.get("shape")
    raw_acc = table.get("raw_accuracy")
    where = [
        f"Measured at cut point `{table.get('cut_point', '?')}`",
        f"boundary shape {tuple(shape)}" if shape else "",
        f"{table.get('samples', '?')} validation samples",
        f"raw accuracy {100 * float(raw_acc):.2f} %" if raw_acc is not None else "",
        f"timings on {table['host']}" if table.get("host") else "",
    ]
    lines = [
        ", ".join(part for part in where if part) + ".",
        "",
        "| codec | bytes/sample | x fewer than raw fp32 | accuracy delta (pp) | encode ms "
        "| decode ms | chosen |",
        "|---|---:|---:|---:|---:|---:|:---:|",
    ]
    for row in rows:
        mark = "✓" if chosen is not None and row.get("codec") == chosen else ""
        lines.append(
            f"| {row.get('codec', '?')} | {float(row.get('bytes_per_sample', 0)):,.0f} "
            f"| {_factor(row):.2f}x | {float(row.get('accuracy_delta_pp', 0)):+.2f} "
            f"| {float(row.get('encode_ms', 0)):.3f} | {float(row.get('decode_ms', 0)):.3f} "
            f"| {mark} |"
        )
    skipped = sorted((table.get("skipped") or {}).items())
    if skipped:
        lines.append("")
        lines.extend(f"- not measured: {name}: {why}" for name, why in skipped)
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
    lines.extend(format_codec_table(manifest.codec))
    lines.append(f"files: {len(manifest.files)} (sha256 verified on load)")
    return "\n".join(lines)
