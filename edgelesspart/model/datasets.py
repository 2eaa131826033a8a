"""Datasets: real images, split with a seed, in the model's input range.

Sources (the ``spec`` of :func:`load_dataset`):

* ``digits`` (default) - scikit-learn's bundled 1,797 real 8x8 handwritten digits, upscaled
  (bilinear) to 32x32 RGB; works offline.
* ``digits-hard`` - the same digits rendered MNIST-M style (colour, natural-image
  backgrounds, affine jitter, clutter, occlusion, blur, noise), three renderings per digit, split
  by source digit; offline, deterministic and cached (:mod:`edgelesspart.model.hard_digits`).
* ``cifar10`` - Keras' CIFAR-10 loader, only from the Keras cache or when the download host
  answers within a few seconds; otherwise a :class:`DatasetError` says how to provide the file.
* a path to an ``.npz`` with ``x_train, y_train, x_test, y_test`` (and optional ``classes``),
  read with ``allow_pickle=False``.
* a path to an image folder with one subfolder of PNG/JPEG files per class.

Every :class:`Dataset` carries its ``preprocessing`` recipe (resize, channels, ``x*scale+offset``)
so the runtime can turn a raw 0-255 image into the same input the model was trained on.
"""

from __future__ import annotations

import os
import socket
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart._lazy import BUILD_HINT, optional
from edgelesspart._lazy import keras as _keras
from edgelesspart.errors import DatasetError

DATASETS = ("digits", "digits-hard", "cifar10")
CIFAR10_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
#: File names under ``<KERAS_HOME>/datasets`` that Keras 3 (and older Keras) reuse offline.
CIFAR10_CACHE_NAMES = ("cifar-10-batches-py-target_archive", "cifar-10-batches-py.tar.gz")
NETWORK_PROBE_TIMEOUT_S = 3.0
DOWNLOAD_SOCKET_TIMEOUT_S = 15.0
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_IMAGE_SIZE = 32
SCALE = 1.0 / 255.0
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A dataset split into train/validation/test, ready to feed a model.

    Attributes:
        name: ``digits``, ``cifar10``, or the file/folder name.
        x_train, x_val, x_test: float32 NHWC images in the model's input range ([0, 1]).
        y_train, y_val, y_test: int64 class indices.
        classes: class names; ``classes[i]`` is the name of label ``i``.
        preprocessing: how a 0-255 image of any size becomes a model input: resize to
            ``height`` x ``width`` (bilinear), convert to ``channels`` (1 = grayscale,
            3 = RGB), then ``x * scale + offset``.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    preprocessing: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one model input."""
        return tuple(int(d) for d in self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)


def load_dataset(
    spec: str = "digits",
    *,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    image_size: int | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load a dataset by name or path and split it with ``seed``.

    Args:
        spec: ``digits``, ``digits-hard``, ``cifar10``, or the path to an ``.npz`` file or
            an image folder.
        seed: seed of the (stratified) split; same seed, same split.
        val_fraction: share of the training data held out for validation.
        test_fraction: share held out for testing (digits and folders; CIFAR-10 and ``.npz``
            files bring their own test split).
        image_size: side of the square model input; default 32 for digits and folders,
            the stored size for CIFAR-10 and ``.npz``.
        limit: at most this many samples per split (quick runs and tests).

    Raises:
        DatasetError: unknown spec, unreadable or malformed data, offline CIFAR-10.
    """
    _check_options(val_fraction, test_fraction, image_size, limit)
    rng = np.random.default_rng(seed)
    if spec == "digits":
        return _load_digits(rng, val_fraction, test_fraction, image_size, limit)
    if spec == "digits-hard":
        return _load_hard_digits(rng, val_fraction, test_fraction, image_size, limit)
    if spec == "cifar10":
        return _load_cifar10(rng, val_fraction, image_size, limit)
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, rng, val_fraction, test_fraction, image_size, limit)
    if path.suffix.lower() == ".npz":
        return _load_npz(path, rng, val_fraction, image_size, limit)
    raise DatasetError(
        f"Unknown dataset {spec!r}. Expected one of: {', '.join(DATASETS)}, the path to an .npz "
        "file with x_train, y_train, x_test, y_test, or an image folder with one subfolder of "
        "PNG/JPEG images per class."
    )


