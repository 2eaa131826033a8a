"""Framing of one tensor on the wire between the edge part and the cloud part (never pickle).

Layout (version 1)::

    MAGIC b"ELPT" (4 bytes) | version (1 byte) | header length (uint32 big-endian)
    | header (UTF-8 JSON object) | body (header["nbytes"] bytes)

Header keys: ``dtype`` (original dtype name), ``shape`` (list of ints, batch dim included),
``codec``, ``params`` (codec parameters), ``meta`` (free JSON object from the caller),
``nbytes`` (body length) and ``crc32`` (CRC-32 of the body, so a flipped body byte is caught
for every codec, including the ones without their own checksum such as ``raw`` and ``zfp``).

Every check here guards the receiver against a hostile or corrupt payload *before* anything
is allocated: the header is at most 64 KiB, has at most 8 dims, and the decoded tensor
(element count × itemsize) must fit under ``max_bytes``. This module knows the frame, not the
codecs; :mod:`edgelesspart.runtime.codecs` builds on it.
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from typing import Any

from edgelesspart.errors import CodecError

#: Most boundary rows one offload request carries: the edge's offloaders split larger offloads
#: and the cloud part refuses more (it lives here so neither side imports the other).
MAX_REQUEST_ROWS = 256

MAGIC = b"ELPT"
VERSION = 1
PREFIX = struct.Struct(">4sBI")
MAX_HEADER_BYTES = 64 * 1024
MAX_DIMS = 8
MAX_DIM = 2**32
DEFAULT_MAX_BYTES = 256 * 2**20
WIRE_DTYPES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "float64": 8,
    "int8": 1,
    "uint8": 1,
    "int32": 4,
    "int64": 8,
    "bool": 1,
}
_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "dtype": str,
    "shape": list,
    "codec": str,
    "params": dict,
    "meta": dict,
    "nbytes": int,
    "crc32": int,
}

Header = dict[str, Any]


def build_frame(
    *, dtype: str, shape: tuple[int, ...], codec: str, params: dict, meta: dict, body: bytes
) -> bytes:
    """Frame an encoded body with its header.

    Args:
        dtype: Name of the original dtype (one of ``WIRE_DTYPES``).
        shape: Shape of the original tensor.
        codec: Canonical codec name.
        params: JSON-serialisable codec parameters.
        meta: JSON-serialisable caller metadata (bundle id, segment, threshold, ...).
        body: The encoded tensor bytes.

    Returns:
        The complete payload.

    Raises:
        CodecError: ``meta``/``params`` are not JSON objects or the header exceeds 64 KiB.
    """
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise CodecError(
            f"meta must be a dict with str keys (a JSON object); got {type(meta).__name__}."
        )
    header = {
        "dtype": dtype,
        "shape": [int(d) for d in shape],
        "codec": codec,
        "params": params,
        "meta": meta,
        "nbytes": len(body),
        "crc32": zlib.crc32(body),
    }
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CodecError(
            f"meta and params must be JSON-serialisable (str, int, finite float, bool, None, "
            f"list, dict); {exc}. Convert numpy scalars with .item() first."
        ) from exc
    if len(text) > MAX_HEADER_BYTES:
        raise CodecError(
            f"Header is {len(text)} bytes, over the {MAX_HEADER_BYTES}-byte limit; "
            "keep meta small (ids and numbers, not data)."
        )
    return b"".join((PREFIX.pack(MAGIC, VERSION, len(text)), text, body))


def parse_frame(
    payload: bytes | bytearray | memoryview,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    verify_body: bool = True,
) -> tuple[Header, memoryview]:
    """Split a payload into its validated header and its body.

    Args:
        payload: The bytes received.
        max_bytes: Largest decoded tensor (element count × itemsize) to accept.
        verify_body: Also check the body CRC-32 (skip it to read only the header cheaply).

    Returns:
        ``(header, body)``; ``body`` is a zero-copy view of ``payload``.

    Raises:
        CodecError: Any framing, header or size problem; the message names what was
            received and what was expected.
    """
    if not isinstance(payload, (bytes, bytearray, memoryview)):
        raise CodecError(f"Payload must be bytes; got {type(payload).__name__}.")
    view = memoryview(payload).cast("B")
    header_len = _check_prefix(view)
    end = PREFIX.size + header_len
    if len(view) < end:
        raise CodecError(
            f"Truncated payload: header length says {header_len} bytes but only "
            f"{len(view) - PREFIX.size} follow the {PREFIX.size}-byte prefix."
        )
    header = _parse_json(view[PREFIX.size : end])
    validate_header(header, max_bytes=max_bytes)
    body = view[end:]
    if len(body) != header["nbytes"]:
        raise CodecError(
            f"Body length mismatch: header says nbytes={header['nbytes']} but {len(body)} "
            "bytes follow the header (truncated or padded payload)."
        )
    if verify_body and zlib.crc32(body) != header["crc32"]:
        raise CodecError(
            f"Body checksum mismatch: header crc32={header['crc32']}, body has "
            f"{zlib.crc32(body)}; the payload was corrupted in transit."
        )
    return header, body


def _check_prefix(view: memoryview) -> int:
    if len(view) < PREFIX.size:
        raise CodecError(
            f"Truncated payload: {len(view)} bytes, expected at least the {PREFIX.size}-byte "
            f"prefix (magic {MAGIC!r}, version, header length)."
        )
    magic, version, header_len = PREFIX.unpack(view[: PREFIX.size])
    if magic != MAGIC:
        raise CodecError(
            f"Bad magic {bytes(magic)!r}, expected {MAGIC!r}: this is not an EdgeLessPart "
            "tensor payload (was it pickled, base64-encoded twice, or sent raw?)."
        )
    if version != VERSION:
        raise CodecError(
            f"Unsupported wire format version {version}; this build reads version {VERSION}. "
            "Use the same edgelesspart version on the edge and in the cloud."
        )
    if header_len > MAX_HEADER_BYTES:
        raise CodecError(f"Header length {header_len} exceeds the {MAX_HEADER_BYTES}-byte limit.")
    return header_len


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed")


def _parse_json(raw: memoryview) -> Header:
    try:
        header = json.loads(bytes(raw).decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CodecError(f"Header is not valid UTF-8 JSON: {exc}.") from exc
    if not isinstance(header, dict):
        raise CodecError(f"Header must be a JSON object; got {type(header).__name__}.")
    return header


def validate_header(header: Header, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
    """Check the codec-independent header fields and the size limit.

    Raises:
        CodecError: A missing or mistyped key, a bad dtype or shape, or a tensor over
            ``max_bytes``.
    """
    for key, kind in _REQUIRED.items():
        value = header.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise CodecError(
                f"Header key {key!r} must be {getattr(kind, '__name__', kind)}; "
                f"got {value!r}. Required keys: {', '.join(_REQUIRED)}."
            )
    if header["dtype"] not in WIRE_DTYPES:
        raise CodecError(
            f"Header dtype {header['dtype']!r} is not supported; "
            f"expected one of {', '.join(WIRE_DTYPES)}."
        )
    shape = header["shape"]
    if len(shape) > MAX_DIMS or not all(_is_dim(d) for d in shape):
        raise CodecError(
            f"Header shape {shape!r} is invalid; expected at most {MAX_DIMS} integer dims, "
            f"each between 0 and {MAX_DIM}."
        )
    if header["nbytes"] < 0:
        raise CodecError(f"Header nbytes must be >= 0; got {header['nbytes']}.")
    size = math.prod(shape) * WIRE_DTYPES[header["dtype"]]
    if size > max_bytes:
        raise CodecError(
            f"Header claims a {header['dtype']} tensor of shape {tuple(shape)} = {size} bytes, "
            f"over the limit of {max_bytes} bytes; raise max_bytes if this is legitimate."
        )


def _is_dim(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_DIM
