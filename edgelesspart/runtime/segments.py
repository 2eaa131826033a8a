"""Run one exported segment (a ``.tflite`` file) with LiteRT, safely from many threads.

A LiteRT interpreter is not thread-safe: one interpreter must not run two calls at once. A
:class:`SegmentRunner` therefore owns a small pool of interpreters for the same model (created
on demand, at most ``pool_size``); each call borrows one, runs it and gives it back, so
``pool_size`` requests run in parallel and the rest wait for a free interpreter. Borrowing is
lock-free while an idle interpreter exists (an atomic ``deque.pop``); only a call that finds the
pool empty takes the lock and waits.

Every segment file has one signature, ``serving_default``, taking ``x`` (``(N, *input.shape)``
float32, batch dimension dynamic) and returning ``probs`` (iff the segment ends in an exit) and
``boundary`` (iff it hands a tensor on). Each pooled interpreter remembers the batch size it was
last allocated for and resizes and re-allocates its tensors only when the batch size changes
(LiteRT's own signature runner does both on every call, which costs more than a small
segment's invoke), so any batch size works with one interpreter and a steady batch size pays
nothing extra.
"""

from __future__ import annotations

import threading
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, InferenceError
from edgelesspart.runtime import backends
from edgelesspart.runtime.manifest import SegmentSpec
from edgelesspart.runtime.preprocess import validate_input

SIGNATURE = "serving_default"
#: at most this many batch sizes are remembered as checked per segment (beyond: checked per call)
_MAX_CHECKED_SIZES = 256
INPUT_NAME = "x"
PROBS = "probs"
BOUNDARY = "boundary"


def _interpreter_class() -> Any:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter


