"""One serving contract, checked against every server over real loopback HTTP.

``serve-edge`` (the tiny exit bundle, cloud part in process), ``serve-pipeline`` (the same bundle
as a 2-stage chain of Ray actors), ``serve-widths`` (a width chain on Ray, and ``serve-edge`` on
the width bundle) and ``serve-views`` (a SlimEdge deployment on Ray) take the same request
formats, give the same per-row answers, the same errors and the same routes; ``replay`` reports
accuracy through each. One local Ray for the module.
"""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

ray = pytest.importorskip("ray")
requests = pytest.importorskip("requests")
pytest.importorskip("keras")
pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]

SERVERS = ("edge", "widths-edge", "pipeline", "widths", "views")
ON_RAY = ("pipeline", "widths", "views")
TENSOR = "application/x-edgelesspart-tensor"


@pytest.fixture(scope="module")
def ray_local():
    from bundle_factory import start_local_ray

    start_local_ray()  # private (address="local"), one per module
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def width_bundle_dir(tmp_path_factory):
    from bundle_factory import build_tiny_width_bundle

    return build_tiny_width_bundle(tmp_path_factory.mktemp("contract") / "widths")


@pytest.fixture(scope="module")
def views_dir(tmp_path_factory):
    from bundle_factory import build_tiny_views

    return build_tiny_views(tmp_path_factory.mktemp("contract") / "views")


def _start(kind, tiny_bundle, cloud_part, width_bundle_dir, views_dir):
    """(app, closer) of one server kind."""
    if kind == "edge":
        from edge_runtime.app import create_app
        from edge_runtime.config import EdgeConfig
        from edgelesspart.runtime.offload import InProcessOffloader

        app = create_app(tiny_bundle, EdgeConfig(max_batch=16), offloader=InProcessOffloader(
            cloud_part))  # fmt: skip
        return app, lambda: app.extensions["edgelesspart"].close()
    if kind == "pipeline":
        from edgelesspart.pipeline.app import create_app
        from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
        from edgelesspart.runtime.manifest import load_manifest

        stages = stages_with(default_stages(load_manifest(tiny_bundle)), threshold=0.8)
        pipe = Pipeline(tiny_bundle, stages, window=4).start()
        return create_app(pipe), pipe.close
    if kind == "widths":
        from edgelesspart.dynamic.app import create_app
        from edgelesspart.dynamic.pipeline import DynamicPipeline

        pipe = DynamicPipeline(width_bundle_dir, window=4).start()
        return create_app(pipe), pipe.close
    if kind == "widths-edge":
        from edgelesspart.dynamic.app import create_app
        from edgelesspart.dynamic.edge import WidthEdge

        edge = WidthEdge(width_bundle_dir).start()
        return create_app(edge), edge.close
    from edgelesspart.slimedge.app import create_app, load_deployment, service_from_deployment

    manifest = load_deployment(views_dir)
    service = service_from_deployment(manifest, deadline_s=10.0)
    return create_app(service, manifest), lambda: None


@pytest.fixture(scope="module", params=SERVERS)
def server(request, tiny_bundle, cloud_part, width_bundle_dir, views_dir):
    """(kind, base URL, GET /v1/bundle) of one running server."""
    from service_http.wsgi import BackgroundServer

    kind = request.param
    if kind in ON_RAY:  # the module's one local Ray, started for the first server that needs it
        request.getfixturevalue("ray_local")
    app, close = _start(kind, tiny_bundle, cloud_part, width_bundle_dir, views_dir)
    try:
        with BackgroundServer(app, threads=8) as running:
            info = requests.get(running.url + "/v1/bundle", timeout=30).json()
            yield kind, running.url, info
    finally:
        close()


def _rows(info, n, seed=0):
    shape = info["input"]["shape"]
    return np.random.default_rng(seed).random((n, *shape), dtype=np.float32)


def _post(url, **kwargs):
    return requests.post(url + "/v1/infer", timeout=60, **kwargs)


def _check_answer(kind, info, row):
    from service_http.contract import ANSWER_KEYS

    assert set(ANSWER_KEYS) <= set(row), row
    assert isinstance(row["label"], int) and row["class_name"] == info["classes"][row["label"]]
    assert 0.0 <= row["confidence"] <= 1.0 + 1e-6
    assert isinstance(row["stage"], str) and row["stage"]
    assert isinstance(row["timings"], dict) and isinstance(row["degraded"], bool)
    if row["degraded"]:
        assert row["reason"]
    if kind.startswith("widths"):  # the width of every stage
        assert set(row["widths"]) == set(info["stages"]) and all(
            0 < w <= 1 for w in row["widths"].values()
        )
    if kind in ("pipeline", "views"):
        assert row.get("node") is not None


def test_bundle_names_what_is_served(server):
    kind, _, info = server
    for key in ("bundle_id", "classes", "input", "stages", "edge_stage", "max_batch", "kind"):
        assert key in info, (kind, key)
    assert len(info["input"]["shape"]) == 3 and info["classes"]


