"""Fault injection and load: does the edge service keep answering while the cloud misbehaves?

Starts, on loopback, a cloud part (``experiments/chaos_cloud.py``: the real local cloud server
behind a chaos switch) and the edge service (``edgelesspart serve-edge``) as two processes, then:

1. **Faults.** Sends ``--requests`` inferences (default 10,000) from ``--clients`` concurrent
   clients while a schedule, driven by the number of answered requests, kills the cloud
   (SIGKILL), restarts it, makes it slow past the edge's timeout, answer 500, and answer
   garbage, with healthy phases in between. Every answer is checked: a cloud answer, an edge
   early-exit answer, or an edge answer marked ``degraded`` with a reason. Anything else (no
   answer, 5xx, a malformed body, a 429 still refused after three polite retries) is **lost**.
   Circuit-breaker transitions are read from the edge's ``/metrics`` at each phase boundary,
   the cloud's per-mode request counts from its ``/_chaos`` route, and the edge process's
   resident memory (``/proc/PID/status`` VmRSS) is sampled throughout.
2. **Load.** With a healthy cloud: the sustainable rate is the closed-loop throughput of
   ``--clients`` clients; then open-loop arrivals at 1x, 2x and 4x that rate for ``--load-s``
   seconds each. Latency counts from the scheduled send time (no coordinated omission); p50/p99
   and the 429 rate are reported per level.

Writes ``<out>/fault_harness.json`` (default ``results/reliability/``, git-ignored) and prints a
summary whose last line is the headline. Every request asks for ``threshold=1.0`` so nearly
every row takes the whole edge -> cloud path (the worst case for faults).

Usage::

    .venv/bin/python experiments/fault_harness.py --bundle bundles/demo
    .venv/bin/python experiments/fault_harness.py --requests 300 --load-s 1.5   # quick
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TENSOR = "application/x-edgelesspart-tensor"
#: (mode, share of the requests); "kill" SIGKILLs the cloud, the next "ok" restarts it.
SCHEDULE = (
    ("ok", 0.12),
    ("kill", 0.11),
    ("ok", 0.11),
    ("slow", 0.11),
    ("ok", 0.11),
    ("error", 0.11),
    ("ok", 0.11),
    ("garbage", 0.11),
    ("ok", 0.11),
)
FAULTS = ("kill", "slow", "error", "garbage")


@dataclass(frozen=True)
class HarnessConfig:
    """Settings of one harness run (the edge settings go to it as ``EDGELESSPART_*``)."""

    requests: int = 10_000
    clients: int = 8
    timeout_s: float = 0.25
    retries: int = 1
    breaker_failures: int = 3
    breaker_reset_s: float = 0.5
    max_inflight: int = 4
    max_queue: int = 8
    load_s: float = 8.0
    load_levels: tuple[float, ...] = (1.0, 2.0, 4.0)
    load_clients: int = 48
    rss_interval_s: float = 0.25
    seed: int = 0


@dataclass
class Tally:
    """Outcome counts of a set of requests, with latencies in ms."""

    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, kind: str, latency_ms: float, reason: str | None = None) -> None:
        """Count one request of outcome ``kind``."""
        with self.lock:
            self.counts[kind] += 1
            self.latencies_ms.append(latency_ms)
            self.kinds.append(kind)
            if reason:
                self.reasons[reason.split(":", 1)[0][:60]] += 1


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Poll ``url/healthz`` until it answers 200 (the process must stay alive meanwhile)."""
    import requests

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            if requests.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s} s")


