"""Keeping Ray stage actors alive: owned segment bytes, stage health, re-creation, re-placement.

Every Ray service (the DEFER chain, SlimEdge's views, the width chain) uses the same three
pieces:

* :class:`BlobStore` -- the dispatcher puts each segment file into Ray's object store once
  (``ray.put``) and keeps the references for the deployment's lifetime. An actor receives them
  *nested in a list* (``{"path": [ref]}``), so Ray does not inline them as constructor
  arguments, and :func:`resolve_files` fetches and checks them in the constructor. A restart --
  after a kill or on a replacement node -- fetches them again from the owner: constructor
  arguments that went to the object store cannot be restarted (Ray issue #53727).
* :class:`Supervisor` -- one record per stage (state, restarts, re-placements, last failure).
  The dispatcher reports a failed call (:meth:`Supervisor.report_failure`, one log line per
  failure); a background thread probes the stage until it answers again (Ray restarts an actor
  of ``max_restarts=-1`` by itself as soon as a node offers its resource), re-creates an actor
  that is dead for good, and moves a stage that stays down past ``spare_after_s`` to a node
  that advertises the ``spare`` resource. :meth:`Supervisor.wait_ready` lets a request wait for
  that within its deadline.
* :class:`Reaper` -- consumes the references of failed attempts, so Ray does not print an
  "Unhandled error" traceback for each one.

Ray is imported lazily (the optional ``pipeline`` extra).
"""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgelesspart.errors import BundleError
from edgelesspart.pipeline import raykit

LOG = logging.getLogger("edgelesspart.pipeline.supervision")
#: A stage is probed this often while it is down (seconds).
PROBE_INTERVAL_S = 0.25
#: How long a probe may wait for a (re)starting actor before it is asked again.
PROBE_TIMEOUT_S = 2.0
#: An up stage is probed this often (seconds), so a dead one is noticed without traffic.
DEFAULT_HEARTBEAT_S = 2.0
HEARTBEAT_CHECK_S = 0.5
#: Down this long (seconds) before a stage moves to a ``spare`` node, if one is configured.
DEFAULT_SPARE_AFTER_S = 5.0
#: Errors of a call that mean "the actor or its node is gone", not "the stage code raised".
ACTOR_ERRORS = (
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "ActorUnschedulableError",
    "OwnerDiedError",
    "ObjectLostError",
    "ObjectReconstructionFailedError",
    "ObjectReconstructionFailedLineageEvictedError",
    "ObjectReconstructionFailedMaxAttemptsExceededError",
    "ObjectFetchTimedOutError",
    "NodeDiedError",
    "WorkerCrashedError",
    "LocalRayletDiedError",
)


def is_actor_failure(exc: BaseException) -> bool:
    """True when ``exc`` says an actor, its node or an object it held is gone (retryable)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & set(ACTOR_ERRORS):
        return True
    cause = getattr(exc, "cause", None)  # RayTaskError wrapping an upstream actor failure
    return isinstance(cause, BaseException) and cause is not exc and is_actor_failure(cause)


def failure_reason(exc: BaseException, limit: int = 160) -> str:
    """A one-line reason for logs and metrics: the error class and its first line (for a task
    error wrapping an actor failure, the underlying failure), without terminal colours."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException) and cause is not exc:
        exc = cause
    text = _ANSI.sub("", str(exc)).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first[:limit]}"


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# ---------------------------------------------------------------------------------- bytes


class BlobStore:
    """Segment files in Ray's object store, put once and owned by the dispatcher.

    Keep the store for as long as any actor may (re)start; :meth:`release` drops the
    references (the objects are freed once no actor holds them).
    """

    def __init__(self) -> None:
        self._refs: dict[str, Any] = {}
        self.bytes_put = 0

    def put(self, data: bytes) -> str:
        """Store ``data`` (once per content) and return its SHA-256."""
        sha = hashlib.sha256(data).hexdigest()
        if sha not in self._refs:
            self._refs[sha] = raykit.require_ray().put(bytes(data))
            self.bytes_put += len(data)
        return sha

    def handles(self, files: Mapping[str, bytes]) -> dict[str, dict[str, Any]]:
        """``{path: bytes}`` -> ``{path: {"sha256": ..., "ref": [ObjectRef]}}`` for an actor.

        The reference is nested in a list so that Ray passes it as a reference (resolved by
        :func:`resolve_files` in the actor) instead of inlining the bytes into the call.
        """
        out = {}
        for path, data in files.items():
            sha = self.put(data)
            out[path] = {"sha256": sha, "ref": [self._refs[sha]]}
        return out

    def release(self) -> None:
        """Drop every reference this store owns."""
        self._refs.clear()

    def __len__(self) -> int:
        return len(self._refs)


