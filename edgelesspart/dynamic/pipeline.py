"""A chain of width-switching stage actors on Ray, with the controller in the dispatcher.

:class:`WidthWorker` (a plain class; Ray makes it an actor) holds *every* width's LiteRT segment
of its stage, checked against the width manifest's SHA-256. The dispatcher puts the files into
Ray's object store once and owns them (:class:`~edgelesspart.pipeline.supervision.BlobStore`);
the actor receives references and fetches them in its constructor, so Ray can restart it
(unlimited restarts, calls retried by Ray) after a crash or on a replacement node. ``forward``
(frames in and out, never pickled objects, as in :mod:`edgelesspart.pipeline.stage`) runs in
the actor's default concurrency group, one call at a time as a device would; ``set_width``,
``set_slowdown`` and ``state`` run in a separate ``control`` group, so a width change reaches a
stage at once even while its queue is long, and takes effect from the next ``forward``: nothing
is restarted, reloaded or dropped. Devices are emulated by sleeping: a stage at width ``w``
takes ``scale x (build-host latency of that segment) x slowdown`` (the measured curve of the
width manifest), and reports when the host itself was slower than that (``host_bound``).

:class:`DynamicPipeline` streams inputs through the actors (at most ``window`` in flight), reads
each stage's counters every ``tick_s`` (items done, busy time, width), derives service time,
queue length (items past the previous stage and not past this one) and throughput, asks the
:class:`~edgelesspart.dynamic.controller.WidthController` and applies its widths.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import tempfile
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.dynamic.controller import (
    Decision,
    Observation,
    StageMetrics,
    WidthController,
)
from edgelesspart.dynamic.stage import WidthStage
from edgelesspart.dynamic.widths import DynamicManifest, load_manifest, segment_path, width_key
from edgelesspart.errors import BundleError, ConfigError, PipelineBusy, PipelineError
from edgelesspart.pipeline import raykit
from edgelesspart.pipeline.emulation import sleep_s
from edgelesspart.runtime.codecs import decode_tensor, encode_tensor
from edgelesspart.runtime.preprocess import validate_input

LOG = logging.getLogger(__name__)
DEFAULT_TICK_S = 0.5
DEFAULT_WINDOW = 256
DECISIONS_KEPT = 200
#: Controller ticks the timeline keeps (a day at the default 0.5 s tick).
TIMELINE_KEPT = 172_800


def stage_files(bundle: Path, manifest: DynamicManifest, index: int) -> dict[str, bytes]:
    """Relative path -> bytes of every width's segment of stage ``index``."""
    out = {}
    for seg in manifest.stages[index].segments:
        rel = seg.segment.files["tflite"]
        out[rel] = segment_path(bundle, rel).read_bytes()
    for w in manifest.stages[index].widths:  # the stage's exit head(s), one per width or one
        head = manifest.exit_head(index, w)
        if head is not None:
            out[head["file"]] = segment_path(bundle, head["file"]).read_bytes()
    return out


def _exit_runner(root: Path, head: dict[str, Any]) -> Any:
    """A LiteRT runner of an exit head (``boundary -> probs``)."""
    from edgelesspart.runtime.manifest import SegmentSpec, TensorSpec
    from edgelesspart.runtime.segments import SegmentRunner

    spec = SegmentSpec(
        name=f"exit{head['stage']}", stage=f"stage{head['stage']}", start=f"stage{head['stage']}",
        end=f"stage{head['stage']}", input=TensorSpec(tuple(int(d) for d in head["input"])),
        exit=str(head["name"]), boundary=None, files={"tflite": str(head["file"])},
    )  # fmt: skip
    return SegmentRunner(segment_path(root, str(head["file"])), spec, pool_size=1)