def test_every_request_format_gets_one_answer_per_row(server, digit_png):
    from edgelesspart.runtime.codecs import encode_tensor
    from service_http.contract import ENVELOPE_KEYS

    kind, url, info = server
    x = _rows(info, 2)
    tensor = encode_tensor(x, "raw")
    bodies = {
        "image": _post(url, data=digit_png, headers={"Content-Type": "image/png"}),
        "json": _post(url, json={"inputs": x.tolist()}),
        "base64": _post(url, json={"tensor_b64": base64.b64encode(tensor).decode()}),
        "tensor": _post(url, data=tensor, headers={"Content-Type": TENSOR}),
        "octet": _post(url, data=tensor, headers={"Content-Type": "application/octet-stream"}),
    }
    for fmt, response in bodies.items():
        assert response.status_code == 200, (kind, fmt, response.text)
        body = response.json()
        assert set(ENVELOPE_KEYS) <= set(body), (kind, fmt, body)
        assert body["bundle_id"] == info["bundle_id"]
        assert body["rows"] == len(body["answers"]) == (1 if fmt == "image" else 2), (kind, fmt)
        for row in body["answers"]:
            _check_answer(kind, info, row)
    # the same row answers the same whichever way it was sent
    labels = {f: [a["label"] for a in bodies[f].json()["answers"]] for f in bodies if f != "image"}
    assert len({tuple(v) for v in labels.values()}) == 1, (kind, labels)


@pytest.mark.parametrize(
    "case",
    ["empty", "media", "json", "json_kind", "mismatch", "nan", "too_many", "bad_tensor",
     "threshold", "unknown_route"],
)  # fmt: skip
def test_the_same_errors(server, case):
    kind, url, info = server
    x = _rows(info, 1)
    exits = info.get("threshold") is not None
    nan = x.copy()
    nan[0, 0, 0, 0] = np.nan
    many = _rows(info, info["max_batch"] + 1).tolist()
    expected = {
        "empty": (400, "bad_request",
                  lambda: _post(url, data=b"", headers={"Content-Type": TENSOR})),
        "media": (415, "unsupported_media_type",
                  lambda: _post(url, data=b"x", headers={"Content-Type": "text/plain"})),
        "json": (400, "bad_json",
                 lambda: _post(url, data=b"{nope", headers={"Content-Type": "application/json"})),
        "json_kind": (400, "bad_json", lambda: _post(url, json=[1, 2])),
        "mismatch": (409, "bundle_mismatch",
                     lambda: _post(url, json={"inputs": x.tolist(), "bundle_id": "other"})),
        "nan": (422, "invalid_input",
                lambda: _post(url, data=json.dumps({"inputs": nan.tolist()}),
                              headers={"Content-Type": "application/json"})),
        "too_many": (413, "payload_too_large",
                     lambda: _post(url, json={"inputs": many})),
        "bad_tensor": (400, "bad_tensor",
                       lambda: _post(url, data=b"not a tensor", headers={"Content-Type": TENSOR})),
        "threshold": ((400, "bad_threshold") if exits else (400, "threshold_not_applicable"))
        + (lambda: _post(url, json={"inputs": x.tolist(), "threshold": 7 if exits else 0.5}),),
        "unknown_route": (404, None, lambda: requests.get(url + "/v1/nothing", timeout=10)),
    }  # fmt: skip
    status, code, call = expected[case]
    response = call()
    assert response.status_code == status, (kind, case, response.text)
    error = response.json()["error"]
    assert error["status"] == status and error["message"]
    if code is not None:
        assert error["code"] == code, (kind, case, error)


def test_the_same_health_metrics_and_openapi(server):
    from service_http.contract import CONTRACT_ROUTES

    kind, url, info = server
    for route in ("/healthz", "/readyz"):
        response = requests.get(url + route, timeout=30)
        assert response.status_code == 200, (kind, route, response.text)
        body = response.json()
        assert body["ready"] is True and body["live"] is True
        assert body["bundle_id"] == info["bundle_id"]
    _post(url, json={"inputs": _rows(info, 1).tolist()})
    text = requests.get(url + "/metrics", timeout=30).text
    assert 'edgelesspart_requests_total{route="/v1/infer",status="200"}' in text, kind
    assert "edgelesspart_answers_total{" in text, kind
    doc = requests.get(url + "/openapi.json", timeout=30).json()
    assert doc["openapi"].startswith("3.") and set(CONTRACT_ROUTES) <= set(doc["paths"]), kind
    assert {"Answer", "InferResponse", "Error"} <= set(doc["components"]["schemas"])


def test_replay_reports_accuracy_through_each(server):
    from conftest import digit_pngs
    from sklearn.datasets import load_digits

    from edgelesspart.replay.client import replay
    from edgelesspart.replay.data import ReplayData

    kind, url, info = server
    n = 12
    images = tuple(digit_pngs(n, start=100))
    labels = tuple(int(v) for v in load_digits().target[100 : 100 + n])
    data = ReplayData(images, ("image/png",) * n, labels, tuple(map(str, range(n))), "digits")
    report = replay(url, data, concurrency=2, show_progress=False)
    print(f"replay through {kind}: accuracy {report.accuracy:.3f} on {n} digits, exit mix "
          f"{report.exit_mix}, edge share {report.edge_share:.2f}")  # fmt: skip
    assert report.answered == n and report.errors == 0, (kind, report.error_examples)
    assert report.accuracy is not None and 0.0 <= report.accuracy <= 1.0
    assert sum(report.exit_mix.values()) == n
    if kind in ("edge", "pipeline"):  # the trained tiny bundle: far better than chance
        assert report.accuracy >= 0.5, (kind, report.accuracy)
