"""Tests for the tensor codecs: round trips, error bounds, hostile payloads, ratios."""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgelesspart.errors import CodecError, ConfigError
from edgelesspart.runtime import wire
from edgelesspart.runtime.codecs import (
    CODECS,
    LOSSLESS,
    available_codecs,
    check_codec,
    codec_error_bound,
    decode_tensor,
    encode_tensor,
    from_base64,
    read_header,
    to_base64,
)

WIRE_DTYPES = tuple(wire.WIRE_DTYPES)
FLOATS = ("float16", "float32", "float64")
LOSSY = tuple(c for c in CODECS if c not in LOSSLESS)
COMPRESSED = tuple(c for c in CODECS if c.endswith(("lz4", "zstd")) or c == "zfp")
PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _relu_map(shape=(1, 16, 16, 32), zeros=0.7, seed=0) -> np.ndarray:
    """A sparse ReLU-like float32 activation map."""
    rng = np.random.default_rng(seed)
    values = rng.gamma(2.0, 0.5, size=shape).astype(np.float32)
    values[rng.random(shape) < zeros] = 0.0
    return values


def _split(payload: bytes) -> tuple[dict, bytes]:
    (header_len,) = struct.unpack(">I", payload[5:9])
    return json.loads(payload[9 : 9 + header_len]), payload[9 + header_len :]


def _reframe(payload: bytes, body: bytes | None = None, **changes) -> bytes:
    """Rebuild a payload as a hostile sender would: edited header, body, and a valid CRC."""
    header, old_body = _split(payload)
    body = old_body if body is None else body
    params = {**header["params"], **changes.pop("params", {})}
    header.update(changes, params=params, nbytes=len(body), crc32=zlib.crc32(body))
    raw = json.dumps(header).encode()
    return payload[:5] + struct.pack(">I", len(raw)) + raw + body


def _example(dtype: str, shape=(2, 3, 4)) -> np.ndarray:
    rng = np.random.default_rng(1)
    if dtype == "bool":
        return np.asarray(rng.random(shape) < 0.5)
    if np.dtype(dtype).kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
    return rng.normal(0, 3, size=shape).astype(dtype)


# ------------------------------------------------------------------ names


def test_codec_names_and_lossless_set() -> None:
    assert CODECS == (
        "raw", "fp16", "int8", "lz4", "zstd", "zfp",
        "fp16+lz4", "int8+lz4", "zfp+lz4", "fp16+zstd", "int8+zstd",
    )  # fmt: skip
    assert LOSSLESS == {"raw", "lz4", "zstd"} and LOSSLESS <= set(CODECS)


def test_check_codec_canonicalises_and_rejects_unknown() -> None:
    assert check_codec(" FP16+LZ4 ") == "fp16+lz4"
    with pytest.raises(CodecError, match=r"Unknown codec 'zfp8'\. Supported codecs: raw, fp16, "):
        check_codec("zfp8")
    with pytest.raises(CodecError, match="Unknown codec None"):
        check_codec(None)


def test_all_codecs_are_available_in_the_dev_venv() -> None:
    assert available_codecs() == CODECS


def test_missing_optional_library_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # GIVEN lz4 cannot be imported
    monkeypatch.setitem(sys.modules, "lz4", None)
    monkeypatch.setitem(sys.modules, "lz4.frame", None)
    # THEN the lz4 codecs drop out of the available list and using one names the fix
    assert "lz4" not in available_codecs() and "zfp+lz4" not in available_codecs()
    assert "zstd" in available_codecs()
    with pytest.raises(CodecError, match="needs the optional package 'lz4'.*pip install lz4"):
        encode_tensor(np.zeros(3, np.float32), "int8+lz4")


# ------------------------------------------------------------------ lossless round trips


