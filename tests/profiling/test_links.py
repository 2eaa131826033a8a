"""Tests for network links (edgelesspart.profiling.links): bundled profiles and transfer time."""

from __future__ import annotations

import json

import pytest

from edgelesspart.errors import ConfigError, ProfileError
from edgelesspart.profiling.links import Link, list_links, load_link


def test_bundled_links_load_with_sources():
    # GIVEN the bundled links file
    # WHEN every link is loaded
    links = {name: load_link(name) for name in list_links()}
    # THEN the five seeded links are there, each cited, uplink slowest on 3G
    assert {"3g", "lte", "5g", "wifi", "loopback"} <= set(links)
    assert all(link.source for link in links.values())
    assert links["3g"].uplink_mbps < links["lte"].uplink_mbps < links["5g"].uplink_mbps
    assert links["loopback"].rtt_ms < 1.0


def test_transfer_time_is_rtt_plus_payload():
    # GIVEN a link of 8 Mbit/s up, 80 Mbit/s down and 10 ms RTT
    link = Link("test", uplink_mbps=8.0, downlink_mbps=80.0, rtt_ms=10.0)
    # WHEN 100,000 bytes are sent each way (800,000 bits)
    up = link.transfer_ms(100_000)
    down = link.transfer_ms(100_000, direction="down")
    # THEN up takes 10 + 100 ms and down 10 + 10 ms; an empty payload costs one RTT
    assert up == pytest.approx(110.0)
    assert down == pytest.approx(20.0)
    assert link.transfer_ms(0) == 10.0


def test_lte_transfer_of_a_resnet_boundary():
    # GIVEN the LTE profile (5.85 Mbit/s up, 60 ms RTT)
    lte = load_link("lte")
    # WHEN a 56x56x256 float32 tensor (3,211,264 bytes) is offloaded
    ms = lte.transfer_ms(56 * 56 * 256 * 4)
    # THEN it takes 60 ms + 3,211,264 * 8 / 5.85e6 s
    assert ms == pytest.approx(60.0 + 3_211_264 * 8 / 5.85e6 * 1000)


def test_bad_direction_and_unknown_link_are_explained(tmp_path):
    # GIVEN a link, an unknown name and a malformed file
    link = load_link("wifi")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "uplink_mbps": 0, "rtt_ms": 1}), encoding="utf-8")
    # WHEN they are used
    # THEN each error names the input and the fix
    with pytest.raises(ConfigError, match="direction 'sideways'"):
        link.transfer_ms(10, direction="sideways")
    with pytest.raises(ProfileError, match=r"Unknown link '4g'.*lte"):
        load_link("4g")
    with pytest.raises(ProfileError, match="bandwidths > 0"):
        load_link(bad)


def test_link_file_round_trips(tmp_path):
    # GIVEN a custom link saved as JSON
    link = Link("lab", 100.0, 100.0, 5.0, source="wired lab")
    path = tmp_path / "lab.json"
    path.write_text(json.dumps(link.to_dict()), encoding="utf-8")
    # WHEN it is loaded by path
    # THEN it equals the original
    assert load_link(path) == link
