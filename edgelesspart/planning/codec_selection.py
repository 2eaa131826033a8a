"""Choose the boundary codec of a bundle by measuring every codec on real validation data.

At the split, the trained model's head turns validation images into boundary tensors. Each
available codec (:func:`edgelesspart.runtime.codecs.available_codecs`) then encodes every
sample **at batch 1** (as the edge offloads one request), the payload is decoded, and the Keras
tail runs on the decoded tensors to the final output. A :class:`CodecMeasurement` records:

* ``bytes_per_sample``: mean wire payload length (frame header included, what is sent);
* ``size_ratio``: that divided by the raw float32 bytes of the tensor (``raw`` is just above 1
  because of its header);
* ``accuracy_delta_pp``: (accuracy on decoded tensors - accuracy on the exact tensors) x 100,
  so a loss is negative; with ``n`` samples one flipped prediction moves it by 100/n points;
* ``agreement``: share of samples whose top-1 class equals the exact tensors' top-1;
* ``encode_ms`` / ``decode_ms``: medians over the samples at batch 1, on this host;
* ``broken_pp``: share of samples the exact tensors classify correctly and the decoded ones do
  not, x 100: the loss the selection uses, so answers a codec happens to fix elsewhere cannot
  hide the ones it breaks;

:func:`select_codec` is the rule: among codecs whose accuracy loss (``broken_pp``) is <= the bound
(lossless codecs always qualify) and whose payload fits an optional byte limit, take the
fewest bytes; ties go to the faster decode, then the name. TensorFlow is imported lazily.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelesspart.errors import CodecError, ConfigError
from edgelesspart.runtime.codecs import LOSSLESS, available_codecs, decode_tensor, encode_tensor

DEFAULT_MAX_LOSS_PP = 0.5
TABLE_VERSION = 1


@dataclass(frozen=True)
class CodecMeasurement:
    """One codec measured at one cut point (see the module docstring for each field)."""

    codec: str
    bytes_per_sample: float
    raw_bytes: int
    size_ratio: float
    accuracy: float
    accuracy_delta_pp: float
    agreement: float
    max_abs_error: float
    encode_ms: float
    decode_ms: float
    lossless: bool
    params: dict[str, Any] = field(default_factory=dict, hash=False)
    broken_pp: float | None = None
    max_bytes_per_sample: float | None = None

    @property
    def loss_pp(self) -> float:
        """Accuracy loss in percentage points that fixes elsewhere cannot cancel.

        The share of samples the exact tensors classify correctly and the decoded ones do not
        (``broken_pp``); a codec that breaks 3 % of the answers and happens to fix 3 % others
        loses 3 points here, not 0. Rows without it (older tables) fall back to the net change.
        """
        return -self.accuracy_delta_pp if self.broken_pp is None else self.broken_pp

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (one row of the codec table)."""
        return {
            "codec": self.codec,
            "params": dict(self.params),
            "bytes_per_sample": self.bytes_per_sample,
            "raw_bytes": self.raw_bytes,
            "size_ratio": self.size_ratio,
            "accuracy": self.accuracy,
            "accuracy_delta_pp": self.accuracy_delta_pp,
            "agreement": self.agreement,
            "max_abs_error": self.max_abs_error,
            "encode_ms": self.encode_ms,
            "decode_ms": self.decode_ms,
            "lossless": self.lossless,
            "broken_pp": self.broken_pp,
            "max_bytes_per_sample": self.max_bytes_per_sample,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecMeasurement:
        """Build from :meth:`to_dict` output."""
        return cls(
            codec=str(data["codec"]),
            params=dict(data.get("params", {})),
            bytes_per_sample=float(data["bytes_per_sample"]),
            raw_bytes=int(data["raw_bytes"]),
            size_ratio=float(data["size_ratio"]),
            accuracy=float(data["accuracy"]),
            accuracy_delta_pp=float(data["accuracy_delta_pp"]),
            agreement=float(data.get("agreement", 1.0)),
            max_abs_error=float(data.get("max_abs_error", 0.0)),
            encode_ms=float(data.get("encode_ms", 0.0)),
            decode_ms=float(data.get("decode_ms", 0.0)),
            lossless=bool(data.get("lossless", data["codec"] in LOSSLESS)),
            broken_pp=None if data.get("broken_pp") is None else float(data["broken_pp"]),
            max_bytes_per_sample=(
                None
                if data.get("max_bytes_per_sample") is None
                else float(data["max_bytes_per_sample"])
            ),
        )

    @property
    def largest_bytes(self) -> float:
        """The largest payload seen for one sample (the mean for tables without it)."""
        if self.max_bytes_per_sample is None:
            return self.bytes_per_sample
        return self.max_bytes_per_sample


@dataclass(frozen=True)
class CodecTable:
    """Every codec measured at one cut point on the same samples.

    Attributes:
        cut_point: the split the boundary tensors come from.
        shape: boundary shape without the batch dim.
        samples: how many validation samples were measured.
        raw_accuracy: tail accuracy on the exact (never encoded) tensors.
        rows: one :class:`CodecMeasurement` per codec, in :data:`CODECS` order.
        skipped: codec -> why it was not measured (missing library, unsupported values).
        host: where the timings were taken.
    """

    cut_point: str
    shape: tuple[int, ...]
    samples: int
    raw_accuracy: float
    rows: tuple[CodecMeasurement, ...]
    skipped: dict[str, str] = field(default_factory=dict, hash=False)
    host: str = ""

    def row(self, codec: str) -> CodecMeasurement:
        """The row of ``codec``.

        Raises:
            ConfigError: ``codec`` was not measured (the message says why, if known).
        """
        for row in self.rows:
            if row.codec == codec:
                return row
        why = self.skipped.get(codec, "it is not in the table")
        measured = ", ".join(r.codec for r in self.rows)
        raise ConfigError(
            f"Codec {codec!r} was not measured at {self.cut_point!r}: {why}. Measured: {measured}."
        )

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict (the content of ``codecs.json``)."""
        return {
            "version": TABLE_VERSION,
            "cut_point": self.cut_point,
            "shape": list(self.shape),
            "samples": self.samples,
            "raw_accuracy": self.raw_accuracy,
            "host": self.host,
            "rows": [r.to_dict() for r in self.rows],
            "skipped": dict(self.skipped),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CodecTable:
        """Build from :meth:`to_dict` output."""
        return cls(
            cut_point=str(data["cut_point"]),
            shape=tuple(int(d) for d in data.get("shape", ())),
            samples=int(data["samples"]),
            raw_accuracy=float(data["raw_accuracy"]),
            rows=tuple(CodecMeasurement.from_dict(r) for r in data["rows"]),
            skipped={str(k): str(v) for k, v in data.get("skipped", {}).items()},
            host=str(data.get("host", "")),
        )


def select_codec(
    rows: CodecTable | Sequence[CodecMeasurement],
    max_loss_pp: float = DEFAULT_MAX_LOSS_PP,
    *,
    max_bytes: float | None = None,
) -> CodecMeasurement:
    """The smallest codec whose accuracy loss is within ``max_loss_pp``.

    Lossless codecs always qualify. Among qualifying rows (and, with ``max_bytes``, those whose
    largest payload of one sample fits: a hard limit must hold for every request), the fewest
    bytes win; ties go to the faster decode, then name.

    Raises:
        ConfigError: ``max_loss_pp`` is negative or not a number, or no row qualifies.
    """
    if isinstance(max_loss_pp, bool) or not isinstance(max_loss_pp, (int, float)):
        raise ConfigError(
            f"max_codec_loss must be a number of percentage points, got {max_loss_pp!r}."
        )
    if not max_loss_pp >= 0:
        raise ConfigError(f"max_codec_loss must be >= 0 percentage points, got {max_loss_pp}.")
    table = rows.rows if isinstance(rows, CodecTable) else tuple(rows)
    fits = [r for r in table if max_bytes is None or r.largest_bytes <= max_bytes]
    qualified = [r for r in fits if r.lossless or r.loss_pp <= max_loss_pp + 1e-9]
    if not qualified:
        seen = ", ".join(
            f"{r.codec} (loss {r.loss_pp:+.2f} pp, {r.bytes_per_sample:,.0f} B)" for r in table
        )
        limit = "" if max_bytes is None else f" and at most {max_bytes:,.0f} bytes per sample"
        raise ConfigError(
            f"No codec loses at most {max_loss_pp:g} accuracy points{limit}; measured: "
            f"{seen or 'nothing'}. Raise --max-codec-loss or fix a codec with --codec."
        )
    return min(qualified, key=lambda r: (r.bytes_per_sample, r.decode_ms, r.codec))


def _median_ms(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1000.0, 4) if samples else 0.0


def _round_trip(
    boundary: np.ndarray, codec: str
) -> tuple[np.ndarray, list[int], list[float], list[float]]:
    """Encode/decode every sample at batch 1: (decoded batch, sizes, encode s, decode s)."""
    decoded, sizes, enc, dec = [], [], [], []
    for i in range(len(boundary)):
        row = boundary[i : i + 1]
        t0 = time.perf_counter()
        payload = encode_tensor(row, codec)
        t1 = time.perf_counter()
        array, _ = decode_tensor(payload)
        t2 = time.perf_counter()
        decoded.append(array)
        sizes.append(len(payload))
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    return np.concatenate(decoded), sizes, enc, dec


def measure_codec(
    tail: Any, boundary: np.ndarray, labels: np.ndarray, codec: str, reference: np.ndarray
) -> CodecMeasurement:
    """Measure one codec on ``boundary`` (see the module docstring).

    Args:
        tail: the Keras tail (cut -> final probabilities; a dict output ``probs`` or a tensor).
        boundary: float32 boundary tensors of the samples, batch first.
        labels: the samples' integer labels.
        codec: the codec name.
        reference: the tail's top-1 predictions on the exact ``boundary``.

    Raises:
        CodecError: the codec cannot carry these tensors or its library is missing.
    """
    decoded, sizes, enc, dec = _round_trip(boundary, codec)
    predicted = predict_classes(tail, decoded)
    raw_bytes = int(boundary[0].nbytes) if len(boundary) else 0
    mean_bytes = float(np.mean(sizes)) if sizes else 0.0
    accuracy = float(np.mean(predicted == labels)) if len(labels) else 0.0
    raw_acc = float(np.mean(reference == labels)) if len(labels) else 0.0
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where a codec kept inf
        diff = np.where(decoded == boundary, 0.0, np.abs(decoded - boundary))
    error = float(np.max(diff, initial=0.0, where=~np.isnan(diff)))
    return CodecMeasurement(
        codec=codec,
        bytes_per_sample=round(mean_bytes, 2),
        raw_bytes=raw_bytes,
        size_ratio=round(mean_bytes / raw_bytes, 6) if raw_bytes else 1.0,
        accuracy=accuracy,
        accuracy_delta_pp=round((accuracy - raw_acc) * 100.0, 6),
        agreement=float(np.mean(predicted == reference)) if len(reference) else 1.0,
        max_abs_error=error,
        encode_ms=_median_ms(enc),
        decode_ms=_median_ms(dec),
        lossless=codec in LOSSLESS,
        max_bytes_per_sample=float(max(sizes)) if sizes else 0.0,
        broken_pp=round(float(np.mean((reference == labels) & (predicted != labels))) * 100.0, 6)
        if len(labels)
        else 0.0,
    )


def predict_classes(tail: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Top-1 classes of the Keras ``tail`` on ``x`` (in batches, inference mode)."""
    out = []
    for start in range(0, len(x), batch_size):
        probs = tail(x[start : start + batch_size], training=False)
        if isinstance(probs, dict):
            probs = probs["probs"]
        out.append(np.argmax(np.asarray(probs), axis=-1))
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.int64)


