"""P3 peer: FastAPI + uvicorn around the same executor (the usual hand-rolled server).

``--mode async``: an ``async def`` endpoint that runs the executor on the event loop;
``--mode thread``: a ``def`` endpoint, which FastAPI runs on its thread pool (so two LiteRT
calls can overlap). One uvicorn worker, uvloop and httptools when installed, no access log.
"""

# No "from __future__ import annotations": FastAPI reads the endpoint's annotations at run
# time, and Request is imported inside main().
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    """Serve until killed."""
    import uvicorn
    from fastapi import FastAPI, Request, Response

    args = common.parse(__doc__.splitlines()[0])
    executor = common.load_executor(args.bundle, args.threshold)
    manifest_input = executor.bundle.manifest.input
    app = FastAPI()

    def run(body: bytes, content_type: str) -> Response:
        x = common.decode(body, content_type, manifest_input)
        result = executor.run(x)
        return Response(common.answers_json(result), media_type="application/json")

    if args.mode == "thread":
        from starlette.concurrency import run_in_threadpool

        @app.post("/v1/infer")
        async def infer_in_thread(request: Request) -> Response:
            body = await request.body()
            return await run_in_threadpool(run, body, request.headers.get("content-type", ""))

    else:

        @app.post("/v1/infer")
        async def infer(request: Request) -> Response:
            return run(await request.body(), request.headers.get("content-type", ""))

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()
