"""``digits-hard``: an offline, deterministic, MNIST-M-style variant of the bundled digits.

scikit-learn's 1,797 8x8 digits are too easy to tell a user anything (a first exit already
matches the final classifier). This generator makes every digit a colour image that a small CNN
gets roughly 80-92 % right: each digit is upscaled, rotated, sheared, scaled and shifted
(affine jitter), blended in a random colour into a patch of a natural image (the sample images
scikit-image and scikit-learn ship, so nothing is downloaded), partly covered by a clutter
stroke taken from another digit and by an occluding rectangle, blurred and noised.

Determinism: the pixels depend only on :data:`GENERATOR_VERSION`, the source digit's index,
the variant number and the generator seed (each sample draws from its own
``numpy.random.default_rng([seed, index, variant])``), never on the split seed, so the same
digit renders the same everywhere. The split is by *source digit* (all variants of one
handwritten digit land in the same split), so no test digit is seen in training under another
jitter. The rendered set is cached as an ``.npz`` under :func:`cache_dir`; a cached file is
used only when its recorded version, seed and variant count match.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from edgelesspart._lazy import BUILD_HINT, optional
from edgelesspart.errors import DatasetError

NAME = "digits-hard"
#: bump when the rendering changes; part of the cache key and of the rendered pixels' identity
GENERATOR_VERSION = 2
#: rendered side (pixels); ``load_dataset(image_size=...)`` resizes from here
SIDE = 32
#: renderings of each source digit (1,797 x 3 = 5,391 images; validation then holds ~540)
DEFAULT_VARIANTS = 3
DEFAULT_GENERATOR_SEED = 2026
#: colour sample images scikit-image ships inside its wheel (no pooch download)
SKIMAGE_COLOUR = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field",
                  "immunohistochemistry", "colorwheel")  # fmt: skip
#: grey textures and photos, tinted with a random colour per patch
SKIMAGE_GREY = ("brick", "grass", "gravel", "camera", "coins", "moon", "page", "text")
#: tuning of the difficulty (v2, measured: the small CNN trained to convergence with the build's
#: trainer reaches 81.5 % on test, 83.6 % validation; experiments/digits_hard_calibration.py)
DIGIT_SIZE = (18.0, 28.0)  # side of the digit's 8x8 box after scaling, pixels
ROTATION_DEG = 20.0
SHEAR = 0.2
MIN_CONTRAST = 0.45  # smallest mean colour distance between digit and background (0..1)
CLUTTER_P = 0.5
OCCLUSION_P = 0.3
BLUR_SIGMA = (0.0, 1.0)
NOISE_SIGMA = (0.01, 0.06)
BACKGROUND_CONTRAST = (0.35, 1.0)  # background texture kept at this share of its contrast


def cache_dir() -> Path:
    """Folder of rendered datasets: ``$EDGELESSPART_CACHE`` or ``~/.cache/edgelesspart``."""
    root = os.environ.get("EDGELESSPART_CACHE")
    if root:
        return Path(root).expanduser() / "datasets"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "edgelesspart" / "datasets"


def cache_path(seed: int = DEFAULT_GENERATOR_SEED, variants: int = DEFAULT_VARIANTS) -> Path:
    """Where the rendering with ``seed`` and ``variants`` is cached."""
    return cache_dir() / f"{NAME}-v{GENERATOR_VERSION}-s{seed}-x{variants}.npz"


def load_rendered(
    seed: int = DEFAULT_GENERATOR_SEED,
    variants: int = DEFAULT_VARIANTS,
    *,
    use_cache: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rendered set: ``(images uint8 (N, 32, 32, 3), labels, source index per image)``.

    Read from the cache when a matching file is there, else rendered (a few seconds) and
    written to the cache atomically (a failed write only costs the next call a re-render).
    """
    path = cache_path(seed, variants)
    if use_cache and path.is_file():
        cached = _read_cache(path, seed, variants)
        if cached is not None:
            return cached
    images, labels, sources = render(seed=seed, variants=variants)
    if use_cache:
        _write_cache(path, images, labels, sources, seed, variants)
    return images, labels, sources


