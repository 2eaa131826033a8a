"""A learned bottleneck at the split: an encoder shrinks the boundary, a decoder restores it.

Split computing sends the boundary tensor across the link; a small learned bottleneck sends a
much smaller *code* instead (BottleFit, the Entropic Student, sc2bench). Here:

* the **encoder** is one convolution at the end of the edge part: 1x1 (``stride=1``) or 3x3
  with ``stride=2`` (a quarter of the positions), reducing the boundary's channels to
  ``channels``, linear output (the existing int8 codec path then quantises the code);
* the **decoder** starts the cloud part: a 3x3 convolution back to the boundary's channels
  (a transposed one with stride 2 when the encoder was strided), ReLU when the boundary was
  non-negative on the training split, then a 1x1 refinement;
* rank-1 boundaries (dense features) use a Dense layer each way.

Both are trained by **distillation** with the backbone frozen: on the training split the
unmodified model's boundary ``B`` and final probabilities ``P`` are the targets; the loss is
the mean squared error of the restored boundary (divided by ``mean(B**2)`` so it is scale-free)
plus the KL divergence from ``P`` to the tail's probabilities on the restored boundary. During
training, uniform noise of one int8 quantisation step is added to the code so the decoder learns
to read quantised codes. The backbone's weights never change here, so edge exits (attached
before the split) are unaffected. Optionally (:func:`finetune_cloud`, BottleFit's second stage)
the decoder and the cloud part are then fine-tuned on the labels plus the same KL, the encoder
frozen; the build writes those cloud weights into the backbone only for the pair it uses.

Measurement and the choice among candidates live in :mod:`edgelesspart.planning.bottleneck`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from edgelesspart._lazy import keras
from edgelesspart.errors import ConfigError

NONE = "none"
AUTO = "auto"
#: What ``auto`` trains: (channel divisor, stride) pairs; the strided one only where allowed
#: (C/8 and C/16 at every position, C/4 at a quarter of them: 32x, 64x and 64x fewer values).
AUTO_CANDIDATES = ((8, 1), (16, 1), (4, 2))
#: Noise of one int8 step of the code's range, added while training (see the module docstring).
QUANT_LEVELS = 255.0


def parse_bottleneck(value: Any) -> str | int:
    """``"none"``, ``"auto"`` or a positive channel count (``"8"`` -> 8).

    Raises:
        ConfigError: anything else, with the accepted forms.
    """
    if isinstance(value, bool):
        raise ConfigError(f"bottleneck must be none, auto or a channel count, got {value!r}.")
    if isinstance(value, int):
        channels = value
    else:
        text = str(value).strip().lower()
        if text in (NONE, AUTO):
            return text
        try:
            channels = int(text)
        except ValueError:
            raise ConfigError(
                f"Unknown bottleneck {value!r}; choose none (no bottleneck), auto (train a few "
                "channel counts, use one only where it wins within --max-codec-loss) or a "
                "channel count such as 4."
            ) from None
    if channels < 1:
        raise ConfigError(f"A bottleneck needs at least 1 channel, got {channels}.")
    return channels


@dataclass(frozen=True)
class BottleneckShape:
    """One candidate's geometry: code channels and the encoder's stride."""

    channels: int
    stride: int = 1

    @property
    def label(self) -> str:
        """Short name, e.g. ``bn4s2`` (4 channels, stride 2)."""
        return f"bn{self.channels}s{self.stride}"


def candidate_shapes(boundary_shape: tuple[int, ...], choice: str | int) -> list[BottleneckShape]:
    """The candidates to train: the given channel count, or ``auto``'s reductions.

    A rank-3 boundary whose height and width are even and >= 8 also gets strided candidates
    (stride 2 keeps a quarter of the positions); ``auto`` trains :data:`AUTO_CANDIDATES`.
    """
    channels = int(boundary_shape[-1])
    strides = [1]
    if len(boundary_shape) == 3 and all(d >= 8 and d % 2 == 0 for d in boundary_shape[:2]):
        strides.append(2)
    if choice == AUTO:
        shapes = [
            BottleneckShape(max(1, channels // divisor), stride)
            for divisor, stride in AUTO_CANDIDATES
            if stride in strides and max(1, channels // divisor) < channels
        ]
        return list(dict.fromkeys(shapes))
    if not isinstance(choice, int):
        raise ConfigError(f"candidate_shapes takes auto or a channel count, got {choice!r}.")
    if choice >= channels:
        raise ConfigError(
            f"A {choice}-channel bottleneck does not shrink a boundary of {channels} channels "
            f"(shape {tuple(boundary_shape)}); choose fewer than {channels} channels."
        )
    return [BottleneckShape(choice, s) for s in strides]


@dataclass
class TrainedBottleneck:
    """An encoder/decoder pair and how its training went.

    Attributes:
        shape: channels and stride.
        cut_point: the split it sits at.
        encoder: Keras model, boundary -> code.
        decoder: Keras model, code -> restored boundary.
        boundary_shape: the boundary tensor's shape (no batch dim).
        code_shape: the code's shape (no batch dim).
        history: per-epoch training and validation losses.
    """

    shape: BottleneckShape
    cut_point: str
    encoder: Any
    decoder: Any
    boundary_shape: tuple[int, ...]
    code_shape: tuple[int, ...]
    history: dict[str, list[float]] = field(default_factory=dict)
    seconds: float = 0.0
    #: The cloud part's weights after :func:`finetune_cloud` (``tail.get_weights()`` order), or
    #: ``None`` when the tail is the unmodified model's.
    tail_weights: list[Any] | None = None
    finetune: dict[str, Any] | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready facts (what the manifest records about the bottleneck)."""
        return {
            "label": self.shape.label,
            "channels": self.shape.channels,
            "stride": self.shape.stride,
            "cut_point": self.cut_point,
            "boundary_shape": list(self.boundary_shape),
            "code_shape": list(self.code_shape),
            "encoder_params": int(self.encoder.count_params()),
            "decoder_params": int(self.decoder.count_params()),
            "train_seconds": round(self.seconds, 2),
            "epochs": len(self.history.get("loss", [])),
            "cloud_finetuned": self.tail_weights is not None,
            **({"finetune": self.finetune} if self.finetune else {}),
        }


