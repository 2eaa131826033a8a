"""Multi-view datasets: several input streams (views, one per camera/device) per sample.

* :func:`digits_views` derives views from the bundled real digits: each view is a different
  region (crop) of the 32x32 image with its own Gaussian noise level, so views carry different,
  overlapping evidence, like cameras at different angles with different sensors.
* :func:`load_npz_views` reads a user's ``.npz`` holding ``x_view0``, ``x_view1``, ... (one
  ``(N, H, W, C)`` array per view) and ``y`` (``N`` labels), read with ``allow_pickle=False``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgelesspart.errors import DatasetError

MAX_VIEWS = 8


@dataclass(frozen=True, eq=False)
class MultiViewData:
    """Views split into train/validation/test.

    Attributes:
        name: where the data came from.
        train, val, test: one float32 ``(N, H, W, C)`` array per view.
        y_train, y_val, y_test: int64 labels.
        num_classes: number of classes.
        regions: how each view was made (crop box and noise); a served image is cut the same
            way (without the noise, which emulates the sensors).
        preprocessing: how a 0-255 image becomes the full input the views are cut from.
        classes: class names (empty: numbered).
    """

    name: str
    train: tuple[np.ndarray, ...]
    val: tuple[np.ndarray, ...]
    test: tuple[np.ndarray, ...]
    y_train: np.ndarray
    y_val: np.ndarray
    y_test: np.ndarray
    num_classes: int
    regions: tuple[dict, ...] = ()
    preprocessing: dict = field(default_factory=dict)
    classes: tuple[str, ...] = ()

    @property
    def n_views(self) -> int:
        """Number of views."""
        return len(self.train)

    @property
    def view_shape(self) -> tuple[int, int, int]:
        """``(height, width, channels)`` of one view (all views share it)."""
        return tuple(int(d) for d in self.train[0].shape[1:])  # type: ignore[return-value]


def _check_views(n_views: int) -> None:
    if isinstance(n_views, bool) or not isinstance(n_views, int) or not 2 <= n_views <= MAX_VIEWS:
        raise DatasetError(f"n_views must be an integer in 2..{MAX_VIEWS}, got {n_views!r}.")


def view_regions(n_views: int, size: int = 32, crop: int = 20) -> list[tuple[int, int]]:
    """Top-left corners of ``n_views`` distinct ``crop``-sized regions spread over the image."""
    _check_views(n_views)
    span = size - crop
    corners = [(0, 0), (span, span), (0, span), (span, 0), (span // 2, 0), (span // 2, span),
               (0, span // 2), (span, span // 2)]  # fmt: skip
    return corners[:n_views]


def digits_views(
    n_views: int = 4,
    *,
    seed: int = 0,
    crop: int = 20,
    noise: tuple[float, ...] | None = None,
    val_fraction: float = 0.25,
    limit: int | None = None,
    dataset: str = "digits",
) -> MultiViewData:
    """Views of the bundled digits: distinct ``crop`` x ``crop`` regions, each with its own noise.

    Args:
        n_views: number of views (2..8).
        seed: seed of the split and of the noise.
        crop: side of each view's region of the 32x32 digit (grayscale).
        noise: Gaussian noise standard deviation per view (default: rising from 0.05 to 0.35,
            so the views differ in quality and in measured importance).
        val_fraction: share of the training data held out for validation (the optimiser's
            curves are measured on it, so it is larger than the build's default).
        limit: at most this many samples per split (tests).
        dataset: ``digits`` or ``digits-hard`` (its colour images become luminance views).
    """
    from edgelesspart.model.datasets import load_dataset

    _check_views(n_views)
    noise = tuple(noise) if noise is not None else tuple(np.linspace(0.05, 0.35, n_views))
    if len(noise) != n_views:
        raise DatasetError(f"noise needs one level per view ({n_views}), got {len(noise)}.")
    if dataset not in ("digits", "digits-hard"):
        raise DatasetError(f"Multi-view digits come from digits or digits-hard, not {dataset!r}.")
    data = load_dataset(dataset, seed=seed, val_fraction=val_fraction, limit=limit)
    rng = np.random.default_rng(seed + 1)
    corners = view_regions(n_views, data.input_shape[0], crop)

    def cut(x: np.ndarray) -> tuple[np.ndarray, ...]:
        gray = x[..., :1] if dataset == "digits" else x.mean(axis=-1, keepdims=True)
        views = []
        for (top, left), sigma in zip(corners, noise):
            region = gray[:, top : top + crop, left : left + crop, :]
            noisy = region + rng.normal(0.0, sigma, region.shape).astype(np.float32)
            views.append(np.clip(noisy, 0.0, 1.0).astype(np.float32))
        return tuple(views)

    regions = tuple(
        {"top": t, "left": left, "size": crop, "noise_std": float(s)}
        for (t, left), s in zip(corners, noise)
    )
    return MultiViewData(
        name=f"{dataset}-{n_views}views",
        train=cut(data.x_train),
        val=cut(data.x_val),
        test=cut(data.x_test),
        y_train=data.y_train,
        y_val=data.y_val,
        y_test=data.y_test,
        num_classes=data.num_classes,
        regions=regions,
        preprocessing=dict(data.preprocessing),
        classes=tuple(str(c) for c in data.classes),
    )


def load_npz_views(
    path: str | Path, *, seed: int = 0, val_fraction: float = 0.1, test_fraction: float = 0.2
) -> MultiViewData:
    """Read ``x_view0 .. x_viewK`` and ``y`` from an ``.npz`` and split them with ``seed``.

    Pixel values are used as stored when float, or divided by 255 when integer.

    Raises:
        DatasetError: missing file or keys, mismatched sample counts or view shapes.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DatasetError(f"Multi-view file not found: {str(path)!r}.")
    with np.load(path, allow_pickle=False) as npz:
        keys = set(npz.files)
        names = sorted((k for k in keys if k.startswith("x_view")), key=lambda k: int(k[6:]))
        if len(names) < 2 or "y" not in keys:
            raise DatasetError(
                f"{path.name} must hold x_view0, x_view1, ... (at least two views) and y; it "
                f"holds {', '.join(sorted(keys)) or 'nothing'}."
            )
        views = [np.asarray(npz[k]) for k in names]
        y = np.asarray(npz["y"]).astype(np.int64).reshape(-1)
    shapes = {v.shape for v in views}
    if len(shapes) != 1 or views[0].ndim != 4 or views[0].shape[0] != len(y):
        raise DatasetError(
            f"{path.name}: every view must be an (N, H, W, C) array with N = len(y) = {len(y)} "
            f"and the same shape; got {[v.shape for v in views]}."
        )
    views = [v.astype(np.float32) / (255.0 if np.issubdtype(v.dtype, np.integer) else 1.0)
             for v in views]  # fmt: skip
    order = np.random.default_rng(seed).permutation(len(y))
    n_test, n_val = int(len(y) * test_fraction), int(len(y) * val_fraction)
    parts = order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]
    return MultiViewData(
        name=path.name,
        train=tuple(v[parts[0]] for v in views),
        val=tuple(v[parts[1]] for v in views),
        test=tuple(v[parts[2]] for v in views),
        y_train=y[parts[0]],
        y_val=y[parts[1]],
        y_test=y[parts[2]],
        num_classes=int(y.max()) + 1,
    )
