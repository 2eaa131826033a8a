"""The shared HTTP package: auth settings, bounded metric labels, error rendering (no model)."""

from __future__ import annotations

import logging

import pytest

from edgelesspart.errors import (
    BundleError,
    BundleMismatchError,
    CodecError,
    ConfigError,
    InferenceError,
    InputError,
)
from service_http.auth import DEFAULT_PUBLIC_ROUTES, check_bearer, guarded, parse_routes
from service_http.errors import Unauthorized, from_library_error, register_error_handlers
from service_http.metrics import Registry, bounded_label


def test_only_health_is_public_by_default_and_routes_are_parsed():
    assert DEFAULT_PUBLIC_ROUTES == ("/healthz",)
    assert parse_routes(None) == ("/healthz",)
    assert parse_routes(" /healthz , /metrics,") == ("/healthz", "/metrics")
    assert parse_routes([]) == ()
    with pytest.raises(ConfigError, match="starting with '/'"):
        parse_routes("healthz")
    assert guarded("/metrics", "t", ("/healthz",)) and not guarded("/healthz", "t", ("/healthz",))
    assert not guarded("/metrics", None, ())


@pytest.mark.parametrize("header", [None, "", "Bearer x", "bearer t0k", "Bearer t0k "])
def test_a_wrong_bearer_is_refused(header):
    with pytest.raises(Unauthorized, match="Authorization: Bearer"):
        check_bearer("t0k", header)
    check_bearer("t0k", "Bearer t0k")
    check_bearer(None, header)  # no token: nothing to check


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InputError("x"), 422),
        (CodecError("x"), 400),
        (ConfigError("x"), 400),
        (BundleMismatchError("x"), 409),
        (BundleError("x"), 500),
        (InferenceError("x"), 500),
    ],
)
def test_only_caller_mistakes_are_4xx(error, status):
    assert from_library_error(error).status == status


def test_an_unexpected_exception_is_a_json_500_with_a_correlation_id(caplog):
    from flask import Flask

    app = Flask("t")
    register_error_handlers(app)

    @app.get("/boom")
    def boom():
        raise KeyError("secret detail")

    with caplog.at_level(logging.ERROR, logger="edgelesspart.service"):
        response = app.test_client().get("/boom")
    assert response.status_code == 500 and response.json["error"]["code"] == "internal_error"
    assert "secret detail" not in response.json["error"]["message"]
    correlation = response.json["error"]["message"].split("correlation id ")[1].split(")")[0]
    assert any(correlation in r.getMessage() for r in caplog.records)
    assert app.test_client().get("/nope").json["error"]["status"] == 404


def test_label_values_outside_the_known_set_collapse_to_other():
    registry = Registry()
    counter = registry.counter("c_total", "help")
    for k in range(100):
        counter.inc(exit=bounded_label(f"exit-{k}", {"exit_1", "final"}))
    counter.inc(exit=bounded_label("final", {"exit_1", "final"}))
    text = registry.render()
    assert 'c_total{exit="other"} 100' in text and 'c_total{exit="final"} 1' in text
    assert text.count("c_total{") == 2