def _check_options(
    val_fraction: float, test_fraction: float, image_size: int | None, limit: int | None
) -> None:
    for label, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= value < 1.0:
            raise DatasetError(f"{label} must be in [0, 1), got {value!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise DatasetError(
            f"val_fraction + test_fraction must be < 1 to leave training data, got "
            f"{val_fraction} + {test_fraction}."
        )
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise DatasetError(f"image_size must be a positive integer or None, got {image_size!r}.")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise DatasetError(f"limit must be a positive integer or None, got {limit!r}.")


# --- splitting and assembly ---------------------------------------------------------------


def _stratified_split(
    labels: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Return index arrays ``[rest, part_1, ...]``, each class shared out by ``fractions``."""
    groups: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        counts = [int(round(len(members) * f)) for f in fractions]
        for i, fraction in enumerate(fractions):
            if fraction > 0 and counts[i] == 0 and len(members) - sum(counts) > 1:
                counts[i] = 1
        if len(members) - sum(counts) < 1:
            raise DatasetError(
                f"Class {int(label)} has only {len(members)} sample(s): too few to split into "
                "train/validation/test. Add samples or lower val_fraction/test_fraction."
            )
        start = len(members) - sum(counts)
        groups[0].append(members[:start])
        for i, count in enumerate(counts):
            groups[i + 1].append(members[start : start + count])
            start += count
    return [rng.permutation(np.concatenate(g)) for g in groups]


def _assemble(
    name: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    classes: tuple[str, ...],
    image_size: int | None,
    limit: int | None,
) -> Dataset:
    """Cap each split, resize, scale to [0, 1] float32 and record the preprocessing."""
    arrays: dict[str, np.ndarray] = {}
    for split, (x, y) in splits.items():
        x, y = x[:limit], y[:limit]
        if image_size is not None and x.shape[1:3] != (image_size, image_size):
            x = _resize_batch(x, image_size)
        arrays[f"x_{split}"] = _to_unit_float(x)
        arrays[f"y_{split}"] = np.asarray(y, dtype=np.int64)
    height, width, channels = arrays["x_train"].shape[1:]
    preprocessing = {
        "height": int(height),
        "width": int(width),
        "channels": int(channels),
        "scale": SCALE,
        "offset": 0.0,
    }
    return Dataset(name=name, classes=classes, preprocessing=preprocessing, **arrays)


def _to_unit_float(x: np.ndarray) -> np.ndarray:
    """uint8 0-255 -> [0, 1]; floats are already in [0, 1] (checked when loading)."""
    if np.issubdtype(x.dtype, np.integer):
        return (x.astype(np.float32) * np.float32(SCALE)).astype(np.float32)
    return x.astype(np.float32)


def _resize_batch(x: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of an NHWC batch (uint8 or float) with Pillow, keeping the dtype."""
    image_module = optional("PIL.Image", "pip install pillow")
    bilinear = image_module.Resampling.BILINEAR
    out = np.empty((len(x), size, size, x.shape[-1]), dtype=x.dtype)
    for i, image in enumerate(x):
        for c in range(x.shape[-1]):
            plane = image[..., c] if x.dtype == np.uint8 else image[..., c].astype(np.float32)
            resized = image_module.fromarray(plane).resize((size, size), bilinear)
            out[i, ..., c] = np.asarray(resized)
    return out


# --- digits --------------------------------------------------------------------------------


def _load_digits(
    rng: np.random.Generator,
    val_fraction: float,
    test_fraction: float,
    image_size: int | None,
    limit: int | None,
) -> Dataset:
    sk_datasets = optional("sklearn.datasets", BUILD_HINT)
    digits = sk_datasets.load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)[..., None]
    images = _resize_batch(images, image_size or DEFAULT_IMAGE_SIZE)
    images = np.repeat(images, 3, axis=-1)
    labels = np.asarray(digits.target, dtype=np.int64)
    train, val, test = _stratified_split(labels, (val_fraction, test_fraction), rng)
    splits = {
        "train": (images[train], labels[train]),
        "val": (images[val], labels[val]),
        "test": (images[test], labels[test]),
    }
    classes = tuple(str(c) for c in digits.target_names)
    return _assemble("digits", splits, classes, None, limit)


