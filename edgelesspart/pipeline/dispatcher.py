"""The dispatcher: streams inputs through a chain of stage actors and returns answers in order.

One long-lived Ray actor per stage (:class:`~edgelesspart.pipeline.stage.StageWorker`), pinned by
a custom resource, restarted by Ray when it dies (``max_restarts``) with the calls it was running
or had queued retried (``max_task_retries``). An input becomes a wire frame; stage ``k``'s
``forward`` returns two objects, the frame for stage ``k+1`` (passed on as an ObjectRef, so it
moves between nodes through Ray's object store without touching the dispatcher) and its stats
(collected here). At most ``window`` inputs are in flight: :meth:`Pipeline.submit` raises
:class:`PipelineBusy` when the window is full (HTTP 429), :meth:`Pipeline.run_many` waits for a
slot. A call that still fails after the retries raises :class:`PipelineError`: no request is
silently lost.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import ConfigError, PipelineBusy, PipelineError
from edgelesspart.pipeline import raykit
from edgelesspart.pipeline.emulation import DeviceEmulation, sleep_s
from edgelesspart.pipeline.stage import CONCURRENCY_GROUPS, StageSpec, StageWorker, stage_files
from edgelesspart.runtime.codecs import decode_tensor, encode_tensor
from edgelesspart.runtime.manifest import Manifest, load_manifest
from edgelesspart.runtime.preprocess import validate_input

DEFAULT_WINDOW = 8
DEFAULT_TIMEOUT_S = 120.0
STAT_KEYS = ("host_wall_s", "host_cpu_s", "pad_s", "busy_s", "link_s", "bytes_in", "bytes_out")


@dataclass(frozen=True)
class PipelineResult:
    """One answer: the probabilities, which exit answered, and the end-to-end latency."""

    seq: int
    probs: np.ndarray
    exit: str | None
    stage: str | None
    latency_ms: float
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """Whether ``probs`` are class probabilities (else a boundary for a cloud tail)."""
        return bool(self.meta.get("final", True))


@dataclass
class _Ticket:
    seq: int
    result: Any
    stats: list[Any]
    submitted: float


@dataclass
class _StageTotals:
    items: int = 0
    host_bound: int = 0
    pids: set[int] = field(default_factory=set)
    sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAT_KEYS, 0.0))

    def add(self, stats: Mapping[str, Any]) -> None:
        self.items += 1
        self.host_bound += int(bool(stats.get("host_bound")))
        self.pids.add(int(stats.get("pid", 0)))
        for key in STAT_KEYS:
            self.sums[key] += float(stats.get(key, 0.0))


def default_stages(manifest: Manifest) -> list[StageSpec]:
    """One :class:`StageSpec` per stage of the bundle's plan, with its link codec."""
    fallback = str(manifest.codec.get("name", "raw"))
    specs = []
    for k, stage in enumerate(manifest.plan.stages):
        last = k == len(manifest.plan.stages) - 1
        codec = None if last else stage.options.get("codec_out") or fallback
        segments = tuple(s.name for s in manifest.stage_segments(stage.name))
        specs.append(StageSpec(stage.name, segments, codec_out=codec))
    return specs


def stages_for_plan(manifest: Manifest, plan: Any) -> list[StageSpec]:
    """Group a bundle's segments into the stages of another ``plan`` over the same cut points.

    A bundle exported with fine segments (one per stretch between candidate cut points) can so
    run any coarser chain without a new export; each plan cut must be a segment boundary.

    Raises:
        ConfigError: a cut of ``plan`` falls inside a segment of the bundle.
    """
    segments = list(manifest.segments)
    specs, i = [], 0
    for k, stage in enumerate(plan.stages):
        group = []
        while i < len(segments) and (not group or group[-1].end != stage.end):
            group.append(segments[i])
            i += 1
        if not group or group[0].start != stage.start or group[-1].end != stage.end:
            raise ConfigError(
                f"Stage {stage.name!r} ({stage.start} -> {stage.end}) does not start and end at "
                "segment boundaries of this bundle; export the bundle with these cut points."
            )
        last = k == len(plan.stages) - 1
        codec = None if last else stage.options.get("codec_out") or "raw"
        specs.append(StageSpec(stage.name, tuple(s.name for s in group), codec_out=codec))
    return specs


