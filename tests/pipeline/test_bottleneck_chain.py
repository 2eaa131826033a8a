"""A chain whose link between two stages carries a learned bottleneck's code, on a real local Ray.

The chain planner picks the bottleneck on the slow link (``ChainCosts.crossings``), the chain is
exported with the encoder at the end of the sending stage and the decoder at the start of the
receiving one (``export_chain(bottlenecks=...)``), and real stage actors run it: the wire between
them carries the int8 code, and the answers are the Keras model's through the same bottleneck.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.errors import ConfigError
from edgelesspart.pipeline.stage import link_codec

pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]
ray = pytest.importorskip("ray")

CUTS = ("pool1", "block2_relu")
NECK_CUT = "block2_relu"  # 16x16x16 boundary; the 4-channel code is 16x16x4


def test_link_codec_names_the_runtime_codec_of_a_crossing():
    assert link_codec("bn4s1+int8") == "int8"
    assert link_codec("bn16s2+int8+zstd") == "int8+zstd"
    assert link_codec("int8+zstd") == "int8+zstd"  # a generic codec stays itself
    assert link_codec("zfp+lz4") == "zfp+lz4"
    assert link_codec("raw") == "raw"


@pytest.fixture(scope="module")
def ray_local():
    """A private local Ray (2 CPUs, no dashboard) for this module."""
    from edgelesspart.pipeline import raykit

    session = raykit.connect("local", num_cpus=2)  # private: own temp dir, loopback
    yield ray
    raykit.disconnect(session)


@pytest.fixture(scope="module")
def neck_model():
    """The tiny CNN (seeded, untrained) and a 4-channel bottleneck at block2_relu distilled
    from it for a few epochs on random images."""
    from bundle_factory import tiny_model

    from edgelesspart._lazy import keras
    from edgelesspart.model.bottleneck import BottleneckShape, train_bottleneck
    from edgelesspart.model.graph import split_model

    k = keras()
    k.utils.set_random_seed(0)
    model = tiny_model(k)
    x = np.random.default_rng(0).random((60, 32, 32, 3), dtype=np.float32)
    head, tail = split_model(model, NECK_CUT)
    neck = train_bottleneck(
        head, tail, NECK_CUT, BottleneckShape(4, 1), x[:36], x[36:48], epochs=3, seed=0
    )
    return model, neck, x[48:]


def _profile(boundaries: dict[str, tuple[int, ...]]):
    """A host profile of the tiny CNN's two cut points and output: 10 ms per stretch."""
    from edgelesspart.profiling.profile import CutPointProfile, ModelProfile

    cps = [
        CutPointProfile(name, i, 10.0 * (i + 1), 1000, 100, shape, 4 * int(np.prod(shape)), 0, {})
        for i, (name, shape) in enumerate(boundaries.items())
    ]
    cps.append(CutPointProfile("output", len(cps), 10.0 * (len(cps) + 1), 1000, 100, (10,), 40))
    return ModelProfile("tiny_cnn", "host", (32, 32, 3), tuple(cps))


def _crossing(model, neck, x):
    """The bottleneck measured as the planner prices it (int8 bytes of its code)."""
    from edgelesspart.model.graph import split_model
    from edgelesspart.planning.bottleneck import Crossing
    from edgelesspart.runtime.codecs import encode_tensor

    head, _ = split_model(model, NECK_CUT)
    code = np.asarray(neck.encoder(np.asarray(head(x)["boundary"]), training=False))
    sizes = [len(encode_tensor(row[None], "int8")) for row in code]
    name = f"{neck.shape.label}+int8"
    return Crossing(name, "int8", float(np.mean(sizes)), float(max(sizes)), 0.2, 0.2, 0.0)


