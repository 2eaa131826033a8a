"""Shared test setup: quiet TensorFlow, fixed seeds, CPU only, the ``tiny_bundle`` fixture and
the digit inputs the service tests send to it."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "2")

# After the repository root (pytest `pythonpath`), so tests/edge_runtime never shadows the
# real edge_runtime package; this only makes tests/bundle_factory.py importable.
sys.path.append(str(Path(__file__).parent))


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real bundle (tiny CNN trained on digits): edge exits exit_1, exit_2 (at the split),
    cloud exit exit_3, then final. Built once per test session (~20 s)."""
    from bundle_factory import build_tiny_bundle

    cache = os.environ.get("EDGELESSPART_TEST_BUNDLE")
    if cache and (Path(cache) / "manifest.json").is_file():
        return Path(cache)
    return build_tiny_bundle(tmp_path_factory.mktemp("bundles") / "tiny")


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
