"""P3 peer: Ray Serve, a deployment around the same executor with ``@serve.batch``.

A private local Ray (``num_cpus`` = the cores here, its own temp dir, dashboard off), one
replica, the HTTP proxy on ``127.0.0.1:PORT``; requests to ``/v1/infer`` are decoded in the
replica and coalesced by ``@serve.batch`` (``max_batch_size`` 32, ``batch_wait_timeout_s``
0.001, its usual settings) into one executor run.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main() -> None:
    """Serve until killed."""
    import numpy as np
    import ray
    from ray import serve
    from starlette.requests import Request
    from starlette.responses import Response

    args = common.parse(__doc__.splitlines()[0])
    for attempt in range(3):  # Ray waits only 30 s for its raylet: a busy host needs retries
        try:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                     _temp_dir=tempfile.mkdtemp(prefix="p3ray-"))  # fmt: skip
            break
        except Exception:  # noqa: BLE001 - "The current node timed out during startup"
            ray.shutdown()
            if attempt == 2:
                raise
    serve.start(http_options={"host": "127.0.0.1", "port": args.port})

    @serve.deployment(num_replicas=1, max_ongoing_requests=64)
    class Edge:
        def __init__(self, bundle: str, threshold: float) -> None:
            self.executor = common.load_executor(bundle, threshold)
            self.input = self.executor.bundle.manifest.input

        @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.001)
        async def run(self, xs: list) -> list:
            result = self.executor.run(np.concatenate(xs))
            return [{"answers": [a]} for a in common.answers(result)]

        async def __call__(self, request: Request) -> Response:
            x = common.decode(await request.body(), request.headers.get("content-type", ""),
                              self.input)  # fmt: skip
            import json

            return Response(json.dumps(await self.run(x)), media_type="application/json")

    serve.run(Edge.bind(args.bundle, args.threshold), route_prefix="/v1/infer")
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    main()
