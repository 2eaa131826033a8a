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
        help="inference requests at work at once (admission control; edge 4, cloud 4)",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=None,
        help="requests that may wait for a slot; beyond that 429 with Retry-After (edge 8, "
        "cloud 16)",
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
    parser.add_argument("--threshold", type=float, default=None, help="confidence threshold")
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
    parser.add_argument("--region", default=None, help="AWS region for lambda://")
    parser.add_argument(
        "--cloud-token",
        default=None,
        help="shared secret of a serve-cloud started with --token: every offload is signed "
        "(HMAC-SHA256 of body and timestamp, HTTP and lambda://); env EDGELESSPART_CLOUD_TOKEN",
    )
    parser.add_argument("--timeout", type=float, default=None, help="cloud read timeout (s)")
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
    parser.set_defaults(func=run_cloud)


def _register_package(sub: Any) -> None:
    parser = sub.add_parser(
        "package-cloud",
        help="package the cloud part: a Lambda zip + SAM template, or a Google Cloud "
        "Functions source directory",
        description="lambda: writes function.zip, requirements.txt, template.yaml, "
        "Dockerfile.edge and Dockerfile.cloud; refuses a zip over Lambda's 50 MB zipped / 250 MB "
        "unzipped limits. gcf: writes a functions-framework source directory (main.py, "
        "requirements.txt, runtime core, cloud segments) and function.zip within Cloud "
        "Functions' 100 MB compressed / 500 MB uncompressed limits.",
    )
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument("--out", default="dist/cloud", help="output directory")
    parser.add_argument(
        "--provider",
        choices=("lambda", "gcf"),
        default=None,
        help="target (default: the provider of the plan's cloud device, gcf for gcf-2gb; "
        "evaluate prices the same provider by default)",
    )
    parser.add_argument("--function-name", default="edgelesspart-cloud", help="Lambda name")
    parser.add_argument("--memory", type=int, default=2048, help="Lambda memory (MB)")
    parser.add_argument("--timeout", type=int, default=30, help="Lambda timeout (s)")
    parser.set_defaults(func=run_package)


def run_edge(args: argparse.Namespace) -> int:
    """Load the edge stage and serve it until interrupted."""
    from pathlib import Path

    if (Path(args.bundle) / "dynamic.json").is_file():  # a width bundle: edgelesspart.dynamic
        from edgelesspart.commands.dynamic import run_width_edge

        return run_width_edge(args)
    from edge_runtime.config import EdgeConfig
    from edge_runtime.wsgi import require_token_off_loopback
    from service_http.prefork import check_workers

    config = EdgeConfig.from_env(
        cloud=args.cloud,
        threshold=args.threshold,
        token=args.token,
        cloud_token=args.cloud_token,
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
    )
    require_token_off_loopback(args.host, config.token, "serve-edge")
    workers = check_workers(args.workers)
    print(
        f"edge service for {args.bundle} on http://{args.host}:{args.port} (cloud: {args.cloud}; "
        f"{args.server} server, {workers} worker(s))",
        flush=True,
    )

    def serve_one(sock: Any = None, _index: int = 0) -> None:
        from edge_runtime import wsgi
        from edge_runtime.app import EXTENSION, create_app

        app = create_app(args.bundle, config)
        _share_metrics(app.extensions[EXTENSION].metrics.registry, workers)
        if args.server == "waitress":
            threads = args.threads or config.max_inflight + config.max_queue + 4
        else:
            threads = args.threads or max(8, 2 * config.pool_size)
        extra: dict[str, Any] = {} if args.server == "async" else {"server": args.server}
        if sock is not None:
            extra["sock"] = sock
        try:
            wsgi.serve_edge(app, host=args.host, port=args.port, threads=threads, **extra)
        finally:
            app.extensions[EXTENSION].close()

    return _serve_workers(workers, args.host, args.port, serve_one)


def _share_metrics(registry: Any, workers: int) -> None:
    """In a pre-forked worker, publish its metrics where the other workers sum them."""
    if workers > 1:
        import os

        from service_http.prefork import METRICS_DIR_ENV

        registry.share(os.environ[METRICS_DIR_ENV])


def _serve_workers(workers: int, host: str, port: int, serve_one: Any) -> int:
    """Serve in this process (1 worker) or in ``workers`` pre-forked processes."""
    if workers == 1:
        serve_one()
        return 0
    from service_http.prefork import run_workers

    return run_workers(workers, host, port, serve_one)


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
    print(
        f"cloud part for {args.bundle} on http://{args.host}:{args.port} "
        f"(Lambda Invoke API + /v1/continue; {workers} worker(s))",
        flush=True,
    )

    def serve_one(sock: Any = None, _index: int = 0) -> None:
        app = create_app(
            args.bundle,
            token=token,
            function_name=args.function_name,
            limits=limits,
            public_routes=args.public_routes or env.get("EDGELESSPART_PUBLIC_ROUTES") or None,
            batch=batch,
        )
        _share_metrics(app.extensions["edgelesspart"].registry, workers)
        serve(app, host=args.host, port=args.port, threads=threads, sock=sock)

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
    from edgelesspart.profiling.devices import bundle_cloud_provider

    provider = args.provider or bundle_cloud_provider(args.bundle)
    if provider == "gcf":
        from cloud_functions.gcf_package import build_gcf_package

        print(f"provider: gcf{'' if args.provider else ' (from the plan)'}")
        print(build_gcf_package(args.bundle, args.out).summary())
        return 0
    from cloud_functions.package import DeployOptions, build_package

    report = build_package(
        args.bundle,
        args.out,
        options=DeployOptions(
            function_name=args.function_name, memory_mb=args.memory, timeout_s=args.timeout
        ),
    )
    print(report.summary())
    return 0
