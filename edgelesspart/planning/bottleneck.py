"""The learned bottleneck as one more way across the link: measured, then chosen only if it wins.

Pure Python (no TensorFlow). A **crossing** is one way a split's boundary gets to the cloud:

* a generic codec (a row of the codec table): the edge encodes, the link carries the payload,
  the cloud decodes;
* a learned bottleneck plus a codec on its code (:class:`BottleneckOption`): the edge also runs
  the encoder, the cloud also runs the decoder, and the payload is much smaller.

Each has measured bytes per sample (mean and largest), an accuracy loss against the unmodified
model on validation (``loss_pp``: by default the share of samples the exact boundary classifies
correctly and the crossing does not, in points; ``--bottleneck-loss accuracy`` uses the net
accuracy points lost instead, see :data:`LOSS_MEASURES`), and host milliseconds on each side.
:func:`crossing_ms` prices a crossing on a link: edge ms x the edge device's latency factor +
link time of the wire bytes (base64 JSON for Lambda) + cloud ms x the cloud device's factor.

:func:`choose_bottleneck` is the rule of ``--bottleneck``: ``auto`` takes the fastest bottleneck
option within the accuracy bound and the payload limit **only if** its crossing is faster than
the generic codec the build would use otherwise; a channel count uses that count (the fastest
qualifying stride/codec, or the most accurate when none qualifies, with a warning). The
planner charges the chosen crossing through :class:`~edgelesspart.planning.objective.Objective`
``crossing_ms`` and ``wire_bytes``, so the objective modes, ``evaluate`` and the plan check see
the same bytes and milliseconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edgelesspart.errors import ConfigError
from edgelesspart.planning.payload import wire_bytes
from edgelesspart.profiling.devices import DeviceProfile
from edgelesspart.profiling.links import Link

__all__ = [
    "BottleneckDecision",
    "BottleneckOption",
    "Crossing",
    "choose_bottleneck",
    "codec_crossing",
    "crossing_ms",
]


@dataclass(frozen=True)
class Crossing:
    """One way across the link at a split, as the planner prices it.

    Attributes:
        name: ``int8+zstd`` for a codec, ``bn4s2+int8`` for a bottleneck with a codec.
        codec: the runtime codec that encodes what is sent.
        nbytes: mean wire payload bytes per sample (header included, before base64).
        max_bytes: the largest payload seen for one sample.
        edge_ms: host ms on the edge side (encoder, if any, plus codec encode).
        cloud_ms: host ms on the cloud side (codec decode plus decoder, if any).
        loss_pp: accuracy points lost against the unmodified model on validation.
    """

    name: str
    codec: str
    nbytes: float
    max_bytes: float
    edge_ms: float
    cloud_ms: float
    loss_pp: float

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "codec": self.codec,
            "nbytes": self.nbytes,
            "max_bytes": self.max_bytes,
            "edge_ms": self.edge_ms,
            "cloud_ms": self.cloud_ms,
            "loss_pp": self.loss_pp,
        }


#: How a bottleneck's accuracy loss against the unmodified model is measured on validation:
#: ``broken`` (default): the share of samples the unmodified model classifies right and the
#: bottleneck wrong (fixes never count; the generic codec rule's measure); ``accuracy``: net
#: accuracy points lost (unmodified accuracy - bottleneck accuracy), the issue's "accuracy
#: lost", for a bottleneck whose decoder and cloud part learn on labels (fine-tuning) and so
#: change answers both ways.
LOSS_MEASURES = ("broken", "accuracy")


@dataclass(frozen=True)
class BottleneckOption:
    """A trained bottleneck with one codec on its code, measured on validation at batch 1.

    ``bytes_per_sample``/``max_bytes_per_sample`` are the codec's wire payload of the code;
    ``accuracy``/``broken_pp``/``accuracy_delta_pp`` compare the tail's answers on the decoded
    code with the unmodified model's answers on the exact boundary; ``encoder_ms``/``decoder_ms``
    are the LiteRT batch-1 medians on this host, ``encode_ms``/``decode_ms`` the codec's.
    """

    label: str
    channels: int
    stride: int
    codec: str
    code_shape: tuple[int, ...]
    boundary_raw_bytes: int
    bytes_per_sample: float
    max_bytes_per_sample: float
    accuracy: float
    accuracy_delta_pp: float
    broken_pp: float
    encode_ms: float
    decode_ms: float
    encoder_ms: float
    decoder_ms: float
    samples: int

    @property
    def name(self) -> str:
        """``bn4s2+int8``: the bottleneck's label and the codec on its code."""
        return f"{self.label}+{self.codec}"

    @property
    def size_ratio(self) -> float:
        """Payload bytes / the raw float32 bytes of the unmodified boundary."""
        return self.bytes_per_sample / self.boundary_raw_bytes if self.boundary_raw_bytes else 1.0

    def loss(self, measure: str = "broken") -> float:
        """Accuracy points lost on validation, by ``measure`` (:data:`LOSS_MEASURES`)."""
        if measure not in LOSS_MEASURES:
            raise ConfigError(
                f"Unknown bottleneck loss {measure!r}; choose one of {', '.join(LOSS_MEASURES)}."
            )
        return self.broken_pp if measure == "broken" else -self.accuracy_delta_pp

    def crossing(self, measure: str = "broken") -> Crossing:
        """The option as a :class:`Crossing` (its loss by ``measure``)."""
        return Crossing(
            self.name,
            self.codec,
            self.bytes_per_sample,
            self.max_bytes_per_sample,
            self.encoder_ms + self.encode_ms,
            self.decode_ms + self.decoder_ms,
            self.loss(measure),
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "name": self.name,
            "label": self.label,
            "channels": self.channels,
            "stride": self.stride,
            "codec": self.codec,
            "code_shape": list(self.code_shape),
            "boundary_raw_bytes": self.boundary_raw_bytes,
            "bytes_per_sample": self.bytes_per_sample,
            "max_bytes_per_sample": self.max_bytes_per_sample,
            "size_ratio": self.size_ratio,
            "accuracy": self.accuracy,
            "accuracy_delta_pp": self.accuracy_delta_pp,
            "broken_pp": self.broken_pp,
            "encode_ms": self.encode_ms,
            "decode_ms": self.decode_ms,
            "encoder_ms": self.encoder_ms,
            "decoder_ms": self.decoder_ms,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BottleneckOption:
        """Build from :meth:`to_dict` output."""
        return cls(
            label=str(data["label"]),
            channels=int(data["channels"]),
            stride=int(data.get("stride", 1)),
            codec=str(data["codec"]),
            code_shape=tuple(int(d) for d in data["code_shape"]),
            boundary_raw_bytes=int(data["boundary_raw_bytes"]),
            bytes_per_sample=float(data["bytes_per_sample"]),
            max_bytes_per_sample=float(data["max_bytes_per_sample"]),
            accuracy=float(data["accuracy"]),
            accuracy_delta_pp=float(data["accuracy_delta_pp"]),
            broken_pp=float(data["broken_pp"]),
            encode_ms=float(data["encode_ms"]),
            decode_ms=float(data["decode_ms"]),
            encoder_ms=float(data["encoder_ms"]),
            decoder_ms=float(data["decoder_ms"]),
            samples=int(data["samples"]),
        )


def codec_crossing(row: Any) -> Crossing:
    """A codec table row (:class:`~edgelesspart.planning.codec_selection.CodecMeasurement`)."""
    return Crossing(
        row.codec,
        row.codec,
        float(row.bytes_per_sample),
        float(row.largest_bytes),
        float(row.encode_ms),
        float(row.decode_ms),
        float(row.loss_pp),
    )


def crossing_ms(
    crossing: Crossing,
    link: Link,
    cloud_device: DeviceProfile | None = None,
    *,
    edge_factor: float = 1.0,
    cloud_factor: float = 1.0,
) -> float:
    """Milliseconds one offload spends crossing: edge side + link + cloud side (see module)."""
    sent = wire_bytes(int(round(crossing.nbytes)), cloud_device)
    return (
        crossing.edge_ms * edge_factor + link.transfer_ms(sent) + crossing.cloud_ms * cloud_factor
    )


@dataclass(frozen=True)
class BottleneckDecision:
    """What ``--bottleneck`` decided at a split, and why.

    Attributes:
        used: the option the bundle uses, or ``None`` (the generic codec stays).
        generic: the generic codec's crossing it was compared with.
        reason: one sentence for the build log and the manifest.
        times_ms: crossing name -> crossing ms on the build's link, for every candidate.
        warning: set when a fixed channel count had to exceed the accuracy bound.
    """

    used: BottleneckOption | None
    generic: Crossing
    reason: str
    times_ms: dict[str, float] = field(default_factory=dict)
    warning: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "used": None if self.used is None else self.used.to_dict(),
            "generic": self.generic.to_dict(),
            "reason": self.reason,
            "times_ms": dict(self.times_ms),
            "warning": self.warning,
        }