class WidthWorker:
    """One stage at every width (see the module docstring); callable in-process too.

    Args:
        manifest: the width manifest as a dict.
        index: the stage this worker runs.
        files: relative path -> bytes of its segments (:func:`stage_files`), or their
            :meth:`~edgelesspart.pipeline.supervision.BlobStore.handles`.
        scale: emulated device time = ``scale`` x build-host latency (1: no emulation).
        width: the initial width.
        threshold: the stage's exit head (if the bundle has one after this stage) answers a
            row whose top-1 probability reaches this; ``None``: exits off. A frame's
            ``meta.threshold`` overrides it.
        link_mbps, link_rtt_ms: the emulated link this stage sends on (:meth:`send`).
    """

    def __init__(
        self,
        manifest: dict[str, Any],
        index: int,
        files: dict[str, Any],
        scale: float = 1.0,
        width: float = 1.0,
        threshold: float | None = None,
        link_mbps: float | None = None,
        link_rtt_ms: float = 0.0,
    ) -> None:
        from edgelesspart.pipeline.emulation import DeviceEmulation
        from edgelesspart.pipeline.supervision import resolve_files

        files = resolve_files(files)
        if not scale >= 1.0:
            raise ConfigError(f"scale must be >= 1 (emulated devices are slower), got {scale!r}.")
        self.manifest = DynamicManifest.from_dict(manifest)
        self.index = int(index)
        # The files only live while the interpreters load them (an actor ends with ray.kill,
        # without __del__); pool_size=1: no interpreter is built from a file again later.
        with tempfile.TemporaryDirectory(prefix=f"elp-width-{index}-") as tmp:
            for seg in self.manifest.stages[self.index].segments:
                rel = seg.segment.files["tflite"]
                data = files.get(rel)
                if data is None or hashlib.sha256(data).hexdigest() != seg.sha256:
                    raise BundleError(
                        f"Stage {index} segment {rel!r} is missing or does not match its "
                        "SHA-256; the dispatcher's width bundle is corrupt."
                    )
                segment_path(Path(tmp), rel).write_bytes(data)
            self.stage = WidthStage(
                tmp, [self.index], manifest=self.manifest, width=width, pool_size=1
            )
            self.head = self.manifest.exit_of(self.index)
            # width key -> (head entry, runner): a head per width, or one for every width
            self.exits: dict[str, tuple[dict[str, Any], Any]] = {}
            runners: dict[str, Any] = {}
            for w in self.stage.widths:
                head = self.manifest.exit_head(self.index, w)
                if head is None:
                    continue
                if head["file"] not in runners:
                    data = files.get(head["file"])
                    if data is None or hashlib.sha256(data).hexdigest() != head["sha256"]:
                        raise BundleError(
                            f"Stage {index} exit head {head['file']!r} is missing or does not "
                            "match its SHA-256; the dispatcher's width bundle is corrupt."
                        )
                    segment_path(Path(tmp), head["file"]).write_bytes(data)
                    runners[head["file"]] = _exit_runner(Path(tmp), head)
                self.exits[width_key(w)] = (head, runners[head["file"]])
        self.threshold = threshold
        self.last = self.index == len(self.manifest.stages) - 1
        self.link = DeviceEmulation(link_mbps=link_mbps, link_rtt_ms=link_rtt_ms)
        self.scale = float(scale)
        self.slowdown = 1.0
        self._lock = threading.Lock()
        self._items = 0
        self._busy_s = 0.0
        self._host_bound = 0
        self._computed = 0
        self._exited = 0

    def ready(self) -> dict[str, Any]:
        """Who this worker is (the dispatcher waits on it after creating the actor)."""
        return {"stage": self.index, "pid": os.getpid(), "widths": list(self.stage.widths)}

    def device_ms(self, width: float, head: bool = True) -> float:
        """Emulated service time at ``width`` under the current slowdown; ``head``: the exit
        head at that width ran too (its measured latency is added)."""
        own = self.exits.get(width_key(width)) if head else None
        extra = float(own[0]["latency_ms"]) if own is not None else 0.0
        return self.scale * (self.stage.latency_ms(width) + extra) * self.slowdown

    def _exit(self, y: np.ndarray, meta: dict[str, Any], width: float) -> np.ndarray | None:
        """The probabilities of the exit head of ``width`` if every row clears the threshold,
        else ``None`` (the head's answer is then kept in ``meta["best"]``: a degraded answer's
        source). Sets ``meta["_head"]`` when a head ran."""
        threshold = meta.get("threshold", self.threshold)
        own = self.exits.get(width_key(width))
        if own is None or threshold is None:
            return None
        head, runner = own
        probs, _ = runner(y, trusted=True)
        meta["_head"] = True
        if float(np.min(np.max(probs, axis=1))) >= float(threshold):
            return probs
        meta["best"] = {"exit": head["name"], "stage": f"stage{self.index}",
                        "probs": np.asarray(probs, np.float64).reshape(-1).tolist()}  # fmt: skip
        return None

    def forward(self, payload: bytes) -> bytes:
        """Decode, run at the current width, try the exit head, sleep to the emulated device
        time, encode. A frame an earlier exit answered (``meta.final``) passes untouched."""
        start = time.perf_counter()
        x, header = decode_tensor(payload)
        meta = dict(header.get("meta") or {})
        if meta.get("final"):
            with self._lock:
                self._items += 1
            return payload
        y, width, _ = self.stage.timed(x)
        meta["widths"] = [*meta.get("widths", []), width]
        probs = self._exit(y, meta, width)
        ran_head = bool(meta.pop("_head", False))
        if probs is not None:
            y = probs
            meta.update({"final": True, "exit": self.head["name"], "stage": f"stage{self.index}"})
        elif self.last:
            meta.update({"final": True, "exit": "final", "stage": f"stage{self.index}"})
        out = encode_tensor(np.ascontiguousarray(y), "raw", meta=meta)
        wall = time.perf_counter() - start
        target = self.device_ms(width, head=ran_head) / 1000.0
        sleep_s(target - wall)
        with self._lock:
            self._items += 1
            self._computed += 1
            self._exited += int(probs is not None)
            self._busy_s += max(target, time.perf_counter() - start)
            self._host_bound += int(wall > target)
        return out

    def send(self, frame: bytes) -> bytes:
        """Hand ``frame`` on after the emulated link's time (none without link emulation)."""
        sleep_s(self.link.link_s(len(frame)))
        return frame

    def set_width(self, width: float) -> float:
        """Switch width from the next ``forward``; return the previous width."""
        return self.stage.set_width(width)

    def set_slowdown(self, factor: float) -> None:
        """Inject (or lift, with 1.0) a slowdown of the emulated device."""
        if not factor >= 1.0:
            raise ConfigError(f"A slowdown factor must be >= 1, got {factor!r}.")
        self.slowdown = float(factor)

    def state(self) -> dict[str, Any]:
        """Cumulative counters: items done, busy seconds, host-bound items, width."""
        with self._lock:
            return {
                "items": self._items,
                "computed": self._computed,
                "exited": self._exited,
                "busy_s": self._busy_s,
                "host_bound": self._host_bound,
                "width": self.stage.width,
                "slowdown": self.slowdown,
                "switches": self.stage.switches,
                "rows_by_width": dict(self.stage.rows_by_width),
            }


