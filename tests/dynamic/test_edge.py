"""The single-node edge with an SLO, over real loopback HTTP: narrow before refusing.

The width bundle's latency curve is replaced by a known one in a copy (1 ms at full width,
0.4 ms at half) so the emulated device (x30: 30 ms vs 12 ms per request) is deterministic on a
busy host; the segments, their answers and the accuracy figures are the real ones.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from edgelesspart.runtime.codecs import encode_tensor

pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]
TENSOR = "application/x-edgelesspart-tensor"
CURVE_MS = {1.0: 0.5, 0.5: 0.2}  # per stage; two stages -> 1 ms and 0.4 ms


@pytest.fixture()
def known_curve_bundle(width_bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(width_bundle.path, copy)
    data = json.loads((copy / "dynamic.json").read_text())
    for stage in data["stages"]:
        for seg in stage["segments"]:
            seg["latency_ms"] = CURVE_MS[seg["width"]]
    (copy / "dynamic.json").write_text(json.dumps(data))
    return copy


def offer_load(url: str, x: np.ndarray, rate: float, seconds: float) -> list[int]:
    """Open-loop POSTs at ``rate``/s for ``seconds``; the status codes."""
    body = encode_tensor(x[:1], "raw")
    codes: list[int] = []
    lock = threading.Lock()

    def one() -> None:
        r = requests.post(
            f"{url}/v1/infer", data=body, headers={"Content-Type": TENSOR}, timeout=30
        )
        with lock:
            codes.append(r.status_code)

    with ThreadPoolExecutor(max_workers=32) as pool:
        start = time.perf_counter()
        for i in range(int(rate * seconds)):
            time.sleep(max(0.0, start + i / rate - time.perf_counter()))
            pool.submit(one)
    return codes


def serve(bundle, slo_ms):
    from edgelesspart.dynamic.app import create_app
    from edgelesspart.dynamic.controller import ControllerConfig
    from edgelesspart.dynamic.edge import WidthEdge
    from service_http.wsgi import BackgroundServer

    config = None if slo_ms is None else ControllerConfig(slo_ms, patience_up=1, min_dwell_s=0.5)
    edge = WidthEdge(bundle, slo_ms=slo_ms, scale=30.0, max_queue=16, tick_s=0.2, config=config)
    return edge, BackgroundServer(create_app(edge.start()), threads=40)


def test_edge_narrows_before_refusing(known_curve_bundle, width_bundle) -> None:
    # GIVEN 50 req/s against an edge that serves 33/s at full width and 83/s at half width
    results = {}
    for name, slo in (("static", None), ("adaptive", 300.0)):
        edge, server = serve(known_curve_bundle, slo)
        with server:
            codes = offer_load(server.url, width_bundle.x, rate=50.0, seconds=4.0)
            metrics = requests.get(f"{server.url}/v1/metrics", timeout=10).json()
            text = requests.get(f"{server.url}/metrics", timeout=10).text
        edge.close()
        results[name] = (codes, metrics, text)
    static_codes, _, _ = results["static"]
    codes, metrics, text = results["adaptive"]
    # THEN the static edge had to refuse, the adaptive one narrowed and refused (far) less
    assert static_codes.count(429) > 0
    assert codes.count(429) < static_codes.count(429) / 2
    assert set(codes) <= {200, 429}
    assert metrics["decisions"] and metrics["decisions"][0]["widths"] == [0.5]
    assert (
        "edge is the bottleneck" in metrics["decisions"][0]["reason"]
        or "stage 0" in (metrics["decisions"][0]["reason"])
    )
    assert metrics["stages"][0]["rows_by_width"]["0.5"] > 0
    # and /metrics shows the width, the switches and the SLO attainment
    assert 'edgelesspart_dynamic_width{stage="edge"}' in text
    assert 'edgelesspart_dynamic_slo_attainment{slo_ms="300"}' in text
    assert metrics["slo_attainment"] is not None


def test_edge_answers_match_the_bundle(width_bundle) -> None:
    from edgelesspart.dynamic.edge import WidthEdge
    from edgelesspart.dynamic.stage import WidthStage

    edge = WidthEdge(width_bundle.path)
    reference = WidthStage(width_bundle.path, [0, 1])
    for w in (1.0, 0.5):
        edge.stage.set_width(w)
        answer = edge.infer(width_bundle.x)
        assert answer.widths == (w,)
        np.testing.assert_array_equal(answer.probs, reference(width_bundle.x, width=w))


def test_edge_app_needs_the_token_refuses_bad_input_and_answers(width_bundle) -> None:
    from edgelesspart.dynamic.app import create_app
    from edgelesspart.dynamic.edge import WidthEdge
    from service_http.wsgi import BackgroundServer

    # GIVEN the width edge behind its HTTP app with a token, on loopback
    edge = WidthEdge(width_bundle.path)
    auth = {"Authorization": "Bearer s3cret"}
    body = {"inputs": width_bundle.x[:1].tolist()}
    with BackgroundServer(create_app(edge, token="s3cret")) as server:
        infer = f"{server.url}/v1/infer"
        # WHEN a request comes without the token, with a wrong shape, and well-formed
        no_token = requests.post(infer, json=body, timeout=30)
        wrong = requests.post(infer, json={"inputs": [[1.0, 2.0]]}, headers=auth, timeout=30)
        good = requests.post(infer, json=body, headers=auth, timeout=30)
        health = requests.get(f"{server.url}/healthz", timeout=30)
    # THEN 401, 422, and an answer equal to the in-process one; /healthz stays public
    assert no_token.status_code == 401 and wrong.status_code == 422, wrong.text
    row = good.json()["answers"][0]  # the shared contract's answer row, with the widths
    assert good.status_code == 200 and row["widths"] == {"stage0": 1.0, "stage1": 1.0}
    probs = np.asarray(edge.infer(width_bundle.x[:1]).probs)[0]
    assert row["label"] == int(probs.argmax())
    assert abs(row["confidence"] - float(probs.max())) < 1e-6
    assert health.status_code == 200


def test_a_refused_input_counts_no_rows(width_bundle) -> None:
    from edgelesspart.dynamic.stage import WidthStage
    from edgelesspart.errors import InputError

    stage = WidthStage(width_bundle.path, [0, 1])
    with pytest.raises(InputError):
        stage(np.zeros((5, 3, 3, 1), np.float32))
    stage(width_bundle.x[:2])
    assert stage.rows_by_width == {"1": 2, "0.5": 0}
