"""P3: edge service throughput with 16 concurrent clients vs raw LiteRT at batch 1.

Ours: the edge service (``edge_runtime.create_app`` under waitress on 127.0.0.1, edge-only: no
cloud, so rows no exit answers get the best local exit) with dynamic batching on
(``batch_max_rows`` = clients, ``batch_delay_us`` = ``--batch-delay-us``), driven by 16
keep-alive clients in a separate process (``http.client``, one thread each), each posting one
test sample per request in the binary tensor wire format, back to back (closed loop). The
throughput is the number of 200 answers per second: the service's *capacity*.

Baseline: the same work per sample, exactly the edge segments the executor runs at the same
threshold, on bare LiteRT interpreters at batch 1 in one process, with 1 and with ``cores``
worker threads (each its own interpreters); the better of the two. Service and baseline
alternate in rounds; medians.

Reported beside it: the CPU share of the load generator (its process CPU time over the
window / (window x cores)) and of the service process, the host's CPU utilisation over each
window (``/proc/stat``), and latency p50/p99 of open-loop arrivals at 50 % and 90 % of the
measured capacity (latency counted from each request's scheduled send time, so a queue shows).

The headline is the small CNN (the shared bench bundle); a MobileNetV2 edge part
(``results/bench/bundles/p3-mobilenetv2``, built if missing, 2 epochs: only its edge part's
speed matters here) has its own goal (``details.models``).

Usage::

    .venv/bin/python experiments/bench_p3_throughput.py [--quick] [--models small,mobilenetv2]
    .venv/bin/python experiments/bench_p3_throughput.py --bundle DIR   # one given bundle
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import rawlite  # noqa: E402

GOALS = {"small": 0.5, "mobilenetv2": 1.0, "mobilenetv2-96": 1.0, "given": 0.5}
#: The MobileNetV2 bundle (throughput needs its edge part, not its accuracy: 2 epochs).
_MOBILENET = {"model": "mobilenetv2", "dataset": "digits", "constraint": "memory", "epochs": 2,
              "exit_epochs": 2, "max_cut_points": 8, "exits_per_part": [2, 2]}  # fmt: skip
MOBILENET_OPTIONS = {False: _MOBILENET, True: {**_MOBILENET, "epochs": 1, "exit_epochs": 1,
                                               "limit": 120}}  # fmt: skip
#: The same network on 96 x 96 inputs: an edge part with real work (1 epoch: speed only).
MOBILENET_96 = {**_MOBILENET, "image_size": 96, "epochs": 1, "exit_epochs": 1}
CLIENTS = 16
TENSOR_MEDIA = "application/x-edgelesspart-tensor"


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--bundle", type=Path, default=None, help="bundle to serve")
        parser.add_argument("--models", default="small,mobilenetv2", help="small, mobilenetv2")
        parser.add_argument("--threshold", type=float, default=0.8, help="exit threshold")
        parser.add_argument("--duration", type=float, default=None, help="seconds per round")
        parser.add_argument("--rounds", type=int, default=None, help="rounds of each")
        parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
        parser.add_argument("--batch-delay-us", type=int, default=1000, help="batching delay")
        parser.add_argument("--no-batching", action="store_true", help="batch_max_rows = 0")
        parser.add_argument("--client", default=None, help=_hidden())
        parser.add_argument("--inputs", type=Path, default=None, help=_hidden())
        parser.add_argument("--rate", type=float, default=0.0, help=_hidden())

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


def _hidden() -> str:
    return "internal: run as the load generator"


def cpu_times() -> tuple[float, float]:
    """(busy, total) jiffies of the whole host from /proc/stat (0, 0 where unavailable)."""
    try:
        fields = [float(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return 0.0, 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return sum(fields) - idle, sum(fields)


def host_utilisation(before: tuple[float, float], after: tuple[float, float]) -> float | None:
    """Share of all cores busy between two :func:`cpu_times` readings."""
    total = after[1] - before[1]
    return None if total <= 0 else (after[0] - before[0]) / total


# ------------------------------------------------------------------------- load generator


def percentiles(values: list[float]) -> dict[str, float | None]:
    """p50 and p99 (nearest rank) of ``values``; ``None`` when empty."""
    if not values:
        return {"p50": None, "p99": None}
    ordered = np.sort(np.asarray(values))
    return {q: float(np.percentile(ordered, n, method="nearest")) for q, n in
            (("p50", 50), ("p99", 99))}  # fmt: skip


def client_main(url: str, inputs: Path, clients: int, duration: float, rate: float) -> dict:
    """Drive ``url`` for ``duration`` s after a 1 s warm-up: closed loop, or open loop at ``rate``.

    Open loop: request ``k`` is scheduled at ``begin + k / rate`` and taken by the next free
    client thread; its latency counts from the scheduled time.
    """
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
    ticket = iter(range(10**9))

    def next_send(i: int) -> float | None:
        if rate <= 0:
            return time.perf_counter()
        with lock:
            k = next(ticket)
        due = begin - 1.0 + k / rate  # the warm-up second is paced too
        wait = due - time.perf_counter()
        if wait > 0:
            time.sleep(wait)
        return due

    def worker(k: int) -> None:
        conn = HTTPConnection(host.hostname, host.port, timeout=30)
        i = k
        while time.perf_counter() < end:
            t0 = next_send(i)
            if t0 is None or t0 >= end:
                break
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
        conn.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    time.sleep(max(0.0, begin - time.perf_counter()))
    cpu0 = time.process_time()
    for t in threads:
        t.join()
    cpu = time.process_time() - cpu0
    return {
        "statuses": statuses,
        "latency_ms": {**benchlib.summary(latencies), **percentiles(latencies)},
        "ok_per_s": statuses.get(200, 0) / duration,
        "offered_per_s": rate or None,
        "client_cpu_share": cpu / (duration * (os.cpu_count() or 1)),
    }


def run_clients(url: str, inputs: Path, clients: int, duration: float, rate: float = 0.0) -> dict:
    """The load generator in a child process (so it does not share the server's GIL)."""
    cmd = [sys.executable, __file__, "--client", url, "--inputs", str(inputs),
           "--clients", str(clients), "--duration", str(duration), "--rate", str(rate),
           "--out", str(inputs.parent)]  # fmt: skip
    own0, host0 = os.times(), cpu_times()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 120,
                          check=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})  # fmt: skip
    own1, host1 = os.times(), cpu_times()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    wall = own1.elapsed - own0.elapsed
    server_cpu = (own1.user - own0.user) + (own1.system - own0.system)
    result["service_cpu_share"] = server_cpu / (wall * (os.cpu_count() or 1))
    result["host_cpu_utilisation"] = host_utilisation(host0, host1)
    return result