class Services:
    """The chaos cloud and the edge service as child processes on loopback ports."""

    def __init__(self, bundle: Path, config: HarnessConfig, log_dir: Path) -> None:
        self.bundle, self.config, self.log_dir = bundle, config, log_dir
        self.cloud_port, self.edge_port = free_port(), free_port()
        self.cloud_url = f"http://127.0.0.1:{self.cloud_port}"
        self.edge_url = f"http://127.0.0.1:{self.edge_port}"
        self.cloud: subprocess.Popen | None = None
        self.edge: subprocess.Popen | None = None
        self.cloud_starts = 0

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)

    def start_cloud(self) -> None:
        """Start (or restart, on the same port) the chaos cloud and wait until it is healthy."""
        argv = [
            sys.executable,
            str(HERE / "chaos_cloud.py"),
            str(self.bundle),
            "--port",
            str(self.cloud_port),
            "--slow",
            str(4 * self.config.timeout_s),
        ]
        self.cloud = self._spawn("cloud", argv, _child_env({}))
        self.cloud_starts += 1
        wait_healthy(self.cloud_url, self.cloud)

    def kill_cloud(self) -> None:
        """SIGKILL the cloud process (no goodbye to open connections)."""
        if self.cloud is not None and self.cloud.poll() is None:
            self.cloud.kill()
            self.cloud.wait(10)

    def start_edge(self) -> None:
        """Start the edge service pointed at the cloud, with the harness's edge settings."""
        c = self.config
        env = _child_env(
            {
                "EDGELESSPART_OFFLOAD_TIMEOUT": str(c.timeout_s),
                "EDGELESSPART_OFFLOAD_RETRIES": str(c.retries),
                "EDGELESSPART_BREAKER_FAILURES": str(c.breaker_failures),
                "EDGELESSPART_BREAKER_RESET": str(c.breaker_reset_s),
                "EDGELESSPART_MAX_INFLIGHT": str(c.max_inflight),
                "EDGELESSPART_MAX_QUEUE": str(c.max_queue),
            }
        )
        argv = [
            sys.executable,
            "-m",
            "edgelesspart.cli",
            "serve-edge",
            str(self.bundle),
            "--port",
            str(self.edge_port),
            "--cloud",
            self.cloud_url,
        ]
        self.edge = self._spawn("edge", argv, env)
        wait_healthy(self.edge_url, self.edge)

    def set_mode(self, mode: str) -> dict[str, Any]:
        """Switch the chaos mode of the running cloud; return its per-mode counts."""
        import requests

        reply = requests.post(f"{self.cloud_url}/_chaos", json={"mode": mode}, timeout=5)
        return reply.json()

    def stop(self) -> None:
        """Terminate both processes."""
        for process in (self.edge, self.cloud):
            if process is not None and process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()


