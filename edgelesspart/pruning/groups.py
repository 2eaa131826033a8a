"""Channel dependency analysis of a Keras 3 functional model.

Every tensor's last (channel) axis is described as a sequence of **spaces**: a space is the set
of channels one layer creates (a ``Conv*``/``Dense`` output, the model input, or the output of a
layer whose channels cannot be followed). ``Concatenate`` on the channel axis joins the spaces of
its inputs end to end; ``Add``/``Multiply``/... *unify* the spaces of their inputs (they must
keep the same channels); BatchNormalization, depthwise convs, activations and pooling pass their
input's spaces through; a ``Reshape`` that keeps the channel axis (the squeeze-excite
``(N, C) -> (N, 1, 1, C)``) passes them through too; ``Flatten`` (or a ``Reshape`` to
``(N, H*W*C)``) turns them into position-major blocks a following ``Dense`` can slice; a
``SeparableConv`` creates a space like a convolution and slices its depthwise kernel on its input.
Spaces joined by a merge form one **channel group**, pruned as one. Spaces that reach the model
input or output, or a layer that mixes channels in a way we cannot slice, are fixed; every fixed
space remembers what fixed it, so a prune can say which layers held channels back
(:attr:`ChannelGraph.held`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgelesspart._lazy import keras as _keras
from edgelesspart.errors import PruningError

#: Layers whose output channels are their own kernel's last axis (the filters we remove).
PRODUCERS = frozenset({"Conv1D", "Conv2D", "Conv3D", "Dense"})
#: Depthwise then pointwise convolutions: the pointwise kernel's last axis is the filters we
#: remove; the depthwise kernel and the pointwise rows are sliced on the input channels.
SEPARABLE = frozenset({"SeparableConv1D", "SeparableConv2D"})
#: Layers that keep their input's channels and hold one weight entry per channel.
FOLLOWERS = frozenset({"BatchNormalization", "DepthwiseConv1D", "DepthwiseConv2D"})
#: Layers that keep their input's channels and hold no per-channel weights.
PASS = frozenset(
    {
        "Activation", "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
        "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
        "AlphaDropout", "ActivityRegularization", "Identity", "MaxPooling1D", "MaxPooling2D",
        "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
        "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D",
        "GlobalMaxPooling1D", "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D",
        "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D", "Cropping3D",
        "UpSampling1D", "UpSampling2D", "UpSampling3D", "Resizing",
    }
)  # fmt: skip
#: Element-wise merges: every input keeps the same channels.
MERGES = frozenset({"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum"})
#: Layers that see all channels at once: their inputs are fixed, their output is a new fixed space.
FIXING = frozenset(
    {"LayerNormalization", "Normalization", "PReLU", "Rescaling", "Softmax", "Permute",
     "RepeatVector", "UnitNormalization", "InputLayer"}
)  # fmt: skip
UNKNOWN_POLICIES = ("refuse", "freeze")
#: Why channels that reach the model's edges stay: the labels used in :attr:`ChannelGraph.held`.
MODEL_INPUT, MODEL_OUTPUT, SINGLE_CHANNEL = "model input", "model output", "single channel"

Segments = tuple[tuple[int, int], ...]  # ((space, length), ...) along the channel axis


@dataclass(frozen=True)
class Flat:
    """Channels of a flattened ``(..., C)`` tensor: ``positions`` blocks of ``segments``."""

    segments: Segments
    positions: int


Desc = Segments | Flat


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are pruned together.

    Attributes:
        name: the first layer producing the group's channels (the group's handle in ratios).
        producers: ``Conv*``/``Dense`` layers whose filters are these channels.
        followers: BatchNormalization/depthwise layers sliced along with them.
        channels: channels in the group before pruning.
    """

    name: str
    producers: tuple[str, ...]
    followers: tuple[str, ...]
    channels: int

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "name": self.name,
            "producers": list(self.producers),
            "followers": list(self.followers),
            "channels": self.channels,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChannelGroup:
        """Inverse of :meth:`to_dict`."""
        return cls(
            data["name"], tuple(data["producers"]), tuple(data["followers"]), data["channels"]
        )


@dataclass(frozen=True)
class HeldChannels:
    """Filters that cannot be pruned, and what holds them.

    Attributes:
        producers: ``Conv*``/``Dense`` layers whose filters these are.
        channels: the filters held (per producer: each produces all of them).
        by: what fixed them: layer labels ``"name (Type)"``, or ``"model input"``,
            ``"model output"`` (the class count is kept) or ``"single channel"``.
    """

    producers: tuple[str, ...]
    channels: int
    by: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {"producers": list(self.producers), "channels": self.channels, "by": list(self.by)}


