"""P3: serve-edge side by side with the servers a user would write, on the same edge part.

One run, one load generator (``experiments/loadgen.py``: asyncio, keep-alive, one request in
flight per connection, in its own process), the same bundle's edge stage at the same threshold
(edge only: a row no exit is confident about gets its best exit), for every contender:

* ``serve-edge``: ``edgelesspart serve-edge BUNDLE`` with **default flags** (event-loop server,
  batching off, default admission), as a user starts it;
* ``serve-edge-batch``: the same with dynamic batching, ``--batch-max-rows 32``;
* ``ray-serve``: a Ray Serve deployment around the same executor with ``@serve.batch``;
* ``fastapi-async`` / ``fastapi-thread``: FastAPI + uvicorn around the same executor (endpoint
  on the event loop / on the thread pool); the better one is "FastAPI + uvicorn";
* ``flask-keras``: Flask's threaded server calling the Keras segments as ``model(x)``;
* ``raw``: no HTTP at all: bare LiteRT interpreters at batch 1 running exactly the segments
  the executor runs, with 1 and with ``cores`` threads (the better one): the limit.

Peers are in ``experiments/p3_peers/``; one that cannot start (not installed) is reported as
such. For each contender and each payload (the tensor wire format, and PNG images): the
throughput at saturation (``--clients`` closed-loop clients, 200 answers per second), p50/p99
with open-loop arrivals at 50 % of *our* capacity (latency from each request's due time), the
server's CPU per answered request (its whole process tree, from ``/proc``), and the load
generator's own CPU. serve-edge with and without batching is also measured at 1 client (p50:
does batching cost a lone client anything?). ``--workers`` compares ``serve-edge --workers 2``
with 1 worker (tensor payload, small CNN). The contenders' windows are interleaved (all started,
then measured in turn, round after round; see ``measure_model``), so a change in the host's
load moves all of them alike; the load average is recorded before, after each model and after.

Usage::

    .venv/bin/python experiments/bench_p3_throughput.py [--quick] [--models small,mobilenetv2]
    .venv/bin/python experiments/bench_p3_throughput.py --models small,mobilenetv2,mobilenetv2-96
"""

from __future__ import annotations

import io
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402
import loadgen  # noqa: E402
import rawlite  # noqa: E402

HERE = Path(__file__).resolve().parent
PEERS = HERE / "p3_peers"
#: The MobileNetV2 bundle (throughput needs its edge part, not its accuracy: 2 epochs).
_MOBILENET = {"model": "mobilenetv2", "dataset": "digits", "constraint": "memory", "epochs": 2,
              "exit_epochs": 2, "max_cut_points": 8, "exits_per_part": [2, 2]}  # fmt: skip
MOBILENET_OPTIONS = {False: _MOBILENET, True: {**_MOBILENET, "epochs": 1, "exit_epochs": 1,
                                               "limit": 120}}  # fmt: skip
#: The same network on 96 x 96 inputs: an edge part with real work (1 epoch: speed only).
MOBILENET_96 = {**_MOBILENET, "image_size": 96, "epochs": 1, "exit_epochs": 1}
CLIENTS = 16
TENSOR_MEDIA = "application/x-edgelesspart-tensor"
PAYLOADS = {"tensor": TENSOR_MEDIA, "png": "image/png"}
#: Goals (issue 24): our throughput / the peer's, per payload and model.
GOALS = {"ray-serve": 2.0, "fastapi": 1.2, "flask-keras": 5.0}
CONTENDERS = ("serve-edge", "serve-edge-batch", "ray-serve", "fastapi-async", "fastapi-thread",
              "flask-keras")  # fmt: skip
QUICK_CONTENDERS = ("serve-edge", "fastapi-async")


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--models", default="small,mobilenetv2", help="small, mobilenetv2, "
                            "mobilenetv2-96")  # fmt: skip
        parser.add_argument("--bundle", type=Path, default=None, help="one given bundle")
        parser.add_argument("--contenders", default=None, help="comma-separated subset")
        parser.add_argument("--threshold", type=float, default=0.8, help="exit threshold")
        parser.add_argument("--duration", type=float, default=None, help="seconds per run")
        parser.add_argument("--rounds", type=int, default=None, help="saturation runs, median")
        parser.add_argument("--clients", type=int, default=CLIENTS, help="concurrent clients")
        parser.add_argument("--workers", type=int, default=2, help="worker comparison (0: skip)")
        parser.add_argument("--pin-client", type=int, default=None,
                            help="pin the load generator to this CPU")  # fmt: skip

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


