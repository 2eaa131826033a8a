"""Fixtures for the cloud-function tests: a Lambda context, boundary tensors, a fresh container."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

EVENTS = Path(__file__).resolve().parents[1] / "events"


@pytest.fixture()
def lambda_context():
    """A Lambda-like context object with a fresh request id."""
    from cloud_functions.local_server import LocalContext

    return LocalContext("edgelesspart-cloud")


@pytest.fixture(scope="session")
def bundle_id(tiny_bundle) -> str:
    from edgelesspart.runtime.manifest import load_manifest

    return load_manifest(tiny_bundle).bundle_id


@pytest.fixture(scope="session")
def boundary(tiny_bundle) -> np.ndarray:
    """Real boundary rows: three digits-like inputs run through the edge stage, no early exit."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    bundle = Bundle.load(tiny_bundle, stages=["edge"], pool_size=1)
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    return ProgressiveExecutor(bundle, "edge").run(x, threshold=2.0).boundary


@pytest.fixture(scope="session")
def encoded(boundary, bundle_id) -> bytes:
    """The boundary in the wire format, for this bundle."""
    from edgelesspart.runtime.codecs import encode_tensor

    return encode_tensor(boundary, "raw", meta={"bundle_id": bundle_id})


@pytest.fixture()
def event(encoded) -> dict:
    """tests/events/lambda_continue.json with a real tensor filled in."""
    import json

    from edgelesspart.runtime.codecs import to_base64

    data = json.loads((EVENTS / "lambda_continue.json").read_text())
    data["tensor_b64"] = to_base64(encoded)
    return data


@pytest.fixture()
def container(monkeypatch, tiny_bundle):
    """A fresh execution environment for ``cloud_functions.handler`` (next call is cold)."""
    from cloud_functions import handler

    fresh = handler.Container(tiny_bundle)
    monkeypatch.setattr(handler, "_CONTAINER", fresh)
    return fresh
