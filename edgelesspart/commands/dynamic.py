"""``edgelesspart train-widths | widths | serve-widths``: prune-robust width bundles.

(``serve-edge`` and ``evaluate`` hand a width bundle to :func:`run_width_edge` and
:func:`run_widths`.)

``train-widths`` trains the chain CNN (or, with ``--model``, the user's model cut into
``--stages`` stages) with a prune-robust strategy and exports a width bundle;
``widths`` prints the accuracy and latency of every stage at every width (the evaluation of a
width bundle); ``serve-widths`` serves one with an SLO controller, on one node (``--edge``: the
whole model narrows together, before requests are refused) or as a Ray chain of stage actors.
Nothing heavy is imported at the top.
"""

from __future__ import annotations

import argparse
import json
from typing import Any


def register(sub: Any) -> None:
    """Add the ``train-widths``, ``widths`` and ``serve-widths`` subcommands."""
    p = sub.add_parser(
        "train-widths",
        help="train a chain CNN that works at several widths and export a width bundle",
        description="Prune-robust training (posthoc | slimmable | sandwich) of the 4-stage chain "
        "CNN on a dataset, then one LiteRT segment per stage and width with measured latency "
        "and accuracy (dynamic.json).",
    )
    p.add_argument("--out", required=True, help="width bundle directory")
    p.add_argument(
        "--model",
        default="chain_cnn",
        help="chain_cnn (default) | small_cnn | resnet50 | mobilenetv2 | FILE.keras: any other "
        "model is cut into --stages stages whose inner channels narrow (sandwich rule)",
    )
    p.add_argument("--stages", type=int, default=4, help="--model: stages of the chain")
    p.add_argument("--cuts", default=None, help="--model: comma-separated boundary cut points")
    p.add_argument("--image-size", type=int, default=None, help="input side (default: dataset's)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per split")
    p.add_argument("--dataset", default="digits", help="digits | cifar10 | .npz | folder")
    p.add_argument("--strategy", default="sandwich", help="posthoc | slimmable | sandwich")
    p.add_argument("--epochs", type=int, default=5, help="training epochs")
    p.add_argument(
        "--pretrain-epochs",
        type=int,
        default=0,
        help="--model: epochs at full width first, then --epochs of the sandwich rule",
    )
    p.add_argument("--widths", default="1,0.75,0.5,0.25", help="comma-separated widths")
    p.add_argument("--seed", type=int, default=0, help="seed")
    p.set_defaults(func=run_train)

    p = sub.add_parser(
        "widths",
        help="accuracy and latency of every stage at every width of a width bundle",
        description="Print (or --json) the measured curves a width bundle carries.",
    )
    p.add_argument("bundle", help="width bundle directory")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run_widths)

    p = sub.add_parser(
        "serve-widths",
        help="serve a width bundle with an SLO width controller (edge or Ray chain)",
        description="POST /v1/infer, GET /metrics (width per stage, SLO attainment), "
        "GET /v1/metrics (decisions with reasons).",
    )
    p.add_argument("bundle", help="width bundle directory")
    p.add_argument("--slo-ms", type=float, default=None, help="latency SLO (default: no control)")
    p.add_argument("--edge", action="store_true", help="one node (default: one Ray actor/stage)")
    p.add_argument("--scale", type=float, default=1.0, help="emulated device slowdown (sleep)")
    p.add_argument("--max-queue", type=int, default=8, help="edge: waiting requests before 429")
    p.add_argument("--ray-address", default="local", help="local | auto | HOST:PORT")
    p.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8090, help="TCP port (default: 8090)")
    p.add_argument("--token", default=None, help="bearer token (required off loopback)")
    p.set_defaults(func=run_serve)


def run_train(args: argparse.Namespace) -> int:
    """Train with the chosen strategy and export the width bundle."""
    from edgelesspart.dynamic.export import export_width_bundle
    from edgelesspart.dynamic.model import build_chain_cnn
    from edgelesspart.dynamic.training import WidthTrainingConfig, train_width_robust
    from edgelesspart.dynamic.widths import check_widths
    from edgelesspart.model.datasets import load_dataset

    widths = check_widths(args.widths.split(","))
    data = load_dataset(args.dataset, seed=args.seed, image_size=args.image_size, limit=args.limit)
    if args.model != "chain_cnn":
        return _train_user_model(args, data, widths)
    if args.pretrain_epochs:
        from edgelesspart.errors import ConfigError

        raise ConfigError(
            "--pretrain-epochs applies to --model (a user model); the chain CNN trains with "
            "--strategy from the first epoch. Drop --pretrain-epochs."
        )
    config = WidthTrainingConfig(
        strategy=args.strategy, epochs=args.epochs, widths=widths, seed=args.seed
    )
    model = build_chain_cnn(data.input_shape, data.num_classes, seed=args.seed)
    record = train_width_robust(model, data, config)
    manifest = export_width_bundle(
        model, data, args.out, strategy=args.strategy, widths=widths, training=record
    )
    print(format_widths(manifest))
    return 0


