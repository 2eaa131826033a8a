"""Google Cloud Functions entry: the cloud HTTP app behind one functions-framework function.

``main.py`` of a ``package-cloud --provider gcf`` directory is::

    import functions_framework
    from cloud_functions import gcf_entry

    gcf_entry.warm()  # load the segments at cold start, once per instance

    @functions_framework.http
    def edgelesspart(request):
        return gcf_entry.handle(request)

:func:`handle` hands the request to the same Flask app ``serve-cloud`` runs
(:func:`cloud_functions.http_entry.create_app`: ``POST /v1/continue``, ``/healthz``,
``/metrics``, ``/v1/stats``, token auth, admission control, JSON errors), so the edge's
``HttpOffloader`` talks to a deployed function exactly as to ``serve-cloud``: point
``--cloud`` at the function URL. The bundle comes from ``$EDGELESSPART_BUNDLE`` (default: the
``bundle`` directory next to the handler) and the token from ``$EDGELESSPART_TOKEN``. Like the
Lambda handler, the app is built once per instance (module state), because that is what a warm
instance is for. No TensorFlow.
"""

from __future__ import annotations

import io
import os
import threading
from typing import Any

TOKEN_ENV = "EDGELESSPART_TOKEN"
_APP: Any = None
_LOCK = threading.Lock()


def app() -> Any:
    """The instance's cloud app (built on first use: bundle loaded, segments ready)."""
    global _APP
    with _LOCK:
        if _APP is None:
            from cloud_functions.http_entry import create_app

            _APP = create_app(None, token=os.environ.get(TOKEN_ENV) or None)
        return _APP


def warm() -> None:
    """Load the bundle now (call at import time so the cold start pays it, not a request)."""
    app()


def handle(request: Any) -> Any:
    """Answer a functions-framework (Flask) request with the cloud app; returns a Response."""
    inner = app()
    body = request.get_data(cache=True)
    environ = dict(request.environ)
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
    with inner.request_context(environ):
        return inner.full_dispatch_request()