def measure_codecs(
    tail: Any,
    boundary: np.ndarray,
    labels: np.ndarray,
    *,
    cut_point: str,
    codecs: Sequence[str] | None = None,
    host: str = "",
) -> CodecTable:
    """Measure ``codecs`` (default: every available one) on the same boundary tensors.

    Codecs that cannot run here (missing library) or cannot carry these values are listed in
    ``skipped`` with the reason, never silently dropped.
    """
    boundary = np.ascontiguousarray(boundary, dtype=np.float32)
    labels = np.asarray(labels).reshape(-1)
    if len(boundary) == 0 or len(boundary) != len(labels):
        raise ConfigError(
            f"Codec measurement needs one label per boundary tensor and at least one sample; "
            f"got {len(boundary)} tensors and {len(labels)} labels."
        )
    usable = set(available_codecs())
    names = tuple(dict.fromkeys(codecs)) if codecs is not None else available_codecs()
    reference = predict_classes(tail, boundary)
    rows, skipped = [], {}
    for name in names:
        if name not in usable:
            skipped[name] = "its optional library is not installed"
            continue
        try:
            rows.append(measure_codec(tail, boundary, labels, name, reference))
        except CodecError as exc:
            skipped[name] = str(exc)
    return CodecTable(
        cut_point=cut_point,
        shape=tuple(int(d) for d in boundary.shape[1:]),
        samples=len(boundary),
        raw_accuracy=float(np.mean(reference == labels)),
        rows=tuple(rows),
        skipped=skipped,
        host=host,
    )