def _child_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELESSPART_")}
    env.update(extra, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


class RssSampler(threading.Thread):
    """Samples a process's resident set size (MiB) every ``interval_s`` (Linux /proc)."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True, name="rss")
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._t0 = time.monotonic()

    def read(self) -> float | None:
        """Current VmRSS in MiB, or ``None`` where /proc is not available."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return None

    def run(self) -> None:
        while not self._stop.wait(self.interval_s):
            value = self.read()
            if value is not None:
                self.samples.append((time.monotonic() - self._t0, value))

    def stop(self) -> dict[str, Any]:
        """Stop sampling; summarise start, peak and end (MiB) and the growth."""
        self._stop.set()
        self.join(5)
        values = [v for _, v in self.samples]
        if not values:
            return {"available": False}
        head = values[: max(1, len(values) // 10)]
        tail = values[-max(1, len(values) // 10) :]
        start, end = float(np.median(head)), float(np.median(tail))
        return {
            "available": True,
            "samples": len(values),
            "start_mib": round(start, 1),
            "peak_mib": round(max(values), 1),
            "end_mib": round(end, 1),
            "growth_mib": round(end - start, 1),
        }


class Client:
    """Sends one-row inferences to the edge and classifies the answers (thread-safe)."""

    def __init__(self, edge_url: str, bundle: Path, count: int = 16, seed: int = 0) -> None:
        from edgelesspart.runtime.codecs import encode_tensor
        from edgelesspart.runtime.manifest import load_manifest

        manifest = load_manifest(bundle, verify=False)
        spec = manifest.input.tensor
        rng = np.random.default_rng(seed)
        shape = (1, *[int(d) for d in spec.shape])
        self.payloads = [
            encode_tensor(
                rng.random(shape).astype(spec.dtype), meta={"bundle_id": manifest.bundle_id}
            )
            for _ in range(count)
        ]
        self.edge_stage = manifest.stage_names[0]
        self.url = f"{edge_url}/v1/infer?threshold=1.0"
        self._local = threading.local()

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session

    def send(self, i: int) -> tuple[int, Any, dict[str, str]]:
        """POST payload ``i``; return (status, JSON body or None, headers); status 0: no reply."""
        import requests

        try:
            reply = self._session().post(
                self.url,
                data=self.payloads[i % len(self.payloads)],
                headers={"Content-Type": TENSOR},
                timeout=10.0,
            )
        except requests.RequestException as exc:
            return 0, {"error": str(exc)}, {}
        try:
            body = reply.json()
        except ValueError:
            body = None
        return reply.status_code, body, dict(reply.headers)

    def classify(self, status: int, body: Any) -> tuple[str, str | None]:
        """``cloud``, ``edge`` (early exit), ``degraded``, ``busy`` (429) or ``lost``."""
        if status == 429:
            return "busy", None
        if status != 200 or not isinstance(body, dict):
            return "lost", f"status {status}"
        answers = body.get("answers")
        if not isinstance(answers, list) or len(answers) != 1 or not isinstance(answers[0], dict):
            return "lost", "malformed answers"
        answer = answers[0]
        if answer.get("degraded") is True:
            reason = answer.get("reason")
            if isinstance(reason, str) and reason and answer.get("stage") == self.edge_stage:
                return "degraded", reason
            return "lost", "degraded answer without a reason"
        if not isinstance(answer.get("label"), int) or not answer.get("exit"):
            return "lost", "answer without label or exit"
        return ("edge" if answer.get("stage") == self.edge_stage else "cloud"), None

    def ask(self, i: int, polite_retries: int = 3) -> tuple[str, str | None, float]:
        """Send payload ``i``, retrying a 429 after its Retry-After; (kind, reason, ms)."""
        start = time.perf_counter()
        for _ in range(polite_retries + 1):
            status, body, headers = self.send(i)
            kind, reason = self.classify(status, body)
            if kind != "busy":
                break
            time.sleep(min(float(headers.get("Retry-After", "1")), 1.0))
        if kind == "busy":
            kind, reason = "lost", "429 after retries"
        return kind, reason, (time.perf_counter() - start) * 1000.0


def scrape(edge_url: str) -> dict[str, Any]:
    """Breaker state and transitions, 429 refusals and degraded answers from ``/metrics``."""
    import re

    import requests

    text = requests.get(f"{edge_url}/metrics", timeout=5).text
    out: dict[str, Any] = {"transitions": {}, "state": None, "rejected": 0.0, "degraded": 0.0}
    for line in text.splitlines():
        if line.startswith("edgelesspart_breaker_transitions{"):
            pair = re.search(r'from="([^"]+)",to="([^"]+)"', line)
            if pair:
                out["transitions"][f"{pair[1]}->{pair[2]}"] = int(float(line.rsplit(" ", 1)[1]))
        elif line.startswith("edgelesspart_breaker_state{") and line.endswith(" 1"):
            out["state"] = re.search(r'state="([^"]+)"', line)[1]
        elif line.startswith("edgelesspart_rejected_total"):
            out["rejected"] += float(line.rsplit(" ", 1)[1])
        elif line.startswith("edgelesspart_degraded_answers_total"):
            out["degraded"] += float(line.rsplit(" ", 1)[1])
    return out


def _delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    keys = set(after) | set(before)
    return {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)}


class FaultRun:
    """Drives the chaos schedule from the request counter while clients keep sending."""

    def __init__(self, services: Services, client: Client, config: HarnessConfig) -> None:
        self.services, self.client, self.config = services, client, config
        shares = np.array([share for _, share in SCHEDULE], dtype=float)
        bounds = np.floor(np.cumsum(shares / shares.sum()) * config.requests).astype(int)
        self.starts = [0, *bounds[:-1].tolist()]
        self.tallies = [Tally() for _ in SCHEDULE]
        self.marks: list[dict[str, Any]] = [{} for _ in SCHEDULE]
        self._next = 0
        self._lock = threading.Lock()

    def _take(self) -> int | None:
        with self._lock:
            if self._next >= self.config.requests:
                return None
            i, self._next = self._next, self._next + 1
            return i

    def _phase_of(self, i: int) -> int:
        return int(np.searchsorted(self.starts, i, side="right") - 1)

    def _enter(self, k: int) -> None:
        """Apply phase ``k``'s fault (runs in the client that drew the phase's first index)."""
        mode = SCHEDULE[k][0]
        mark: dict[str, Any] = {"t": time.monotonic(), "edge": scrape(self.services.edge_url)}
        if mode == "kill":
            mark["cloud"] = self.services.set_mode("ok")
            self.services.kill_cloud()
        else:
            if self.services.cloud is None or self.services.cloud.poll() is not None:
                self.services.start_cloud()
                mark["restarted"] = True
            mark["cloud"] = self.services.set_mode(mode)
        self.marks[k] = mark

    def _worker(self) -> None:
        while (i := self._take()) is not None:
            k = self._phase_of(i)
            if i == self.starts[k] and k > 0:
                self._enter(k)
            kind, reason, ms = self.client.ask(i)
            self.tallies[k].add(kind, ms, reason)

    def run(self) -> list[dict[str, Any]]:
        """Send every request; return one summary per phase."""
        self.marks[0] = {
            "t": time.monotonic(),
            "edge": scrape(self.services.edge_url),
            "cloud": self.services.set_mode(SCHEDULE[0][0]),
        }
        threads = [threading.Thread(target=self._worker) for _ in range(self.config.clients)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        time.sleep(self.config.breaker_reset_s + 0.1)
        self.client.ask(0)  # one more call lets a half-open breaker close before the scrape
        end = {
            "t": time.monotonic(),
            "edge": scrape(self.services.edge_url),
            "cloud": self.services.set_mode("ok"),
        }
        return [self._phase(k, end) for k in range(len(SCHEDULE))]

    def _phase(self, k: int, end: dict[str, Any]) -> dict[str, Any]:
        mark = self.marks[k]
        after = self.marks[k + 1] if k + 1 < len(SCHEDULE) else end
        tally = self.tallies[k]
        mode = SCHEDULE[k][0]
        seen = None
        if mode in ("slow", "error", "garbage") and after.get("cloud") and mark.get("cloud"):
            seen = after["cloud"]["seen"][mode] - mark["cloud"]["seen"][mode]
        duration = after["t"] - mark["t"]
        return {
            "mode": mode,
            "restarted_cloud": bool(mark.get("restarted")),
            "requests": sum(tally.counts.values()),
            "outcomes": dict(tally.counts),
            "degraded_reasons": dict(tally.reasons.most_common(6)),
            "duration_s": round(duration, 2),
            "breaker": _delta(after["edge"]["transitions"], mark["edge"]["transitions"]),
            "breaker_state_after": after["edge"]["state"],
            "cloud_calls_in_mode": seen,
            "cloud_calls_bound": self._call_bound(duration) if seen is not None else None,
            "p50_ms": _pct(tally.latencies_ms, 50),
            "p99_ms": _pct(tally.latencies_ms, 99),
        }

    def _call_bound(self, duration_s: float) -> int:
        """Most calls a failing cloud may see in a phase if the breaker works as specified.

        Closed: ``breaker_failures`` failed calls, each tried ``retries + 1`` times, plus the
        calls already in flight (``clients``, at most ``retries + 1`` attempts each). Open: one
        half-open trial per ``breaker_reset_s``.
        """
        c = self.config
        attempts = c.retries + 1
        trials = int(np.ceil(duration_s / c.breaker_reset_s)) + 1
        return (c.breaker_failures + c.clients) * attempts + trials


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 2) if values else None


def closed_loop(client: Client, clients: int, seconds: float) -> dict[str, Any]:
    """``clients`` clients back to back for ``seconds``: the sustainable rate (answers/s)."""
    tally = Tally()
    stop = time.monotonic() + seconds
    counter = iter(range(10**9))

    def worker() -> None:
        while time.monotonic() < stop:
            status, body, _ = client.send(next(counter))
            kind, _ = client.classify(status, body)
            tally.add(kind, 0.0)

    start = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(worker)
    elapsed = time.monotonic() - start
    answered = sum(n for kind, n in tally.counts.items() if kind not in ("busy", "lost"))
    return {
        "clients": clients,
        "seconds": round(elapsed, 2),
        "answered": answered,
        "rate_per_s": round(answered / elapsed, 1),
        "outcomes": dict(tally.counts),
    }


def open_loop(client: Client, rate: float, seconds: float, pool_size: int) -> dict[str, Any]:
    """Poisson-free open loop: one request every ``1/rate`` s; latency from the scheduled time."""
    tally = Tally()
    total = max(1, int(rate * seconds))
    t0 = time.perf_counter() + 0.05

    def one(i: int, due: float) -> None:
        status, body, _ = client.send(i)
        kind, _ = client.classify(status, body)
        tally.add(kind, (time.perf_counter() - due) * 1000.0)

    with ThreadPoolExecutor(pool_size) as pool:
        for i in range(total):
            due = t0 + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            pool.submit(one, i, due)
    elapsed = time.perf_counter() - t0
    n = sum(tally.counts.values())
    ok = [lat for lat, kind in zip(tally.latencies_ms, tally.kinds) if kind != "busy"]
    return {
        "target_rate_per_s": round(rate, 1),
        "sent": n,
        "elapsed_s": round(elapsed, 2),
        "answered_per_s": round((n - tally.counts["busy"] - tally.counts["lost"]) / elapsed, 1),
        "outcomes": dict(tally.counts),
        "rate_429": round(tally.counts["busy"] / n, 4),
        "error_rate": round((tally.counts["busy"] + tally.counts["lost"]) / n, 4),
        "p50_ms": _pct(tally.latencies_ms, 50),
        "p99_ms": _pct(tally.latencies_ms, 99),
        "answered_p50_ms": _pct(ok, 50),
        "answered_p99_ms": _pct(ok, 99),
    }
