"""``edgelesspart widths`` and ``edgelesspart evaluate`` on a width bundle print its curves."""

from __future__ import annotations

import json

import pytest

from edgelesspart.cli import main

pytestmark = pytest.mark.needs_tf


def test_widths_and_evaluate_print_accuracy_and_latency_per_width(width_bundle, capsys) -> None:
    assert main(["widths", str(width_bundle.path)]) == 0
    table = capsys.readouterr().out
    assert "strategy sandwich" in table and "latency_ms" in table
    assert len([line for line in table.splitlines() if line.strip().startswith(("0 ", "1 "))]) == 4
    assert main(["evaluate", str(width_bundle.path)]) == 0
    assert capsys.readouterr().out == table
    assert main(["widths", str(width_bundle.path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["widths"] == [1.0, 0.5] and len(data["stages"]) == 2


def test_widths_on_a_missing_bundle_is_a_one_line_error(tmp_path, capsys) -> None:
    assert main(["widths", str(tmp_path)]) == 2
    assert "dynamic.json is missing" in capsys.readouterr().err