def build_pair(
    boundary_shape: tuple[int, ...], shape: BottleneckShape, non_negative: bool
) -> tuple[Any, Any]:
    """The untrained encoder and decoder for ``boundary_shape`` (see the module docstring)."""
    k = keras()
    layers = k.layers
    tag = shape.label
    boundary = k.Input(boundary_shape, name=f"{tag}_boundary")
    channels = int(boundary_shape[-1])
    if len(boundary_shape) == 3:
        kernel = 3 if shape.stride > 1 else 1
        code = layers.Conv2D(
            shape.channels, kernel, strides=shape.stride, padding="same", name=f"{tag}_encode"
        )(boundary)
        code_in = k.Input(tuple(int(d) for d in code.shape[1:]), name=f"{tag}_code")
        if shape.stride > 1:
            y = layers.Conv2DTranspose(
                channels, 3, strides=shape.stride, padding="same", name=f"{tag}_up"
            )(code_in)
        else:
            y = layers.Conv2D(channels, 3, padding="same", name=f"{tag}_expand")(code_in)
        y = layers.ReLU(name=f"{tag}_relu")(y)
        y = layers.Conv2D(channels, 1, name=f"{tag}_refine")(y)
    elif len(boundary_shape) == 1:
        code = layers.Dense(shape.channels, name=f"{tag}_encode")(boundary)
        code_in = k.Input((shape.channels,), name=f"{tag}_code")
        y = layers.Dense(channels, activation="relu", name=f"{tag}_expand")(code_in)
        y = layers.Dense(channels, name=f"{tag}_refine")(y)
    else:
        raise ConfigError(
            f"A bottleneck needs a boundary of shape (H, W, C) or (D,), got {boundary_shape}; "
            "choose another split or --bottleneck none."
        )
    if non_negative:
        y = layers.ReLU(name=f"{tag}_restore_relu")(y)
    encoder = k.Model(boundary, code, name=f"{tag}_encoder")
    decoder = k.Model(code_in, y, name=f"{tag}_decoder")
    return encoder, decoder


