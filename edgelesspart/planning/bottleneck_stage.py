"""The build's bottleneck step: train the candidates at the split, measure them, decide.

At the planned split the unmodified model is cut into head and tail; on the validation samples
the codec table is measured as :func:`~edgelesspart.planning.codec_selection.measure_at_split`
does, and the generic codec the build would use is chosen by the same rule. Each candidate
bottleneck (:func:`~edgelesspart.model.bottleneck.candidate_shapes`) is trained on the training
split by distillation and measured on validation with the int8-family codecs on its code;
:func:`~edgelesspart.planning.bottleneck.choose_bottleneck` then compares every option with
the generic codec on the build's link, with host milliseconds scaled to the edge and cloud
devices. TensorFlow is imported lazily (through the model layer).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelesspart.planning.bottleneck import BottleneckDecision, Crossing


@dataclass
class BottleneckResult:
    """What the bottleneck step produced at one split.

    Attributes:
        decision: the rule's outcome (``decision.used`` is ``None`` when no bottleneck is used).
        trained: label -> the trained encoder/decoder pair, for every candidate.
        table: the generic codec table at the split (reused by the codec choice).
        crossing: the used option as a planner crossing in **device** ms, or ``None``.
        test: the used option on the test split, recorded after the choice was made (never
            used to choose): the unmodified model's and the bottleneck's accuracy.
    """

    decision: BottleneckDecision
    trained: dict[str, Any]
    table: Any
    crossing: Crossing | None
    test: dict[str, Any] | None = None
    tail: Any = None

    def apply_finetune(self) -> bool:
        """Write the used pair's fine-tuned cloud weights into the backbone (``tail`` shares
        its layers); True when there were any."""
        pair = self.used
        if pair is None or pair.tail_weights is None or self.tail is None:
            return False
        self.tail.set_weights(pair.tail_weights)
        return True

    @property
    def used(self) -> Any:
        """The trained pair the bundle uses, or ``None``."""
        option = self.decision.used
        return None if option is None else self.trained[option.label]

    def record(self) -> dict[str, Any]:
        """JSON-ready: the decision, every option and every candidate's training facts."""
        return {
            **self.decision.to_dict(),
            "candidates": {label: t.describe() for label, t in self.trained.items()},
        }


def fit_bottleneck(
    model: Any,
    split: str,
    data: Any,
    *,
    choice: str | int,
    codec: str,
    max_codec_loss: float,
    max_loss_pp: float,
    link: Any,
    cloud_device: Any,
    factors: tuple[float, float],
    epochs: int,
    batch_size: int,
    seed: int,
    max_samples: int,
    host: str = "",
    log: Any = print,
    finetune_epochs: int = 0,
    loss: str = "broken",
) -> BottleneckResult:
    """Train, measure and choose a bottleneck at ``split`` (see the module docstring).

    Args:
        model: the trained functional backbone.
        split: the planned cut point.
        data: the dataset (training split trains, validation measures and chooses).
        choice: ``"auto"`` or a channel count.
        codec: the build's ``--codec`` (the generic alternative's rule).
        max_codec_loss: the generic codec's accuracy bound (points).
        max_loss_pp: the bottleneck's accuracy bound (points, against the unmodified model).
        link: the build's link (:class:`~edgelesspart.profiling.links.Link`).
        cloud_device: the cloud device (payload limit, base64 for Lambda).
        factors: ``(edge, cloud)`` latency factors from this host to the devices.
        epochs: most training epochs per candidate.
        batch_size: training batch size.
        seed: random seed.
        max_samples: validation samples measured.
        host: where the timings were taken (recorded in the table).
        log: progress lines.
        finetune_epochs: when > 0, each candidate's decoder and the cloud part are then
            fine-tuned (:func:`~edgelesspart.model.bottleneck.finetune_cloud`) for at most this
            many epochs; the fine-tuned version replaces the distilled one only where its least
            validation loss (``broken_pp``) is lower. The backbone is left unmodified here; the
            caller applies the used pair's weights (:meth:`BottleneckResult.apply_finetune`).
        loss: how an option's loss is measured
            (:data:`~edgelesspart.planning.bottleneck.LOSS_MEASURES`); the bound, the
            fine-tuning's keep rule and the logs use it.
    """
    from edgelesspart.model.bottleneck import candidate_shapes, finetune_cloud, train_bottleneck
    from edgelesspart.model.graph import split_model
    from edgelesspart.planning import codec_selection, payload
    from edgelesspart.planning.bottleneck import choose_bottleneck, codec_crossing

    head, tail = split_model(model, split)
    x_val, y_val = data.x_val[:max_samples], np.asarray(data.y_val[:max_samples]).reshape(-1)
    boundary = codec_selection.boundary_tensors(head, x_val)
    table = codec_selection.measure_codecs(tail, boundary, y_val, cut_point=split, host=host)
    reference = codec_selection.predict_classes(tail, boundary)
    limit = payload.payload_limit(cloud_device)
    entry = codec_selection.codec_entry(table, codec, max_codec_loss, max_bytes=limit)
    generic = codec_crossing(table.row(entry["name"]))
    trained, options = {}, []
    for shape in candidate_shapes(tuple(boundary.shape[1:]), choice):
        pair = train_bottleneck(
            head, tail, split, shape, data.x_train, data.x_val,
            epochs=epochs, batch_size=batch_size, seed=seed,
        )  # fmt: skip
        measured = _measure(pair, tail, boundary, y_val, reference)
        _log_candidate(log, pair, measured, len(y_val), "", loss)
        if finetune_epochs > 0:
            tuned = finetune_cloud(
                head, tail, pair, data.x_train, data.y_train, data.x_val, data.y_val,
                epochs=finetune_epochs, batch_size=batch_size, seed=seed,
            )  # fmt: skip
            tuned_measured = _measure(tuned, tail, boundary, y_val, reference)
            before = min(o.loss(loss) for o in measured)
            after = min(o.loss(loss) for o in tuned_measured)
            tuned.finetune = {**(tuned.finetune or {}), "val_loss_pp": [before, after],
                              "kept": after < before}  # fmt: skip
            note = " after cloud fine-tuning"
            _log_candidate(log, tuned, tuned_measured, len(y_val), note, loss)
            if after < before:
                pair, measured = tuned, tuned_measured
            else:
                pair.finetune = {**tuned.finetune, "kept": False}
                log(f"bottleneck {shape.label}: fine-tuning did not lower the loss; not kept")
        trained[shape.label] = pair
        options.extend(measured)
    edge_factor, cloud_factor = factors
    decision = choose_bottleneck(
        options,
        generic,
        choice=choice,
        max_loss_pp=max_loss_pp,
        link=link,
        cloud_device=cloud_device,
        edge_factor=edge_factor,
        cloud_factor=cloud_factor,
        max_bytes=limit,
        loss=loss,
    )
    crossing = None
    if decision.used is not None:
        c = decision.used.crossing(loss)
        crossing = Crossing(
            c.name, c.codec, c.nbytes, c.max_bytes,
            c.edge_ms * edge_factor, c.cloud_ms * cloud_factor, c.loss_pp,
        )  # fmt: skip
    test = None
    if decision.used is not None:
        test = test_accuracy(head, tail, trained[decision.used.label], decision.used.codec, data)
    return BottleneckResult(decision, trained, table, crossing, test, tail)


