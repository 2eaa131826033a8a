"""``serve-views``: a SlimEdge deployment behind real loopback HTTP on a real local Ray instance."""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("keras")
pytest.importorskip("pymoo")
requests = pytest.importorskip("requests")
pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]

VIEWS, CLASSES, FEATURES = 2, 3, 8


@pytest.fixture(scope="module")
def ray_local():
    from edgelesspart.pipeline import raykit

    session = raykit.connect("local", num_cpus=2)  # private: own temp dir, loopback
    yield
    raykit.disconnect(session)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A tiny exported deployment: 2 views of the digits, untrained backbones (4-8 filters),
    ratios 0 and 0.5, synthetic curves; exported through the real path (LiteRT checked)."""
    import keras

    from edgelesspart.pruning import prune_model
    from edgelesspart.slimedge import deploy, optimize
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves
    from edgelesspart.slimedge.model import MultiViewModel, build_backbone, build_fusion
    from edgelesspart.slimedge.views import digits_views

    keras.utils.set_random_seed(0)
    data = digits_views(VIEWS, limit=60)
    backbones = [
        build_backbone(data.view_shape, widths=(4, 8), features=FEATURES, name=f"bb{v}")
        for v in range(VIEWS)
    ]
    fusion = build_fusion(VIEWS, data.num_classes, features=FEATURES)
    model = MultiViewModel(backbones, fusion)
    pruned = {(v, r): bb if r == 0 else prune_model(bb, r).model
              for v, bb in enumerate(backbones) for r in (0.0, 0.5)}  # fmt: skip
    curves = ViewCurves(
        ratios=(0.0, 0.5),
        accuracy=((0.9, 0.89), (0.9, 0.85)),
        latency_ms=(1.0, 0.4),
        params=(1e3, 3e2),
        memory_bytes=(1e5, 4e4),
        fusion_latency_ms=0.01,
        base_accuracy=0.9,
        importance=(0.02, 0.05),
        subsets={"11": 0.9, "10": 0.88, "01": 0.85},
    )
    build = deploy.MultiViewBuild(model, data, curves, pruned)
    slots = [optimize.DeviceSlot("rpi4", 4.0, 1e9), optimize.DeviceSlot("jetson-nano", 0.5, 1e9)]
    cm = CurveModel(curves)
    bound = optimize.Bound(accuracy_floor=0.88)
    chosen = optimize.nsga2_plan(cm, slots, bound)
    failures = optimize.failure_plans(cm, slots)
    out = tmp_path_factory.mktemp("serve-views") / "dep"
    deploy.export_deployment(out, build, slots, chosen, baselines={}, failures=failures,
                             max_accuracy_drop=0.02)  # fmt: skip
    return out, data


def test_serve_views_answers_and_replans_a_lost_device_over_http(ray_local, deployment):
    from edgelesspart.slimedge.app import create_app, load_deployment, service_from_deployment
    from service_http.wsgi import BackgroundServer

    path, data = deployment
    manifest = load_deployment(path)
    service = service_from_deployment(manifest, deadline_s=10.0, revive=False)
    sample = {"views": [data.test[v][0].tolist() for v in range(VIEWS)]}
    with BackgroundServer(create_app(service, manifest)) as server:
        url = server.url
        assert requests.get(url + "/healthz", timeout=10).json()["alive"] == [0, 1]
        # GIVEN a healthy deployment: one sample with all views is answered by both devices
        first = requests.post(url + "/v1/infer", json=sample, timeout=60)
        assert first.status_code == 200, first.text
        row = first.json()["answers"][0]  # the shared contract's answer row
        assert 0 <= row["label"] < data.num_classes and 0.0 < row["confidence"] <= 1.0
        assert row["node"]["views"] == [0, 1] and not row["degraded"]
        assert row["exit"] == "fusion" and row["stage"] == "aggregator"
        # bad inputs are JSON errors, not crashes
        short = requests.post(url + "/v1/infer", json={"views": sample["views"][:1]}, timeout=10)
        assert short.status_code == 422 and short.json()["error"]["code"]
        assert requests.post(url + "/v1/infer", data=b"x", timeout=10).status_code == 415
        # WHEN device 0 dies (its actor is killed) and requests keep coming
        service.kill(0)
        answers = [requests.post(url + "/v1/infer", json=sample, timeout=60) for _ in range(3)]
        # THEN every request is answered, from the survivor, and the loss was re-planned
        assert [a.status_code for a in answers] == [200, 200, 200]
        assert all(a.json()["answers"][0]["node"]["views"] == [1] for a in answers)
        assert answers[0].json()["answers"][0]["degraded"]  # fused without the lost view
        metrics = requests.get(url + "/v1/metrics", timeout=30).json()
        text = requests.get(url + "/metrics", timeout=30).text
        health = requests.get(url + "/healthz", timeout=10).json()
    service.close()
    assert metrics["answered"] == 4 and metrics["failures"] == 1 and metrics["lost_devices"] == [0]
    assert len(metrics["replans"]) == 1 and metrics["replans"][0]["alive"] == [1]
    dead, alive = metrics["devices"]
    assert not dead["alive"] and alive["alive"] and alive["device"] == "jetson-nano"
    # the survivor runs the precomputed single-failure plan's ratio
    planned = manifest["failure_plans"]["0"]["ratios"][1]
    assert alive["ratio"] == (0.5 if planned >= 0.5 else 0.0)
    assert "edgelesspart_slimedge_device_failures_total 1" in text
    assert "edgelesspart_slimedge_replans_total 1" in text
    assert 'edgelesspart_slimedge_device_alive{view="0",device="rpi4"} 0' in text
    assert health["alive"] == [1]


def test_serve_views_cli_flags_and_placement():
    from edgelesspart.cli import make_parser
    from edgelesspart.commands.serve_views import resources_for
    from edgelesspart.errors import ConfigError

    args = make_parser().parse_args(
        ["serve-views", "dep", "--ray-address", "auto", "--place", "view1=jetson-0"]
    )
    assert args.command == "serve-views" and args.ray_address == "auto"
    assert resources_for(args.place, 2) == [None, "jetson-0"]
    assert resources_for("0=rpi-0", 2) == ["rpi-0", None]
    with pytest.raises(ConfigError, match="Unknown stage"):
        resources_for("view7=x", 2)


def test_serve_views_refuses_a_directory_without_a_deployment(tmp_path):
    from edgelesspart.errors import BundleError
    from edgelesspart.slimedge.app import load_deployment

    with pytest.raises(BundleError, match="build --views"):
        load_deployment(tmp_path)
