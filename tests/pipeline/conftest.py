"""Pipeline test setup: a real 3-stage bundle of the tiny CNN (no exits), built once per session,
with reference outputs of the full Keras model for the same inputs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

CUTS = ("pool1", "block2_relu")


@dataclass(frozen=True)
class ChainBundle:
    """The bundle directory, a few inputs and the full model's outputs for them."""

    path: Path
    x: np.ndarray
    expected: np.ndarray


@pytest.fixture(scope="session")
def chain_bundle(tmp_path_factory: pytest.TempPathFactory) -> ChainBundle:
    """The tiny CNN (untrained weights, seeded) exported as stage0 | stage1 | stage2 (~10 s)."""
    from bundle_factory import export_tiny_chain, tiny_model

    from edgelesspart._lazy import keras
    from edgelesspart.runtime.plan import Plan, Stage

    k = keras()
    k.utils.set_random_seed(0)
    model = tiny_model(k)
    bounds = ("input", *CUTS, "output")
    plan = Plan(
        constraint="pipeline",
        placement="none",
        stages=tuple(
            Stage(f"stage{i}", "host", bounds[i], bounds[i + 1], options={"codec_out": codec})
            for i, codec in enumerate(("raw", "zfp+lz4", None))
        ),
        cut_points=CUTS,
        rationale="hand-written 3-stage plan for tests",
    )
    rng = np.random.default_rng(0)
    x = rng.random((12, 32, 32, 3), dtype=np.float32)
    out = tmp_path_factory.mktemp("chain") / "tiny-chain"
    export_tiny_chain(model, plan, out, x[:2])
    expected = np.asarray(model(x, training=False))
    return ChainBundle(out, x, expected)
