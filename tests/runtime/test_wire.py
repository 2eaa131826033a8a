"""Tests for the tensor frame: MAGIC | version | header length | JSON header | body."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pytest

from edgelesspart.errors import CodecError
from edgelesspart.runtime import wire
from edgelesspart.runtime.codecs import decode_tensor, encode_tensor, read_header


def _frame(header: dict | bytes, body: bytes = b"", *, magic=wire.MAGIC, version=1) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack(">4sBI", magic, version, len(raw)) + raw + body


def _header(body: bytes = b"", **changes) -> dict:
    header = {
        "dtype": "float32",
        "shape": [len(body) // 4],
        "codec": "raw",
        "params": {},
        "meta": {},
        "nbytes": len(body),
        "crc32": zlib.crc32(body),
    }
    header.update(changes)
    return header


@pytest.fixture
def payload() -> bytes:
    return encode_tensor(np.arange(6, dtype=np.float32).reshape(2, 3), meta={"bundle_id": "b1"})


def test_frame_layout_is_magic_version_length_json_body(payload: bytes) -> None:
    # GIVEN a raw payload of a 2x3 float32 tensor
    # WHEN its prefix is unpacked by hand
    magic, version, header_len = struct.unpack(">4sBI", payload[:9])
    header = json.loads(payload[9 : 9 + header_len])
    # THEN it follows the documented layout and the body is the little-endian bytes
    assert (magic, version) == (b"ELPT", 1)
    assert header["shape"] == [2, 3] and header["dtype"] == "float32"
    assert header["nbytes"] == 24 == len(payload) - 9 - header_len
    assert payload[9 + header_len :] == np.arange(6, dtype="<f4").tobytes()


def test_parse_frame_returns_header_and_body_view(payload: bytes) -> None:
    # GIVEN a payload  WHEN it is parsed
    header, body = wire.parse_frame(payload)
    # THEN the meta comes back and the body is a view of the payload
    assert header["meta"] == {"bundle_id": "b1"}
    assert isinstance(body, memoryview) and len(body) == 24


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (0, "Truncated payload: 0 bytes"),
        (3, "Truncated payload: 3 bytes"),  # inside the magic
        (5, "Truncated payload: 5 bytes"),  # inside the header length
        (20, "Truncated payload: header length says"),  # inside the header
        (-1, "Body length mismatch: header says nbytes=24 but 23"),  # inside the body
    ],
)
def test_truncation_in_every_region_is_a_codec_error(payload: bytes, cut: int, message: str):
    # GIVEN a payload cut short in one region  WHEN decoded  THEN CodecError says where
    with pytest.raises(CodecError, match=message):
        decode_tensor(payload[:cut])


def test_every_truncation_length_is_a_codec_error(payload: bytes) -> None:
    # GIVEN every proper prefix of a payload  WHEN decoded  THEN each one is a CodecError
    for cut in range(len(payload)):
        with pytest.raises(CodecError):
            decode_tensor(payload[:cut])


def test_wrong_magic_is_rejected(payload: bytes) -> None:
    with pytest.raises(CodecError, match=r"Bad magic b'PK\\x03\\x04', expected b'ELPT'"):
        decode_tensor(b"PK\x03\x04" + payload[4:])


def test_future_version_is_rejected(payload: bytes) -> None:
    future = payload[:4] + bytes([2]) + payload[5:]
    with pytest.raises(
        CodecError, match="Unsupported wire format version 2; this build reads version 1"
    ):
        decode_tensor(future)


def test_oversized_header_length_is_rejected_before_reading() -> None:
    hostile = struct.pack(">4sBI", b"ELPT", 1, 2**31) + b"{}"
    with pytest.raises(CodecError, match="Header length 2147483648 exceeds the 65536-byte limit"):
        read_header(hostile)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"not json", "Header is not valid UTF-8 JSON"),
        (b"\xff\xfe{}", "Header is not valid UTF-8 JSON"),
        (b"[1, 2]", "Header must be a JSON object; got list"),
        (b"[" * 30000 + b"]" * 30000, "Header is not valid UTF-8 JSON"),
        (b'{"nbytes": NaN}', "non-finite number NaN"),
    ],
)
def test_malformed_header_json_is_rejected(raw: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        read_header(_frame(raw))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"crc32": None}, "Header key 'crc32' must be int; got None"),
        ({"nbytes": True}, "Header key 'nbytes' must be int; got True"),
        ({"meta": []}, "Header key 'meta' must be dict"),
        ({"dtype": "object"}, "Header dtype 'object' is not supported; expected one of float32"),
        ({"shape": [2, -1]}, r"Header shape \[2, -1\] is invalid"),
        ({"shape": [1] * 9}, "at most 8 integer dims"),
        ({"shape": [2.0]}, "is invalid"),
        ({"shape": [2**40]}, "is invalid"),
        ({"codec": "gzip"}, "unsupported codec: Unknown codec 'gzip'. Supported codecs: raw"),
    ],
)
def test_bad_header_fields_are_rejected(changes: dict, message: str) -> None:
    # GIVEN a well-framed payload whose header has one bad field
    hostile = _frame(_header(**changes))
    # WHEN it is read  THEN the message names the field, the value and what was expected
    with pytest.raises(CodecError, match=message):
        read_header(hostile)


def test_header_claiming_a_giant_shape_is_rejected_before_allocation() -> None:
    # GIVEN a tiny payload claiming a 10^12-element tensor
    hostile = _frame(_header(shape=[1000, 1000, 1000, 1000]))
    # WHEN decoded  THEN it is refused from the header alone
    with pytest.raises(CodecError, match=r"= 4000000000000 bytes, over the limit of 268435456"):
        decode_tensor(hostile)


def test_max_bytes_is_configurable(payload: bytes) -> None:
    with pytest.raises(CodecError, match="24 bytes, over the limit of 16 bytes"):
        decode_tensor(payload, max_bytes=16)
    assert decode_tensor(payload, max_bytes=24)[0].shape == (2, 3)


def test_trailing_bytes_are_a_length_mismatch(payload: bytes) -> None:
    with pytest.raises(CodecError, match="header says nbytes=24 but 25 bytes follow"):
        decode_tensor(payload + b"\x00")


def test_flipped_body_byte_fails_the_checksum_but_not_read_header(payload: bytes) -> None:
    # GIVEN a payload with one body byte flipped in transit
    damaged = bytearray(payload)
    damaged[-3] ^= 0x40
    # WHEN only the header is read THEN it still parses (cheap path, no checksum)
    assert read_header(bytes(damaged))["meta"] == {"bundle_id": "b1"}
    # WHEN decoded THEN the checksum catches it
    with pytest.raises(CodecError, match="Body checksum mismatch"):
        decode_tensor(bytes(damaged))


def test_payload_must_be_bytes() -> None:
    with pytest.raises(CodecError, match="Payload must be bytes; got str"):
        decode_tensor("ELPT")


def test_bytearray_and_memoryview_payloads_are_accepted(payload: bytes) -> None:
    for variant in (bytearray(payload), memoryview(payload)):
        array, _ = decode_tensor(variant)
        assert array.shape == (2, 3)


def test_meta_must_be_a_json_object() -> None:
    with pytest.raises(CodecError, match="meta must be a dict with str keys"):
        encode_tensor(np.zeros(2, np.float32), meta=["bundle"])
    with pytest.raises(CodecError, match="JSON-serialisable"):
        encode_tensor(np.zeros(2, np.float32), meta={"threshold": np.float32(0.5)})
    with pytest.raises(CodecError, match="JSON-serialisable"):
        encode_tensor(np.zeros(2, np.float32), meta={"threshold": float("nan")})


def test_header_over_64_kib_is_refused_on_encode() -> None:
    with pytest.raises(CodecError, match=r"Header is \d+ bytes, over the 65536-byte limit"):
        encode_tensor(np.zeros(2, np.float32), meta={"blob": "x" * 70000})