@pytest.mark.parametrize("codec", sorted(LOSSLESS))
@pytest.mark.parametrize("dtype", WIRE_DTYPES)
@pytest.mark.parametrize("shape", [(), (0,), (2, 0, 3), (1, 5), (2, 3, 4, 5, 6)])
def test_lossless_round_trip_is_bit_exact(codec: str, dtype: str, shape: tuple) -> None:
    # GIVEN a tensor of any supported dtype and shape (0-d and empty included)
    array = _example(dtype, shape)
    # WHEN it is encoded and decoded
    decoded, header = decode_tensor(encode_tensor(array, codec))
    # THEN the bytes, dtype and shape come back unchanged
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()
    assert header["codec"] == codec and codec_error_bound(codec, array) == 0.0


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "int32", "int64"])
def test_zfp_reversible_is_bit_exact(dtype: str) -> None:
    array = _example(dtype, (1, 5, 6, 7))
    if array.dtype.kind == "f":
        array.flat[:3] = [np.nan, np.inf, -0.0]
    for codec in ("zfp", "zfp+lz4"):
        payload = encode_tensor(array, codec, params={"mode": "reversible"})
        decoded, header = decode_tensor(payload)
        assert header["params"]["mode"] == "reversible"
        assert decoded.dtype == array.dtype and decoded.tobytes() == array.tobytes()


def test_non_native_and_non_contiguous_inputs_round_trip() -> None:
    array = np.arange(24, dtype=">f4").reshape(2, 3, 4).transpose(2, 0, 1)
    decoded, header = decode_tensor(encode_tensor(array, "lz4"))
    assert header["dtype"] == "float32" and decoded.dtype == np.float32
    np.testing.assert_array_equal(decoded, array)


def test_decoded_arrays_are_writable() -> None:
    for codec in CODECS:
        decoded, _ = decode_tensor(encode_tensor(_relu_map(), codec))
        assert decoded.flags.writeable, codec


# ------------------------------------------------------------------ lossy round trips


@pytest.mark.parametrize("codec", LOSSY)
@pytest.mark.parametrize("dtype", FLOATS)
def test_lossy_round_trip_stays_within_the_bound(codec: str, dtype: str) -> None:
    # GIVEN a float tensor
    array = _example(dtype, (1, 6, 7, 9))
    # WHEN it goes through a lossy codec
    decoded, header = decode_tensor(encode_tensor(array, codec))
    # THEN dtype and shape are restored and the error is within the documented bound
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    error = np.abs(decoded.astype(np.float64) - array.astype(np.float64)).max()
    assert error <= codec_error_bound(codec, array) < math.inf
    assert header["codec"] == codec


def test_fp16_clips_overflow_and_keeps_nan() -> None:
    # GIVEN values beyond the float16 range, infinities and a NaN
    array = np.array([1e5, -1e6, np.inf, -np.inf, np.nan, 1.5], dtype=np.float32)
    # WHEN sent as fp16
    decoded, header = decode_tensor(encode_tensor(array, "fp16"))
    # THEN overflow is clipped to +-65504 (and counted), NaN passes through
    np.testing.assert_array_equal(decoded, [65504, -65504, 65504, -65504, np.nan, 1.5])
    assert header["params"]["clipped"] == 4
    assert codec_error_bound("fp16", array) == math.inf
    assert codec_error_bound("fp16", array[[0, 1, 5]]) == pytest.approx(1e6 - 65504)
    assert codec_error_bound("fp16", np.array([1.0, np.inf], np.float16)) == math.inf
    assert codec_error_bound("fp16", np.array([1.0, -2.5], np.float16)) == 0.0


def test_int8_params_and_bound() -> None:
    # GIVEN a ReLU map whose range is [0, max]
    array = _relu_map()
    decoded, header = decode_tensor(encode_tensor(array, "int8"))
    scale = header["params"]["scale"]
    # THEN zero_point is 0, zeros stay exact and the bound is scale / 2 (+ rounding)
    assert header["params"]["zero_point"] == 0
    assert scale == pytest.approx(float(array.max()) / 255)
    assert np.all(decoded[array == 0] == 0)
    assert codec_error_bound("int8", array) == pytest.approx(scale / 2, rel=1e-3)


