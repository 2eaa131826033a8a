"""The HTTP load generator that drives every P3 contender (asyncio, keep-alive, closed/open loop).

One process, one event loop (uvloop when installed), ``clients`` keep-alive connections, each
with one request in flight at a time (no pipelining). Requests are pre-built bytes (a request
line, ``Host``, ``Content-Type``, ``Content-Length`` and the body), so the generator spends as
little CPU per request as a Python client can: on a 2-core host its CPU is part of what every
server competes with, and it is reported (``client_cpu_share``) for every run.

* Closed loop (``rate`` 0): every connection sends its next request as soon as the previous
  answer arrived: the throughput is the server's capacity at ``clients`` concurrent clients.
* Open loop (``rate`` > 0): request ``k`` is due at ``begin + k / rate`` and is sent by the
  next free connection; its latency counts from the due time, so queueing shows (p50/p99).

Run as ``python experiments/loadgen.py JSON_SPEC`` it prints one JSON result line (the
benchmarks run it in a child process, so it never shares the server's GIL).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np


def request_bytes(url: str, path: str, content_type: str, body: bytes) -> bytes:
    """One complete keep-alive ``POST`` request as bytes."""
    host = urlparse(url)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host.hostname}:{host.port}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response; return its status code."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    at = lower.find(b"content-length:")
    if at >= 0:
        end = lower.find(b"\r\n", at)
        await reader.readexactly(int(lower[at + 15 : end]))
    elif b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def _drive(spec: dict[str, Any], payloads: list[bytes]) -> dict[str, Any]:  # noqa: C901
    url = urlparse(spec["url"])
    clients, duration, rate = int(spec["clients"]), float(spec["duration"]), float(spec["rate"])
    warmup = float(spec.get("warmup", 1.0))
    loop = asyncio.get_running_loop()
    begin = loop.time() + warmup
    end = begin + duration
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    errors: list[str] = []
    queue: asyncio.Queue | None = asyncio.Queue() if rate > 0 else None

    async def pace() -> None:
        k, start = 0, begin - warmup
        while True:
            due = start + k / rate
            if due >= end:
                for _ in range(clients):
                    queue.put_nowait(None)  # type: ignore[union-attr]
                return
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            queue.put_nowait((k, due))  # type: ignore[union-attr]
            k += 1

    async def client(c: int) -> None:
        reader, writer = await asyncio.open_connection(url.hostname, url.port)
        i = c
        try:
            while True:
                if queue is None:
                    due = loop.time()
                    if due >= end:
                        return
                else:
                    item = await queue.get()
                    if item is None:
                        return
                    i, due = item
                writer.write(payloads[i % len(payloads)])
                status = await _read_response(reader)
                done = loop.time()
                i += clients
                if begin <= done <= end:
                    statuses[status] = statuses.get(status, 0) + 1
                    latencies.append((done - due) * 1000.0)
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            writer.close()

    tasks = [asyncio.ensure_future(client(c)) for c in range(clients)]
    if queue is not None:
        tasks.append(asyncio.ensure_future(pace()))
    await asyncio.sleep(max(0.0, begin - loop.time()))
    cpu0, wall0 = time.process_time(), time.perf_counter()
    # answers still outstanding 10 s after the window are abandoned (and counted): a server
    # that hangs must not hang the benchmark
    _, late = await asyncio.wait(tasks, timeout=max(0.0, end - loop.time()) + 10.0)
    for task in late:
        task.cancel()
    if late:
        errors.append(f"{len(late)} connection(s) still waiting 10 s after the window")
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    ordered = np.sort(np.asarray(latencies)) if latencies else None

    def pct(q: float) -> float | None:
        return None if ordered is None else float(np.percentile(ordered, q, method="nearest"))

    ok = statuses.get(200, 0)
    return {
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "ok_per_s": ok / duration,
        "refused_share": statuses.get(429, 0) / max(1, sum(statuses.values())),
        "offered_per_s": rate or None,
        "latency_ms": {
            "p50": pct(50),
            "p90": pct(90),
            "p99": pct(99),
            "mean": None if ordered is None else float(ordered.mean()),
        },  # fmt: skip
        "client_cpu_share": cpu / (max(wall, duration) * (os.cpu_count() or 1)),
        "client_cpu_us_per_request": 1e6 * cpu / max(1, sum(statuses.values())),
        "errors": errors[:5],
        "clients": clients,
        "duration_s": duration,
    }


def run(spec: dict[str, Any]) -> dict[str, Any]:
    """Drive ``spec["url"] + spec["path"]`` as ``spec`` says; the result dict.

    ``spec``: url, path, content_type, bodies (a file written by :func:`save_bodies`),
    clients, duration, rate (0 = closed loop), warmup, pin (a CPU index, or None).
    """
    if spec.get("pin") is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {int(spec["pin"])})
    bodies = _load_bodies(spec["bodies"])
    payloads = [request_bytes(spec["url"], spec["path"], spec["content_type"], b) for b in bodies]
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_drive(spec, payloads))
    finally:
        loop.close()


def save_bodies(path: Path, bodies: list[bytes]) -> Path:
    """Store request bodies for the generator (one byte array and offsets; no pickle)."""
    offsets = np.cumsum([0] + [len(b) for b in bodies]).astype(np.int64)
    np.savez(path, data=np.frombuffer(b"".join(bodies), dtype=np.uint8), offsets=offsets)
    return path


def _load_bodies(path: str) -> list[bytes]:
    with np.load(path, allow_pickle=False) as saved:
        data, offsets = saved["data"].tobytes(), saved["offsets"]
    return [data[offsets[i] : offsets[i + 1]] for i in range(len(offsets) - 1)]


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
