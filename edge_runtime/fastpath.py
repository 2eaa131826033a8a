"""The edge's hot route under the event-loop server (:mod:`service_http.aserver`).

``POST /v1/infer`` with a tensor or PNG/JPEG body is checked on the loop thread
(:func:`edge_runtime.app.prepare_fast`: token, media type, threshold, tensor decoding, bundle
id, batch size), admitted without blocking (``Admission.try_enter``), and then either run right
there (inline dispatch: the edge stage is cheaper than a thread hand-off, see
``EdgeConfig.dispatch``) or handed off once: to a worker thread that runs the edge stage
(batching off) or into the dynamic batcher; that thread builds the JSON answer and sends it.

With thread-pool dispatch an image is *not* decoded on the loop thread: on the loop, Pillow's
decode and resize serialised every image request behind one thread (issue 24: PNG at 0.96x
FastAPI + uvicorn, when the stage itself also ran on a thread). The worker thread decodes it
first, in the same hand-off as the inference (with batching on, the worker decodes and then
queues the row), and a body that fails to decode is refused (422) from there with the Flask
route's message; the loop thread then never waits on decoding, inference or the cloud (Pillow
and LiteRT release the GIL while they work). Inline, the loop decodes images up to
``INLINE_MAX_IMAGE_PIXELS`` and runs the stage, which costs less than the two thread wake-ups
it saves; larger images and cloud waits still go to a thread.

A request the checks refuse is handed to the Flask app, which renders the refusal exactly as
before; the counters and the latency histogram are the same ones the Flask hooks fill.
"""

from __future__ import annotations

import time
from typing import Any

from edge_runtime.app import EXTENSION, answer_body, prepare_fast
from service_http.aserver import HotRoute, Reply, Request
from service_http.fastroute import service_error

PATH = "/v1/infer"


def hot_route(app: Any, executor: Any) -> HotRoute:
    """The hot ``/v1/infer`` handler of an edge app built by ``create_app``.

    Args:
        app: the edge Flask app (its service, admission gate and JSON provider are used).
        executor: threads for work that must not run on a batcher thread (cloud offloads)
            or, with batching off, every inference.
    """
    service = app.extensions[EXTENSION]
    admission = app.extensions[EXTENSION + ".admission"]
    metrics = service.metrics
    limit = app.config.get("MAX_CONTENT_LENGTH")
    json_dumps = app.json.dumps
    json_type = [("Content-Type", "application/json")]

    def send(reply: Reply, status: int, obj: Any, start: float, extra: Any = ()) -> None:
        data = (json_dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        reply.send(status, [*json_type, *extra], data)
        metrics.requests.inc(route=PATH, status=str(status))
        metrics.latency.observe(time.perf_counter() - start, route=PATH)

    def refuse(reply: Reply, exc: BaseException, start: float) -> None:
        err = service_error(exc)
        send(reply, err.status, err.to_dict(), start, list(err.headers.items()))

    def hot(request: Request, reply: Reply) -> bool:
        if request.path != PATH or request.method != "POST" or request.query or app.debug:
            return False
        body = request.body
        if not body or (limit is not None and len(body) > limit):
            return False  # Flask answers the empty body or the 413
        start = time.perf_counter()
        try:
            prepared = prepare_fast(service, request.headers, body, defer_images=True)
        except Exception:  # noqa: BLE001 - Flask parses it again and renders the refusal
            return False
        if prepared is None:
            return False
        x, threshold = prepared
        try:
            admission.try_enter()
        except Exception as exc:  # noqa: BLE001 - a 429, rendered as the app renders it
            refuse(reply, exc, start)
            return True

        def done(result: Any, error: BaseException | None) -> None:
            admission.leave()
            if error is not None:
                refuse(reply, error, start)
                return
            try:
                send(reply, 200, answer_body(service, result, threshold), start)
            except Exception as exc:  # noqa: BLE001 - e.g. a body that cannot be JSON: a 500
                refuse(reply, exc, start)

        try:
            service.infer_async(x, threshold, done, executor)
        except Exception as exc:  # noqa: BLE001 - refused before queueing (429, 503, 422)
            admission.leave()
            refuse(reply, exc, start)
        return True

    return hot


def edge_server(app: Any, **options: Any) -> Any:
    """An :class:`~service_http.aserver.AsyncServer` for an edge app, with its hot route.

    ``options`` go to ``AsyncServer`` (``host``, ``port``, ``sock``, ``threads``, ...); the body
    limit is the app's ``MAX_CONTENT_LENGTH``.
    """
    from service_http.aserver import AsyncServer

    limit = app.config.get("MAX_CONTENT_LENGTH") or 8 * 1024 * 1024
    options.setdefault("max_body", 2 * limit)  # up to 2x: Flask renders the 413 itself
    server = AsyncServer(app, None, **options)
    server.hot = hot_route(app, server.pool)
    return server
