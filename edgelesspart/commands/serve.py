"""``edgelesspart serve-edge | serve-cloud | package-cloud``: run and package the services.

Nothing heavy at import (no Flask, boto3 or TensorFlow): each ``run_*`` imports what it needs.
Servers bind to 127.0.0.1 unless ``--host`` says otherwise, and refuse a non-loopback ``--host``
without a token (exit 2). They run under waitress (one process, threads), so no model is ever
loaded before a fork; the default thread count leaves threads free to answer 429 when the
admission limit and its waiting room are full.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``serve-edge``, ``serve-cloud`` and ``package-cloud`` subcommands."""
    _register_edge(sub)
    _register_cloud(sub)
    _register_package(sub)


def _add_server_args(parser: argparse.ArgumentParser, port: int) -> None:
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"TCP port (default: {port})")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="waitress threads (default: admission limit + waiting room + 4)",
    )
    parser.add_argument(
        "--max-inflight",
        type=int,
        default=None,
        help="inference requests at work at once (admission control; default: edge 4, cloud 4)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="requests that may wait for a slot; beyond that 429 with Retry-After (default: "
        "edge 8, cloud 16)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="token clients must send (required with a non-loopback --host; "
        "env EDGELESSPART_TOKEN)",
    )
    parser.add_argument(
        "--public-routes",
        default=None,
        help="comma-separated routes open without the token (default: /healthz; e.g. "
        "/healthz,/metrics for a scraper without a token); env EDGELESSPART_PUBLIC_ROUTES",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="pre-forked worker processes sharing the port (SO_REUSEPORT), each loading the "
        "bundle itself with its own admission gate, batcher and breaker; /metrics sums all "
        "(default 1)",
    )
    parser.add_argument(
        "--dispatch",
        choices=("auto", "inline", "pool"),
        default=None,
        help="where the event-loop server runs the edge stage: inline on the loop's thread "
        "(no hand-off), pool on worker threads (several cores per process), or auto "
        "(default): inline when the stage takes < 1 ms per row on this host, or < 50 ms "
        "with --workers > 1; env EDGELESSPART_DISPATCH",
    )
    parser.add_argument(
        "--batch-max-rows",
        type=int,
        default=None,
        help="dynamic batching: most rows coalesced into one run (default 0: off); "
        "env EDGELESSPART_BATCH_MAX_ROWS",
    )
    parser.add_argument(
        "--batch-delay-us",
        type=int,
        default=None,
        help="dynamic batching: longest wait for more requests in microseconds (default 0: "
        "coalesce only what is already queued); env EDGELESSPART_BATCH_DELAY_US",
    )


def _register_edge(sub: Any) -> None:
    parser = sub.add_parser(
        "serve-edge",
        help="serve the edge part (Flask under waitress) and offload to the cloud",
        description="Answer POST /v1/infer from the bundle's edge exits; send rows that are "
        "not confident to the cloud part; answer degraded if the cloud fails.",
    )
    _add_server_args(parser, 8080)
    parser.add_argument(
        "--cloud",
        default=None,
        help="cloud part: http(s)://HOST:PORT or lambda://FUNCTION_NAME (default: edge only)",
    )
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence threshold (default: the bundle's serving threshold, chosen by the "
        "build; env EDGELESSPART_THRESHOLD)",
    )
    parser.add_argument(
        "--server",
        choices=("async", "waitress"),
        default="async",
        help="async (default): an event loop answers POST /v1/infer tensors and images and "
        "queues them into the batcher, Flask on threads serves the rest; waitress: Flask "
        "under waitress threads (the previous server)",
    )
    parser.add_argument(
        "--lambda-endpoint", default=None, help="boto3 endpoint_url for lambda:// (local tests)"
    )
    parser.add_argument(
        "--region", default=None, help="AWS region for lambda:// (default: us-east-1)"
    )
    parser.add_argument(
        "--cloud-token",
        default=None,
        help="shared secret of a serve-cloud started with --token: every offload is signed "
        "(HMAC-SHA256 of body and timestamp, HTTP and lambda://); env EDGELESSPART_CLOUD_TOKEN",
    )
    parser.add_argument(
        "--cloud-id-token-file",
        default=None,
        help="a file holding a Google ID token for a Cloud Function behind IAM (package-cloud "
        "--auth iam); re-read when it changes; env EDGELESSPART_CLOUD_ID_TOKEN_FILE",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="cloud read timeout in s (default: 2.0; env EDGELESSPART_OFFLOAD_TIMEOUT)",
    )
    parser.add_argument(
        "--codec", default=None, help="tensor codec on the link (default: the bundle's codec)"
    )
    parser.add_argument(
        "--backend",
        choices=("litert", "keras"),
        default=None,
        help="segment engine: litert (default; .tflite on the CPU, XNNPACK) or keras (.keras "
        "segments with TensorFlow, on a GPU when TensorFlow sees one); env EDGELESSPART_BACKEND",
    )
    parser.add_argument(
        "--slo-ms",
        type=float,
        default=None,
        help="width bundles (dynamic.json) only: latency SLO; the edge narrows before it refuses",
    )
    parser.set_defaults(func=run_edge)


def _register_cloud(sub: Any) -> None:
    parser = sub.add_parser(
        "serve-cloud",
        help="serve the cloud part locally: Lambda Invoke API + POST /v1/continue",
        description="A local cloud function: boto3 can invoke it with endpoint_url, and the "
        "edge can POST encoded tensors to /v1/continue. GET /v1/stats counts requests.",
    )
    _add_server_args(parser, 9000)
    parser.add_argument(
        "--function-name", default=None, help="only answer this Lambda function name (default: any)"
    )
    parser.add_argument(
        "--whole-model",
        action="store_true",
        help="run every stage of the bundle from its input, not only its cloud part (the "
        "shed route of serve-pipeline --shed-cloud)",
    )
    parser.set_defaults(func=run_cloud)


def _register_package(sub: Any) -> None:
    parser = sub.add_parser(
        "package-cloud",
        help="package the cloud part: a self-contained Lambda zip + SAM template, or a Google "
        "Cloud Functions source directory",
        description="lambda: writes function.zip with numpy, ai-edge-litert and the rest "
        "vendored for the Lambda python3.12 platform of --arch (pip, needs the package "
        "registry or --find-links), template.yaml and image/ (the container-image route); "
        "when the zip breaks Lambda's 50 MB zipped / 250 MB unzipped limits, the template "
        "deploys the image instead and the output says so. gcf: writes a functions-framework "
        "source directory (main.py, requirements.txt, runtime core, cloud segments) and "
        "function.zip within Cloud Functions' 100 MB compressed / 500 MB uncompressed limits. "
        "An output directory that holds files is refused without --overwrite.",
    )
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument(
        "--out", default=None, help="output directory (default: dist/lambda or dist/gcf)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an earlier package in --out"
    )
    parser.add_argument(
        "--provider",
        choices=("lambda", "gcf"),
        default=None,
        help="target (default: the provider of the plan's cloud device, gcf for gcf-2gb; "
        "evaluate prices the same provider by default)",
    )
    parser.add_argument(
        "--function-name",
        default="edgelesspart-cloud",
        help="Lambda function name (default: %(default)s)",
    )
    parser.add_argument(
        "--memory", type=int, default=2048, help="Lambda memory in MB (default: %(default)s)"
    )
    parser.add_argument(
        "--timeout", type=int, default=30, help="Lambda timeout in s (default: %(default)s)"
    )
    parser.add_argument(
        "--arch",
        choices=("x86_64", "arm64"),
        default="x86_64",
        help="Lambda architecture the dependencies are vendored for (default: %(default)s)",
    )
    parser.add_argument(
        "--find-links",
        default=None,
        metavar="DIR",
        help="vendor the Lambda dependencies from this directory of wheels instead of the "
        "package registry (default: the registry)",
    )
    parser.add_argument(
        "--gcf-generation",
        type=int,
        choices=(1, 2),
        default=2,
        help="Cloud Functions generation: the deploy command's --gen2/--no-gen2 and the "
        "price table evaluate uses (default: %(default)s)",
    )
    parser.add_argument(
        "--auth",
        choices=("public", "iam"),
        default="public",
        help="gcf: public URL + the edge's HMAC signature, or IAM + a Google ID token from the "
        "edge (default: %(default)s; docs/deploy.md)",
    )
    parser.set_defaults(func=run_package)


def run_edge(args: argparse.Namespace) -> int:
    """Load the edge stage and serve it until interrupted."""
    from pathlib import Path

    widths = (Path(args.bundle) / "dynamic.json").is_file()
    check_edge_options(args, widths=widths)
    if widths:  # a width bundle: edgelesspart.dynamic
        from edgelesspart.commands.dynamic import run_width_edge

        return run_width_edge(args)
    from edge_runtime.config import EdgeConfig
    from edge_runtime.wsgi import require_token_off_loopback
    from service_http.prefork import check_workers

    workers = check_workers(args.workers)
    config = EdgeConfig.from_env(
        cloud=args.cloud,
        threshold=args.threshold,
        token=args.token,
        cloud_token=args.cloud_token,
        cloud_id_token_file=args.cloud_id_token_file,
        lambda_endpoint=args.lambda_endpoint,
        region=args.region,
        offload_timeout_s=args.timeout,
        codec=args.codec,
        backend=args.backend,
        max_inflight=args.max_inflight,
        max_queue=args.max_queue,
        public_routes=args.public_routes,
        batch_max_rows=args.batch_max_rows,
        batch_delay_us=args.batch_delay_us,
        dispatch=getattr(args, "dispatch", None),
        workers=workers,
    )
    require_token_off_loopback(args.host, config.token, "serve-edge")
    cloud = f"cloud: {config.cloud}" if config.cloud else "edge only: no cloud part"
    announce = (
        f"edge service for {args.bundle} on http://{args.host}:{args.port} ({cloud}; "
        f"{args.server} server, {workers} worker(s))"
    )

    def serve_one(sock: Any = None, index: int = 0) -> None:
        from edge_runtime import wsgi
        from edge_runtime.app import EXTENSION, create_app

        app = create_app(args.bundle, config)
        service = app.extensions[EXTENSION]
        _share_metrics(service.metrics.registry, workers)
        if args.server == "waitress":
            threads = args.threads or config.max_inflight + config.max_queue + 4
        else:
            threads = args.threads or max(8, 2 * config.pool_size)
        extra: dict[str, Any] = {} if args.server == "async" else {"server": args.server}
        if sock is not None:
            extra["sock"] = sock
        # the event-loop server's dispatch choice (measured at load), after the address line
        dispatch = f"\ndispatch: {service.dispatch_reason}" if args.server == "async" else ""
        try:
            wsgi.serve_edge(
                app,
                host=args.host,
                port=args.port,
                threads=threads,
                announce=f"{announce}{dispatch}" if index == 0 else None,
                **extra,
            )
        finally:
            app.extensions[EXTENSION].close()

    balanced = args.server == "async"  # the event-loop server accepts through the balancer
    return _serve_workers(workers, args.host, args.port, serve_one, balanced=balanced)


def _share_metrics(registry: Any, workers: int) -> None:
    """In a pre-forked worker, publish its metrics where the other workers sum them."""
    if workers > 1:
        import os

        from service_http.prefork import METRICS_DIR_ENV

        registry.share(os.environ[METRICS_DIR_ENV])


def _serve_workers(
    workers: int, host: str, port: int, serve_one: Any, *, balanced: bool = False
) -> int:
    """Serve in this process (1 worker) or in ``workers`` pre-forked processes.

    ``balanced``: the workers share one socket and spread connections evenly
    (:class:`service_http.prefork.AcceptBalancer`); else ``SO_REUSEPORT``.
    """
    if workers == 1:
        serve_one()
        return 0
    from service_http.prefork import run_workers

    return run_workers(workers, host, port, serve_one, balanced=balanced)


#: ``serve-edge`` options that only an exit bundle (edge + cloud part) uses.
EXIT_BUNDLE_OPTIONS = {
    "cloud": "--cloud", "threshold": "--threshold", "codec": "--codec",
    "cloud_token": "--cloud-token", "lambda_endpoint": "--lambda-endpoint",
    "timeout": "--timeout", "backend": "--backend", "batch_max_rows": "--batch-max-rows",
    "dispatch": "--dispatch",
}  # fmt: skip


def check_edge_options(args: argparse.Namespace, *, widths: bool) -> None:
    """Refuse, at start and with a message, ``serve-edge`` options the bundle cannot use.

    Raises:
        ConfigError: ``--slo-ms`` on a bundle without widths, or an exit/cloud option on a
            width bundle (it has neither exits nor a cloud part).
    """
    from edgelesspart.errors import ConfigError

    if not widths and getattr(args, "slo_ms", None) is not None:
        raise ConfigError(
            f"--slo-ms {args.slo_ms:g} does not apply to {args.bundle}: it has no widths to "
            "switch (no dynamic.json). Build a width bundle with `edgelesspart train-widths` "
            "or leave --slo-ms out."
        )
    if widths:
        given = [flag for key, flag in EXIT_BUNDLE_OPTIONS.items()
                 if getattr(args, key, None) is not None]  # fmt: skip
        if given:
            raise ConfigError(
                f"{', '.join(given)} do(es) not apply to the width bundle {args.bundle}: it has "
                "no early exits and no cloud part; leave them out (--slo-ms sets its control)."
            )


def run_cloud(args: argparse.Namespace) -> int:
    """Load the cloud stages and serve both APIs until interrupted."""
    import os

    from cloud_functions.http_entry import CloudLimits
    from cloud_functions.local_server import create_app
    from edgelesspart.runtime.batching import BatchSettings
    from service_http.prefork import check_workers
    from service_http.wsgi import require_token_off_loopback, serve

    env = os.environ
    token = args.token or env.get("EDGELESSPART_TOKEN") or None
    require_token_off_loopback(args.host, token, "serve-cloud")
    sizes = {"max_inflight": args.max_inflight, "max_queue": args.max_queue}
    limits = CloudLimits(**{k: v for k, v in sizes.items() if v is not None})
    batch = BatchSettings(
        _int_setting(args.batch_max_rows, env, "EDGELESSPART_BATCH_MAX_ROWS"),
        _int_setting(args.batch_delay_us, env, "EDGELESSPART_BATCH_DELAY_US"),
    )
    workers = check_workers(args.workers)
    threads = args.threads or limits.max_inflight + limits.max_queue + 4
    announce = (
        f"cloud part for {args.bundle} on http://{args.host}:{args.port} "
        f"(Lambda Invoke API + /v1/continue; {workers} worker(s))"
    )

    def serve_one(sock: Any = None, index: int = 0) -> None:
        whole = None
        if getattr(args, "whole_model", False):
            from edgelesspart.runtime.cloud import CloudPart
            from edgelesspart.runtime.manifest import load_manifest

            names = list(load_manifest(args.bundle, verify=False).stage_names)
            whole = CloudPart(args.bundle, stages=names, batch=batch)
        app = create_app(
            args.bundle,
            cloud=whole,
            token=token,
            function_name=args.function_name,
            limits=limits,
            public_routes=args.public_routes or env.get("EDGELESSPART_PUBLIC_ROUTES") or None,
            batch=batch,
        )
        _share_metrics(app.extensions["edgelesspart"].registry, workers)
        serve(
            app,
            host=args.host,
            port=args.port,
            threads=threads,
            sock=sock,
            announce=announce if index == 0 else None,
        )

    return _serve_workers(workers, args.host, args.port, serve_one)


def _int_setting(value: int | None, env: Any, name: str) -> int:
    """A flag's value, else the environment variable ``name``, else 0."""
    from edgelesspart.errors import ConfigError

    if value is not None:
        return int(value)
    raw = env.get(name) or "0"
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(f"Environment variable {name}={raw!r} is not an int.") from exc


def run_package(args: argparse.Namespace) -> int:
    """Build the Lambda or GCF package, then print what was written."""
    from edgelesspart.packaging.output import default_out
    from edgelesspart.profiling.devices import bundle_cloud_provider

    provider = args.provider or bundle_cloud_provider(args.bundle)
    out = args.out or default_out(provider)
    if provider == "gcf":
        from edgelesspart.packaging.cloud_gcf import build_gcf_package

        print(f"provider: gcf{'' if args.provider else ' (from the plan)'}")
        report = build_gcf_package(
            args.bundle,
            out,
            generation=args.gcf_generation,
            auth=args.auth,
            overwrite=args.overwrite,
        )
        print(report.summary())
        return 0
    from edgelesspart.packaging.cloud_lambda import DeployOptions, build_package

    options = DeployOptions(
        function_name=args.function_name,
        memory_mb=args.memory,
        timeout_s=args.timeout,
        architecture=args.arch,
    )
    print(f"provider: lambda{'' if args.provider else ' (from the plan)'}; vendoring for "
          f"{options.target.description} (pip)")  # fmt: skip
    report = build_package(
        args.bundle, out, options=options, overwrite=args.overwrite, find_links=args.find_links
    )
    print(report.summary())
    return 0
