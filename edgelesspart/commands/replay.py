"""``edgelesspart replay URL DATA``: post an image set to a running edge service and measure it.

Nothing heavy at import; the library is :mod:`edgelesspart.replay.client` (TensorFlow-free).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any


def register(sub: Any) -> None:
    """Add the ``replay`` subcommand."""
    parser = sub.add_parser(
        "replay",
        help="replay images through a running edge service: exit mix, accuracy, latency, cost",
        description="Post every image of DATA (a folder with one subfolder per class, a flat "
        "folder, or an .npz with x_test,y_test or x,y) to URL's POST /v1/infer as PNG/JPEG, "
        "then print the exit mix, edge share, accuracy (labelled data), p50/p95 latency, cloud "
        "calls, bytes sent to the cloud (from the edge's /metrics) and the cost of the run.",
    )
    parser.add_argument("url", help="edge service, e.g. http://127.0.0.1:8080")
    parser.add_argument("data", help="image folder or .npz file")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence threshold per request (default: the service's)",
    )
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight (1)")
    parser.add_argument("--limit", type=int, default=None, help="at most N images")
    parser.add_argument(
        "--token", default=None, help="the edge service's token (env EDGELESSPART_TOKEN)"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="per-request timeout (s)")
    parser.add_argument(
        "--provider",
        choices=("gcf", "gcf-1st-gen", "gcf-2nd-gen", "lambda"),
        default="gcf",
        help="price table for the cloud calls; gcf = Cloud Functions of --gcf-generation "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--gcf-generation",
        type=int,
        choices=(1, 2),
        default=2,
        help="Cloud Functions generation priced for gcf, as evaluate and package-cloud "
        "(default: %(default)s)",
    )
    parser.add_argument("--memory-mb", type=int, default=2048, help="cloud memory (2048)")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Replay the data and print the report; exit 1 when any request failed."""
    from edgelesspart.errors import ConfigError
    from edgelesspart.profiling.devices import pricing_provider
    from edgelesspart.replay.client import (
        EdgeClient,
        Pricing,
        format_report,
        load_replay_data,
        replay,
    )

    token = args.token or os.environ.get("EDGELESSPART_TOKEN") or None
    client = EdgeClient(args.url, token=token, timeout_s=args.timeout)
    try:
        classes = tuple(str(c) for c in client.bundle().get("classes", ()))
    finally:
        client.close()
    data = load_replay_data(args.data, limit=args.limit, classes=classes or None)
    report = replay(
        args.url,
        data,
        threshold=args.threshold,
        concurrency=args.concurrency,
        token=token,
        timeout_s=args.timeout,
        pricing=Pricing(
            provider=pricing_provider(args.provider, args.gcf_generation),
            memory_mb=args.memory_mb,
        ),
        show_progress=not args.quiet,
    )
    print(format_report(report))
    if args.json:
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"Cannot write the report to {path}: {exc}.") from exc
        print(f"wrote {path}")
    if report.answered == 0:
        raise ConfigError(
            f"None of the {report.samples} requests was answered; first error: "
            f"{(report.error_examples or ('none recorded',))[0]}"
        )
    return 0 if report.errors == 0 else 1