# ------------------------------------------------------------------------- processes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, own + reaped children's CPU seconds) of a process, from /proc."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), sum(float(v) for v in fields[11:15]) / ticks


def tree_cpu(root: int) -> float:
    """CPU seconds used so far by ``root`` and all its descendants (live and reaped)."""
    stats: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                stats[int(entry.name)] = stat
    members, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _) in stats.items():
            if ppid == parent and pid not in members:
                members.add(pid)
                frontier.append(pid)
    return sum(stats[p][1] for p in members if p in stats)


class Contender:
    """One server under test, started as its own process (group) and stopped after."""

    def __init__(self, name: str, bundle: Path, threshold: float, extra: list[str] | None = None):
        self.name, self.bundle, self.threshold = name, bundle, threshold
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = extra or []
        self.proc: subprocess.Popen | None = None
        self.log = io.StringIO()

    def command(self) -> list[str]:
        """The command line that starts this contender."""
        py, b, p, t = sys.executable, str(self.bundle), str(self.port), str(self.threshold)
        if self.name.startswith("serve-edge"):
            cmd = [py, "-m", "edgelesspart.cli", "serve-edge", b, "--port", p, "--threshold", t]
            if self.name == "serve-edge-batch":
                cmd += ["--batch-max-rows", "32"]
            return cmd + self.extra
        script = {
            "ray-serve": "ray_serve_peer.py",
            "fastapi-async": "fastapi_peer.py",
            "fastapi-thread": "fastapi_peer.py",
            "flask-keras": "flask_keras_peer.py",
        }
        mode = {"fastapi-async": "async", "fastapi-thread": "thread"}.get(self.name, "")
        return [py, str(PEERS / script[self.name]), "--bundle", b, "--port", p, "--threshold", t,
                "--mode", mode]  # fmt: skip

    def start(self, probe: bytes, content_type: str, timeout_s: float = 120.0) -> str | None:
        """Start and wait until a real request is answered 200; ``None``, or why it failed."""
        env = {**os.environ, "PYTHONPATH": str(benchlib.ROOT), "PYTHONUNBUFFERED": "1",
               "TF_CPP_MIN_LOG_LEVEL": "3", "RAY_USAGE_STATS_ENABLED": "0"}  # fmt: skip
        workers = (
            int(self.extra[self.extra.index("--workers") + 1]) if "--workers" in self.extra else 1
        )
        if workers > 1:  # each worker publishes <pid>.prom there once it has loaded the bundle
            import tempfile

            self.metrics_dir = Path(tempfile.mkdtemp(prefix="p3-workers-"))
            env["EDGELESSPART_METRICS_DIR"] = str(self.metrics_dir)
        self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env,
                                     start_new_session=True)  # fmt: skip
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode}: {self.log.getvalue()[-600:]}"
            try:
                req = urllib.request.Request(self.url + "/v1/infer", data=probe, method="POST",
                                             headers={"Content-Type": content_type})  # fmt: skip
                with urllib.request.urlopen(req, timeout=10) as response:
                    if response.status == 200:
                        return self._all_workers(workers, deadline)
            except OSError:
                time.sleep(0.3)
        return f"not ready after {timeout_s:.0f} s: {self.log.getvalue()[-600:]}"

    def _all_workers(self, workers: int, deadline: float) -> str | None:
        """Wait until every pre-forked worker has loaded the bundle (``None``), or say why not.

        The first worker to be ready answers the probe; connections opened before the others
        are ready all go to it, and keep-alive clients would stay there for the whole run.
        """
        while workers > 1 and time.monotonic() < deadline:
            if len(list(self.metrics_dir.glob("*.prom"))) >= workers:
                time.sleep(0.5)  # from publishing its metrics to accepting: milliseconds
                return None
            time.sleep(0.2)
        return None if workers <= 1 else f"only some of the {workers} workers started"

    def _drain(self) -> None:
        for line in self.proc.stdout:  # type: ignore[union-attr]
            self.log.write(line)

    def stop(self) -> None:
        """SIGTERM the process group, then SIGKILL what is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        benchlib._kill_group(self.proc.pid)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        if getattr(self, "metrics_dir", None) is not None:
            import shutil

            shutil.rmtree(self.metrics_dir, ignore_errors=True)


# ------------------------------------------------------------------------- load


def drive(
    args: Any,
    contender: Contender,
    bodies: Path,
    content_type: str,
    *,
    clients: int,
    duration: float,
    rate: float = 0.0,
    warmup: float | None = None,
) -> dict[str, Any]:
    """One load-generator run against ``contender``; adds the server's CPU per request."""
    warmup = (0.5 if args.quick else 1.0) if warmup is None else warmup
    spec = {"url": contender.url, "path": "/v1/infer", "content_type": content_type,
            "bodies": str(bodies), "clients": clients, "duration": duration, "rate": rate,
            "warmup": warmup, "pin": args.pin_client}  # fmt: skip
    cpu0, t0 = tree_cpu(contender.proc.pid), time.perf_counter()  # type: ignore[union-attr]
    done = subprocess.run([sys.executable, str(HERE / "loadgen.py"), json.dumps(spec)],
                          capture_output=True, text=True, timeout=duration + warmup + 120,
                          check=True)  # fmt: skip
    cpu1, t1 = tree_cpu(contender.proc.pid), time.perf_counter()  # type: ignore[union-attr]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    answered = sum(result["statuses"].values())
    # the server's CPU over the whole run (warm-up included) per request sent in the window,
    # scaled by the window's share of the run
    window = duration / max(t1 - t0, duration)
    result["server_cpu_ms_per_request"] = (
        1000.0 * (cpu1 - cpu0) * window / answered if answered else None
    )
    result["server_cpu_share"] = (cpu1 - cpu0) / ((t1 - t0) * (os.cpu_count() or 1))
    return result


