"""Cut points of a Keras functional model, and sub-models (segments) between them.

A *cut point* is a tensor through which every path from the model input to its output passes:
the only place a model can be split, or an exit attached, without sending anything else across.
We find them by walking the functional graph backwards from the output (so dead branches are
ignored) and, for each candidate tensor, checking that the output is unreachable from the input
once that tensor is removed. Segments are built with ``keras.Model(intermediate_in, outputs)``,
which shares layers (and weights) with the source model.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from edgelesspart._lazy import keras
from edgelesspart.errors import GraphError
from edgelesspart.runtime.plan import MODEL_INPUT, MODEL_OUTPUT


@dataclass(frozen=True)
class CutPoint:
    """A legal split/exit position: the output tensor of layer ``name``."""

    name: str
    index: int
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        """Raw float32 bytes of the tensor for one sample."""
        size = 4
        for dim in self.shape:
            size *= int(dim)
        return size


@dataclass
class TensorGraph:
    """The tensors reaching the model output, with their producers and consumers."""

    tensors: dict[int, Any]  # id -> KerasTensor
    parents: dict[int, list[int]]  # id -> input tensor ids of its producing node
    children: dict[int, list[int]]
    order: list[int]  # topological order
    names: dict[int, str]  # id -> layer name of the producer
    input_id: int
    output_id: int


def functional_model(model: Any) -> Any:
    """Return ``model`` as a flat, single-input, single-output functional model.

    A ``Sequential`` model is rewired into a functional one sharing its layers. A model with
    a nested model layer, several inputs or several outputs is rejected with the reason.
    """
    k = keras()
    if isinstance(model, k.Sequential):
        if not model.built or not model.inputs:
            raise GraphError(
                "The Sequential model is not built: give its first layer an input shape."
            )
        inputs = k.Input(shape=tuple(model.inputs[0].shape[1:]), name=MODEL_INPUT)
        x = inputs
        for layer in model.layers:
            x = layer(x)
        model = k.Model(inputs, x, name=model.name)
    if not hasattr(model, "inputs") or not hasattr(model, "outputs") or model.inputs is None:
        raise GraphError(
            f"{type(model).__name__} is not a Keras functional model; build it with keras.Model."
        )
    for layer in model.layers:
        if isinstance(layer, k.Model):
            raise GraphError(
                f"Layer {layer.name!r} is a nested model ({type(layer).__name__}); cut points "
                "inside it cannot be reached. Rebuild the model with the inner model's layers "
                "called directly "
                "(for keras.applications pass input_tensor= instead of nesting the application)."
            )
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise GraphError(
            f"Only single-input, single-output models can be split; this one has "
            f"{len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    return model


def _producer(tensor: Any) -> tuple[Any, int, list[Any]]:
    history = getattr(tensor, "_keras_history", None)
    if history is None:
        raise GraphError(f"Tensor {tensor!r} has no Keras history; is this a functional model?")
    operation, node_index, _ = history
    node = operation._inbound_nodes[node_index]
    return operation, node_index, list(node.input_tensors)


def tensor_graph(model: Any) -> TensorGraph:
    """Walk ``model`` back from its output into a :class:`TensorGraph`."""
    tensors: dict[int, Any] = {}
    parents: dict[int, list[int]] = {}
    names: dict[int, str] = {}
    stack = [model.outputs[0]]
    while stack:
        tensor = stack.pop()
        tid = id(tensor)
        if tid in tensors:
            continue
        tensors[tid] = tensor
        operation, node_index, inputs = _producer(tensor)
        # Node 0 is the layer's first call; a shared layer's later calls get "#k". Extracting a
        # segment appends cloned nodes to the layers, which never shifts these indices.
        names[tid] = operation.name if node_index == 0 else f"{operation.name}#{node_index}"
        parents[tid] = [id(t) for t in inputs]
        stack.extend(inputs)
    children: dict[int, list[int]] = {tid: [] for tid in tensors}
    for tid, pids in parents.items():
        for pid in pids:
            children[pid].append(tid)
    input_id = id(model.inputs[0])
    if input_id not in tensors:
        raise GraphError("The model output does not depend on its input.")
    order = _topological_order(parents, children)
    return TensorGraph(tensors, parents, children, order, names, input_id, id(model.outputs[0]))


def _topological_order(parents: dict[int, list[int]], children: dict[int, list[int]]) -> list[int]:
    pending = {tid: len(set(pids)) for tid, pids in parents.items()}
    ready = deque(tid for tid, count in pending.items() if count == 0)
    order: list[int] = []
    while ready:
        tid = ready.popleft()
        order.append(tid)
        for child in dict.fromkeys(children[tid]):
            pending[child] -= 1
            if pending[child] == 0:
                ready.append(child)
    return order


def _reaches_output_without(graph: TensorGraph, removed: int) -> bool:
    seen = {graph.input_id}
    queue = deque([graph.input_id])
    while queue:
        tid = queue.popleft()
        if tid == graph.output_id:
            return True
        for child in graph.children[tid]:
            if child != removed and child not in seen:
                seen.add(child)
                queue.append(child)
    return False


def find_cut_points(model: Any) -> list[CutPoint]:
    """All internal cut points of ``model`` in model order (input and output excluded)."""
    model = functional_model(model)
    graph = tensor_graph(model)
    cuts: list[CutPoint] = []
    for tid in graph.order:
        if tid in (graph.input_id, graph.output_id):
            continue
        if not _reaches_output_without(graph, tid):
            shape = tuple(int(d) for d in graph.tensors[tid].shape[1:])
            cuts.append(CutPoint(graph.names[tid], len(cuts), shape))
    return cuts


def cut_tensor(model: Any, name: str) -> Any:
    """The tensor of cut point ``name`` (``"input"``/``"output"`` name the model's ends)."""
    if name == MODEL_INPUT:
        return model.inputs[0]
    if name == MODEL_OUTPUT:
        return model.outputs[0]
    graph = tensor_graph(model)
    for tid in graph.order:
        if graph.names[tid] == name:
            if tid in (graph.input_id, graph.output_id) or not _reaches_output_without(graph, tid):
                return graph.tensors[tid]
            raise GraphError(f"{name!r} is not a cut point: some input-to-output path bypasses it.")
    raise GraphError(f"No layer output called {name!r} in model {model.name!r}.")


def extract(model: Any, start: str, outputs: dict[str, Any], name: str | None = None) -> Any:
    """A sub-model from cut point ``start`` to the named output tensors.

    ``outputs`` maps output names (``probs``, ``boundary``) to tensors of ``model``'s graph (or
    of a graph grown from it, such as exit heads attached to its cut tensors). The sub-model
    gets a fresh input and shares layers and weights with ``model``.
    """
    k = keras()
    start_tensor = cut_tensor(model, start)
    try:
        segment = k.Model(start_tensor, dict(outputs), name=name)
    except ValueError as exc:
        raise GraphError(
            f"Cannot build a segment from {start!r} to {sorted(outputs)}: {exc}. The outputs must "
            f"depend only on the tensor at {start!r}."
        ) from exc
    return segment


def split_model(model: Any, cut: str) -> tuple[Any, Any]:
    """The head (input -> cut) and tail (cut -> output) of ``model``."""
    head = extract(model, MODEL_INPUT, {"boundary": cut_tensor(model, cut)}, name="head")
    tail = extract(model, cut, {"probs": model.outputs[0]}, name="tail")
    return head, tail
