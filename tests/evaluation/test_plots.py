"""Figures, evaluation.json/csv and the terminal table of an evaluation."""

from __future__ import annotations

import csv
import json

import pytest

from edgelesspart.errors import BundleError
from edgelesspart.evaluation.baselines import backbone_from_trace, baselines
from edgelesspart.evaluation.plots import plot_evaluation, plot_overlay
from edgelesspart.evaluation.report import (
    Evaluation,
    format_table,
    load_evaluation,
    write_outputs,
)
from edgelesspart.evaluation.sweep import LatencyModel, StageMemory, exit_accuracy, sweep
from edgelesspart.profiling.pricing import load_prices, make_price_fn

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def build_evaluation(trace, labels, link, placement: str, edge_factor: float) -> Evaluation:
    model = LatencyModel(edge_factor=edge_factor, cloud_factor=0.5, link=link)
    price = make_price_fn(load_prices("gcf"), 2048, egress_bytes=512)
    memory = StageMemory(2**20, 3 * 2**20)
    rows = sweep(trace, labels, [0.0, 0.5, 0.8, 0.9, 1.01], latency_model=model, price_fn=price,
                 memory=memory)
    accuracy = exit_accuracy(trace, labels)
    backbone = backbone_from_trace(trace, input_bytes=3072, memory=memory)
    return Evaluation(
        bundle_id=f"bundle-{placement}",
        placement=placement,
        split="test",
        settings={"link": "fake", "max_accuracy_drop": 0.01},
        pricing=load_prices("gcf").to_dict(),
        results=tuple(rows),
        baselines=baselines(backbone, accuracy["final"], latency_model=model, price_fn=price,
                            memory=memory),
        exit_accuracy=accuracy,
        full_accuracy=accuracy["final"],
        selection={"threshold": 0.9, "max_accuracy_drop": 0.01,
                   "test": rows[3].to_dict(), "validation": rows[3].to_dict(),
                   "validation_full_accuracy": 1.0},
    )


@pytest.fixture
def evaluation(hand_trace, fake_link):
    trace, labels = hand_trace
    return build_evaluation(trace, labels, fake_link, "linear", 2.0)


def test_plot_evaluation_writes_a_png(evaluation, tmp_path):
    # WHEN one evaluation is plotted
    out = plot_evaluation(evaluation, tmp_path / "figs" / "evaluation.png")
    # THEN a non-trivial PNG exists
    data = out.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 10_000


def test_overlay_of_two_placements_from_saved_json(evaluation, hand_trace, fake_link, tmp_path):
    # GIVEN a linear evaluation saved to disk and a pareto one in memory
    trace, labels = hand_trace
    write_outputs(evaluation, tmp_path / "linear")
    pareto = build_evaluation(trace, labels, fake_link, "pareto", 1.5)
    # WHEN both are drawn on the same axes
    out = plot_overlay({"linear": load_evaluation(tmp_path / "linear"), "pareto": pareto},
                       tmp_path / "overlay.png", title="linear vs pareto")
    # THEN the figure is written
    assert out.read_bytes().startswith(PNG_MAGIC)


def test_plots_do_not_need_a_display(evaluation, tmp_path):
    # GIVEN the Agg backend is selected by the plotting module
    plot_evaluation(evaluation, tmp_path / "e.png")
    import matplotlib

    # THEN matplotlib renders off-screen
    assert matplotlib.get_backend().lower() == "agg"


def test_write_outputs_round_trips_json_and_csv(evaluation, tmp_path):
    # WHEN the outputs are written
    json_path, csv_path = write_outputs(evaluation, tmp_path)
    # THEN the JSON holds every threshold row, the baselines and the pricing source
    data = json.loads(json_path.read_text())
    assert data == load_evaluation(tmp_path)
    assert [r["threshold"] for r in data["results"]] == [0.0, 0.5, 0.8, 0.9, 1.01]
    assert set(data["baselines"]) == {"edge-only", "cloud-only", "split-no-exits"}
    assert data["pricing"]["name"] == "gcf-1st-gen" and data["pricing"]["source"]
    # AND the CSV has one line per threshold and per baseline, with exit-mix columns
    rows = list(csv.DictReader(csv_path.open()))
    assert [r["kind"] for r in rows] == ["threshold"] * 5 + ["baseline"] * 3
    assert float(rows[4]["exit_mix_final"]) == pytest.approx(1.0)
    assert float(rows[0]["offload_rate"]) == 0.0


def test_load_evaluation_explains_a_missing_file(tmp_path):
    with pytest.raises(BundleError, match=r"No evaluation at .*Run `edgelesspart evaluate"):
        load_evaluation(tmp_path)
    (tmp_path / "evaluation.json").write_text("{}")
    with pytest.raises(BundleError, match="not an evaluation of version 1"):
        load_evaluation(tmp_path)


def test_format_table_lists_thresholds_baselines_and_the_choice(evaluation):
    text = format_table(evaluation)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["thr", "acc", "offload"]
    assert any(line.startswith(" 0.90*") for line in lines)
    for name in ("edge-only", "cloud-only", "split-no-exits"):
        assert name in text
    assert "chosen threshold 0.90" in text
