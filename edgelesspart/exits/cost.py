"""What an exit head costs at each candidate cut point: parameters and estimated time.

The build renders the exit definition, builds one head on a symbolic input of each candidate
cut point's shape (Keras, no training, no LiteRT conversion) and counts its parameters and
multiply-accumulates (MACs). Its time is an **estimate from MACs**: the head is charged the
backbone's own measured milliseconds per MAC on each device (the device profile's full-model
latency divided by the backbone's MACs). Small heads are dominated by per-operator overhead
that this ignores, so the estimate is a lower bound; ``experiments/exit_heads.py`` measures the
real LiteRT time of every built-in head for comparison (``docs/exit_heads.md``).

The planner's objective modes charge it for every exit a sample evaluates
(:class:`edgelesspart.planning.objective.Objective`), so an exit is kept only where it pays for
itself.
The functions that turn counts into milliseconds are pure.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgelesspart.errors import ExitSpecError

#: Keras layer classes whose MACs are counted exactly; every other layer counts one MAC per
#: output element (pooling, normalisation, activations, additions).
_CONV = ("Conv1D", "Conv2D", "Conv3D")


@dataclass(frozen=True)
class HeadCost:
    """One exit head at one cut point: parameters and multiply-accumulates per sample."""

    params: int
    macs: int

    @property
    def param_bytes(self) -> int:
        """Float32 bytes of the head's parameters."""
        return 4 * self.params

    def to_dict(self) -> dict[str, int]:
        """Return a JSON-ready dict."""
        return {"params": self.params, "param_bytes": self.param_bytes, "macs": self.macs}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeadCost:
        """Build from :meth:`to_dict` output."""
        return cls(int(data["params"]), int(data["macs"]))


def _size(shape: Sequence[Any]) -> int:
    return math.prod(int(d) for d in shape[1:] if d is not None)


def layer_macs(layer: Any) -> int:
    """Multiply-accumulates of one Keras layer for one sample (an estimate for cheap layers)."""
    kind = type(layer).__name__
    out = layer.output
    out_size = _size(out.shape) if hasattr(out, "shape") else 0
    if kind in _CONV:
        kernel = math.prod(layer.kernel_size)
        channels_in = int(layer.input.shape[-1]) // max(1, int(getattr(layer, "groups", 1)))
        return out_size * kernel * channels_in
    if kind == "DepthwiseConv2D":
        return out_size * math.prod(layer.kernel_size)
    if kind in ("SeparableConv1D", "SeparableConv2D"):
        channels_in = int(layer.input.shape[-1])
        spatial = out_size // max(1, int(out.shape[-1]))
        depthwise = spatial * channels_in * int(layer.depth_multiplier)
        return depthwise * math.prod(layer.kernel_size) + out_size * channels_in * int(
            layer.depth_multiplier
        )
    if kind == "Dense":
        return out_size * int(layer.input.shape[-1])
    return out_size


def model_macs(model: Any) -> int:
    """Multiply-accumulates of a flat functional Keras model for one sample."""
    return sum(layer_macs(layer) for layer in model.layers if type(layer).__name__ != "InputLayer")


def head_costs(
    model: Any, definition: Any, cuts: Sequence[str], classes: int
) -> dict[str, HeadCost]:
    """Build the exit head on each cut point's shape and count its parameters and MACs.

    Args:
        model: the functional backbone.
        definition: a rendered :class:`edgelesspart.exits.heads.ExitDefinition`.
        cuts: candidate cut points (``input``/``output`` are skipped, and so is a cut point
            the head cannot be built on, such as a Conv2D spec on a rank-2 tensor).
        classes: number of classes.
    """
    from edgelesspart._lazy import keras
    from edgelesspart.exits import heads as exits
    from edgelesspart.model.graph import cut_tensor

    k = keras()
    builder = exits.compile_exit_builder(definition)
    costs = {}
    for cut in cuts:
        if cut in ("input", "output"):
            continue
        inputs = k.Input(tuple(cut_tensor(model, cut).shape[1:]))
        try:
            probs = exits.attach_exit(builder, inputs, classes, "cost_probe")
        except ExitSpecError:
            continue  # e.g. a Conv2D spec on a rank-2 cut: no cost known, none charged
        head = k.Model(inputs, probs)
        costs[cut] = HeadCost(int(head.count_params()), model_macs(head))
    return costs


def device_head_ms(
    costs: Mapping[str, HeadCost], backbone_macs: int, full_model_ms: float
) -> dict[str, float]:
    """Each head's estimated ms on a device: its MACs at the backbone's ms per MAC there.

    Args:
        costs: :func:`head_costs` output.
        backbone_macs: :func:`model_macs` of the backbone.
        full_model_ms: the backbone's full latency on that device (its profile's total).
    """
    if backbone_macs <= 0 or not math.isfinite(full_model_ms) or full_model_ms <= 0:
        return {cut: 0.0 for cut in costs}
    per_mac = full_model_ms / backbone_macs
    return {cut: cost.macs * per_mac for cut, cost in costs.items()}
