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
        help="early exits (bundles built with --exits-per-part) answer at this confidence",
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
    parser.add_argument("--threads", type=int, default=None, help="waitress threads")
    parser.add_argument(
        "--token", default=None, help="bearer token (required with a non-loopback --host)"
    )
    parser.set_defaults(func=run_serve)


def _stages(args: argparse.Namespace) -> tuple[list[Any], Any]:
    """The bundle's stages with --place, --codec and the emulation flags applied."""
    from edgelesspart.pipeline import raykit
    from edgelesspart.pipeline.dispatcher import default_stages, stages_with
    from edgelesspart.pipeline.emulation import DeviceEmulation
    from edgelesspart.profiling import links
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(args.bundle, verify=False)
    specs = default_stages(manifest)
    placement = raykit.parse_placement(args.place, [s.name for s in specs])
    link = links.load_link(args.emulate_link) if args.emulate_link else None
    emulation = DeviceEmulation(
        slowdown=args.slowdown,
        link_mbps=link.uplink_mbps if link else None,
        link_rtt_ms=link.rtt_ms if link else 0.0,
    )
    stages = stages_with(
        specs, placement=placement, emulation=emulation, codec=args.codec, threshold=args.threshold
    )
    return stages, emulation


def run_serve(args: argparse.Namespace) -> int:
    """Connect to Ray, start the stage actors and serve the dispatcher until interrupted."""
    from edgelesspart.pipeline import raykit
    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.dispatcher import Pipeline
    from service_http.wsgi import require_token_off_loopback, serve

    require_token_off_loopback(args.host, args.token, "serve-pipeline")
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
            app = create_app(pipeline, token=args.token)
            serve(app, host=args.host, port=args.port, threads=args.threads or args.window + 4)
        finally:
            pipeline.close()
    finally:
        raykit.disconnect(owned)
    return 0


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
    result = build_pipeline_bundle(
        config, devices, stage_exits=stage_exits, show_progress=not args.quiet
    )
    print(format_plan(result.plan))
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"bundle: {result.bundle} (id {result.manifest.bundle_id}); {timings}")
    return 0
