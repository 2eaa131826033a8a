"""Hypothesis strategies and checks shared by the fuzz tests of both services.

Every strategy here produces a request that is malformed by construction (see each docstring),
so the only right answer is a 4xx error; :class:`Cases` counts the cases and checks each answer.
"""

from __future__ import annotations

import base64
import json
import struct
import zlib
from collections import Counter

from hypothesis import HealthCheck, assume, settings
from hypothesis import strategies as st

from edgelesspart.runtime import codecs, wire

#: A fuzz request slower than this counts as a hang.
SLOW_S = 5.0


def fuzz_settings(examples: int):
    """Deterministic, database-free hypothesis settings running ``examples`` cases."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


# --- strategies ------------------------------------------------------------------------------

#: Ints beyond float range (JSON allows them; ``float()`` overflows on them).
huge_ints = st.integers(10**309, 10**4000) | st.integers(-(10**4000), -(10**309))
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | huge_ints
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                max_size=4),
    max_leaves=10,
)
ascii_text = st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=24)


def valid_shape(shape, spec_shape) -> bool:
    """Whether ``shape`` could be a real input (a batch of the bundle's samples, or one)."""
    if not isinstance(shape, list):
        return False
    sample = list(spec_shape)
    return shape == sample or (len(shape) == len(sample) + 1 and shape[1:] == sample)


@st.composite
def frames(draw, bundle_id: str, spec_shape: tuple[int, ...]):
    """A tensor frame with at least one field wrong (header, sizes, checksum, body, prefix)."""
    dims = st.integers(-3, 2**33) | st.sampled_from([0, 1, 2, 3, 16, 32])
    shape = draw(st.lists(dims, max_size=9) | json_values)
    assume(not valid_shape(shape, spec_shape))
    body = draw(st.binary(max_size=300))
    header = {
        "dtype": draw(st.sampled_from(list(wire.WIRE_DTYPES)) | st.text(max_size=10)),
        "shape": shape,
        "codec": draw(st.sampled_from(codecs.CODECS) | st.text(max_size=12)),
        "params": draw(st.dictionaries(st.sampled_from(["mode", "rate", "tolerance", "scale",
                                                        "inner_nbytes", "level", "x"]),
                                       scalars, max_size=3) | json_values),
        "meta": draw(st.just({"bundle_id": bundle_id}) | st.dictionaries(st.text(max_size=9),
                                                                          json_values,
                                                                          max_size=3)),
        "nbytes": draw(st.just(len(body)) | st.integers(-10, 2**40) | json_values),
        "crc32": draw(st.just(zlib.crc32(body)) | st.integers(-1, 2**33) | json_values),
    }
    for key in draw(st.sets(st.sampled_from(sorted(header)), max_size=2)):
        del header[key]
    text = json.dumps(header).encode()
    text = draw(st.just(text) | st.binary(max_size=64) | st.just(b"[1, 2]"))
    magic = draw(st.just(wire.MAGIC) | st.binary(min_size=4, max_size=4))
    version = draw(st.just(wire.VERSION) | st.integers(0, 255))
    length = draw(st.just(len(text)) | st.integers(0, 2**32 - 1))
    payload = struct.pack(">4sBI", magic, version, length) + text + body
    cut = draw(st.none() | st.integers(0, len(payload)))
    return payload if cut is None else payload[:cut]


def small_nested(leaf):
    """Nested lists at most 5 wide: never a 32x32 image, so never a valid input."""
    return st.recursive(leaf, lambda inner: st.lists(inner, max_size=5), max_leaves=40)


@st.composite
def json_bodies(draw):
    """A JSON (or almost JSON) body that is not a valid inference request."""
    leaf = st.floats() | st.integers(-5, 5) | st.text(max_size=4) | st.none() | st.booleans()
    kind = draw(st.sampled_from(["value", "inputs", "b64", "keys", "not-json", "extreme"]))
    if kind == "not-json":
        return draw(st.binary(max_size=200).filter(lambda b: _not_json(b)))
    if kind == "extreme":
        return draw(extreme_json())
    if kind == "value":
        value = draw(json_values)
        assume(not (isinstance(value, dict) and ("inputs" in value or "tensor_b64" in value)))
    elif kind == "inputs":
        value = {"inputs": draw(small_nested(leaf) | json_values)}
    elif kind == "b64":
        raw = draw(st.binary(max_size=120))
        value = {"tensor_b64": draw(st.just(base64.b64encode(raw).decode()) | ascii_text
                                    | json_values)}
    else:
        value = draw(st.dictionaries(st.sampled_from(["threshold", "bundle_id", "input",
                                                      "tensor", "b64"]), json_values, max_size=4))
    return json.dumps(value).encode()


def unparseable_json():
    """Well-formed JSON that Python's parser refuses: nesting deeper than the recursion limit,
    or an int literal over 4,300 digits."""
    depth = st.integers(2_000, 60_000).map(lambda n: b"[" * n + b"]" * n)
    digits = st.integers(4_301, 20_000).map(lambda n: b'{"inputs": [' + b"9" * n + b"]}")
    threshold = st.integers(4_301, 9_000).map(
        lambda n: b'{"inputs": [[0.5]], "threshold": ' + b"7" * n + b"}")
    return depth | digits | threshold


def extreme_json():
    """:func:`unparseable_json`, or ``inputs`` with numbers beyond the float32 range."""
    too_big = st.sampled_from([b'{"inputs": [[[3.5e38, 1.0]]]}', b'{"inputs": [[1e300]]}',
                               b'{"inputs": [[-1.7976931348623157e308]]}'])
    return unparseable_json() | too_big


def _not_json(data: bytes) -> bool:
    try:
        json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return True
    return False


def png_bomb(width: int, height: int) -> bytes:
    """A PNG whose header declares ``width`` x ``height`` pixels (no real pixel data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk
            + struct.pack(">I", zlib.crc32(chunk)))


@st.composite
def bad_images(draw, real_png: bytes):
    """Bytes sent as an image that are not a decodable PNG/JPEG within the pixel limit."""
    kind = draw(st.sampled_from(["random", "png-junk", "jpeg-junk", "truncated", "bomb"]))
    if kind == "random":
        data = draw(st.binary(max_size=300))
    elif kind == "png-junk":
        data = b"\x89PNG\r\n\x1a\n" + draw(st.binary(max_size=300))
    elif kind == "jpeg-junk":
        data = b"\xff\xd8\xff" + draw(st.binary(max_size=300))
    elif kind == "truncated":
        data = real_png[: draw(st.integers(0, len(real_png) // 2))]
    else:
        side = st.integers(4097, 2**31 - 1)
        data = png_bomb(draw(side), draw(side))
    return data, draw(st.sampled_from(["image/png", "image/jpeg"]))


def bad_thresholds(check):
    """Values a client might send as a threshold that the service must refuse."""
    candidates = (
        st.floats() | st.integers(-100, 100) | huge_ints | ascii_text
        | st.sampled_from(["nan", "inf", "-inf", "1e309", "-0.001", "1.0001", "", "0,5"])
    )
    return candidates.filter(lambda value: not accepted(check, value))


# --- auth: values that must never authenticate (and never crash the verifier) ---------------

#: Text a client could put in an HTTP header: printable ASCII and Latin-1 (no CR/LF).
header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255, exclude_characters="\x7f"),
                      max_size=40)
#: Ints of any size: small, near "now", 12+ digits, and beyond float range.
any_ints = (st.integers() | st.integers(1_600_000_000, 2_000_000_000) | st.integers(10**11, 10**20)
            | huge_ints)
#: Any float, nan and +-inf included.
any_floats = st.floats() | st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308])
#: What an ``auth.ts`` / ``auth.sig`` field of a Lambda event could hold.
auth_field_values = (any_ints | any_floats | st.booleans() | st.none() | st.text(max_size=80)
                     | st.lists(any_ints | any_floats | st.text(max_size=8), max_size=4)
                     | json_values | st.sampled_from(["\ud800" * 64, "a" * 64, "0" * 64]))


def _number_text(value) -> str:
    try:
        return str(value)
    except ValueError:  # an int over Python's digit limit for str()
        return "9" * 5000


def timestamp_headers():
    """An ``X-EdgeLessPart-Timestamp`` value: numbers of any size or kind as text, or junk."""
    return (any_ints.map(_number_text) | any_floats.map(repr) | header_text
            | json_values.map(lambda v: json.dumps(v, default=str))
            | st.sampled_from(["nan", "inf", "-inf", "1e400", "0x10", " 1", "1 ", "", "-0"]))


def signature_headers():
    """An ``X-EdgeLessPart-Signature`` value that is not the HMAC of anything sent."""
    hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
    return (hex64.map(lambda h: "v1=" + h) | header_text.map(lambda t: "v1=" + t) | header_text
            | hex64 | st.sampled_from(["v1=", "v2=" + "0" * 64, "V1=" + "a" * 64]))


def bearer_headers(secret: str):
    """An ``Authorization`` value that is not ``Bearer <secret>``."""
    near = st.sampled_from([f"Bearer {secret[:-1]}", f"bearer {secret}", f"Bearer  {secret}",
                            f"Bearer {secret} ", f"Basic {secret}", secret, "Bearer"])
    return (header_text.map(lambda t: "Bearer " + t) | header_text | near).filter(
        lambda v: v != f"Bearer {secret}")


def auth_fields():
    """An event's ``auth`` field: not an object, or ``{v, ts, sig}`` with any of them absurd."""
    fields = st.fixed_dictionaries({}, optional={"v": auth_field_values, "ts": auth_field_values,
                                                 "sig": auth_field_values})
    return json_values | fields


def accepted(check, value) -> bool:
    try:
        check(value)
    except Exception:
        return False
    return True


# --- checking --------------------------------------------------------------------------------


class Cases:
    """Counts fuzz cases and checks each answer is a fast 4xx JSON error with a message.

    ``counts`` and ``codes`` are the calling module's totals (cases per name, answers per
    status and error code).
    """

    def __init__(self, name: str, counts: dict[str, int], codes: Counter) -> None:
        self.name, self.counts, self.codes = name, counts, codes
        self.count = 0

    def check(self, status: int, body: bytes, elapsed_s: float, content_type: str) -> None:
        self.count += 1
        assert elapsed_s < SLOW_S, f"took {elapsed_s:.1f} s"
        assert 400 <= status < 500, (status, body[:300])
        assert content_type.startswith("application/json"), content_type
        error = json.loads(body)["error"]
        assert isinstance(error["message"], str) and error["message"].strip(), error
        assert error["status"] == status and isinstance(error["code"], str)
        self.codes[f"{status} {error['code']}"] += 1

    def done(self, minimum: int) -> None:
        """Add this test's cases to the module's totals; fail if fewer than ``minimum`` ran."""
        self.counts[self.name] = self.counts.get(self.name, 0) + self.count
        assert self.count >= minimum, f"{self.name}: only {self.count} cases ran"
