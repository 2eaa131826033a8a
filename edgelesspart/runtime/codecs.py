"""Tensor codecs: how a boundary tensor crosses a link between the edge part and the cloud part.

A codec name is one *value stage* optionally followed by ``+`` and one *byte stage*:

============  =======================================================  =====================
codec         what it does                                             max abs error
============  =======================================================  =====================
raw           little-endian C-order bytes as they are                   0
fp16          cast floats to float16; |x| > 65504 (and ±inf) are        |x|·2⁻¹¹ + 2⁻²⁵, or
              **clipped** to ±65504 (count in ``params["clipped"]``);   |x| − 65504 where
              NaN passes through; decodes to the original dtype         clipped (inf: inf)
int8          per-tensor affine quantisation to uint8: the range is     scale / 2 (+ float
              widened to include 0 so zeros stay exact;                 rounding)
              ``params`` holds ``scale`` and ``zero_point``; a
              constant-zero tensor has scale 0
lz4 / zstd    ``lz4.frame`` / ``zstandard`` level 3 over the raw bytes  0
zfp           ``zfpy`` without its own header: ``mode`` "accuracy"     accuracy: tolerance;
              (default; ``tolerance`` absolute, or ``rel_tolerance``    rate: no a-priori
              × max|x|, default 1e-2), "rate" (``rate`` bits/value,     bound (inf);
              default 8) or "reversible" (lossless; the default for     reversible: 0
              int32/int64). Size-1 dims (the batch dim of a batch-1
              tensor) are squeezed and > 4 dims merged before
              compressing, float16 goes through float32
a+b           value stage ``a`` then byte stage ``b`` (lz4 / zstd)
============  =======================================================  =====================

fp16 and int8 take float16/32/64 only; int8 and lossy zfp reject NaN/inf; zfp takes float16/32/64
and int32/int64. Lossy zfp sends magnitudes below 2^-96 (float32) / 2^-960 (float64) as 0: zfp
decodes blocks that small as garbage. Tiny tensors can grow (zfp codes 4^d-value blocks, lz4/zstd
add a frame): that is reported as is, never hidden. Every body also carries a CRC-32 in the
header (see :mod:`~edgelesspart.runtime.wire`), so transit corruption is caught for every codec.
The optional libraries (lz4, zstandard, zfpy) are imported lazily; a missing one raises
:class:`CodecError` naming the ``pip install``.

The frame around the body is :mod:`edgelesspart.runtime.wire`; nothing here ever pickles.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import math
from types import ModuleType
from typing import Any

import numpy as np

from edgelesspart.errors import CodecError
from edgelesspart.runtime import wire

CODECS: tuple[str, ...] = (
    "raw", "fp16", "int8", "lz4", "zstd", "zfp",
    "fp16+lz4", "int8+lz4", "zfp+lz4", "fp16+zstd", "int8+zstd",
)  # fmt: skip
LOSSLESS: frozenset[str] = frozenset({"raw", "lz4", "zstd"})
FP16_MAX = 65504.0
ZSTD_LEVEL = 3
ZFP_DEFAULT_REL_TOLERANCE = 1e-2
ZFP_DEFAULT_RATE = 8.0
ZFP_MODES = ("accuracy", "rate", "reversible")

_FLOATS = ("float16", "float32", "float64")
_STAGE_DTYPES = {"fp16": _FLOATS, "int8": _FLOATS, "zfp": (*_FLOATS, "int32", "int64")}
_OPTIONAL = {
    "lz4": ("lz4.frame", "lz4"),
    "zstd": ("zstandard", "zstandard"),
    "zfp": ("zfpy", "zfpy"),
}
_PARAM_KEYS = {"zfp": ("mode", "rate", "tolerance", "rel_tolerance"), "zstd": ("level",)}
_ZFP_MAX_BITS = 16658  # ZFP_MAX_BITS in zfp.h: the most bits one block can take


# ---------------------------------------------------------------- public API


def check_codec(name: str) -> str:
    """Validate a codec name and return its canonical spelling.

    Raises:
        CodecError: ``name`` is not one of :data:`CODECS`.
    """
    canonical = name.strip().lower() if isinstance(name, str) else None
    if canonical not in CODECS:
        raise CodecError(f"Unknown codec {name!r}. Supported codecs: {', '.join(CODECS)}.")
    return canonical


def codec_packages(name: str) -> tuple[str, ...]:
    """The optional pip packages codec ``name`` needs, e.g. ``("zfpy", "lz4")`` for zfp+lz4.

    Raises:
        CodecError: ``name`` is not one of :data:`CODECS`.
    """
    canonical = check_codec(name)
    return tuple(_OPTIONAL[s][1] for s in canonical.split("+") if s in _OPTIONAL)


def require_codec(name: str) -> str:
    """Check that codec ``name`` exists and its libraries import here; return its canonical name.

    Raises:
        CodecError: an unknown codec, or one whose optional package is missing (the message
            names the ``pip install`` that fixes it).
    """
    canonical = check_codec(name)
    for stage in canonical.split("+"):
        _module(stage, canonical)
    return canonical


def available_codecs() -> tuple[str, ...]:
    """Return the codecs whose optional libraries import in this environment."""
    usable = []
    for codec in CODECS:
        try:
            for stage in codec.split("+"):
                _module(stage, codec)
        except CodecError:
            continue
        usable.append(codec)
    return tuple(usable)


def encode_tensor(
    array: np.ndarray,
    codec: str = "raw",
    *,
    params: dict | None = None,
    meta: dict | None = None,
) -> bytes:
    """Encode one tensor into a self-describing wire payload.

    Args:
        array: The tensor (float16/32/64, int8, uint8, int32, int64 or bool), batch dim included.
        codec: One of :data:`CODECS`.
        params: Codec options (zfp: ``mode``, ``rate``, ``tolerance``, ``rel_tolerance``;
            zstd: ``level``).
        meta: Free JSON object carried in the header (``bundle_id``, ``segment``, ...).

    Returns:
        ``MAGIC | version | header length | JSON header | body`` bytes.

    Raises:
        CodecError: Unknown codec or option, unsupported dtype, values the codec cannot
            carry, or a missing optional library.
    """
    name = check_codec(codec)
    arr = _check_array(array)
    options = _check_params(name, params)
    value_stage, byte_stage = _stages(name)
    body, out_params = _ENCODERS[value_stage](arr, options, name)
    if byte_stage is not None:
        out_params["inner_nbytes"] = len(body)
        body = _compress(byte_stage, body, options, name)
    return wire.build_frame(
        dtype=arr.dtype.name,
        shape=arr.shape,
        codec=name,
        params=out_params,
        meta={} if meta is None else meta,
        body=body,
    )


def decode_tensor(
    payload: bytes, *, max_bytes: int = wire.DEFAULT_MAX_BYTES
) -> tuple[np.ndarray, dict]:
    """Decode a wire payload back into ``(array, header)``.

    The array has the original dtype and shape and is writable. ``header["meta"]`` is what
    the sender passed as ``meta``.

    Raises:
        CodecError: Corrupt, truncated or hostile payload, a tensor over ``max_bytes``, or a
            missing optional library.
    """
    header, body = wire.parse_frame(payload, max_bytes=max_bytes)
    name = _header_codec(header)
    value_stage, byte_stage = _stages(name)
    dtype, shape, params = np.dtype(header["dtype"]), tuple(header["shape"]), header["params"]
    _check_dtype(value_stage, dtype, name)
    if byte_stage is not None:
        body = _decompress(byte_stage, body, _inner_nbytes(value_stage, dtype, shape, params), name)
    array = _DECODERS[value_stage](body, dtype, shape, params)
    return array, header


def read_header(payload: bytes, *, max_bytes: int = wire.DEFAULT_MAX_BYTES) -> dict:
    """Parse and validate only the header (no checksum, no decompression).

    Use it to reject a payload cheaply, e.g. when ``header["meta"]["bundle_id"]`` is wrong.

    Raises:
        CodecError: Bad framing or header, or an unknown codec.
    """
    header, _ = wire.parse_frame(payload, max_bytes=max_bytes, verify_body=False)
    _header_codec(header)
    return header


def codec_error_bound(codec: str, array: np.ndarray, params: dict | None = None) -> float:
    """Return the documented maximum absolute error ``codec`` makes on ``array``.

    0.0 for lossless codecs and zfp "reversible", ``math.inf`` for zfp "rate" (fixed-rate
    has no a-priori bound) and for fp16 on a tensor holding ±inf. NaNs are ignored.

    Raises:
        CodecError: The same problems :func:`encode_tensor` would raise.
    """
    name = check_codec(codec)
    arr = _check_array(array)
    options = _check_params(name, params)
    value_stage, _ = _stages(name)
    if value_stage == "raw":
        return 0.0
    _check_dtype(value_stage, arr.dtype, name)
    peak = (
        float(np.abs(arr).max(initial=0.0, where=~np.isnan(arr))) if arr.dtype.kind == "f" else 0.0
    )
    if value_stage == "fp16":
        return _fp16_bound(arr, peak)
    if value_stage == "int8":
        scale, _ = _int8_scale(arr, name)
        return scale / 2 + _rounding_slack(arr.dtype, peak, 4) + _rounding_slack(np.float64, 0, 256)
    return _zfp_bound(arr, _zfp_settings(arr, options, name), peak)


def to_base64(payload: bytes) -> str:
    """Encode a payload as standard base64 text (for a Lambda JSON event)."""
    return base64.b64encode(payload).decode("ascii")


def from_base64(text: str) -> bytes:
    """Decode strict standard base64 text (no whitespace, correct padding).

    Raises:
        CodecError: ``text`` is not a str or not valid base64.
    """
    if not isinstance(text, str):
        raise CodecError(f"Expected base64 text (str); got {type(text).__name__}.")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error) as exc:
        raise CodecError(
            f"Invalid base64 ({exc}); expected standard base64 (A-Z, a-z, 0-9, +, /, '=' "
            f"padding) of a tensor payload, got {len(text)} characters starting {text[:20]!r}."
        ) from exc


# ---------------------------------------------------------------- plumbing


def _stages(codec: str) -> tuple[str, str | None]:
    first, _, second = codec.partition("+")
    if first in ("lz4", "zstd"):
        return "raw", first
    return first, second or None


def _module(stage: str, codec: str) -> ModuleType | None:
    if stage not in _OPTIONAL:
        return None
    module, package = _OPTIONAL[stage]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise CodecError(
            f"Codec {codec!r} needs the optional package {package!r}, which is not installed: "
            f"pip install {package}"
        ) from exc


def _header_codec(header: dict) -> str:
    try:
        return check_codec(header["codec"])
    except CodecError as exc:
        raise CodecError(f"Payload header names an unsupported codec: {exc}") from exc


def _check_array(array: Any) -> np.ndarray:
    if isinstance(array, np.generic):
        array = np.asarray(array)
    if not isinstance(array, np.ndarray):
        raise CodecError(f"Expected a numpy.ndarray; got {type(array).__name__}.")
    name = array.dtype.name
    if name not in wire.WIRE_DTYPES or array.ndim > wire.MAX_DIMS:
        raise CodecError(
            f"Cannot encode a {name} tensor of {array.ndim} dims; supported dtypes: "
            f"{', '.join(wire.WIRE_DTYPES)}, at most {wire.MAX_DIMS} dims."
        )
    return np.asarray(array, dtype=array.dtype.newbyteorder("<"), order="C")


def _check_params(codec: str, params: dict | None) -> dict:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise CodecError(f"params must be a dict; got {type(params).__name__}.")
    allowed = tuple(k for stage in codec.split("+") for k in _PARAM_KEYS.get(stage, ()))
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise CodecError(
            f"Unknown parameter(s) {unknown} for codec {codec!r}; "
            f"accepted: {', '.join(allowed) or 'none'}."
        )
    return params


def _check_dtype(stage: str, dtype: np.dtype, codec: str) -> None:
    allowed = _STAGE_DTYPES.get(stage)
    if allowed is not None and dtype.name not in allowed:
        raise CodecError(
            f"Codec {codec!r} cannot carry {dtype.name} tensors; it takes {', '.join(allowed)}. "
            "Use 'raw', 'lz4' or 'zstd' for this tensor."
        )


def _require_finite(arr: np.ndarray, codec: str) -> None:
    if arr.size and not np.isfinite(arr).all():
        bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        raise CodecError(
            f"Codec {codec!r} cannot carry NaN/inf; the tensor has {bad} non-finite values. "
            "Use 'fp16', 'raw', 'lz4' or zfp mode 'reversible'."
        )


def _number(value: Any, what: str, low: float, high: float) -> float:
    number = math.nan
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.nan
    if not math.isfinite(number) or not low <= number <= high:
        raise CodecError(f"{what} must be a number in [{low}, {high}]; got {value!r}.")
    return number


def _exact_length(body: bytes | memoryview, expected: int, what: str) -> None:
    if len(body) != expected:
        raise CodecError(
            f"{what}: got {len(body)} bytes, expected {expected} for the dtype and shape in "
            "the header."
        )


def _rounding_slack(dtype: np.dtype | type, peak: float, ulps: int) -> float:
    """``ulps`` units of float rounding for values up to ``peak`` (subnormals included)."""
    info = np.finfo(dtype)
    return ulps * (float(info.eps) * peak + float(info.smallest_subnormal))


# ---------------------------------------------------------------- byte stages


def _compress(stage: str, data: bytes, options: dict, codec: str) -> bytes:
    module = _module(stage, codec)
    if stage == "lz4":
        return module.compress(data, store_size=True)
    level = int(_number(options.get("level", ZSTD_LEVEL), "zstd level", 1, 22))
    return module.ZstdCompressor(level=level).compress(data)


def _decompress(stage: str, body: memoryview, expected: int, codec: str) -> bytes:
    module = _module(stage, codec)
    try:
        if stage == "lz4":
            decompressor = module.LZ4FrameDecompressor()
            out = decompressor.decompress(body, max_length=expected + 1)
            complete = decompressor.eof and not decompressor.unused_data
        else:
            declared = module.frame_content_size(body)
            if declared != expected:
                raise CodecError(f"zstd frame declares {declared} bytes, expected {expected}.")
            out = module.ZstdDecompressor().decompress(
                body, max_output_size=expected, allow_extra_data=False
            )
            complete = True
    except CodecError:
        raise
    except Exception as exc:  # lz4 raises RuntimeError, zstandard ZstdError
        raise CodecError(f"{stage} decompression failed ({exc}); the body is corrupt.") from exc
    if not complete or len(out) != expected:
        raise CodecError(
            f"{stage} body decompressed to {len(out)} bytes (complete frame: {complete}), "
            f"expected exactly {expected}; the body is truncated or corrupt."
        )
    return out


def _inner_nbytes(stage: str, dtype: np.dtype, shape: tuple[int, ...], params: dict) -> int:
    declared = params.get("inner_nbytes")
    if not isinstance(declared, int) or isinstance(declared, bool) or declared < 0:
        raise CodecError(f"Header params.inner_nbytes must be an int >= 0; got {declared!r}.")
    count = math.prod(shape)
    exact = {"raw": count * dtype.itemsize, "fp16": count * 2, "int8": count}.get(stage)
    if exact is not None and declared != exact:
        raise CodecError(f"Header params.inner_nbytes is {declared}, expected {exact}.")
    if stage == "zfp" and declared > _zfp_max_nbytes(dtype, shape, params):
        raise CodecError(f"Header params.inner_nbytes {declared} is too large for a zfp stream.")
    return declared


# ---------------------------------------------------------------- value stages


def _encode_raw(arr: np.ndarray, options: dict, codec: str) -> tuple[bytes, dict]:
    return arr.tobytes(), {}


def _decode_raw(body: bytes, dtype: np.dtype, shape: tuple[int, ...], params: dict) -> np.ndarray:
    _exact_length(body, math.prod(shape) * dtype.itemsize, "raw body")
    out = np.frombuffer(body, dtype=dtype.newbyteorder("<")).astype(dtype).reshape(shape)
    if dtype == np.bool_ and out.size and out.view(np.uint8).max() > 1:
        raise CodecError("bool body holds bytes other than 0 and 1; the body is corrupt.")
    return out


def _encode_fp16(arr: np.ndarray, options: dict, codec: str) -> tuple[bytes, dict]:
    _check_dtype("fp16", arr.dtype, codec)
    clipped = int(np.count_nonzero(np.abs(arr) > FP16_MAX))
    half = np.clip(arr, -FP16_MAX, FP16_MAX).astype("<f2")
    return half.tobytes(), {"clipped": clipped}


def _decode_fp16(body: bytes, dtype: np.dtype, shape: tuple[int, ...], params: dict) -> np.ndarray:
    _exact_length(body, math.prod(shape) * 2, "fp16 body")
    return np.frombuffer(body, dtype="<f2").astype(dtype).reshape(shape)


def _fp16_bound(arr: np.ndarray, peak: float) -> float:
    clipping = max(peak - FP16_MAX, 0.0)  # inf when the tensor holds +-inf
    if arr.dtype == np.float16:
        return clipping
    inside = np.abs(arr[np.abs(arr) <= FP16_MAX])
    return max(float(inside.max(initial=0.0)) * 2.0**-11 + 2.0**-25, clipping)


def _int8_scale(arr: np.ndarray, codec: str) -> tuple[float, int]:
    _check_dtype("int8", arr.dtype, codec)
    _require_finite(arr, codec)
    low = min(float(arr.min(initial=0.0)), 0.0)
    high = max(float(arr.max(initial=0.0)), 0.0)
    scale = (high - low) / 255.0
    if not math.isfinite(scale):
        raise CodecError(
            f"Value range [{low}, {high}] is too wide for {codec!r}; use 'zfp' or 'zstd'."
        )
    zero_point = int(round(-low / scale)) if scale > 0 else 0
    return scale, min(max(zero_point, 0), 255)


def _encode_int8(arr: np.ndarray, options: dict, codec: str) -> tuple[bytes, dict]:
    scale, zero_point = _int8_scale(arr, codec)
    if scale > 0:
        q = np.clip(np.rint(arr.astype(np.float64) / scale) + zero_point, 0, 255)
    else:
        q = np.full(arr.shape, zero_point, dtype=np.float64)
    return q.astype(np.uint8).tobytes(), {"scale": scale, "zero_point": zero_point}


def _decode_int8(body: bytes, dtype: np.dtype, shape: tuple[int, ...], params: dict) -> np.ndarray:
    _exact_length(body, math.prod(shape), "int8 body")
    limit = float(np.finfo(dtype).max) / 256
    scale = _number(params.get("scale"), "Header params.scale", 0.0, limit)
    zero_point = _number(params.get("zero_point"), "Header params.zero_point", 0, 255)
    q = np.frombuffer(body, dtype=np.uint8).astype(np.float64)
    return ((q - zero_point) * scale).astype(dtype).reshape(shape)


# ---------------------------------------------------------------- zfp


def _zfp_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Drop size-1 dims (zfp pads every dim to 4) and merge leading dims down to 4."""
    dims = [d for d in shape if d != 1] or [1]
    while len(dims) > 4:
        dims[:2] = [dims[0] * dims[1]]
    return tuple(dims)


