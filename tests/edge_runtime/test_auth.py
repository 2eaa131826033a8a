"""Auth and exposure of the edge service: loopback by default, no public bind without a token,
bearer token checked in constant time, and offloads signed with the shared cloud secret.

The services run under waitress on loopback ports and are called with ``requests``.
"""

from __future__ import annotations

import hmac

import pytest
import requests

from edgelesspart.cli import main
from edgelesspart.errors import ConfigError

pytestmark = pytest.mark.timeout(120)

TIMEOUT = 15
SECRET = "edge-to-cloud shared secret"
CLOUD_BEARER = {"Authorization": f"Bearer {SECRET}"}


@pytest.fixture()
def captured_serve(monkeypatch):
    """Replace waitress' blocking serve with a recorder of where it would have listened."""
    import edge_runtime.wsgi

    calls: list[dict] = []
    monkeypatch.setattr(edge_runtime.wsgi, "serve_edge", lambda app, **kw: calls.append(kw))
    for name in ("EDGELESSPART_TOKEN", "EDGELESSPART_CLOUD_TOKEN", "EDGELESSPART_CLOUD"):
        monkeypatch.delenv(name, raising=False)
    return calls


# --- exposure --------------------------------------------------------------------------------


def test_serve_edge_binds_to_loopback_by_default(tiny_bundle, captured_serve):
    assert main(["serve-edge", str(tiny_bundle), "--port", "8181"]) == 0
    announce = captured_serve[0].pop("announce")  # printed once the port is bound
    assert "on http://127.0.0.1:8181 (edge only: no cloud part; async server" in announce
    assert captured_serve == [
        {"host": "127.0.0.1", "port": 8181, "threads": captured_serve[0]["threads"]}
    ]


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "edge.example.org"])
def test_serve_edge_refuses_a_public_bind_without_a_token(tiny_bundle, captured_serve, capsys,
                                                         host):
    # WHEN serve-edge is asked to listen beyond loopback without a token
    code = main(["serve-edge", str(tiny_bundle), "--host", host])
    # THEN it refuses with a one-line ConfigError message and never starts serving
    err = capsys.readouterr().err
    assert code == 2 and captured_serve == []
    assert f"serve-edge refuses to listen on {host!r} without a token" in err
    assert "--token" in err and "Traceback" not in err


def test_serve_edge_binds_publicly_with_a_token(tiny_bundle, captured_serve, monkeypatch):
    assert main(["serve-edge", str(tiny_bundle), "--host", "0.0.0.0", "--token", "t"]) == 0
    monkeypatch.setenv("EDGELESSPART_TOKEN", "from-env")
    assert main(["serve-edge", str(tiny_bundle), "--host", "0.0.0.0"]) == 0
    assert [c["host"] for c in captured_serve] == ["0.0.0.0", "0.0.0.0"]


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.53", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_token(host):
    from edge_runtime.wsgi import is_loopback, require_token_off_loopback

    assert is_loopback(host)
    require_token_off_loopback(host, None, "serve-edge")  # does not raise


def test_require_token_off_loopback_raises_config_error():
    from edge_runtime.wsgi import require_token_off_loopback

    with pytest.raises(ConfigError, match="refuses to listen on '10.0.0.1' without a token"):
        require_token_off_loopback("10.0.0.1", "", "serve-edge")


# --- bearer token ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def guarded(tiny_bundle):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edge_runtime.wsgi import BackgroundServer

    server = BackgroundServer(create_app(tiny_bundle, EdgeConfig(token="s3cret", threshold=0.0)))
    yield server.start()
    server.stop()


@pytest.mark.parametrize(
    "header",
    [None, "Bearer wrong", "Bearer s3cret2", "bearer s3cret", "s3cret", "Bearer s3cre", "Basic x"],
)
def test_infer_without_the_right_bearer_token_is_401_json(guarded, digits, header):
    headers = {} if header is None else {"Authorization": header}
    response = requests.post(f"{guarded.url}/v1/infer", json={"inputs": digits[:1].tolist()},
                             headers=headers, timeout=TIMEOUT)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["code"] == "unauthorized" and "Authorization: Bearer" in error["message"]