def _load_hard_digits(
    rng: np.random.Generator,
    val_fraction: float,
    test_fraction: float,
    image_size: int | None,
    limit: int | None,
) -> Dataset:
    """``digits-hard``: split the *source* digits with ``rng``, then take all their renderings."""
    from edgelesspart.model import hard_digits

    images, labels, sources = hard_digits.load_rendered()
    source_labels = np.zeros(int(sources.max()) + 1, dtype=np.int64)
    source_labels[sources] = labels
    parts = _stratified_split(source_labels, (val_fraction, test_fraction), rng)
    splits = {}
    for split, chosen in zip(("train", "val", "test"), parts):
        rows = rng.permutation(np.flatnonzero(np.isin(sources, chosen)))
        splits[split] = (images[rows], labels[rows])
    classes = tuple(str(c) for c in range(10))
    return _assemble(hard_digits.NAME, splits, classes, image_size, limit)


# --- CIFAR-10 ------------------------------------------------------------------------------


def _keras_home() -> Path:
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser()


def _cifar_cached() -> bool:
    folder = _keras_home() / "datasets"
    return any((folder / name).is_file() for name in CIFAR10_CACHE_NAMES)


def _network_reachable(host: str, port: int, timeout: float) -> bool:
    """Whether ``host:port`` accepts a TCP connection within ``timeout`` (DNS included)."""
    reached: list[bool] = []

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                reached.append(True)
        except OSError:
            return

    thread = threading.Thread(target=probe, daemon=True, name="edgelesspart-net-probe")
    thread.start()
    thread.join(timeout)
    return bool(reached)


def _cifar_help(reason: str) -> str:
    folder = _keras_home() / "datasets"
    return (
        f"CIFAR-10 could not be loaded: {reason}. To use it offline, either (1) download "
        f"{CIFAR10_URL} on a machine with network and copy it to "
        f"{folder / CIFAR10_CACHE_NAMES[0]} (the name Keras caches it under; set KERAS_HOME "
        "to use another cache folder), or (2) convert it to an .npz with uint8 NHWC arrays "
        "x_train, x_test and integer labels y_train, y_test, and pass that .npz path as the "
        "dataset. The bundled 'digits' dataset works offline."
    )


def _load_cifar10(
    rng: np.random.Generator, val_fraction: float, image_size: int | None, limit: int | None
) -> Dataset:
    keras = _keras()
    host = CIFAR10_URL.split("/")[2]
    if not _cifar_cached() and not _network_reachable(host, 443, NETWORK_PROBE_TIMEOUT_S):
        raise DatasetError(
            _cifar_help(f"it is not in the Keras cache and {host} cannot be reached")
        )
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_SOCKET_TIMEOUT_S)
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # network, hash and archive errors come in many types
        raise DatasetError(_cifar_help(f"{type(exc).__name__}: {exc}")) from exc
    finally:
        socket.setdefaulttimeout(previous)
    y_train, y_test = np.ravel(y_train), np.ravel(y_test)
    train, val = _stratified_split(y_train, (val_fraction,), rng)
    splits = {
        "train": (x_train[train], y_train[train]),
        "val": (x_train[val], y_train[val]),
        "test": (x_test, y_test),
    }
    return _assemble("cifar10", splits, CIFAR10_CLASSES, image_size, limit)


# --- .npz ----------------------------------------------------------------------------------


