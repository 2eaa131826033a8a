"""Fixtures for the integration tests: digit images, full-model labels, servers on loopback."""

from __future__ import annotations

import io

import numpy as np
import pytest


def digit_pngs(count: int, start: int = 0) -> list[bytes]:
    """``count`` scikit-learn digits as 8-bit PNG files (what a camera client would send)."""
    from PIL import Image
    from sklearn.datasets import load_digits

    images = load_digits().images[start : start + count]
    out = []
    for image in images:
        pixels = np.round(image * (255.0 / 16.0)).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "L").resize((32, 32)).convert("RGB").save(buffer, "PNG")
        out.append(buffer.getvalue())
    return out


@pytest.fixture(scope="session")
def digits(tiny_bundle) -> np.ndarray:
    """A (16, 32, 32, 3) float32 batch, preprocessed exactly as the bundle says."""
    from edgelesspart.runtime.manifest import load_manifest
    from edgelesspart.runtime.preprocess import image_to_tensor

    spec = load_manifest(tiny_bundle).input
    return np.concatenate([image_to_tensor(png, spec) for png in digit_pngs(16)])


@pytest.fixture(scope="session")
def digit_png() -> bytes:
    """The first digit as a PNG file."""
    return digit_pngs(1)[0]


@pytest.fixture(scope="session")
def cloud_part(tiny_bundle):
    """The bundle's cloud stages, in this process."""
    from edgelesspart.runtime.cloud import CloudPart

    return CloudPart(tiny_bundle)


@pytest.fixture(scope="session")
def full_model_labels(tiny_bundle, digits) -> np.ndarray:
    """Labels of the whole model (LiteRT segments in order, no early exit)."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle, pool_size=1)
    trace = ProgressiveExecutor(bundle, bundle.manifest.stage_names[0]).trace(digits)
    return np.argmax(trace.probs["final"], axis=1)


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
