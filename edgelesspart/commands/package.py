"""``edgelesspart package-edge``: a deployable edge service for a Jetson, a Raspberry Pi or x86.

Renders a Docker build context (Dockerfile from the target's base image, the edge segments, the
package source), a systemd unit and an env file; see :mod:`edgelesspart.packaging.edge` and
``docs/deploy.md``. Nothing heavy at import.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``package-edge`` subcommand."""
    parser = sub.add_parser(
        "package-edge",
        help="render a Dockerfile, systemd unit and env file for the edge part",
        description="Write a Docker build context for the bundle's edge stage on a Jetson "
        "(L4T JetPack + TensorFlow for --backend keras), a Raspberry Pi (slim arm64 + LiteRT) "
        "or x86, with a systemd unit and an env file.",
    )
    parser.add_argument("bundle", help="bundle directory")
    parser.add_argument(
        "--target", required=True, choices=("jetson", "rpi", "x86"), help="device family"
    )
    parser.add_argument(
        "--backend",
        default="litert",
        choices=("litert", "keras"),
        help="segment engine (default: litert)",
    )
    parser.add_argument(
        "--out", default=None, help="output directory (default: dist/edge-<target>)"
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output directory written by an earlier package-edge",
    )
    parser.add_argument(
        "--cloud",
        default="",
        help="cloud part URL: http(s)://HOST:PORT or lambda://NAME (default: edge only)",
    )
    parser.add_argument("--port", type=int, default=8080, help="service port (default: 8080)")
    parser.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="confidence threshold (default: the bundle's, unless edge.env sets one)",
    )
    parser.add_argument(
        "--base-image", default=None, help="override the target's base image (default: per target)"
    )
    parser.add_argument(
        "--pip-index",
        default=None,
        help="extra pip index (default: NVIDIA's JetPack 6.1 index for --target jetson "
        "--backend keras, none otherwise)",
    )
    parser.add_argument(
        "--publish",
        default="127.0.0.1",
        help="host interface the unit publishes the port on (default: 127.0.0.1)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the edge package and print what was written."""
    from edgelesspart.packaging.edge import EdgePackageOptions, build_edge_package
    from edgelesspart.packaging.output import default_out

    options = EdgePackageOptions(
        target=args.target,
        backend=args.backend,
        cloud=args.cloud,
        port=args.port,
        threshold=args.threshold,
        base_image=args.base_image,
        pip_index=args.pip_index,
        publish=args.publish,
    )
    out = args.out or default_out(f"edge-{args.target}")
    print(build_edge_package(args.bundle, out, options, overwrite=args.overwrite).summary())
    return 0