def resolve_blob(value: Any) -> bytes:
    """The bytes of one :meth:`BlobStore.handles` entry (checked against its SHA-256); plain
    bytes pass through (in-process use without Ray)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    data = raykit.require_ray().get(value["ref"][0])
    data = bytes(data)
    if hashlib.sha256(data).hexdigest() != value["sha256"]:
        raise BundleError(
            f"A segment fetched from the dispatcher does not match its SHA-256 "
            f"{value['sha256'][:12]}...; the object store returned other bytes."
        )
    return data


def resolve_files(files: Mapping[str, Any]) -> dict[str, bytes]:
    """:func:`resolve_blob` over a ``{path: handle or bytes}`` mapping."""
    return {path: resolve_blob(value) for path, value in files.items()}


# ---------------------------------------------------------------------------------- reaper


class Reaper:
    """Consumes references nobody else will ``ray.get`` (a failed attempt's frames and stats).

    An error object that is never read makes Ray log an "Unhandled error" traceback when its
    reference goes away; reading it here, in one background thread, keeps the log to the one
    line per failure the :class:`Supervisor` writes.
    """

    def __init__(self, max_wait_s: float = 300.0) -> None:
        self._lock = threading.Lock()
        self._refs: list[tuple[float, Any]] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.max_wait_s = float(max_wait_s)
        self.consumed = 0
        self._thread = threading.Thread(target=self._loop, name="ray-reaper", daemon=True)
        self._thread.start()

    def add(self, refs: Iterable[Any]) -> None:
        """Hand over references to consume once they are ready."""
        now = time.monotonic()
        with self._lock:
            self._refs.extend((now, r) for r in refs if r is not None and not isinstance(r, bytes))
        self._wake.set()

    def _loop(self) -> None:
        ray = raykit.require_ray()
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            with self._lock:
                batch, self._refs = self._refs, []
            if not batch:
                continue
            if not ray.is_initialized():  # Ray shut down under us: nothing left to read
                return
            try:
                ready, _ = ray.wait([r for _, r in batch], num_returns=len(batch), timeout=0.2)
            except BaseException:  # noqa: BLE001 - Ray shutting down (it may raise SystemExit)
                return
            ready_ids = {id(r) for r in ready}
            keep = []
            for born, ref in batch:
                if id(ref) in ready_ids or time.monotonic() - born > self.max_wait_s:
                    try:
                        ray.get(ref, timeout=0)
                    except BaseException:  # noqa: BLE001 - reading the error is the point
                        pass
                    self.consumed += 1
                else:
                    keep.append((born, ref))
            with self._lock:
                self._refs.extend(keep)
            if keep:
                self._wake.set()
                self._stop.wait(0.2)

    def close(self) -> None:
        """Stop the thread (references still pending are dropped)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=2)


# ---------------------------------------------------------------------------------- health


