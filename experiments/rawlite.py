"""Raw LiteRT baselines: a segment as a bare interpreter, sized once, called with ``invoke``.

The runtime's :class:`~edgelesspart.runtime.segments.SegmentRunner` adds an interpreter pool,
output checks and the executor's exit bookkeeping. The benchmarks' baseline is the least a
caller can do instead: ``SetTensor`` / ``Invoke`` / ``GetTensor`` on the interpreter's native
wrapper (what ``Interpreter.set_tensor``/``invoke``/``get_tensor`` call, without their Python
checks), on an interpreter resized to the batch once. Used by P2 (executor overhead) and P3
(throughput).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


class RawSegment:
    """One segment's ``.tflite`` as a bare LiteRT interpreter at a fixed batch size.

    Args:
        path: the segment file.
        input_shape: per-sample input shape.
        boundary_shape: per-sample boundary shape (``None`` for the last segment).
        batch: the fixed batch size.
        num_threads: CPU threads of the interpreter (the runtime uses 1).
    """

    def __init__(
        self,
        path: Path,
        input_shape: tuple[int, ...],
        boundary_shape: tuple[int, ...] | None,
        batch: int = 1,
        num_threads: int = 1,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.input_index = self.interpreter.get_input_details()[0]["index"]
        self.interpreter.resize_tensor_input(self.input_index, [batch, *input_shape])
        self.interpreter.allocate_tensors()
        outputs = self.interpreter.get_output_details()
        self.output_indices = [o["index"] for o in outputs]
        self.boundary_index = None
        if boundary_shape is not None:
            want = (batch, *boundary_shape)
            matches = [o["index"] for o in outputs if tuple(o["shape"]) == want]
            self.boundary_index = matches[0] if matches else None

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """Set the input, invoke, read every output; return the boundary (if any)."""
        native = self.interpreter._interpreter  # the C++ wrapper the Python API calls
        native.SetTensor(self.input_index, x, 0)
        native.Invoke(0)
        values = {i: native.GetTensor(i, 0) for i in self.output_indices}
        return None if self.boundary_index is None else values[self.boundary_index]


def raw_segments(bundle: Any, batch: int = 1) -> dict[str, RawSegment]:
    """A :class:`RawSegment` for every segment of a loaded bundle's loaded stages."""
    from edgelesspart.runtime.manifest import safe_path

    raw = {}
    for stage in bundle.stages:
        for seg in bundle.segments(stage):
            path = safe_path(bundle.path, seg.files["tflite"])
            boundary = None if seg.boundary is None else tuple(seg.boundary.shape)
            raw[seg.name] = RawSegment(path, tuple(seg.input.shape), boundary, batch)
    return raw


class SharedRawSegment:
    """The bare native calls of :class:`RawSegment` on the runtime's own interpreter.

    P2's baseline: the same ``SetTensor`` / ``Invoke`` / ``GetTensor`` (every output) as
    :class:`RawSegment`, made on the interpreter the executor itself uses (its segment runner's
    pooled interpreter, sized to batch 1 by the executor's warm-up). Two interpreters of one
    large model can differ in speed by several percent only through where their buffers landed
    in memory (on ResNet50, whichever was built first ran 3-8 % faster); invoking the same
    interpreter leaves only the executor's own work in the difference.
    """

    def __init__(self, slot: Any) -> None:
        self.native = slot._wrapper  # the C++ wrapper the Python API calls
        self.subgraph = slot._subgraph
        self.input_index = slot._input
        outputs = dict(slot._outputs)
        self.output_indices = list(outputs.values())
        self.boundary_index = outputs.get("boundary")

    def __call__(self, x: np.ndarray) -> np.ndarray | None:
        """Set the input, invoke, read every output; return the boundary (if any)."""
        native, subgraph = self.native, self.subgraph
        native.SetTensor(self.input_index, x, subgraph)
        native.Invoke(subgraph)
        values = {i: native.GetTensor(i, subgraph) for i in self.output_indices}
        return None if self.boundary_index is None else values[self.boundary_index]


def shared_raw_segments(bundle: Any) -> dict[str, SharedRawSegment]:
    """A :class:`SharedRawSegment` on each segment runner's interpreter of a loaded bundle.

    Load the bundle with ``pool_size=1`` and run every segment once at batch 1 through the
    runtime first (the runner sizes its interpreter then); the executor and this baseline
    must run one at a time (one thread), as P2 does.
    """
    raw = {}
    for stage in bundle.stages:
        for seg in bundle.segments(stage):
            runner = bundle.runner(seg.name)
            if runner.pool_size != 1 or len(runner._idle) != 1:
                raise ValueError("Load the bundle with pool_size=1 to share its interpreters.")
            raw[seg.name] = SharedRawSegment(runner._idle[0])
    return raw


def run_chain(raw: dict[str, RawSegment], chain: list[str], x: np.ndarray) -> float:
    """Run ``chain`` (segment names in order) on ``x``; return the summed invoke ms."""
    return run_chain_clocks(raw, chain, x)[0]


def run_chain_clocks(
    raw: dict[str, RawSegment], chain: list[str], x: np.ndarray
) -> tuple[float, float]:
    """:func:`run_chain`, returning (wall ms, this thread's CPU ms) summed over the invokes.

    The CPU time (``time.thread_time``) leaves out the time the thread waited for a core, so
    on a host shared with other work it shows the cost itself (LiteRT at one thread invokes
    on the calling thread).
    """
    wall = cpu = 0.0
    current = x
    for name in chain:
        start, start_cpu = time.perf_counter(), time.thread_time()
        out = raw[name](current)
        cpu += (time.thread_time() - start_cpu) * 1000.0
        wall += (time.perf_counter() - start) * 1000.0
        if out is not None:
            current = out
    return wall, cpu