def choose_bottleneck(
    options: Sequence[BottleneckOption],
    generic: Crossing,
    *,
    choice: str | int,
    max_loss_pp: float,
    link: Link,
    cloud_device: DeviceProfile | None = None,
    edge_factor: float = 1.0,
    cloud_factor: float = 1.0,
    max_bytes: float | None = None,
    loss: str = "broken",
) -> BottleneckDecision:
    """Apply the ``--bottleneck`` rule (module docstring) to measured ``options``; ``loss`` is
    how an option's accuracy loss is measured (:data:`LOSS_MEASURES`).

    Raises:
        ConfigError: a fixed channel count none of whose options fits ``max_bytes``.
    """

    def cost(c: Crossing) -> float:
        return crossing_ms(
            c, link, cloud_device, edge_factor=edge_factor, cloud_factor=cloud_factor
        )

    times = {generic.name: round(cost(generic), 4)}
    times.update({o.name: round(cost(o.crossing()), 4) for o in options})
    fits = [o for o in options if max_bytes is None or o.max_bytes_per_sample <= max_bytes]
    within = [o for o in fits if o.loss(loss) <= max_loss_pp + 1e-9]
    bound = f"{max_loss_pp:g} pp" + ("" if loss == "broken" else f" of {loss}")
    if choice == "auto":
        if not within:
            return BottleneckDecision(
                None, generic, f"auto: no bottleneck option loses at most {bound}", times
            )
        best = min(within, key=lambda o: (times[o.name], o.bytes_per_sample, o.name))
        if times[best.name] < times[generic.name]:
            reason = (
                f"auto: {best.name} crosses {link.name} in {times[best.name]:.2f} ms vs "
                f"{times[generic.name]:.2f} ms for {generic.name}, losing {best.loss(loss):.2f} "
                f"pp (bound {bound})"
            )
            return BottleneckDecision(best, generic, reason, times)
        reason = (
            f"auto: {generic.name} ({times[generic.name]:.2f} ms on {link.name}) is at least as "
            f"fast as the best bottleneck {best.name} ({times[best.name]:.2f} ms)"
        )
        return BottleneckDecision(None, generic, reason, times)
    if not fits:
        raise ConfigError(
            f"No {choice}-channel bottleneck option fits the payload limit of {max_bytes:,.0f} "
            "bytes per sample; use fewer channels or --bottleneck auto."
        )
    if within:
        best = min(within, key=lambda o: (times[o.name], o.bytes_per_sample, o.name))
        return BottleneckDecision(
            best, generic, f"fixed by the user: {best.name}, fastest within {bound}", times
        )
    best = min(fits, key=lambda o: (o.loss(loss), times[o.name], o.name))
    warning = (
        f"bottleneck {best.name} loses {best.loss(loss):.2f} pp on validation, more than the "
        f"{bound} bound; kept as asked"
    )
    return BottleneckDecision(
        best, generic, f"fixed by the user: {best.name}, the most accurate", times, warning
    )
