"""Build an N-stage pipeline bundle: profile, measure codecs, plan the chain, export (needs TF).

:func:`build_pipeline_bundle` is what ``edgelesspart build --pipeline rpi4,rpi4,jetson-orin-nano``
runs: the dataset and model come from the same :class:`~edgelesspart.build.BuildConfig` as a
two-stage build, the host profile is scaled to each node's device, the encode/decode time of every
candidate codec is measured at every profiled cut point on this host, and
:func:`~edgelesspart.planning.chain.plan_chain` picks the cuts and a codec per link. The bundle
holds one stage per node (each stage's ``options["codec_out"]`` is its link's codec) and no exit
heads; the stage actors support exits when a bundle has them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import ConfigError
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT, Plan, Stage

#: The codecs ``--codec auto`` lets the planner choose from, per link (DEFER used zfp+lz4).
AUTO_CODECS = ("raw", "zfp+lz4", "int8+zstd")
CODEC_REPEATS = 5


def parse_devices(pipeline: str | None, nodes: int | None, edge_device: str) -> list[str]:
    """``--pipeline rpi4,rpi4`` or ``--nodes 2 --edge-device rpi4`` -> the node devices."""
    if pipeline:
        devices = [d.strip() for d in str(pipeline).split(",") if d.strip()]
        if nodes is not None and int(nodes) != len(devices):
            raise ConfigError(f"--nodes {nodes} disagrees with --pipeline ({len(devices)} nodes).")
    elif nodes is not None:
        devices = [edge_device] * int(nodes)
    else:
        raise ConfigError("A pipeline build needs --pipeline DEVICE,... or --nodes N.")
    if not devices:
        raise ConfigError("--pipeline lists no device; write e.g. --pipeline rpi4,rpi4,rpi4.")
    return devices


def measure_boundaries(
    model: Any, cuts: Sequence[str], sample: np.ndarray, codecs: Sequence[str]
) -> tuple[dict[str, dict[str, tuple[float, float]]], dict[str, dict[str, int]]]:
    """Host encode/decode milliseconds and encoded bytes of each cut's tensor, per codec.

    Returns:
        ``(codec_ms, encoded_bytes)``: cut -> codec -> (encode ms, decode ms) (median of
        :data:`CODEC_REPEATS`) and cut -> codec -> bytes per sample. Codecs that cannot carry a
        tensor (missing library, unsupported values) are left out.
    """
    from edgelesspart._lazy import keras
    from edgelesspart.errors import CodecError
    from edgelesspart.model.graph import cut_tensor
    from edgelesspart.runtime.codecs import decode_tensor, encode_tensor

    probe = keras().Model(model.inputs[0], [cut_tensor(model, c) for c in cuts])
    outputs = probe(np.asarray(sample[:1], dtype=np.float32), training=False)
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    times: dict[str, dict[str, tuple[float, float]]] = {}
    sizes: dict[str, dict[str, int]] = {}
    for cut, tensor in zip(cuts, outputs):
        arr = np.ascontiguousarray(np.asarray(tensor, dtype=np.float32))
        times[cut], sizes[cut] = {}, {}
        for codec in codecs:
            enc, dec = [], []
            try:
                for _ in range(CODEC_REPEATS):  # CPU time: other processes do not inflate it
                    t0 = time.thread_time()
                    frame = encode_tensor(arr, codec)
                    t1 = time.thread_time()
                    decode_tensor(frame)
                    enc.append(t1 - t0)
                    dec.append(time.thread_time() - t1)
            except CodecError:
                continue
            times[cut][codec] = (float(np.median(enc)) * 1e3, float(np.median(dec)) * 1e3)
            sizes[cut][codec] = len(frame)
    return times, sizes


def measure_result_bytes(model: Any, stages: int) -> int:
    """Bytes per sample of the frame the last stage sends back: the model's output tensor
    encoded as the runtime sends it (:data:`~edgelesspart.pipeline.stage.RESULT_CODEC`, with the
    header fields a stage adds)."""
    from edgelesspart.pipeline.stage import RESULT_CODEC
    from edgelesspart.runtime.codecs import encode_tensor

    shape = tuple(int(d) for d in model.outputs[0].shape[1:])
    probs = np.zeros((1, *shape), dtype=np.float32)
    meta = {"seq": 10**6, "final": True, "exit": "final", "by": f"stage{stages - 1}"}
    return len(encode_tensor(probs, RESULT_CODEC, meta=meta))


def layer_positions(model: Any, cuts: Sequence[str]) -> dict[str, int]:
    """Index of each cut point's layer in ``model.layers`` (``output``: the layer count)."""
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    positions = {c: index[c] for c in cuts if c in index}
    positions[MODEL_OUTPUT] = len(model.layers)
    return positions