def measure_at_split(
    model: Any,
    cut: str,
    x: np.ndarray,
    y: np.ndarray,
    *,
    codecs: Sequence[str] | None = None,
    host: str = "",
) -> CodecTable:
    """Split the trained ``model`` at ``cut`` and measure ``codecs`` on ``(x, y)``.

    The head (input -> cut) produces the boundary tensors; the tail runs on their decoded
    copies. Use validation data, never the test split.
    """
    from edgelesspart.model.graph import split_model

    head, tail = split_model(model, cut)
    parts = [
        np.asarray(head(x[i : i + 256], training=False)["boundary"], dtype=np.float32)
        for i in range(0, len(x), 256)
    ]
    boundary = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
    return measure_codecs(tail, boundary, y, cut_point=cut, codecs=codecs, host=host)


def codec_entry(
    table: CodecTable, codec: str, max_loss_pp: float, *, max_bytes: float | None = None
) -> dict[str, Any]:
    """The manifest ``codec`` entry: the chosen (``"auto"``) or fixed codec plus the table.

    Raises:
        ConfigError: a fixed codec that was not measured, or no codec qualifies under auto.
    """
    if codec == "auto":
        chosen, selected_by = select_codec(table, max_loss_pp, max_bytes=max_bytes), "auto"
    else:
        chosen, selected_by = table.row(codec), "fixed"
    return {
        "name": chosen.codec,
        "params": dict(chosen.params),
        "size_ratio": chosen.size_ratio,
        "bytes_per_sample": chosen.bytes_per_sample,
        "accuracy_delta_pp": chosen.accuracy_delta_pp,
        "max_loss_pp": float(max_loss_pp),
        "selected_by": selected_by,
        "cut_point": table.cut_point,
        "samples": table.samples,
        "raw_accuracy": table.raw_accuracy,
        "table": [r.to_dict() for r in table.rows],
    }