def remote_worker_class() -> Any:
    """``WidthWorker`` as a Ray actor class with a ``control`` concurrency group."""
    ray = raykit.require_ray()

    class _Worker(WidthWorker):
        @ray.method(concurrency_group="control")
        def set_width(self, width: float) -> float:
            return WidthWorker.set_width(self, width)

        @ray.method(concurrency_group="control")
        def set_slowdown(self, factor: float) -> None:
            WidthWorker.set_slowdown(self, factor)

        @ray.method(concurrency_group="control")
        def state(self) -> dict[str, Any]:
            return WidthWorker.state(self)

        @ray.method(concurrency_group="link")
        def send(self, frame: bytes) -> bytes:
            return WidthWorker.send(self, frame)

    _Worker.__name__ = _Worker.__qualname__ = "WidthWorker"
    return ray.remote(concurrency_groups={"control": 1, "link": 1})(_Worker)


@dataclass(frozen=True)
class Answer:
    """One answer: probabilities, the width each stage ran it at, and end-to-end latency.

    With exits or a cloud tail also: which exit and stage answered (``cloud`` for the cloud
    tail), whether it was offloaded, and ``degraded`` with its reason when the cloud could not
    answer and the last edge exit did. ``shed``: the controller sent the input straight to the
    whole model in the cloud (:class:`DynamicPipeline`'s ``shed_offloader``). ``probs`` is
    ``None`` for a cloud answer (``label`` holds its class index).
    """

    seq: int
    probs: np.ndarray | None
    widths: tuple[float, ...]
    submitted_s: float
    latency_ms: float
    exit: str | None = "final"
    stage: str | None = None
    offloaded: bool = False
    degraded: bool = False
    reason: str | None = None
    cloud: dict[str, Any] | None = None
    offload_ms: float = 0.0
    shed: bool = False

    @property
    def label(self) -> int | None:
        """Predicted class index (``None``: no answer at all)."""
        if self.cloud is not None:
            return int(self.cloud["label"])
        return None if self.probs is None else int(np.argmax(np.asarray(self.probs)[0]))


