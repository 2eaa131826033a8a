"""The ``edgelesspart`` command line.

Subcommands live in :mod:`edgelesspart.commands`, one module each with ``register(subparsers)``.
Nothing heavy is imported here or at the top of those modules, so ``--help`` stays fast and
TensorFlow-free. Every :class:`EdgeLessPartError` becomes a one-line message and exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from edgelesspart import __version__
from edgelesspart.errors import EdgeLessPartError

COMMAND_MODULES = (
    "build",
    "profile",
    "profile_device",
    "inspect",
    "evaluate",
    "serve",
    "serve_pipeline",
)


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edgelesspart",
        description="Split Keras models across edge and cloud with early exits; serve and "
        "evaluate the result.",
    )
    parser.add_argument("--version", action="version", version=f"edgelesspart {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"edgelesspart.commands.{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except EdgeLessPartError as exc:
        print(f"edgelesspart {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