def with_encoded_bytes(profile: Any, sizes: Mapping[str, Mapping[str, int]]) -> Any:
    """The profile with measured encoded bytes merged into each cut point."""
    cps = tuple(
        replace(cp, encoded_bytes={**cp.encoded_bytes, **dict(sizes.get(cp.name, {}))})
        for cp in profile.cut_points
    )
    return replace(profile, cut_points=cps)


def export_chain(
    model: Any,
    plan: Plan,
    out: str | Path,
    *,
    probe: np.ndarray,
    classes: Sequence[str],
    preprocessing: Mapping[str, Any],
    model_info: Mapping[str, Any],
    profile: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    heads: Mapping[str, Any] | None = None,
    bottlenecks: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Any:
    """Export ``plan`` (any number of stages) as a bundle; return its manifest.

    ``heads`` (from :func:`stage_exit_heads`) adds the exit heads the plan's stages list.
    ``bottlenecks`` (cut point -> :class:`~edgelesspart.model.bottleneck.TrainedBottleneck`)
    puts a learned bottleneck on the links leaving those cut points: its encoder ends the
    sending stage's last segment (whose boundary becomes the code), its decoder starts the
    receiving stage's first one, so the stage actors run it with no code of their own. A
    stage whose ``codec_out`` names the crossing (``bn8s1+int8``) sends the code with the
    runtime codec after the ``+`` (:func:`~edgelesspart.pipeline.stage.link_codec`).
    """
    from edgelesspart.export import bundle as export
    from edgelesspart.pipeline.stage import link_codec

    heads = dict(heads or {})
    necks = dict(bottlenecks or {})
    links = {s.end: s.options.get("codec_out") for s in plan.stages[:-1]}
    for cut, neck in necks.items():
        if cut not in links:
            raise ConfigError(
                f"A bottleneck at {cut!r} sits on no link of this plan (its links leave "
                f"{sorted(links)}); plan the chain with that cut or drop the bottleneck."
            )
        if links[cut] != f"{neck.shape.label}+{link_codec(links[cut])}":
            raise ConfigError(
                f"The link leaving {cut!r} sends with {links[cut]!r}, not the bottleneck "
                f"{neck.shape.label!r}; set its stage's codec_out to "
                f"'{neck.shape.label}+int8' (or another codec after the '+')."
            )

    first_codec = next(
        (link_codec(s.options["codec_out"]) for s in plan.stages if s.options.get("codec_out")),
        "raw",
    )
    request = export.ExportRequest(
        backbone=model,
        exit_tensors=dict(heads.get("exit_tensors", {})),
        exit_cuts=dict(heads.get("exit_cuts", {})),
        plan=plan,
        classes=tuple(classes),
        preprocessing=dict(preprocessing),
        exit_code=heads.get("exit_code", "# this pipeline bundle has no exit heads\n"),
        exit_source=heads.get("exit_source", "none"),
        training=dict(heads.get("training", {})),
        model_info=dict(model_info),
        profile=dict(profile or {}),
        extra=dict(extra or {}),
        codec={
            "name": first_codec,
            "selected_by": "pipeline planner",
            "per_link": [s.options.get("codec_out") for s in plan.stages[:-1]],
            **(
                {"link_bottlenecks": {cut: n.describe() for cut, n in necks.items()}}
                if necks
                else {}
            ),
        },
        link_bottlenecks=necks,
    )
    return export.export_bundle(request, out, probe=probe, overwrite=overwrite)


def segment_plan(cuts: Sequence[str], device: str = "host") -> Plan:
    """A plan with one stage per stretch between consecutive ``cuts`` (``seg0``, ``seg1``, ...).

    Exported once, its segments can be grouped into any coarser chain at run time (the
    benchmark does this to run 1, 2, 4 and 8 nodes from one export).
    """
    bounds = [MODEL_INPUT, *cuts, MODEL_OUTPUT]
    stages = tuple(
        Stage(name=f"seg{k}", device=device, start=bounds[k], end=bounds[k + 1])
        for k in range(len(bounds) - 1)
    )
    return Plan(
        constraint="pipeline",
        placement="none",
        stages=stages,
        cut_points=tuple(cuts),
        parameters={"segment_plan": True},
        rationale=f"{len(stages)} fine segments, grouped into stages at run time",
    )


@dataclass(frozen=True)
class PipelineBuild:
    """What :func:`build_pipeline_bundle` produced."""

    bundle: Path
    plan: Plan
    manifest: Any
    seconds: dict[str, float]


def _chain_plan(
    config: Any,
    host_profile: Any,
    devices: Sequence[str],
    extra: dict,
    cloud_device: str | None = None,
) -> Plan:
    from edgelesspart.planning.chain import ChainCosts, plan_chain
    from edgelesspart.profiling import devices as devmod
    from edgelesspart.profiling import links

    profiles = tuple(
        devmod.profile_for_device(host_profile, devmod.load_device(d)) for d in devices
    )
    codecs = AUTO_CODECS if config.codec == "auto" else (config.codec,)
    costs = ChainCosts(
        profiles,
        link=links.load_link(config.link),
        codecs=codecs,
        codec_ms=extra["codec_ms"],
        result_bytes=extra.get("result_bytes"),
    )
    if cloud_device is not None:  # N edge stages + a cloud tail, costed like the two-part build
        from edgelesspart.planning.chain_cloud import plan_chain_with_cloud

        cloud = devmod.load_device(cloud_device)
        objective = "expected-cost" if config.constraint == "expected-cost" else "expected-latency"
        return plan_chain_with_cloud(
            costs, devmod.profile_for_device(host_profile, cloud), cloud, objective=objective
        )
    input_bytes = int(np.prod(host_profile.input_shape)) * 4
    return plan_chain(costs, layer_positions=extra["layers"], input_bytes=input_bytes)


def stage_exit_heads(
    config: Any, model: Any, plan: Plan, host: Any, data: Any, train_config: Any, n: int, log: Any
) -> tuple[Plan, dict[str, Any]]:
    """``n`` early exits inside every stage (placed by ``config.placement`` over the stage's
    latency), rendered from the build's exit definition and trained with the backbone frozen
    (as ``config.exit_training`` says). Returns the plan with the exits and the ``heads`` for
    :func:`export_chain`."""
    from edgelesspart.build import _exit_heads, _train_exits
    from edgelesspart.exits import heads as exits
    from edgelesspart.model import training
    from edgelesspart.planning.placement import place_exits

    stages = tuple(
        replace(s, exits=place_exits(host, s.start, s.end, n, config.placement))
        for s in plan.stages
    )
    plan = replace(plan, stages=stages)
    head = getattr(config, "exit_head", "sdn")
    definition = exits.load_exit_definition(config.exit_spec, config.exit_template, head=head)
    definition, exit_cuts, exit_tensors = _exit_heads(
        model, plan, definition, data.num_classes, head
    )
    joint, epochs, record = _train_exits(config, model, exit_tensors, data, train_config, log)
    accuracy = {
        "val": training.classifier_accuracy(joint, data.x_val, data.y_val),
        "test": training.classifier_accuracy(joint, data.x_test, data.y_test),
    }
    heads = {
        "exit_cuts": exit_cuts,
        "exit_tensors": exit_tensors,
        "exit_code": definition.code,
        "exit_source": f"{definition.kind}:{definition.origin}",
        "training": {"accuracy": accuracy, "exit_epochs": epochs, "exit_training": record},
    }
    return plan, heads


def build_pipeline_bundle(
    config: Any,
    devices: Sequence[str],
    *,
    stage_exits: int = 0,
    cloud_device: str | None = None,
    show_progress: bool = True,
    log: Callable = print,
) -> PipelineBuild:
    """Profile ``config.model`` on this host, plan it over ``devices`` and export the bundle
    (with ``stage_exits`` trained early exits inside every stage; DEFER has none). With
    ``cloud_device`` the plan is N edge stages plus a cloud tail
    (:func:`~edgelesspart.planning.chain_cloud.plan_chain_with_cloud`)."""
    from edgelesspart._lazy import keras
    from edgelesspart.build import _train
    from edgelesspart.model import datasets, zoo
    from edgelesspart.model.graph import functional_model
    from edgelesspart.profiling import profiler

    clock: dict[str, float] = {}
    t0 = time.perf_counter()
    keras().utils.set_random_seed(config.seed)
    data = datasets.load_dataset(
        config.dataset, seed=config.seed, image_size=config.image_size, limit=config.limit
    )
    model, info = zoo.resolve_model(config.model, data.input_shape, data.num_classes, config.seed)
    model = functional_model(model)
    train_config, _, _ = _train(config, model, data, info.get("source") == "zoo")
    clock["load_train"] = round(time.perf_counter() - t0, 2)
    codecs = AUTO_CODECS if config.codec == "auto" else (config.codec,)
    host = profiler.profile_model(
        model,
        model_name=info["name"],
        max_cut_points=config.max_cut_points,
        method=config.profile_method,
        show_progress=show_progress,
        seed=config.seed,
        samples=data.x_val[:8],
        codecs=codecs,
    )
    cuts = [cp.name for cp in host.cut_points[:-1]]
    codec_ms, sizes = measure_boundaries(model, cuts, data.x_val[:1], codecs)
    host = with_encoded_bytes(host, sizes)
    clock["profile"] = round(time.perf_counter() - t0 - sum(clock.values()), 2)
    extra = {
        "codec_ms": codec_ms,
        "layers": layer_positions(model, cuts),
        "result_bytes": measure_result_bytes(model, len(devices)),
    }
    plan = _chain_plan(config, host, devices, extra, cloud_device)
    tail = f" + cloud tail on {cloud_device}" if cloud_device else ""
    log(f"pipeline: {len(devices)} nodes ({', '.join(devices)}){tail} on link {config.link}")
    heads: dict[str, Any] = {}
    if stage_exits:
        plan, heads = stage_exit_heads(
            config, model, plan, host, data, train_config, stage_exits, log
        )
    manifest = export_chain(
        model,
        plan,
        config.bundle_dir,
        probe=data.x_val[:2],
        classes=data.classes,
        preprocessing=data.preprocessing,
        model_info=info,
        profile={**host.to_dict(), "codec_ms": codec_ms},
        extra={
            "build_config": config.to_dict(),
            "pipeline_devices": list(devices),
            "cloud_device": cloud_device,
            # what `evaluate` reloads the build's test split from, as the two-part build
            "dataset": {
                "spec": config.dataset,
                "seed": config.seed,
                "image_size": config.image_size,
                "limit": config.limit,
            },
        },  # fmt: skip
        heads=heads,
        overwrite=config.overwrite,
    )
    clock["export"] = round(time.perf_counter() - t0 - sum(clock.values()), 2)
    return PipelineBuild(Path(config.bundle_dir), plan, manifest, clock)