# ------------------------------------------------------------------------- baseline


def edge_chains(bundle: Any, x: np.ndarray, threshold: float) -> list[list[str]]:
    """Per sample, the edge segments the executor runs at ``threshold``."""
    from edgelesspart.runtime.executor import ProgressiveExecutor

    executor = ProgressiveExecutor(bundle, bundle.stages[0], threshold)
    names = [s.name for s in executor.segments]
    chains = []
    for i in range(len(x)):
        answer = executor.run(x[i : i + 1]).answers[0]
        chains.append(names if answer is None else [n for n in names if n in answer.timings])
    return chains


def raw_throughput(bundle: Any, x: np.ndarray, chains: list, workers: int, duration: float):
    """Samples per second of bare LiteRT at batch 1 doing the same chains with ``workers``."""
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


# ------------------------------------------------------------------------- one bundle


def edge_config(args: Any) -> Any:
    """Edge-only settings: admit every client, coalesce up to one row per client."""
    from edge_runtime.config import EdgeConfig

    rows = 0 if args.no_batching else args.clients
    return EdgeConfig(cloud=None, threshold=args.threshold, max_inflight=args.clients,
                      max_queue=args.clients, batch_max_rows=rows,
                      batch_delay_us=args.batch_delay_us)  # fmt: skip


