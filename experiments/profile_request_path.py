"""Where one edge request's time goes: socket + waitress, Flask, parsing, service, executor.

Serial requests (one at a time, batch 1, edge only, no batching) through five nested layers of
the same app, each timed over ``--requests`` requests after a warm-up; the difference between
two layers is what the outer one costs:

1. ``executor``: ``ProgressiveExecutor.run`` on a decoded sample;
2. ``service``: ``EdgeService.infer`` (adds answer dicts and metrics);
3. ``decode+service``: wire-format decode + ``infer`` (what the route does besides Flask);
4. ``flask``: Flask's test client (WSGI environ, routing, hooks, admission, ``jsonify``);
5. ``http``: a real keep-alive ``http.client`` over loopback to waitress.

With ``--pyinstrument`` (``pip install pyinstrument``) it also profiles layer 4 and prints the
call tree, and writes it as ``results/bench/extra/profile-request.txt``.

Usage::

    .venv/bin/python experiments/profile_request_path.py [--bundle DIR] [--requests 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

TENSOR = "application/x-edgelesspart-tensor"


def _per_request_us(fn: Any, n: int, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean microseconds of ``n`` calls of ``fn``."""
    for _ in range(min(n, 200)):
        fn()
    means = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(n):
            fn()
        means.append((time.perf_counter() - start) / n * 1e6)
    return statistics.median(means)


def measure(bundle_path: Path, requests: int, profile: bool) -> dict[str, Any]:
    """Per-request microseconds of each layer, and what each layer adds."""
    from http.client import HTTPConnection

    from edge_runtime import create_app
    from edge_runtime.config import EdgeConfig
    from edgelesspart.runtime.codecs import decode_tensor, encode_tensor
    from service_http.wsgi import BackgroundServer

    x, _ = benchlib.eval_split(bundle_path, 1)
    sample = np.ascontiguousarray(x[:1], np.float32)
    body = encode_tensor(sample, "raw")
    app = create_app(str(bundle_path), EdgeConfig(cloud=None, threshold=0.8))
    service = app.extensions["edgelesspart"]
    client = app.test_client()
    layers = {
        "executor": lambda: service.executor.run(sample),
        "service": lambda: service.infer(sample),
        "decode+service": lambda: service.infer(decode_tensor(body)[0]),
        "flask": lambda: client.post("/v1/infer", data=body, content_type=TENSOR),
    }
    times = {name: _per_request_us(fn, requests) for name, fn in layers.items()}
    with BackgroundServer(app, threads=4) as server:
        conn = HTTPConnection("127.0.0.1", server.port, timeout=10)

        def http() -> None:
            conn.request("POST", "/v1/infer", body, {"Content-Type": TENSOR})
            conn.getresponse().read()

        times["http"] = _per_request_us(http, requests)
        conn.close()
    names = list(times)
    added = {names[0]: times[names[0]]}
    added.update({b: times[b] - times[a] for a, b in zip(names, names[1:])})
    tree = _profile(layers["flask"], requests) if profile else None
    return {"per_request_us": times, "added_us": added, "profile": tree}


def _profile(fn: Any, n: int) -> str | None:
    try:
        from pyinstrument import Profiler
    except ImportError:
        return None
    profiler = Profiler(interval=0.0002)
    profiler.start()
    for _ in range(n):
        fn()
    profiler.stop()
    return profiler.output_text(unicode=False, color=False, show_all=False)


def main(argv: list[str] | None = None) -> int:
    """Print and save the per-layer times."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=None)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--pyinstrument", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("results/bench"))
    args = parser.parse_args(argv)
    bundle_path, _ = benchlib.shared_bundle(args.out, False, args.bundle)
    result = measure(bundle_path, args.requests, args.pyinstrument)
    result["bundle"] = str(bundle_path)
    result["load_average"] = benchlib.load_average()
    extra = args.out / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    if result["profile"]:
        (extra / "profile-request.txt").write_text(result["profile"])
        print(result["profile"])
    result.pop("profile")
    (extra / "profile-request.json").write_text(json.dumps(result, indent=2))
    for name, us in result["per_request_us"].items():
        print(f"{name:>15}: {us:8.1f} us/request  (+{result['added_us'][name]:.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