class Pipeline:
    """A running chain of stage actors (use as a context manager, or :meth:`start`/:meth:`close`).

    Args:
        bundle_dir: the bundle directory (read on this machine only; stages get bytes).
        stages: what each stage runs (default: the bundle plan's stages).
        window: most inputs in flight at once.
        timeout_s: how long :meth:`result` waits for one answer.
        input_emulation: emulated link of the dispatcher's own sends to the first stage.
        input_codec: codec of the input frames.
        max_restarts / max_task_retries: Ray's fault tolerance for the stage actors.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        stages: Sequence[StageSpec] | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        input_emulation: DeviceEmulation | None = None,
        input_codec: str = "raw",
        max_restarts: int = raykit.DEFAULT_MAX_RESTARTS,
        max_task_retries: int = raykit.DEFAULT_MAX_TASK_RETRIES,
    ) -> None:
        if int(window) < 1:
            raise ConfigError(f"The in-flight window must be >= 1, got {window!r}.")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, verify=True)
        self.stages = list(stages) if stages is not None else default_stages(self.manifest)
        # What the first stage takes: the model's input for a whole chain, a boundary tensor for
        # a chain that starts mid-model (bench_p8_pipeline.py's overhead calibration does).
        first = self.stages[0].segments[0] if self.stages and self.stages[0].segments else None
        by_name = {seg.name: seg for seg in self.manifest.segments}
        self.input_spec = by_name[first].input if first in by_name else self.manifest.input.tensor
        self.window = int(window)
        self.timeout_s = float(timeout_s)
        self.input_emulation = input_emulation or DeviceEmulation()
        self.input_codec = input_codec
        self._restart_opts = {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
        self._slots = threading.BoundedSemaphore(self.window)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._inflight: dict[int, _Ticket] = {}
        self._totals = {s.name: _StageTotals() for s in self.stages}
        self._counters = dict.fromkeys(("submitted", "completed", "failed", "rejected"), 0)
        self.actors: list[Any] = []
        self.workers: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ lifecycle

    def _check_resources(self) -> None:
        wanted = {s.resource for s in self.stages if s.resource}
        have = raykit.cluster_resources()
        missing = sorted(r for r in wanted if r not in have)
        if missing:
            custom = sorted(
                k
                for k in have
                if k not in ("CPU", "GPU", "memory")
                and not k.startswith(("node:", "object_store", "accelerator"))
            )
            raise ConfigError(
                f"No Ray node offers resource(s) {missing}; the cluster has {custom or 'none'}. "
                "Start each device with ray start --address HEAD:6379 --resources "
                "'{\"NAME\": 1}' or fix --place."
            )

    def start(self, ready_timeout_s: float = 120.0) -> Pipeline:
        """Create one actor per stage and wait until each has loaded its segments."""
        ray = raykit.require_ray()
        self._check_resources()
        remote_cls = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(StageWorker)
        manifest = self.manifest.to_dict()
        try:  # a later stage's files may be missing: kill the actors already created
            for spec in self.stages:
                options = raykit.actor_options(resource=spec.resource, **self._restart_opts)
                files = stage_files(self.bundle_dir, self.manifest, spec)
                self.actors.append(
                    remote_cls.options(**options).remote(manifest, spec.to_dict(), files)
                )
        except BaseException:
            self.close()
            raise
        try:
            self.workers = ray.get([a.ready.remote() for a in self.actors], timeout=ready_timeout_s)
        except Exception as exc:
            self.close()
            raise PipelineError(
                f"Stage actors did not start within {ready_timeout_s:.0f} s ({exc}); check that "
                "every --place resource has a live node and the nodes can install the runtime."
            ) from exc
        return self

    def close(self) -> None:
        """Kill the stage actors (without restart)."""
        actors, self.actors = self.actors, []
        raykit.kill_actors(actors)

    def __enter__(self) -> Pipeline:
        return self.start() if not self.actors else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ streaming

    def submit(
        self,
        x: np.ndarray,
        *,
        block: bool = False,
        timeout: float | None = None,
        threshold: float | None = None,
    ) -> Any:
        """Send one input (batch of one, or one sample) into the chain; return its ticket.

        ``threshold`` overrides the stages' exit threshold for this input only.

        Raises:
            InputError: ``x`` does not match the first stage's input (shape, dtype, NaN/Inf);
                checked here, before it takes a slot, so a bad request never reaches a stage.
            PipelineBusy: the window is full (and ``block`` is False, or ``timeout`` passed).
        """
        if not self.actors:
            raise PipelineError("The pipeline is not started; call start() first.")
        x = validate_input(np.asarray(x), self.input_spec)  # 4xx, not a stage failure
        if not self._slots.acquire(blocking=block, timeout=timeout if block else None):
            with self._lock:
                self._counters["rejected"] += 1
            raise PipelineBusy(
                f"{self.window} inputs are already in flight (the window); retry shortly."
            )
        try:
            return self._send(x, threshold)
        except BaseException:
            self._slots.release()
            raise

    def _send(self, x: np.ndarray, threshold: float | None = None) -> _Ticket:
        seq = next(self._seq)
        meta: dict[str, Any] = {"seq": seq}
        if threshold is not None:
            meta["threshold"] = float(threshold)
        frame = encode_tensor(x, self.input_codec, meta=meta)
        with self._send_lock:  # the dispatcher's own (emulated) link is one at a time
            sleep_s(self.input_emulation.link_s(len(frame)))
        ref: Any = frame
        stats = []
        for actor, spec in zip(self.actors, self.stages):
            ref, st = actor.forward.options(num_returns=2, concurrency_group="compute").remote(ref)
            if spec.emulation.link_mbps is not None:
                ref = actor.send.options(concurrency_group="link").remote(ref)
            stats.append(st)
        ticket = _Ticket(seq, ref, stats, time.perf_counter())
        with self._lock:
            self._inflight[seq] = ticket
            self._counters["submitted"] += 1
        return ticket

    def result(self, ticket: _Ticket, timeout: float | None = None) -> PipelineResult:
        """Wait for a ticket's answer (and free its window slot).

        Raises:
            PipelineError: a stage failed after Ray's restarts and retries, or the answer took
                longer than ``timeout`` (default: the pipeline's ``timeout_s``).
        """
        ray = raykit.require_ray()
        try:
            frame = ray.get(ticket.result, timeout=self.timeout_s if timeout is None else timeout)
            stats = ray.get(ticket.stats, timeout=self.timeout_s)
        except Exception as exc:
            with self._lock:
                self._counters["failed"] += 1
            raise PipelineError(
                f"Input {ticket.seq} was not answered: {type(exc).__name__}: {exc}"
            ) from exc
        finally:
            with self._lock:
                tracked = self._inflight.pop(ticket.seq, None) is not None
            if tracked:  # a ticket collected (or abandoned) before holds no slot any more
                self._slots.release()
        probs, header = decode_tensor(frame)
        meta = header.get("meta") or {}
        if meta.get("seq") != ticket.seq:
            raise PipelineError(f"Answer for input {meta.get('seq')} arrived as {ticket.seq}.")
        with self._lock:
            for st in stats:
                self._totals[st["stage"]].add(st)
            self._counters["completed"] += 1
        latency = (time.perf_counter() - ticket.submitted) * 1000
        return PipelineResult(ticket.seq, probs, meta.get("exit"), meta.get("by"), latency, meta)

    def infer(self, x: np.ndarray) -> PipelineResult:
        """Submit one input without waiting for a slot and wait for its answer."""
        return self.result(self.submit(x))

    def run_many(self, xs: Iterable[np.ndarray]) -> list[PipelineResult]:
        """Stream inputs through the chain, ``window`` at a time; answers come back in order."""
        pending: list[_Ticket] = []
        results: list[PipelineResult] = []
        try:
            for x in xs:
                while len(pending) >= self.window:
                    results.append(self.result(pending.pop(0)))
                pending.append(self.submit(x, block=True, timeout=self.timeout_s))
            while pending:
                results.append(self.result(pending.pop(0)))
        except BaseException:
            for ticket in pending:  # nobody will wait for these: give their slots back
                self._abandon(ticket)
            raise
        return results

    def _abandon(self, ticket: _Ticket) -> None:
        """Stop tracking a ticket nobody will call :meth:`result` for and free its slot."""
        with self._lock:
            if self._inflight.pop(ticket.seq, None) is None:
                return  # already collected
            self._counters["failed"] += 1
        self._slots.release()

    # ------------------------------------------------------------------ metrics

    def _queue_lengths(self) -> dict[str, int]:
        """Per stage: inputs submitted to it whose call there has not finished yet."""
        ray = raykit.require_ray()
        with self._lock:
            tickets = list(self._inflight.values())
        queued = dict.fromkeys((s.name for s in self.stages), 0)
        for ticket in tickets:
            _, not_ready = ray.wait(ticket.stats, num_returns=len(ticket.stats), timeout=0)
            pending = set(not_ready)
            for spec, ref in zip(self.stages, ticket.stats):
                queued[spec.name] += int(ref in pending)
        return queued

    def metrics(self) -> dict[str, Any]:
        """Dispatcher counters and per-stage busy time, queue length, bytes in/out, restarts."""
        queued = self._queue_lengths()
        with self._lock:
            stages = {
                name: {
                    "items": t.items,
                    "queue": queued[name],
                    "host_bound_items": t.host_bound,
                    "restarts_seen": max(0, len(t.pids) - 1),
                    **{k: round(v, 6) for k, v in t.sums.items()},
                }
                for name, t in self._totals.items()
            }
            return {
                **self._counters,
                "in_flight": len(self._inflight),
                "window": self.window,
                "stages": stages,
            }


def stages_with(
    stages: Sequence[StageSpec],
    *,
    placement: Mapping[str, str] | None = None,
    emulation: DeviceEmulation | None = None,
    codec: str | None = None,
    threshold: float | None = None,
) -> list[StageSpec]:
    """The stages with placements, one emulation, one link codec and/or one exit threshold
    applied to all."""
    out = []
    for k, spec in enumerate(stages):
        changes: dict[str, Any] = {}
        if placement and spec.name in placement:
            changes["resource"] = placement[spec.name]
        if emulation is not None:
            changes["emulation"] = emulation
        if codec is not None and k < len(stages) - 1:
            changes["codec_out"] = codec
        if threshold is not None:
            changes["threshold"] = threshold
        out.append(spec.with_(**changes))
    return out