@dataclass
class StageHealth:
    """What the dispatcher knows about one stage (metrics and ``/readyz`` read it)."""

    name: str
    resource: str | None
    state: str = "starting"  # starting | up | down | replacing | stopped
    actor: Any = None
    generation: int = 0
    placed_on: str | None = None
    pid: int | None = None
    node_id: str | None = None
    restarts: int = 0
    replacements: int = 0
    recreations: int = 0
    failures: int = 0
    last_failure: str | None = None
    last_failure_at: float | None = None
    down_since: float | None = None
    last_recovery_s: float | None = None
    probe: Any = field(default=None, repr=False)
    probe_sent: float = 0.0
    nodes_seen: set[str] = field(default_factory=set, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready state for metrics."""
        down_for = None if self.down_since is None else time.monotonic() - self.down_since
        return {
            "state": self.state,
            "up": self.state == "up",
            "resource": self.resource,
            "placed_on": self.placed_on,
            "pid": self.pid,
            "node_id": self.node_id,
            "restarts": self.restarts,
            "replacements": self.replacements,
            "recreations": self.recreations,
            "failures": self.failures,
            "last_failure": self.last_failure,
            "last_failure_at": self.last_failure_at,
            "down_for_s": None if down_for is None else round(down_for, 3),
            "last_recovery_s": self.last_recovery_s,
        }


#: ``factory(name, resource, node_id) -> actor handle``: creates one stage actor placed by
#: ``resource`` (and, when given, on the node ``node_id``).
Factory = Callable[[str, "str | None", "str | None"], Any]
#: A stage down this long whose resource appears on a node it never ran on is re-created there
#: at once, without waiting for Ray to declare its old node dead (about 15 s by default).
REPLACEMENT_GRACE_S = 1.0


def alive_resources() -> set[str]:
    """Custom resources advertised by the nodes Ray currently believes alive."""
    out: set[str] = set()
    for resources in alive_nodes().values():
        out.update(resources)
    return out


def alive_nodes() -> dict[str, set[str]]:
    """Node id -> resources, for the nodes Ray currently believes alive."""
    ray = raykit.require_ray()
    return {
        str(node["NodeID"]): set(node.get("Resources", {}))
        for node in ray.nodes()
        if node.get("Alive")
    }


def newer_node(resource: str | None, known: set[str]) -> str | None:
    """An alive node offering ``resource`` whose id is not in ``known`` (a replacement)."""
    if not resource:
        return None
    for node_id, resources in alive_nodes().items():
        if resource in resources and node_id not in known:
            return node_id
    return None


class Supervisor:
    """Stage records, failure reports, and the recovery loop (see the module docstring).

    Args:
        names: stage names in order.
        resources: the resource pinning each stage (``None``: anywhere).
        factory: creates a stage actor for ``(name, resource)``.
        spare: a resource that spare nodes advertise; a stage down for ``spare_after_s`` is
            re-created on one of them (``None``: wait for its own resource to come back).
        spare_after_s: how long a stage stays down before it moves to a spare.
        ready_method: the actor method that answers a probe with ``{"pid", "node_id", ...}``.
        label: what a log line calls one of them (``stage``, ``view``).
        reaper: consumes abandoned probes (default: its own).
        heartbeat_s: how often an up stage is probed.
    """

    def __init__(
        self,
        names: Sequence[str],
        resources: Sequence[str | None],
        factory: Factory,
        *,
        spare: str | None = None,
        spare_after_s: float = DEFAULT_SPARE_AFTER_S,
        ready_method: str = "ready",
        label: str = "stage",
        reaper: Reaper | None = None,
        heartbeat_s: float = DEFAULT_HEARTBEAT_S,
    ) -> None:
        self.stages = {n: StageHealth(n, r) for n, r in zip(names, resources)}
        self.order = list(names)
        self.factory = factory
        self.spare = spare
        self.spare_after_s = float(spare_after_s)
        self.ready_method = ready_method
        self.label = label
        self.heartbeat_s = float(heartbeat_s)
        self._own_reaper = reaper is None
        self.reaper = reaper or Reaper()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self, ready_timeout_s: float = 120.0) -> list[dict[str, Any]]:
        """Create every actor, wait until each answers its probe, start the recovery loop."""
        ray = raykit.require_ray()
        for name in self.order:
            st = self.stages[name]
            st.actor = self.factory(name, st.resource, None)
            st.placed_on = st.resource
        infos = ray.get(
            [getattr(self.stages[n].actor, self.ready_method).remote() for n in self.order],
            timeout=ready_timeout_s,
        )
        with self._cond:
            for name, info in zip(self.order, infos):
                self._mark_up(self.stages[name], info, recovered=False)
        self._thread = threading.Thread(target=self._loop, name="stage-supervisor", daemon=True)
        self._thread.start()
        return infos

    def close(self) -> None:
        """Stop the loop and kill every actor (no restart)."""
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        actors = [st.actor for st in self.stages.values() if st.actor is not None]
        for st in self.stages.values():
            st.actor, st.state = None, "stopped"
        raykit.kill_actors(actors)
        if self._own_reaper:
            self.reaper.close()

    # ------------------------------------------------------------------ queries

    def actor(self, name: str) -> tuple[Any, int]:
        """The stage's current actor and its generation (to report failures against)."""
        with self._cond:
            st = self.stages[name]
            return st.actor, st.generation

    def ready(self) -> bool:
        """True when every stage is up."""
        with self._cond:
            return all(st.state == "up" for st in self.stages.values())

    def down(self) -> list[str]:
        """Names of the stages that are not up."""
        with self._cond:
            return [n for n in self.order if self.stages[n].state != "up"]

    def wait_ready(self, deadline: float) -> bool:
        """Block until every stage is up or ``deadline`` (``time.monotonic()``) passes."""
        with self._cond:
            while not all(st.state == "up" for st in self.stages.values()):
                left = deadline - time.monotonic()
                if left <= 0 or self._stop.is_set():
                    return False
                self._cond.wait(min(left, 0.5))
            return True

    def metrics(self) -> dict[str, dict[str, Any]]:
        """Per stage: state, restarts, re-placements, failures and the last failure reason."""
        with self._cond:
            return {n: self.stages[n].to_dict() for n in self.order}

    # ------------------------------------------------------------------ failures

    def report_failure(self, name: str, generation: int, exc: BaseException) -> None:
        """A call on ``name``'s actor of ``generation`` failed with an actor error: mark the
        stage down (once per failure; later reports of the same failure are ignored)."""
        with self._cond:
            st = self.stages[name]
            if st.generation != generation or st.state != "up":
                return
            st.state = "down"
            st.failures += 1
            st.down_since = time.monotonic()
            st.last_failure = failure_reason(exc)
            st.last_failure_at = time.time()
            st.generation += 1
            self._cond.notify_all()
        LOG.warning("%s %s down: %s", self.label, name, st.last_failure)

    def _mark_up(self, st: StageHealth, info: Mapping[str, Any], *, recovered: bool) -> None:
        pid, node = info.get("pid"), info.get("node_id")
        if recovered and st.pid is not None and pid != st.pid:
            st.restarts += 1
        st.pid, st.node_id = pid, node
        if node:
            st.nodes_seen.add(str(node))
        if recovered and st.down_since is not None:
            st.last_recovery_s = round(time.monotonic() - st.down_since, 3)
        st.state, st.down_since, st.probe = "up", None, None
        st.generation += 1
        self._cond.notify_all()

    # ------------------------------------------------------------------ recovery loop

    def _loop(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                stages = list(self.stages.values())
            busy = False
            for st in stages:
                try:
                    if st.state in ("down", "replacing"):
                        busy = True
                        self._recover(st)
                    elif st.state == "up":
                        self._heartbeat(st)
                except Exception as exc:  # noqa: BLE001 - the loop must outlive one bad probe
                    if self._stop.is_set():
                        return
                    LOG.warning("%s %s: recovery step failed (%s)", self.label, st.name,
                                failure_reason(exc))  # fmt: skip
            self._stop.wait(PROBE_INTERVAL_S if busy else HEARTBEAT_CHECK_S)

    def _heartbeat(self, st: StageHealth) -> None:
        """Probe an up stage every ``heartbeat_s``: a dead actor is noticed without traffic."""
        ray = raykit.require_ray()
        now = time.monotonic()
        if st.probe is None:
            if now - st.probe_sent >= self.heartbeat_s:
                st.probe, st.probe_sent = getattr(st.actor, self.ready_method).remote(), now
            return
        ready, _ = ray.wait([st.probe], timeout=0)
        if not ready:
            if now - st.probe_sent > max(PROBE_TIMEOUT_S, self.heartbeat_s) * 5:
                self._abandon_probe(st)  # a busy stage may be slow; only errors count
            return
        probe, st.probe = st.probe, None
        try:
            ray.get(probe, timeout=0)
        except Exception as exc:  # noqa: BLE001 - classify
            if is_actor_failure(exc):
                self.report_failure(st.name, st.generation, exc)

    def _recover(self, st: StageHealth) -> None:
        """One step for a down stage: read its probe, re-create or re-place it if needed."""
        ray = raykit.require_ray()
        now = time.monotonic()
        if st.probe is None or now - st.probe_sent > PROBE_TIMEOUT_S:
            if st.probe is not None:
                self._abandon_probe(st)
            st.probe = getattr(st.actor, self.ready_method).remote()
            st.probe_sent = now
        ready, _ = ray.wait([st.probe], timeout=0.2)
        if ready:
            probe, st.probe = st.probe, None
            try:
                info = ray.get(probe, timeout=0)
            except Exception as exc:  # noqa: BLE001 - classify below
                self._after_failed_probe(st, exc)
                return
            with self._cond:
                self._mark_up(st, info, recovered=True)
            where = f"on {st.placed_on}" if st.placed_on else "anywhere"
            LOG.warning("%s %s up again %s after %.1f s (pid %s)", self.label, st.name, where,
                        st.last_recovery_s or 0.0, st.pid)  # fmt: skip
            return
        if not self._maybe_replacement(st):
            self._maybe_spare(st)

    def _maybe_replacement(self, st: StageHealth) -> bool:
        """Re-create a down stage on a node that newly offers its resource; True when it did."""
        if st.state != "down" or st.down_since is None:
            return False
        if time.monotonic() - st.down_since < REPLACEMENT_GRACE_S:
            return False
        node = newer_node(st.placed_on, st.nodes_seen)
        if node is None:
            return False
        self._replace(st, st.placed_on, why=f"replacement node {node[:8]} joined", spare=False,
                      node_id=node)  # fmt: skip
        return True

    def _abandon_probe(self, st: StageHealth) -> None:
        probe, st.probe = st.probe, None
        self.reaper.add([probe])

    def _after_failed_probe(self, st: StageHealth, exc: BaseException) -> None:
        """A probe failed: a dead-for-good actor is re-created, a restarting one waited for."""
        if type(exc).__name__ in ("ActorDiedError", "RayActorError") and not _restarting(exc):
            resource = st.placed_on
            if resource and resource not in alive_resources():
                if self._maybe_spare(st):
                    return
                return  # nowhere to put it yet: try again on the next step
            self._replace(st, resource, why=failure_reason(exc), spare=False)
            return
        self._maybe_spare(st)

    def _maybe_spare(self, st: StageHealth) -> bool:
        """Move a stage that stayed down too long to a spare node; True when it did."""
        if not self.spare or st.placed_on == self.spare or st.down_since is None:
            return False
        if time.monotonic() - st.down_since < self.spare_after_s:
            return False
        nodes = alive_nodes()
        spare_node = next((n for n, r in nodes.items() if self.spare in r), None)
        if spare_node is None:
            return False
        why = f"down for {time.monotonic() - st.down_since:.1f} s"
        self._replace(st, self.spare, why=why, spare=True, node_id=spare_node)
        return True

    def _replace(
        self,
        st: StageHealth,
        resource: str | None,
        *,
        why: str,
        spare: bool,
        node_id: str | None = None,
    ) -> None:
        old = st.actor
        raykit.kill_actors([old])
        if st.probe is not None:
            self._abandon_probe(st)
        actor = self.factory(st.name, resource, node_id)
        if node_id:
            st.nodes_seen.add(node_id)
        with self._cond:
            st.actor, st.placed_on, st.state = actor, resource, "replacing"
            st.generation += 1
            if spare:
                st.replacements += 1
            else:
                st.recreations += 1
        verb = "re-placed" if spare else "re-created"
        LOG.warning("%s %s %s on %s (%s)", self.label, st.name, verb, resource or "any", why)


def _restarting(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "restarting" in text or "temporarily unavailable" in text
