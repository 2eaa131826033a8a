"""Turn request data into the tensor a bundle's first segment takes, and check tensors.

:func:`validate_input` is the single gate every tensor passes before a segment runs: it adds the
batch dimension when missing and refuses a wrong shape, an unusable dtype, NaN or Inf with an
:class:`~edgelesspart.errors.InputError` that says what was expected and what arrived.
:func:`image_to_tensor` decodes a PNG or JPEG with Pillow (imported lazily) as the manifest's
``input.preprocessing`` says.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np

from edgelesspart.errors import DependencyError, InputError
from edgelesspart.runtime.manifest import InputSpec, TensorSpec

#: Largest decoded image we accept (pixels); stops decompression bombs before decoding.
MAX_IMAGE_PIXELS = 4096 * 4096
#: Image formats :func:`image_to_tensor` accepts.
IMAGE_FORMATS = ("PNG", "JPEG")
_NUMERIC_KINDS = "fiu"
#: inputs up to this many values are checked for NaN/Inf with one dot product (BLAS runs a dot
#: of this size on the calling thread)
_DOT_CHECK_MAX = 8192
#: An object's default repr inside an error message (a memory address: differs per call).
_OBJECT_REPR = re.compile(r" ?<[\w.]+ object at 0x[0-9a-f]+>")


def _describe(shape: tuple[int, ...] | list[int], dtype: Any) -> str:
    return f"shape {tuple(int(d) for d in shape)} {np.dtype(dtype).name}"


def validate_input(x: np.ndarray, spec: TensorSpec) -> np.ndarray:
    """Check a batch against a tensor spec and return it as a C-contiguous array of its dtype.

    Args:
        x: one sample (``spec.shape``) or a batch (``(N, *spec.shape)``, ``N >= 1``). Integer
            and other float dtypes are cast to ``spec.dtype``; bool, complex, string and object
            arrays are refused.
        spec: the expected per-sample shape and dtype.

    Returns:
        The batch, with a leading batch dimension, as ``spec.dtype``.

    Raises:
        InputError: wrong type, shape or dtype, an empty batch, or NaN/Inf values.
    """
    if type(x) is np.ndarray and x.ndim == len(spec.shape) + 1 and x.shape[0]:
        # fast path: a batch that already has the spec's shape and dtype, C-contiguous
        if x.shape[1:] == tuple(spec.shape) and x.dtype == spec.dtype and x.flags.c_contiguous:
            _check_finite(x, spec)
            return x
    return _validate_slow(x, spec)


def _validate_slow(x: Any, spec: TensorSpec) -> np.ndarray:
    """:func:`validate_input` for anything its fast path does not take (and all errors)."""
    expected = f"(N, {', '.join(str(d) for d in spec.shape)}) {spec.dtype}"
    if not isinstance(x, np.ndarray):
        raise InputError(
            f"Expected a numpy array of shape {expected}, got {type(x).__name__}. "
            "Convert the request data with numpy.asarray first."
        )
    if x.dtype.kind not in _NUMERIC_KINDS:
        raise InputError(
            f"Expected a numeric tensor of shape {expected}, got dtype {x.dtype.name}. "
            f"Send {spec.dtype} values."
        )
    if x.ndim == len(spec.shape):
        x = x[np.newaxis, ...]
    if x.ndim != len(spec.shape) + 1 or tuple(x.shape[1:]) != tuple(spec.shape):
        raise InputError(
            f"Expected a tensor of shape {expected} or one sample of shape {tuple(spec.shape)}, "
            f"got {_describe(x.shape, x.dtype)}. Resize or reshape the input to match the bundle."
        )
    if x.shape[0] == 0:
        raise InputError(f"Expected at least one sample of shape {expected}, got an empty batch.")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.ascontiguousarray(x, dtype=np.dtype(spec.dtype))
    _check_finite(out, spec)
    return out


def _check_finite(out: np.ndarray, spec: TensorSpec) -> None:
    """Refuse NaN/Inf in a float batch, naming (up to ten of) the bad samples."""
    if out.dtype.kind != "f":
        return
    if out.size <= _DOT_CHECK_MAX:
        # x . x is finite iff every element is (a NaN or an Inf makes a term NaN or +Inf, and
        # +Inf cannot cancel in a sum of squares), unless the finite squares overflow: then the
        # exact check below decides. Half the time of isfinite + all on a small input (P2).
        flat = out.reshape(-1)
        if math.isfinite(flat.dot(flat)):
            return
    if np.isfinite(out).all():  # one pass over the batch; per sample only to name the bad ones
        return
    finite = np.isfinite(out.reshape(out.shape[0], -1)).all(axis=1)
    bad = np.flatnonzero(~finite)[:10].tolist()
    raise InputError(
        f"Input holds NaN or Inf values (or values too large for {spec.dtype}) in "
        f"sample(s) {bad}; expected finite numbers. Clean the input before sending it."
    )


def _pillow() -> Any:
    try:
        from PIL import Image
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DependencyError(
            f"Pillow is needed to decode images but is not installed ({exc}). "
            "Install it with: pip install pillow"
        ) from exc
    return Image


def _target_size(spec: InputSpec) -> tuple[int, int, int]:
    shape = spec.tensor.shape
    pre = spec.preprocessing
    default_h, default_w, default_c = shape if len(shape) == 3 else (0, 0, 0)
    height = int(pre.get("height", default_h))
    width = int(pre.get("width", default_w))
    channels = int(pre.get("channels", default_c))
    if channels not in (1, 3) or (height, width, channels) != tuple(shape):
        raise InputError(
            f"This bundle takes tensors of shape {tuple(shape)}, which is not an image "
            f"(height, width, 1|3) matching its preprocessing {dict(pre)}; send a tensor instead."
        )
    return height, width, channels


def image_pixels(data: bytes) -> int | None:
    """The pixel count a PNG/JPEG header declares (only the header is read), or ``None``.

    ``None`` when the bytes are not a PNG/JPEG that Pillow can open, or Pillow is missing:
    :func:`image_to_tensor` then says why.
    """
    try:
        image = _pillow().open(io.BytesIO(data))
        if image.format not in IMAGE_FORMATS:
            return None
        return int(image.size[0]) * int(image.size[1])
    except Exception:  # noqa: BLE001 - Pillow raises many types; the decode reports them
        return None


def image_to_tensor(data: bytes, spec: InputSpec) -> np.ndarray:
    """Decode a PNG/JPEG image into a ``(1, H, W, C)`` batch as ``spec.preprocessing`` says.

    The image is converted to grayscale (``channels`` 1) or RGB (3), resized to
    ``width`` x ``height`` (bilinear), and mapped with ``pixel * scale + offset``
    (defaults: scale 1/255, offset 0).

    Args:
        data: the encoded image bytes.
        spec: the bundle's input spec (``manifest.input``).

    Returns:
        A float32 batch of one sample, validated with :func:`validate_input`.

    Raises:
        InputError: not a PNG/JPEG, undecodable, too many pixels, or the bundle does not take
            images.
    """
    height, width, channels = _target_size(spec)
    image_module = _pillow()
    try:
        image = image_module.open(io.BytesIO(data))
        fmt = image.format
        if fmt not in IMAGE_FORMATS:
            raise InputError(f"Expected a PNG or JPEG image, got format {fmt!r}.")
        pixels = image.size[0] * image.size[1]
        if pixels > MAX_IMAGE_PIXELS:
            raise InputError(
                f"Image of {image.size[0]}x{image.size[1]} pixels is larger than the "
                f"{MAX_IMAGE_PIXELS}-pixel limit; downscale it before sending."
            )
        mode = "L" if channels == 1 else "RGB"
        if image.mode != mode:  # converting to its own mode, or resizing to its own size,
            image = image.convert(mode)  # is a copy in Pillow: skipped, same pixels
        if image.size != (width, height):
            image = image.resize((width, height), image_module.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32)  # decodes here (Pillow loads lazily)
    except InputError:
        raise
    except Exception as exc:  # Pillow raises many types (OSError, SyntaxError, ValueError, ...)
        why = _OBJECT_REPR.sub("", str(exc))  # "cannot identify image file <_io.BytesIO ...>"
        raise InputError(
            f"Could not decode the request body as a PNG or JPEG image ({why})."
        ) from exc
    array = array.reshape(1, height, width, channels)  # the batch of one, no copy
    scale = float(spec.preprocessing.get("scale", 1.0 / 255.0))
    offset = float(spec.preprocessing.get("offset", 0.0))
    array *= scale  # in place: the same float32 values as ``array * scale + offset``
    if offset:
        array += offset
    return validate_input(array, spec.tensor)