@dataclass
class _Ticket:
    seq: int
    ref: Any
    submitted: float
    shed: bool = False


class DynamicPipeline:
    """Width-switching stage actors plus (optionally) the controller loop.

    Args:
        bundle: the width bundle directory.
        scale: emulated device time = ``scale`` x build-host latency (see :class:`WidthWorker`).
        controller: the width controller, or ``None`` for static widths.
        slo_ms: the latency SLO answers are counted against.
        tick_s: controller period.
        window: most inputs in flight (more raise :class:`PipelineBusy`).
        timeline_kept: most recent controller ticks kept in :attr:`timeline` (a long-running
            service would otherwise grow it without bound).
        edge_stages: stages run by actors (default: all); the rest is the cloud tail, reached
            through ``offloader``.
        threshold: exit heads (``add_width_exits``) answer at this confidence (``None``: off).
        offloader: the cloud tail (an :class:`~edgelesspart.runtime.offload.Offloader`, e.g.
            ``HttpOffloader`` to ``serve-cloud`` on the bundle's ``manifest.json``).
        bundle_id: the id the cloud part checks (default: the chain manifest's id).
        link_mbps, link_rtt_ms: emulated links between stages (each stage's ``send``) and to
            the cloud (the dispatcher sleeps it before the offload call).
        shed_offloader: the whole model in the cloud (e.g. ``serve-cloud``'s app on a
            :class:`~edgelesspart.runtime.cloud.CloudPart` of every stage): under overload the
            controller (given ``shed_accuracy``) sends this share of the arrivals straight
            there instead of narrowing beyond its accuracy budget. An input whose shed call
            fails runs on the edge chain instead (nothing is lost).
    """

    def __init__(
        self,
        bundle: str | Path,
        *,
        scale: float = 1.0,
        controller: WidthController | None = None,
        slo_ms: float | None = None,
        tick_s: float = DEFAULT_TICK_S,
        window: int = DEFAULT_WINDOW,
        timeout_s: float = 120.0,
        timeline_kept: int = TIMELINE_KEPT,
        edge_stages: int | None = None,
        threshold: float | None = None,
        offloader: Any = None,
        bundle_id: str | None = None,
        link_mbps: float | None = None,
        link_rtt_ms: float = 0.0,
        shed_offloader: Any = None,
    ) -> None:
        from edgelesspart.pipeline.emulation import DeviceEmulation

        self.bundle = Path(bundle)
        self.manifest = load_manifest(self.bundle)
        n = len(self.manifest.stages)
        self.edge_stages = n if edge_stages is None else int(edge_stages)
        if not 1 <= self.edge_stages <= n:
            raise ConfigError(f"edge_stages must be 1..{n}, got {edge_stages!r}.")
        if self.edge_stages < n and offloader is None:
            raise ConfigError(
                f"{n - self.edge_stages} stage(s) are left to the cloud tail, but no offloader "
                "was given; pass one or run every stage on the edge."
            )
        if threshold is not None and not self.manifest.exits:
            raise ConfigError(
                f"A threshold needs exit heads, and {self.bundle} has none; add them with "
                "edgelesspart.dynamic.exits.add_width_exits, or drop the threshold."
            )
        if shed_offloader is not None and (controller is None or controller.shed_accuracy is None):
            raise ConfigError(
                "A shed route needs a controller that knows the cloud's accuracy: build the "
                "WidthController with shed_accuracy=..., or drop shed_offloader."
            )
        self.threshold = threshold
        self.offloader = offloader
        self.shed_offloader = shed_offloader
        self.shed = 0.0  # share of arrivals sent straight to the cloud (set by the controller)
        self._shed_credit = 0.0
        self._shed_pool: Any = None
        self._bundle_id = bundle_id
        self.link = DeviceEmulation(link_mbps=link_mbps, link_rtt_ms=link_rtt_ms)
        self.offloads = {"ok": 0, "failed": 0, "shed": 0, "shed_failed": 0}
        self.cloud: str | None = None  # the cloud tail's URL, for /v1/bundle
        self.scale = float(scale)
        self.controller = controller
        if slo_ms is None and controller is not None:
            slo_ms = controller.config.slo_ms
        self.slo_ms = slo_ms
        self.tick_s = float(tick_s)
        self.window = int(window)
        self.timeout_s = float(timeout_s)
        self.actors: list[Any] = []
        self.blobs: Any = None
        self._seq = itertools.count()
        self._lock = threading.Lock()
        self._submitted = 0
        self._edge_submitted = 0  # inputs sent into the stage actors (not shed)
        self._completed = 0
        self._rejected = 0
        self._met_slo = 0
        self._inflight = 0
        self._exits: dict[str, int] = {}
        self._decisions: deque[dict[str, Any]] = deque(maxlen=DECISIONS_KEPT)
        self.timeline: deque[dict[str, Any]] = deque(maxlen=int(timeline_kept))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: dict[str, Any] | None = None

    @property
    def stages(self) -> int:
        """Number of stages run by actors (the edge stages)."""
        return self.edge_stages

    @property
    def bundle_id(self) -> str:
        """The id offloaded tensors carry (the chain manifest's, ``widths-...``)."""
        if self._bundle_id is None:
            from edgelesspart.dynamic.exits import chain_bundle_id

            self._bundle_id = chain_bundle_id(self.bundle)
        return self._bundle_id

    def start(self, ready_timeout_s: float = 120.0) -> DynamicPipeline:
        """Create one actor per stage, wait until each loaded its widths, start the loop."""
        from edgelesspart.pipeline.supervision import BlobStore

        ray = raykit.require_ray()
        cls = remote_worker_class()
        manifest = self.manifest.to_dict()
        self.blobs = BlobStore()
        try:  # a later stage's files may be unreadable: kill the actors already created
            files = [stage_files(self.bundle, self.manifest, k) for k in range(self.stages)]
            for k in range(self.stages):
                opts = raykit.actor_options(max_restarts=-1, max_task_retries=-1)
                handles = self.blobs.handles(files[k])
                self.actors.append(
                    cls.options(**opts).remote(
                        manifest, k, handles, self.scale, 1.0, self.threshold,
                        self.link.link_mbps, self.link.link_rtt_ms,
                    )
                )  # fmt: skip
        except BaseException:
            self.close()
            raise
        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=ready_timeout_s)
        except Exception as exc:
            self.close()
            raise PipelineError(f"Width stage actors did not start: {exc}") from exc
        if self.shed_offloader is not None:
            from concurrent.futures import ThreadPoolExecutor

            self._shed_pool = ThreadPoolExecutor(8, thread_name_prefix="width-shed")
        self._last = self._read(time.perf_counter())
        self._thread = threading.Thread(target=self._loop, name="width-controller", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop the controller loop and kill the actors."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._shed_pool is not None:
            self._shed_pool.shutdown(wait=True)
            self._shed_pool = None
        actors, self.actors = self.actors, []
        raykit.kill_actors(actors)
        if self.blobs is not None:
            self.blobs.release()

    def __enter__(self) -> DynamicPipeline:
        return self.start() if not self.actors else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ streaming

    def submit(self, x: np.ndarray, threshold: float | None = None) -> _Ticket:
        """Send one input into the chain; :class:`PipelineBusy` when the window is full.

        ``threshold`` overrides the exits' threshold for this input.

        Raises:
            InputError: ``x`` does not match the first stage's input (shape, dtype, NaN/Inf);
                checked before it takes a slot, so a bad request never reaches a stage.
        """
        if not self.actors:
            raise PipelineError("The pipeline is not started; call start() first.")
        x = validate_input(np.asarray(x), self.manifest.stages[0].input)
        with self._lock:
            if self._inflight >= self.window:
                self._rejected += 1
                raise PipelineBusy(f"{self.window} inputs are already in flight; retry shortly.")
            self._inflight += 1
            self._submitted += 1
            shed = self._shed_pool is not None and self.shed > 0
            if shed:  # error diffusion: exactly the share ``shed`` of the arrivals, spread out
                self._shed_credit += self.shed
                shed = self._shed_credit >= 1.0
                self._shed_credit -= float(shed)
            self._edge_submitted += int(not shed)
        try:
            seq = next(self._seq)
            meta: dict[str, Any] = {"seq": seq}
            if threshold is not None:
                meta["threshold"] = float(threshold)
            if shed:
                ref: Any = self._shed_pool.submit(self._shed_call, x, meta)
            else:
                ref = self._edge_ref(x, meta)
        except BaseException:
            with self._lock:
                self._inflight -= 1
            raise
        return _Ticket(seq, ref, time.perf_counter(), shed)

    def _edge_ref(self, x: np.ndarray, meta: dict[str, Any]) -> Any:
        """Send one input through the edge stage actors; the last stage's object ref."""
        ref: Any = encode_tensor(x, "raw", meta=meta)
        for k, actor in enumerate(self.actors):
            ref = actor.forward.remote(ref)
            if self.link.active and k < len(self.actors) - 1:
                ref = actor.send.remote(ref)
        return ref

    def _shed_call(self, x: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        """The whole model in the cloud for one shed input (over the emulated link); on
        failure the input runs on the edge chain instead."""
        from edgelesspart.runtime.offload import check_answers

        start = time.perf_counter()
        sleep_s(self.link.link_s(int(np.asarray(x).nbytes)))
        try:
            answers = self.shed_offloader.offload(
                np.asarray(x), threshold=1.0, meta={"bundle_id": self.bundle_id, "rows": 1}
            )
            answer = check_answers({"answers": answers}, 1)[0]
        except Exception as exc:  # noqa: BLE001 - the edge chain answers instead
            with self._lock:
                self.offloads["shed_failed"] += 1
                self._edge_submitted += 1
            LOG.warning("shed failed (%s: %s); the edge answers", type(exc).__name__, exc)
            frame = raykit.require_ray().get(self._edge_ref(x, meta), timeout=self.timeout_s)
            return {"frame": frame}
        with self._lock:
            self.offloads["shed"] += 1
        return {"probs": None, "exit": answer.get("exit"), "stage": "cloud", "offloaded": True,
                "shed": True, "cloud": answer,
                "offload_ms": (time.perf_counter() - start) * 1000.0}  # fmt: skip

    def result(self, ticket: _Ticket) -> Answer:
        """Wait for one answer.

        Raises:
            PipelineError: a stage failed or the answer took longer than ``timeout_s``.
        """
        ray = raykit.require_ray()
        shed: dict[str, Any] = {}
        try:
            if ticket.shed:
                shed = ticket.ref.result(timeout=self.timeout_s)
                frame = shed.pop("frame", None)
            else:
                frame = ray.get(ticket.ref, timeout=self.timeout_s)
        except Exception as exc:
            raise PipelineError(f"Input {ticket.seq} was not answered: {exc}") from exc
        finally:
            with self._lock:
                self._inflight -= 1
        if frame is None:  # answered by the whole model in the cloud
            return self._finish(ticket, None, (), shed)
        probs, header = decode_tensor(frame)
        meta = header.get("meta") or {}
        if meta.get("seq") != ticket.seq:
            raise PipelineError(f"Answer for input {meta.get('seq')} arrived as {ticket.seq}.")
        widths = tuple(float(w) for w in meta.get("widths", []))
        fields: dict[str, Any] = {"exit": meta.get("exit"), "stage": meta.get("stage")}
        if not meta.get("final"):
            fields = self._offload(probs, meta)
            probs = fields.pop("probs")
        return self._finish(ticket, probs, widths, fields)

    def _finish(
        self, ticket: _Ticket, probs: Any, widths: tuple[float, ...], fields: dict[str, Any]
    ) -> Answer:
        """Count one answer and build it."""
        probs = fields.pop("probs", probs)
        latency = (time.perf_counter() - ticket.submitted) * 1000.0
        with self._lock:
            self._completed += 1
            self._met_slo += int(self.slo_ms is not None and latency <= self.slo_ms)
            key = "cloud" if fields.get("offloaded") and not fields.get("degraded") else None
            key = "shed" if fields.get("shed") else key or str(fields.get("exit"))
            self._exits[key] = self._exits.get(key, 0) + 1
        return Answer(ticket.seq, probs, widths, ticket.submitted, latency, **fields)

    def _offload(self, boundary: np.ndarray, meta: dict[str, Any]) -> dict[str, Any]:
        """Continue an input no edge exit answered in the cloud tail (over the emulated
        link); on failure answer from the last edge exit, degraded, with the reason."""
        from edgelesspart.errors import OffloadError
        from edgelesspart.runtime.offload import check_answers

        start = time.perf_counter()
        sleep_s(self.link.link_s(int(np.asarray(boundary).nbytes)))
        threshold = meta.get("threshold", self.threshold)
        try:
            answers = self.offloader.offload(
                np.asarray(boundary), threshold=1.0 if threshold is None else float(threshold),
                meta={"bundle_id": self.bundle_id, "rows": int(np.asarray(boundary).shape[0])},
            )  # fmt: skip
            answer = check_answers({"answers": answers}, 1)[0]
        except (OffloadError, Exception) as exc:  # noqa: BLE001 - no input is lost
            with self._lock:
                self.offloads["failed"] += 1
            best = meta.get("best")
            reason = f"cloud tail failed ({type(exc).__name__}: {exc})"
            ms = (time.perf_counter() - start) * 1000.0
            if not best:
                return {"probs": None, "exit": None, "stage": None, "offloaded": True,
                        "degraded": True, "reason": f"{reason}; no edge exit to answer from",
                        "offload_ms": ms}  # fmt: skip
            return {"probs": np.asarray(best["probs"], np.float32).reshape(1, -1),
                    "exit": best["exit"], "stage": best["stage"], "offloaded": True,
                    "degraded": True, "reason": reason, "offload_ms": ms}  # fmt: skip
        with self._lock:
            self.offloads["ok"] += 1
        return {"probs": None, "exit": answer.get("exit"), "stage": "cloud", "offloaded": True,
                "cloud": answer,
                "offload_ms": (time.perf_counter() - start) * 1000.0}  # fmt: skip

    # ------------------------------------------------------------------ control

    def set_widths(self, widths: tuple[float, ...]) -> None:
        """Set every stage's width now (control group: does not wait behind queued inputs)."""
        ray = raykit.require_ray()
        ray.get([a.set_width.remote(float(w)) for a, w in zip(self.actors, widths)], timeout=30)

    def set_slowdown(self, index: int, factor: float) -> None:
        """Inject a slowdown into stage ``index``'s emulated device (1.0 lifts it)."""
        ray = raykit.require_ray()
        ray.get(self.actors[index].set_slowdown.remote(float(factor)), timeout=30)

    def _read(self, now: float) -> dict[str, Any]:
        ray = raykit.require_ray()
        states = ray.get([a.state.remote() for a in self.actors], timeout=30)
        with self._lock:
            submitted, edge = self._submitted, self._edge_submitted
        return {"t": now, "submitted": submitted, "edge_submitted": edge, "states": states}

    def observe(self) -> Observation:
        """Per-stage metrics since the previous call (used by the loop; public for tests)."""
        now = time.perf_counter()
        cur = self._read(now)
        last = self._last or cur
        self._last = cur
        dt = max(1e-6, now - last["t"])
        stages = []
        upstream = cur["edge_submitted"]  # shed inputs never queue at a stage
        for old, new in zip(last["states"], cur["states"]):
            items = new["items"] - old["items"]
            computed = new.get("computed", new["items"]) - old.get("computed", old["items"])
            busy = new["busy_s"] - old["busy_s"]
            service = busy / computed * 1000.0 if computed else None
            share = computed / items if items else None  # rows an earlier exit left to it
            queue = max(0, upstream - new["items"])
            stages.append(StageMetrics(service, queue, items / dt, new["width"], share))
            upstream = new["items"]
        rate = (cur["submitted"] - last["submitted"]) / dt
        return Observation(now, rate, tuple(stages))

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self._tick()
            except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad tick
                if self._stop.is_set():
                    return  # actors gone while closing
                LOG.warning("width controller tick failed (%s: %s)", type(exc).__name__, exc)

    def _tick(self) -> None:
        """One controller period: observe, decide, apply, record."""
        obs = self.observe()
        decision = self.controller.step(obs) if self.controller is not None else None
        if decision is not None and decision.changed:
            with self._lock:
                self._decisions.append(decision.to_dict())
            if decision.widths != decision.previous:
                self.set_widths(decision.widths)
            self.shed = decision.shed
        self._record(obs, decision)

    def _record(self, obs: Observation, decision: Decision | None) -> None:
        with self._lock:
            self.timeline.append(
                {
                    "t": obs.time_s,
                    "arrival_rate": round(obs.arrival_rate, 3),
                    "service_ms": [
                        None if s.service_ms is None else round(s.service_ms, 2) for s in obs.stages
                    ],
                    "queue": [s.queue for s in obs.stages],
                    "widths": [s.width for s in obs.stages]
                    if decision is None
                    else list(decision.widths),
                    "reason": None if decision is None else decision.reason,
                    "shed": self.shed,
                }
            )

    def metrics(self) -> dict[str, Any]:
        """Counters, current width per stage, recent decisions with reasons, SLO attainment."""
        with self._lock:
            done = self._completed
            out = {
                "submitted": self._submitted,
                "completed": done,
                "rejected": self._rejected,
                "in_flight": self._inflight,
                "slo_ms": self.slo_ms,
                "slo_attainment": (self._met_slo / done) if done else None,
                "decisions": list(self._decisions),
                "answered_by": dict(self._exits),
                "offloads": dict(self.offloads),
                "shed": self.shed,
            }
        try:
            states = raykit.require_ray().get([a.state.remote() for a in self.actors], timeout=30)
        except Exception:  # noqa: BLE001 - closing
            states = []
        out["stages"] = [
            {
                "stage": k,
                "width": s["width"],
                "items": s["items"],
                "switches": s["switches"],
                "slowdown": s["slowdown"],
                "host_bound_items": s["host_bound"],
                "rows_by_width": s["rows_by_width"],
                "exited": s.get("exited", 0),
            }
            for k, s in enumerate(states)
        ]
        out["widths"] = {f"stage{k}": width_key(s["width"]) for k, s in enumerate(states)}
        return out