def _train_user_model(args: argparse.Namespace, data: Any, widths: tuple[float, ...]) -> int:
    """``train-widths --model``: the user's model, sandwich-trained per stage, exported."""
    from edgelesspart.dynamic.usermodel import (
        UserWidthConfig,
        export_user_width_bundle,
        plan_widths,
        train_user_widths,
    )
    from edgelesspart.errors import ConfigError
    from edgelesspart.model.zoo import build_model, load_user_model

    if args.strategy != "sandwich":
        raise ConfigError(
            f"--strategy {args.strategy} applies to the chain CNN only; --model trains with the "
            "sandwich rule and in-place distillation (drop --strategy)."
        )
    if args.model.endswith(".keras"):
        model = load_user_model(args.model)
    else:
        model = build_model(args.model, data.input_shape, data.num_classes, seed=args.seed)
    cuts = [c.strip() for c in args.cuts.split(",")] if args.cuts else None
    graph, plan = plan_widths(model, args.stages, cuts)
    config = UserWidthConfig(
        epochs=args.epochs, pretrain_epochs=args.pretrain_epochs, widths=widths, seed=args.seed
    )
    record = train_user_widths(model, graph, plan, data, config)
    record["model"] = args.model
    record["input_shape"] = list(data.input_shape)
    manifest = export_user_width_bundle(
        model, graph, plan, data, args.out, widths=widths, training=record
    )
    print(f"{args.model}: stages cut at {', '.join(plan.cuts)}")
    print(format_widths(manifest))
    return 0


def format_widths(manifest: Any) -> str:
    """A text table: per stage and width, channels, latency and accuracy; uniform accuracy."""
    lines = [f"strategy {manifest.strategy}; accuracy with all stages at one width:"]
    lines.append("  " + "  ".join(f"w={k}: {v:.3f}" for k, v in manifest.uniform_accuracy.items()))
    lines.append("stage  width  channels  latency_ms  accuracy (only this stage narrowed)")
    for stage in manifest.stages:
        for seg in stage.segments:
            lines.append(
                f"{stage.index:5d}  {seg.width:5g}  {seg.channels:8d}  {seg.latency_ms:10.4f}  "
                f"{seg.accuracy:.3f}"
            )
    return "\n".join(lines)


def run_widths(args: argparse.Namespace) -> int:
    """Print a width bundle's curves."""
    from edgelesspart.dynamic.widths import load_manifest

    manifest = load_manifest(args.bundle)
    print(json.dumps(manifest.to_dict(), indent=2) if args.json else format_widths(manifest))
    return 0


def run_serve(args: argparse.Namespace) -> int:
    """Serve a width bundle until interrupted."""
    from edgelesspart.dynamic.app import create_app
    from service_http.wsgi import require_token_off_loopback, serve

    require_token_off_loopback(args.host, args.token, "serve-widths")
    service, owned = _service(args)
    try:
        app = create_app(service, token=args.token)
        mode = "edge" if args.edge else f"{service.stages}-stage Ray chain"
        announce = f"width service ({mode}, SLO {args.slo_ms} ms) on http://{args.host}:{args.port}"
        serve(app, host=args.host, port=args.port, threads=args.max_queue + 4, announce=announce)
    finally:
        service.close()
        if owned is not None:
            from edgelesspart.pipeline import raykit

            raykit.disconnect(owned)
    return 0


def run_width_edge(args: argparse.Namespace) -> int:
    """``serve-edge`` on a width bundle: one node, ``--slo-ms`` narrows before refusing."""
    from edgelesspart.dynamic.app import create_app
    from edgelesspart.dynamic.edge import WidthEdge
    from service_http.wsgi import require_token_off_loopback, serve

    require_token_off_loopback(args.host, args.token, "serve-edge")
    queue = 8 if args.max_queue is None else int(args.max_queue)
    edge = WidthEdge(args.bundle, slo_ms=args.slo_ms, max_queue=queue).start()
    try:
        serve(
            create_app(edge, token=args.token),
            host=args.host,
            port=args.port,
            threads=args.threads or queue + 4,
            announce=f"width edge (SLO {args.slo_ms} ms) for {args.bundle} on "
            f"http://{args.host}:{args.port}",
        )
    finally:
        edge.close()
    return 0


def _service(args: argparse.Namespace) -> tuple[Any, bool | None]:
    from edgelesspart.dynamic.controller import (
        ControllerConfig,
        WidthController,
        curves_from_manifest,
    )
    from edgelesspart.dynamic.widths import load_manifest

    if args.edge:
        from edgelesspart.dynamic.edge import WidthEdge

        edge = WidthEdge(
            args.bundle, slo_ms=args.slo_ms, scale=args.scale, max_queue=args.max_queue
        )
        return edge.start(), None
    from edgelesspart.dynamic.pipeline import DynamicPipeline
    from edgelesspart.pipeline import raykit

    owned = raykit.connect(args.ray_address)
    try:
        controller = None
        if args.slo_ms is not None:
            curves, full = curves_from_manifest(load_manifest(args.bundle), scale=args.scale)
            controller = WidthController(curves, full, ControllerConfig(args.slo_ms))
        pipe = DynamicPipeline(args.bundle, scale=args.scale, controller=controller)
        return pipe.start(), owned
    except BaseException:
        raykit.disconnect(owned)  # the Ray instance this call started, not left running
        raise