@pytest.mark.parametrize("value", [0.0, 3.25, -7.0])
def test_int8_constant_tensors(value: float) -> None:
    # GIVEN a constant tensor (scale 0 when the constant is 0)
    array = np.full((2, 3), value, dtype=np.float32)
    decoded, header = decode_tensor(encode_tensor(array, "int8+lz4"))
    # THEN it decodes within the bound (exactly for 0)
    assert (header["params"]["scale"] == 0) == (value == 0)
    assert np.abs(decoded - array).max() <= codec_error_bound("int8", array)
    assert value != 0 or np.array_equal(decoded, array)


def test_zfp_fixed_rate_gives_the_bit_budget() -> None:
    # GIVEN a float32 map whose dims are multiples of 4
    array = _example("float32", (1, 16, 16, 16))
    payload = encode_tensor(array, "zfp", params={"mode": "rate", "rate": 8})
    decoded, header = decode_tensor(payload)
    # THEN rate 8 is exactly 4x on the body, and the bound is documented as none
    assert header["nbytes"] == array.nbytes // 4
    assert codec_error_bound("zfp", array, {"mode": "rate", "rate": 8}) == math.inf
    assert np.abs(decoded - array).max() < 0.05 * np.abs(array).max()


def test_zfp_default_is_accuracy_with_relative_tolerance() -> None:
    array = _relu_map()
    header = read_header(encode_tensor(array, "zfp"))
    assert header["params"] == {
        "mode": "accuracy",
        "tolerance": pytest.approx(1e-2 * float(array.max())),
    }
    absolute = read_header(encode_tensor(array, "zfp", params={"tolerance": 0.5}))
    assert absolute["params"]["tolerance"] == 0.5


def test_zfp_integers_default_to_reversible() -> None:
    array = _example("int32", (3, 5))
    decoded, header = decode_tensor(encode_tensor(array, "zfp"))
    assert header["params"] == {"mode": "reversible"}
    np.testing.assert_array_equal(decoded, array)


def test_zfp_squeezes_the_batch_dim() -> None:
    # GIVEN a batch-1 (1, 8, 8, 16) map, which zfp would pad to 4 along the batch dim
    zfpy = pytest.importorskip("zfpy")
    array = _relu_map((1, 8, 8, 16))
    tolerance = 1e-2 * float(array.max())
    with_batch = len(zfpy.compress_numpy(array, tolerance=tolerance, write_header=False))
    # WHEN encoded with our zfp codec
    payload = encode_tensor(array, "zfp", params={"tolerance": tolerance})
    # THEN the body is smaller than compressing with the batch dim, and the shape is restored
    assert read_header(payload)["nbytes"] < with_batch
    assert decode_tensor(payload)[0].shape == (1, 8, 8, 16)


def test_zfp_handles_more_than_four_dims_and_empty_tensors() -> None:
    array = _example("float32", (2, 3, 4, 5, 6))
    decoded, _ = decode_tensor(encode_tensor(array, "zfp+lz4"))
    assert decoded.shape == array.shape
    assert np.abs(decoded - array).max() <= codec_error_bound("zfp", array)
    empty, header = decode_tensor(encode_tensor(np.zeros((1, 0, 4), np.float32), "zfp"))
    assert empty.shape == (1, 0, 4) and header["nbytes"] == 0


def test_tiny_maps_can_expand_under_zfp() -> None:
    # GIVEN a 1x1x64 map (GAP-like)  WHEN zfp'd at rate 8  THEN it is honestly larger than 4x
    array = _relu_map((1, 1, 1, 3))
    payload = encode_tensor(array, "zfp", params={"mode": "rate", "rate": 8})
    assert read_header(payload)["nbytes"] > array.nbytes // 4


# ------------------------------------------------------------------ input validation