#: Codecs a bottleneck's code is measured with: the int8 path (the issue's) and its entropy-coded
#: variants, plus fp16 for a comparison that keeps more precision.
BOTTLENECK_CODECS = ("int8", "int8+lz4", "int8+zstd", "fp16")


def boundary_tensors(head: Any, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The ``head``'s ``boundary`` output on ``x`` (inference mode, in batches)."""
    parts = [
        np.asarray(head(x[i : i + batch], training=False)["boundary"], dtype=np.float32)
        for i in range(0, len(x), batch)
    ]
    return np.concatenate(parts) if parts else np.zeros((0,), np.float32)


def measure_bottleneck(
    trained: Any,
    tail: Any,
    boundary: np.ndarray,
    labels: np.ndarray,
    reference: np.ndarray,
    *,
    codecs: Sequence[str] = BOTTLENECK_CODECS,
) -> list[Any]:
    """Measure a trained bottleneck with each of ``codecs`` on its code (validation, batch 1).

    Args:
        trained: a :class:`~edgelesspart.model.bottleneck.TrainedBottleneck`.
        tail: the unmodified Keras tail (boundary -> ``probs``).
        boundary: exact float32 boundary tensors of the samples.
        labels: their integer labels.
        reference: the tail's top-1 predictions on the exact ``boundary`` (the unmodified model).

    Returns:
        One :class:`~edgelesspart.planning.bottleneck.BottleneckOption` per codec that can
        carry the code (others are skipped).
    """
    from edgelesspart.model.bottleneck import host_ms
    from edgelesspart.planning.bottleneck import BottleneckOption

    code = np.concatenate(
        [
            np.asarray(trained.encoder(boundary[i : i + 256], training=False), np.float32)
            for i in range(0, len(boundary), 256)
        ]
    )
    encoder_ms = host_ms(trained.encoder, boundary)
    decoder_ms = host_ms(trained.decoder, code)
    labels = np.asarray(labels).reshape(-1)
    raw_acc = float(np.mean(reference == labels))
    usable = set(available_codecs())
    options = []
    for codec in codecs:
        if codec not in usable:
            continue
        try:
            decoded, sizes, enc, dec = _round_trip(code, codec)
        except CodecError:
            continue
        restored = np.concatenate(
            [
                np.asarray(trained.decoder(decoded[i : i + 256], training=False), np.float32)
                for i in range(0, len(decoded), 256)
            ]
        )
        predicted = predict_classes(tail, restored)
        accuracy = float(np.mean(predicted == labels))
        broken = float(np.mean((reference == labels) & (predicted != labels))) * 100.0
        options.append(
            BottleneckOption(
                label=trained.shape.label,
                channels=trained.shape.channels,
                stride=trained.shape.stride,
                codec=codec,
                code_shape=tuple(trained.code_shape),
                boundary_raw_bytes=int(boundary[0].nbytes),
                bytes_per_sample=round(float(np.mean(sizes)), 2),
                max_bytes_per_sample=float(max(sizes)),
                accuracy=accuracy,
                accuracy_delta_pp=round((accuracy - raw_acc) * 100.0, 6),
                broken_pp=round(broken, 6),
                encode_ms=_median_ms(enc),
                decode_ms=_median_ms(dec),
                encoder_ms=encoder_ms,
                decoder_ms=decoder_ms,
                samples=len(labels),
            )
        )
    return options


__all__ = [
    "BOTTLENECK_CODECS",
    "DEFAULT_MAX_LOSS_PP",
    "CodecMeasurement",
    "CodecTable",
    "codec_entry",
    "boundary_tensors",
    "measure_at_split",
    "measure_bottleneck",
    "measure_codec",
    "measure_codecs",
    "predict_classes",
    "select_codec",
]
