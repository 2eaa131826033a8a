"""The dispatcher: streams inputs through a chain of stage actors and returns answers in order.

One long-lived Ray actor per stage (:class:`~edgelesspart.pipeline.stage.StageWorker`), pinned by
a custom resource. Its segment files are put into Ray's object store once and owned here
(:class:`~edgelesspart.pipeline.supervision.BlobStore`), so Ray can restart it (``max_restarts``,
unlimited by default) after a kill or on a replacement node; a
:class:`~edgelesspart.pipeline.supervision.Supervisor` tracks each stage's health, re-creates an
actor that is dead for good and, with ``spare``, re-places a stage that stays down on a spare
node. An input becomes a wire frame; stage ``k``'s ``forward`` returns two objects, the frame for
stage ``k+1`` (passed on as an ObjectRef, so it moves between nodes through Ray's object store
without touching the dispatcher) and its stats (collected here).

Every input has a deadline (``deadline_s``). A chain that fails because an actor or its node is
gone is sent again from the input frame the dispatcher kept, with backoff, as long as the deadline
allows -- after waiting for the stages to be up again -- so a request that spans a node's loss and
its replacement is answered late rather than refused. At the deadline the answer is
:class:`StageUnavailable` (a stage is still down: HTTP 503 with ``Retry-After``) or
:class:`DeadlineExceeded` (every stage is up but slow: HTTP 504): no request is left unanswered.
At most ``window`` inputs are in flight: :meth:`Pipeline.submit` raises :class:`PipelineBusy`
when the window is full (HTTP 429), :meth:`Pipeline.run_many` waits for a slot.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import (
    ConfigError,
    DeadlineExceeded,
    PipelineBusy,
    PipelineError,
    StageUnavailable,
)
from edgelesspart.pipeline import raykit
from edgelesspart.pipeline.emulation import DeviceEmulation, sleep_s
from edgelesspart.pipeline.stage import (
    CONCURRENCY_GROUPS,
    StageSpec,
    StageWorker,
    link_codec,
    stage_files,
)
from edgelesspart.pipeline.supervision import (
    DEFAULT_SPARE_AFTER_S,
    BlobStore,
    Reaper,
    Supervisor,
    failure_reason,
    is_actor_failure,
)
from edgelesspart.runtime.codecs import decode_tensor, encode_tensor
from edgelesspart.runtime.manifest import Manifest, load_manifest
from edgelesspart.runtime.preprocess import validate_input

LOG = logging.getLogger("edgelesspart.pipeline")
DEFAULT_WINDOW = 8
#: Seconds an input may take, retries included; long enough to span Ray's detection of a lost
#: node (about 15 s) and a replacement joining, short enough that no client waits for minutes.
DEFAULT_DEADLINE_S = 30.0
DEFAULT_TIMEOUT_S = DEFAULT_DEADLINE_S  # the former name
#: First pause before a failed chain is sent again; doubled up to BACKOFF_MAX_S.
BACKOFF_S = 0.05
BACKOFF_MAX_S = 1.0
STAT_KEYS = ("host_wall_s", "host_cpu_s", "pad_s", "busy_s", "link_s", "bytes_in", "bytes_out")


@dataclass(frozen=True)
class PipelineResult:
    """One answer: the probabilities, which exit answered, the end-to-end latency, and how many
    times the chain was sent (more than 1: a stage failed and the answer came late)."""

    seq: int
    probs: np.ndarray
    exit: str | None
    stage: str | None
    latency_ms: float
    attempts: int = 1
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def final(self) -> bool:
        """Whether ``probs`` are class probabilities (else a boundary for a cloud tail)."""
        return bool(self.meta.get("final", True))


@dataclass
class _Ticket:
    seq: int
    frame: bytes
    submitted: float
    deadline: float
    result: Any = None
    stats: list[Any] = field(default_factory=list)
    refs: list[Any] = field(default_factory=list)
    generations: list[int] = field(default_factory=list)
    attempts: int = 0


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
        codec = None if last else link_codec(stage.options.get("codec_out") or fallback)
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
        # a learned bottleneck's crossing (bn8s1+int8) is in the segments; its code goes as int8
        codec = None if last else link_codec(stage.options.get("codec_out") or "raw")
        specs.append(StageSpec(stage.name, tuple(s.name for s in group), codec_out=codec))
    return specs


class Pipeline:
    """A running chain of stage actors (use as a context manager, or :meth:`start`/:meth:`close`).

    Args:
        bundle_dir: the bundle directory (read on this machine only; stages get bytes).
        stages: what each stage runs (default: the bundle plan's stages).
        window: most inputs in flight at once.
        deadline_s: how long one input may take, retries included (see the module docstring).
        input_emulation: emulated link of the dispatcher's own sends to the first stage.
        input_codec: codec of the input frames.
        max_restarts / max_task_retries: Ray's fault tolerance for the stage actors (unlimited
            restarts; no Ray-level retries, the dispatcher retries within the deadline).
        spare: resource of spare nodes a stage moves to when down for ``spare_after_s``.
        timeout_s: former name of ``deadline_s``.
    """

    def __init__(
        self,
        bundle_dir: str | Path,
        stages: Sequence[StageSpec] | None = None,
        *,
        window: int = DEFAULT_WINDOW,
        deadline_s: float | None = None,
        input_emulation: DeviceEmulation | None = None,
        input_codec: str = "raw",
        max_restarts: int = raykit.DEFAULT_MAX_RESTARTS,
        max_task_retries: int = raykit.DEFAULT_MAX_TASK_RETRIES,
        spare: str | None = None,
        spare_after_s: float = DEFAULT_SPARE_AFTER_S,
        timeout_s: float | None = None,
    ) -> None:
        if int(window) < 1:
            raise ConfigError(f"The in-flight window must be >= 1, got {window!r}.")
        deadline = deadline_s if deadline_s is not None else timeout_s
        deadline = DEFAULT_DEADLINE_S if deadline is None else float(deadline)
        if not deadline > 0:
            raise ConfigError(f"The request deadline must be > 0 seconds, got {deadline!r}.")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, verify=True)
        self.stages = list(stages) if stages is not None else default_stages(self.manifest)
        # What the first stage takes: the model's input for a whole chain, a boundary tensor for
        # a chain that starts mid-model (bench_p8_pipeline.py's overhead calibration does).
        first = self.stages[0].segments[0] if self.stages and self.stages[0].segments else None
        by_name = {seg.name: seg for seg in self.manifest.segments}
        self.input_spec = by_name[first].input if first in by_name else self.manifest.input.tensor
        self.window = int(window)
        self.deadline_s = deadline
        self.input_emulation = input_emulation or DeviceEmulation()
        self.input_codec = input_codec
        self.spare = spare
        self.spare_after_s = float(spare_after_s)
        self._restart_opts = {"max_restarts": max_restarts, "max_task_retries": max_task_retries}
        self._slots = threading.BoundedSemaphore(self.window)
        self._send_lock = threading.Lock()
        self._lock = threading.Lock()
        self._seq = itertools.count()
        self._inflight: dict[int, _Ticket] = {}
        self._totals = {s.name: _StageTotals() for s in self.stages}
        self._counters = dict.fromkeys(
            ("submitted", "completed", "failed", "rejected", "retried", "late", "unavailable",
             "deadline_exceeded"), 0)  # fmt: skip
        self.supervisor: Supervisor | None = None
        self.reaper: Reaper | None = None
        self.blobs: BlobStore | None = None
        self.workers: list[dict[str, Any]] = []

    @property
    def timeout_s(self) -> float:
        """Former name of :attr:`deadline_s`."""
        return self.deadline_s

    @property
    def actors(self) -> list[Any]:
        """The current actor of every stage (empty when not started)."""
        if self.supervisor is None:
            return []
        return [self.supervisor.actor(s.name)[0] for s in self.stages]

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
        """Put the segment files into the object store, create one actor per stage and wait
        until each has loaded its segments."""
        ray = raykit.require_ray()
        self._check_resources()
        remote_cls = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(StageWorker)
        manifest = self.manifest.to_dict()
        files = {s.name: stage_files(self.bundle_dir, self.manifest, s) for s in self.stages}
        self.blobs = BlobStore()
        handles = {name: self.blobs.handles(f) for name, f in files.items()}
        by_name = {s.name: s for s in self.stages}

        def factory(name: str, resource: str | None, node_id: str | None) -> Any:
            spec = by_name[name].with_(resource=resource)
            options = raykit.actor_options(resource=resource, node_id=node_id, **self._restart_opts)
            return remote_cls.options(**options).remote(manifest, spec.to_dict(), handles[name])

        self.reaper = Reaper()
        self.supervisor = Supervisor(
            [s.name for s in self.stages],
            [s.resource for s in self.stages],
            factory,
            spare=self.spare,
            spare_after_s=self.spare_after_s,
            reaper=self.reaper,
        )
        try:
            self.workers = self.supervisor.start(ready_timeout_s)
        except Exception as exc:
            self.close()
            raise PipelineError(
                f"Stage actors did not start within {ready_timeout_s:.0f} s ({exc}); check that "
                "every --place resource has a live node and the nodes can install the runtime."
            ) from exc
        return self

    def close(self) -> None:
        """Kill the stage actors (without restart) and release the segment bytes."""
        supervisor, self.supervisor = self.supervisor, None
        if supervisor is not None:
            supervisor.close()
        if self.reaper is not None:
            self.reaper.close()
            self.reaper = None
        if self.blobs is not None:
            self.blobs.release()

    def __enter__(self) -> Pipeline:
        return self.start() if self.supervisor is None else self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ready(self) -> bool:
        """True when every stage is up (``/readyz``)."""
        return self.supervisor is not None and self.supervisor.ready()

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
        if self.supervisor is None:
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
        now = time.perf_counter()
        ticket = _Ticket(seq, frame, now, time.monotonic() + self.deadline_s)
        with self._lock:
            self._inflight[seq] = ticket
            self._counters["submitted"] += 1
        if self.supervisor is not None and self.supervisor.ready():
            self._launch(ticket)  # else result() launches it once the stages are up
        return ticket

    def _launch(self, ticket: _Ticket) -> None:
        """Send the ticket's input frame through the current actors (one attempt)."""
        assert self.supervisor is not None
        ref: Any = ticket.frame
        ticket.stats, ticket.refs, ticket.generations = [], [], []
        for spec in self.stages:
            actor, generation = self.supervisor.actor(spec.name)
            ref, st = actor.forward.options(num_returns=2, concurrency_group="compute").remote(ref)
            ticket.refs += [ref, st]
            if spec.emulation.link_mbps is not None:
                ref = actor.send.options(concurrency_group="link").remote(ref)
                ticket.refs.append(ref)
            ticket.stats.append(st)
            ticket.generations.append(generation)
        ticket.result = ref
        ticket.attempts += 1

    def _blame(self, ticket: _Ticket, exc: BaseException) -> None:
        """Report the first stage whose call of this attempt failed to the supervisor."""
        ray = raykit.require_ray()
        assert self.supervisor is not None
        for spec, st_ref, gen in zip(self.stages, ticket.stats, ticket.generations):
            ready, _ = ray.wait([st_ref], timeout=0)
            if not ready:
                continue
            try:
                ray.get(st_ref, timeout=0)
            except Exception as stage_exc:  # noqa: BLE001 - classify
                if is_actor_failure(stage_exc):
                    self.supervisor.report_failure(spec.name, gen, stage_exc)
                    return
        # the failure was on a link call (send) or not visible per stage: blame the last stage
        # whose generation is current, so the supervisor probes it
        spec = self.stages[-1]
        self.supervisor.report_failure(spec.name, ticket.generations[-1], exc)

    def _discard_attempt(self, ticket: _Ticket) -> None:
        if self.reaper is not None:
            self.reaper.add(ticket.refs)
        ticket.result, ticket.stats, ticket.refs = None, [], []

    def _unanswered(self, ticket: _Ticket, last: BaseException | None) -> PipelineError:
        """The error for a ticket whose deadline passed: 503 while a stage is down, else 504."""
        down = self.supervisor.down() if self.supervisor is not None else []
        reason = f" (last failure: {failure_reason(last)})" if last is not None else ""
        if down:
            with self._lock:
                self._counters["unavailable"] += 1
            return StageUnavailable(
                f"Input {ticket.seq} was not answered: stage(s) {', '.join(down)} down and not "
                f"back within the {self.deadline_s:g} s deadline{reason}; retry later.",
                retry_after_s=max(1.0, min(self.deadline_s, 10.0)),
            )
        with self._lock:
            self._counters["deadline_exceeded"] += 1
        return DeadlineExceeded(
            f"Input {ticket.seq} was not answered within its {self.deadline_s:g} s deadline "
            f"after {ticket.attempts} attempt(s){reason}."
        )

    def _await(self, ticket: _Ticket, deadline: float) -> tuple[bytes, list[Any]]:
        """Attempts of one ticket until an answer or the deadline (see the module docstring)."""
        ray = raykit.require_ray()
        assert self.supervisor is not None
        backoff, last = BACKOFF_S, None
        while True:
            if ticket.result is None:
                if not self.supervisor.wait_ready(deadline):
                    raise self._unanswered(ticket, last)
                self._launch(ticket)
            left = deadline - time.monotonic()
            ready, _ = ray.wait([ticket.result], timeout=max(0.0, left))
            if not ready:
                self._discard_attempt(ticket)
                raise self._unanswered(ticket, last)
            try:
                frame = ray.get(ticket.result, timeout=0)
                stats = ray.get(ticket.stats, timeout=max(1.0, deadline - time.monotonic()))
                return frame, stats
            except Exception as exc:  # noqa: BLE001 - classify below
                if not is_actor_failure(exc):
                    self._discard_attempt(ticket)
                    raise PipelineError(
                        f"Input {ticket.seq} was not answered: {failure_reason(exc)}"
                    ) from exc
                last = exc
                self._blame(ticket, exc)
                self._discard_attempt(ticket)
                with self._lock:
                    self._counters["retried"] += 1
                LOG.debug("input %s: attempt %s failed (%s)", ticket.seq, ticket.attempts,
                          failure_reason(exc))  # fmt: skip
                time.sleep(max(0.0, min(backoff, deadline - time.monotonic())))
                backoff = min(backoff * 2, BACKOFF_MAX_S)

    def result(self, ticket: _Ticket, timeout: float | None = None) -> PipelineResult:
        """Wait for a ticket's answer (and free its window slot).

        Raises:
            StageUnavailable: a stage was down until the deadline (HTTP 503, ``Retry-After``).
            DeadlineExceeded: every stage was up but the answer was too slow (HTTP 504).
            PipelineError: a stage raised on this input (not a fault of Ray or a node).
        """
        deadline = ticket.deadline
        if timeout is not None:
            deadline = min(deadline, time.monotonic() + timeout)
        try:
            frame, stats = self._await(ticket, deadline)
        except Exception as exc:
            with self._lock:
                self._counters["failed"] += 1
            if isinstance(exc, PipelineError):
                LOG.warning("%s", exc)
                raise
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
            self._counters["late"] += int(ticket.attempts > 1)
        latency = (time.perf_counter() - ticket.submitted) * 1000
        return PipelineResult(
            ticket.seq, probs, meta.get("exit"), meta.get("by"), latency, ticket.attempts, meta
        )

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
        self._discard_attempt(ticket)
        self._slots.release()

    # ------------------------------------------------------------------ metrics

    def _queue_lengths(self) -> dict[str, int]:
        """Per stage: inputs submitted to it whose call there has not finished yet."""
        ray = raykit.require_ray()
        with self._lock:
            tickets = list(self._inflight.values())
        queued = dict.fromkeys((s.name for s in self.stages), 0)
        for ticket in tickets:
            refs = list(ticket.stats)
            if not refs:  # waiting for a stage to come back: queued at the dispatcher
                continue
            _, not_ready = ray.wait(refs, num_returns=len(refs), timeout=0)
            pending = set(not_ready)
            for spec, ref in zip(self.stages, refs):
                queued[spec.name] += int(ref in pending)
        return queued

    def metrics(self) -> dict[str, Any]:
        """Dispatcher counters; per stage: health (state, restarts, re-placements, last failure
        reason), busy time, queue length and bytes in/out."""
        queued = self._queue_lengths()
        health = self.supervisor.metrics() if self.supervisor is not None else {}
        with self._lock:
            stages = {}
            for name, t in self._totals.items():
                h = health.get(name, {})
                stages[name] = {
                    **h,
                    "items": t.items,
                    "queue": queued[name],
                    "host_bound_items": t.host_bound,
                    "restarts_seen": max(len(t.pids) - 1, int(h.get("restarts", 0))),
                    **{k: round(v, 6) for k, v in t.sums.items()},
                }
            return {
                **self._counters,
                "ready": self.ready(),
                "in_flight": len(self._inflight),
                "window": self.window,
                "deadline_s": self.deadline_s,
                "spare": self.spare,
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