@pytest.mark.parametrize(
    ("codec", "array", "params", "message"),
    [
        ("fp16", np.arange(3, dtype=np.int32), None, "Codec 'fp16' cannot carry int32 tensors"),
        ("int8+lz4", np.ones(3, bool), None, "cannot carry bool tensors.*Use 'raw', 'lz4'"),
        ("zfp", np.ones(3, np.uint8), None, "Codec 'zfp' cannot carry uint8 tensors"),
        ("int8", np.array([1.0, np.nan]), None, "cannot carry NaN/inf; the tensor has 1 non"),
        ("zfp", np.array([1.0, np.inf]), None, "cannot carry NaN/inf"),
        ("raw", np.ones(3, np.complex64), None, "Cannot encode a complex64 tensor"),
        ("raw", [1.0, 2.0], None, "Expected a numpy.ndarray; got list"),
        ("raw", np.ones(3), {"rate": 8}, r"Unknown parameter\(s\) \['rate'\] for codec 'raw'"),
        ("zfp", np.ones(3), {"mode": "fast"}, "zfp params .* are invalid"),
        ("zfp", np.ones(3), {"mode": "reversible", "rate": 8}, "zfp params .* are invalid"),
        ("zfp", np.ones(3), {"tolerance": 1, "rel_tolerance": 0.1}, "either 'tolerance' or"),
        ("zfp", np.ones(3), {"tolerance": -1.0}, r"zfp tolerance must be a number in"),
        ("zfp", np.ones(8), {"mode": "rate", "rate": 2}, r"rate 2.0 is too low .* rate >= 3"),
        ("zfp", np.ones(3, np.int32), {"mode": "accuracy"}, "'accuracy' needs a float tensor"),
        ("zstd", np.ones(3), {"level": 99}, r"zstd level must be a number in \[1, 22\]"),
        ("int8", np.array([-1e308, 1e308]), None, "too wide for 'int8'"),
    ],
)
def test_bad_inputs_raise_codec_error(codec, array, params, message) -> None:
    with pytest.raises(CodecError, match=message):
        encode_tensor(array, codec, params=params)


def test_error_bound_validates_like_encode() -> None:
    with pytest.raises(CodecError, match="cannot carry int32"):
        codec_error_bound("int8", np.ones(3, np.int32))
    assert codec_error_bound("zfp", np.ones(3, np.int64)) == 0.0


# ------------------------------------------------------------------ meta, header, base64


def test_meta_round_trips_and_read_header_is_cheap() -> None:
    meta = {"bundle_id": "abc123", "segment": 1, "threshold": 0.7, "tags": ["edge", None]}
    payload = encode_tensor(_relu_map(), "int8+zstd", meta=meta)
    header = read_header(payload)
    assert header["meta"] == meta and header["codec"] == "int8+zstd"
    assert header["shape"] == [1, 16, 16, 32] and header["dtype"] == "float32"
    assert decode_tensor(payload)[1]["meta"] == meta


def test_base64_round_trip_and_strictness() -> None:
    payload = encode_tensor(_relu_map(), "fp16+lz4")
    text = to_base64(payload)
    assert isinstance(text, str) and from_base64(text) == payload
    with pytest.raises(CodecError, match="Invalid base64"):
        from_base64(text[:-1])
    with pytest.raises(CodecError, match="Invalid base64"):
        from_base64(text[:10] + "\n" + text[10:])
    with pytest.raises(CodecError, match="Invalid base64"):
        from_base64("tensor ✓")
    with pytest.raises(CodecError, match="Expected base64 text \\(str\\); got bytes"):
        from_base64(payload)


# ------------------------------------------------------------------ hostile and corrupt payloads


