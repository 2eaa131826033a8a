"""Issue 22: the build drops exits whose measured cost exceeds their saving (a second pass after
export), and enlarges a validation split too small for the threshold's margin from train."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.build import (
    BuildConfig,
    drop_exits,
    load_build_data,
    unprofitable_exits,
)
from edgelesspart.errors import ConfigError
from edgelesspart.runtime.plan import Plan, Stage


def _plan() -> Plan:
    return Plan(
        constraint="memory",
        placement="linear",
        stages=(
            Stage("edge", "rpi4", "input", "c2", ("c1", "c2"), 1.0, 10_000),
            Stage("cloud", "gcf-2gb", "c2", "output", ("c3",), 1.0, 20_000),
        ),
        cut_points=("c1", "c2", "c3"),
        boundary_bytes=(4096,),
        parameters={"exit_heads": {"c1": {"macs": 1}, "c2": {"macs": 2}, "c3": {"macs": 3}}},
    )


def _row(cut: str, saving: float, cost: float) -> dict:
    return {"cut_point": cut, "head_ms": cost, "reach": 1.0, "answered": 0.5,
            "expected_saving_ms": saving, "expected_cost_ms": cost,
            "pays_off": saving > cost}  # fmt: skip


def test_unprofitable_exits_compares_measured_saving_with_cost():
    # GIVEN measured payoff rows: one exit costs more than it saves, one saves 6x its cost,
    # one never answers (no saving, no cost)
    payoff = {"exits": {"exit_1": _row("c1", 0.01, 0.05), "exit_2": _row("c2", 0.30, 0.05),
                        "exit_3": _row("c3", 0.0, 0.0)}}  # fmt: skip
    # THEN at the default ratio 1 the first and the useless one go
    assert set(unprofitable_exits(payoff)) == {"exit_1", "exit_3"}
    # AND a laxer ratio keeps the cheap-but-useful one, a stricter one drops the good one too
    assert set(unprofitable_exits(payoff, 0.1)) == {"exit_3"}
    assert set(unprofitable_exits(payoff, 10.0)) == {"exit_1", "exit_2", "exit_3"}
    assert unprofitable_exits({"exits": {}}) == {}


def test_drop_exits_keeps_the_split_and_stages():
    plan = drop_exits(_plan(), {"c1", "c3"})
    assert plan.exits == ("c2",) and plan.split == "c2"
    assert [s.name for s in plan.stages] == ["edge", "cloud"]
    assert plan.stages[1].exits == () and plan.stages[1].end == "output"
    assert set(plan.parameters["exit_heads"]) == {"c2"}
    # the original is untouched (frozen dataclasses)
    assert _plan().exits == ("c1", "c2", "c3")


def test_build_options_are_checked():
    with pytest.raises(ConfigError, match="min_exit_payoff"):
        BuildConfig(min_exit_payoff=-1)
    with pytest.raises(ConfigError, match="val_fraction"):
        BuildConfig(val_fraction=1.5)
    assert BuildConfig().min_exit_payoff == 1.0 and BuildConfig().val_fraction is None


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in np.asarray(x)}


def test_small_validation_split_is_enlarged_from_train_and_reloads_the_same():
    from edgelesspart.evaluation.pipeline import load_eval_data
    from edgelesspart.model.datasets import load_dataset

    # GIVEN plain digits, whose default validation split (10 %) holds fewer than the 265
    # samples the 1-point margin needs
    default = load_dataset("digits", seed=0)
    assert len(default.y_val) < 265
    # WHEN the build loads its data
    data, record = load_build_data(BuildConfig(dataset="digits"))
    # THEN validation reaches the minimum, the extra samples came out of train, test is the same
    assert record["enlarged"] and len(data.y_val) >= 265 == record["min_samples"]
    assert record["taken_from_train"] == len(default.y_train) - len(data.y_train) > 0
    assert len(data.y_val) - len(default.y_val) == record["taken_from_train"]
    assert _rows(data.x_test) == _rows(default.x_test)
    assert _rows(default.x_val) <= _rows(data.x_val)
    assert not _rows(data.x_val) & _rows(data.x_train)
    assert "taken from train" in record["note"]
    # AND the evaluation reloads exactly these splits from what the manifest records
    extra = {"dataset": {"spec": "digits", "seed": 0, "val_fraction": record["val_fraction"]}}
    again = load_eval_data(type("M", (), {"extra": extra})())
    assert np.array_equal(again.x_val, data.x_val) and np.array_equal(again.y_val, data.y_val)
    # AND a split capped by --limit, or an explicit fraction, is left alone (and said so)
    capped, note = load_build_data(BuildConfig(dataset="digits", limit=100))
    assert len(capped.y_val) == 100 and not note["enlarged"] and "--limit" in note["note"]
    fixed, note = load_build_data(BuildConfig(dataset="digits", val_fraction=0.05))
    assert len(fixed.y_val) < len(default.y_val) and not note["enlarged"]
    # AND a larger allowed drop needs fewer samples: nothing to enlarge
    loose, note = load_build_data(BuildConfig(dataset="digits", max_accuracy_drop=5.0))
    assert len(loose.y_val) == len(default.y_val) and not note["enlarged"]


@pytest.mark.needs_tf
@pytest.mark.slow
def test_build_drops_exits_that_do_not_pay_off_and_re_exports(tmp_path, capsys):
    from edgelesspart.cli import main
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import load_manifest

    out = tmp_path / "bundle"
    # WHEN a quick build demands that every exit save a million times its measured cost
    code = main(["build", "--constraint", "memory", "--limit", "120", "--epochs", "1",
                 "--max-cut-points", "6", "--min-exit-payoff", "1e6", "--out", str(out),
                 "--quiet"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0
    manifest = load_manifest(out)
    dropped = manifest.plan.parameters["dropped_exits"]
    # THEN last-stage exits were removed after measurement, each with its measured cost above its
    # saving (exits before the split also save the offload, which the host payoff does not
    # price, so they are not judged)
    assert dropped and "exit payoff: dropping" in printed
    cloud = manifest.plan.stages[-1]
    for row in dropped:
        assert row["cut_point"] not in manifest.plan.exits
        order = list(manifest.plan.cut_points)
        assert order.index(row["cut_point"]) > order.index(manifest.plan.split)
        assert row["expected_saving_ms"] < 1e6 * row["expected_cost_ms"] or (
            row["expected_saving_ms"] <= 0
        )
    # AND the re-exported bundle has only the kept exits, each of which passes the rule
    names = {e.name for e in manifest.exits} - {"final"}
    assert names.isdisjoint({row["exit"] for row in dropped})
    fitted = {**manifest.serving["temperatures"], **manifest.serving["temperatures_in_graph"]}
    assert set(fitted) == names | {"final"}
    survivors = unprofitable_exits(manifest.serving["payoff"], 1e6)
    assert not {row["cut_point"] for row in survivors.values()} & set(cloud.exits)
    assert set(manifest.training["accuracy"]["val"]) <= names | {"final"}
    # AND the build reports the net compute saving of what it kept, measured
    assert "net compute saving now" in printed
    assert manifest.serving["payoff"]["net"]["saving"] > 0
    # AND the bundle runs
    bundle = Bundle.load(out)
    x = np.zeros((2, *manifest.input.tensor.shape), dtype=np.float32)
    trace = ProgressiveExecutor(bundle, bundle.stages[0]).trace(x, batch_size=2)
    assert trace.exits[-1] == "final"