class _QuantNoise:
    """Adds uniform noise of +-half an int8 step of each sample's code range (training only)."""

    @staticmethod
    def layer() -> Any:
        k = keras()
        ops = k.ops

        class QuantNoise(k.layers.Layer):
            def __init__(self, **kwargs: Any) -> None:
                super().__init__(**kwargs)
                self.seeds = k.random.SeedGenerator(1)

            def call(self, x: Any, training: Any = None) -> Any:
                if not training:
                    return x
                axes = tuple(range(1, len(x.shape)))
                span = ops.max(x, axis=axes, keepdims=True) - ops.min(x, axis=axes, keepdims=True)
                step = span / QUANT_LEVELS
                noise = k.random.uniform(ops.shape(x), minval=-0.5, maxval=0.5, seed=self.seeds)
                return x + ops.stop_gradient(noise * step)

        return QuantNoise(name="int8_noise")


def _teacher(
    head: Any, tail: Any, x_train: np.ndarray, x_val: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The unmodified model's boundary tensors and probabilities on both splits (the targets)."""
    b_train, b_val = (
        _predict(lambda b, training: head(b, training=training)["boundary"], x)
        for x in (x_train, x_val)
    )
    p_train, p_val = (
        _predict(lambda z, training: tail(z, training=training)["probs"], b)
        for b in (b_train, b_val)
    )
    return b_train, b_val, p_train, p_val


def _predict(model: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    parts = [np.asarray(model(x[i : i + batch], training=False)) for i in range(0, len(x), batch)]
    return np.concatenate(parts).astype(np.float32)


def train_bottleneck(
    head: Any,
    tail: Any,
    cut_point: str,
    shape: BottleneckShape,
    x_train: np.ndarray,
    x_val: np.ndarray,
    *,
    epochs: int = 8,
    batch_size: int = 64,
    seed: int = 0,
    learning_rate: float = 2e-3,
) -> TrainedBottleneck:
    """Train one encoder/decoder pair by distillation with ``head`` and ``tail`` frozen.

    Args:
        head: Keras model, input -> ``{"boundary": B}`` (the unmodified edge part).
        tail: Keras model, boundary -> ``{"probs": P}`` (the unmodified cloud part).
        cut_point: the split's name (recorded).
        shape: channels and stride.
        x_train: training inputs (targets are the unmodified model's outputs on them).
        x_val: validation inputs for early stopping.
        epochs: most epochs (early stopping on the validation loss, patience 3).
        batch_size: samples per step.
        seed: random seed.
        learning_rate: Adam's.
    """
    k = keras()
    start = time.perf_counter()
    k.utils.set_random_seed(seed + 7)

    b_train, b_val, p_train, p_val = _teacher(head, tail, x_train, x_val)
    boundary_shape = tuple(int(d) for d in b_train.shape[1:])
    encoder, decoder = build_pair(boundary_shape, shape, bool(np.min(b_train) >= 0.0))
    was_trainable = [layer.trainable for layer in tail.layers]
    for layer in tail.layers:
        layer.trainable = False
    try:
        b_in = k.Input(boundary_shape, name="teacher_boundary")
        restored = decoder(_QuantNoise.layer()(encoder(b_in)))
        probs = tail(restored)["probs"]
        student = k.Model(b_in, {"restored": restored, "probs": probs}, name="bottleneck_student")
        power = float(np.mean(np.square(b_train))) or 1.0
        student.compile(
            optimizer=k.optimizers.Adam(learning_rate),
            loss={"restored": "mse", "probs": k.losses.KLDivergence()},
            loss_weights={"restored": 1.0 / power, "probs": 1.0},
        )
        stop = k.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
        history = student.fit(
            b_train,
            {"restored": b_train, "probs": p_train},
            validation_data=(b_val, {"restored": b_val, "probs": p_val}),
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[stop],
        )
    finally:
        for layer, flag in zip(tail.layers, was_trainable, strict=True):
            layer.trainable = flag
    code_shape = tuple(int(d) for d in encoder.outputs[0].shape[1:])
    record = {key: [float(v) for v in values] for key, values in history.history.items()}
    return TrainedBottleneck(
        shape,
        cut_point,
        encoder,
        decoder,
        boundary_shape,
        code_shape,
        record,
        time.perf_counter() - start,
    )


def finetune_cloud(
    head: Any,
    tail: Any,
    pair: TrainedBottleneck,
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    seed: int = 0,
    learning_rate: float = 1e-4,
) -> TrainedBottleneck:
    """Fine-tune the decoder and the cloud part (``tail``) on the code, encoder frozen.

    The second stage of BottleFit-style training: after :func:`train_bottleneck` (backbone
    frozen), the decoder and the tail's layers train on the training split through the frozen
    encoder and the int8 noise, on cross-entropy with the labels plus the KL divergence from the
    unmodified model's probabilities (BatchNormalization stays in inference mode), at a small
    learning rate, with early stopping on the validation loss (best weights restored).

    ``tail`` shares its layers with the backbone: its weights are restored before returning,
    so the backbone stays the unmodified model; the tuned weights are returned in
    ``tail_weights`` (apply them with ``tail.set_weights`` only if this pair is used). The
    decoder in the returned pair is the fine-tuned one; ``pair`` itself is unchanged.
    """
    k = keras()
    ops = k.ops
    start = time.perf_counter()
    k.utils.set_random_seed(seed + 11)

    b_train, b_val, p_train, p_val = _teacher(head, tail, x_train, x_val)
    classes = p_train.shape[-1]

    def targets(y: np.ndarray, p: np.ndarray) -> np.ndarray:
        onehot = np.eye(classes, dtype=np.float32)[np.asarray(y).reshape(-1).astype(int)]
        return np.concatenate([onehot, p], axis=1)

    def loss(target: Any, pred: Any) -> Any:  # cross-entropy on labels + KL to the teacher
        onehot, teacher = target[:, :classes], target[:, classes:]
        log_pred = ops.log(ops.clip(pred, 1e-7, 1.0))
        cross_entropy = -ops.sum(onehot * log_pred, axis=-1)
        kl = ops.sum(teacher * (ops.log(ops.clip(teacher, 1e-7, 1.0)) - log_pred), axis=-1)
        return cross_entropy + kl

    decoder = k.models.clone_model(pair.decoder)
    decoder.set_weights(pair.decoder.get_weights())
    original = tail.get_weights()
    flags = [(m, m.trainable) for m in [pair.encoder, *tail.layers, *pair.encoder.layers]]
    try:
        pair.encoder.trainable = False
        for layer in tail.layers:
            layer.trainable = not isinstance(layer, k.layers.BatchNormalization)
        b_in = k.Input(tuple(pair.boundary_shape), name="finetune_boundary")
        probs = tail(decoder(_QuantNoise.layer()(pair.encoder(b_in))))["probs"]
        student = k.Model(b_in, probs, name="bottleneck_finetune")
        student.compile(optimizer=k.optimizers.Adam(learning_rate), loss=loss)
        stop = k.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
        history = student.fit(
            b_train,
            targets(y_train, p_train),
            validation_data=(b_val, targets(y_val, p_val)),
            epochs=epochs,
            batch_size=batch_size,
            shuffle=True,
            verbose=0,
            callbacks=[stop],
        )
        tuned = tail.get_weights()
    finally:
        for layer, flag in flags:
            layer.trainable = flag
        tail.set_weights(original)
    record = {key: [float(v) for v in values] for key, values in history.history.items()}
    seconds = time.perf_counter() - start
    return replace(
        pair,
        decoder=decoder,
        tail_weights=tuned,
        finetune={
            "epochs": len(record.get("loss", [])),
            "best_val_loss": round(min(record.get("val_loss", [float("nan")])), 6),
            "learning_rate": learning_rate,
            "seconds": round(seconds, 2),
            "loss": "cross-entropy (labels) + KL (unmodified probabilities)",
        },
        seconds=pair.seconds + seconds,
    )


def host_ms(model: Any, sample: np.ndarray, repeats: int = 30) -> float:
    """Median batch-1 latency (ms) of ``model`` converted to LiteRT, on this host."""
    from ai_edge_litert.interpreter import Interpreter

    from edgelesspart.model.litert import to_tflite

    wrapped = keras().Model(model.inputs[0], {"y": model.outputs[0]})
    runner = Interpreter(model_content=to_tflite(wrapped)).get_signature_runner("serving_default")
    x = np.ascontiguousarray(sample[:1], dtype=np.float32)
    runner(x=x)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner(x=x)
        times.append(time.perf_counter() - t0)
    return round(float(np.median(times)) * 1000.0, 4)


__all__ = [
    "AUTO",
    "AUTO_CANDIDATES",
    "NONE",
    "BottleneckShape",
    "TrainedBottleneck",
    "build_pair",
    "candidate_shapes",
    "finetune_cloud",
    "host_ms",
    "parse_bottleneck",
    "train_bottleneck",
]
