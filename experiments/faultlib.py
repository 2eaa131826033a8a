"""Building blocks of ``experiments/fault_harness.py``: processes, a checking client, RSS, metrics.

* :class:`Services` runs the chaos cloud (``experiments/chaos_cloud.py``) and the edge service
  (``edgelesspart serve-edge``) as child processes on loopback ports; the cloud can be
  SIGKILLed, restarted on the same port and switched between chaos modes.
* :class:`Client` sends one-row inferences to the edge and classifies every reply as ``cloud``,
  ``edge`` (early exit), ``degraded`` (edge answer with a reason), ``busy`` (429) or ``lost``.
* :class:`RssSampler` samples the edge process's resident memory from ``/proc``.
* :func:`scrape` reads the breaker state and transitions from the edge's ``/metrics``.

Nothing here imports TensorFlow; the client encodes tensors with the runtime core's codecs.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TENSOR = "application/x-edgelesspart-tensor"


@dataclass(frozen=True)
class EdgeSettings:
    """The edge service's settings under test (passed to it as ``EDGELESSPART_*``)."""

    timeout_s: float = 0.25
    retries: int = 1
    breaker_failures: int = 3
    breaker_reset_s: float = 0.5
    max_inflight: int = 4
    max_queue: int = 8
    offload_workers: int = 4
    #: Largest HTTP offload body: small, so that an ``overlimit`` request of
    #: :data:`OVERLIMIT_ROWS` rows must be split into several chunks (raw codec: sizes are exact).
    offload_max_bytes: int = 40_000
    codec: str = "raw"

    def env(self) -> dict[str, str]:
        """The environment variables that configure ``serve-edge`` this way."""
        return {
            "EDGELESSPART_OFFLOAD_MAX_BYTES": str(self.offload_max_bytes),
            "EDGELESSPART_CODEC": self.codec,
            "EDGELESSPART_OFFLOAD_TIMEOUT": str(self.timeout_s),
            "EDGELESSPART_OFFLOAD_RETRIES": str(self.retries),
            "EDGELESSPART_BREAKER_FAILURES": str(self.breaker_failures),
            "EDGELESSPART_BREAKER_RESET": str(self.breaker_reset_s),
            "EDGELESSPART_MAX_INFLIGHT": str(self.max_inflight),
            "EDGELESSPART_MAX_QUEUE": str(self.max_queue),
            "EDGELESSPART_OFFLOAD_WORKERS": str(self.offload_workers),
        }


@dataclass
class Tally:
    """Outcome counts of a set of requests, with latencies in ms (thread-safe)."""

    counts: Counter = field(default_factory=Counter)
    reasons: Counter = field(default_factory=Counter)
    statuses: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    missing_retry_after: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(
        self, kind: str, latency_ms: float, reason: str | None = None, status: int | None = None
    ) -> None:
        """Count one request of outcome ``kind`` (and its HTTP status, 0 = no reply)."""
        with self.lock:
            self.counts[kind] += 1
            self.latencies_ms.append(latency_ms)
            self.kinds.append(kind)
            if status is not None:
                self.statuses[str(status)] += 1
            if reason:
                kind = reason_kind(reason)
                self.reasons[kind] += 1
                short = reason if len(reason) <= 400 else f"{reason[:200]} ... {reason[-180:]}"
                self.examples.setdefault(kind, short)

    def refused_without_retry_after(self) -> None:
        """Count a 429 that did not say when to retry (a backpressure bug)."""
        with self.lock:
            self.missing_retry_after += 1


def reason_kind(reason: str) -> str:
    """The reason's category: the text before its first colon (e.g. ``OffloadTimeout``), with
    refusals by an open or half-open circuit breaker told apart from failed calls."""
    kind = reason.split(":", 1)[0].strip()[:60]
    if "Circuit breaker is" in reason:
        kind += " (breaker open)"
    return kind


