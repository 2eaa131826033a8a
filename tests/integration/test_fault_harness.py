"""The fault harness (``experiments/fault_harness.py``), test-sized: same code, fewer requests.

Two real processes on loopback (the chaos cloud and ``edgelesspart serve-edge``) while the cloud
is killed, restarted, slow, failing and answering garbage; then a short load phase at 1x/2x/4x
the sustainable rate. The full 10,000-request run is documented in docs/reliability.md.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "fault_harness.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("fault_harness", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def report(tiny_bundle, tmp_path_factory):
    harness = _load_script()
    from faultlib import EdgeSettings

    # 680 requests paced at 100/s: 40 per phase, each phase ~0.4 s, several breaker resets long.
    config = harness.HarnessConfig(
        requests=680,
        rate_per_s=100.0,
        clients=8,
        warmup=16,
        edge=EdgeSettings(timeout_s=0.5, breaker_reset_s=0.1),
        load_s=1.0,
        rss_interval_s=0.1,
    )
    return harness.run_harness(tiny_bundle, config, tmp_path_factory.mktemp("harness"))


def test_no_request_is_lost_while_the_cloud_fails(report):
    faults = report["faults"]
    # THEN every request got an answer: cloud, edge early exit, or degraded with a reason
    assert faults["sent"] == 680 and faults["lost"] == 0, faults
    assert set(faults["outcomes"]) <= {"cloud", "edge", "degraded"}
    assert faults["http_5xx"] == 0 and set(faults["statuses"]) == {"200"}
    # AND every degraded answer carried a reason (each one is counted under its reason)
    assert sum(faults["degraded_reasons"].values()) == faults["outcomes"]["degraded"]
    # AND every fault phase was answered degraded, while healthy phases reached the cloud
    modes = {p["mode"]: p for p in report["phases"]}
    for fault in ("kill", "slow", "error", "garbage", "malformed", "unauthorized", "notfound"):
        assert modes[fault]["outcomes"].get("degraded", 0) >= 30, modes[fault]
    assert faults["outcomes"]["cloud"] > 0
    # AND a refusal is named as such, a malformed answer as malformed
    reasons = " ".join(modes["unauthorized"]["reason_examples"].values())
    assert "cloud rejected the call: 401" in reasons, modes["unauthorized"]["reason_examples"]
    reasons = " ".join(modes["notfound"]["reason_examples"].values())
    assert "cloud rejected the call: 404" in reasons
    # (a NaN confidence is not even valid JSON, so it may be the first example recorded)
    malformed = " ".join(modes["malformed"]["reason_examples"].values())
    assert "malformed response" in malformed or "sent non-JSON" in malformed, malformed


def test_an_offload_over_the_limit_is_split_and_every_row_answered(report):
    phase = next(p for p in report["phases"] if p["mode"] == "overlimit")
    assert phase["outcomes"] == {"cloud": phase["requests"]}, phase
    assert phase["cloud_calls_ok"] >= 2 * phase["requests"]  # several chunks per request
    assert report["checks"]["overlimit_requests_split_and_answered"]


def test_breaker_opens_in_each_fault_and_closes_after(report):
    harness = sys.modules["fault_harness"]
    # GIVEN the healthy phases after each fault
    for mode, after in harness.recoveries(report["phases"]):
        # THEN the breaker went half-open, then closed, and ended the recovery closed
        assert sum(p["breaker"].get("half-open->closed", 0) for p in after) >= 1, (mode, after)
        assert after[-1]["breaker_state_after"] == "closed"
    for phase in report["phases"]:
        # AND in every fault the breaker opened (and was not closed when the fault ended)
        if phase["mode"] in harness.FAULTS:
            assert harness.opened(phase), phase
        # AND while open, the failing cloud saw no more calls than the breaker allows
        if phase["cloud_calls_in_mode"] is not None:
            assert phase["cloud_calls_in_mode"] <= phase["cloud_calls_bound"], phase
    assert report["checks"]["breaker_opened_in_every_fault"]
    assert report["checks"]["breaker_closed_after_every_fault"]


def test_overload_is_refused_with_retry_after_and_nothing_else_fails(report):
    load = report["load"]
    levels = load["levels"]
    assert [lv["factor"] for lv in levels] == [1.0, 2.0, 4.0]
    # GIVEN the sustainable rate was found at or below the closed-loop capacity
    assert 0 < load["sustainable"]["rate_per_s"] <= load["capacity"]["rate_per_s"]
    # THEN at 4x the sustainable rate some requests were refused with 429...
    assert levels[-1]["outcomes"].get("busy", 0) > 0, levels[-1]
    # ...every 429 said when to retry, and no request failed in any other way
    assert all(lv["missing_retry_after"] == 0 for lv in levels)
    assert all(lv["error_rate"] == 0 for lv in levels), levels
    assert all(set(lv["statuses"]) <= {"200", "429"} for lv in levels)
    assert all(lv["p50_ms"] is not None and lv["p99_ms"] >= lv["p50_ms"] for lv in levels)


def test_edge_memory_stays_bounded(report):
    rss = report["rss"]
    assert rss["available"] and rss["samples"] >= 10
    assert rss["growth_mib"] < 64 and rss["max_mib"] < rss["start_mib"] + 128, rss


def test_cloud_was_killed_and_restarted(report):
    assert report["cloud"]["kills"] == 1 and report["cloud"]["starts"] == 2
    assert any(p["restarted_cloud"] for p in report["phases"] if p["mode"] == "restart")
