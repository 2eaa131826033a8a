"""Every subcommand's ``--help`` shows every option's default."""

from __future__ import annotations

import argparse

import pytest

from edgelesspart.cli import DefaultsHelpFormatter, make_parser


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = make_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _option_help(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    """The help text of ``action`` exactly as ``--help`` prints it (defaults expanded)."""
    formatter = parser._get_formatter()
    return " ".join(formatter._expand_help(action).split()) if action.help else ""


@pytest.mark.parametrize("command", sorted(_subparsers()))
def test_every_option_help_states_its_default(command):
    parser = _subparsers()[command]
    assert parser.formatter_class is DefaultsHelpFormatter
    missing = []
    for action in parser._actions:
        if not action.option_strings or action.nargs == 0 or action.help == argparse.SUPPRESS:
            continue  # positionals, flags (--help, --overwrite) and hidden options
        if action.required:
            continue
        text = _option_help(parser, action)
        if "default" not in text.lower() and f"({action.default}" not in text:
            missing.append(f"{action.option_strings[-1]}: {text!r}")
    assert not missing, f"{command} --help hides defaults: {missing}"


def test_the_defaults_the_issue_named_are_shown_with_their_values():
    parsers = _subparsers()

    def help_of(command: str, flag: str) -> str:
        parser = parsers[command]
        action = next(a for a in parser._actions if flag in a.option_strings)
        return _option_help(parser, action)

    assert "default: the bundle's serving threshold" in help_of("serve-edge", "--threshold")
    assert "default: 2.0" in help_of("serve-edge", "--timeout")
    assert "(default: sandwich)" in help_of("train-widths", "--strategy")
    assert "(default: 5)" in help_of("train-widths", "--epochs")
    assert "dist/lambda or dist/gcf" in help_of("package-cloud", "--out")
    assert "(default: rpi4)" in help_of("build", "--edge-device")
    name = help_of("profile-device", "--name")
    assert "shown in plans" not in name and "DEVICE.json path" in name
