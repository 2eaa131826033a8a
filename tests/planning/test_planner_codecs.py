"""Tests for payload-aware planning (edgelesspart.planning.payload and the planner's ``codec``
argument).

Synthetic profiles only. Byte counts are chosen by hand around AWS Lambda's synchronous limit
of 6 MiB = 6,291,456 bytes for the JSON event; the largest tensor payload that fits, once
base64-encoded (x4/3) inside the 256-byte JSON wrapper, is (6,291,456 - 256) // 4 x 3 = 4,718,400.
"""

from __future__ import annotations

import json

import pytest

from edgelesspart.errors import PlanError
from edgelesspart.planning import planner
from edgelesspart.planning.payload import (
    LAMBDA_PAYLOAD_LIMIT,
    boundary_payload,
    lambda_event_bytes,
    payload_limit,
)
from edgelesspart.profiling.devices import load_device
from edgelesspart.profiling.links import Link
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile

MB = 1_000_000
FITS = 4_718_400
#: c1: a 7 MB raw boundary (an early ResNet50-like cut); c2: 7 MB that compresses poorly.
C1_BYTES = {"raw": 7 * MB, "lz4": 6 * MB, "fp16": 3_500_000, "int8+zstd": 900_000}
C2_BYTES = {"raw": 7 * MB, "lz4": 6_900_000, "fp16": 5 * MB}


def profile(c1: dict[str, int], c2: dict[str, int], c3: dict[str, int] | None = None):
    """Three internal cut points at 10/20/30 ms of a 100 ms model, memory rising with depth."""
    c3 = c3 if c3 is not None else {"raw": 400_000, "int8+zstd": 60_000}
    cps = (
        CutPointProfile("c1", 0, 10.0, 100, 50, (1,), 7 * MB, 0, c1),
        CutPointProfile("c2", 1, 20.0, 200, 100, (1,), 7 * MB, 0, c2),
        CutPointProfile("c3", 2, 30.0, 600, 300, (1,), 400_000, 0, c3),
        CutPointProfile("output", 3, 100.0, 1000, 500, (1,), 40),
    )
    return ModelProfile("toy", "host", (8, 8, 1), cps)


@pytest.fixture
def lam():
    return load_device("lambda-2gb")


def test_the_limit_is_one_constant_and_base64_is_counted():
    # GIVEN the Lambda limit (bytes of the JSON event)
    assert LAMBDA_PAYLOAD_LIMIT == 6 * 1024 * 1024
    # THEN the largest payload that fits is exactly where the event reaches the limit
    assert payload_limit(load_device("lambda-2gb")) == FITS
    assert lambda_event_bytes(FITS) <= LAMBDA_PAYLOAD_LIMIT < lambda_event_bytes(FITS + 1)
    # AND non-Lambda clouds have no payload rule
    assert payload_limit(load_device("gcf-2gb")) is None and payload_limit(None) is None


def test_encoded_bytes_round_trip_and_old_profiles_still_load():
    p = profile(C1_BYTES, C2_BYTES)
    again = ModelProfile.from_dict(json.loads(json.dumps(p.to_dict())))
    assert again == p and again.at("c1").encoded_bytes == C1_BYTES
    # a profile written before encoded_bytes existed reads with an empty dict
    old = p.to_dict()
    for cp in old["cut_points"]:
        cp.pop("encoded_bytes", None)
    assert ModelProfile.from_dict(old).at("c1").encoded_bytes == {}
    assert "encoded_bytes" not in p.total.to_dict()  # unmeasured entries stay as before
    assert hash(p.at("c1")) == hash(again.at("c1"))


def test_auto_plans_with_the_smallest_lossless_codec_off_lambda():
    # GIVEN a GCF cloud (no payload rule) WHEN planning c1 with auto
    payload = boundary_payload(profile(C1_BYTES, C2_BYTES).at("c1"), "auto", None)
    # THEN lz4 (6 MB) is planned: the smallest lossless, an upper bound of the final choice
    assert (payload.codec, payload.nbytes, payload.measured) == ("lz4", 6 * MB, True)