class _SignatureSlot:
    """One interpreter's ``serving_default`` signature, resized only when the batch changes.

    Called like LiteRT's signature runner (``slot(x=array) -> {output name: array}``) but
    skips ``ResizeInputTensor`` + ``AllocateTensors`` while the batch size stays the same.
    """

    def __init__(self, interpreter: Any) -> None:
        self.calls = 0  # counted here, not under a shared lock: one caller at a time per slot
        self.rows = 0
        runner = interpreter.get_signature_runner(SIGNATURE)
        self._wrapper = interpreter._interpreter
        self._subgraph = runner._subgraph_index
        self._input = runner._inputs[INPUT_NAME]
        self._outputs = tuple(runner._outputs)
        indices = dict(self._outputs)
        self._probs = indices.get(PROBS)
        self._boundary = indices.get(BOUNDARY)
        self._batch = -1

    def __call__(self, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        self._run(kwargs[INPUT_NAME])
        wrapper, subgraph = self._wrapper, self._subgraph
        return {name: wrapper.GetTensor(index, subgraph) for name, index in self._outputs}

    def invoke(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Run on ``x``; return ``(probs, boundary)``, ``None`` for an output it lacks.

        :meth:`_run` inlined: this is the executor's per-segment call (P2 counts every
        Python call on it).
        """
        wrapper, subgraph = self._wrapper, self._subgraph
        if x.shape[0] != self._batch:
            self._resize(x)
        wrapper.SetTensor(self._input, x, subgraph)
        wrapper.Invoke(subgraph)
        self.calls += 1
        self.rows += self._batch
        probs, boundary = self._probs, self._boundary
        return (
            None if probs is None else wrapper.GetTensor(probs, subgraph),
            None if boundary is None else wrapper.GetTensor(boundary, subgraph),
        )

    def _resize(self, x: np.ndarray) -> None:
        """Size the input (and so every tensor) to ``x``'s batch; allocate."""
        wrapper, subgraph = self._wrapper, self._subgraph
        self._batch = -1  # stays invalid if the resize or allocation fails
        wrapper.ResizeInputTensor(self._input, np.array(x.shape, dtype=np.int32), False, subgraph)
        wrapper.AllocateTensors(subgraph)
        self._batch = int(x.shape[0])

    def _run(self, x: np.ndarray) -> None:
        wrapper, subgraph = self._wrapper, self._subgraph
        if x.shape[0] != self._batch:
            self._resize(x)
        wrapper.SetTensor(self._input, x, subgraph)
        wrapper.Invoke(subgraph)
        self.calls += 1
        self.rows += self._batch


class _Counted:
    """Another backend's runner with the same call/row counters as :class:`_SignatureSlot`."""

    def __init__(self, runner: Any) -> None:
        self._runner = runner
        self.calls = 0
        self.rows = 0

    def __call__(self, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self._runner(**kwargs)
        self.calls += 1
        self.rows += int(kwargs[INPUT_NAME].shape[0])
        return outputs

    def invoke(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Run on ``x``; return ``(probs, boundary)``, ``None`` for an output it lacks."""
        outputs = self(**{INPUT_NAME: x})
        return outputs.get(PROBS), outputs.get(BOUNDARY)


def expected_outputs(spec: SegmentSpec) -> set[str]:
    """Output names a segment's signature must have, from its spec."""
    names = set()
    if spec.exit is not None:
        names.add(PROBS)
    if spec.boundary is not None:
        names.add(BOUNDARY)
    return names


class SegmentRunner:
    """One LiteRT model with a pool of interpreters; call it like a function.

    Args:
        path: the segment's ``.tflite`` file.
        spec: its manifest entry (input spec, whether it has an exit and a boundary).
        pool_size: the most interpreters (and so concurrent calls) for this segment.
        num_threads: CPU threads each interpreter may use.
        backend: ``litert`` (``path`` is a ``.tflite`` file) or ``keras`` (a ``.keras`` file;
            see :mod:`edgelesspart.runtime.backends`).

    Raises:
        BundleError: the file is missing, is not a LiteRT model, or its signature does not
            match the spec.
    """

    def __init__(
        self,
        path: Path,
        spec: SegmentSpec,
        pool_size: int = 4,
        num_threads: int = 1,
        *,
        backend: str = backends.DEFAULT_BACKEND,
    ) -> None:
        if int(pool_size) < 1 or int(num_threads) < 1:
            raise BundleError(
                f"pool_size and num_threads must be >= 1, got {pool_size} and {num_threads}."
            )
        self.path = Path(path)
        self.spec = spec
        self.pool_size = int(pool_size)
        self.num_threads = int(num_threads)
        self.backend = backends.check_backend(backend)  # path is that backend's file
        self._idle: deque[Any] = deque()  # idle runners, most recently used last (warm caches)
        self._lock = threading.Lock()
        self._returned = threading.Condition(self._lock)
        self._created = 0
        self._waiting = 0
        self._slots: list[Any] = []
        self._boundary_shape = (
            None if spec.boundary is None else tuple(int(d) for d in spec.boundary.shape)
        )
        # batch sizes whose output shapes were checked against the spec: a segment's graph is
        # static, so its output shapes depend on the batch size only and are checked once per
        # size, not on every call (set.add is atomic; a race only checks twice)
        self._shapes_ok: set[int] = set()
        if not self.path.is_file():
            raise BundleError(f"Segment file {self.path} for segment {spec.name!r} is missing.")
        self._idle.append(self._new_runner())
        self._created = 1

    def _new_runner(self) -> Any:
        if self.backend != backends.LITERT:
            opened = backends.open_segment(self.backend, self.path, expected_outputs(self.spec))
            slot: Any = _Counted(opened)
            with self._lock:
                self._slots.append(slot)
            return slot
        try:
            interpreter = _interpreter_class()(
                model_path=str(self.path), num_threads=self.num_threads
            )
            signatures = interpreter.get_signature_list()
        except (ValueError, RuntimeError) as exc:
            raise BundleError(
                f"Segment file {self.path} is not a loadable LiteRT model: {exc}"
            ) from exc
        self._check_signature(signatures)
        slot = _SignatureSlot(interpreter)
        with self._lock:
            self._slots.append(slot)  # every slot ever built, for the call/row counters
        return slot

    def _check_signature(self, signatures: dict[str, dict[str, list[str]]]) -> None:
        sig = signatures.get(SIGNATURE)
        if sig is None:
            raise BundleError(
                f"Segment {self.spec.name!r} ({self.path.name}) has signatures "
                f"{sorted(signatures)}, expected {SIGNATURE!r}. Re-export the bundle."
            )
        want = expected_outputs(self.spec)
        if list(sig.get("inputs", [])) != [INPUT_NAME] or set(sig.get("outputs", [])) != want:
            raise BundleError(
                f"Segment {self.spec.name!r} signature takes {sig.get('inputs')} and returns "
                f"{sorted(sig.get('outputs', []))}; the manifest expects input [{INPUT_NAME!r}] "
                f"and outputs {sorted(want)}. The bundle and its manifest disagree; re-export."
            )

    def _acquire(self) -> Any:
        """An idle runner, a new one while the pool has room, or wait for one to come back."""
        while True:
            try:
                return self._idle.pop()  # atomic: the common case takes no lock
            except IndexError:
                pass
            with self._lock:
                self._waiting += 1  # counted before looking, so _release cannot miss us
                try:
                    if self._idle:  # given back meanwhile (maybe taken again: loop)
                        continue
                    if self._created < self.pool_size:
                        self._created += 1  # reserve the slot, build outside the lock
                        break
                    self._returned.wait(0.1)  # _release notifies under this lock
                finally:
                    self._waiting -= 1
        try:
            return self._new_runner()
        except BaseException:
            with self._lock:
                self._created -= 1
                self._returned.notify()
            raise

    def _release(self, runner: Any) -> None:
        self._idle.append(runner)
        # A caller counts itself as waiting (under the lock) before it looks at ``_idle``,
        # so either it sees the runner just appended or this sees it counted and notifies;
        # with nobody waiting, giving a runner back takes no lock.
        if self._waiting:
            with self._lock:
                self._returned.notify()

    @property
    def interpreters(self) -> int:
        """How many interpreters this runner has built so far (at most ``pool_size``)."""
        with self._lock:
            return self._created

    @property
    def calls(self) -> int:
        """How many times the model was invoked (empty batches are not invoked)."""
        return sum(getattr(slot, "calls", 0) for slot in self._slots)

    @property
    def rows(self) -> int:
        """How many samples the model has processed in total."""
        return sum(getattr(slot, "rows", 0) for slot in self._slots)

    def __call__(
        self, x: np.ndarray, *, trusted: bool = False
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Run the segment on a batch.

        Args:
            x: ``(N, *spec.input.shape)`` (or one sample without the batch dimension).
            trusted: ``x`` is already a validated ``float32`` batch of the input shape (the
                executor passes this for its own checked input and for the boundary tensors
                one segment hands the next), so the shape/dtype/finite check is skipped.

        Returns:
            ``(probs, boundary)``: ``(N, C)`` probabilities if the segment has an exit, else
            ``None``; ``(N, *spec.boundary.shape)`` if it hands a tensor on, else ``None``.

        Raises:
            InputError: ``x`` does not match the segment's input spec.
            InferenceError: LiteRT failed on a batch that passed validation (a server fault).
        """
        if not trusted:
            x = validate_input(x, self.spec.input)
        try:
            runner = self._idle.pop()  # atomic: the common case takes no lock
        except IndexError:
            runner = self._acquire()
        try:
            probs, boundary = runner.invoke(x)
        except (ValueError, RuntimeError) as exc:
            # x passed validation, so this is the model's or LiteRT's fault, not the caller's
            raise InferenceError(
                f"Segment {self.spec.name!r} failed on a validated batch of shape {x.shape}: {exc}"
            ) from exc
        finally:
            self._release(runner)
        n = x.shape[0]
        if n not in self._shapes_ok:
            self._checked(probs, boundary, n)
            if len(self._shapes_ok) < _MAX_CHECKED_SIZES:
                self._shapes_ok.add(n)
        return probs, boundary

    def _checked(
        self, probs: np.ndarray | None, boundary: np.ndarray | None, n: int
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        if boundary is not None and self._boundary_shape is not None:
            if boundary.shape[1:] != self._boundary_shape or boundary.shape[0] != n:
                want = (n, *self._boundary_shape)
                raise BundleError(
                    f"Segment {self.spec.name!r} returned a boundary of shape "
                    f"{tuple(boundary.shape)}, the manifest says {want}. Re-export the bundle."
                )
        if probs is not None and (probs.ndim != 2 or probs.shape[0] != n):
            raise BundleError(
                f"Segment {self.spec.name!r} returned probabilities of shape "
                f"{tuple(probs.shape)}, expected ({n}, num_classes). Re-export the bundle."
            )
        return probs, boundary

    def __repr__(self) -> str:
        return (
            f"SegmentRunner({self.spec.name!r}, path={str(self.path)!r}, "
            f"pool_size={self.pool_size}, interpreters={self.interpreters})"
        )
