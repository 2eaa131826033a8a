"""Smoke test of ``experiments/paper_figures.py`` (the paper's Fig. 2/3 reproduction)."""

from __future__ import annotations

import csv
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "paper_figures.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("paper_figures", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def paper_figures():
    return _load_script()


def _evaluation(costs, latencies, offload, baselines, accuracy=0.9):
    rows = [
        {
            "threshold": t,
            "cloud_cost_per_million": c,
            "latency_mean_ms": lat,
            "offload_rate": offload,
            "accuracy": accuracy,
        }
        for t, c, lat in zip((0.3, 0.8, 0.9), costs, latencies)
    ]
    base = {
        name: {"latency_mean_ms": lat, "cloud_cost_per_million": cost}
        for name, (lat, cost) in baselines.items()
    }
    return {"results": rows, "baselines": base}


BASE = {"edge-only": (30.0, 0.0), "cloud-only": (20.0, 8.0), "split-no-exits": (25.0, 6.0)}


def test_findings_compute_each_claim_from_the_numbers(paper_figures):
    # GIVEN hand-made evaluations where Pareto is cheaper at c_thr >= 0.8, InceptionV3's exits
    # beat cloud-only, and MobileNetV2 at high thresholds is slower than its best baseline
    evaluations = {
        "resnet50": {
            "linear": _evaluation((1.0, 6.0, 6.0), (5, 5, 5), 0.5, BASE),
            "pareto": _evaluation((9.0, 5.0, 5.0), (5, 5, 5), 0.5, BASE),
        },
        "inceptionv3": {"linear": _evaluation((1, 1, 1), (10.0, 12.0, 14.0), 0.2, BASE)},
        "mobilenetv2": {"pareto": _evaluation((1, 1, 1), (5.0, 22.0, 24.0), 0.9, BASE)},
    }

    # WHEN the findings are computed
    found = paper_figures.findings(evaluations)

    # THEN every claim holds, with the numbers behind it
    resnet = found["resnet50_pareto_cheaper"]
    assert resnet["holds"] is True
    assert resnet["thresholds"] == [0.8, 0.9]
    assert resnet["linear_over_pareto"] == pytest.approx(1.2)
    assert resnet["mean_latency_ms"] == {"linear": 5, "pareto": 5}
    inception = found["inceptionv3_exits_faster"]["per_placement"]["linear"]
    assert found["inceptionv3_exits_faster"]["holds"] is True
    assert inception["speedup_vs_cloud_only"] == pytest.approx(0.4)  # 12 ms vs 20 ms
    assert inception["speedup_vs_edge_only"] == pytest.approx(0.6)  # 12 ms vs 30 ms
    assert found["inceptionv3_exits_faster"]["faster_than_split_no_exits"] is True
    mobilenet = found["mobilenetv2_exit_overhead"]
    assert mobilenet["holds"] is True
    assert mobilenet["slower_than_split_no_exits"] is False  # 23 ms vs 25 ms
    assert mobilenet["per_placement"]["pareto"]["best_baseline"] == "cloud-only"
    assert mobilenet["per_placement"]["pareto"]["latency_over_best_baseline"] == pytest.approx(1.15)


def test_findings_say_when_a_claim_was_not_run(paper_figures):
    # GIVEN only a linear ResNet50 evaluation
    evaluations = {"resnet50": {"linear": _evaluation((1, 1, 1), (5, 5, 5), 0.5, BASE)}}

    # WHEN the findings are computed
    found = paper_figures.findings(evaluations)

    # THEN no claim is decided, and each says what it needs
    for claim in found.values():
        assert claim["evaluated"] is False and claim["holds"] is None
    assert "both placements" in found["resnet50_pareto_cheaper"]["reason"]


def test_unknown_model_is_rejected_with_the_choices(paper_figures):
    from edgelesspart.errors import ConfigError

    with pytest.raises(ConfigError, match="Unknown model vgg16; choose from resnet50"):
        paper_figures.parse_args(["--models", "vgg16"])


def test_cifar10_switches_to_the_full_defaults(paper_figures):
    # WHEN only the dataset is named
    settings = paper_figures.parse_args(["--dataset", "cifar10"])

    # THEN every sample, the paper-scale epochs and the build's cut-point search are used
    assert (settings.limit, settings.epochs, settings.max_cut_points) == (None, 30, 16)
    assert not any("CIFAR-10" in note for note in paper_figures.reductions(settings))
    digits = paper_figures.parse_args([])
    assert any("instead of CIFAR-10" in note for note in paper_figures.reductions(digits))


