"""Options shared by the services that run on Ray (``serve-pipeline``, ``serve-views``)."""

from __future__ import annotations

import argparse


def add_ray_server_args(parser: argparse.ArgumentParser, port: int) -> None:
    """Add ``--host``, ``--port``, ``--ray-address`` and ``--num-cpus`` to ``parser``."""
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: 127.0.0.1)")
    parser.add_argument("--port", type=int, default=port, help=f"TCP port (default: {port})")
    parser.add_argument(
        "--ray-address",
        default="local",
        help="local (start a private Ray on this machine, default), auto (join the cluster of "
        "`ray start --head` here) or HOST:PORT",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all of them)"
    )