def test_a_planned_bottleneck_link_runs_end_to_end_on_ray(ray_local, neck_model, tmp_path):
    from bundle_factory import export_tiny_chain

    from edgelesspart.model.graph import split_model
    from edgelesspart.pipeline.dispatcher import Pipeline, default_stages
    from edgelesspart.planning.chain import ChainCosts, plan_chain
    from edgelesspart.profiling.links import Link
    from edgelesspart.runtime.codecs import decode_tensor, encode_tensor
    from edgelesspart.runtime.manifest import load_manifest

    model, neck, x = neck_model
    profile = _profile({"pool1": (16, 16, 8), NECK_CUT: (16, 16, 16)})
    crossing = _crossing(model, neck, x)
    # GIVEN three nodes over a 2 Mbit/s link (a raw 16x16x16 boundary takes ~65 ms on it)
    slow = Link("slow", 2.0, 2.0, 1.0)
    costs = ChainCosts((profile,) * 3, link=slow, codecs=("raw",), crossings={NECK_CUT: crossing})
    plan = plan_chain(costs)
    # THEN the planner sends the bottleneck's code on the link that leaves block2_relu
    assert [s.end for s in plan.stages[:-1]] == list(CUTS)
    assert plan.parameters["link_codecs"] == ["raw", "bn4s1+int8"]
    # WHEN the plan is exported with the bottleneck and its stages run on Ray actors
    out = tmp_path / "neck-chain"
    export_tiny_chain(model, plan, out, x[:2], bottlenecks={NECK_CUT: neck})
    manifest = load_manifest(out)
    stages = default_stages(manifest)
    assert [s.codec_out for s in stages] == ["raw", "int8", None]
    by_stage = {s.name: manifest.stage_segments(s.name) for s in stages}
    assert by_stage["stage1"][-1].boundary.shape == (16, 16, 4)  # the sender's output: the code
    assert by_stage["stage2"][0].input.shape == (16, 16, 4)  # the receiver's input: the code
    assert manifest.codec["link_bottlenecks"][NECK_CUT]["label"] == "bn4s1"
    with Pipeline(out, stages, window=4) as pipe:
        results = pipe.run_many(x)
        metrics = pipe.metrics()
    # THEN every answer is the Keras model's through the same encoder, int8 code and decoder
    head, tail = split_model(model, NECK_CUT)
    code = np.asarray(neck.encoder(np.asarray(head(x)["boundary"]), training=False))
    decoded = np.concatenate([decode_tensor(encode_tensor(row[None], "int8"))[0] for row in code])
    expected = np.asarray(tail(neck.decoder(decoded, training=False))["probs"])
    probs = np.concatenate([r.probs for r in results])
    assert [r.seq for r in results] == list(range(len(x)))
    np.testing.assert_allclose(probs, expected, atol=2e-3)
    # AND the bottleneck link carried the int8 code (1,024 values + header), the raw link the
    # 16x16x8 boundary: the code is ~8x smaller than the boundary it replaces
    s0, s1 = metrics["stages"]["stage0"], metrics["stages"]["stage1"]
    per_item = s1["bytes_out"] / len(x)
    assert 1024 < per_item < 1024 + 600
    assert per_item * 8 < 4 * 16 * 16 * 16
    assert s0["bytes_out"] / len(x) > 4 * 16 * 16 * 8
    assert s1["bytes_out"] == metrics["stages"]["stage2"]["bytes_in"]


def test_export_refuses_a_bottleneck_the_plan_does_not_send(neck_model, tmp_path):
    from edgelesspart.pipeline.export import export_chain
    from edgelesspart.runtime.plan import Plan, Stage

    model, neck, x = neck_model
    bounds = ("input", *CUTS, "output")

    def plan(codecs):
        stages = tuple(
            Stage(f"stage{i}", "host", bounds[i], bounds[i + 1], options={"codec_out": c})
            for i, c in enumerate(codecs)
        )
        return Plan("pipeline", "none", stages, cut_points=CUTS, rationale="test")

    kwargs = dict(
        probe=x[:2],
        classes=tuple(str(i) for i in range(10)),
        preprocessing={"height": 32, "width": 32, "channels": 3},
        model_info={"name": "tiny_cnn"},
        bottlenecks={NECK_CUT: neck},
    )
    # the link leaving block2_relu sends int8+zstd, not the bottleneck's code
    with pytest.raises(ConfigError, match="bn4s1"):
        export_chain(model, plan(("raw", "int8+zstd", None)), tmp_path / "a", **kwargs)
    # no link leaves block2_relu in a 2-stage chain cut at pool1
    two = Plan(
        "pipeline",
        "none",
        (
            Stage("stage0", "host", "input", "pool1", options={"codec_out": "raw"}),
            Stage("stage1", "host", "pool1", "output"),
        ),
        cut_points=CUTS,
        rationale="test",
    )
    with pytest.raises(ConfigError, match="sits on no link"):
        export_chain(model, two, tmp_path / "b", **kwargs)