def test_quick_shrinks_defaults_but_explicit_flags_win(paper_figures):
    # WHEN --quick is combined with an explicit epoch count and --limit 0
    settings = paper_figures.parse_args(["--quick", "--epochs", "2", "--limit", "0"])

    # THEN the explicit values win and the rest are the quick ones
    assert settings.epochs == 2
    assert settings.limit is None
    assert settings.exits_per_part == paper_figures.QUICK["exits_per_part"]
    assert settings.max_cut_points == paper_figures.QUICK["max_cut_points"]


@pytest.mark.needs_tf
def test_cifar10_without_the_data_fails_with_a_clear_message(
    paper_figures, tmp_path, monkeypatch, capsys
):
    from edgelesspart.model import datasets

    # GIVEN an empty Keras cache and no network (never download in a test)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.setattr(datasets, "_network_reachable", lambda *args: False)

    # WHEN the real experiment is asked for
    code = paper_figures.main(["--dataset", "cifar10", "--out", str(tmp_path / "out")])

    # THEN it stops before training anything and says how to provide the data
    assert code == 1
    assert "CIFAR-10 could not be loaded" in capsys.readouterr().err
    assert not (tmp_path / "out" / "backbones").exists()


@pytest.mark.slow
@pytest.mark.needs_tf
def test_quick_run_writes_table_figure_and_findings(paper_figures, tmp_path, capsys):
    # GIVEN the quick settings on one small model and one placement
    argv = ["--quick", "--models", "mobilenetv2", "--placements", "linear", "--out", str(tmp_path)]

    # WHEN the script runs
    assert paper_figures.main(argv) == 0

    # THEN the backbone, bundle, table, figure, findings and run record exist
    assert (tmp_path / "backbones" / "mobilenetv2.keras").is_file()
    assert (tmp_path / "mobilenetv2-linear" / "evaluation.json").is_file()
    assert (tmp_path / "mobilenetv2.png").stat().st_size > 0
    rows = list(csv.DictReader((tmp_path / "table.csv").open(encoding="utf-8")))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"threshold", "edge-only", "cloud-only", "split-no-exits"}
    grid = {round(0.3 + 0.05 * i, 4) for i in range(13)}  # 0.3..0.9 step 0.05
    swept = [float(r["threshold"]) for r in rows if r["kind"] == "threshold"]
    assert grid <= {round(t, 4) for t in swept}
    # plus the bundle's serving threshold when it is off the grid (evaluate always shows it)
    assert len(swept) - 13 <= 1
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    assert "## mobilenetv2" in table
    assert "answered there (linear): exit_1 " in table
    found = json.loads((tmp_path / "findings.json").read_text(encoding="utf-8"))
    assert set(found) == {
        "resnet50_pareto_cheaper",
        "inceptionv3_exits_faster",
        "mobilenetv2_exit_overhead",
    }
    assert isinstance(found["mobilenetv2_exit_overhead"]["holds"], bool)
    assert found["resnet50_pareto_cheaper"]["holds"] is None
    assert "mobilenetv2_exit_overhead" in capsys.readouterr().out

    run = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    manifest = json.loads(
        (tmp_path / "mobilenetv2-linear" / "manifest.json").read_text(encoding="utf-8")
    )
    assert manifest["model"]["name"] == "mobilenetv2"  # device factors are looked up by name
    assert manifest["extra"]["build_config"]["train_backbone"] == "no"
    # the paper's exits: model-head copy, label-trained, raw softmax (no temperature scaling)
    config = manifest["extra"]["build_config"]
    assert (config["exit_head"], config["exit_training"]) == ("paper", "frozen")
    assert set(manifest["serving"]["temperatures"].values()) == {1.0}
    assert run["backbones"]["mobilenetv2"]["batchnorm_layers_settled"] > 0
    assert any("32 samples per split" in note for note in run["reduced_against_paper"])

    # AND a second run reuses the backbone and the bundle instead of training them again
    assert paper_figures.main(argv) == 0
    run = json.loads((tmp_path / "run.json").read_text(encoding="utf-8"))
    assert run["steps"]["mobilenetv2-linear"]["build"] == "reused"
    assert "reusing backbone" in capsys.readouterr().err
