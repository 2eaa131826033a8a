"""SlimEdge on Ray: one actor per device, fan-in to an aggregator, re-planning on failures.

* :class:`ViewWorker` (one Ray actor per device) runs its view's pruned backbone (LiteRT bytes)
  and can swap in a differently pruned segment between two requests (``swap``): the service
  never stops. A slow device is emulated by sleeping for the missing time (never by burning CPU).
* The **aggregator** actor fuses whatever features arrive: each request's feature refs of the
  views that answered are passed to ``fuse`` with a presence mask (Ray resolves them there).
* :class:`SlimEdgeService` (the dispatcher, in the driver) fans a request out, waits for the
  views up to a deadline, and treats a view as lost after ``max_missed`` missed deadlines or an
  actor error. When a device is lost it takes the precomputed plan for that single failure (or
  re-plans with NSGA-II for several failures), swaps the survivors' segments to the plan's
  ratios, and keeps answering from the survivors: no request is dropped.

Ray comes from the pipeline package's shared helpers (:mod:`edgelesspart.pipeline.raykit`:
``require_ray`` with its install hint, ``actor_options`` for placement by custom resource;
:mod:`edgelesspart.pipeline.supervision`: segment bytes put once into the object store and owned
by the dispatcher, passed to the actors as references, so a re-created or restarted actor fetches
them again). Device actors are *not* restarted by Ray (``max_restarts=0``): a lost device is
re-planned around, not waited for. Once a node offers the lost device's resource again (a
replacement node, or the same node after its actor was killed) the device is re-created there in
the background and, when it answers, the views are re-planned with it (a *rejoin*). The
aggregator restarts like a pipeline stage; a fuse call that hits its restart is retried until
``request_deadline_s``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart.errors import PlanError, StageUnavailable

LOG = logging.getLogger("edgelesspart.slimedge")
#: A lost device is re-created at most this often (seconds) while no node has taken it back.
REVIVE_EVERY_S = 2.0
#: A re-created device that does not answer within this many seconds is tried again.
REVIVE_TIMEOUT_S = 60.0


def _ray() -> Any:
    from edgelesspart.pipeline.raykit import require_ray

    return require_ray()


def _whoami() -> dict[str, Any]:
    node = None
    try:
        import ray

        if ray.is_initialized():
            node = ray.get_runtime_context().get_node_id()
    except ImportError:
        pass
    return {"pid": os.getpid(), "node_id": node}


class _Segment:
    """A LiteRT interpreter over one segment, batch resized on demand.

    ``tflite`` is the bytes, or a :meth:`~edgelesspart.pipeline.supervision.BlobStore.handles`
    entry fetched from the dispatcher's object store (what Ray actors get)."""

    def __init__(self, tflite: Any) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from edgelesspart.pipeline.supervision import resolve_blob

        tflite = resolve_blob(tflite)
        self.interpreter = Interpreter(model_content=tflite, num_threads=1)
        self.runner = self.interpreter.get_signature_runner("serving_default")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        out = self.runner(x=np.ascontiguousarray(x, dtype=np.float32))
        return next(iter(out.values()))


class ViewWorkerImpl:
    """The body of the per-device actor (plain class, so it is testable without Ray)."""

    def __init__(self, view: int, tflite: Any, ratio: float, factor: float = 1.0) -> None:
        self.view = view
        self.segment = _Segment(tflite)
        self.ratio = ratio
        self.factor = factor
        self.swaps = 0

    def features(self, x: np.ndarray) -> np.ndarray:
        """This view's features; sleeps ``(factor - 1) x compute time`` to emulate the device."""
        start = time.perf_counter()
        out = self.segment(x)
        spent = time.perf_counter() - start
        if self.factor > 1.0:
            time.sleep((self.factor - 1.0) * spent)
        return out

    def swap(self, tflite: Any, ratio: float) -> float:
        """Replace the segment (between two requests); returns the new ratio."""
        self.segment = _Segment(tflite)
        self.ratio = ratio
        self.swaps += 1
        return ratio

    def state(self) -> dict[str, Any]:
        """Heartbeat: view, ratio and swap count, process and node."""
        return {"view": self.view, "ratio": self.ratio, "swaps": self.swaps, **_whoami()}


