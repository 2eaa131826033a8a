"""service_http.fastroute on a bare Flask app: what its own answer path does on failures."""

from __future__ import annotations

import pytest

pytest.importorskip("flask")


def _route(serve):
    from flask import Flask
    from werkzeug.test import Client

    from edge_runtime.metrics import EdgeMetrics
    from service_http.admission import Admission
    from service_http.errors import register_error_handlers
    from service_http.fastroute import FastRoute

    app = Flask("fastroute-test")
    register_error_handlers(app)
    admission, metrics = Admission(2), EdgeMetrics()
    route = FastRoute(app, "/go", lambda environ, body: body, serve, admission, metrics)
    return route, Client(route), admission, metrics


def test_a_200_body_that_is_not_json_is_a_500_body_counted_and_the_slot_given_back():
    # GIVEN a fast route whose serve returns something JSON cannot hold
    route, client, admission, metrics = _route(lambda body: {"answer": object()})
    # WHEN a request takes the fast path
    response = client.post("/go", data=b"x")
    # THEN it is the JSON 500 the app's handlers render (was an exception out of the WSGI app:
    # the server's bare 500, neither counted nor served), and the admission slot is free
    assert response.status_code == 500
    assert response.json["error"]["code"] == "internal_error"
    assert "correlation id" in response.json["error"]["message"]
    assert route.served == 1 and admission.running == 0
    assert 'route="/go",status="500"' in metrics.render()


def test_a_good_body_is_answered_as_jsonify_writes_it():
    route, client, admission, _ = _route(lambda body: {"echo": body.decode(), "n": 1})
    response = client.post("/go", data=b"hi")
    assert response.status_code == 200 and response.get_data() == b'{"echo":"hi","n":1}\n'
    assert route.served == 1 and admission.running == 0
