"""Tests for edgelesspart.planning.codec_selection: the selection rule and real measurements.

The rule is checked on synthetic tables whose answers are worked out by hand; the measurement
runs a tiny untrained CNN (tests/bundle_factory.py ``tiny_model``) split at its trunk.
"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from edgelesspart.errors import ConfigError
from edgelesspart.export.summary import format_codec_table
from edgelesspart.planning.codec_selection import (
    CodecMeasurement,
    CodecTable,
    codec_entry,
    select_codec,
)


def row(codec: str, nbytes: float, delta_pp: float, decode_ms: float = 0.1) -> CodecMeasurement:
    """A synthetic row: raw float32 is 4000 bytes per sample."""
    return CodecMeasurement(
        codec=codec,
        bytes_per_sample=nbytes,
        raw_bytes=4000,
        size_ratio=nbytes / 4000,
        accuracy=0.9 + delta_pp / 100,
        accuracy_delta_pp=delta_pp,
        agreement=1.0,
        max_abs_error=0.0,
        encode_ms=0.1,
        decode_ms=decode_ms,
        lossless=codec in ("raw", "lz4", "zstd"),
    )


TABLE = CodecTable(
    cut_point="block2_relu",
    shape=(10, 10, 10),
    samples=200,
    raw_accuracy=0.9,
    rows=(
        row("raw", 4100, 0.0),
        row("lz4", 2500, 0.0),
        row("fp16", 2050, 0.0),
        row("fp16+lz4", 1200, -0.5),  # exactly at the bound: qualifies
        row("int8+zstd", 600, -1.0),  # smallest, but loses a whole point
        row("zfp", 900, +0.5),  # a lossy codec that happened to help
    ),
)


# --- the selection rule (hand answers) -------------------------------------------------------


@pytest.mark.parametrize(
    "max_loss, expected",
    [
        (0.5, "zfp"),  # int8+zstd (600 B) loses 1.0 pp; zfp (900 B) gains 0.5 pp
        (1.0, "int8+zstd"),  # now int8+zstd is within the bound and smallest
        (0.0, "zfp"),  # a negative loss is within a 0 pp bound
    ],
)
def test_selection_takes_the_fewest_bytes_within_the_loss_bound(max_loss, expected):
    # GIVEN the synthetic table WHEN selecting under a loss bound THEN the hand answer wins
    assert select_codec(TABLE, max_loss).codec == expected


def test_answers_a_codec_breaks_count_even_when_it_fixes_as_many_elsewhere():
    # GIVEN a lossy codec with no net accuracy change that breaks 3 % of the correct answers
    flipper = replace(row("int8+zstd", 600, 0.0), broken_pp=3.0, agreement=0.94)
    careful = replace(row("int8+lz4", 800, -0.4), broken_pp=0.4)
    # WHEN selecting within 0.5 points THEN the net-zero flipper does not qualify
    assert flipper.loss_pp == 3.0
    assert select_codec([row("raw", 4100, 0.0), flipper, careful], 0.5).codec == "int8+lz4"
    # AND the field survives the codecs.json round trip
    assert CodecMeasurement.from_dict(flipper.to_dict()) == flipper


def test_a_byte_limit_holds_for_the_largest_sample_not_the_mean():
    # GIVEN a codec whose mean fits a 1000-byte limit but whose largest sample does not
    spiky = replace(row("zstd", 900, 0.0), max_bytes_per_sample=1100.0)
    steady = replace(row("int8+lz4", 950, 0.0), max_bytes_per_sample=990.0)
    # THEN it is excluded and the steady codec is chosen
    assert select_codec([spiky, steady], 0.5, max_bytes=1000).codec == "int8+lz4"
    assert spiky.largest_bytes == 1100.0 and row("raw", 4100, 0.0).largest_bytes == 4100


def test_lossless_always_qualifies_and_ties_go_to_the_faster_decode():
    # GIVEN only codecs that lose accuracy, plus two lossless ones of equal size
    rows = [row("int8", 1000, -3.0), row("zstd", 2000, 0.0, 0.3), row("lz4", 2000, 0.0, 0.2)]
    # WHEN nothing lossy is allowed
    chosen = select_codec(rows, 0.0)
    # THEN the faster-decoding lossless codec of the two smallest wins
    assert chosen.codec == "lz4"


def test_selection_respects_a_byte_limit():
    # GIVEN a 1000-byte limit (e.g. a payload cap) and a 2 pp bound
    chosen = select_codec(TABLE, 2.0, max_bytes=1000)
    # THEN the smallest qualifying row under the limit wins
    assert chosen.codec == "int8+zstd"
    # AND with a limit nothing meets, the error says what was measured and how to fix it
    with pytest.raises(ConfigError, match=r"at most 500 bytes per sample.*--max-codec-loss"):
        select_codec(TABLE, 2.0, max_bytes=500)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), "0.5", True])
def test_a_bad_loss_bound_is_refused(bad):
    with pytest.raises(ConfigError, match="max_codec_loss"):
        select_codec(TABLE, bad)


def test_codec_entry_records_choice_table_and_round_trips():
    # WHEN the manifest entry is built for auto and for a fixed codec
    auto = codec_entry(TABLE, "auto", 0.5)
    fixed = codec_entry(TABLE, "fp16", 0.5)
    # THEN it names the codec, its size ratio and the whole table
    assert auto["name"] == "zfp" and auto["selected_by"] == "auto"
    assert auto["size_ratio"] == pytest.approx(900 / 4000)
    assert len(auto["table"]) == len(TABLE.rows) and auto["max_loss_pp"] == 0.5
    assert fixed["name"] == "fp16" and fixed["selected_by"] == "fixed"
    # AND the table survives JSON
    again = CodecTable.from_dict(json.loads(json.dumps(TABLE.to_dict())))
    assert again == TABLE
    # AND a fixed codec that was not measured is a clear error
    with pytest.raises(ConfigError, match=r"Codec 'zstd' was not measured at 'block2_relu'"):
        codec_entry(TABLE, "zstd", 0.5)


def test_inspect_text_marks_the_chosen_codec():
    lines = format_codec_table(codec_entry(TABLE, "auto", 0.5))
    chosen = [line for line in lines if line.rstrip().endswith("*")]
    assert len(chosen) == 1 and "zfp" in chosen[0] and "4.44x" in chosen[0]
    assert format_codec_table({"name": "raw"}) == []


# --- real measurement on a tiny model --------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    """The tiny test CNN (untrained, seeded) and 24 digit images with labels."""
    pytest.importorskip("keras")
    from bundle_factory import SPLIT_CUT, tiny_model

    from edgelesspart._lazy import keras
    from edgelesspart.model.datasets import load_dataset

    k = keras()
    k.utils.set_random_seed(0)
    data = load_dataset("digits", seed=0, limit=24)
    model = tiny_model(k, data.input_shape, data.num_classes)
    return model, SPLIT_CUT, data.x_val[:24], data.y_val[:24]


@pytest.mark.needs_tf
def test_measurement_on_real_tensors(tiny):
    from edgelesspart.planning.codec_selection import measure_at_split

    model, cut, x, y = tiny
    # WHEN two lossless and two lossy codecs are measured at the split
    table = measure_at_split(model, cut, x, y, codecs=["raw", "lz4", "fp16", "int8+zstd"])
    rows = {r.codec: r for r in table.rows}
    # THEN every row is measured on the same samples at the boundary shape
    assert table.cut_point == cut and table.samples == len(x) and table.shape == (16, 16, 16)
    assert set(rows) == {"raw", "lz4", "fp16", "int8+zstd"}
    # lossless codecs change nothing
    for name in ("raw", "lz4"):
        assert rows[name].accuracy_delta_pp == 0.0 and rows[name].agreement == 1.0
        assert rows[name].max_abs_error == 0.0
        assert rows[name].broken_pp == 0.0
    assert all(r.largest_bytes >= r.bytes_per_sample for r in table.rows)
    # raw is the tensor plus its frame header; the others are smaller
    assert rows["raw"].raw_bytes == 16 * 16 * 16 * 4
    assert 1.0 < rows["raw"].size_ratio < 1.1
    assert rows["fp16"].size_ratio < 0.55 and rows["int8+zstd"].size_ratio < 0.3
    assert 0 < rows["fp16"].max_abs_error < 1e-2
    assert all(r.encode_ms > 0 and r.decode_ms > 0 for r in table.rows)
    assert json.loads(json.dumps(table.to_dict()))["rows"][0]["codec"] == "raw"


@pytest.mark.needs_tf
def test_codecs_that_cannot_carry_the_values_are_listed_not_dropped(tiny):
    from edgelesspart.planning.codec_selection import measure_codecs

    model, cut, x, y = tiny
    boundary = np.full((2, 4), np.inf, dtype=np.float32)

    def tail(batch, training=False):
        return {"probs": np.eye(10, dtype=np.float32)[np.zeros(len(batch), dtype=int)]}

    # WHEN int8 meets an infinite tensor
    table = measure_codecs(tail, boundary, np.zeros(2, int), cut_point=cut, codecs=["raw", "int8"])
    # THEN it is skipped with the codec's own reason; raw is measured
    assert [r.codec for r in table.rows] == ["raw"]
    assert "NaN/inf" in table.skipped["int8"]


# --- the build's choice against the Lambda payload limit (edgelesspart.build.choose_codec) ---


def _split_plan(cut: str):
    from edgelesspart.runtime.plan import Plan, Stage

    return Plan(
        constraint="memory",
        placement="linear",
        stages=(
            Stage("edge", "rpi4", "input", cut, (), 1.0, 1000),
            Stage("cloud", "lambda-2gb", cut, "output", (), 1.0, 1000),
        ),
        cut_points=(cut,),
        boundary_bytes=(16 * 16 * 16 * 4,),
        parameters={"codec": "lz4"},
    )


@pytest.fixture
def lambda_limit(monkeypatch):
    """Scale Lambda's payload limit down to the tiny tensor: ``set(n)`` makes it ``n`` bytes."""
    from edgelesspart.planning import payload

    def set_limit(nbytes: int) -> None:
        monkeypatch.setattr(
            payload, "payload_limit", lambda cloud: nbytes if cloud.provider == "lambda" else None
        )

    return set_limit