def test_lambda_7mb_boundary_picks_a_smaller_codec(lam):
    # GIVEN a 7 MB raw boundary at c1 and a Lambda cloud
    edge = profile(C1_BYTES, C2_BYTES)
    # WHEN the memory rule picks c1 (fraction 0.15 -> budget 150 bytes)
    plan = planner.plan_split(
        edge, edge, constraint="memory", memory_fraction=0.15, cloud_device=lam,
        exits_per_part=0,
    )  # fmt: skip
    # THEN lz4 (6 MB, 8 MB as base64) is over the limit and the smallest codec that fits,
    # int8+zstd (900 kB), is planned and recorded with its bytes
    assert plan.split == "c1"
    assert plan.parameters["codec"] == "int8+zstd"
    assert plan.parameters["boundary_encoded_bytes"] == 900_000
    assert plan.parameters["payload_limit_bytes"] == LAMBDA_PAYLOAD_LIMIT
    assert "over the Lambda payload limit" in plan.parameters["codec_reason"]
    assert plan.boundary_bytes == (7 * MB,)  # the raw size stays in the plan


def test_lambda_refuses_a_fixed_codec_that_does_not_fit(lam):
    edge = profile(C1_BYTES, C2_BYTES)
    with pytest.raises(PlanError) as info:
        planner.plan_split(
            edge, edge, constraint="memory", memory_fraction=0.15, cloud_device=lam,
            exits_per_part=0, codec="raw",
        )  # fmt: skip
    # THEN the message names the cut point, the bytes per codec, the limit and the way out
    text = str(info.value)
    assert "Split 'c1' is refused" in text and "6,291,456 bytes" in text
    assert "raw 7,000,000 B" in text and "int8+zstd 900,000 B" in text
    assert "codecs that fit here: fp16, int8+zstd" in text


def test_lambda_refuses_a_split_where_no_codec_fits(lam):
    # GIVEN c2 where even fp16 is 5 MB (6.7 MB as base64)
    edge = profile(C1_BYTES, C2_BYTES)
    with pytest.raises(PlanError, match=r"Split 'c2' is refused.*fp16 5,000,000 B.*no measured "
                                        r"codec fits: choose a deeper split"):
        planner.plan_split(edge, edge, constraint="memory", memory_fraction=0.25,
                           cloud_device=lam, exits_per_part=0)


def test_unmeasured_profiles_fall_back_to_raw_bytes(lam):
    # GIVEN a profile without encoded_bytes and a 7 MB boundary at c1
    edge = profile({}, {}, {})
    # WHEN planned for GCF THEN raw bytes are used and flagged as not measured
    plan = planner.plan_split(edge, edge, constraint="memory", memory_fraction=0.15,
                              exits_per_part=0, cloud_device=load_device("gcf-2gb"))
    assert plan.parameters["codec"] == "raw"
    assert plan.parameters["boundary_encoded_bytes"] == 7 * MB
    assert plan.parameters["boundary_bytes_measured"] is False
    # AND for Lambda the split is refused, saying the bytes were not measured
    with pytest.raises(PlanError, match=r"raw \(unmeasured\) 7,000,000 B"):
        planner.plan_split(edge, edge, constraint="memory", memory_fraction=0.15,
                           exits_per_part=0, cloud_device=lam)


def test_objective_link_time_uses_encoded_bytes():
    # GIVEN a 1 Mbit/s link (8 ms per kB) and no exits
    link = Link("slow", 1.0, 1.0, 0.0)
    small = {"raw": 7 * MB, "int8+zstd": 1000, "lz4": 1000}
    edge = profile(small, {"raw": 7 * MB, "lz4": 5 * MB}, {"raw": 400_000, "lz4": 300_000})
    # WHEN minimising expected latency with auto
    plan = planner.plan_objective(edge, edge, objective="expected-latency", link=link,
                                  exits_per_part=0)
    # THEN c1 wins: its lz4 payload takes 8 ms on the link (raw would take 56 s)
    # expected = 10 (edge) + 8 (link) + 90 (cloud) = 108 ms
    assert plan.split == "c1"
    assert plan.parameters["objective_value"] == pytest.approx(108.0)
    assert plan.parameters["codec"] == "lz4" and plan.parameters["boundary_encoded_bytes"] == 1000
    # AND a fixed codec not measured at a split falls back to raw there
    raw = planner.plan_objective(edge, edge, objective="expected-latency", link=link,
                                 exits_per_part=0, codec="raw")
    assert raw.split == "c3" and raw.parameters["boundary_encoded_bytes"] == 400_000
    # AND expected_latency of a plan agrees with the planner (it reads the plan's bytes)
    value = planner.expected_latency(plan, edge, edge, planner.default_exit_rates(edge), link)
    assert value == pytest.approx(108.0)


