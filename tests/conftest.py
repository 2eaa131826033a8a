"""Shared test setup: quiet TensorFlow, fixed seeds, CPU only, and the ``tiny_bundle`` fixture."""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