class AggregatorImpl:
    """Fuses the features of the views that answered (the fusion segment, LiteRT)."""

    def __init__(self, tflite: Any, n_views: int) -> None:
        self.segment = _Segment(tflite)
        self.n_views = n_views

    def ready(self) -> dict[str, Any]:
        """Who and where the aggregator is."""
        return _whoami()

    def fuse(self, present: Sequence[int], *features: np.ndarray) -> np.ndarray:
        """Class probabilities from the ``present`` views' ``features`` (same order)."""
        batch, width = features[0].shape
        x = np.zeros((batch, self.n_views, width + 1), dtype=np.float32)
        for v, f in zip(present, features):
            x[:, v, :width] = f
            x[:, v, width] = 1.0
        return self.segment(x)


@dataclass
class ServiceStats:
    """What the dispatcher observed."""

    answered: int = 0
    lost_devices: list[int] = field(default_factory=list)
    replans: list[dict[str, Any]] = field(default_factory=list)
    degraded_answers: int = 0
    rejoined_devices: list[int] = field(default_factory=list)
    aggregator_retries: int = 0
    last_failure: dict[int, str] = field(default_factory=dict)


#: segment library: (view, ratio) -> LiteRT bytes of that view's backbone pruned at that ratio
Library = Mapping[tuple[int, float], bytes]


def nearest_ratio(library: Library, view: int, ratio: float) -> float:
    """The largest available ratio of ``view`` not above ``ratio`` (never prunes more)."""
    available = sorted(r for v, r in library if v == view)
    below = [r for r in available if r <= ratio + 1e-9]
    return below[-1] if below else available[0]