_ZFP_FORBIDDEN = {
    "accuracy": ("rate",),
    "rate": ("tolerance", "rel_tolerance"),
    "reversible": ("rate", "tolerance", "rel_tolerance"),
}


def _zfp_settings(arr: np.ndarray, options: dict, codec: str) -> dict:
    """Resolve the zfp options for ``arr`` into what goes in the header ``params``."""
    _check_dtype("zfp", arr.dtype, codec)
    is_int = arr.dtype.kind == "i"
    mode = options.get("mode", "reversible" if is_int else "accuracy")
    if mode not in ZFP_MODES or any(k in options for k in _ZFP_FORBIDDEN[mode]):
        raise CodecError(
            f"zfp params {options!r} are invalid; use mode 'accuracy' (tolerance or "
            "rel_tolerance), 'rate' (rate) or 'reversible' (no other key)."
        )
    if mode == "reversible":
        return {"mode": mode}
    _require_finite(arr, f"{codec} (mode {mode!r})")
    if mode == "rate":
        rate = _number(options.get("rate", ZFP_DEFAULT_RATE), "zfp rate", 0.0, 64.0)
        _check_zfp_rate(rate, len(_zfp_shape(arr.shape)))
        return {"mode": mode, "rate": rate}
    if is_int:
        raise CodecError(
            f"zfp mode 'accuracy' needs a float tensor; use 'reversible' or 'rate' for {arr.dtype}."
        )
    if "tolerance" in options and "rel_tolerance" in options:
        raise CodecError("Give zfp either 'tolerance' or 'rel_tolerance', not both.")
    if "tolerance" in options:
        tolerance = _number(options["tolerance"], "zfp tolerance", 1e-300, math.inf)
        return {"mode": mode, "tolerance": tolerance}
    rel = options.get("rel_tolerance", ZFP_DEFAULT_REL_TOLERANCE)
    rel = _number(rel, "zfp rel_tolerance", 1e-12, 1.0)
    return {"mode": mode, "tolerance": rel * float(np.abs(arr).max(initial=0.0))}