def test_the_right_token_is_served_and_only_health_is_open_by_default(guarded, digits):
    bearer = {"Authorization": "Bearer s3cret"}
    ok = requests.post(f"{guarded.url}/v1/infer", json={"inputs": digits[:1].tolist()},
                       headers=bearer, timeout=TIMEOUT)
    assert ok.status_code == 200 and ok.json()["answers"][0]["exit"] == "exit_1"
    assert requests.get(f"{guarded.url}/v1/bundle", timeout=TIMEOUT).status_code == 401
    assert requests.get(f"{guarded.url}/healthz", timeout=TIMEOUT).status_code == 200
    for route in ("/metrics", "/openapi.json"):  # counts and the API: behind the token
        assert requests.get(guarded.url + route, timeout=TIMEOUT).status_code == 401, route
        assert requests.get(guarded.url + route, headers=bearer, timeout=TIMEOUT).ok, route


def test_public_routes_are_a_setting(tiny_bundle, monkeypatch):
    # GIVEN an operator whose scraper cannot send a token
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    monkeypatch.setenv("EDGELESSPART_PUBLIC_ROUTES", "/healthz, /metrics")
    config = EdgeConfig.from_env(token="s3cret")
    assert config.public_routes == ("/healthz", "/metrics")
    client = create_app(tiny_bundle, config).test_client()
    # THEN /metrics is open, the rest still needs the token
    assert client.get("/metrics").status_code == 200
    assert client.get("/openapi.json").status_code == 401
    with pytest.raises(ConfigError, match="must be paths starting with '/'"):
        EdgeConfig(public_routes=("metrics",))


def test_the_token_is_compared_in_constant_time(tiny_bundle, digits, monkeypatch):
    import service_http.auth
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service_http.auth.hmac, "compare_digest", spy)
    client = create_app(tiny_bundle, EdgeConfig(token="s3cret")).test_client()
    client.post("/v1/infer", json={"inputs": digits[:1].tolist()},
                headers={"Authorization": "Bearer nope"})
    assert calls == [(b"Bearer nope", b"Bearer s3cret")]


# --- signed offloads -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def signed_cloud(tiny_bundle):
    """``serve-cloud`` started with a token: both ways in need a signature."""
    from cloud_functions.local_server import create_app
    from edge_runtime.wsgi import BackgroundServer

    server = BackgroundServer(create_app(tiny_bundle, token=SECRET))
    yield server.start()
    server.stop()


def _edge(bundle, **config):
    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig

    return create_app(bundle, EdgeConfig(threshold=2.0, offload_retries=0, **config)).test_client()


@pytest.mark.parametrize("transport", ["http", "lambda"])
def test_edge_signs_its_offloads_with_the_cloud_token(tiny_bundle, digits, signed_cloud,
                                                      transport):
    # GIVEN an edge that knows the cloud's secret
    cloud = signed_cloud.url if transport == "http" else "lambda://edgelesspart-cloud"
    edge = _edge(tiny_bundle, cloud=cloud, lambda_endpoint=signed_cloud.url, cloud_token=SECRET)
    before = _cloud_requests(signed_cloud)
    # WHEN rows are offloaded
    body = edge.post("/v1/infer", json={"inputs": digits[:2].tolist()}).json
    # THEN the cloud accepted the signed call and answered every row
    assert [a["stage"] for a in body["answers"]] == ["cloud", "cloud"], body
    assert body["degraded"] == 0
    after = _cloud_requests(signed_cloud)
    assert after == before + 1


@pytest.mark.parametrize("transport", ["http", "lambda"])
@pytest.mark.parametrize("token", [None, "a wrong secret"])
def test_an_unsigned_or_wrongly_signed_offload_is_refused(tiny_bundle, digits, signed_cloud,
                                                          transport, token):
    cloud = signed_cloud.url if transport == "http" else "lambda://edgelesspart-cloud"
    edge = _edge(tiny_bundle, cloud=cloud, lambda_endpoint=signed_cloud.url, cloud_token=token)
    answer = edge.post("/v1/infer", json={"inputs": digits[:1].tolist()}).json["answers"][0]
    # THEN the cloud refused it (401 / AccessDenied) and the edge answered degraded, saying why
    assert answer["degraded"] is True and answer["stage"] == "edge"
    expected = "401" if transport == "http" else "AccessDeniedException"
    assert expected in answer["reason"], answer["reason"]


def _cloud_requests(cloud) -> int:
    stats = requests.get(f"{cloud.url}/v1/stats", headers=CLOUD_BEARER, timeout=TIMEOUT)
    return stats.json()["requests"]
