"""Host profiling: candidate selection, graph memory, measured latency and JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgelesspart.errors import ProfileError
from edgelesspart.profiling.profile import ModelProfile

keras = pytest.importorskip("keras")

from bundle_factory import tiny_model  # noqa: E402

from edgelesspart.model.graph import CutPoint, find_cut_points  # noqa: E402
from edgelesspart.profiling.profiler import candidate_cut_points, memory_profile, profile_model  # noqa: E402

pytestmark = pytest.mark.needs_tf


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return tiny_model(keras)


def test_candidates_are_spread_and_keep_the_last():
    cuts = [CutPoint(f"c{i}", i, (1,)) for i in range(10)]
    picked = [c.name for c in candidate_cut_points(cuts, 4)]
    assert picked == ["c1", "c4", "c7", "c9"]
    assert candidate_cut_points(cuts, 50) == cuts
    with pytest.raises(ProfileError, match="max_cut_points must be >= 1"):
        candidate_cut_points(cuts, 0)


def test_graph_memory_counts_weights_and_live_activations(model):
    names = [c.name for c in find_cut_points(model)] + ["output"]
    memory = memory_profile(model, names)
    # conv1: 3*3*3*8 + 8 params; its 32x32x8 output and the 32x32x3 input are live together.
    conv1_weights = (3 * 3 * 3 * 8 + 8) * 4
    assert memory["conv1"] == (conv1_weights + (32 * 32 * 3 + 32 * 32 * 8) * 4, conv1_weights)
    assert memory["output"][1] == model.count_params() * 4
    totals = [memory[n][0] for n in names]
    assert totals == sorted(totals)


@pytest.mark.parametrize("method", ["litert", "tf-function"])
def test_profile_measures_every_candidate(model, method):
    profile = profile_model(
        model, model_name="tiny", max_cut_points=4, method=method, repeats=3, show_progress=False
    )
    names = [c.name for c in profile.cut_points]
    assert len(names) == 5 and names[-1] == "output"
    latencies = [c.latency_ms for c in profile.cut_points]
    assert all(b >= a > 0 for a, b in zip(latencies, latencies[1:]))
    assert profile.total.latency_ms == pytest.approx(profile.extra["full_model_ms"], rel=1e-3)
    assert profile.at("pool1").boundary_shape == (16, 16, 8)
    assert profile.at("pool1").boundary_bytes == 16 * 16 * 8 * 4
    assert profile.total.boundary_bytes == 10 * 4


def test_profile_json_round_trip(model, tmp_path):
    profile = profile_model(model, model_name="tiny", max_cut_points=2, repeats=2,
                            method="tf-function", show_progress=False)
    path = profile.save(tmp_path / "profile.json")
    assert ModelProfile.load(path) == profile
    scaled = profile.scaled("rpi4", 9.0)
    assert scaled.total.latency_ms == pytest.approx(9.0 * profile.total.latency_ms)
    assert scaled.total.memory_bytes == profile.total.memory_bytes


def test_malformed_profile_is_rejected(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({"model": "m", "device": "d", "input_shape": [1]}))
    with pytest.raises(ProfileError, match="missing or bad field 'cut_points'"):
        ModelProfile.load(path)
    with pytest.raises(ProfileError, match="Unknown profiling method"):
        profile_model(None, model_name="x", method="stopwatch")


def test_profile_of_unknown_cut_point_lists_known(model):
    profile = profile_model(model, model_name="tiny", max_cut_points=2, repeats=1,
                            method="tf-function", show_progress=False)
    with pytest.raises(ProfileError, match="Cut point 'nope' is not in the profile; known: "):
        profile.at("nope")
    assert np.isfinite(profile.total.latency_ms)