def _zfp_bound(arr: np.ndarray, settings: dict, peak: float) -> float:
    if settings["mode"] == "reversible":
        return 0.0
    if settings["mode"] == "rate":
        return math.inf
    # zfp meets the tolerance down to a few ulps of its working precision (float32 for
    # float16 input, which then rounds once more on the way back to float16); magnitudes
    # under _zfp_floor are sent as 0.
    work = np.dtype(np.float32) if arr.dtype == np.float16 else arr.dtype
    bound = settings["tolerance"] + _rounding_slack(work, peak, 64) + _zfp_floor(work)
    if arr.dtype == np.float16:
        bound += _rounding_slack(np.float16, peak + bound, 1)
    return bound


def _zfp_floor(dtype: np.dtype) -> float:
    """Smallest magnitude lossy zfp codes correctly (2^-96 float32, 2^-960 float64).

    zfp scales each block by 2^(intprec - 2 - emax), which overflows for blocks whose largest
    magnitude is below this, and decodes them as garbage; the encoder flushes them to 0.
    """
    info = np.finfo(dtype)
    return float(info.tiny) * 2.0 ** (info.bits - 2)


def _check_zfp_rate(rate: float, ndim: int) -> None:
    # zfpy compresses with type "none" but decompresses with the real type, which raises the
    # bits per block to at least 12 for doubles; below that the two sides would disagree.
    if math.floor(4**ndim * rate + 0.5) < 12:
        raise CodecError(
            f"zfp rate {rate} is too low for a {ndim}-d block; need rate >= {12 / 4**ndim:g}."
        )


