"""P3: edge endpoint throughput with 16 concurrent loopback clients vs raw LiteRT in one process.

Ours: the edge service (``edge_runtime.create_app`` under ``BackgroundServer``, waitress, on
127.0.0.1, edge-only: no cloud configured, so rows no exit answers get the best local exit) is
driven by 16 keep-alive clients in a separate process (``http.client``, one thread each), each
posting one test sample per request in the binary tensor wire format, back to back. Throughput
counts 200 answers per second; other statuses are reported.

Baseline: the same work (per sample, exactly the edge segments the executor runs at the same
threshold) on bare LiteRT interpreters in one process, with 1 and with ``cores`` worker threads
(each its own interpreters); the better of the two. Service and baseline alternate in rounds.
Note: on this machine the load generator shares the CPU cores with the service.

Usage::

    .venv/bin/python experiments/bench_p3_throughput.py [--quick] [--bundle DIR]
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import rawlite  # noqa: E402

GOAL = 0.7
CLIENTS = 16
TENSOR_MEDIA = "application/x-edgelesspart-tensor"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--bundle", type=Path, default=None, help="bundle to serve")
        parser.add_argument("--threshold", type=float, default=0.8, help="exit threshold")
        parser.add_argument("--duration", type=float, default=None, help="seconds per round")
        parser.add_argument("--rounds", type=int, default=None, help="rounds of each")
        parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
        parser.add_argument("--client", default=None, help=argparse_hidden())
        parser.add_argument("--inputs", type=Path, default=None, help=argparse_hidden())

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def argparse_hidden() -> str:
    """Help text of the internal load-generator flags."""
    return "internal: run as the load generator against this base URL"


# ------------------------------------------------------------------------- load generator


def client_main(url: str, inputs: Path, clients: int, duration: float) -> dict[str, Any]:
    """Drive ``url`` with ``clients`` keep-alive threads for ``duration`` s (after 1 s warm-up)."""
    from http.client import HTTPConnection
    from urllib.parse import urlparse

    from edgelesspart.runtime.codecs import encode_tensor

    x = np.load(inputs, allow_pickle=False)
    payloads = [encode_tensor(x[i : i + 1], "raw") for i in range(len(x))]
    host = urlparse(url)
    begin = time.perf_counter() + 1.0
    end = begin + duration
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        conn = HTTPConnection(host.hostname, host.port, timeout=30)
        i = k
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            conn.request(
                "POST", "/v1/infer", payloads[i % len(payloads)], {"Content-Type": TENSOR_MEDIA}
            )
            response = conn.getresponse()
            response.read()
            t1 = time.perf_counter()
            i += clients
            if begin <= t1 <= end:  # completions inside the window
                with lock:
                    statuses[response.status] = statuses.get(response.status, 0) + 1
                    latencies.append((t1 - t0) * 1000.0)
            if response.status == 429:
                time.sleep(float(response.getheader("Retry-After") or 0.05))
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {
        "statuses": statuses,
        "latency_ms": benchlib.summary(latencies),
        "ok_per_s": statuses.get(200, 0) / duration,
    }


def run_clients(url: str, inputs: Path, clients: int, duration: float) -> dict[str, Any]:
    """The load generator in a child process (so it does not share the server's GIL)."""
    cmd = [
        sys.executable,
        __file__,
        "--client",
        url,
        "--inputs",
        str(inputs),
        "--clients",
        str(clients),
        "--duration",
        str(duration),
        "--out",
        str(inputs.parent),
    ]
    done = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=duration + 120,
        check=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------- baseline


def edge_chains(bundle: Any, x: np.ndarray, threshold: float) -> list[list[str]]:
    """Per sample, the edge segments the executor runs at ``threshold``."""
    from edgelesspart.runtime.executor import ProgressiveExecutor

    executor = ProgressiveExecutor(bundle, bundle.stages[0], threshold)
    names = [s.name for s in executor.segments]
    chains = []
    for i in range(len(x)):
        result = executor.run(x[i : i + 1])
        answer = result.answers[0]
        chains.append(names if answer is None else [n for n in names if n in answer.timings])
    return chains


def raw_throughput(bundle: Any, x: np.ndarray, chains: list, workers: int, duration: float):
    """Samples per second of bare LiteRT doing the same chains with ``workers`` threads."""
    raws = [rawlite.raw_segments(bundle) for _ in range(workers)]
    for raw in raws:  # warm-up: the first invoke after allocation sets the kernels up
        rawlite.run_chain(raw, chains[0], x[0][None])
    counts = [0] * workers
    end = time.perf_counter() + duration

    def worker(k: int) -> None:
        i = k
        while time.perf_counter() < end:
            rawlite.run_chain(raws[k], chains[i % len(x)], x[i % len(x)][None])
            if time.perf_counter() <= end:  # completions inside the window, as for the service
                counts[k] += 1
            i += workers

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / duration


# ------------------------------------------------------------------------- main


def edge_config(threshold: float, clients: int) -> Any:
    """Edge-only service settings; where admission control exists, admit every client."""
    from edge_runtime.config import EdgeConfig

    names = {f.name for f in fields(EdgeConfig)}
    extra = {"max_queue": clients} if "max_queue" in names else {}
    return EdgeConfig(cloud=None, threshold=threshold, **extra)


def measure(args: Any, bundle_path: Path, duration: float, rounds: int) -> dict[str, Any]:
    """Alternate service rounds and raw rounds; medians of each."""
    from edge_runtime import create_app
    from edge_runtime.wsgi import BackgroundServer
    from edgelesspart.runtime.bundle import Bundle

    x, _ = benchlib.eval_split(bundle_path, 100)
    x = np.ascontiguousarray(x, dtype=np.float32)
    inputs = args.out / "p3-inputs.npy"
    np.save(inputs, x, allow_pickle=False)
    bundle = Bundle.load(bundle_path, stages=[_edge_stage(bundle_path)], pool_size=1)
    chains = edge_chains(bundle, x, args.threshold)
    config = edge_config(args.threshold, args.clients)
    threads = getattr(config, "max_inflight", 4) + getattr(config, "max_queue", 8) + 4
    app = create_app(str(bundle_path), config)
    cores = os.cpu_count() or 1
    service, raw = [], {1: [], cores: []}
    with BackgroundServer(app, threads=max(threads, args.clients)) as server:
        for _ in range(rounds):
            service.append(run_clients(server.url, inputs, args.clients, duration))
            for workers in raw:
                raw[workers].append(raw_throughput(bundle, x, chains, workers, duration))
    ours = statistics.median(r["ok_per_s"] for r in service)
    best_workers = max(raw, key=lambda w: statistics.median(raw[w]))
    base = statistics.median(raw[best_workers])
    return {
        "ratio": ours / base,
        "service_ok_per_s": ours,
        "raw_per_s": {str(w): statistics.median(v) for w, v in raw.items()},
        "raw_best_workers": best_workers,
        "service_rounds": service,
        "server_threads": max(threads, args.clients),
        "edge_config": {
            k: getattr(config, k)
            for k in ("threshold", "pool_size", "max_inflight", "max_queue")
            if hasattr(config, k)
        },
        "segments_run": {
            str(n): [len(c) for c in chains].count(n) for n in sorted({len(c) for c in chains})
        },
        "clients": args.clients,
        "duration_s": duration,
        "rounds": rounds,
    }


def _edge_stage(bundle_path: Path) -> str:
    from edgelesspart.runtime.manifest import load_manifest

    return load_manifest(bundle_path, verify=False).stage_names[0]


def main(argv: list[str] | None = None) -> int:
    """Run P3 (or, with ``--client``, the load generator) and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    if args.client:
        print(json.dumps(client_main(args.client, args.inputs, args.clients, args.duration)))
        return 0
    bundle_path, bundle_info = benchlib.shared_bundle(args.out, args.quick, args.bundle)
    duration = args.duration or (2.0 if args.quick else 6.0)
    rounds = args.rounds or (1 if args.quick else 3)
    details = measure(args, bundle_path, duration, rounds)
    details["bundle"] = bundle_info
    ratio = details["ratio"]
    print(f"service {details['service_ok_per_s']:.0f}/s vs raw {details['raw_per_s']} /s")
    result = benchlib.BenchResult(
        bench="P3",
        what=f"edge endpoint throughput (answers/s) with {args.clients} concurrent loopback "
        "clients",
        baseline="raw LiteRT throughput for the same segment work in one process (best of 1 and "
        "cores worker threads)",
        headline=benchlib.Headline(
            "P3",
            "service/raw throughput",
            ratio,
            "x",
            f">= {GOAL}x",
            ratio >= GOAL,
            ours=f"{details['service_ok_per_s']:.0f} answers/s",
            reference=f"{details['raw_per_s'][str(details['raw_best_workers'])]:.0f} samples/s "
            f"(raw, {details['raw_best_workers']} thread(s))",
        ),
        quick=args.quick,
        reduced=[f"{rounds} round(s) of {duration:g} s"] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
