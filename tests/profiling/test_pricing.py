"""Pricing tables and the cost of one invocation, against REFERENCE.md §2 worked examples."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from edgelesspart.errors import ConfigError
from edgelesspart.profiling.pricing import (
    PROVIDERS,
    billed_ms,
    cost_per_invocation,
    load_prices,
    make_price_fn,
    per_million,
    price_table_from_dict,
)


@pytest.mark.parametrize("name", ["gcf-1st-gen", "gcf-2nd-gen", "aws-lambda"])
def test_every_table_carries_date_source_and_currency(name):
    # GIVEN a bundled pricing file
    text = resources.files("edgelesspart.profiling").joinpath("catalog", "pricing", f"{name}.json")
    data = json.loads(text.read_text(encoding="utf-8"))
    # THEN it says when and where its prices come from
    assert data["date"][:4].isdigit() and len(data["date"]) == 10
    assert data["source"] and all(isinstance(s, str) and s for s in data["source"])
    assert data["currency"] == "USD"


def test_lambda_x86_worked_example():
    # GIVEN Lambda x86 prices; WHEN 2048 MB runs 150 ms (billed per 1 ms)
    table = load_prices("lambda", "x86_64")
    cost = cost_per_invocation(table, 150.0, 2048)
    # THEN 0.3 GB-s x $0.0000166667 + $0.0000002 = about $5.2 per 1M
    assert per_million(cost) == pytest.approx(0.3 * 16.6667 + 0.2, rel=1e-9)
    assert per_million(cost) == pytest.approx(5.2, abs=0.01)


def test_lambda_arm_worked_example():
    # GIVEN Lambda arm64 prices; WHEN 2048 MB runs 150 ms
    cost = cost_per_invocation(load_prices("lambda", "arm64"), 150.0, 2048)
    # THEN about $4.2 per 1M
    assert per_million(cost) == pytest.approx(4.2, abs=0.01)


def test_gcf_first_gen_worked_example_rounds_to_100ms():
    # GIVEN GCF 1st gen; WHEN 2 GB / 2.4 GHz runs 150 ms (billed as 200 ms)
    table = load_prices("gcf")
    cost = cost_per_invocation(table, 150.0, 2048)
    # THEN 0.4 GB-s x 2.5e-6 + 0.48 GHz-s x 1e-5 + 4e-7 = $6.2 per 1M
    assert per_million(cost) == pytest.approx(6.2, rel=1e-9)
    # AND 101..200 ms cost the same, 201 ms costs one more step
    assert cost_per_invocation(table, 101.0, 2048) == pytest.approx(cost)
    assert cost_per_invocation(table, 200.0, 2048) == pytest.approx(cost)
    assert cost_per_invocation(table, 201.0, 2048) > cost


def test_gcf_second_gen_worked_example():
    # GIVEN Cloud Run functions; WHEN 1 vCPU / 2 GiB runs 150 ms (billed 200 ms)
    cost = cost_per_invocation(load_prices("gcf-2nd-gen"), 150.0, 2048)
    # THEN 0.2 x 2.4e-5 + 0.4 x 2.5e-6 + 4e-7 = $6.2 per 1M
    assert per_million(cost) == pytest.approx(6.2, rel=1e-9)


def test_lambda_bills_each_millisecond_and_at_least_one():
    # GIVEN a 1 ms billing increment
    # THEN 150.2 ms bills 151 ms, and a 0 ms call still bills one increment
    assert billed_ms(150.2, 1) == 151.0
    assert billed_ms(0.0, 1) == 1.0
    assert billed_ms(150.0, 100) == 200.0
    assert billed_ms(200.0, 100) == 200.0


def test_gcf_egress_is_charged_per_gib():
    # GIVEN GCF at $0.12/GiB egress
    table = load_prices("gcf")
    # WHEN one invocation returns 1 GiB
    extra = cost_per_invocation(table, 10, 2048, egress_bytes=2**30) - cost_per_invocation(
        table, 10, 2048
    )
    # THEN it costs $0.12 more; Lambda does not model egress
    assert extra == pytest.approx(0.12)
    lam = load_prices("lambda")
    assert cost_per_invocation(lam, 10, 2048, egress_bytes=2**30) == cost_per_invocation(
        lam, 10, 2048
    )


def test_lambda_bills_init_but_gcf_does_not():
    # GIVEN a 5 s cold start at 2 GB
    lam, gcf = load_prices("lambda"), load_prices("gcf")
    # WHEN it is billed
    lam_extra = cost_per_invocation(lam, 150, 2048, init_ms=5000) - cost_per_invocation(
        lam, 150, 2048
    )
    # THEN Lambda charges 10 GB-s (~$0.00017), GCF charges nothing for INIT
    assert lam_extra == pytest.approx(10 * 1.66667e-5)
    assert cost_per_invocation(gcf, 150, 2048, init_ms=5000) == cost_per_invocation(gcf, 150, 2048)


def test_price_fn_adds_expected_init_cost():
    # GIVEN a 20% chance of a 5 s billed INIT on Lambda
    table = load_prices("lambda")
    warm = make_price_fn(table, 2048)
    cold = make_price_fn(table, 2048, cold_start_ms=5000, cold_start_prob=0.2)
    # THEN each invocation costs 0.2 x 10 GB-s more on average
    assert cold(150) - warm(150) == pytest.approx(0.2 * 10 * 1.66667e-5)


def test_unknown_provider_lists_the_supported_ones():
    with pytest.raises(ConfigError, match=r"Unknown pricing provider 'azure'.*gcf, gcf-2nd-gen"):
        load_prices("azure")
    assert PROVIDERS == ("gcf", "gcf-2nd-gen", "lambda")


def test_gcf_has_no_arm_prices():
    with pytest.raises(ConfigError, match=r"no 'arm64' prices; available architectures: x86_64"):
        load_prices("gcf", "arm64")


def test_gcf_refuses_a_memory_size_that_is_not_a_tier():
    # GIVEN GCF's fixed memory tiers; WHEN 3000 MB is asked for
    with pytest.raises(ConfigError, match=r"no 3000 MB memory tier.*2048.*--memory-mb"):
        cost_per_invocation(load_prices("gcf"), 100, 3000)


def test_lambda_refuses_memory_out_of_range():
    with pytest.raises(ConfigError, match=r"between 128 and 10240 MB, got 64 MB"):
        cost_per_invocation(load_prices("lambda"), 100, 64)


def test_malformed_table_is_a_config_error():
    with pytest.raises(ConfigError, match="Malformed price table"):
        price_table_from_dict({"provider": "x", "architectures": {"x86_64": {}}})


def test_bad_cold_start_probability_is_refused():
    with pytest.raises(ConfigError, match=r"cold_start_prob must be within \[0, 1\], got 1.5"):
        make_price_fn(load_prices("lambda"), 2048, cold_start_ms=10, cold_start_prob=1.5)


def test_negative_duration_is_refused():
    with pytest.raises(ConfigError, match="must be >= 0 ms, got -1"):
        billed_ms(-1.0, 100)


def test_build_check_evaluate_and_replay_price_gcf_at_the_same_generation():
    """The build's cost line, the planner's cost objective, evaluate and replay all price the
    default cloud device (gcf-2gb) with the generation package-cloud packages (issue 23)."""
    import argparse
    import dataclasses

    from edgelesspart.commands import replay as replay_command
    from edgelesspart.planning.objective import default_cost_fn
    from edgelesspart.profiling.devices import DEFAULT_GCF_GENERATION, load_device, pricing_provider
    from edgelesspart.profiling.pricing import load_prices, make_price_fn
    from edgelesspart.replay.client import Pricing

    assert pricing_provider("gcf") == f"gcf-{'2nd' if DEFAULT_GCF_GENERATION == 2 else '1st'}-gen"
    # at 2 GiB the two generations coincide per 100 ms step; at 1 GiB they differ slightly
    device = dataclasses.replace(load_device("gcf-2gb"), memory_mb=1024)
    expected = make_price_fn(load_prices(pricing_provider("gcf")), 1024)
    first_gen = make_price_fn(load_prices("gcf-1st-gen"), 1024)
    planner = default_cost_fn(device)
    for ms in (3.0, 42.0, 180.0):
        assert planner(ms) == pytest.approx(expected(ms), rel=1e-12, abs=0)
        assert planner(ms) != pytest.approx(first_gen(ms), rel=1e-6, abs=0)
    assert Pricing().provider == pricing_provider("gcf")

    parser = argparse.ArgumentParser()
    replay_command.register(parser.add_subparsers())
    args = parser.parse_args(["replay", "http://127.0.0.1:1", "x.npz"])
    assert pricing_provider(args.provider, args.gcf_generation) == pricing_provider("gcf")