def pct(values: list[float], q: float) -> float | None:
    """The ``q``-th percentile of ``values`` rounded to 0.01 (``None`` when empty)."""
    return round(float(np.percentile(values, q)), 2) if values else None


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_healthy(url: str, process: subprocess.Popen, timeout_s: float = 90.0) -> None:
    """Poll ``url/healthz`` until it answers 200 (the process must stay alive meanwhile).

    Raises:
        RuntimeError: the process exited, or it did not become healthy in ``timeout_s``.
    """
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
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not become healthy within {timeout_s} s")


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This environment without any ``EDGELESSPART_*`` setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGELESSPART_")}
    env.update(extra, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return env


class Services:
    """The chaos cloud and the edge service as child processes on loopback ports."""

    def __init__(self, bundle: Path, edge: EdgeSettings, log_dir: Path) -> None:
        self.bundle, self.settings, self.log_dir = Path(bundle), edge, Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.cloud_port, self.edge_port = free_port(), free_port()
        self.cloud_url = f"http://127.0.0.1:{self.cloud_port}"
        self.edge_url = f"http://127.0.0.1:{self.edge_port}"
        self.cloud: subprocess.Popen | None = None
        self.edge: subprocess.Popen | None = None
        self._children: list[subprocess.Popen] = []
        self.cloud_starts = 0
        self.cloud_kills = 0
        self.restart_s: list[float] = []

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.log_dir / f"{name}.log", "ab") as log:  # the child keeps its own copy
            child = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        self._children.append(child)
        return child

    def spawn_cloud(self) -> None:
        """Start the chaos cloud on its port (returns at once; see :meth:`wait_cloud`).

        A cloud still running is killed first: there is only ever one.
        """
        self.kill_cloud()
        argv = [
            sys.executable,
            str(HERE / "chaos_cloud.py"),
            str(self.bundle),
            "--port",
            str(self.cloud_port),
            "--slow",
            str(4 * self.settings.timeout_s),
        ]
        self._cloud_t0 = time.monotonic()
        self.cloud = self._spawn("cloud", argv, child_env({}))
        self.cloud_starts += 1

    def wait_cloud(self) -> None:
        """Block until the cloud answers ``/healthz``; record how long the start took."""
        assert self.cloud is not None, "spawn_cloud() first"
        wait_healthy(self.cloud_url, self.cloud)
        self.restart_s.append(round(time.monotonic() - self._cloud_t0, 2))

    def cloud_alive(self) -> bool:
        """Whether the cloud process is running."""
        return self.cloud is not None and self.cloud.poll() is None

    def kill_cloud(self) -> None:
        """SIGKILL the cloud process (no goodbye to open connections)."""
        if self.cloud_alive():
            self.cloud.kill()
            self.cloud.wait(10)
            self.cloud_kills += 1

    def start_edge(self) -> None:
        """Start the edge service pointed at the cloud and wait until it is healthy."""
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
        self.edge = self._spawn("edge", argv, child_env(self.settings.env()))
        wait_healthy(self.edge_url, self.edge)

    def set_mode(self, mode: str) -> dict[str, Any]:
        """Switch the chaos mode of the running cloud; return its mode and per-mode counts."""
        import requests

        return requests.post(f"{self.cloud_url}/_chaos", json={"mode": mode}, timeout=5).json()

    def stop(self) -> None:
        """Terminate every process this object started (kill any that ignores it for 10 s)."""
        for process in self._children:
            if process.poll() is None:
                process.terminate()
                try:
                    process.wait(10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)