@pytest.mark.needs_tf
def test_build_choice_fits_the_lambda_limit_or_refuses_clearly(tiny, lambda_limit):
    from types import SimpleNamespace

    from edgelesspart.build import BuildConfig, choose_codec
    from edgelesspart.planning.payload import lambda_event_bytes

    model, cut, x, y = tiny
    data, plan = SimpleNamespace(x_val=x, y_val=y), _split_plan(cut)
    auto = BuildConfig(cloud_device="lambda-2gb", codec="auto", max_codec_loss=100.0)
    # GIVEN a limit that raw float32 (16 KiB + header) does not meet but compressed codecs do
    lambda_limit(10_000)
    entry, table, chosen_plan = choose_codec(auto, model, plan, data, log=lambda _: None)
    rows = {r["codec"]: r for r in table["rows"]}
    # THEN auto sends the fewest bytes, under the limit, and the plan records it
    smallest = min(rows.values(), key=lambda r: r["bytes_per_sample"])
    assert entry["name"] == smallest["codec"] and smallest["bytes_per_sample"] <= 10_000
    assert rows["raw"]["bytes_per_sample"] > 10_000
    assert chosen_plan.parameters["codec"] == entry["name"]
    assert chosen_plan.parameters["boundary_encoded_bytes"] == round(smallest["bytes_per_sample"])
    assert chosen_plan.parameters["planning_codec"] == "lz4"
    # (the link carries it base64-encoded in the Lambda JSON event)
    assert chosen_plan.parameters["boundary_wire_bytes"] == lambda_event_bytes(
        round(smallest["bytes_per_sample"])
    )
    # AND a fixed codec over the limit is refused with the bytes, the limit and the way out
    with pytest.raises(ConfigError, match=r"Codec 'raw' sends up to 16,\d{3} bytes per sample at "
                                          r"'block2_relu', over the lambda-2gb payload limit "
                                          r"\(10,000 bytes before base64\); use --codec auto"):
        choose_codec(replace(auto, codec="raw"), model, plan, data, log=lambda _: None)
    # AND when no codec fits, auto says so instead of sending something Lambda would refuse
    lambda_limit(100)
    with pytest.raises(ConfigError, match=r"No codec loses at most 100 accuracy points and at "
                                          r"most 100 bytes per sample; measured: raw"):
        choose_codec(auto, model, plan, data, log=lambda _: None)
