"""Request bodies for a replay: an image folder or an ``.npz`` as PNG/JPEG bytes (TF-free).

:func:`load_replay_data` reads an image folder (one subfolder per class, or flat and
unlabelled) or an ``.npz`` (``x_test``/``y_test`` or ``x``/``y``, never pickled) and encodes every
array sample as a PNG with :func:`array_to_png`, as a camera client would send it. Used by
:mod:`edgelesspart.replay.client` and by ``experiments/demo_serve.py`` to export a test split.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelesspart.errors import ConfigError, DatasetError

IMAGE_SUFFIXES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg"}
NPZ_KEYS = (("x_test", "y_test"), ("x", "y"))


@dataclass(frozen=True)
class ReplayData:
    """Encoded images to post, with their labels when known.

    Attributes:
        images: one PNG/JPEG body per sample.
        media_types: the Content-Type of each body.
        labels: class index per sample, or ``None`` (unlabelled data).
        names: a name per sample (file path or ``npz[index]``), for error messages.
        source: where the data came from.
    """

    images: tuple[bytes, ...]
    media_types: tuple[str, ...]
    labels: tuple[int, ...] | None
    names: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return len(self.images)


def array_to_png(image: np.ndarray) -> bytes:
    """Encode one ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3)`` image as PNG bytes.

    Floats within [0, 1] are scaled by 255 (the bundles' preprocessing maps pixels back with
    ``scale=1/255``); other values are clipped to 0..255.
    """
    from PIL import Image

    x = np.asarray(image)
    if x.ndim == 3 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim not in (2, 3) or (x.ndim == 3 and x.shape[-1] != 3):
        raise DatasetError(
            f"Expected images of shape (H, W), (H, W, 1) or (H, W, 3), got {x.shape}."
        )
    if x.dtype.kind == "f" and np.nanmax(x) <= 1.0 + 1e-6:
        x = x * 255.0
    pixels = np.clip(np.rint(np.nan_to_num(x.astype(np.float64))), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _npz_arrays(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    try:
        with np.load(path, allow_pickle=False) as data:
            for x_key, y_key in NPZ_KEYS:
                if x_key in data.files:
                    y = np.asarray(data[y_key]) if y_key in data.files else None
                    return np.asarray(data[x_key]), y
            keys = sorted(data.files)
    except (OSError, ValueError) as exc:
        raise DatasetError(f"Cannot read {path} as an .npz without pickle: {exc}.") from exc
    raise DatasetError(f"{path} holds {keys}; expected x_test,y_test or x,y arrays.")


def _labels_from_array(y: np.ndarray | None, n: int, source: str) -> tuple[int, ...] | None:
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] > 1:  # one-hot
        y = np.argmax(y, axis=1)
    y = y.reshape(-1)
    if len(y) != n or y.dtype.kind not in "iuf":
        raise DatasetError(f"{source}: expected {n} integer labels, got shape {y.shape} {y.dtype}.")
    return tuple(int(v) for v in y)


def _load_npz(path: Path, limit: int | None) -> ReplayData:
    x, y = _npz_arrays(path)
    if x.ndim not in (3, 4) or len(x) == 0:
        raise DatasetError(f"{path}: expected a batch of images (N, H, W[, C]), got {x.shape}.")
    labels = _labels_from_array(y, len(x), str(path))
    n = len(x) if limit is None else min(len(x), limit)
    return ReplayData(
        images=tuple(array_to_png(x[i]) for i in range(n)),
        media_types=("image/png",) * n,
        labels=None if labels is None else labels[:n],
        names=tuple(f"{path.name}[{i}]" for i in range(n)),
        source=str(path),
    )


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _class_index(name: str, position: int, classes: tuple[str, ...] | None) -> int:
    """A subfolder's label: the bundle's class of that name, else its integer name, else order."""
    if classes and name in classes:
        return classes.index(name)
    return int(name) if name.isdigit() else position


def _load_folder(folder: Path, limit: int | None, classes: tuple[str, ...] | None) -> ReplayData:
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir())
    files: list[tuple[Path, int | None]] = []
    if subfolders:
        for position, sub in enumerate(subfolders):
            label = _class_index(sub.name, position, classes)
            files.extend((p, label) for p in _images_in(sub))
        files.sort(key=lambda item: (item[0].name, item[0].parent.name))
    else:
        files = [(p, None) for p in _images_in(folder)]
    if not files:
        raise DatasetError(
            f"{folder} holds no .png/.jpg images (flat, or one subfolder per class)."
        )
    files = files[:limit] if limit is not None else files
    return ReplayData(
        images=tuple(p.read_bytes() for p, _ in files),
        media_types=tuple(IMAGE_SUFFIXES[p.suffix.lower()] for p, _ in files),
        labels=tuple(int(lbl) for _, lbl in files) if subfolders else None,
        names=tuple(str(p) for p, _ in files),
        source=str(folder),
    )


def load_replay_data(
    path: str | Path, *, limit: int | None = None, classes: tuple[str, ...] | None = None
) -> ReplayData:
    """Read an image folder or an ``.npz`` as PNG/JPEG request bodies.

    Args:
        path: a folder (one subfolder per class, or flat) or an ``.npz`` file.
        limit: at most this many samples (the first ones, in a stable order).
        classes: the bundle's class names; subfolders named like them take their index.

    Raises:
        DatasetError: missing path, nothing to send, or unreadable/ill-shaped arrays.
    """
    path = Path(path)
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit must be >= 1, got {limit}.")
    if path.is_dir():
        return _load_folder(path, limit, classes)
    if path.is_file() and path.suffix.lower() == ".npz":
        return _load_npz(path, limit)
    if path.exists():
        raise DatasetError(f"{path} is neither a folder of images nor an .npz file.")
    raise DatasetError(f"{path} does not exist; give an image folder or an .npz file.")
