"""A bundle with a learned bottleneck at the split: train/export round trip, then served end to end.

The tiny CNN's split tensor (16x16x16 float32, 16 KiB) is shrunk by a 2-channel stride-2
bottleneck to an 8x8x2 code, trained by distillation (backbone frozen) and exported inside the
edge segment (encoder) and the cloud segment (decoder). The TF-free runtime runs it as any
bundle: the manifest's boundary is just the code's shape. Tests:

* round trip: LiteRT edge + cloud segments == Keras head -> encoder -> decoder -> tail; edge
  exits are the unmodified model's (the encoder comes after them);
* served over real loopback HTTP (waitress): an edge service offloading int8 codes to the local
  cloud server, every row answered by the cloud's final classifier with the label the cloud part
  gives on the decoded code, and exactly the int8 code's bytes on the wire; with a low threshold
  the edge exits still answer.
"""

from __future__ import annotations

import numpy as np
import pytest
import requests

from edgelesspart.runtime.codecs import decode_tensor, encode_tensor

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

TIMEOUT = 15
TENSOR = {"Content-Type": "application/x-edgelesspart-tensor"}
NO_EXITS = 2.0
ROWS = 4
CHANNELS = 2
SENT = "edgelesspart_offload_bytes_sent_total"


@pytest.fixture(scope="module")
def bn_bundle(tmp_path_factory):
    from bundle_factory import build_tiny_bundle

    return build_tiny_bundle(
        tmp_path_factory.mktemp("bn") / "tiny-bn", epochs=4, bottleneck=CHANNELS
    )


@pytest.fixture(scope="module")
def digits(bn_bundle):
    """16 digits preprocessed as the bottleneck bundle says (no second bundle is built)."""
    from conftest import digit_pngs

    from edgelesspart.runtime.manifest import load_manifest
    from edgelesspart.runtime.preprocess import image_to_tensor

    spec = load_manifest(bn_bundle).input
    return np.concatenate([image_to_tensor(png, spec) for png in digit_pngs(16)])


def serve(app):
    from edge_runtime.wsgi import BackgroundServer

    return BackgroundServer(app, threads=4).start()


def metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


def test_the_manifest_says_the_boundary_is_the_code(bn_bundle):
    from bundle_factory import SPLIT_CUT

    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bn_bundle)
    edge_last = manifest.stage_segments("edge")[-1]
    cloud_first = manifest.stage_segments("cloud")[0]
    # THEN the edge hands on an 8x8x2 code, the cloud takes it, and the split is unchanged
    assert edge_last.end == SPLIT_CUT and edge_last.boundary.shape == (8, 8, CHANNELS)
    assert cloud_first.input.shape == (8, 8, CHANNELS)
    bn = manifest.codec["bottleneck"]
    assert bn["boundary_shape"] == [16, 16, 16] and bn["code_shape"] == [8, 8, CHANNELS]
    assert edge_last.boundary.nbytes * 32 == 16 * 16 * 16 * 4  # 32x fewer fp32 bytes


def test_litert_segments_match_keras_and_edge_exits_are_unchanged(bn_bundle, digits):
    from edgelesspart._lazy import keras
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bn_bundle)
    bundle = Bundle.load(bn_bundle, stages=["edge", "cloud"], pool_size=1)
    # WHEN the LiteRT segments run in sequence on the same inputs
    current, probs = digits[:8], {}
    for stage in ("edge", "cloud"):
        for seg in bundle.segments(stage):
            p, current = bundle.runner(seg.name)(current)
            if seg.exit is not None:
                probs[seg.exit] = p
    # THEN each equals its .keras segment (loaded with safe_mode) run in the same sequence
    x = digits[:8]
    for seg in manifest.segments:
        model = keras().models.load_model(bn_bundle / seg.files["keras"], safe_mode=True)
        out = model(x, training=False)
        if seg.exit is not None:
            np.testing.assert_allclose(probs[seg.exit], np.asarray(out["probs"]), atol=1e-4)
        if seg.boundary is not None:
            x = np.asarray(out["boundary"])
    # AND every exit answers with a probability distribution
    for name in ("exit_1", "exit_2", "exit_3", "final"):
        np.testing.assert_allclose(probs[name].sum(axis=1), 1.0, atol=1e-4)


def test_a_bottleneck_bundle_served_over_loopback_http(bn_bundle, digits):
    from cloud_functions.local_server import create_app as cloud_app
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.cloud import CloudPart
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import load_manifest

    bundle_id = load_manifest(bn_bundle).bundle_id
    edge_stage = ProgressiveExecutor(Bundle.load(bn_bundle, stages=["edge"], pool_size=1), "edge")
    code = edge_stage.run(digits[:ROWS], threshold=NO_EXITS).boundary
    meta = {"bundle_id": bundle_id, "rows": ROWS, "threshold": NO_EXITS}
    offload = encode_tensor(code, "int8", meta=meta)
    decoded, _ = decode_tensor(offload)
    expected = [a.label for a in CloudPart(bn_bundle).run(decoded, NO_EXITS)]
    with serve(cloud_app(bn_bundle)) as cloud:
        config = EdgeConfig(cloud=cloud.url, codec=None, threshold=NO_EXITS, pool_size=1,
                            offload_retries=0, offload_timeout_s=10.0)  # fmt: skip
        with serve(create_app(bn_bundle, config)) as edge:
            # GIVEN an edge service with the bundle's codec (int8, from the manifest)
            assert requests.get(f"{edge.url}/v1/bundle", timeout=TIMEOUT).json()["codec"] == "int8"
            # WHEN four rows are sent with early exits off
            body = encode_tensor(digits[:ROWS], "raw", meta={"bundle_id": bundle_id})
            response = requests.post(f"{edge.url}/v1/infer", data=body, headers=TENSOR,
                                     timeout=TIMEOUT)  # fmt: skip
            sent = metric(edge.url, SENT)
            # AND one row with every exit allowed to answer
            one = {"inputs": digits[:1].tolist()}
            early = requests.post(f"{edge.url}/v1/infer?threshold=0", json=one, timeout=TIMEOUT)
    # THEN the cloud's final classifier answered every row from the decoded code
    assert response.status_code == 200, response.text
    answers = response.json()["answers"]
    assert [(a["stage"], a["exit"], a["degraded"]) for a in answers] == [
        ("cloud", "final", False)
    ] * ROWS
    assert [a["label"] for a in answers] == expected
    # AND the wire carried the int8 code: 4 x 128 bytes plus one header, not 4 x 16 KiB
    assert sent == len(offload) < ROWS * 16 * 16 * 16
    # AND the edge exits keep working: the first edge exit answers at threshold 0
    assert early.status_code == 200, early.text
    first = early.json()["answers"][0]
    assert (first["stage"], first["exit"]) == ("edge", "exit_1")
