"""``edgelesspart serve-pipeline BUNDLE``: the dispatcher of a multi-node (DEFER) pipeline.

Also prints what ``edgelesspart build --pipeline ...`` built (:func:`run_pipeline_build`). Nothing
heavy at import: Ray, Flask and TensorFlow are imported inside the ``run_*`` functions.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

from edgelesspart.commands.ray_args import add_ray_server_args, add_spare_args


def register(sub: Any) -> None:
    """Add the ``serve-pipeline`` subcommand."""
    parser = sub.add_parser(
        "serve-pipeline",
        help="serve an N-stage bundle as a chain of Ray stage actors behind an HTTP dispatcher",
        description="Start one Ray actor per stage (pinned with --place), stream POST /v1/infer "
        "inputs through them with a bounded in-flight window (429 when full) and answer in "
        "order. GET /metrics has per-stage busy time, queue length and bytes.",
    )
    parser.add_argument("bundle", help="bundle directory (built with build --pipeline)")
    add_ray_server_args(parser, port=8090)
    parser.add_argument(
        "--place", default=None, help="stage=RESOURCE pairs, e.g. stage0=rpi-0,stage1=rpi-1"
    )
    parser.add_argument("--window", type=int, default=8, help="inputs in flight (default 8)")
    parser.add_argument("--codec", default=None, help="override every link's codec")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="early exits (bundles built with --exits-per-part) answer at this confidence "
        "(default: the bundle's serving threshold, as serve-edge; refused without exits)",
    )
    parser.add_argument(
        "--slowdown", type=float, default=1.0, help="emulate devices k times slower (sleeps)"
    )
    parser.add_argument(
        "--emulate-link", default=None, help="emulate a link between nodes (name or JSON file)"
    )
    parser.add_argument(
        "--deadline",
        type=float,
        default=30.0,
        help="seconds a request may take, retries after a lost stage included; then 503 with "
        "Retry-After while a stage is down, else 504 (default 30)",
    )
    add_spare_args(parser)
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=-1,
        help="Ray restarts of a stage actor (-1, default: unlimited; a restart waits for a node)",
    )
    parser.add_argument(
        "--max-task-retries",
        type=int,
        default=0,
        help="Ray-level retries of a dead actor's calls (default 0: the dispatcher retries "
        "within --deadline)",
    )
    add_cloud_tail_args(parser)
    parser.add_argument(
        "--threads", type=int, default=None, help="waitress threads (default: --window + 4)"
    )
    parser.add_argument(
        "--slo-ms",
        type=float,
        default=None,
        help="width bundles (train-widths): switch each stage's width live to meet this SLO",
    )
    parser.add_argument(
        "--shed-cloud",
        default=None,
        help="width bundles with exit heads, with --slo-ms: the whole model in the cloud "
        "(serve-cloud on a CloudPart of every stage); under overload the controller narrows "
        "only within --accuracy-budget and sends the rest of the load there",
    )
    parser.add_argument(
        "--accuracy-budget",
        type=float,
        default=0.01,
        help="with --shed-cloud: accuracy (0..1) widths may cost before shedding (default 0.01)",
    )
    parser.add_argument(
        "--token", default=None, help="bearer token (required with a non-loopback --host)"
    )
    parser.set_defaults(func=run_serve)


def add_cloud_tail_args(parser: argparse.ArgumentParser) -> None:
    """``--cloud`` and its transport options (the cloud tail of a chain of edge nodes)."""
    parser.add_argument(
        "--cloud",
        default=None,
        help="cloud tail: http(s)://HOST:PORT or lambda://FUNCTION_NAME; rows no edge stage's "
        "exit answered go there from the last edge stage (bundles built with --nodes N "
        "--cloud-device, or any bundle whose last stage is the cloud part)",
    )
    parser.add_argument("--cloud-token", default=None, help="serve-cloud's shared secret")
    parser.add_argument("--lambda-endpoint", default=None, help="boto3 endpoint_url (lambda://)")
    parser.add_argument("--region", default=None, help="AWS region for lambda://")
    parser.add_argument(
        "--cloud-timeout", type=float, default=2.0, help="cloud read timeout, s (default 2)"
    )


def check_pipeline_options(args: argparse.Namespace, manifest: Any) -> None:
    """Refuse, at start and with a message, options the bundle cannot use.

    Raises:
        ConfigError: ``--threshold`` on a chain without early exits, or ``--cloud`` on a
            bundle without a stage to leave to the cloud.
    """
    from edgelesspart.errors import ConfigError

    exits = any(s.exit not in (None, "final") for s in manifest.segments)
    if args.threshold is not None and not exits:
        raise ConfigError(
            f"--threshold {args.threshold:g} does not apply to {args.bundle}: its stages have no "
            "early exits. Build with --exits-per-part, or leave --threshold out."
        )
    if getattr(args, "cloud", None) and len(manifest.stage_names) < 2:
        raise ConfigError(
            f"--cloud does not apply to {args.bundle}: it has the single stage "
            f"{list(manifest.stage_names)}, so nothing is left for the cloud. Build with --nodes "
            "N --cloud-device DEVICE."
        )


def _stages(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """The bundle's stages with --place, --codec and the emulation flags applied; with
    ``--cloud`` the edge stages only (the cloud part runs in the cloud function)."""
    from edgelesspart.pipeline import raykit
    from edgelesspart.pipeline.contract import edge_stage_names
    from edgelesspart.pipeline.dispatcher import default_stages, stages_with
    from edgelesspart.pipeline.emulation import DeviceEmulation
    from edgelesspart.profiling import links
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(args.bundle, verify=False)
    check_pipeline_options(args, manifest)
    specs = default_stages(manifest)
    if getattr(args, "cloud", None):
        edge = set(edge_stage_names(manifest, cloud_tail=True))
        specs = [s for s in specs if s.name in edge]
    placement = raykit.parse_placement(args.place, [s.name for s in specs])
    link = links.load_link(args.emulate_link) if args.emulate_link else None
    emulation = DeviceEmulation(
        slowdown=args.slowdown,
        link_mbps=link.uplink_mbps if link else None,
        link_rtt_ms=link.rtt_ms if link else 0.0,
    )
    threshold = args.threshold
    if threshold is None and any(s.exit not in (None, "final") for s in manifest.segments):
        from edgelesspart.runtime.confidence import serving_threshold

        threshold = serving_threshold(manifest.serving)  # the build's choice, as serve-edge's
    stages = stages_with(
        specs, placement=placement, emulation=emulation, codec=args.codec, threshold=threshold
    )
    return stages, emulation


def run_serve(args: argparse.Namespace) -> int:
    """Connect to Ray, start the stage actors and serve the dispatcher until interrupted."""
    from edgelesspart.pipeline import raykit
    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.dispatcher import Pipeline
    from service_http.wsgi import require_token_off_loopback, serve

    require_token_off_loopback(args.host, args.token, "serve-pipeline")
    if (Path(args.bundle) / "dynamic.json").is_file():
        return _serve_width_chain(args)
    if args.slo_ms is not None or getattr(args, "shed_cloud", None):
        from edgelesspart.errors import ConfigError

        flag = "--slo-ms" if args.slo_ms is not None else "--shed-cloud"
        raise ConfigError(
            f"{flag} needs stage widths, but {args.bundle} is not a width bundle (no "
            "dynamic.json). Build one with `edgelesspart train-widths --model ...`, or drop "
            f"{flag}."
        )
    stages, emulation = _stages(args)
    owned = raykit.connect(args.ray_address, num_cpus=args.num_cpus)
    try:
        pipeline = Pipeline(
            args.bundle,
            stages,
            window=args.window,
            deadline_s=args.deadline,
            input_emulation=emulation,
            max_restarts=args.max_restarts,
            max_task_retries=args.max_task_retries,
            spare=args.spare,
            spare_after_s=args.spare_after,
        ).start()
        try:
            for worker in pipeline.workers:
                print(f"stage {worker['stage']}: ready (pid {worker['pid']})")
            if args.ray_address == "local":
                print(f"private local Ray at {owned.address} (temp dir {owned.temp_dir})")
            offloader = None
            if args.cloud:
                from edgelesspart.pipeline.contract import make_offloader

                offloader = make_offloader(
                    args.cloud, token=args.cloud_token, lambda_endpoint=args.lambda_endpoint,
                    region=args.region, timeout_s=args.cloud_timeout,
                    codec=stages[-1].codec_out or "raw",  # the plan's hand-off codec
                )  # fmt: skip
                print(f"cloud tail: {args.cloud} (after stage {stages[-1].name})")
            app = create_app(pipeline, token=args.token, offloader=offloader, cloud=args.cloud)
            serve(app, host=args.host, port=args.port, threads=args.threads or args.window + 4)
        finally:
            pipeline.close()
    finally:
        raykit.disconnect(owned)
    return 0


def _serve_width_chain(args: argparse.Namespace) -> int:
    """A width bundle: one width-switching Ray actor per edge stage, the SLO controller live,
    with its exit heads and the cloud tail when the bundle has them and ``--cloud`` is given."""
    from edgelesspart.dynamic.app import create_app
    from edgelesspart.pipeline import raykit
    from service_http.wsgi import serve

    owned = raykit.connect(args.ray_address, num_cpus=getattr(args, "num_cpus", None))
    try:
        pipe = width_chain(args).start()
        try:
            mode = f"{pipe.stages}-stage width chain"
            if pipe.threshold is not None:
                mode += f", exits at {pipe.threshold:g}"
            if pipe.offloader is not None:
                mode += f", cloud tail {args.cloud}"
            if pipe.shed_offloader is not None:
                mode += f", shedding to {args.shed_cloud} under overload"
            serve(
                create_app(pipe, token=args.token), host=args.host, port=args.port,
                threads=args.threads or args.window + 4,
                announce=f"{mode} (SLO {args.slo_ms} ms) on http://{args.host}:{args.port}",
            )  # fmt: skip
        finally:
            pipe.close()
    finally:
        raykit.disconnect(owned)
    return 0


def width_chain(args: argparse.Namespace) -> Any:
    """The (not yet started) :class:`~edgelesspart.dynamic.pipeline.DynamicPipeline` that
    ``serve-pipeline`` runs for a width bundle: ``--slo-ms`` (controller), ``--threshold``
    (exit heads; default the bundle's serving threshold), ``--cloud`` (the last stage(s) of the
    bundle's ``manifest.json`` marked ``tier: cloud`` run there), ``--emulate-link``,
    ``--slowdown`` (device scale) and ``--window``.

    Raises:
        ConfigError: an option the bundle cannot use (``--place``/``--codec``; ``--threshold``
            without exit heads; ``--cloud`` without ``manifest.json``).
    """
    from edgelesspart.dynamic.controller import (
        ControllerConfig,
        WidthController,
        curves_from_manifest,
    )
    from edgelesspart.dynamic.pipeline import DynamicPipeline
    from edgelesspart.dynamic.widths import load_manifest
    from edgelesspart.errors import ConfigError

    unsupported = [flag for flag, value in (("--place", args.place), ("--codec", args.codec))
                   if value is not None]  # fmt: skip
    if unsupported:
        raise ConfigError(
            f"{', '.join(unsupported)} do not apply to a width bundle ({args.bundle}): its "
            "stages hand on raw full-shape tensors to one actor each. Drop them."
        )
    manifest = load_manifest(args.bundle)
    if args.threshold is not None and not manifest.exits:
        raise ConfigError(
            f"--threshold {args.threshold:g} does not apply to {args.bundle}: the width bundle "
            "has no exit heads. Add them with edgelesspart.dynamic.exits.add_width_exits "
            "(experiments/bench_p12_composed.py does), or leave --threshold out."
        )
    threshold = args.threshold
    if threshold is None and manifest.exits:
        threshold = float(manifest.serving.get("threshold", 1.0))
    edge_stages, offloader = len(manifest.stages), None
    if args.cloud:
        from edgelesspart.pipeline.contract import make_offloader
        from edgelesspart.runtime.manifest import load_manifest as load_chain

        chain_file = Path(args.bundle) / "manifest.json"
        if not chain_file.is_file():
            raise ConfigError(
                f"--cloud needs the cloud tail of {args.bundle}, but it has no manifest.json. "
                "Write it with edgelesspart.dynamic.exits.write_chain_manifest and serve it "
                "with `edgelesspart serve-cloud BUNDLE`."
            )
        chain = load_chain(args.bundle, verify=False)
        edge_stages = sum(1 for s in chain.plan.stages if s.options.get("tier") != "cloud")
        offloader = make_offloader(
            args.cloud, token=args.cloud_token, lambda_endpoint=args.lambda_endpoint,
            region=args.region, timeout_s=args.cloud_timeout,
        )  # fmt: skip
    link = None
    if args.emulate_link:
        from edgelesspart.profiling import links

        link = links.load_link(args.emulate_link)
    shed_cloud, shed_route, shed_accuracy = getattr(args, "shed_cloud", None), None, None
    if shed_cloud:
        cloud_accuracy = manifest.serving.get("validation_final_accuracy")
        if args.slo_ms is None or cloud_accuracy is None:
            raise ConfigError(
                "--shed-cloud is a lever of the width controller: it needs --slo-ms and a "
                f"bundle whose exit heads record the final classifier's accuracy ({args.bundle} "
                "does not; run edgelesspart.dynamic.exits.add_width_exits again)."
            )
        from edgelesspart.pipeline.contract import make_offloader

        shed_accuracy = float(cloud_accuracy)
        shed_route = make_offloader(
            shed_cloud, token=args.cloud_token, lambda_endpoint=args.lambda_endpoint,
            region=args.region, timeout_s=args.cloud_timeout,
        )  # fmt: skip
    controller = None
    if args.slo_ms is not None:
        curves, full = curves_from_manifest(
            manifest, scale=args.slowdown, exits=threshold is not None
        )
        config = ControllerConfig(
            args.slo_ms, accuracy_budget=getattr(args, "accuracy_budget", 0.01)
        )
        controller = WidthController(curves[:edge_stages], full, config, shed_accuracy)
    pipe = DynamicPipeline(
        args.bundle, scale=args.slowdown, controller=controller, window=args.window,
        edge_stages=edge_stages, threshold=threshold, offloader=offloader,
        link_mbps=link.uplink_mbps if link else None, link_rtt_ms=link.rtt_ms if link else 0.0,
        shed_offloader=shed_route,
    )  # fmt: skip
    pipe.cloud = args.cloud if args.cloud else None
    return pipe


def run_pipeline_build(args: argparse.Namespace, config: Any) -> int:
    """``build --pipeline/--nodes``: plan the chain, export the N-stage bundle, print the plan."""
    from edgelesspart.export.summary import format_plan
    from edgelesspart.pipeline.export import build_pipeline_bundle, parse_devices

    devices = parse_devices(args.pipeline, args.nodes, config.edge_device)
    if not config.out:
        stem = Path(config.model).stem if config.model.endswith(".keras") else config.model
        config = replace(config, out=str(Path("bundles") / f"{stem}-pipeline-{len(devices)}"))
    stage_exits = 0
    if getattr(args, "exits_per_part", None) is not None:  # only when asked: DEFER has none
        from edgelesspart.build import parse_exits_per_part

        stage_exits = parse_exits_per_part(args.exits_per_part)[0]
    cloud_device = getattr(args, "cloud_device", None)  # given: N edge stages + a cloud tail
    result = build_pipeline_bundle(
        config, devices, stage_exits=stage_exits, cloud_device=cloud_device,
        show_progress=not args.quiet,
    )  # fmt: skip
    print(format_plan(result.plan))
    tail = result.plan.parameters.get("cloud_tail")
    if tail:
        print(
            f"cloud tail: hand-off at {tail['handoff']} ({tail['codec']}, {tail['wire_bytes']:,} "
            f"bytes, limit {tail['payload_limit'] or 'none'}), cloud part {tail['cloud_ms']:.3g} "
            f"ms, {tail['latency_ms']:.4g} ms per offloaded request (cold start "
            f"{tail['cold_start_prob']:.0%} x {tail['cold_start_ms']:.0f} ms), "
            f"${tail['cost_per_million']:.3g} per 1M offloads on {tail['provider']}"
        )
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"bundle: {result.bundle} (id {result.manifest.bundle_id}); {timings}")
    return 0
