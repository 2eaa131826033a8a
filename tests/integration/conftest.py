"""Fixtures for the integration tests: digit images, full-model labels, servers on loopback."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session")
def bundle_id(tiny_bundle) -> str:
    from edgelesspart.runtime.manifest import load_manifest

    return load_manifest(tiny_bundle).bundle_id


@pytest.fixture(scope="session")
def edge_confidence(tiny_bundle, digits) -> np.ndarray:
    """Per row, the best top-1 confidence over the edge exits (what decides an early exit)."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle, pool_size=1)
    trace = ProgressiveExecutor(bundle, "edge").trace(digits)
    edge_exits = [e for e in trace.exits if trace.exit_stage[e] == "edge"]
    return np.max([trace.probs[e].max(axis=1) for e in edge_exits], axis=0)