def _payloads(bundle_path: Path, out: Path) -> tuple[dict[str, Path], np.ndarray]:
    """Tensor and PNG request bodies of 100 test samples; also the samples."""
    from PIL import Image

    from edgelesspart.runtime.codecs import encode_tensor

    x, _ = benchlib.eval_split(bundle_path, 100)
    x = np.ascontiguousarray(x, dtype=np.float32)
    tensors = [encode_tensor(x[i : i + 1], "raw") for i in range(len(x))]
    pngs = []
    for row in x:
        pixels = np.clip(np.rint(row * 255.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    files = {
        "tensor": loadgen.save_bodies(out / f"p3-{bundle_path.name}-tensor.npz", tensors),
        "png": loadgen.save_bodies(out / f"p3-{bundle_path.name}-png.npz", pngs),
    }
    return files, x


def first_body(path: Path) -> bytes:
    """The first request body stored in a bodies file."""
    return loadgen._load_bodies(str(path))[0]


# ------------------------------------------------------------------------- one model


def raw_limit(bundle_path: Path, x: np.ndarray, threshold: float, duration: float) -> dict:
    """Samples/s of bare LiteRT at batch 1 on the executor's chains (1 and cores threads)."""
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import load_manifest

    stage = load_manifest(bundle_path, verify=False).stage_names[0]
    bundle = Bundle.load(bundle_path, stages=[stage], pool_size=1)
    executor = ProgressiveExecutor(bundle, stage, threshold)
    names = [s.name for s in executor.segments]
    chains = []
    for i in range(len(x)):
        answer = executor.run(x[i : i + 1]).answers[0]
        chains.append(names if answer is None else [n for n in names if n in answer.timings])
    rates = {}
    for workers in sorted({1, os.cpu_count() or 1}):
        raws = [rawlite.raw_segments(bundle) for _ in range(workers)]
        for raw in raws:
            rawlite.run_chain(raw, chains[0], x[:1])
        counts, end = [0] * workers, time.perf_counter() + duration

        def work(k: int, raws: list = raws, counts: list = counts, end: float = end,
                 workers: int = workers) -> None:  # fmt: skip
            i = k
            while time.perf_counter() < end:
                rawlite.run_chain(raws[k], chains[i % len(x)], x[i % len(x)][None])
                counts[k] += time.perf_counter() <= end
                i += workers

        threads = [threading.Thread(target=work, args=(k,)) for k in range(workers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rates[str(workers)] = sum(counts) / duration
    segments = {str(n): [len(c) for c in chains].count(n) for n in sorted({len(c) for c in chains})}
    return {"per_s": max(rates.values()), "by_threads": rates, "segments_run": segments}


def measure_model(args: Any, bundle_path: Path, duration: float, rounds: int) -> dict[str, Any]:
    """Every contender on one bundle: saturation and 50 % load, tensor and PNG payloads.

    Interleaved, so that a host whose load changes during the run (other users, other
    benchmarks) moves every contender alike: all contenders are started first (idle servers
    cost next to nothing), then each round runs every contender's saturation windows in turn
    (the order reversed every other round), then every contender's 50 % window, then the
    one-client p50 of ``serve-edge`` with and without batching. Flask + Keras goes last, in its
    own block: a naive server that cannot keep up keeps working off its backlog after its
    window ends and would eat into the next contender's window.
    """
    files, x = _payloads(bundle_path, args.out)
    names = _contenders(args)
    results: dict[str, Any] = {}
    capacity: dict[str, float] = {}
    raw = raw_limit(bundle_path, x, args.threshold, duration)
    blocks = [[n for n in names if n != "flask-keras"], [n for n in names if n == "flask-keras"]]
    for block in blocks:
        if not block:
            continue
        running: dict[str, Contender] = {}
        try:
            for name in block:
                contender = Contender(name, bundle_path, args.threshold)
                why = contender.start(first_body(files["tensor"]), TENSOR_MEDIA, 300.0)
                if why is not None:
                    contender.stop()
                    results[name] = {"available": False, "why": why,
                                     "command": contender.command()}  # fmt: skip
                    benchlib.log(f"P3 {bundle_path.name} {name}: not available: {why[:200]}")
                else:
                    running[name] = contender
            results.update(measure_interleaved(args, running, files, duration, rounds, capacity))
        finally:
            for contender in running.values():
                contender.stop()
        for name in running:
            benchlib.log(f"P3 {bundle_path.name} {name}: {_brief(results[name])}")
    results = {n: results[n] for n in names if n in results}
    return {"contenders": results, "raw": raw, "load_after_model": benchlib.load_average(),
            **summarise(results, raw)}  # fmt: skip


def _contenders(args: Any) -> list[str]:
    if args.contenders:
        return [c.strip() for c in args.contenders.split(",") if c.strip()]
    return list(QUICK_CONTENDERS if args.quick else CONTENDERS)


def _safe_drive(args: Any, contender: Contender, *a: Any, **kw: Any) -> dict[str, Any] | str:
    """:func:`drive`, or why it failed (a peer that hangs or dies mid-run)."""
    try:
        return drive(args, contender, *a, **kw)
    except (subprocess.SubprocessError, ValueError, KeyError) as exc:
        return f"{type(exc).__name__}: {exc}"[:600]


def measure_interleaved(
    args: Any,
    running: dict[str, Contender],
    files: dict[str, Path],
    duration: float,
    rounds: int,
    capacity: dict[str, float],
) -> dict[str, Any]:
    """Measure already started contenders, their windows interleaved (see measure_model)."""
    names = list(running)
    runs: dict[str, dict[str, list]] = {n: {k: [] for k in files} for n in names}
    failed: dict[str, str] = {}
    # round -1: a 1 s warm-up per payload (not kept); then the rounds, order reversed each time
    for r in range(-1, rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            for kind, path in files.items():
                if name in failed:
                    continue
                got = _safe_drive(args, running[name], path, PAYLOADS[kind],
                                  clients=args.clients, duration=duration if r >= 0 else 1.0,
                                  warmup=None if r >= 0 else 0.5)  # fmt: skip
                if isinstance(got, str):
                    failed[name] = got
                elif r >= 0:
                    runs[name][kind].append(got)
    for kind in files:
        if runs.get("serve-edge", {}).get(kind):
            capacity[kind] = statistics.median(g["ok_per_s"] for g in runs["serve-edge"][kind])
    out: dict[str, Any] = {}
    for name in names:
        if name in failed:
            out[name] = {"available": False, "why": failed[name],
                         "command": running[name].command()}  # fmt: skip
            continue
        out[name] = {"available": True, "command": running[name].command()}
        for kind, path in files.items():
            sat = statistics.median(g["ok_per_s"] for g in runs[name][kind])
            half = _safe_drive(args, running[name], path, PAYLOADS[kind], clients=args.clients,
                               duration=duration, rate=0.5 * capacity.get(kind, sat))  # fmt: skip
            out[name][kind] = _payload_summary(runs[name][kind], half)
    for name in names:  # one client: does batching cost a lone client anything?
        if name.startswith("serve-edge") and name not in failed:
            one = _safe_drive(args, running[name], files["tensor"], TENSOR_MEDIA, clients=1,
                              duration=duration)  # fmt: skip
            if not isinstance(one, str):
                out[name]["one_client"] = {"ok_per_s": one["ok_per_s"], **one["latency_ms"]}
    return out


def _payload_summary(got: list[dict[str, Any]], half: dict[str, Any] | str) -> dict[str, Any]:
    """One contender's figures on one payload: saturation rounds and the 50 % window."""
    ok = not isinstance(half, str)
    return {
        "ok_per_s": statistics.median(g["ok_per_s"] for g in got),
        "rounds": [g["ok_per_s"] for g in got],
        "statuses": got[0]["statuses"],
        "refused_share": max(g["refused_share"] for g in got),
        "server_cpu_ms_per_request": statistics.median(
            g["server_cpu_ms_per_request"] or 0.0 for g in got),
        "client_cpu_share": statistics.median(g["client_cpu_share"] for g in got),
        "client_cpu_us_per_request": statistics.median(
            g["client_cpu_us_per_request"] for g in got),
        "saturation_latency_ms": got[0]["latency_ms"],
        "at_50pct": {"offered_per_s": half["offered_per_s"] if ok else None,
                     "ok_per_s": half["ok_per_s"] if ok else None,
                     "p50_ms": half["latency_ms"]["p50"] if ok else None,
                     "p99_ms": half["latency_ms"]["p99"] if ok else None,
                     "statuses": half["statuses"] if ok else half},
        "errors": got[0]["errors"],
    }  # fmt: skip


def _brief(result: dict[str, Any]) -> str:
    if not result.get("available"):
        return "not available: " + result["why"][:200]
    parts = [f"{k} {result[k]['ok_per_s']:.0f}/s p99@50% {result[k]['at_50pct']['p99_ms']}"
             for k in PAYLOADS if k in result]  # fmt: skip
    return "; ".join(parts)


def summarise(results: dict[str, Any], raw: dict[str, Any]) -> dict[str, Any]:
    """Ratios of serve-edge to each peer (per payload), goals, the raw-LiteRT ratio."""
    ours = results.get("serve-edge", {})
    peers = {"ray-serve": ["ray-serve"], "fastapi": ["fastapi-async", "fastapi-thread"],
             "flask-keras": ["flask-keras"]}  # fmt: skip
    ratios: dict[str, Any] = {}
    for peer, variants in peers.items():
        for kind in PAYLOADS:
            got = [results[v][kind]["ok_per_s"] for v in variants
                   if results.get(v, {}).get("available") and kind in results[v]]  # fmt: skip
            if not got or kind not in ours:
                ratios.setdefault(peer, {})[kind] = None
                continue
            if max(got) <= 0:  # the peer answered nothing in the window (Flask + Keras hung)
                ratios.setdefault(peer, {})[kind] = {"ratio": None, "peer_ok_per_s": 0.0,
                                                     "goal": GOALS[peer], "met": True}  # fmt: skip
                continue
            ratio = ours[kind]["ok_per_s"] / max(got)
            ratios.setdefault(peer, {})[kind] = {"ratio": ratio, "peer_ok_per_s": max(got),
                                                 "goal": GOALS[peer],
                                                 "met": ratio >= GOALS[peer]}  # fmt: skip
    p99 = {}
    for kind in PAYLOADS:
        peer_p99 = [r[kind]["at_50pct"]["p99_ms"] for n, r in results.items()
                    if not n.startswith("serve-edge") and r.get("available") and kind in r
                    and r[kind]["at_50pct"]["p99_ms"] is not None]  # fmt: skip
        mine = ours.get(kind, {}).get("at_50pct", {}).get("p99_ms")
        best = min(peer_p99) if peer_p99 else None
        met = None if mine is None or best is None else mine <= best
        p99[kind] = {"ours_ms": mine, "best_peer_ms": best, "met": met}
    return {
        "ratios": ratios,
        "p99_at_50pct": p99,
        "ratio_to_raw": {k: ours[k]["ok_per_s"] / raw["per_s"] for k in PAYLOADS if k in ours},
        "refused_share_default_flags": {
            k: ours[k]["refused_share"] for k in PAYLOADS if k in ours
        },  # fmt: skip
    }


# ------------------------------------------------------------------------- workers


def measure_workers(args: Any, bundle_path: Path, duration: float, rounds: int) -> dict:
    """``serve-edge`` (default flags) with 1 and with ``--workers`` workers, alternated."""
    files, _ = _payloads(bundle_path, args.out)
    rates: dict[int, list[float]] = {1: [], args.workers: []}
    cpu: dict[int, list[float]] = {1: [], args.workers: []}
    server: dict[int, list[float]] = {1: [], args.workers: []}
    clients = max(args.clients, 8 * args.workers)
    for _ in range(rounds):
        for n in rates:
            contender = Contender("serve-edge", bundle_path, args.threshold, ["--workers", str(n)])
            why = contender.start(first_body(files["tensor"]), TENSOR_MEDIA)
            try:
                if why is not None:
                    return {"error": why}
                drive(args, contender, files["tensor"], TENSOR_MEDIA, clients=clients,
                      duration=1.0, warmup=0.5)  # fmt: skip
                run = drive(args, contender, files["tensor"], TENSOR_MEDIA, clients=clients,
                            duration=duration)  # fmt: skip
            finally:
                contender.stop()
            rates[n].append(run["ok_per_s"])
            cpu[n].append(run["client_cpu_share"])
            server[n].append(run["server_cpu_share"])
    one, many = statistics.median(rates[1]), statistics.median(rates[args.workers])
    return {"workers": args.workers, "ok_per_s": {str(k): v for k, v in rates.items()},
            "ratio": many / one, "goal": 1.6, "met": many / one >= 1.6, "clients": clients,
            "client_cpu_share": {str(k): v for k, v in cpu.items()},
            # the servers' share of all cores: one worker already using more than 2/1.6 of
            # what two can use bounds the ratio below the goal whatever the workers do
            "server_cpu_share": {str(k): v for k, v in server.items()},
            "load_after": benchlib.load_average(),
            "client_pinned_to": args.pin_client}  # fmt: skip


# ------------------------------------------------------------------------- main


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


def _goals_met(models: dict[str, Any]) -> bool:
    """Every goal met on every model and payload; a peer that could not run counts as missed."""
    checks = []
    for details in models.values():
        for per_kind in details["ratios"].values():
            checks += [v is not None and v["met"] for v in per_kind.values()]
        checks += [v["met"] for v in details["p99_at_50pct"].values() if v["met"] is not None]
        checks += [share == 0 for share in details["refused_share_default_flags"].values()]
    return bool(checks) and all(checks)


def main(argv: list[str] | None = None) -> int:
    """Run P3 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    if args.quick and args.models == "small,mobilenetv2":
        args.models = "small"
    duration = args.duration or (1.0 if args.quick else 4.0)
    rounds = args.rounds or (1 if args.quick else 2)
    load_before = benchlib.load_average()
    models: dict[str, Any] = {}
    for name, (path, info) in _bundles(args).items():
        models[name] = {"bundle": info, **measure_model(args, path, duration, rounds)}
        _print_model(name, models[name])
    workers = None
    if args.workers and args.workers > 1 and not args.quick:
        small = _bundles(argparse_ns(args, models="small"))["small"][0]
        workers = measure_workers(args, small, duration, rounds)
        print(f"workers: {json.dumps(workers)}", flush=True)
    head_name = next(iter(models))
    head = models[head_name]
    fastapi = head["ratios"]["fastapi"]["tensor"]
    ours = head["contenders"]["serve-edge"]
    result = benchlib.BenchResult(
        bench="P3",
        what=f"serve-edge (default flags) vs the servers a user would write: answers/s with "
        f"{args.clients} keep-alive loopback clients, same edge part, same load generator",
        baseline="FastAPI + uvicorn around the same executor (best of async and thread-pool "
        "endpoints); Ray Serve with @serve.batch, Flask + Keras and raw LiteRT in details",
        headline=benchlib.Headline(
            "P3",
            f"serve-edge / FastAPI+uvicorn throughput ({head_name}, tensor)",
            fastapi["ratio"] if fastapi else float("nan"),
            "x",
            ">= 2x Ray Serve, >= 1.2x FastAPI, >= 5x Flask+Keras, p99@50% <= best peer, "
            "0% 429 (tensor and PNG, every model)",
            _goals_met(models),
            ours=f"{ours['tensor']['ok_per_s']:.0f} answers/s",
            reference=f"{fastapi['peer_ok_per_s']:.0f} answers/s" if fastapi else "n/a",
        ),
        quick=args.quick,
        reduced=[f"{rounds} round(s) of {duration:g} s; contenders {_contenders(args)}"]
        if args.quick
        else [],  # fmt: skip
        details={
            "models": models,
            "workers": workers,
            "clients": args.clients,
            "threshold": args.threshold,
            "duration_s": duration,
            "rounds": rounds,
            "load_before": load_before,
            "load_after": benchlib.load_average(),
        },  # fmt: skip
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


def argparse_ns(args: Any, **changes: Any) -> Any:
    """A copy of ``args`` with ``changes``."""
    import argparse

    return argparse.Namespace(**{**vars(args), **changes})


def _print_model(name: str, details: dict[str, Any]) -> None:
    rows = []
    for contender, result in details["contenders"].items():
        if not result.get("available"):
            rows.append(f"  {contender:20s} NOT AVAILABLE: {result['why'][:160]}")
            continue
        cells = []
        for kind in PAYLOADS:
            r = {k: v for k, v in result[kind].items()}
            half = {k: (float("nan") if v is None else v) for k, v in r["at_50pct"].items()}
            r["at_50pct"] = half
            r["server_cpu_ms_per_request"] = r["server_cpu_ms_per_request"] or float("nan")
            cells.append(f"{kind} {r['ok_per_s']:7.0f}/s cpu {r['server_cpu_ms_per_request']:.3f}"
                         f" ms/req p50/p99@50% {r['at_50pct']['p50_ms']:.1f}/"
                         f"{r['at_50pct']['p99_ms']:.1f} ms 429 {r['refused_share']:.1%} "
                         f"client {r['client_cpu_share']:.0%}")  # fmt: skip
        rows.append(f"  {contender:20s} " + " | ".join(cells))
        if "one_client" in result:
            rows.append(f"  {'':20s} 1 client: p50 {result['one_client']['p50']} ms")
    ratios = {p: {k: (None if v is None or v["ratio"] is None else round(v["ratio"], 2))
                  for k, v in d.items()}
              for p, d in details["ratios"].items()}  # fmt: skip
    print(
        f"{name}: raw LiteRT {details['raw']['per_s']:.0f}/s; ours/peer {ratios}; "
        f"ours/raw {details['ratio_to_raw']}; p99@50% {details['p99_at_50pct']}",
        flush=True,
    )
    print("\n".join(rows), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
