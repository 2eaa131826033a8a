"""Fault experiment for the Ray services: do stages of realistic size come back, and does every
request get an answer?

Starts a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``, loopback, private
temp dir, one CPU per node): the head runs the dispatcher and stages 0 and 2 (resources ``n0``,
``n2``), a second node runs stage 1 (``n1``), and a third the spare where a scenario has one.
The host has 2 cores shared with other work, hence no more nodes than the faults need. It
serves a 3-stage bundle whose **stage files are several MB** (a dense chain built here, 6.3 to
10 MiB per stage file by default) through ``serve-pipeline``'s app (``Pipeline`` + Flask over real
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
#: A client told to come back later (503 + Retry-After) waits at most this long, so that the
#: time to recover measures the service rather than the clients' politeness.
RETRY_CAP_S = 1.0


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
    ready_after_join_s: float | None = None
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
                kind, attempts, pause = self.classify(r)
            except Exception:  # noqa: BLE001 - no reply at all is what "lost" means
                kind = "lost"
            done = time.monotonic() - self.t0
            with self._lock:
                self.replies.append(Reply(sent, done, status, kind, attempts))
            self._stop.wait(pause)

    def classify(self, r: Any) -> tuple[str, int, float]:
        """``(kind, attempts, pause before the next request)`` of one HTTP reply ``r``."""
        if r.status_code == 200:
            row = r.json()["answers"][0]  # the shared serving contract's answer row
            attempts = int(row.get("attempts", 1))
            return ("late" if attempts > 1 else "answered"), attempts, 0.05
        if r.status_code in (503, 504) and "error" in r.json():
            if r.status_code == 503 and "Retry-After" not in r.headers:
                return "lost", 0, 0.05  # a 503 must say when to come back
            return "clear_error", 0, min(RETRY_CAP_S, float(r.headers.get("Retry-After", 1)))
        return "lost", 0, 0.05


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


def start_cluster(
    resources: list[dict[str, float]], head: dict[str, float] | None = None, tries: int = 3
) -> tuple[Any, list, dict]:
    """A loopback ``Cluster`` (a head advertising ``head`` + one node per ``resources`` entry,
    one CPU each) in a private temp dir. Ray gives a node 30 s to start; on a crowded host that
    is sometimes not enough, so a failed start is retried."""
    from ray.cluster_utils import Cluster

    from edgelesspart.pipeline import raykit

    raykit.loopback_only()
    for attempt in range(tries):
        tmp = raykit.private_temp_dir()
        node = {"num_cpus": 1, "node_ip_address": raykit.LOOPBACK, "temp_dir": tmp,
                "include_log_monitor": False}  # fmt: skip
        cluster = None
        try:
            head_args = {**node, "include_dashboard": False, "resources": dict(head or {})}
            cluster = Cluster(initialize_head=True, head_node_args=head_args)
            nodes = [cluster.add_node(**node, resources=r) for r in resources]
            return cluster, nodes, node
        except Exception as exc:  # noqa: BLE001 - Ray's start-up timeout on a busy host
            print(f"cluster start failed ({exc}); attempt {attempt + 1} of {tries}", flush=True)
            if cluster is not None:
                cluster.shutdown()
            shutil.rmtree(tmp, ignore_errors=True)
            if attempt == tries - 1:
                raise
    raise AssertionError("unreachable")


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

    from edgelesspart.pipeline.app import create_app
    from edgelesspart.pipeline.dispatcher import Pipeline, default_stages, stages_with
    from edgelesspart.runtime.manifest import load_manifest
    from service_http.wsgi import BackgroundServer

    cfg = _settings(args)
    wanted = [{f"n{VICTIM}": 1.0}]
    if name == "node_spare":
        wanted.append({"spare": 1.0})
    others = {f"n{k}": 1.0 for k in range(STAGES) if k != VICTIM}
    cluster, added, node = start_cluster(wanted, head=others)
    tmp = node["temp_dir"]
    nodes = {f"n{VICTIM}": added[0]}
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
    if r.ready_true_again_s is not None and r.replacement_at_s is not None:
        r.ready_after_join_s = round(r.fault_at_s + r.ready_true_again_s - r.replacement_at_s, 3)
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


# ----------------------------------------------------------------------------------- SlimEdge

VIEW_SCENARIOS = ("actor_kill", "node_replace")


def build_views_deployment(out: Path, width: int) -> dict[str, Any]:
    """A 2-view SlimEdge deployment (untrained backbones with a ``width``-channel conv pair, so
    the unpruned view segment is several MB), exported through the real path."""
    import keras

    from edgelesspart.pruning import prune_model
    from edgelesspart.slimedge import deploy, optimize
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves
    from edgelesspart.slimedge.model import MultiViewModel, build_backbone, build_fusion
    from edgelesspart.slimedge.views import digits_views

    keras.utils.set_random_seed(0)
    data = digits_views(2, limit=60)
    backbones = [build_backbone(data.view_shape, widths=(16, width, width), features=16,
                                name=f"bb{v}") for v in range(2)]  # fmt: skip
    model = MultiViewModel(backbones, build_fusion(2, data.num_classes, features=16))
    pruned = {(v, r): bb if r == 0 else prune_model(bb, r).model
              for v, bb in enumerate(backbones) for r in (0.0, 0.5)}  # fmt: skip
    curves = ViewCurves(
        ratios=(0.0, 0.5), accuracy=((0.9, 0.89), (0.9, 0.85)), latency_ms=(1.0, 0.4),
        params=(1e3, 3e2), memory_bytes=(1e5, 4e4), fusion_latency_ms=0.01, base_accuracy=0.9,
        importance=(0.02, 0.05), subsets={"11": 0.9, "10": 0.88, "01": 0.85},
    )  # fmt: skip
    build = deploy.MultiViewBuild(model, data, curves, pruned)
    slots = [optimize.DeviceSlot("rpi4", 1.0, 1e9), optimize.DeviceSlot("jetson-nano", 1.0, 1e9)]
    cm = CurveModel(curves)
    chosen = optimize.nsga2_plan(cm, slots, optimize.Bound(accuracy_floor=0.88))
    failures = optimize.failure_plans(cm, slots)
    deploy.export_deployment(out, build, slots, chosen, baselines={}, failures=failures,
                             max_accuracy_drop=0.02, overwrite=True)  # fmt: skip
    sample = [data.test[v][0].tolist() for v in range(2)]
    (out / "fault_sample.json").write_text(json.dumps(sample), "utf-8")
    sizes = sorted(p.stat().st_size for p in (out / "segments").glob("view*.tflite"))
    return {"width": width, "view_file_bytes": sizes}


class ViewsLoad(Load):
    """:class:`Load` for ``serve-views``: a 200 is an answer -- counted as ``late`` (partial)
    when it was fused from fewer than ``views`` views (a lost or late device); a 503 with
    ``Retry-After`` a clear error; anything else lost."""

    views = 2

    def classify(self, r: Any) -> tuple[str, int, float]:
        """``(kind, alive views, pause)``: partial fusions count as ``late``."""
        if r.status_code == 200:
            row = r.json()["answers"][0]  # the shared serving contract's answer row
            alive = (row.get("node") or {}).get("views", [])
            partial = row.get("degraded") or len(alive) < self.views
            return ("late" if partial else "answered"), len(alive), 0.05
        if r.status_code == 503 and "Retry-After" in r.headers and "error" in r.json():
            return "clear_error", 0, min(RETRY_CAP_S, float(r.headers["Retry-After"]))
        return "lost", 0, 0.05


def run_views_scenario(name: str, deployment: Path, args: argparse.Namespace) -> ScenarioResult:
    """One SlimEdge scenario: views 0 and 1 on nodes ``v0`` and ``v1``; view 1 fails."""
    import ray

    from edgelesspart.slimedge.app import create_app, load_deployment, service_from_deployment
    from service_http.wsgi import BackgroundServer

    cfg = _settings(args)
    cluster, added, node = start_cluster([{"v0": 1.0}, {"v1": 1.0}])
    tmp = node["temp_dir"]
    nodes = {"v0": added[0], "v1": added[1]}
    ray.init(address=cluster.address, log_to_driver=False, configure_logging=False)
    counter = LogCounter("edgelesspart.slimedge").__enter__()
    unhandled = LogCounter("ray").__enter__()
    result = ScenarioResult(f"views_{name}")
    try:
        manifest = load_deployment(deployment)
        service = service_from_deployment(manifest, resources=["v0", "v1"],
                                          request_deadline_s=args.deadline)  # fmt: skip
        sample = json.loads((deployment / "fault_sample.json").read_text("utf-8"))
        try:
            with BackgroundServer(create_app(service, manifest), threads=args.clients + 4) as srv:
                load = ViewsLoad(srv.url + "/v1/infer", np.zeros(1), args.clients,
                                 args.deadline + 15)  # fmt: skip
                load.body = {"views": sample}
                poller = ReadyPoller(srv.url + "/readyz", load.t0)
                load.start()
                poller.start()
                time.sleep(cfg["before_s"])
                result.fault_at_s = time.monotonic() - load.t0
                if name == "actor_kill":
                    service.kill(1)
                    result.replacement_at_s = result.fault_at_s
                else:
                    cluster.remove_node(nodes["v1"])
                    time.sleep(cfg["replace_after_s"])
                    nodes["v1"] = cluster.add_node(**node, resources={"v1": 1})
                    result.replacement_at_s = time.monotonic() - load.t0
                time.sleep(cfg["after_s"])
                end = time.monotonic() + 60
                while not service.ready() and time.monotonic() < end:
                    time.sleep(0.2)
                time.sleep(2.0)
                load.stop()
                poller.stop()
                result.stage_metrics = {"rejoined": service.stats.rejoined_devices,
                                        "lost": service.stats.lost_devices,
                                        "last_failure": service.stats.last_failure}  # fmt: skip
        finally:
            service.close()
        _summarise(result, load.replies, poller.changes, args.deadline)
        # recovery: from the replacement joining (the kill) -- or the first degraded answer, if
        # later -- to the first answer fused from every view again
        degraded = [x.done for x in load.replies if x.kind == "late"]
        mark = max(result.replacement_at_s, min(degraded, default=result.replacement_at_s))
        full = [x.done for x in load.replies if x.kind == "answered" and x.sent >= mark]
        result.recovery_s = round(min(full) - mark, 3) if full else None
        result.replacement_at_s = mark
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


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller files, shorter phases")
    parser.add_argument("--service", choices=("pipeline", "views", "both"), default="both")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="pipeline scenarios")
    parser.add_argument("--view-scenarios", default=",".join(VIEW_SCENARIOS))
    parser.add_argument("--width", type=int, default=None, help="dense width (stage file size)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--deadline", type=float, default=30.0, help="request deadline (s)")
    parser.add_argument("--replace-after", type=float, default=None, help="s until replacement")
    parser.add_argument("--outage", type=float, default=None, help="s of the long outage")
    parser.add_argument("--spare-after", type=float, default=5.0)
    parser.add_argument("--out", default=str(ROOT / "results" / "reliability"))
    parser.add_argument("--tag", default="", help="suffix of the JSON file name")
    args = parser.parse_args(argv)
    args.width = args.width or (640 if args.quick else 1280)
    args.replace_after = args.replace_after or (8.0 if args.quick else 15.0)
    args.outage = args.outage or (20.0 if args.quick else 60.0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "experiment": "fault_pipeline",
        "quick": args.quick,
        "deadline_s": args.deadline,
        "clients": args.clients,
        "replace_after_s": args.replace_after,
        "outage_s": args.outage,
        "cpu_count": os.cpu_count(),
    }
    runs: list[tuple[str, Any, Path, str]] = []
    if args.service in ("pipeline", "both"):
        bundle, info = ensure_bundle(out / "bundles", args.width)
        report["stage_file_bytes"] = info["stage_file_bytes"]
        mib = [round(b / 2**20, 2) for b in info["stage_file_bytes"]]
        print(f"pipeline bundle {bundle}: stage files {mib} MiB")
        runs += [("pipeline", run_scenario, bundle, n) for n in args.scenarios.split(",") if n]
    if args.service in ("views", "both"):
        width = 256 if args.quick else 512
        dep = out / "bundles" / f"views-{width}"
        if not (dep / "fault_info.json").exists():
            meta = build_views_deployment(dep, width)
            (dep / "fault_info.json").write_text(json.dumps(meta), "utf-8")
        info = json.loads((dep / "fault_info.json").read_text("utf-8"))
        report["view_file_bytes"] = info["view_file_bytes"]
        mib = [round(b / 2**20, 2) for b in info["view_file_bytes"]]
        print(f"views deployment {dep}: view segment files {mib} MiB")
        runs += [("views", run_views_scenario, dep, n) for n in args.view_scenarios.split(",") if n]
    results: dict[str, list] = {"pipeline": [], "views": []}
    report["scenarios"] = results["pipeline"]
    report["views_scenarios"] = results["views"]
    report["not_run"] = []
    report["note_views"] = "for views, 'late' counts partial answers (fused without every view)"
    suffix = "_quick" if args.quick else ""
    stem = "fault_pipeline" if args.service == "both" else f"fault_pipeline_{args.service}"
    path = out / f"{stem}{suffix}{args.tag}.json"
    for service, runner, bundle_path, name in runs:
        load0 = os.getloadavg()[0]
        t = time.monotonic()
        try:
            res = runner(name, bundle_path, args)
        except Exception as exc:  # noqa: BLE001 - a cluster that cannot start on a busy host
            print(f"{service} {name}: not run ({type(exc).__name__}: {exc})", flush=True)
            report["not_run"].append({"service": service, "scenario": name, "error": str(exc),
                                      "loadavg_1min_at_start": load0})  # fmt: skip
            continue
        print(_row(res), f"({time.monotonic() - t:.0f} s, load {load0:.2f})", flush=True)
        results[service].append({**asdict(res), "loadavg_1min_at_start": load0})
        path.write_text(json.dumps(report, indent=2) + "\n", "utf-8")  # after every scenario
    path.write_text(json.dumps(report, indent=2) + "\n", "utf-8")
    every = results["pipeline"] + results["views"]
    lost = sum(r["lost"] for r in every)
    print(f"wrote {path}; lost {lost} of {sum(r['sent'] for r in every)} requests")
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