def _zfp_call_args(settings: dict) -> dict:
    return {k: settings[k] for k in ("tolerance", "rate") if k in settings}


def _encode_zfp(arr: np.ndarray, options: dict, codec: str) -> tuple[bytes, dict]:
    settings = _zfp_settings(arr, options, codec)
    zfpy = _module("zfp", codec)
    if arr.size == 0:
        return b"", settings
    work = arr.astype(np.float32) if arr.dtype == np.float16 else arr
    work = np.ascontiguousarray(work.reshape(_zfp_shape(arr.shape)))
    if settings["mode"] != "reversible" and work.dtype.kind == "f":
        tiny = np.abs(work) < _zfp_floor(work.dtype)
        if tiny.any():
            work = np.where(tiny, work.dtype.type(0), work)
    try:
        body = zfpy.compress_numpy(work, write_header=False, **_zfp_call_args(settings))
    except Exception as exc:  # zfpy raises RuntimeError / ValueError / TypeError
        raise CodecError(f"zfp compression failed: {exc}") from exc
    return body, settings


def _zfp_max_nbytes(dtype: np.dtype, shape: tuple[int, ...], params: dict) -> int:
    """Upper bound on the bytes zfp can read while decoding ``shape`` (a whole number of words)."""
    zshape = _zfp_shape(shape)
    block = 4 ** len(zshape)
    blocks = math.prod(-(-d // 4) for d in zshape)
    intprec = 64 if dtype.itemsize == 8 else 32
    per_block = min(_ZFP_MAX_BITS, 64 + intprec * (2 * block + 1))
    if isinstance(params.get("rate"), (int, float)):
        per_block = max(per_block, math.floor(block * min(float(params["rate"]), 64.0) + 0.5))
    return (blocks * per_block // 64 + 9) * 8


def _zfp_rate_nbytes(shape: tuple[int, ...], rate: float) -> int:
    """Exact stream size in fixed-rate mode: every block takes the same bits, word-aligned."""
    zshape = _zfp_shape(shape)
    bits = math.prod(-(-d // 4) for d in zshape) * math.floor(4 ** len(zshape) * rate + 0.5)
    return -(-bits // 64) * 8


def _zfp_decode_settings(dtype: np.dtype, shape: tuple[int, ...], params: dict) -> dict:
    mode = params.get("mode")
    if mode == "rate":
        rate = _number(params.get("rate"), "Header params.rate", 0.0, 64.0)
        _check_zfp_rate(rate, len(_zfp_shape(shape)))
        return {"rate": rate}
    if mode == "accuracy":
        tolerance = _number(params.get("tolerance"), "Header params.tolerance", 0.0, math.inf)
        return {"tolerance": tolerance}
    if mode == "reversible":
        return {}
    raise CodecError(f"Header params.mode must be one of {', '.join(ZFP_MODES)}; got {mode!r}.")


def _decode_zfp(body: bytes, dtype: np.dtype, shape: tuple[int, ...], params: dict) -> np.ndarray:
    call_args = _zfp_decode_settings(dtype, shape, params)
    if math.prod(shape) == 0:
        _exact_length(body, 0, "zfp body of an empty tensor")
        return np.zeros(shape, dtype=dtype)
    bound = _zfp_max_nbytes(dtype, shape, params)
    exact = _zfp_rate_nbytes(shape, call_args["rate"]) if "rate" in call_args else None
    if not 0 < len(body) <= bound or len(body) % 8 or exact not in (None, len(body)):
        raise CodecError(
            f"zfp body is {len(body)} bytes; expected a non-empty multiple of 8 up to {bound} "
            f"bytes ({exact or 'any'} in this mode) for this shape. The body is truncated or "
            "corrupt."
        )
    # zfp's bit reader has no bounds check: decode from a zero-padded copy as long as the
    # most zfp could ever read, so a corrupt stream reads zeros, never foreign memory.
    padded = np.zeros(bound, dtype=np.uint8)
    padded[: len(body)] = np.frombuffer(body, dtype=np.uint8)
    zfpy = _module("zfp", "zfp")
    work = np.dtype(np.float32) if dtype == np.float16 else dtype
    try:
        ztype = zfpy.dtype_to_ztype(work)
        out = zfpy._decompress(padded, ztype, list(_zfp_shape(shape)), **call_args)
    except Exception as exc:  # zfpy raises RuntimeError / ValueError / IndexError
        raise CodecError(f"zfp decompression failed ({exc}); the body is corrupt.") from exc
    return np.asarray(out).astype(dtype).reshape(shape)


_ENCODERS = {"raw": _encode_raw, "fp16": _encode_fp16, "int8": _encode_int8, "zfp": _encode_zfp}
_DECODERS = {"raw": _decode_raw, "fp16": _decode_fp16, "int8": _decode_int8, "zfp": _decode_zfp}