def test_objective_skips_refused_splits_and_says_so_when_none_is_left(lam):
    link = Link("fast", 1000.0, 1000.0, 0.0)
    # GIVEN Lambda: c1 fits only with int8+zstd (auto), c2 never fits, c3 fits
    edge = profile(C1_BYTES, C2_BYTES)
    plan = planner.plan_objective(edge, edge, objective="expected-latency", link=link,
                                  exits_per_part=0, cloud_device=lam)
    # c1: 10 + 7.2 (int8+zstd, 900 kB) + 90 = 107.2 ms; c3: 30 + 3.2 (raw, 400 kB) + 70 = 103.2
    assert plan.parameters["feasible_splits"] == 2 and plan.split == "c3"
    # WHEN every split is too large
    huge = {"raw": 9 * MB}
    with pytest.raises(PlanError, match=r"No split fits the cloud's payload limit: all 3 split"
                                        r".*Split 'c3' is refused"):
        planner.plan_objective(profile(huge, huge, huge), profile(huge, huge, huge),
                               objective="expected-latency", link=link, exits_per_part=0,
                               cloud_device=lam)


def test_unknown_codec_lists_the_choices():
    edge = profile(C1_BYTES, C2_BYTES)
    with pytest.raises(PlanError, match=r"Unknown codec 'zfp8'.*fp16\+lz4.*'auto'"):
        planner.plan_split(edge, edge, constraint="memory", memory_fraction=0.15, codec="zfp8")


def test_lambda_link_time_counts_the_base64_event(lam):
    from edgelesspart.planning.payload import wire_bytes

    # GIVEN a 1 Mbit/s link (8 ms per kB), no exits, and only c3 small enough to matter
    link = Link("slow", 1.0, 1.0, 0.0)
    edge = profile({"raw": 7 * MB}, {"raw": 7 * MB}, {"raw": 400_000, "lz4": 60_000})
    # WHEN the same split is planned for an HTTP cloud and for Lambda
    http = planner.plan_objective(edge, edge, objective="expected-latency", link=link,
                                  exits_per_part=0, cloud_device=load_device("gcf-2gb"))
    on_lambda = planner.plan_objective(edge, edge, objective="expected-latency", link=link,
                                       exits_per_part=0, cloud_device=lam)
    # THEN both send lz4 (60 kB) at c3; HTTP puts 60 kB on the link: 30 + 480 + 70 ms
    assert (http.split, http.parameters["codec"]) == ("c3", "lz4")
    assert http.parameters["boundary_wire_bytes"] == 60_000
    assert http.parameters["objective_value"] == pytest.approx(580.0)
    # AND Lambda carries it as base64 in a JSON event: 4 * 20,000 + 256 = 80,256 bytes
    assert wire_bytes(60_000, lam) == lambda_event_bytes(60_000) == 80_256
    assert on_lambda.parameters["boundary_encoded_bytes"] == 60_000
    assert on_lambda.parameters["boundary_wire_bytes"] == 80_256
    assert on_lambda.parameters["objective_value"] == pytest.approx(30 + 642.048 + 70)
    # AND expected_latency of each plan agrees with the planner
    rates = planner.default_exit_rates(edge)
    for plan in (http, on_lambda):
        value = planner.expected_latency(plan, edge, edge, rates, link)
        assert value == pytest.approx(plan.parameters["objective_value"])


def test_the_lambda_limit_holds_for_the_largest_sample_not_the_mean(lam):
    from dataclasses import replace

    from edgelesspart.planning.payload import boundary_payload

    # GIVEN a split whose lz4 mean fits the limit but whose largest profiled sample does not
    cp = CutPointProfile("c1", 0, 10.0, 100, 50, (1,), 7 * MB, 0,
                         {"raw": 7 * MB, "lz4": FITS - 10, "fp16": 3_500_000})
    spiky = replace(cp, encoded_bytes_max={"raw": 7 * MB, "lz4": FITS + 10, "fp16": 3_500_000})
    # THEN without the maximum the mean decides; with it, a fixed lz4 is refused
    assert boundary_payload(cp, "lz4", lam).codec == "lz4"
    with pytest.raises(PlanError, match=r"up to 4,718,410 bytes per sample with codec 'lz4'"):
        boundary_payload(spiky, "lz4", lam)
    # AND auto takes the smallest codec whose largest sample fits
    assert boundary_payload(spiky, "auto", lam).codec == "fp16"
    # AND the field round-trips through profile.json
    assert CutPointProfile.from_dict(spiky.to_dict()) == spiky
