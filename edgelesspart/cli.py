"""The ``edgelesspart`` command line.

Subcommands live in :mod:`edgelesspart.commands`, one module each with ``register(subparsers)``.
Nothing heavy is imported here or at the top of those modules, so ``--help`` stays fast and
TensorFlow-free. Every :class:`EdgeLessPartError` becomes a one-line message and exit code 2.
Every option's help shows its default (:class:`DefaultsHelpFormatter`; tests/test_cli_help.py).
Unless ``--verbose`` is given (before or after the subcommand), TensorFlow and LiteRT start-up
noise is kept off stderr (:mod:`edgelesspart.stderr_filter`).
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from typing import Any

from edgelesspart import __version__
from edgelesspart.errors import EdgeLessPartError

VERBOSE_HELP = "show TensorFlow/LiteRT start-up logs (hidden by default)"
COMMAND_MODULES = (
    "build",
    "profile",
    "profile_device",
    "inspect",
    "evaluate",
    "serve",
    "package",
    "serve_pipeline",
    "serve_views",
    "replay",
    "dynamic",
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Append ``(default: X)`` to an option's help unless the help already states it.

    An option whose default is ``None`` (unset: the bundle's, the environment's or a computed
    value applies) and whose help does not say what applies gets ``(default: not set)``; options
    where that would mislead say their real default in words.
    """

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if not action.option_strings or action.default is argparse.SUPPRESS:
            return text
        if action.nargs == 0 or "default" in text.lower():  # flags, or already stated
            return text
        if action.default is None:
            return f"{text} (default: not set)"
        if f"({action.default}" in text:  # e.g. "timed chain runs (30)"
            return text
        return f"{text} (default: %(default)s)"


class _SubcommandParser(argparse.ArgumentParser):
    """A subcommand's parser: every help shows its defaults."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="edgelesspart",
        description="Split Keras models across edge and cloud with early exits; serve and "
        "evaluate the result.",
    )
    parser.add_argument("--version", action="version", version=f"edgelesspart {__version__}")
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubcommandParser)
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"edgelesspart.commands.{name}")
        module.register(sub)
    for subparser in sub.choices.values():
        # SUPPRESS: an absent sub-level flag leaves the top-level value alone
        subparser.add_argument(
            "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP
        )
    return parser


def quiet_startup() -> Any:
    """Hide TensorFlow/LiteRT start-up noise; return the stderr filter (or ``None``)."""
    from edgelesspart.stderr_filter import filter_stderr, quiet_python_loggers

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    quiet_python_loggers()
    return filter_stderr()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    parser = make_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 1
    quiet = None if args.verbose else quiet_startup()
    try:
        return int(args.func(args) or 0)
    except EdgeLessPartError as exc:
        print(f"edgelesspart {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if quiet is not None:
            quiet.close()


if __name__ == "__main__":
    sys.exit(main())
