"""What a split costs on the wire: encoded boundary bytes per codec and the Lambda payload rule.

Pure Python (no TensorFlow), used by the planner. A profiled cut point may carry
``encoded_bytes`` (codec -> mean wire payload bytes per sample, header included, measured on
real samples by :mod:`edgelesspart.profiling.profiler`); without it only the raw float32
``boundary_bytes`` are known and the codec counts as ``raw``.

* **Which codec a split is planned with** (:func:`boundary_payload`): a fixed codec uses its
  own bytes; ``"auto"`` plans with the smallest *lossless* codec measured at the cut point, an
  upper bound of what the build's accuracy-checked choice will send (lossless codecs always
  qualify, and the build picks the smallest qualifying one).
* **AWS Lambda** (a cloud device with ``provider == "lambda"``): a synchronous invocation
  carries at most :data:`~edgelesspart.runtime.offload.LAMBDA_PAYLOAD_LIMIT` bytes, and the
  tensor travels base64-encoded inside a JSON event (:func:`lambda_event_bytes`), which is
  also what the link carries (:func:`wire_bytes`, the plan's ``boundary_wire_bytes``). When the
  planned codec does not fit, ``"auto"`` takes the smallest measured codec that does; a fixed
  codec, or a split where no codec fits, is refused with a :class:`PlanError` naming the cut
  point, its bytes per codec and the limit.

The rule is per sample at batch 1, as the edge offloads a single request; a request with
several pending rows sends proportionally more, which the Lambda offloader refuses (413).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from edgelesspart.errors import PlanError
from edgelesspart.profiling.devices import DeviceProfile
from edgelesspart.profiling.profile import CutPointProfile, ModelProfile
from edgelesspart.runtime.codecs import LOSSLESS, check_codec
from edgelesspart.runtime.offload import LAMBDA_PAYLOAD_LIMIT

AUTO = "auto"
#: Bytes of the JSON wrapper around the base64 text: ``{"tensor_b64": "", "threshold": x}``
#: is 40-50 bytes with a float threshold, and a signed event's ``auth`` field (timestamp and
#: HMAC hex) adds about 110; 256 leaves room for both with margin.
LAMBDA_JSON_OVERHEAD = 256

__all__ = [
    "AUTO",
    "LAMBDA_JSON_OVERHEAD",
    "LAMBDA_PAYLOAD_LIMIT",
    "BoundaryPayload",
    "boundary_payload",
    "check_plan_codec",
    "codec_bytes",
    "lambda_event_bytes",
    "largest_bytes",
    "payload_limit",
    "payload_parameters",
    "split_payloads",
    "wire_bytes",
]


@dataclass(frozen=True)
class BoundaryPayload:
    """The codec a split is planned with and what one sample's boundary costs on the wire.

    Attributes:
        cut_point: the split.
        codec: the codec the link time is computed with.
        nbytes: wire payload bytes per sample (raw float32 bytes when nothing was measured).
        measured: whether ``nbytes`` comes from ``encoded_bytes`` (False: raw fallback).
        reason: why this codec (fixed, auto, or a smaller codec to fit the Lambda limit).
    """

    cut_point: str
    codec: str
    nbytes: int
    measured: bool
    reason: str

    def to_dict(self) -> dict[str, object]:
        """Return a JSON-ready dict."""
        return {
            "cut_point": self.cut_point,
            "codec": self.codec,
            "nbytes": self.nbytes,
            "measured": self.measured,
            "reason": self.reason,
        }


def check_plan_codec(codec: str) -> str:
    """Return ``"auto"`` or the canonical codec name.

    Raises:
        PlanError: an unknown codec (the message lists the choices).
    """
    if isinstance(codec, str) and codec.strip().lower() == AUTO:
        return AUTO
    try:
        return check_codec(codec)
    except ValueError as exc:
        raise PlanError(f"{exc} Or 'auto' to let the build choose.") from exc


def lambda_event_bytes(payload_bytes: int) -> int:
    """Bytes of the Lambda JSON event carrying a ``payload_bytes`` tensor payload (base64)."""
    return 4 * -(-int(payload_bytes) // 3) + LAMBDA_JSON_OVERHEAD


def wire_bytes(payload_bytes: int, cloud_device: DeviceProfile | None) -> int:
    """Bytes one offload puts on the link: the Lambda JSON event (base64), else the payload."""
    if cloud_device is not None and cloud_device.provider == "lambda":
        return lambda_event_bytes(payload_bytes)
    return int(payload_bytes)


def payload_limit(cloud_device: DeviceProfile | None) -> int | None:
    """The largest wire payload (bytes, before base64) the cloud device accepts, or ``None``."""
    if cloud_device is None or cloud_device.provider != "lambda":
        return None
    return (LAMBDA_PAYLOAD_LIMIT - LAMBDA_JSON_OVERHEAD) // 4 * 3


def codec_bytes(cp: CutPointProfile, codec: str) -> tuple[int, bool]:
    """``(bytes per sample, measured?)`` of ``codec`` at ``cp``; raw bytes when not measured."""
    if codec in cp.encoded_bytes:
        return int(cp.encoded_bytes[codec]), True
    return int(cp.boundary_bytes), False


def largest_bytes(cp: CutPointProfile, codec: str) -> int:
    """The largest measured payload of ``codec`` at ``cp`` (its mean, or raw, when unknown).

    A hard limit must hold for every request, so the Lambda rule checks this, not the mean.
    """
    if codec in cp.encoded_bytes_max:
        return int(cp.encoded_bytes_max[codec])
    return codec_bytes(cp, codec)[0]


def _smallest(cp: CutPointProfile, names: Iterable[str]) -> str | None:
    known = [(cp.encoded_bytes[n], n) for n in names if n in cp.encoded_bytes]
    return min(known)[1] if known else None


def _describe(cp: CutPointProfile) -> str:
    sizes = dict(cp.encoded_bytes) or {"raw (unmeasured)": cp.boundary_bytes}
    ordered = sorted(sizes.items(), key=lambda kv: (kv[1], kv[0]))
    return ", ".join(f"{name} {nbytes:,} B" for name, nbytes in ordered)


def _refusal(cp: CutPointProfile, codec: str, nbytes: int, limit: int) -> PlanError:
    fitting = sorted(n for n in cp.encoded_bytes if largest_bytes(cp, n) <= limit)
    hint = (
        f"codecs that fit here: {', '.join(fitting)} (use --codec with one of them or 'auto')"
        if fitting
        else "no measured codec fits: choose a deeper split, an HTTP cloud, or a lossier codec"
    )
    return PlanError(
        f"Split {cp.name!r} is refused: its boundary tensor is up to {nbytes:,} bytes per sample "
        f"with codec {codec!r}, {lambda_event_bytes(nbytes):,} bytes as a Lambda JSON event "
        f"(base64), over AWS Lambda's synchronous payload limit of {LAMBDA_PAYLOAD_LIMIT:,} "
        f"bytes. Bytes per codec at {cp.name!r}: {_describe(cp)}; {hint}."
    )


def boundary_payload(
    cp: CutPointProfile, codec: str = AUTO, cloud_device: DeviceProfile | None = None
) -> BoundaryPayload:
    """The codec and wire bytes of one sample's boundary tensor at split ``cp``.

    Args:
        cp: the split's profile entry (edge profile).
        codec: a codec name (fixed) or ``"auto"``.
        cloud_device: a Lambda device (``provider == "lambda"``) enforces the payload limit.

    Raises:
        PlanError: unknown codec, or the split cannot fit the Lambda limit with this codec
            (fixed) or with any measured codec (auto).
    """
    codec = check_plan_codec(codec)
    if codec == AUTO:
        chosen = _smallest(cp, LOSSLESS) or "raw"
        reason = "auto: smallest lossless codec measured here (upper bound of the final choice)"
    else:
        chosen, reason = codec, "fixed by the user"
    nbytes, measured = codec_bytes(cp, chosen)
    limit = payload_limit(cloud_device)
    if limit is None or largest_bytes(cp, chosen) <= limit:
        return BoundaryPayload(cp.name, chosen, nbytes, measured, reason)
    smaller = _smallest(cp, [n for n in cp.encoded_bytes if largest_bytes(cp, n) <= limit])
    if codec != AUTO or smaller is None:
        raise _refusal(cp, chosen, largest_bytes(cp, chosen), limit)
    return BoundaryPayload(
        cp.name,
        smaller,
        int(cp.encoded_bytes[smaller]),
        True,
        f"auto: {chosen} ({nbytes:,} B) is over the Lambda payload limit; smallest codec that fits",
    )


def split_payloads(
    profile: ModelProfile,
    splits: Iterable[str],
    codec: str = AUTO,
    cloud_device: DeviceProfile | None = None,
) -> tuple[dict[str, BoundaryPayload], dict[str, str]]:
    """:func:`boundary_payload` for every split: ``(payload per split, refusal per split)``.

    Raises:
        PlanError: an unknown codec (refused splits are returned, not raised).
    """
    codec = check_plan_codec(codec)
    payloads: dict[str, BoundaryPayload] = {}
    refused: dict[str, str] = {}
    for name in splits:
        try:
            payloads[name] = boundary_payload(profile.at(name), codec, cloud_device)
        except PlanError as exc:
            refused[name] = str(exc)
    return payloads, refused


def payload_parameters(
    payload: BoundaryPayload, requested: str, cloud: DeviceProfile | None
) -> dict[str, object]:
    """The plan ``parameters`` entries that record the planned codec and its bytes."""
    limit = payload_limit(cloud)
    return {
        "codec": payload.codec,
        "codec_requested": check_plan_codec(requested),
        "codec_reason": payload.reason,
        "boundary_encoded_bytes": payload.nbytes,
        "boundary_wire_bytes": wire_bytes(payload.nbytes, cloud),
        "boundary_bytes_measured": payload.measured,
        "payload_limit_bytes": None if limit is None else LAMBDA_PAYLOAD_LIMIT,
    }