def _read_cache(
    path: Path, seed: int, variants: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = tuple(int(v) for v in npz["meta"])
            if meta != (GENERATOR_VERSION, seed, variants):
                return None
            return npz["images"], npz["labels"], npz["sources"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None  # unreadable or stale: render again


def _write_cache(
    path: Path,
    images: np.ndarray,
    labels: np.ndarray,
    sources: np.ndarray,
    seed: int,
    variants: int,
) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
        with os.fdopen(fd, "wb") as handle:
            np.savez_compressed(
                handle,
                images=images,
                labels=labels,
                sources=sources,
                meta=np.array([GENERATOR_VERSION, seed, variants], dtype=np.int64),
            )
        os.replace(tmp, path)
    except OSError:
        return


def fingerprint(images: np.ndarray) -> str:
    """Short SHA-256 of the rendered pixels (printed by docs and checked by the tests)."""
    return hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()[:16]


def render(
    seed: int = DEFAULT_GENERATOR_SEED,
    variants: int = DEFAULT_VARIANTS,
    *,
    limit: int | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Render every bundled digit (the first ``limit`` if given) ``variants`` times.

    Returns ``(images uint8 (N, 32, 32, 3), labels, source digit index per image)``.
    """
    if variants < 1:
        raise DatasetError(f"{NAME}: variants must be >= 1, got {variants}.")
    sk_datasets = optional("sklearn.datasets", BUILD_HINT)
    digits = sk_datasets.load_digits()
    glyphs = (digits.images / 16.0).astype(np.float32)  # (N, 8, 8) in [0, 1]
    labels = np.asarray(digits.target, dtype=np.int64)
    everyone = len(glyphs)  # clutter strokes come from any digit, whatever the limit
    if limit is not None:
        glyphs, labels = glyphs[:limit], labels[:limit]
    backgrounds = _backgrounds()
    n = len(glyphs)
    out = np.empty((n * variants, SIDE, SIDE, 3), dtype=np.uint8)
    for index in range(n):
        for variant in range(variants):
            rng = np.random.default_rng([seed, GENERATOR_VERSION, index, variant])
            clutter = (digits.images[int(rng.integers(everyone))] / 16.0).astype(np.float32)
            out[index * variants + variant] = _render_one(glyphs[index], clutter, backgrounds, rng)
    return out, np.repeat(labels, variants), np.repeat(np.arange(n, dtype=np.int64), variants)


@functools.lru_cache(maxsize=1)
def _backgrounds() -> tuple[np.ndarray, ...]:
    """Natural images as float32 RGB in [0, 1] (grey ones kept 2-D, tinted per patch)."""
    skdata = optional(
        "skimage.data",
        "pip install scikit-image (part of the 'build' extra: pip install edgelesspart[build])",
    )
    sk_datasets = optional("sklearn.datasets", BUILD_HINT)
    images: list[np.ndarray] = []
    for name in SKIMAGE_COLOUR:
        rgb = np.asarray(getattr(skdata, name)())[..., :3]
        images.append(rgb.astype(np.float32) / 255.0)
    for name in SKIMAGE_GREY:
        grey = np.asarray(getattr(skdata, name)())
        images.append(grey.astype(np.float32) / 255.0)
    for rgb in sk_datasets.load_sample_images().images:  # china.jpg, flower.jpg
        images.append(np.asarray(rgb, dtype=np.float32) / 255.0)
    return tuple(images)


def _patch(backgrounds: tuple[np.ndarray, ...], rng: np.random.Generator) -> np.ndarray:
    """A random SIDE x SIDE RGB patch: random image, crop size, position, flip and tint."""
    ndimage = optional("scipy.ndimage", BUILD_HINT)
    image = backgrounds[int(rng.integers(len(backgrounds)))]
    h, w = image.shape[:2]
    size = int(rng.integers(SIDE, min(h, w, 4 * SIDE) + 1))
    top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    crop = image[top : top + size, left : left + size]
    if crop.ndim == 2:
        tint = rng.uniform(0.3, 1.0, size=3).astype(np.float32)
        crop = crop[..., None] * tint + (1.0 - tint) * rng.uniform(0.0, 1.0)
    zoom = SIDE / size
    patch = ndimage.zoom(crop, (zoom, zoom, 1), order=1)[:SIDE, :SIDE]
    if rng.random() < 0.5:
        patch = patch[:, ::-1]
    mean = patch.mean(axis=(0, 1))
    patch = mean + (patch - mean) * rng.uniform(*BACKGROUND_CONTRAST)
    return np.clip(patch, 0.0, 1.0).astype(np.float32)


def _warp(
    glyph: np.ndarray, rng: np.random.Generator, size_range: tuple[float, float]
) -> np.ndarray:
    """The 8x8 glyph drawn at a random scale, rotation, shear and position on the canvas."""
    ndimage = optional("scipy.ndimage", BUILD_HINT)
    size = rng.uniform(*size_range)
    scale = 8.0 / size  # output pixel -> glyph pixel
    angle = np.deg2rad(rng.uniform(-ROTATION_DEG, ROTATION_DEG))
    shear = rng.uniform(-SHEAR, SHEAR)
    aspect = rng.uniform(0.85, 1.15)
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = np.array([[cos, -sin], [sin, cos]])
    matrix = rotation @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([scale * aspect, scale])
    slack = max(0.0, (SIDE - size) / 2.0)
    centre_out = np.array([SIDE / 2.0, SIDE / 2.0]) + rng.uniform(-slack, slack, size=2) * 0.8
    offset = np.array([3.5, 3.5]) - matrix @ centre_out
    padded = np.pad(glyph, 1)  # zero border so the bilinear edge fades out
    return np.clip(
        ndimage.affine_transform(
            padded, matrix, offset=offset + 1.0, output_shape=(SIDE, SIDE), order=1, cval=0.0
        ),
        0.0,
        1.0,
    )


def _digit_colour(background: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random RGB colour at least :data:`MIN_CONTRAST` away from the patch's mean colour."""
    mean = background.reshape(-1, 3).mean(axis=0)
    colour = rng.uniform(0.0, 1.0, size=3)
    for _ in range(16):
        if np.abs(colour - mean).mean() >= MIN_CONTRAST:
            break
        colour = rng.uniform(0.0, 1.0, size=3)
    else:  # no luck: go to the far side of every channel
        colour = np.where(mean > 0.5, rng.uniform(0.0, 0.2, 3), rng.uniform(0.8, 1.0, 3))
    return colour.astype(np.float32)


def _render_one(
    glyph: np.ndarray,
    clutter: np.ndarray,
    backgrounds: tuple[np.ndarray, ...],
    rng: np.random.Generator,
) -> np.ndarray:
    ndimage = optional("scipy.ndimage", BUILD_HINT)
    image = _patch(backgrounds, rng)
    if rng.random() < CLUTTER_P:  # a faint piece of another digit, smaller, off-centre
        stroke = _warp(clutter, rng, (10.0, 18.0)) * rng.uniform(0.25, 0.55)
        stroke_colour = rng.uniform(0.0, 1.0, size=3).astype(np.float32)
        image = image * (1.0 - stroke[..., None]) + stroke_colour * stroke[..., None]
    mask = _warp(glyph, rng, DIGIT_SIZE)
    alpha = mask * rng.uniform(0.75, 1.0)
    colour = _digit_colour(image, rng)
    image = image * (1.0 - alpha[..., None]) + colour * alpha[..., None]
    if rng.random() < OCCLUSION_P:  # an opaque rectangle over part of the canvas
        h, w = int(rng.integers(4, 11)), int(rng.integers(4, 11))
        top, left = int(rng.integers(0, SIDE - h + 1)), int(rng.integers(0, SIDE - w + 1))
        image[top : top + h, left : left + w] = rng.uniform(0.0, 1.0, size=3)
    sigma = rng.uniform(*BLUR_SIGMA)
    if sigma > 0.3:
        image = ndimage.gaussian_filter(image, sigma=(sigma, sigma, 0))
    image = image + rng.normal(0.0, rng.uniform(*NOISE_SIGMA), size=image.shape)
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
