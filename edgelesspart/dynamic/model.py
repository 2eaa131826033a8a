"""The prunable chain CNN, its width-masked forward pass and its exact narrow slices (Keras).

The model is a chain of stages; stage ``k`` is ``convs`` x (3x3 conv, BatchNorm, ReLU) with
``channels[k]`` filters, then 2x2 max-pooling (the last stage ends in global average pooling and
the softmax classifier instead). At width ``w`` a stage keeps the first ``ceil(w * C)`` filters
of its *inner* convs (all but its last); its last conv keeps all its filters, so the boundary a
stage hands on always has its full channel count. That makes each stage's width independent of
its neighbours': the next node's segment never changes, and the last BatchNorm of a narrowed
stage, calibrated at that width, hands on a tensor with the per-channel mean and variance the
next stage was calibrated on. Compute still scales with ``w`` (the inner conv's outputs and the
last conv's inputs both shrink). Training evaluates widths with *masks* (zeroing inner channels
past the width after each ReLU), which computes exactly what the narrow model computes, because
a zero channel adds nothing to the next convolution and BatchNorm works per channel.
:func:`stage_model` builds the real narrow stage (fewer filters) and copies the sliced weights.
Layer names: ``s{k}_conv{j}``, ``s{k}_bn{j}``, ``s{k}_relu{j}``, ``s{k}_pool``, ``avg_pool``,
``predictions``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from edgelesspart._lazy import keras as _keras
from edgelesspart.dynamic.widths import channels_at
from edgelesspart.errors import ModelError

DEFAULT_CHANNELS = (32, 64, 96, 128)
CONVS_PER_STAGE = 2
BN_MOMENTUM = 0.9


def _conv_block(keras: Any, x: Any, k: int, filters: int, convs: int) -> Any:
    """``convs`` x (conv, BatchNorm, ReLU) named for stage ``k``."""
    layers = keras.layers
    for j in range(convs):
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"s{k}_conv{j}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"s{k}_bn{j}")(x)
        x = layers.ReLU(name=f"s{k}_relu{j}")(x)
    return x


def build_chain_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    channels: Sequence[int] = DEFAULT_CHANNELS,
    *,
    convs: int = CONVS_PER_STAGE,
    seed: int = 0,
) -> Any:
    """Build the full-width chain CNN with random weights (one stage per entry of ``channels``).

    Raises:
        ModelError: fewer than one stage, a non-positive channel count, or an input too small
            for the stage's poolings.
    """
    channels = tuple(int(c) for c in channels)
    if not channels or min(channels) < 1 or convs < 1:
        raise ModelError(f"channels must be positive integers, got {channels!r}.")
    if min(input_shape[:2]) < 2 ** (len(channels) - 1):
        raise ModelError(
            f"Input {input_shape[0]}x{input_shape[1]} is too small for {len(channels)} stages "
            f"(each but the last halves it); use at least {2 ** (len(channels) - 1)} pixels."
        )
    keras = _keras()
    keras.utils.set_random_seed(seed)
    inputs = keras.Input(shape=tuple(input_shape), name="input")
    x = inputs
    for k, filters in enumerate(channels):
        x = _conv_block(keras, x, k, filters, convs)
        if k < len(channels) - 1:
            x = keras.layers.MaxPooling2D(2, name=f"s{k}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="chain_cnn")


def model_channels(model: Any) -> tuple[int, ...]:
    """Full channel count of every stage of a chain CNN."""
    out = []
    k = 0
    while _has_layer(model, f"s{k}_conv0"):
        out.append(int(model.get_layer(f"s{k}_conv0").filters))
        k += 1
    if not out:
        raise ModelError(f"Model {model.name!r} is not a chain CNN (no layer 's0_conv0').")
    return tuple(out)


def model_convs(model: Any) -> int:
    """Convolutions per stage of a chain CNN."""
    j = 0
    while _has_layer(model, f"s0_conv{j}"):
        j += 1
    return j


def _has_layer(model: Any, name: str) -> bool:
    try:
        model.get_layer(name)
    except ValueError:
        return False
    return True


def masked_forward(model: Any, x: Any, masks: Sequence[Any], training: bool) -> Any:
    """Run the chain CNN with stage ``k``'s channels multiplied by ``masks[k]`` (``(C_k,)``).

    ``masks[k]`` applies to stage ``k``'s inner convs (all but the last). A mask of ones up to
    ``ceil(w * C_k)`` and zeros after computes exactly the width-``w`` narrow stage. Returns the
    softmax probabilities.
    """
    stages = len(masks)
    convs = model_convs(model)
    for k in range(stages):
        for j in range(convs):
            x = model.get_layer(f"s{k}_conv{j}")(x)
            x = model.get_layer(f"s{k}_bn{j}")(x, training=training)
            x = model.get_layer(f"s{k}_relu{j}")(x)
            if j < convs - 1:
                x = x * masks[k]
        if k < stages - 1:
            x = model.get_layer(f"s{k}_pool")(x)
    x = model.get_layer("avg_pool")(x)
    return model.get_layer("predictions")(x)


def width_mask(full: int, width: float) -> np.ndarray:
    """``(full,)`` float32: ones for the channels kept at ``width``, zeros after."""
    mask = np.zeros(full, dtype=np.float32)
    mask[: channels_at(full, width)] = 1.0
    return mask


def reorder_by_l1(model: Any) -> None:
    """Permute every inner conv's filters by descending L1 norm, in place; outputs unchanged.

    The permutation is applied to the conv's output axis, its BatchNorm's four vectors and the
    input axis of the next conv, so the model computes the same function and width ``w`` then
    keeps the ``w`` most important filters (Li et al. 2017): the post-hoc pruning baseline.
    """
    convs = model_convs(model)
    for k in range(len(model_channels(model))):
        for j in range(convs - 1):
            conv = model.get_layer(f"s{k}_conv{j}")
            kernel = conv.get_weights()[0]
            order = np.argsort(-np.abs(kernel).sum(axis=(0, 1, 2)), kind="stable")
            conv.set_weights([kernel[..., order]])
            bn = model.get_layer(f"s{k}_bn{j}")
            bn.set_weights([w[order] for w in bn.get_weights()])
            nxt = model.get_layer(f"s{k}_conv{j + 1}")
            nxt.set_weights([nxt.get_weights()[0][:, :, order, :]])


def stage_model(full: Any, k: int, width: float) -> Any:
    """The real narrow stage ``k`` at ``width``: fewer inner filters, weights sliced from ``full``.

    The stage takes and hands on full-channel tensors; its output is a dict named ``boundary``
    (or ``probs`` for the last stage), the signature the runtime's segments use. Its BatchNorm
    statistics are copies of ``full``'s; settle them on calibration data at this width.
    """
    keras = _keras()
    channels = model_channels(full)
    convs = model_convs(full)
    inner = channels_at(channels[k], width)
    shape = tuple(int(d) for d in full.get_layer(f"s{k}_conv0").input.shape[1:])
    inputs = keras.Input(shape=shape, name="x")
    x = inputs
    layers = keras.layers
    for j in range(convs):
        filters = channels[k] if j == convs - 1 else inner
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"s{k}_conv{j}")(x)
        x = layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"s{k}_bn{j}")(x)
        x = layers.ReLU(name=f"s{k}_relu{j}")(x)
    last = k == len(channels) - 1
    if last:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        dense = full.get_layer("predictions")
        x = layers.Dense(int(dense.units), activation="softmax", name="predictions")(x)
    else:
        x = layers.MaxPooling2D(2, name=f"s{k}_pool")(x)
    narrow = keras.Model(
        inputs, {"probs" if last else "boundary": x}, name=f"stage{k}_w{round(width * 100)}"
    )
    for j in range(convs):
        kernel = full.get_layer(f"s{k}_conv{j}").get_weights()[0]
        keep_in = kernel.shape[2] if j == 0 else inner
        keep_out = channels[k] if j == convs - 1 else inner
        narrow.get_layer(f"s{k}_conv{j}").set_weights([kernel[:, :, :keep_in, :keep_out]])
        bn = full.get_layer(f"s{k}_bn{j}").get_weights()
        narrow.get_layer(f"s{k}_bn{j}").set_weights([w[:keep_out] for w in bn])
    if last:
        narrow.get_layer("predictions").set_weights(full.get_layer("predictions").get_weights())
    return narrow