@dataclass(frozen=True)
class ChannelGraph:
    """What :func:`analyze` found: the groups and every layer's channel description.

    Attributes:
        groups: prunable channel groups, in model order.
        kinds: layer name -> how it is treated (``producer``, ``follower``, ``pass``, ...).
        inputs: layer name -> the channel description of each input tensor.
        outputs: layer name -> the channel description of its output tensor.
        space_group: space -> index into ``groups``, or ``-1`` for a fixed space.
        space_length: space -> number of channels.
        order: layer names in topological order.
        held: the fixed spaces that hold producers' filters, with what fixed them.
    """

    groups: tuple[ChannelGroup, ...]
    kinds: dict[str, str] = field(repr=False)
    inputs: dict[str, tuple[Desc, ...]] = field(repr=False)
    outputs: dict[str, Desc] = field(repr=False)
    space_group: dict[int, int] = field(repr=False)
    space_length: dict[int, int] = field(repr=False)
    order: tuple[str, ...] = field(repr=False)
    held: tuple[HeldChannels, ...] = field(default=(), repr=False)

    def group(self, name: str) -> ChannelGroup:
        """The group called ``name`` (its first producer layer)."""
        for g in self.groups:
            if g.name == name:
                return g
        raise PruningError(
            f"No prunable channel group named {name!r}. Groups: "
            f"{', '.join(g.name for g in self.groups) or '(none)'}."
        )


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.length: list[int] = []
        self.fixed: list[bool] = []
        self.blame: dict[int, set[str]] = {}

    def new(self, length: int, fixed: bool = False, why: str = "") -> int:
        self.parent.append(len(self.parent))
        self.length.append(length)
        self.fixed.append(fixed)
        if fixed:
            self.blame[len(self.parent) - 1] = {why} if why else set()
        return len(self.parent) - 1

    def find(self, s: int) -> int:
        while self.parent[s] != s:
            self.parent[s] = self.parent[self.parent[s]]
            s = self.parent[s]
        return s

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[rb] = ra
            self.fixed[ra] = self.fixed[ra] or self.fixed[rb]
            if rb in self.blame:
                self.blame.setdefault(ra, set()).update(self.blame.pop(rb))

    def fix(self, s: int, why: str) -> None:
        root = self.find(s)
        self.fixed[root] = True
        self.blame.setdefault(root, set()).add(why)


def spaces_of(desc: Desc) -> list[int]:
    """Every space in a channel description."""
    segments = desc.segments if isinstance(desc, Flat) else desc
    return [s for s, _ in segments]


def _nodes(model: Any) -> list[tuple[Any, Any]]:
    """(layer, node) pairs of ``model`` in topological order (iterative post-order DFS)."""
    order: list[tuple[Any, Any]] = []
    done: set[int] = set()
    seen_layers: dict[int, str] = {}
    stack: list[tuple[Any, bool]] = [(t, False) for t in reversed(model.outputs)]
    while stack:
        tensor, expanded = stack.pop()
        layer, index, _ = tensor._keras_history
        node = layer._inbound_nodes[index]
        if id(node) in done:
            continue
        if expanded:
            done.add(id(node))
            if id(layer) in seen_layers:
                raise PruningError(
                    f"Layer {layer.name!r} is called more than once in the model (a shared "
                    "layer); its channels cannot be pruned for one call only. Give each call "
                    "its own layer."
                )
            seen_layers[id(layer)] = layer.name
            order.append((layer, node))
            continue
        stack.append((tensor, True))
        stack.extend((t, False) for t in node.input_tensors)
    return order


def _check_channels_last(layer: Any, rank: int) -> None:
    config = layer.get_config()
    if config.get("data_format") == "channels_first":
        raise PruningError(
            f"Layer {layer.name!r} ({type(layer).__name__}) uses data_format='channels_first'; "
            "pruning supports channels_last models only. Rebuild the model channels_last."
        )
    if type(layer).__name__ == "BatchNormalization":
        axis = config.get("axis")
        axis = axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis
        if axis not in (-1, rank - 1):
            raise PruningError(
                f"Layer {layer.name!r} normalises axis {axis}, not the channel axis; it cannot "
                "be pruned with its input channels."
            )


