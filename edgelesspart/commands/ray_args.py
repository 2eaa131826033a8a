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
        help="local (start a private Ray on this machine: own temp dir, bound to 127.0.0.1, "
        "default), auto (join the cluster of `ray start --head` here) or HOST:PORT",
    )
    parser.add_argument(
        "--num-cpus", type=int, default=None, help="CPUs of a local Ray (default: all of them)"
    )


def add_spare_args(parser: argparse.ArgumentParser) -> None:
    """Add ``--spare`` and ``--spare-after``: re-placement of a lost stage on a spare node."""
    parser.add_argument(
        "--spare",
        default=None,
        metavar="RESOURCE",
        help="a Ray resource that spare nodes advertise: a stage down for --spare-after "
        "seconds is re-created on such a node (default: wait for its own node)",
    )
    parser.add_argument(
        "--spare-after",
        type=float,
        default=5.0,
        help="seconds a stage stays down before it moves to a spare (default 5)",
    )
