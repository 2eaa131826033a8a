"""The model zoo and user models: where the backbone that EdgeLessPart splits comes from.

A model is either a zoo name (:data:`ZOO_MODELS`) built here with random weights for the
dataset's input shape, or a user's ``.keras`` file loaded with ``safe_mode=True``. Every zoo model
is a *flat* functional model (no nested sub-model layers), because the graph module cuts it at
tensors. Keras is imported lazily inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgelesspart._lazy import keras as _keras
from edgelesspart.errors import ModelError

ZOO_MODELS = ("small_cnn", "resnet50", "mobilenetv2", "inceptionv3")

#: Smallest height/width each zoo model accepts (InceptionV3 resizes up to 75 itself).
MIN_INPUT_SIZE = {"small_cnn": 8, "resnet50": 32, "mobilenetv2": 32, "inceptionv3": 1}

#: Width multipliers Keras defines for MobileNetV2 (``alpha``).
MOBILENET_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)

INCEPTION_MIN_SIZE = 75


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int = 0,
    width: float = 1.0,
) -> Any:
    """Build a zoo model with random weights, sized for the dataset input.

    Args:
        name: one of :data:`ZOO_MODELS`.
        input_shape: ``(height, width, channels)`` of the dataset images.
        num_classes: number of output classes (softmax head).
        seed: seeds Keras, NumPy and Python so the same call builds the same weights.
        width: MobileNetV2's ``alpha`` (one of :data:`MOBILENET_WIDTHS`); ignored by the others.

    Returns:
        A flat functional ``keras.Model`` whose input is ``input_shape`` and whose output is
        ``(None, num_classes)`` probabilities.

    Raises:
        ModelError: unknown name, bad shape, too-small input or unsupported width.
    """
    if name not in ZOO_MODELS:
        raise ModelError(
            f"Unknown zoo model {name!r}. Zoo models: {', '.join(ZOO_MODELS)}; "
            "or pass the path to a .keras file."
        )
    shape = _check_shape(name, input_shape)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ModelError(f"num_classes must be an integer >= 2, got {num_classes!r}.")
    if name == "mobilenetv2" and width not in MOBILENET_WIDTHS:
        raise ModelError(
            f"Unsupported MobileNetV2 width {width!r}. "
            f"Use one of {', '.join(str(w) for w in MOBILENET_WIDTHS)}."
        )
    keras = _keras()
    keras.utils.set_random_seed(seed)
    builders = {
        "small_cnn": _small_cnn,
        "resnet50": _resnet50,
        "mobilenetv2": _mobilenetv2,
        "inceptionv3": _inceptionv3,
    }
    try:
        return builders[name](keras, shape, num_classes, width)
    except ValueError as exc:
        raise ModelError(
            f"Keras could not build {name!r} for input shape {shape} and "
            f"{num_classes} classes: {exc}"
        ) from exc


def _check_shape(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError) as exc:
        raise ModelError(
            f"input_shape must be (height, width, channels) integers, got {input_shape!r}."
        ) from exc
    if len(shape) != 3 or min(shape) < 1:
        raise ModelError(
            f"input_shape must be (height, width, channels) with positive sizes, got "
            f"{input_shape!r}."
        )
    minimum = MIN_INPUT_SIZE[name]
    if min(shape[:2]) < minimum:
        raise ModelError(
            f"Input {shape[0]}x{shape[1]} is too small for {name!r}: it needs at least "
            f"{minimum}x{minimum}. Resize the dataset (e.g. load_dataset(..., image_size="
            f"{max(minimum, 32)})) or pick another zoo model."
        )
    return shape  # type: ignore[return-value]


def _small_cnn(keras: Any, shape: tuple[int, int, int], num_classes: int, _width: float) -> Any:
    """Three conv blocks (the first with a residual ``Add``), GAP, softmax; ~115k params."""
    layers = keras.layers

    # momentum 0.9: BN moving statistics settle within a few epochs of a small dataset.
    def conv_bn(x: Any, filters: int, prefix: str, relu: bool = True) -> Any:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{prefix}_bn")(x)
        return layers.ReLU(name=f"{prefix}_relu")(x) if relu else x

    inputs = keras.Input(shape=shape, name="input")
    stem = conv_bn(inputs, 32, "stem")
    x = conv_bn(stem, 32, "block1a")
    x = conv_bn(x, 32, "block1b", relu=False)
    x = layers.Add(name="block1_add")([stem, x])
    x = layers.ReLU(name="block1_relu")(x)
    x = layers.MaxPooling2D(2, name="block1_pool")(x)
    x = conv_bn(x, 64, "block2")
    x = layers.MaxPooling2D(2, name="block2_pool")(x)
    x = conv_bn(x, 128, "block3")
    x = layers.MaxPooling2D(2, name="block3_pool")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="small_cnn")


def _resnet50(keras: Any, shape: tuple[int, int, int], num_classes: int, _width: float) -> Any:
    inputs = keras.Input(shape=shape, name="input")
    app = keras.applications.ResNet50(
        include_top=True,
        weights=None,
        input_tensor=inputs,
        input_shape=shape,
        classes=num_classes,
        name="resnet50",
    )
    return _rewrap(keras, inputs, app)


def _mobilenetv2(keras: Any, shape: tuple[int, int, int], num_classes: int, width: float) -> Any:
    inputs = keras.Input(shape=shape, name="input")
    app = keras.applications.MobileNetV2(
        include_top=True,
        weights=None,
        input_tensor=inputs,
        input_shape=shape,
        alpha=width,
        classes=num_classes,
        name="mobilenetv2",
    )
    return _rewrap(keras, inputs, app)


def _inceptionv3(keras: Any, shape: tuple[int, int, int], num_classes: int, _width: float) -> Any:
    """InceptionV3 behind a ``Resizing`` layer so inputs under 75x75 still work."""
    inputs = keras.Input(shape=shape, name="input")
    height = max(INCEPTION_MIN_SIZE, shape[0])
    width = max(INCEPTION_MIN_SIZE, shape[1])
    x = inputs
    if (height, width) != shape[:2]:
        x = keras.layers.Resizing(height, width, interpolation="bilinear", name="resize")(inputs)
    app = keras.applications.InceptionV3(
        include_top=True,
        weights=None,
        input_tensor=x,
        input_shape=(height, width, shape[2]),
        classes=num_classes,
        name="inceptionv3",
    )
    return _rewrap(keras, inputs, app)


def _rewrap(keras: Any, inputs: Any, app: Any) -> Any:
    """Same layers, but a single-tensor input (applications take a one-element input list)."""
    return keras.Model(inputs, app.outputs[0], name=app.name)


def load_user_model(path: str | Path) -> Any:
    """Load a user's ``.keras`` model with ``safe_mode=True`` and without compiling it.

    Raises:
        ModelError: the file is missing, is not a ``.keras`` file, or cannot be loaded.
    """
    model_path = Path(path).expanduser()
    if model_path.suffix.lower() != ".keras":
        raise ModelError(
            f"Unsupported model file {str(path)!r}: only the Keras 3 '.keras' format is "
            f"accepted (got suffix {model_path.suffix or '(none)'!r}). Re-save it with "
            "model.save('model.keras'), or use a zoo model: " + ", ".join(ZOO_MODELS) + "."
        )
    if not model_path.is_file():
        raise ModelError(
            f"Model file not found: {str(model_path)!r}. Check the path, or use a zoo model: "
            + ", ".join(ZOO_MODELS)
            + "."
        )
    keras = _keras()
    try:
        return keras.saving.load_model(model_path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises many types for a bad or unsafe file
        raise ModelError(
            f"Could not load {str(model_path)!r}: {type(exc).__name__}: {exc}. The file must "
            "be a .keras archive saved by Keras 3 (model.save('model.keras')); safe mode "
            "refuses Lambda layers and arbitrary code, and custom layers must be registered "
            "with @keras.saving.register_keras_serializable before loading."
        ) from exc


def resolve_model(
    spec: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    seed: int = 0,
) -> tuple[Any, dict[str, Any]]:
    """Turn a zoo name or a ``.keras`` path into a model plus a JSON-ready description.

    Args:
        spec: a zoo name (:data:`ZOO_MODELS`) or the path to a ``.keras`` file.
        input_shape: the dataset's ``(height, width, channels)``.
        num_classes: the dataset's number of classes.
        seed: seed for zoo models.

    Returns:
        ``(model, info)`` with ``info = {"name", "source": "zoo" | "file", "params", "path"?}``.

    Raises:
        ModelError: unknown spec, unloadable file, or a file model whose input/output shape
            does not match the dataset.
    """
    if spec in ZOO_MODELS:
        model = build_model(spec, input_shape, num_classes, seed=seed)
        return model, {"name": spec, "source": "zoo", "params": int(model.count_params())}
    path = Path(spec).expanduser()
    if path.suffix.lower() != ".keras" and not path.exists():
        raise ModelError(
            f"Unknown model {spec!r}. Expected a zoo model ({', '.join(ZOO_MODELS)}) or the "
            "path to a .keras file."
        )
    model = load_user_model(path)
    _check_compatible(model, path, input_shape, num_classes)
    info = {
        "name": model.name,
        "source": "file",
        "params": int(model.count_params()),
        "path": str(path.resolve()),
    }
    return model, info


def _check_compatible(
    model: Any, path: Path, input_shape: tuple[int, ...], num_classes: int
) -> None:
    """Fail early when a user model cannot consume the dataset or predict its classes."""
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"Model {str(path)!r} has {len(model.inputs)} inputs and {len(model.outputs)} "
            "outputs; EdgeLessPart needs exactly one image input and one class output."
        )
    expected = tuple(int(d) for d in input_shape)
    got = tuple(model.inputs[0].shape[1:])
    if len(got) != len(expected) or any(g is not None and g != e for g, e in zip(got, expected)):
        raise ModelError(
            f"Model {str(path)!r} expects input shape {got}, but the dataset gives {expected}. "
            "Load the dataset with a matching image_size, or re-save the model for this input."
        )
    classes = model.outputs[0].shape[-1]
    if classes is not None and classes != num_classes:
        raise ModelError(
            f"Model {str(path)!r} predicts {classes} classes, but the dataset has "
            f"{num_classes}. Use a model with a {num_classes}-way output."
        )
