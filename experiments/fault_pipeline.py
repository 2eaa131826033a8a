"""Fault experiment for the Ray services: do stages of realistic size come back, and does every
request get an answer?

Starts a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a head without
stages plus one node per stage, each advertising its own resource ``n0``, ``n1``, ...; one CPU
each), serves a 3-stage bundle whose **stage files are several MB** (a dense chain built here, about
6.5 MB per stage by default) through ``serve-pipeline``'s app (``Pipeline`` + Flask over real
loopback HTTP), and streams requests from ``--clients`` closed-loop clients while a fault hits
the node of stage 1:

* ``actor_kill``   -- SIGKILL of the stage actor (``ray.kill(no_restart=False)``);
* ``node_replace`` -- its node is removed; a replacement with the same resource joins after
  ``--replace-after`` seconds;
* ``node_spare``   -- its node is removed and never replaced; a spare node (resource ``spare``)
  is there from the start and the pipeline runs with ``--spare spare``;
* ``outage``       -- its node is removed and the replacement joins only after ``--outage`` s
  (longer than the request deadline: clear 503s are expected, never a lost request).

Every reply is classified: **answered** (200, first attempt), **late** (200 after a retry),
**clear error** (503 with ``Retry-After`` or 504, JSON error body), or **lost** (no reply, or
anything else). ``/readyz`` is polled throughout. **Recovery** is the time from the replacement
node joining (or the kill / the spare re-placement starting) to the first 200 answered after it.

Writes ``<out>/fault_pipeline.json`` (default ``results/reliability/``, git-ignored) and prints a
table. ``--quick`` uses 1.6 MB stage files, shorter phases and a 20 s outage.

Usage::

    .venv/bin/python experiments/fault_pipeline.py            # the README figures
    .venv/bin/python experiments/fault_pipeline.py --quick    # CI-sized
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SCENARIOS = ("actor_kill", "node_replace", "node_spare", "outage")
STAGES = 3
VICTIM = 1  # the stage whose actor / node fails


@dataclass
class Reply:
    """One request as the client saw it."""

    sent: float
    done: float
    status: int | None
    kind: str  # answered | late | clear_error | lost
    attempts: int = 0


@dataclass
class ScenarioResult:
    """Counts and times of one scenario."""

    scenario: str
    sent: int = 0
    answered: int = 0
    late: int = 0
    clear_errors: int = 0
    lost: int = 0
    answered_200_within_deadline_pct: float = 0.0
    fault_at_s: float = 0.0
    replacement_at_s: float | None = None
    recovery_s: float | None = None
    ready_false_s: float | None = None
    ready_true_again_s: float | None = None
    readyz_went_false: bool = False
    readyz_true_at_end: bool = False
    max_latency_s: float = 0.0
    answers_per_s_before: float = 0.0
    answers_per_s_after_recovery: float = 0.0
    stage_metrics: dict[str, Any] = field(default_factory=dict)
    log_lines: dict[str, int] = field(default_factory=dict)


# ----------------------------------------------------------------------------------- the model


def build_bundle(out: Path, width: int) -> dict[str, Any]:
    """A 3-stage dense chain (input 16x16x3) whose stage files hold ``width``² float32 weights
    each (width 1280: about 6.5 MB per stage file), exported through the real chain export."""
    from edgelesspart._lazy import keras
    from edgelesspart.pipeline.export import export_chain
    from edgelesspart.runtime.plan import Plan, Stage

    k = keras()
    k.utils.set_random_seed(0)
    inputs = k.Input((16, 16, 3), name="x")
    h = k.layers.Flatten(name="flat")(inputs)
    h = k.layers.Dense(width, activation="relu", name="d0")(h)
    h = k.layers.Dense(width, activation="relu", name="d1")(h)
    h = k.layers.Dense(width, activation="relu", name="d2")(h)
    h = k.layers.Dense(width, activation="relu", name="d3")(h)
    outputs = k.layers.Dense(10, activation="softmax", name="probs")(h)
    model = k.Model(inputs, outputs, name="dense_chain")
    cuts = ("d1", "d2")
    bounds = ("input", *cuts, "output")
    plan = Plan(
        constraint="pipeline",
        placement="none",
        stages=tuple(
            Stage(f"stage{i}", "host", bounds[i], bounds[i + 1], options={"codec_out": c})
            for i, c in enumerate(("raw", "raw", None))
        ),
        cut_points=cuts,
        rationale="fault experiment: three stages of several MB each",
    )
    x = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    export_chain(
        model,
        plan,
        out,
        probe=x[:2],
        classes=tuple(str(i) for i in range(10)),
        preprocessing={"height": 16, "width": 16, "channels": 3, "scale": 1 / 255, "offset": 0.0},
        model_info={"name": "dense_chain", "source": "experiments/fault_pipeline.py"},
        overwrite=True,
    )
    sizes = sorted(p.stat().st_size for p in out.rglob("*.tflite"))
    return {"width": width, "stage_file_bytes": sizes}


def ensure_bundle(cache: Path, width: int) -> tuple[Path, dict[str, Any]]:
    """The bundle for ``width``, built once and cached under ``cache``."""
    out = cache / f"dense-chain-{width}"
    info = out / "fault_info.json"
    if not info.exists():
        meta = build_bundle(out, width)
        info.write_text(json.dumps(meta), "utf-8")
    return out, json.loads(info.read_text("utf-8"))


# ----------------------------------------------------------------------------------- the load


class Load:
    """``clients`` closed-loop clients posting one input each; a client that gets a 503 with
    ``Retry-After`` waits that long (capped) before its next request, as a polite client does."""

    def __init__(self, url: str, x: np.ndarray, clients: int, http_timeout_s: float) -> None:
        self.url, self.body = url, {"inputs": x.tolist()}
        self.clients, self.http_timeout_s = clients, http_timeout_s
        self.replies: list[Reply] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, daemon=True) for _ in range(clients)]
        self.t0 = time.monotonic()

    def start(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=self.http_timeout_s + 5)

    def _client(self) -> None:
        import requests

        session = requests.Session()
        while not self._stop.is_set():
            sent = time.monotonic() - self.t0
            status, kind, attempts, pause = None, "lost", 0, 0.05
            try:
                r = session.post(self.url, json=self.body, timeout=self.http_timeout_s)
                status = r.status_code
                if status == 200:
                    attempts = int(r.json().get("attempts", 1))
                    kind = "late" if attempts > 1 else "answered"
                elif status in (503, 504) and "error" in r.json():
                    if status == 503 and "Retry-After" not in r.headers:
                        kind = "lost"  # a 503 must say when to come back
                    else:
                        kind = "clear_error"
                        pause = min(5.0, float(r.headers.get("Retry-After", 1)))
            except Exception:  # noqa: BLE001 - no reply at all is what "lost" means
                kind = "lost"
            done = time.monotonic() - self.t0
            with self._lock:
                self.replies.append(Reply(sent, done, status, kind, attempts))
            self._stop.wait(pause)


class ReadyPoller:
    """Polls ``/readyz`` every 0.2 s; remembers every change of state."""

    def __init__(self, url: str, t0: float) -> None:
        self.url, self.t0 = url, t0
        self.changes: list[tuple[float, bool]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> ReadyPoller:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import requests

        last = None
        while not self._stop.is_set():
            try:
                ok = requests.get(self.url, timeout=2).status_code == 200
            except Exception:  # noqa: BLE001 - the dispatcher itself never goes away here
                ok = False
            if ok != last:
                self.changes.append((time.monotonic() - self.t0, ok))
                last = ok
            self._stop.wait(0.2)


class LogCounter(logging.Handler):
    """Collects the warnings of one logger (the dispatcher's: a few lines per failure is the
    goal; Ray's worker logger: its "Unhandled error" tracebacks, which should be none)."""

    def __init__(self, logger: str) -> None:
        super().__init__(logging.WARNING)
        self.logger = logging.getLogger(logger)
        self.lines: list[str] = []

    def __enter__(self) -> LogCounter:
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


# ----------------------------------------------------------------------------------- scenarios


def _settings(args: argparse.Namespace) -> dict[str, float]:
    return {
        "before_s": 4.0 if args.quick else 6.0,
        "after_s": 6.0 if args.quick else 10.0,
        "replace_after_s": args.replace_after,
        "outage_s": args.outage,
    }


def run_scenario(name: str, bundle: Path, args: argparse.Namespace) -> ScenarioResult:
    """One scenario on a fresh cluster (see the module docstring)."""
    import ray
    from ray.cluster_utils import Cluster

    from edgelesspart.pipeline import raykit
    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
    from edgelesspart.runtime.manifest import load_manifest
    from service_http.wsgi import BackgroundServer

    cfg = _settings(args)
    raykit.loopback_only()
    tmp = raykit.private_temp_dir()
    node = {"num_cpus": 1, "node_ip_address": raykit.LOOPBACK, "temp_dir": tmp}
    cluster = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    nodes = {f"n{k}": cluster.add_node(**node, resources={f"n{k}": 1}) for k in range(STAGES)}
    if name == "node_spare":
        cluster.add_node(**node, resources={"spare": 1})
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    counter = LogCounter("edgelesspart.pipeline").__enter__()
    unhandled = LogCounter("ray").__enter__()
    result = ScenarioResult(name)
    try:
        stages = stages_with(
            default_stages(load_manifest(bundle)),
            placement={f"stage{k}": f"n{k}" for k in range(STAGES)},
        )
        spare = "spare" if name == "node_spare" else None
        x = np.random.default_rng(1).random((1, 16, 16, 3), dtype=np.float32)
        with Pipeline(bundle, stages, window=8, deadline_s=args.deadline, spare=spare,
                      spare_after_s=args.spare_after) as pipe:  # fmt: skip
            with BackgroundServer(create_app(pipe), threads=args.clients + 4) as server:
                load = Load(server.url + "/v1/infer", x, args.clients, args.deadline + 15)
                poller = ReadyPoller(server.url + "/readyz", load.t0)
                load.start()
                poller.start()
                time.sleep(cfg["before_s"])
                result.fault_at_s = time.monotonic() - load.t0
                join_at = _inject(name, pipe, cluster, nodes, node, cfg, load.t0)
                result.replacement_at_s = join_at
                time.sleep(cfg["after_s"])
                _wait_ready(pipe, 60)
                time.sleep(2.0)
                load.stop()
                poller.stop()
                result.stage_metrics = pipe.metrics()["stages"]
        _summarise(result, load.replies, poller.changes, args.deadline)
        result.log_lines = {
            "dispatcher_warnings": len(counter.lines),
            "ray_unhandled_errors": sum("Unhandled error" in line for line in unhandled.lines),
            "sample": counter.lines[:8],
        }
    finally:
        counter.__exit__()
        unhandled.__exit__()
        ray.shutdown()
        cluster.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _inject(
    name: str, pipe: Any, cluster: Any, nodes: dict, node: dict, cfg: dict, t0: float
) -> float:
    """Apply the scenario's fault; return when (s since t0) capacity came back."""
    import ray

    victim = f"n{VICTIM}"
    if name == "actor_kill":
        ray.kill(pipe.actors[VICTIM], no_restart=False)
        return time.monotonic() - t0
    cluster.remove_node(nodes[victim])
    if name == "node_spare":
        return time.monotonic() - t0  # the spare is already there
    wait = cfg["replace_after_s"] if name == "node_replace" else cfg["outage_s"]
    time.sleep(wait)
    nodes[victim] = cluster.add_node(**node, resources={victim: 1})
    return time.monotonic() - t0


def _wait_ready(pipe: Any, timeout_s: float) -> None:
    end = time.monotonic() + timeout_s
    while not pipe.ready() and time.monotonic() < end:
        time.sleep(0.1)


def _summarise(r: ScenarioResult, replies: list[Reply], changes: list, deadline: float) -> None:
    r.sent = len(replies)
    r.answered = sum(x.kind == "answered" for x in replies)
    r.late = sum(x.kind == "late" for x in replies)
    r.clear_errors = sum(x.kind == "clear_error" for x in replies)
    r.lost = sum(x.kind == "lost" for x in replies)
    ok_in_time = sum(x.status == 200 and x.done - x.sent <= deadline for x in replies)
    r.answered_200_within_deadline_pct = round(100.0 * ok_in_time / max(1, r.sent), 2)
    r.max_latency_s = round(max((x.done - x.sent for x in replies), default=0.0), 3)
    mark = r.replacement_at_s if r.replacement_at_s is not None else r.fault_at_s
    after = [x.done for x in replies if x.status == 200 and x.done >= mark]
    r.recovery_s = round(min(after) - mark, 3) if after else None
    falses = [t for t, ok in changes if not ok and t >= r.fault_at_s - 0.5]
    r.readyz_went_false = bool(falses)
    r.ready_false_s = round(falses[0] - r.fault_at_s, 3) if falses else None
    trues = [t for t, ok in changes if ok and falses and t > falses[0]]
    r.ready_true_again_s = round(trues[0] - r.fault_at_s, 3) if trues else None
    r.readyz_true_at_end = bool(changes) and changes[-1][1]
    r.answers_per_s_before = _rate(replies, 1.0, r.fault_at_s)
    back = r.fault_at_s + (r.ready_true_again_s or 0.0)
    end = max((x.done for x in replies), default=back)
    r.answers_per_s_after_recovery = _rate(replies, back + 0.5, end)


def _rate(replies: list[Reply], start: float, end: float) -> float:
    """200 answers per second completed in ``[start, end]``."""
    if end - start < 0.5:
        return 0.0
    n = sum(x.status == 200 and start <= x.done <= end for x in replies)
    return round(n / (end - start), 2)


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1.6 MB stages, short phases")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--width", type=int, default=None, help="dense width (stage file size)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=30.0, help="request deadline (s)")
    parser.add_argument("--replace-after", type=float, default=None, help="s until replacement")
    parser.add_argument("--outage", type=float, default=None, help="s of the long outage")
    parser.add_argument("--spare-after", type=float, default=5.0)
    parser.add_argument("--out", default=str(ROOT / "results" / "reliability"))
    args = parser.parse_args(argv)
    args.width = args.width or (640 if args.quick else 1280)
    args.replace_after = args.replace_after or (8.0 if args.quick else 15.0)
    args.outage = args.outage or (20.0 if args.quick else 60.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    bundle, info = ensure_bundle(out / "bundles", args.width)
    mib = [round(b / 2**20, 2) for b in info["stage_file_bytes"]]
    print(f"bundle {bundle}: stage files {mib} MiB")
    results = []
    for name in [s for s in args.scenarios.split(",") if s]:
        load0 = os.getloadavg()[0]
        t = time.monotonic()
        res = run_scenario(name, bundle, args)
        print(_row(res), f"({time.monotonic() - t:.0f} s, load {load0:.2f})", flush=True)
        results.append({**asdict(res), "loadavg_1min_at_start": load0})
    report = {
        "experiment": "fault_pipeline",
        "quick": args.quick,
        "stage_file_bytes": info["stage_file_bytes"],
        "deadline_s": args.deadline,
        "clients": args.clients,
        "replace_after_s": args.replace_after,
        "outage_s": args.outage,
        "cpu_count": os.cpu_count(),
        "scenarios": results,
    }
    path = out / ("fault_pipeline_quick.json" if args.quick else "fault_pipeline.json")
    path.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    lost = sum(r["lost"] for r in results)
    print(f"wrote {path}; lost {lost} of {sum(r['sent'] for r in results)} requests")
    return 0 if lost == 0 else 1


def _row(r: ScenarioResult) -> str:
    rec = "-" if r.recovery_s is None else f"{r.recovery_s:.2f} s"
    return (
        f"{r.scenario:13s} sent {r.sent:4d} answered {r.answered:4d} late {r.late:3d} "
        f"clear {r.clear_errors:3d} lost {r.lost:2d} | 200 in deadline "
        f"{r.answered_200_within_deadline_pct:5.1f} % | recovery {rec} | readyz false "
        f"{r.readyz_went_false} -> true {r.ready_true_again_s} | "
        f"{r.answers_per_s_before}/s -> {r.answers_per_s_after_recovery}/s"
    )


if __name__ == "__main__":
    raise SystemExit(main())