def _load_npz(
    path: Path,
    rng: np.random.Generator,
    val_fraction: float,
    image_size: int | None,
    limit: int | None,
) -> Dataset:
    arrays = _read_npz(path)
    x_train = _npz_images(arrays["x_train"], "x_train", path)
    x_test = _npz_images(arrays["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DatasetError(
            f"{path}: x_train images are {x_train.shape[1:]} but x_test images are "
            f"{x_test.shape[1:]}; both splits need the same image shape."
        )
    y_train = _npz_labels(arrays["y_train"], "y_train", len(x_train), path)
    y_test = _npz_labels(arrays["y_test"], "y_test", len(x_test), path)
    classes = _npz_classes(arrays.get("classes"), int(max(y_train.max(), y_test.max())), path)
    train, val = _stratified_split(y_train, (val_fraction,), rng)
    splits = {
        "train": (x_train[train], y_train[train]),
        "val": (x_train[val], y_train[val]),
        "test": (x_test, y_test),
    }
    return _assemble(path.stem, splits, classes, image_size, limit)


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DatasetError(f"Dataset file not found: {str(path)!r}. Check the path.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (ValueError, OSError, zipfile.BadZipFile) as exc:
        raise DatasetError(
            f"Could not read {path} as an .npz without pickle ({exc}). Save plain numeric "
            "arrays (and a string array for classes) with np.savez; object arrays are refused."
        ) from exc
    missing = [key for key in NPZ_KEYS if key not in arrays]
    if missing:
        raise DatasetError(
            f"{path} lacks {', '.join(missing)} (it has: {', '.join(arrays) or 'nothing'}). "
            f"An .npz dataset needs {', '.join(NPZ_KEYS)} and optionally classes."
        )
    return arrays


def _npz_images(x: np.ndarray, key: str, path: Path) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[-1] not in (1, 3) or len(x) == 0:
        raise DatasetError(
            f"{path}: {key} has shape {x.shape}; expected non-empty (N, H, W) grayscale or "
            "(N, H, W, 1|3) images."
        )
    if x.dtype == np.uint8:
        return x
    if np.issubdtype(x.dtype, np.integer):
        if x.min() < 0 or x.max() > 255:
            raise DatasetError(f"{path}: integer {key} must hold 0-255 pixel values.")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all() or x.min() < 0.0 or x.max() > 1.0:
            raise DatasetError(
                f"{path}: float {key} must be in [0, 1] (got [{x.min()}, {x.max()}]). "
                "Store uint8 0-255 images, or divide by 255 before saving."
            )
        return x.astype(np.float32)
    raise DatasetError(f"{path}: {key} has dtype {x.dtype}; expected uint8 or float images.")


def _npz_labels(y: np.ndarray, key: str, count: int, path: Path) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != count:
        raise DatasetError(
            f"{path}: {key} has shape {y.shape} but there are {count} images; expected one "
            "integer label per image, shape (N,) or (N, 1)."
        )
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise DatasetError(
            f"{path}: {key} must hold non-negative integer class indices (dtype {y.dtype})."
        )
    return y.astype(np.int64)


def _npz_classes(names: np.ndarray | None, max_label: int, path: Path) -> tuple[str, ...]:
    if names is None:
        return tuple(str(i) for i in range(max_label + 1))
    if names.ndim != 1 or names.dtype.kind not in "US" or len(names) <= max_label:
        raise DatasetError(
            f"{path}: classes must be a 1-D string array with at least {max_label + 1} names "
            f"(got shape {names.shape}, dtype {names.dtype})."
        )
    return tuple(str(n.decode() if isinstance(n, bytes) else n) for n in names)


# --- image folder --------------------------------------------------------------------------


def _load_folder(
    root: Path,
    rng: np.random.Generator,
    val_fraction: float,
    test_fraction: float,
    image_size: int | None,
    limit: int | None,
) -> Dataset:
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(class_dirs) < 2:
        raise DatasetError(
            f"Image folder {root} has {len(class_dirs)} class subfolder(s); expected one "
            "subfolder per class (at least 2), each holding PNG/JPEG images."
        )
    size = image_size or DEFAULT_IMAGE_SIZE
    images: list[np.ndarray] = []
    labels: list[int] = []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"Class folder {class_dir} holds no .png/.jpg/.jpeg images.")
        images.extend(_read_image(f, size) for f in files)
        labels.extend([label] * len(files))
    x = np.stack(images)
    y = np.asarray(labels, dtype=np.int64)
    train, val, test = _stratified_split(y, (val_fraction, test_fraction), rng)
    splits = {
        "train": (x[train], y[train]),
        "val": (x[val], y[val]),
        "test": (x[test], y[test]),
    }
    return _assemble(root.name, splits, tuple(p.name for p in class_dirs), None, limit)


def _read_image(path: Path, size: int) -> np.ndarray:
    image_module = optional("PIL.Image", "pip install pillow")
    try:
        with image_module.open(path) as image:
            rgb = image.convert("RGB").resize((size, size), image_module.Resampling.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except (OSError, ValueError, image_module.DecompressionBombError) as exc:
        raise DatasetError(f"Could not read image {path}: {exc}. Use PNG or JPEG files.") from exc
