"""Unit tests of the benchmarks' pure helpers (``experiments/benchlib.py``, ``benchtable.py``).

No model, no timing: statistics, MAPE, the budget rule, headline formatting, strict JSON
records and the Markdown summary table.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
sys.path.insert(0, str(EXPERIMENTS))

import bench_all  # noqa: E402
import bench_readme  # noqa: E402
import benchlib  # noqa: E402
import benchtable  # noqa: E402

MACHINE = {
    "cpu_model": "Test CPU",
    "cores": 2,
    "load_average": [0.1, 0.2, 0.3],
    "python": "3.11",
    "tensorflow": "2.21",
    "ai_edge_litert": "2.0",
    "git_commit": "abc1234",
    "git_dirty": False,
    "date": "2026-11-23T00:00:00+00:00",
}


def _result(bench="P2", value=1.03, met=True, quick=False, **details):
    head = benchlib.Headline(
        bench, "executor/raw", value, "x", "<= 1.05x", met, ours="0.80 ms", reference="0.78 ms"
    )
    return benchlib.BenchResult(
        bench=bench,
        what="per-sample time",
        baseline="raw invokes",
        headline=head,
        quick=quick,
        details=details,
        command=f".venv/bin/python experiments/bench_{bench.lower()}.py",
    )


def _strict_loads(text: str):
    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


# ----------------------------------------------------------------------------- statistics


def test_summary_of_timings():
    stats = benchlib.summary([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats["n"] == 5
    assert stats["median"] == 3.0
    assert stats["mean"] == pytest.approx(3.0)
    assert stats["min"] == 1.0
    assert stats["p10"] == 1.0
    assert stats["p90"] == 5.0


def test_summary_of_nothing_has_only_a_count():
    assert benchlib.summary([]) == {"n": 0}


def test_mape_is_relative_to_the_measured_value():
    # |100 - 90| / 100 = 10 %, |50 - 60| / 50 = 20 %  -> mean 15 %
    assert benchlib.mape([100.0, 50.0], [90.0, 60.0]) == pytest.approx(15.0)
    assert benchlib.mape([10.0], [10.0]) == 0.0


@pytest.mark.parametrize(
    ("measured", "predicted", "match"),
    [([], [], "at least one"), ([0.0], [1.0], "measured value is 0")],
)
def test_mape_refuses_undefined_inputs(measured, predicted, match):
    with pytest.raises(ValueError, match=match):
        benchlib.mape(measured, predicted)


def test_mape_refuses_lists_of_different_lengths():
    with pytest.raises(ValueError):
        benchlib.mape([1.0, 2.0], [1.0])


def test_interleaved_discards_warmup_and_rotates_the_order():
    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = benchlib.interleaved(fns, repeats=3, warmup=1)
    assert {k: len(v) for k, v in times.items()} == {"a": 3, "b": 3}
    assert all(ms >= 0 for v in times.values() for ms in v)
    # 4 rounds (1 warm-up + 3), order a,b then b,a then a,b then b,a
    assert calls == ["a", "b", "b", "a", "a", "b", "b", "a"]


# ----------------------------------------------------------------------------- budget


def test_timeout_holds_back_what_later_benchmarks_need():
    assert benchlib.timeout_for(1000.0, [100.0, 200.0]) == 700.0
    assert benchlib.timeout_for(1000.0, []) == 1000.0


def test_timeout_never_drops_below_the_floor_nor_above_what_is_left():
    assert benchlib.timeout_for(300.0, [400.0], floor_s=30.0) == 30.0
    assert benchlib.timeout_for(3.0, [400.0], floor_s=30.0) == 3.0
    assert benchlib.timeout_for(-5.0, [], floor_s=30.0) == 0.0


# ----------------------------------------------------------------------------- headline


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (1.0, "1.00"),
        (0.2791, "0.279"),
        (19.23, "19.2"),
        (4.0, "4.00"),
        (123.4, "123"),
        (0.0, "0.00"),
    ],
)
def test_significant_keeps_three_digits(value, text):
    assert benchlib.significant(value) == text


@pytest.mark.parametrize(("met", "verdict"), [(True, "MET"), (False, "MISSED"), (None, "SKIPPED")])
def test_headline_line_and_verdict(met, verdict):
    head = benchlib.Headline("P2", "executor/raw", 1.031, "x", "<= 1.05x", met)
    assert head.verdict == verdict
    assert head.line() == f"P2 executor/raw = 1.03x (goal <= 1.05x): {verdict}"


def test_headline_without_a_value_shows_na():
    head = benchlib.Headline("P7", "make demo wall", None, " s", "<= 300 s", None)
    assert head.line() == "P7 make demo wall = n/a (goal <= 300 s): SKIPPED"


# ----------------------------------------------------------------------------- JSON records


def test_write_result_is_strict_json_with_the_headline(tmp_path):
    result = _result(
        nan=float("nan"),
        inf=float("inf"),
        array=np.array([1.5, 2.5]),
        scalar=np.float32(0.5),
        path=Path("results/bench"),
        nested={"k": [np.int64(3), float("-inf")]},
    )
    path = benchlib.write_result(result, tmp_path, machine=MACHINE)
    assert path == tmp_path / "p2.json"
    data = _strict_loads(path.read_text())
    assert data["schema"] == benchlib.SCHEMA
    assert data["machine"]["cpu_model"] == "Test CPU"
    assert data["headline"]["verdict"] == "MET"
    assert data["headline"]["line"] == "P2 executor/raw = 1.03x (goal <= 1.05x): MET"
    assert data["headline"]["ours"] == "0.80 ms"
    assert data["details"] == {
        "nan": None,
        "inf": None,
        "array": [1.5, 2.5],
        "scalar": 0.5,
        "path": "results/bench",
        "nested": {"k": [3, None]},
    }


def test_to_json_ready_refuses_unknown_objects():
    with pytest.raises(TypeError, match="Cannot write object"):
        benchlib.to_json_ready({"x": object()})


def test_finish_prints_the_headline_as_the_last_line(tmp_path, capsys):
    code = benchlib.finish(_result(value=1.2, met=False), tmp_path)
    out = capsys.readouterr().out.strip().splitlines()
    assert code == 0
    assert out[-1] == "P2 executor/raw = 1.20x (goal <= 1.05x): MISSED"
    assert (tmp_path / "p2.json").is_file()


def test_command_line_is_relative_to_the_repository():
    argv = ["/abs/path/experiments/bench_p2_executor.py", "--quick"]
    assert (
        benchlib.command_line(argv) == ".venv/bin/python experiments/bench_p2_executor.py --quick"
    )


def test_bundle_matches_reads_the_build_config(tmp_path):
    config = {"model": "small_cnn", "epochs": 4, "exits_per_part": [2, 2]}
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {"build_config": config}}))
    assert benchlib.bundle_matches(tmp_path, {"model": "small_cnn", "exits_per_part": (2, 2)})
    assert not benchlib.bundle_matches(tmp_path, {"epochs": 8})
    assert not benchlib.bundle_matches(tmp_path / "missing", {"model": "small_cnn"})


def test_bundle_matches_a_copied_keras_backbone_by_content(tmp_path):
    first, copy, other = (tmp_path / n for n in ("a/b.keras", "c/b.keras", "d/b.keras"))
    for path, data in ((first, b"weights"), (copy, b"weights"), (other, b"other!!")):
        path.parent.mkdir()
        path.write_bytes(data)
    config = {"model": str(first), "epochs": 4}
    (tmp_path / "manifest.json").write_text(json.dumps({"extra": {"build_config": config}}))
    assert benchlib.bundle_matches(tmp_path, {"model": str(copy), "epochs": 4})
    assert not benchlib.bundle_matches(tmp_path, {"model": str(other)})
    assert not benchlib.bundle_matches(tmp_path, {"model": str(tmp_path / "gone.keras")})
    assert not benchlib.bundle_matches(tmp_path, {"model": "resnet50"})


# ----------------------------------------------------------------------------- processes


def test_run_command_returns_output_and_exit_code():
    done = benchlib.run_command(["sh", "-c", "echo out; echo err >&2; exit 3"], 10.0)
    assert (done.returncode, done.stdout, done.stderr) == (3, "out\n", "err\n")
    assert done.seconds >= 0


def test_run_command_kills_the_whole_group_at_the_time_limit():
    # The shell starts a grandchild (like make starting a build) and waits for it.
    done = benchlib.run_command(["sh", "-c", "sleep 30 & echo $!; wait"], 0.5)
    assert done.returncode is None
    assert done.seconds < 10
    grandchild = int(done.stdout.split()[0])
    deadline = time.monotonic() + 5
    while _running(grandchild):
        assert time.monotonic() < deadline, "the grandchild outlived the time limit"
        time.sleep(0.05)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (Linux ``/proc``)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return False


# ----------------------------------------------------------------------------- table


def _record(bench="P2", **kw):
    return benchlib.to_json_ready(_result(bench=bench, **kw).to_dict(MACHINE))


def test_markdown_table_has_the_columns_and_one_row_per_benchmark():
    records = [
        _record("P6", value=12.5, met=False),
        _record("P2"),
        {"bench": "P3", "status": "not run: budget spent", "command": "x | y"},
    ]
    lines = benchtable.markdown_table(records).strip().splitlines()
    assert lines[0] == "| id | what | ours | baseline | ratio | goal | met? | command |"
    assert lines[1] == "|---|---|---|---|---|---|---|---|"
    assert [line.split(" | ")[0] for line in lines[2:]] == ["| P2", "| P3", "| P6"]
    p2 = lines[2].split(" | ")
    assert p2[2:7] == ["0.80 ms", "0.78 ms", "executor/raw = 1.03x", "<= 1.05x", "MET"]
    assert "not run: budget spent" in lines[3]
    assert "`x \\| y`" in lines[3]  # a pipe inside a cell is escaped
    assert "MISSED" in lines[4]


def test_quick_records_are_marked_in_the_table():
    row = benchtable.table_row(_record(quick=True))
    assert row[6] == "MET (quick)"


def test_machine_line_names_the_cpu_and_notes_the_load():
    busy = benchtable.machine_line({**MACHINE, "load_average": [1.8, 1.0, 0.5]}, [0.2, 0.1, 0.1])
    assert "Test CPU, 2 cores" in busy
    assert "0.2/0.1/0.1 at start, 1.8/1/0.5 at end" in busy
    assert "other work was running (1-min load 1.8 on 2 cores)" in busy
    quiet = benchtable.machine_line(MACHINE)
    assert "otherwise idle" in quiet and "commit abc1234;" in quiet


def test_load_records_skips_unreadable_files_and_lists_misses(tmp_path):
    (tmp_path / "p2.json").write_text(json.dumps(_record("P2", value=1.2, met=False)))
    (tmp_path / "p5.json").write_text(json.dumps(_record("P5")))
    (tmp_path / "p9.json").write_text("{not json")
    (tmp_path / "summary.json").write_text(json.dumps({"benchmarks": []}))
    records = benchtable.load_records(tmp_path)
    assert [r["bench"] for r in records] == ["P2", "P5"]
    assert benchtable.missed_lines(records) == ["P2 executor/raw = 1.20x (goal <= 1.05x): MISSED"]


def test_summary_markdown_adds_machine_and_total():
    summary = {
        "machine": MACHINE,
        "machine_at_start": {"load_average": [0.1, 0.1, 0.1]},
        "total_seconds": 1100.4,
        "budget_seconds": 1200.0,
        "quick": False,
        "benchmarks": [_record("P2")],
    }
    text = bench_all.summary_markdown(summary)
    assert text.startswith("| id | what |")
    assert "Machine: Test CPU" in text
    assert text.rstrip().endswith("Total 1100 s (budget 1200 s).")


def test_readme_table_keeps_benchmarks_the_last_run_could_not_finish(tmp_path):
    (tmp_path / "p2.json").write_text(json.dumps(_record("P2", value=1.2, met=False)))
    placeholder = {"bench": "P1", "status": "not finished within 700 s", "command": "c"}
    summary = {
        "machine": MACHINE,
        "machine_at_start": {"load_average": [0.1, 0.1, 0.1]},
        "total_seconds": 1190.0,
        "quick": False,
        "benchmarks": [placeholder, _record("P2", value=1.2, met=False)],
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    text = bench_readme.render(tmp_path, misses=True)
    rows = [line for line in text.splitlines() if line.startswith("| P")]
    assert [r.split(" | ")[0] for r in rows] == ["| P1", "| P2"]
    assert "not finished within 700 s" in rows[0]
    assert "`make bench` total: 1190 s" in text
    assert text.rstrip().endswith("- P2 executor/raw = 1.20x (goal <= 1.05x): MISSED")


def test_readme_warns_about_quick_records_and_mixed_commits():
    other = {**_record("P5"), "machine": {**MACHINE, "git_commit": "def5678"}}
    notes = bench_readme.warnings([_record("P2", quick=True), other])
    assert notes[0] == "--quick records (smoke tests, not figures): P2"
    assert "different commits" in notes[1]
