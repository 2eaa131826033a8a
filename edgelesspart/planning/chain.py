"""Partition a model over a chain of N nodes so that the slowest stage is as fast as possible.

A pipeline's throughput is set by its slowest stage. Node ``k`` covering the cut points after
position ``i`` up to ``j`` spends (milliseconds, on *its own* device profile)::

    cpu_ms      = decode(boundary i, codec of link k-1)   # the input frame for the first node
                + compute_k(j) - compute_k(i)             # cumulative profile latencies
                + encode(boundary j, codec of link k)     # 0 for the last node
    transfer_ms = link.transfer_ms(encoded bytes of boundary j)   # the result for the last node
    pace_ms     = max(cpu_ms, transfer_ms)   # it sends one input while computing the next
                                             # (cpu_ms + transfer_ms with overlap_link=False)

Encode/decode times are host measurements (or the documented estimates in
:data:`ESTIMATED_CODEC_MBPS`) multiplied by the node's latency factor. :func:`plan_chain` finds the
exact optimum by dynamic programming over (cut point, codec) pairs -- ``O(N·M²·C²)`` for N nodes,
M cut points and C candidate codecs -- and reports, with the same cost model, DEFER's split into
stages of equal layer counts. Pure functions, no TensorFlow.

**Determinism.** Two builds of the same model profile it twice, and the profiles differ by
timing noise; an exact optimum then flips between near-equal partitions from run to run.
:func:`plan_chain` therefore compares bottlenecks and processor times on a logarithmic grid of
relative step ``tolerance`` (default :data:`DEFAULT_TOLERANCE`, 5 %, recorded in the plan):
partitions whose bottlenecks fall in the same step are equal, and among equals the one with the
shallowest cuts wins, then less processor time, then the codec listed first. The plan records
the tolerance and the exact optimum it was compared with. ``tolerance=0`` is the exact optimum.

**Result bytes.** The last node sends the model's output back to the dispatcher; its size is
measured (the output tensor encoded as the runtime sends it, ``result_bytes``) or, failing that,
taken from the profile's output tensor plus :data:`FRAME_HEADER_BYTES` and marked unmeasured.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from edgelesspart.errors import PlanError
from edgelesspart.profiling.profile import ModelProfile
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT, Plan, Stage

#: Host encode/decode throughput in MB of raw float32 per second when no measurement is given:
#: REFERENCE.md §3.3 (a 602 KB 28x28x192 tensor on this 2-vCPU host; int8 and the fp16/int8 +lz4
#: rows are estimates by analogy). ``raw`` costs nothing beyond the copy.
ESTIMATED_CODEC_MBPS: dict[str, tuple[float, float]] = {
    "raw": (math.inf, math.inf),
    "fp16": (1000.0, 1000.0),
    "int8": (300.0, 600.0),
    "lz4": (500.0, 2600.0),
    "zstd": (220.0, 900.0),
    "zfp": (200.0, 290.0),
    "zfp+lz4": (190.0, 270.0),
    "fp16+lz4": (450.0, 800.0),
    "int8+lz4": (280.0, 550.0),
    "fp16+zstd": (240.0, 1600.0),
    "int8+zstd": (250.0, 500.0),
}
#: Bytes of a wire frame's JSON header (dtype, shape, codec, meta), an estimate used only when
#: the result frame was not measured.
FRAME_HEADER_BYTES = 200
#: Relative step within which two bottlenecks (or processor times) count as equal.
DEFAULT_TOLERANCE = 0.05
CodecTimes = Mapping[str, Mapping[str, tuple[float, float]]]


@dataclass(frozen=True)
class StageCost:
    """The predicted time of one node's stage, split into its parts (milliseconds)."""

    node: int
    device: str
    start: str
    end: str
    codec_in: str | None
    codec_out: str | None
    compute_ms: float
    decode_ms: float
    encode_ms: float
    transfer_ms: float
    out_bytes: int
    bytes_measured: bool
    overlapped: bool = True
    overhead_ms: float = 0.0

    @property
    def cpu_ms(self) -> float:
        """Decode + compute + encode + per-call overhead: the node's processor per input."""
        return self.compute_ms + self.decode_ms + self.encode_ms + self.overhead_ms

    @property
    def total_ms(self) -> float:
        """Decode + compute + encode + transfer: one input's time through this node."""
        return self.cpu_ms + self.transfer_ms

    @property
    def pace_ms(self) -> float:
        """Time between inputs this node sustains: ``max(cpu, transfer)`` when the node sends
        one input while computing the next (``overlapped``), else ``cpu + transfer``."""
        return max(self.cpu_ms, self.transfer_ms) if self.overlapped else self.total_ms

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (with ``cpu_ms``, ``total_ms`` and ``pace_ms``)."""
        return {
            **asdict(self),
            "cpu_ms": self.cpu_ms,
            "total_ms": self.total_ms,
            "pace_ms": self.pace_ms,
        }


@dataclass(frozen=True)
class ChainCosts:
    """Everything the cost of a stage depends on, for N nodes over one link.

    Attributes:
        profiles: one profile per node, already scaled to the node's device, same cut points.
        link: the link between consecutive nodes (``None``: transfers are free).
        codecs: candidate codecs for every link between nodes.
        codec_ms: cut point -> codec -> (encode ms, decode ms) measured on the host.
        result_bytes: bytes the last node returns to the dispatcher per sample, measured (the
            output tensor encoded as the runtime sends it); ``None``: the profile's output
            tensor plus :data:`FRAME_HEADER_BYTES`, marked unmeasured.
        input_decode_ms: host ms the first node spends decoding the dispatcher's input frame.
        stage_overhead_ms: host ms every stage call costs beyond decode, compute and encode
            (frame checksums, copies, input validation); measured by calibrating a stage.
        overlap_link: a node sends one input while it computes the next (the runtime does:
            each stage actor has a compute thread and a link thread), so its pace is
            ``max(cpu, transfer)``; ``False`` charges ``cpu + transfer``.
        crossings: cut point -> a measured learned bottleneck
            (:class:`~edgelesspart.planning.bottleneck.Crossing`, host ms): one more codec
            choice on a link leaving that cut point, named by the crossing (``bn4s1+int8``),
            sending its bytes, its encoder + encode charged to the sending node and its decode
            + decoder to the receiving one (each scaled by the node's latency factor). Pass only
            crossings within the accuracy bound: the planner minimises time, not loss.
    """

    profiles: tuple[ModelProfile, ...]
    link: Any = None
    codecs: tuple[str, ...] = ("raw",)
    codec_ms: CodecTimes | None = None
    result_bytes: int | None = None
    input_decode_ms: float = 0.0
    overlap_link: bool = True
    stage_overhead_ms: float = 0.0
    crossings: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        if not self.profiles:
            raise PlanError("A pipeline needs at least one node profile.")
        names = [cp.name for cp in self.profiles[0].cut_points]
        for p in self.profiles[1:]:
            if [cp.name for cp in p.cut_points] != names:
                raise PlanError(
                    f"Node profiles list different cut points ({p.device!r} vs "
                    f"{self.profiles[0].device!r}); scale one host profile to every device."
                )
        if not self.codecs:
            raise PlanError("Give at least one candidate codec for the links (e.g. raw).")

    @property
    def last(self) -> int:
        """Position of the model output in the cut-point list."""
        return len(self.profiles[0].cut_points) - 1

    def name(self, pos: int) -> str:
        """Cut point name at ``pos`` (``input`` for -1, ``output`` for the last)."""
        if pos < 0:
            return MODEL_INPUT
        return MODEL_OUTPUT if pos == self.last else self.profiles[0].cut_points[pos].name

    def _crossing(self, pos: int, codec: str | None) -> Any:
        """The learned bottleneck named ``codec`` at boundary ``pos``, or ``None``."""
        crossing = (self.crossings or {}).get(self.profiles[0].cut_points[pos].name)
        return crossing if crossing is not None and crossing.name == codec else None

    def link_codecs(self, pos: int) -> tuple[str, ...]:
        """The codec choices on a link leaving boundary ``pos``: the codecs, then a bottleneck."""
        crossing = (self.crossings or {}).get(self.profiles[0].cut_points[pos].name)
        return self.codecs if crossing is None else (*self.codecs, crossing.name)

    def encoded(self, pos: int, codec: str) -> tuple[int, bool]:
        """(bytes per sample, measured?) of boundary ``pos`` encoded with ``codec``."""
        cp = self.profiles[0].cut_points[pos]
        crossing = self._crossing(pos, codec)
        if crossing is not None:
            return int(round(crossing.nbytes)), True
        if codec in cp.encoded_bytes:
            return int(cp.encoded_bytes[codec]), True
        return int(cp.boundary_bytes), codec == "raw"

    def result(self) -> tuple[int, bool]:
        """(bytes per sample the last node sends back, measured?)."""
        if self.result_bytes is not None:
            return int(self.result_bytes), True
        out = self.profiles[0].cut_points[self.last]
        if "raw" in out.encoded_bytes:
            return int(out.encoded_bytes["raw"]), True
        return int(out.boundary_bytes) + FRAME_HEADER_BYTES, False

    def _factor(self, node: int) -> float:
        return float(self.profiles[node].extra.get("latency_factor", 1.0))

    def codec_time(self, pos: int, codec: str, node: int) -> tuple[float, float]:
        """(encode ms, decode ms) of boundary ``pos`` on ``node``'s device."""
        profile = self.profiles[node]
        factor = self._factor(node)
        crossing = self._crossing(pos, codec)
        if crossing is not None:
            return crossing.edge_ms * factor, crossing.cloud_ms * factor
        measured = (self.codec_ms or {}).get(profile.cut_points[pos].name, {}).get(codec)
        if measured is not None:
            return measured[0] * factor, measured[1] * factor
        enc_mbps, dec_mbps = ESTIMATED_CODEC_MBPS.get(codec, (200.0, 300.0))
        mb = profile.cut_points[pos].boundary_bytes / 1e6
        return mb / enc_mbps * 1000 * factor, mb / dec_mbps * 1000 * factor

    def transfer(self, nbytes: int) -> float:
        """Link time for ``nbytes`` (0 without a link)."""
        return 0.0 if self.link is None else float(self.link.transfer_ms(nbytes))

    def stage(self, node: int, i: int, c_in: str | None, j: int, c_out: str | None) -> StageCost:
        """Cost of ``node`` running the layers after position ``i`` up to ``j``."""
        lat = self.profiles[node].cut_points
        compute = lat[j].latency_ms - (lat[i].latency_ms if i >= 0 else 0.0)
        if i < 0:
            decode = self.input_decode_ms * self._factor(node)
        else:
            decode = self.codec_time(i, c_in, node)[1] if c_in else 0.0
        if j == self.last:
            encode = 0.0
            out_bytes, measured = self.result()
        else:
            encode = self.codec_time(j, c_out, node)[0]
            out_bytes, measured = self.encoded(j, c_out)
        return StageCost(
            node=node,
            device=self.profiles[node].device,
            start=self.name(i),
            end=self.name(j),
            codec_in=c_in if i >= 0 else None,
            codec_out=c_out if j != self.last else None,
            compute_ms=float(compute),
            decode_ms=float(decode),
            encode_ms=float(encode),
            transfer_ms=self.transfer(out_bytes),
            out_bytes=int(out_bytes),
            bytes_measured=measured,
            overlapped=self.overlap_link,
            overhead_ms=self.stage_overhead_ms * self._factor(node),
        )


def _step(value: float, tolerance: float) -> float:
    """``value`` on a logarithmic grid of relative step ``tolerance`` (itself when 0)."""
    if tolerance <= 0:
        return value
    if value <= 0:
        return -math.inf
    return math.floor(math.log(value) / math.log1p(tolerance))


def min_bottleneck(
    costs: ChainCosts,
    tolerance: float = 0.0,
    *,
    end: int | None = None,
    tail_codecs: Sequence[str] | None = None,
) -> tuple[float, tuple[tuple[int, str], ...]]:
    """The minimum over partitions of the slowest stage, and its ``(cut, codec)`` list.

    ``best[j, c]`` holds, for the nodes placed so far, the smallest bottleneck of a chain whose
    last node ends at position ``j`` and sends with codec ``c``. With ``tolerance`` 0 it is the
    exact optimum; among chains with the same bottleneck the one with the least processor time
    in all (so the least energy, and no compression where the link has slack) is kept, then the
    shallowest cuts. With a ``tolerance`` bottlenecks in the same relative step are equal and
    the shallowest cuts win before processor time (see the module docstring).

    ``end``: the chain stops at this cut point instead of the model output, and its last node
    encodes and sends the boundary there (to a cloud tail); the last ``(cut, codec)`` of the
    list returned is then that hand-off, with one of ``tail_codecs`` (default: any candidate).
    """
    n, last = len(costs.profiles), costs.last if end is None else int(end)
    if not 1 <= n <= last + 1:
        raise PlanError(
            f"{n} nodes need at least {n - 1} internal cut points; the profile of "
            f"{costs.profiles[0].model!r} has {last}. Profile more cut points "
            "(--max-cut-points) or use fewer nodes."
        )
    State = tuple[float, float, tuple[tuple[int, str], ...]]
    best: dict[tuple[int, str | None], State] = {(-1, None): (0.0, 0.0, ())}
    for node in range(n):
        ends = [last] if node == n - 1 else range(node, last - (n - 1 - node) + 1)
        row: dict[tuple[int, str | None], State] = {}
        for j in ends:
            outs: Sequence[str | None] = [None] if j == costs.last else costs.link_codecs(j)
            if node == n - 1 and end is not None and tail_codecs is not None:
                outs = tuple(tail_codecs)
            for c_out in outs:
                options = []
                for (i, c_in), (prev, cpu, cuts) in best.items():
                    if i < j:
                        stage = costs.stage(node, i, c_in, j, c_out)
                        link = ((j, c_out),) if c_out else ()
                        options.append((max(prev, stage.pace_ms), cpu + stage.cpu_ms, cuts + link))
                if options:
                    row[(j, c_out)] = min(options, key=lambda o: _order(o, costs, tolerance))
        best = row
    bottleneck, _, cuts = min(best.values(), key=lambda o: _order(o, costs, tolerance))
    return bottleneck, cuts


def _order(option: tuple, costs: ChainCosts, tolerance: float) -> tuple:
    """Sort key of a partial chain ``(bottleneck, processor ms, cuts)``."""
    bottleneck, cpu, cuts = option
    positions = [p for p, _ in cuts]
    # a learned bottleneck (ChainCosts.link_codecs) sorts after every generic codec
    order = {c: i for i, c in enumerate(costs.codecs)}
    codecs = [order.get(c, len(order)) for _, c in cuts]
    if tolerance <= 0:
        return (bottleneck, cpu, positions, codecs)
    return (_step(bottleneck, tolerance), positions, _step(cpu, tolerance), cpu, codecs)


def equal_layer_cuts(
    profile: ModelProfile, n_stages: int, layer_positions: Mapping[str, int] | None = None
) -> tuple[int, ...]:
    """DEFER's partition: cut points nearest to ``k/N`` of the layers, strictly increasing.

    Args:
        profile: any node's profile (only the cut point names are used).
        n_stages: number of nodes.
        layer_positions: cut point -> index of its layer in the model (``output`` -> the number
            of layers); default: the cut point's position among the profiled cut points.
    """
    cps = profile.cut_points
    last = len(cps) - 1
    pos = {cp.name: (layer_positions or {}).get(cp.name, i) for i, cp in enumerate(cps)}
    total = (layer_positions or {}).get(MODEL_OUTPUT, pos[cps[-1].name])
    cuts: list[int] = []
    for k in range(1, n_stages):
        low = cuts[-1] + 1 if cuts else 0
        high = last - (n_stages - k)
        if low > high:
            raise PlanError(f"Too few cut points for an equal-layer split into {n_stages} stages.")
        target = total * k / n_stages
        cuts.append(min(range(low, high + 1), key=lambda i: (abs(pos[cps[i].name] - target), i)))
    return tuple(cuts)


def chain_stage_costs(costs: ChainCosts, cuts: Sequence[tuple[int, str]]) -> tuple[StageCost, ...]:
    """The stage costs of a given partition (``(cut position, codec)`` per link)."""
    bounds = [(-1, None), *cuts, (costs.last, None)]
    return tuple(
        costs.stage(k, bounds[k][0], bounds[k][1], bounds[k + 1][0], bounds[k + 1][1])
        for k in range(len(bounds) - 1)
    )


def _equal_layer_partition(
    costs: ChainCosts, cuts: Sequence[int]
) -> tuple[tuple[tuple[int, str], ...], tuple[StageCost, ...]]:
    """DEFER's split with one codec on every link: the candidate codec that does best."""
    options = []
    for codec in costs.codecs:
        chosen = tuple((pos, codec) for pos in cuts)
        stages = chain_stage_costs(costs, chosen)
        options.append((max(s.pace_ms for s in stages), chosen, stages))
    best = min(options, key=lambda o: o[0])
    return best[1], best[2]


def stage_memory(profile: ModelProfile, start: str, end: str) -> int:
    """Predicted memory of a stage: the prefix memory from the input, else an upper bound
    (memory up to ``end`` minus the weights before ``start``)."""
    by_name = {cp.name: cp for cp in profile.cut_points}
    end_cp = profile.total if end == MODEL_OUTPUT else by_name[end]
    if start == MODEL_INPUT:
        return end_cp.memory_bytes
    return max(0, end_cp.memory_bytes - by_name[start].weight_bytes)


def plan_chain(
    costs: ChainCosts,
    *,
    layer_positions: Mapping[str, int] | None = None,
    stage_prefix: str = "stage",
    input_bytes: int = 0,
    tolerance: float = DEFAULT_TOLERANCE,
) -> Plan:
    """The bottleneck-minimising N-stage plan, compared with DEFER's equal-layer split.

    Args:
        costs: node profiles, link, candidate codecs and codec timings.
        layer_positions: layer index per cut point for the equal-layer comparison.
        stage_prefix: stage names are ``f"{stage_prefix}{k}"``.
        input_bytes: bytes the dispatcher sends the first node per sample (its own pipeline
            step; it bounds throughput too and is reported, not optimised).
        tolerance: relative step within which bottlenecks are equal (see the module docstring).

    Returns:
        A :class:`Plan` with ``constraint="pipeline"``; each stage's ``options`` holds its cost
        breakdown and ``codec_out`` (the codec of the link it sends on).
    """
    n = len(costs.profiles)
    if not 0.0 <= tolerance < 1.0:
        raise PlanError(f"The plan tolerance must be in [0, 1), got {tolerance!r}.")
    exact, _ = min_bottleneck(costs)
    _, cuts = min_bottleneck(costs, tolerance)
    bottleneck = max(s.pace_ms for s in chain_stage_costs(costs, cuts))
    stages_cost = chain_stage_costs(costs, cuts)
    equal, equal_cost = _equal_layer_partition(
        costs, equal_layer_cuts(costs.profiles[0], n, layer_positions)
    )
    equal_bottleneck = max(s.pace_ms for s in equal_cost)
    dispatch_ms = costs.transfer(input_bytes) if input_bytes else 0.0
    result_bytes, result_measured = costs.result()
    single_ms = costs.profiles[0].total.latency_ms + costs.transfer(result_bytes)
    stages = tuple(
        Stage(
            name=f"{stage_prefix}{k}",
            device=s.device,
            start=s.start,
            end=s.end,
            predicted_latency_ms=s.total_ms,
            predicted_memory_bytes=stage_memory(costs.profiles[k], s.start, s.end),
            options={"node": k, "codec_out": s.codec_out, "cost": s.to_dict()},
        )
        for k, s in enumerate(stages_cost)
    )
    pace = max(bottleneck, dispatch_ms)
    parameters = {
        "n_stages": n,
        "devices": [p.device for p in costs.profiles],
        "link": None if costs.link is None else costs.link.to_dict(),
        "codecs": list(costs.codecs),
        "bottlenecks": sorted(c.name for c in (costs.crossings or {}).values()),
        "overlap_link": costs.overlap_link,
        "link_codecs": [c for _, c in cuts],
        "bottleneck_ms": bottleneck,
        "exact_bottleneck_ms": exact,
        "tolerance": tolerance,
        "result_bytes": result_bytes,
        "result_bytes_measured": result_measured,
        "dispatcher_send_ms": dispatch_ms,
        "throughput_per_s": 1000.0 / pace if pace > 0 else math.inf,
        "single_node_ms": single_ms,
        "predicted_speedup_vs_one_node": single_ms / pace if pace > 0 else math.inf,
        "equal_layer": {
            "cuts": [costs.name(p) for p, _ in equal],
            "link_codecs": [c for _, c in equal],
            "bottleneck_ms": equal_bottleneck,
            "stage_pace_ms": [s.pace_ms for s in equal_cost],
        },
        "codec_times": "measured" if costs.codec_ms else "estimated (ESTIMATED_CODEC_MBPS)",
    }
    gain = equal_bottleneck / bottleneck if bottleneck > 0 else 1.0
    return Plan(
        constraint="pipeline",
        placement="none",
        stages=stages,
        cut_points=tuple(cp.name for cp in costs.profiles[0].cut_points[:-1]),
        boundary_bytes=tuple(costs.profiles[0].cut_points[p].boundary_bytes for p, _ in cuts),
        parameters=parameters,
        rationale=(
            f"{n} stages split at {', '.join(costs.name(p) for p, _ in cuts) or 'no cut point'}: "
            f"the slowest stage takes {bottleneck:.4g} ms (DEFER's equal-layer split: "
            f"{equal_bottleneck:.4g} ms, {gain:.2f}x slower)."
        ),
    )