class RssSampler(threading.Thread):
    """Samples a process's resident set size (MiB) every ``interval_s`` (Linux ``/proc``)."""

    def __init__(self, pid: int, interval_s: float) -> None:
        super().__init__(daemon=True, name="rss")
        self.pid, self.interval_s = pid, interval_s
        self.samples: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def read(self) -> float | None:
        """Current VmRSS in MiB, or ``None`` where ``/proc`` is not available."""
        try:
            text = Path(f"/proc/{self.pid}/status").read_text()
        except OSError:
            return None
        for line in text.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
        return None

    def run(self) -> None:
        while True:
            value = self.read()
            if value is not None:
                self.samples.append((time.monotonic() - self._t0, value))
            if self._halt.wait(self.interval_s):
                return

    def mark(self) -> float | None:
        """The RSS now (MiB), also recorded as a sample."""
        value = self.read()
        if value is not None:
            self.samples.append((time.monotonic() - self._t0, value))
        return value

    def stop(self) -> dict[str, Any]:
        """Stop sampling; summarise min, max, start and end (medians of the first and last
        tenth of the samples) and the growth end - start, all in MiB."""
        self._halt.set()
        self.join(5)
        values = [v for _, v in self.samples]
        if not values:
            return {"available": False}
        tenth = max(1, len(values) // 10)
        start, end = float(np.median(values[:tenth])), float(np.median(values[-tenth:]))
        return {
            "available": True,
            "samples": len(values),
            "min_mib": round(min(values), 1),
            "max_mib": round(max(values), 1),
            "start_mib": round(start, 1),
            "end_mib": round(end, 1),
            "growth_mib": round(end - start, 1),
        }


#: Rows of one request in the ``overlimit`` phase (its offload exceeds the edge's limit).
OVERLIMIT_ROWS = 8


class Client:
    """Sends inferences to the edge and classifies the answers (thread-safe).

    Every request asks for ``threshold`` (default 1.0, so nearly every row takes the whole
    edge -> cloud path: the worst case for faults). Requests carry one row, or
    :data:`OVERLIMIT_ROWS` rows with ``rows=OVERLIMIT_ROWS``; a request's outcome is its worst
    row's (lost > degraded > cloud > edge).
    """

    def __init__(
        self, edge_url: str, bundle: Path, count: int = 16, seed: int = 0, threshold: float = 1.0
    ) -> None:
        from edgelesspart.runtime.codecs import encode_tensor
        from edgelesspart.runtime.manifest import load_manifest

        manifest = load_manifest(bundle, verify=False)
        spec = manifest.input.tensor
        rng = np.random.default_rng(seed)
        shape = (1, *[int(d) for d in spec.shape])
        self.payloads = {
            rows: [
                encode_tensor(
                    rng.random((rows, *shape[1:])).astype(spec.dtype),
                    meta={"bundle_id": manifest.bundle_id},
                )
                for _ in range(count)
            ]
            for rows in (1, OVERLIMIT_ROWS)
        }
        self.edge_stage = manifest.stage_names[0]
        self.url = f"{edge_url}/v1/infer?threshold={threshold}"
        self._local = threading.local()

    def _session(self) -> Any:
        session = getattr(self._local, "session", None)
        if session is None:
            import requests

            session = self._local.session = requests.Session()
        return session

    def send(self, i: int, rows: int = 1) -> tuple[int, Any, dict[str, str]]:
        """POST payload ``i``; return (status, JSON body or None, headers); status 0: no reply."""
        import requests

        payloads = self.payloads[rows]
        try:
            reply = self._session().post(
                self.url,
                data=payloads[i % len(payloads)],
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

    def classify(self, status: int, body: Any, rows: int = 1) -> tuple[str, str | None]:
        """``cloud``, ``edge`` (early exit), ``degraded``, ``busy`` (429) or ``lost``."""
        if status == 429:
            return "busy", None
        if status != 200 or not isinstance(body, dict):
            return "lost", f"status {status}"
        answers = body.get("answers")
        if not isinstance(answers, list) or len(answers) != rows:
            return "lost", "malformed answers"
        kinds = [self._classify_answer(a) for a in answers]
        for worst in ("lost", "degraded", "cloud", "edge"):
            for kind, reason in kinds:
                if kind == worst:
                    return kind, reason
        return "lost", "no answer"

    def _classify_answer(self, answer: Any) -> tuple[str, str | None]:
        if not isinstance(answer, dict):
            return "lost", "malformed answers"
        if answer.get("degraded") is True:
            reason = answer.get("reason")
            if isinstance(reason, str) and reason and answer.get("stage") == self.edge_stage:
                return "degraded", reason
            return "lost", "degraded answer without a reason"
        if not isinstance(answer.get("label"), int) or not answer.get("exit"):
            return "lost", "answer without label or exit"
        return ("edge" if answer.get("stage") == self.edge_stage else "cloud"), None

    def ask(self, i: int, tally: Tally, polite_retries: int = 3, rows: int = 1) -> str:
        """Send payload ``i``, retrying a 429 after its Retry-After; count it in ``tally``.

        A request still refused after ``polite_retries`` retries is counted ``lost``.
        """
        start = time.perf_counter()
        for _ in range(polite_retries + 1):
            status, body, headers = self.send(i, rows)
            kind, reason = self.classify(status, body, rows)
            if kind != "busy":
                break
            if "Retry-After" not in headers:
                tally.refused_without_retry_after()
            time.sleep(min(float(headers.get("Retry-After", "1")), 1.0))
        if kind == "busy":
            kind, reason = "lost", "429 after retries"
        tally.add(kind, (time.perf_counter() - start) * 1000.0, reason, status)
        return kind


def scrape(edge_url: str) -> dict[str, Any]:
    """Breaker state and transitions, 429 refusals and degraded answers from ``/metrics``."""
    import requests

    text = requests.get(f"{edge_url}/metrics", timeout=5).text
    out: dict[str, Any] = {"transitions": {}, "state": None, "rejected": 0.0, "degraded": 0.0}
    for line in text.splitlines():
        if line.startswith("edgelesspart_breaker_transitions_total{"):
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


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """``after - before`` per key (missing keys count 0); zero entries dropped."""
    keys = set(after) | set(before)
    diff = {k: after.get(k, 0) - before.get(k, 0) for k in sorted(keys)}
    return {k: v for k, v in diff.items() if v}
