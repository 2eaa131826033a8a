"""The model zoo and user models: where the backbone that EdgeLessPart splits comes from.

A model is either a zoo name (:data:`ZOO_MODELS`) built here with random weights for the
dataset's input shape, or a user's ``.keras`` file loaded with ``safe_mode=True``. Every zoo model
is a *flat* functional model (no nested sub-model layers), because the graph module cuts it at
tensors. Keras is imported lazily inside the functions.
"""

from __future__ import annotations

import os
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

#: ``--weights`` values: random initialisation, or ImageNet weights (ResNet50, MobileNetV2)
WEIGHTS = ("none", "imagenet")
IMAGENET_MODELS = ("resnet50", "mobilenetv2")
#: the input sizes Keras publishes MobileNetV2 ImageNet weights for (others use 224's)
MOBILENET_ROWS = (96, 128, 160, 192, 224)
IMAGENET_PROBE_TIMEOUT_S = 3.0


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    seed: int = 0,
    width: float = 1.0,
    weights: str | None = None,
) -> Any:
    """Build a zoo model, sized for the dataset input, with random or ImageNet weights.

    Args:
        name: one of :data:`ZOO_MODELS`.
        input_shape: ``(height, width, channels)`` of the dataset images.
        num_classes: number of output classes (softmax head).
        seed: seeds Keras, NumPy and Python so the same call builds the same weights.
        width: MobileNetV2's ``alpha`` (one of :data:`MOBILENET_WIDTHS`); ignored by the others.
        weights: ``None``/``"none"`` (random) or ``"imagenet"`` (ResNet50 and MobileNetV2: the
            convolutional base loaded from the Keras cache, or downloaded when the network
            answers, under a fresh ``num_classes`` head; see :func:`imagenet_weights_file`).

    Returns:
        A flat functional ``keras.Model`` whose input is ``input_shape`` and whose output is
        ``(None, num_classes)`` probabilities.

    Raises:
        ModelError: unknown name, bad shape, too-small input, unsupported width, or ImageNet
            weights that are neither cached nor downloadable (the message names the file).
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
    weights = None if weights in (None, "none") else weights
    if weights is not None and (weights != "imagenet" or name not in IMAGENET_MODELS):
        raise ModelError(
            f"--weights {weights!r} is not available for {name!r}: 'imagenet' works for "
            f"{', '.join(IMAGENET_MODELS)}; other models start from random weights (none)."
        )
    keras = _keras()
    keras.utils.set_random_seed(seed)
    if weights == "imagenet":
        try:
            return _imagenet(keras, name, shape, num_classes, width)
        except ValueError as exc:
            raise ModelError(
                f"Keras could not build {name!r} with ImageNet weights for input shape "
                f"{shape}: {exc}"
            ) from exc
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


def imagenet_weights_file(name: str, shape: tuple[int, ...], width: float = 1.0) -> tuple:
    """``(cache path, file name, URL, sha256 or None)`` of a model's ImageNet base weights.

    The file is the one ``keras.applications`` itself downloads for ``include_top=False``, under
    ``$KERAS_HOME/models`` (default ``~/.keras/models``).
    """
    from keras.src.applications import mobilenet_v2, resnet

    if name == "resnet50":
        file_name = "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
        url = resnet.BASE_WEIGHTS_PATH + file_name
        sha = resnet.WEIGHTS_HASHES["resnet50"][1]
    elif name == "mobilenetv2":
        rows = shape[0] if shape[0] == shape[1] and shape[0] in MOBILENET_ROWS else 224
        file_name = (
            f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_{float(width)}_{rows}_no_top.h5"
        )
        url = mobilenet_v2.BASE_WEIGHT_PATH + file_name
        sha = None
    else:
        raise ModelError(f"No ImageNet weights for {name!r}; use one of {IMAGENET_MODELS}.")
    home = Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()
    return home / "models" / file_name, file_name, url, sha


def _imagenet_path(name: str, shape: tuple[int, ...], width: float) -> Path:
    """The cached ImageNet weights file, downloaded first when missing and the network answers."""
    from edgelesspart.model.datasets import _network_reachable

    path, file_name, url, sha = imagenet_weights_file(name, shape, width)
    if path.is_file():
        return path
    host = url.split("/")[2]
    if _network_reachable(host, 443, IMAGENET_PROBE_TIMEOUT_S):
        try:
            fetched = _keras().utils.get_file(
                file_name, url, cache_subdir="models", file_hash=sha, cache_dir=str(path.parents[1])
            )
            return Path(fetched)
        except Exception as exc:  # network and hash errors come in many types
            reason = f"downloading {url} failed ({type(exc).__name__}: {exc})"
    else:
        reason = f"it is not in the Keras cache and {host} cannot be reached"
    raise ModelError(
        f"ImageNet weights for {name!r} are not available: {reason}. Put the file {file_name} "
        f"at {path} (download {url} on a machine with network; set KERAS_HOME to use another "
        "cache folder), or build with --weights none to train from random weights."
    )


def _imagenet(
    keras: Any, name: str, shape: tuple[int, int, int], num_classes: int, width: float
) -> Any:
    """The ImageNet convolutional base (with its input scaling) under a fresh softmax head.

    Inputs stay in [0, 1]; a ``Rescaling`` layer maps them to the range the weights were
    trained on ([-1, 1] for MobileNetV2, 0-255 minus the mean pixel for ResNet50, channel order
    kept), so the bundle's preprocessing does not change.
    """
    path = _imagenet_path(name, shape, width)
    inputs = keras.Input(shape=shape, name="input")
    if name == "resnet50":
        x = keras.layers.Rescaling(255.0, offset=-116.8, name="imagenet_scale")(inputs)
        app = keras.applications.ResNet50(
            include_top=False, weights=None, input_tensor=x, input_shape=shape, pooling="avg",
            name="resnet50",
        )  # fmt: skip
    else:
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="imagenet_scale")(inputs)
        app = keras.applications.MobileNetV2(
            include_top=False, weights=None, input_tensor=x, input_shape=shape, alpha=width,
            pooling="avg", name="mobilenetv2",
        )  # fmt: skip
    try:
        app.load_weights(str(path))
    except Exception as exc:  # h5py and layer-count errors come in many types
        raise ModelError(
            f"{path} does not hold {name} ImageNet base weights for this architecture "
            f"({type(exc).__name__}: {exc}). Replace it with the Keras file of that name."
        ) from exc
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(
        app.outputs[0]
    )
    model = keras.Model(inputs, outputs, name=app.name)
    model._edgelesspart_pretrained = "imagenet"  # noqa: SLF001 - read by the build's trainer
    return model


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
    weights: str | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Turn a zoo name or a ``.keras`` path into a model plus a JSON-ready description.

    Args:
        spec: a zoo name (:data:`ZOO_MODELS`) or the path to a ``.keras`` file.
        input_shape: the dataset's ``(height, width, channels)``.
        num_classes: the dataset's number of classes.
        seed: seed for zoo models.
        weights: ``None``/``"none"`` or ``"imagenet"`` for zoo models (see :func:`build_model`).

    Returns:
        ``(model, info)`` with ``info = {"name", "source": "zoo" | "file", "params", "path"?}``.

    Raises:
        ModelError: unknown spec, unloadable file, or a file model whose input/output shape
            does not match the dataset.
    """
    if spec in ZOO_MODELS:
        model = build_model(spec, input_shape, num_classes, seed=seed, weights=weights)
        info = {"name": spec, "source": "zoo", "params": int(model.count_params())}
        info["weights"] = "imagenet" if weights == "imagenet" else "random"
        return model, info
    if weights not in (None, "none"):
        raise ModelError(f"--weights {weights} applies to zoo models only, not {spec!r}.")
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