@pytest.mark.parametrize("codec", COMPRESSED)
def test_flipped_body_bytes_of_compressed_codecs_are_caught(codec: str) -> None:
    # GIVEN a compressed payload with a byte flipped in the middle of its body
    payload = bytearray(encode_tensor(_relu_map(), codec))
    payload[-len(payload) // 4] ^= 0xFF
    # WHEN decoded  THEN the checksum reports the corruption
    with pytest.raises(CodecError, match="Body checksum mismatch"):
        decode_tensor(bytes(payload))


@pytest.mark.parametrize("codec", COMPRESSED)
def test_truncated_compressed_body_with_valid_checksum_is_caught(codec: str) -> None:
    # GIVEN a hostile sender who cuts the body and fixes nbytes and crc32 (zfp: fixed rate,
    # the one zfp mode whose stream length is known in advance)
    params = {"mode": "rate", "rate": 8} if codec.startswith("zfp") else None
    payload = encode_tensor(_relu_map(), codec, params=params)
    _, body = _split(payload)
    hostile = _reframe(payload, body=body[: len(body) // 2])
    # WHEN decoded  THEN the codec layer refuses it
    with pytest.raises(CodecError, match="truncated or corrupt|decompression failed|expected"):
        decode_tensor(hostile)


@pytest.mark.parametrize("codec", CODECS)
@PROPERTY
@given(data=st.data())
def test_garbled_bodies_with_valid_checksum_never_crash(codec: str, data: st.DataObject) -> None:
    # GIVEN a payload whose body a hostile sender garbles (checksum recomputed)
    payload = encode_tensor(_relu_map((1, 5, 6, 7)), codec)
    _, body = _split(payload)
    body = bytearray(body)
    for _ in range(data.draw(st.integers(1, 8))):
        index = data.draw(st.integers(0, len(body) - 1))
        body[index] = data.draw(st.integers(0, 255))
    # WHEN decoded  THEN it is either a CodecError or a tensor of the declared shape and dtype
    try:
        decoded, _ = decode_tensor(_reframe(payload, body=bytes(body)))
    except CodecError:
        return
    assert decoded.shape == (1, 5, 6, 7) and decoded.dtype == np.float32


@pytest.mark.parametrize(
    ("codec", "changes", "message"),
    [
        ("lz4", {"params": {"inner_nbytes": 10**9}}, "inner_nbytes is 1000000000, expected 840"),
        ("zstd", {"params": {"inner_nbytes": "big"}}, "inner_nbytes must be an int >= 0"),
        ("zfp+lz4", {"params": {"inner_nbytes": 10**9}}, "too large for a zfp stream"),
        ("int8", {"params": {"scale": "x"}}, "params.scale must be a number"),
        ("int8", {"params": {"scale": 1e300}}, "params.scale must be a number in"),
        ("int8", {"params": {"scale": 10**400}}, "params.scale must be a number in"),
        (
            "int8",
            {"params": {"zero_point": 300}},
            r"params.zero_point must be a number in \[0, 255",
        ),
        ("zfp", {"params": {"mode": "magic"}}, "params.mode must be one of accuracy, rate"),
        ("zfp", {"params": {"mode": "rate", "rate": 0.1}}, "rate 0.1 is too low"),
        ("zfp", {"dtype": "int8"}, "Codec 'zfp' cannot carry int8 tensors"),
        ("fp16", {"shape": [1, 5, 6, 8]}, "fp16 body: got 420 bytes, expected 480"),
        ("raw", {"dtype": "float64"}, "raw body: got 840 bytes, expected 1680"),
        ("int8", {"codec": "zfp8"}, "unsupported codec: Unknown codec 'zfp8'"),
    ],
)
def test_hostile_headers_with_valid_checksum_are_rejected(codec, changes, message) -> None:
    hostile = _reframe(encode_tensor(_relu_map((1, 5, 6, 7)), codec), **changes)
    with pytest.raises(CodecError, match=message):
        decode_tensor(hostile)


def test_zfp_body_longer_than_possible_is_rejected() -> None:
    payload = encode_tensor(_relu_map((1, 4, 4, 4)), "zfp")
    hostile = _reframe(payload, body=bytes(8 * 10_000))
    with pytest.raises(CodecError, match="zfp body is 80000 bytes; expected a non-empty multiple"):
        decode_tensor(hostile)


def test_bool_body_with_invalid_bytes_is_rejected() -> None:
    payload = encode_tensor(np.array([True, False, True]), "raw")
    with pytest.raises(CodecError, match="bool body holds bytes other than 0 and 1"):
        decode_tensor(_reframe(payload, body=b"\x01\x02\x00"))


# ------------------------------------------------------------------ properties


@PROPERTY
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(WIRE_DTYPES).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
    ),
    codec=st.sampled_from(sorted(LOSSLESS)),
)
def test_property_lossless_codecs_are_bit_exact(array: np.ndarray, codec: str) -> None:
    decoded, _ = decode_tensor(encode_tensor(array, codec, meta={"k": 1}))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    assert decoded.tobytes() == array.tobytes()


def _finite_floats(dtype: str, magnitude: float = 1e4):
    return hnp.arrays(
        dtype=np.dtype(dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
        elements=st.floats(
            -magnitude, magnitude, width=np.dtype(dtype).itemsize * 8, allow_subnormal=False
        ),
    )


@PROPERTY
@given(
    array=st.sampled_from(FLOATS).flatmap(_finite_floats),
    codec=st.sampled_from(LOSSY),
)
def test_property_lossy_codecs_stay_within_bound(array: np.ndarray, codec: str) -> None:
    decoded, _ = decode_tensor(encode_tensor(array, codec))
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    error = np.abs(decoded.astype(np.float64) - array.astype(np.float64)).max(initial=0.0)
    assert error <= codec_error_bound(codec, array)


@PROPERTY
@given(
    array=st.sampled_from(FLOATS).flatmap(_finite_floats),
    tolerance=st.floats(1e-6, 10.0),
    relative=st.booleans(),
)
def test_property_zfp_accuracy_meets_tolerance(array, tolerance: float, relative: bool) -> None:
    params = {"rel_tolerance": min(tolerance, 1.0)} if relative else {"tolerance": tolerance}
    decoded, _ = decode_tensor(encode_tensor(array, "zfp", params=params))
    error = np.abs(decoded.astype(np.float64) - array.astype(np.float64)).max(initial=0.0)
    assert error <= codec_error_bound("zfp", array, params)


@PROPERTY
@given(
    array=hnp.arrays(
        dtype=st.sampled_from(["float32", "float64"]).map(np.dtype),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4),
    )
)
def test_property_fp16_handles_any_float(array: np.ndarray) -> None:
    # GIVEN any float32/float64 values, NaN and inf included
    decoded, header = decode_tensor(encode_tensor(array, "fp16+zstd"))
    # THEN NaN stays NaN and every other value is within the bound
    assert np.array_equal(np.isnan(decoded), np.isnan(array))
    finite = ~np.isnan(array)
    with np.errstate(invalid="ignore"):
        error = np.abs(decoded[finite].astype(np.float64) - array[finite]).max(initial=0.0)
    assert np.isnan(error) or error <= codec_error_bound("fp16", array)
    assert header["params"]["clipped"] == int(np.count_nonzero(np.abs(array) > 65504))


# ------------------------------------------------------------------ ratios


def test_int8_lz4_beats_raw_by_more_than_4x_on_sparse_relu_maps() -> None:
    # GIVEN a sparse ReLU-like activation map (70 % zeros)
    array = _relu_map((1, 32, 32, 64), zeros=0.7)
    raw = len(encode_tensor(array, "raw"))
    # WHEN quantised and lz4-compressed
    packed = len(encode_tensor(array, "int8+lz4"))
    # THEN the payload is more than 4x smaller than raw
    assert raw / packed > 4.0


def test_codec_packages_names_the_optional_libraries():
    from edgelesspart.runtime.codecs import codec_packages

    assert codec_packages("raw") == () and codec_packages("int8") == ()
    assert codec_packages("zfp+lz4") == ("zfpy", "lz4")
    assert codec_packages("FP16+ZSTD") == ("zstandard",)
    with pytest.raises(CodecError, match="Unknown codec"):
        codec_packages("gzip")


def test_require_codec_refuses_a_codec_whose_library_is_missing(monkeypatch):
    from edgelesspart.runtime import codecs
    from edgelesspart.runtime.resilience import OffloadPolicy

    monkeypatch.setitem(codecs._OPTIONAL, "zfp", ("no_such_module_zfpy", "zfpy"))
    assert codecs.require_codec("int8+zstd") == "int8+zstd"
    with pytest.raises(CodecError, match="pip install zfpy"):
        codecs.require_codec("zfp+lz4")
    # an edge whose bundle chose zfp refuses to start instead of degrading every offload
    with pytest.raises(ConfigError, match="pip install zfpy"):
        OffloadPolicy(codec="zfp")