@contextmanager
def _tail_weights(tail: Any, weights: list[Any] | None) -> Iterator[None]:
    """``tail`` with ``weights`` (a fine-tuned cloud part) for the block, then as it was."""
    if weights is None:
        yield
        return
    original = tail.get_weights()
    tail.set_weights(weights)
    try:
        yield
    finally:
        tail.set_weights(original)


def _measure(
    pair: Any, tail: Any, boundary: np.ndarray, y_val: np.ndarray, reference: np.ndarray
) -> list[Any]:
    """:func:`codec_selection.measure_bottleneck` through the pair's own cloud part."""
    from edgelesspart.planning import codec_selection

    with _tail_weights(tail, pair.tail_weights):
        return codec_selection.measure_bottleneck(pair, tail, boundary, y_val, reference)


def _log_candidate(
    log: Any, pair: Any, measured: list[Any], samples: int, note: str, loss: str
) -> None:
    best = min(measured, key=lambda o: o.bytes_per_sample)
    log(
        f"bottleneck {pair.shape.label}{note}: code {pair.code_shape}, "
        f"{best.bytes_per_sample:,.0f} B/sample with {best.codec} ({1 / best.size_ratio:.1f}x "
        f"fewer than raw fp32), loss {best.loss(loss):.2f} pp ({loss}; broken "
        f"{best.broken_pp:.2f}, net {-best.accuracy_delta_pp:+.2f}) on {samples} validation "
        f"samples, {pair.seconds:.0f} s training"
    )


def test_accuracy(head: Any, tail: Any, pair: Any, codec: str, data: Any) -> dict[str, Any]:
    """Final-classifier accuracy on the test split: unmodified vs through the bottleneck+codec
    (and the pair's fine-tuned cloud part, if any).

    Measured at build time with Keras on the same backbone, after the choice (for reports
    such as P4, never for choosing).
    """
    from edgelesspart.planning import codec_selection
    from edgelesspart.runtime.codecs import decode_tensor, encode_tensor

    y = np.asarray(data.y_test).reshape(-1)
    boundary = codec_selection.boundary_tensors(head, data.x_test)
    exact = codec_selection.predict_classes(tail, boundary)
    code = np.asarray(pair.encoder(boundary, training=False), np.float32)
    decoded = np.concatenate([decode_tensor(encode_tensor(c[None], codec))[0] for c in code])
    restored = np.asarray(pair.decoder(decoded, training=False), np.float32)
    with _tail_weights(tail, pair.tail_weights):
        through = codec_selection.predict_classes(tail, restored)
    return {
        "samples": int(len(y)),
        "unmodified_accuracy": float(np.mean(exact == y)),
        "accuracy": float(np.mean(through == y)),
        "agreement": float(np.mean(exact == through)),
        "cloud_finetuned": pair.tail_weights is not None,
    }


__all__ = ["BottleneckResult", "fit_bottleneck", "test_accuracy"]