class SlimEdgeService:
    """The dispatcher: fan-out to device actors, fan-in at the aggregator, failure handling.

    Args:
        library: pruned backbone segments per ``(view, ratio)``.
        fusion: LiteRT bytes of the fusion segment.
        ratios: the starting plan's ratio per view.
        planner: ``alive views -> ratio per view``, e.g. ``optimize.failure_planner``
            (precomputed single-failure plans, NSGA-II otherwise).
        factors: per-device latency factor to emulate (default 1, no sleeping).
        deadline_s: how long a request waits for the views.
        max_missed: missed deadlines before a device is declared lost.
        resources: per device, a Ray custom resource naming its node (``None``: anywhere).
        request_deadline_s: how long a request may wait for the aggregator to come back.
        revive: re-create lost devices once a node offers their resource (see the module
            docstring); ``False`` keeps a lost device lost.
    """

    def __init__(
        self,
        library: Library,
        fusion: bytes,
        ratios: Sequence[float],
        planner: Callable[[list[int]], Sequence[float]],
        *,
        factors: Sequence[float] | None = None,
        deadline_s: float = 2.0,
        max_missed: int = 2,
        resources: Sequence[str | None] | None = None,
        request_deadline_s: float = 30.0,
        revive: bool = True,
    ) -> None:
        from edgelesspart.pipeline.raykit import actor_options
        from edgelesspart.pipeline.supervision import BlobStore, Reaper

        ray = _ray()
        n = len(ratios)
        self.factors = list(factors) if factors is not None else [1.0] * n
        self.resources = list(resources) if resources is not None else [None] * n
        self._worker_cls = ray.remote(ViewWorkerImpl)
        self._actor_options = actor_options
        aggregator = ray.remote(AggregatorImpl).options(**actor_options())
        self.library = library
        self.planner = planner
        self.deadline_s = deadline_s
        self.max_missed = max_missed
        self.request_deadline_s = float(request_deadline_s)
        self.revive = revive
        self.blobs = BlobStore()
        self.reaper = Reaper()
        self._handles: dict[Any, dict[str, Any]] = {}
        self.ratios = [nearest_ratio(library, v, r) for v, r in enumerate(ratios)]
        self.workers = [self._new_worker(v) for v in range(n)]
        self.aggregator = aggregator.remote(self._handle("fusion", fusion), n)
        self.alive = list(range(n))
        self.missed = [0] * n
        self.stats = ServiceStats()
        self._reviving: dict[int, tuple[Any, Any, float]] = {}
        self._last_revive = [0.0] * n
        self._nodes_seen: list[set[str]] = [set() for _ in range(n)]
        self._aggregator_up = True
        states = ray.get([w.state.remote() for w in self.workers], timeout=120)  # all loaded
        ray.get(self.aggregator.ready.remote(), timeout=120)
        for v, st in enumerate(states):
            if st.get("node_id"):
                self._nodes_seen[v].add(st["node_id"])

    def _handle(self, key: Any, data: bytes) -> dict[str, Any]:
        """The object-store handle of one segment (put once, owned by this service)."""
        if key not in self._handles:
            self._handles[key] = self.blobs.handles({"segment": data})["segment"]
        return self._handles[key]

    def _view_segment(self, v: int, ratio: float) -> dict[str, Any]:
        return self._handle((v, ratio), self.library[(v, ratio)])

    def _new_worker(self, v: int, node_id: str | None = None) -> Any:
        opts = self._actor_options(
            resource=self.resources[v], max_restarts=0, max_task_retries=0, node_id=node_id
        )
        segment = self._view_segment(v, self.ratios[v])
        return self._worker_cls.options(**opts).remote(v, segment, self.ratios[v], self.factors[v])

    def close(self) -> None:
        """Kill every actor and release the segment bytes."""
        from edgelesspart.pipeline.raykit import kill_actors

        kill_actors([*self.workers, *(a for a, _, _ in self._reviving.values()), self.aggregator])
        self._reviving.clear()
        self.reaper.close()
        self.blobs.release()

    def ready(self) -> bool:
        """True when every device is alive and the aggregator answered its last call."""
        return len(self.alive) == len(self.workers) and self._aggregator_up

    def infer(self, views: Sequence[np.ndarray]) -> np.ndarray:
        """Answer one batch from the views whose devices answer within the deadline."""
        ray = _ray()
        self._step_revival()
        refs = {v: self.workers[v].features.remote(views[v]) for v in self.alive}
        ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=self.deadline_s)
        ready_ids = {r.hex() for r in ready}
        present, lost = [], []
        for v, ref in refs.items():
            if ref.hex() not in ready_ids:
                self.reaper.add([ref])  # read once it resolves: no "Unhandled error" later
                self.missed[v] += 1
                if self.missed[v] >= self.max_missed:
                    self.stats.last_failure[v] = f"missed {self.missed[v]} deadlines"
                    lost.append(v)
                continue
            try:
                ray.get(ref, timeout=0)
            except ray.exceptions.RayError as exc:
                from edgelesspart.pipeline.supervision import failure_reason

                self.stats.last_failure[v] = failure_reason(exc)
                lost.append(v)
                continue
            self.missed[v] = 0
            present.append(v)
        if not present:
            if lost:
                self.device_lost(lost)
            raise PlanError("No device answered: every view is lost; the request cannot be fused.")
        probs = self._fuse(present, [refs[v] for v in present])
        self.stats.answered += 1
        if len(present) < len(self.alive):
            self.stats.degraded_answers += 1
        if lost:
            self.device_lost(lost)
        return probs

    def _fuse(self, present: list[int], refs: list[Any]) -> np.ndarray:
        """Fuse at the aggregator; a call that hits its restart is retried until the deadline."""
        from edgelesspart.pipeline.supervision import failure_reason, is_actor_failure

        ray = _ray()
        end = time.monotonic() + self.request_deadline_s
        backoff = 0.05
        while True:
            try:
                out = ray.get(
                    self.aggregator.fuse.remote(present, *refs),
                    timeout=max(0.1, end - time.monotonic()),
                )
                if not self._aggregator_up:
                    LOG.warning("aggregator up again")
                self._aggregator_up = True
                return out
            except Exception as exc:  # noqa: BLE001 - classify
                if not is_actor_failure(exc) or time.monotonic() >= end:
                    self._aggregator_up = False
                    raise StageUnavailable(
                        f"The aggregator did not answer within {self.request_deadline_s:g} s "
                        f"({failure_reason(exc)}); retry later.",
                        retry_after_s=5.0,
                    ) from exc
                if self._aggregator_up:
                    LOG.warning("aggregator down: %s", failure_reason(exc))
                self._aggregator_up = False
                self.stats.aggregator_retries += 1
                time.sleep(min(backoff, max(0.0, end - time.monotonic())))
                backoff = min(backoff * 2, 1.0)

    def device_lost(self, lost: Sequence[int]) -> dict[str, Any]:
        """Drop ``lost`` views, re-plan for the survivors, swap their segments without stopping."""
        for v in lost:
            LOG.warning("view %s lost: %s", v, self.stats.last_failure.get(v, "unknown"))
            self.reaper.add([self.workers[v].state.remote()])  # nothing waits on it
            self._last_revive[v] = time.monotonic()
        self.alive = [v for v in self.alive if v not in set(lost)]
        self.stats.lost_devices.extend(lost)
        if not self.alive:
            raise PlanError("Every device is lost; nothing left to re-plan for.")
        return self._replan(lost=list(lost))

    def _replan(self, *, lost: list[int] | None = None, rejoined: list[int] | None = None
                ) -> dict[str, Any]:  # fmt: skip
        """Plan for the alive views and swap the segments whose ratio changed."""
        start = time.perf_counter()
        planned = self.planner(list(self.alive))
        planned_s = time.perf_counter() - start
        swaps = []
        for v in self.alive:
            ratio = nearest_ratio(self.library, v, planned[v])
            if ratio != self.ratios[v]:
                segment = self._view_segment(v, ratio)
                # ordered before the next request; read by the reaper (nobody waits on it)
                self.reaper.add([self.workers[v].swap.remote(segment, ratio)])
                self.ratios[v] = ratio
                swaps.append(v)
        record = {"lost": lost or [], "alive": list(self.alive), "ratios": list(self.ratios),
                  "replan_seconds": planned_s, "swapped": swaps}  # fmt: skip
        if rejoined:
            record["rejoined"] = list(rejoined)
        self.stats.replans.append(record)
        return record

    # ------------------------------------------------------------------ rejoining devices

    def _step_revival(self) -> None:
        """Start re-creating lost devices whose resource is offered again; re-plan with those
        that answer (called before each request; it never waits)."""
        if not self.revive:
            return
        lost = [v for v in range(len(self.workers)) if v not in self.alive]
        if not lost:
            return
        from edgelesspart.pipeline.supervision import alive_nodes

        ray = _ray()
        rejoined = []
        for v in lost:
            if v in self._reviving:
                actor, probe, started = self._reviving[v]
                done, _ = ray.wait([probe], timeout=0)
                if done:
                    del self._reviving[v]
                    try:
                        st = ray.get(probe, timeout=0)
                    except Exception as exc:  # noqa: BLE001 - try again later
                        self.stats.last_failure[v] = f"rejoin failed: {type(exc).__name__}"
                        self._last_revive[v] = time.monotonic()
                        continue
                    self.workers[v], self.missed[v] = actor, 0
                    if st.get("node_id"):
                        self._nodes_seen[v].add(st["node_id"])
                    rejoined.append(v)
                elif time.monotonic() - started > REVIVE_TIMEOUT_S:
                    del self._reviving[v]
                    self.reaper.add([probe])
                    from edgelesspart.pipeline.raykit import kill_actors

                    kill_actors([actor])
                continue
            if time.monotonic() - self._last_revive[v] < REVIVE_EVERY_S:
                continue
            self._last_revive[v] = time.monotonic()
            nodes = alive_nodes()
            resource = self.resources[v]
            offering = [n for n, r in nodes.items() if resource is None or resource in r]
            if not offering:
                continue  # no node offers it: nothing to try yet
            fresh = [n for n in offering if n not in self._nodes_seen[v]]
            actor = self._new_worker(v, node_id=fresh[0] if fresh else None)
            self._reviving[v] = (actor, actor.state.remote(), time.monotonic())
        if rejoined:
            self.alive = sorted([*self.alive, *rejoined])
            self.stats.rejoined_devices.extend(rejoined)
            for v in rejoined:
                LOG.warning("view %s rejoined", v)
            self._replan(rejoined=rejoined)

    def states(self) -> list[dict[str, Any]]:
        """Heartbeat of every alive device."""
        ray = _ray()
        return ray.get([self.workers[v].state.remote() for v in self.alive], timeout=30)

    def kill(self, view: int) -> None:
        """Kill a device's actor (tests and the failure experiment)."""
        _ray().kill(self.workers[view], no_restart=True)
