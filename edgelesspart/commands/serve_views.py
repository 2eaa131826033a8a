"""``edgelesspart serve-views DEPLOYMENT``: a SlimEdge multi-view deployment on Ray over HTTP.

One Ray actor per device runs its view's pruned backbone (LiteRT), an aggregator actor fuses the
views that answered, and the dispatcher re-plans the survivors when a device is lost (missed
deadlines or a dead actor) and swaps their segments without stopping. Nothing heavy at import:
Ray, Flask and LiteRT are imported inside :func:`run_serve`.
"""

from __future__ import annotations

import argparse
from typing import Any

from edgelesspart.commands.ray_args import add_ray_server_args


def register(sub: Any) -> None:
    """Add the ``serve-views`` subcommand."""
    parser = sub.add_parser(
        "serve-views",
        help="serve a SlimEdge deployment (build --views) as Ray device actors behind HTTP",
        description="Start one Ray actor per device (pinned with --place) and an aggregator; "
        "POST /v1/infer takes one sample with all views. A lost device is re-planned around "
        "(precomputed single-failure plans, NSGA-II otherwise). GET /metrics has per-device "
        "state, failures and re-plans.",
    )
    parser.add_argument("deployment", help="deployment directory (built with build --views)")
    add_ray_server_args(parser, port=8091)
    parser.add_argument(
        "--place", default=None, help="view=RESOURCE pairs, e.g. view0=rpi-0,view1=jetson-0"
    )
    parser.add_argument(
        "--deadline", type=float, default=2.0, help="seconds a request waits for the views"
    )
    parser.add_argument(
        "--max-missed", type=int, default=2, help="missed deadlines before a device is lost"
    )
    parser.add_argument(
        "--request-deadline",
        type=float,
        default=30.0,
        help="seconds a request may wait for the aggregator to come back after a failure; "
        "then 503 with Retry-After (default 30)",
    )
    parser.add_argument(
        "--no-rejoin",
        action="store_true",
        help="keep a lost device lost (default: re-create it once a node offers its resource)",
    )
    parser.add_argument(
        "--emulate-devices",
        action="store_true",
        help="sleep each device's latency factor (from the deployment) to emulate it",
    )
    parser.add_argument("--threads", type=int, default=8, help="waitress threads")
    parser.add_argument(
        "--token", default=None, help="bearer token (required with a non-loopback --host)"
    )
    parser.set_defaults(func=run_serve)


def resources_for(place: str | None, views: int) -> list[str | None]:
    """``view0=rpi-0,...`` -> one Ray custom resource (or ``None``) per view."""
    from edgelesspart.pipeline.raykit import parse_placement

    names = [f"view{v}" for v in range(views)]
    placement = parse_placement(place, names)
    return [placement.get(name) for name in names]


def run_serve(args: argparse.Namespace) -> int:
    """Connect to Ray, start the device actors and serve until interrupted."""
    from edgelesspart.pipeline import raykit
    from edgelesspart.slimedge.app import create_app, load_deployment, service_from_deployment
    from service_http.wsgi import require_token_off_loopback, serve

    require_token_off_loopback(args.host, args.token, "serve-views")
    manifest = load_deployment(args.deployment)
    resources = resources_for(args.place, int(manifest["views"]))
    owned = raykit.connect(args.ray_address, num_cpus=args.num_cpus)
    try:
        service = service_from_deployment(
            manifest,
            resources=resources,
            emulate=args.emulate_devices,
            deadline_s=args.deadline,
            max_missed=args.max_missed,
            request_deadline_s=args.request_deadline,
            revive=not args.no_rejoin,
        )
        for v, slot in enumerate(manifest["devices"]):
            where = resources[v] or "anywhere"
            print(f"view {v}: {slot['name']} at ratio {service.ratios[v]:.2f} ({where})")
        try:
            serve(create_app(service, manifest, token=args.token), host=args.host,
                  port=args.port, threads=args.threads)  # fmt: skip
        finally:
            service.close()
    finally:
        raykit.disconnect(owned)
    return 0