class _Analyzer:
    """Assigns a channel description to every tensor and unifies merged spaces."""

    def __init__(self, unknown: str) -> None:
        self.uf = _UnionFind()
        self.unknown = unknown
        self.desc: dict[int, Desc] = {}
        self.kinds: dict[str, str] = {}
        self.inputs: dict[str, tuple[Desc, ...]] = {}
        self.outputs: dict[str, Desc] = {}
        self.producer_of: dict[int, str] = {}
        self.followers: dict[int, list[str]] = {}

    def fresh(self, tensor: Any, fixed: bool, why: str = "") -> Segments:
        channels = int(tensor.shape[-1]) if tensor.shape[-1] is not None else 0
        if not fixed and channels < 2:
            fixed, why = True, SINGLE_CHANNEL
        return ((self.uf.new(channels, fixed=fixed, why=why), channels),)

    def fix_all(self, desc: Desc, why: str) -> None:
        for s in spaces_of(desc):
            self.uf.fix(s, why)

    def visit(self, layer: Any, node: Any) -> None:
        kind = type(layer).__name__
        ins = tuple(self.desc[id(t)] for t in node.input_tensors)
        out_tensor = node.output_tensors[0]
        if len(node.output_tensors) != 1:
            raise PruningError(f"Layer {layer.name!r} has several outputs; it cannot be pruned.")
        if kind in PRODUCERS or kind in FOLLOWERS or kind in PASS:
            _check_channels_last(layer, len(node.input_tensors[0].shape))
        handler = self._handler(layer, kind)
        out = handler(layer, ins, out_tensor, list(node.input_tensors))
        self.desc[id(out_tensor)] = out
        self.inputs[layer.name] = ins
        self.outputs[layer.name] = out

    def _handler(self, layer: Any, kind: str) -> Any:
        if kind in PRODUCERS:
            groups = layer.get_config().get("groups", 1)
            return self._producer if groups == 1 else self._fixing
        if kind in SEPARABLE:
            return self._producer
        if kind in FOLLOWERS:
            multiplier = layer.get_config().get("depth_multiplier", 1)
            return self._follower if multiplier == 1 else self._fixing
        if kind in PASS:
            return self._pass
        if kind in MERGES:
            return self._merge
        if kind == "Concatenate":
            return self._concat
        if kind == "Flatten":
            return self._flatten
        if kind == "Reshape":
            return self._reshape
        if kind in FIXING or self.unknown == "freeze":
            return self._fixing
        raise PruningError(
            f"Layer {layer.name!r} ({kind}) is not supported by structured pruning: it is not "
            "known how it uses its input channels. Supported: Conv1D/2D/3D, SeparableConv1D/2D, "
            "Dense, DepthwiseConv, BatchNormalization, merges (Add, Multiply, ...), Concatenate, "
            "Flatten, Reshape, pooling, activations (docs/pruning.md lists what is not). Pass "
            "unknown='freeze' to keep the channels around such layers unpruned."
        )

    def _producer(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "producer"
        segments = self.fresh(out, fixed=False)
        self.producer_of[segments[0][0]] = layer.name
        return segments

    def _follower(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "follower"
        if isinstance(ins[0], Flat):
            self.fix_all(ins[0], _label(layer))
            return self.fresh(out, fixed=True, why=_label(layer))
        for s in spaces_of(ins[0]):
            self.followers.setdefault(s, []).append(layer.name)
        return ins[0]

    def _pass(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "pass"
        return ins[0]

    def _fixing(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "fixed"
        for d in ins:
            self.fix_all(d, _label(layer))
        return self.fresh(out, fixed=True, why=_label(layer))

    def _merge(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "merge"
        full = [d for d, t in zip(ins, tensors) if t.shape[-1] == out.shape[-1]]
        if any(isinstance(d, Flat) for d in ins) or len(full) != len(ins):
            # broadcasting or flattened operands: keep everything involved unpruned
            return self._fixing(layer, ins, out, tensors)
        first = full[0]
        for other in full[1:]:
            if [n for _, n in other] != [n for _, n in first]:
                for d in full:
                    self.fix_all(d, _label(layer))
                continue
            for (a, _), (b, _) in zip(first, other):
                self.uf.union(a, b)
        return first

    def _concat(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "concat"
        axis = layer.get_config().get("axis", -1)
        if axis not in (-1, len(out.shape) - 1) or any(isinstance(d, Flat) for d in ins):
            return self._fixing(layer, ins, out, tensors)
        return tuple(seg for d in ins for seg in d)

    def _flatten(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        self.kinds[layer.name] = "flatten"
        tensor = tensors[0]
        if len(tensor.shape) <= 2 or isinstance(ins[0], Flat):
            return ins[0]
        positions = 1
        for d in tensor.shape[1:-1]:
            if d is None:
                return self._fixing(layer, ins, out, tensors)
            positions *= int(d)
        return Flat(ins[0], positions)

    def _reshape(self, layer: Any, ins: tuple[Desc, ...], out: Any, tensors: list[Any]) -> Desc:
        """A reshape that keeps the channel axis passes it; one to ``(N, H*W*C)`` flattens."""
        before, after = tensors[0].shape, out.shape
        if before[-1] is not None and before[-1] == after[-1]:
            # row-major order: element (..., c) stays at channel c whatever the other axes do
            self.kinds[layer.name] = "reshape"
            return ins[0]
        if len(after) == 2 and not isinstance(ins[0], Flat) and len(before) > 2:
            desc = self._flatten(layer, ins, out, tensors)
            if self.kinds[layer.name] == "flatten":
                self.kinds[layer.name] = "reshape"
            return desc
        return self._fixing(layer, ins, out, tensors)


def _label(layer: Any) -> str:
    """How a layer is named in pruning reports: ``name (Type)``."""
    return f"{layer.name} ({type(layer).__name__})"


def analyze(model: Any, *, unknown: str = "refuse") -> ChannelGraph:
    """Find the channel groups of a functional model.

    Args:
        model: a flat Keras 3 functional model (no nested models, no shared layers).
        unknown: ``refuse`` (default) raises on a layer type whose channel use is unknown;
            ``freeze`` keeps the channels around such layers unpruned instead.

    Raises:
        PruningError: a nested model, a shared layer, ``channels_first`` data, or (with
            ``unknown="refuse"``) an unsupported layer; the message names the layer.
    """
    if unknown not in UNKNOWN_POLICIES:
        raise PruningError(f"unknown must be one of {UNKNOWN_POLICIES}, got {unknown!r}.")
    keras = _keras()
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            raise PruningError(
                f"Layer {layer.name!r} is a nested model; prune a flat functional model (build "
                "keras.applications with input_tensor= instead of nesting them)."
            )
    state = _Analyzer(unknown)
    for tensor in model.inputs:
        state.desc[id(tensor)] = state.fresh(tensor, fixed=True, why=MODEL_INPUT)
    order = []
    for layer, node in _nodes(model):
        order.append(layer.name)
        if type(layer).__name__ == "InputLayer":
            state.kinds[layer.name] = "input"
            continue
        state.visit(layer, node)
    for tensor in model.outputs:
        state.fix_all(state.desc[id(tensor)], MODEL_OUTPUT)
    return _collect(state, tuple(order))


def _collect(state: _Analyzer, order: tuple[str, ...]) -> ChannelGraph:
    uf = state.uf
    members: dict[int, list[int]] = {}
    for s in range(len(uf.parent)):
        members.setdefault(uf.find(s), []).append(s)
    groups: list[ChannelGroup] = []
    space_group: dict[int, int] = {}
    rank = {name: i for i, name in enumerate(order)}
    roots = [
        r for r in members if not uf.fixed[r] and any(s in state.producer_of for s in members[r])
    ]
    roots.sort(
        key=lambda r: min(rank[state.producer_of[s]] for s in members[r] if s in state.producer_of)
    )
    for r in range(len(uf.parent)):
        for s in members.get(r, []):
            space_group[s] = -1
    for index, root in enumerate(roots):
        spaces = members[root]
        producers = sorted(
            {state.producer_of[s] for s in spaces if s in state.producer_of}, key=rank.get
        )
        followers = sorted({f for s in spaces for f in state.followers.get(s, [])}, key=rank.get)
        groups.append(
            ChannelGroup(producers[0], tuple(producers), tuple(followers), uf.length[root])
        )
        for s in spaces:
            space_group[s] = index
    held = []
    for root in sorted(members, key=lambda r: min(members[r])):
        producers = [state.producer_of[s] for s in members[root] if s in state.producer_of]
        if uf.fixed[root] and producers:
            held.append(
                HeldChannels(
                    tuple(sorted(set(producers), key=rank.get)),
                    uf.length[root],
                    tuple(sorted(uf.blame.get(root, set()))),
                )
            )
    return ChannelGraph(
        groups=tuple(groups),
        kinds=state.kinds,
        inputs=state.inputs,
        outputs=state.outputs,
        space_group=space_group,
        space_length=dict(enumerate(uf.length)),
        order=order,
        held=tuple(held),
    )