def measure(args: Any, bundle_path: Path, duration: float, rounds: int) -> dict[str, Any]:
    """Alternate service rounds and raw rounds; then open-loop latency at 50 % and 90 %."""
    from edge_runtime import create_app
    from edgelesspart.runtime.bundle import Bundle
    from service_http.wsgi import BackgroundServer

    x, _ = benchlib.eval_split(bundle_path, 100)
    x = np.ascontiguousarray(x, dtype=np.float32)
    inputs = args.out / f"p3-inputs-{bundle_path.name}.npy"
    np.save(inputs, x, allow_pickle=False)
    bundle = Bundle.load(bundle_path, stages=[_edge_stage(bundle_path)], pool_size=1)
    chains = edge_chains(bundle, x, args.threshold)
    config = edge_config(args)
    app = create_app(str(bundle_path), config)
    cores = os.cpu_count() or 1
    threads = 2 * args.clients + 4
    service, raw = [], {1: [], cores: []}
    with BackgroundServer(app, threads=threads) as server:
        run_clients(server.url, inputs, args.clients, min(duration, 2.0))  # warm-up
        for _ in range(rounds):
            service.append(run_clients(server.url, inputs, args.clients, duration))
            for workers in raw:
                raw[workers].append(raw_throughput(bundle, x, chains, workers, duration))
        capacity = statistics.median(r["ok_per_s"] for r in service)
        latency = {
            f"{int(share * 100)}%": run_clients(
                server.url, inputs, args.clients, duration, rate=share * capacity
            )
            for share in (0.5, 0.9)
        }
    batcher = app.extensions["edgelesspart"].batcher
    app.extensions["edgelesspart"].close()
    best = max(raw, key=lambda w: statistics.median(raw[w]))
    base = statistics.median(raw[best])
    return {
        "ratio": capacity / base,
        "service_ok_per_s": capacity,
        "raw_per_s": {str(w): statistics.median(v) for w, v in raw.items()},
        "raw_best_workers": best,
        "client_cpu_share": statistics.median(r["client_cpu_share"] for r in service),
        "service_cpu_share": statistics.median(r["service_cpu_share"] for r in service),
        "host_cpu_utilisation": [r["host_cpu_utilisation"] for r in service],
        "latency_at_load": {
            k: {
                "offered_per_s": v["offered_per_s"],
                "ok_per_s": v["ok_per_s"],
                "p50_ms": v["latency_ms"].get("p50"),
                "p99_ms": v["latency_ms"].get("p99"),
                "statuses": v["statuses"],
            }
            for k, v in latency.items()
        },  # fmt: skip
        "batches": None if batcher is None else batcher.stats(),
        "service_rounds": service,
        "server_threads": threads,
        "edge_config": {
            k: getattr(config, k)
            for k in (
                "threshold",
                "pool_size",
                "max_inflight",
                "max_queue",
                "batch_max_rows",
                "batch_delay_us",
            )
        },  # fmt: skip
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


def _bundles(args: Any) -> dict[str, tuple[Path, dict]]:
    if args.bundle is not None:
        return {"given": benchlib.shared_bundle(args.out, args.quick, args.bundle)}
    chosen = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        if name == "small":
            chosen[name] = benchlib.shared_bundle(args.out, args.quick)
        elif name == "mobilenetv2":
            path = args.out / "bundles" / ("p3-mobilenetv2" + ("-quick" if args.quick else ""))
            chosen[name] = benchlib.ensure_bundle(path, **MOBILENET_OPTIONS[args.quick])
        elif name == "mobilenetv2-96":
            options = {**MOBILENET_96, **({"limit": 120} if args.quick else {})}
            path = args.out / "bundles" / ("p3-mobilenetv2-96" + ("-quick" if args.quick else ""))
            chosen[name] = benchlib.ensure_bundle(path, **options)
        else:
            raise SystemExit(f"unknown model {name!r}; use small, mobilenetv2, mobilenetv2-96")
    return chosen


def main(argv: list[str] | None = None) -> int:
    """Run P3 (or, with ``--client``, the load generator) and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    if args.client:
        result = client_main(args.client, args.inputs, args.clients, args.duration, args.rate)
        print(json.dumps(result))
        return 0
    duration = args.duration or (2.0 if args.quick else 5.0)
    rounds = args.rounds or (1 if args.quick else 3)
    models: dict[str, Any] = {}
    for name, (path, info) in _bundles(args).items():
        details = measure(args, path, duration, rounds)
        details.update(bundle=info, goal=GOALS[name], met=details["ratio"] >= GOALS[name])
        models[name] = details
        lat = details["latency_at_load"]
        print(
            f"{name}: service {details['service_ok_per_s']:.0f}/s vs raw "
            f"{details['raw_per_s']} /s = {details['ratio']:.3f}x (goal >= {GOALS[name]}x); "
            f"load generator {details['client_cpu_share']:.0%} of the CPU; p50/p99 at 50% "
            f"{lat['50%']['p50_ms']:.1f}/{lat['50%']['p99_ms']:.1f} ms, at 90% "
            f"{lat['90%']['p50_ms']:.1f}/{lat['90%']['p99_ms']:.1f} ms",
            flush=True,
        )
    head_name = next(iter(models))
    head = models[head_name]
    others = "; ".join(f"{k} {v['ratio']:.2f}x" for k, v in models.items() if k != head_name)
    result = benchlib.BenchResult(
        bench="P3",
        what=f"edge service throughput (answers/s) with {args.clients} concurrent loopback "
        "clients, dynamic batching on",
        baseline="raw LiteRT at batch 1 on the same edge segments in one process (best of 1 and "
        "cores worker threads)",
        headline=benchlib.Headline(
            "P3",
            f"service/raw throughput ({head_name}{'; ' + others if others else ''})",
            head["ratio"],
            "x",
            f">= {head['goal']}x" + ("; mobilenetv2 >= 1.0x" if "mobilenetv2" in models else ""),
            all(v["met"] for v in models.values()),
            ours=f"{head['service_ok_per_s']:.0f} answers/s "
            f"(load generator {head['client_cpu_share']:.0%} CPU)",
            reference=f"{head['raw_per_s'][str(head['raw_best_workers'])]:.0f} samples/s "
            f"(raw batch 1, {head['raw_best_workers']} thread(s))",
        ),
        quick=args.quick,
        reduced=[f"{rounds} round(s) of {duration:g} s"] if args.quick else [],
        details={"models": models},
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
