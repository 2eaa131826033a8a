"""Keras segment -> LiteRT flatbuffer, with the signature the runtime expects.

The signature is ``serving_default`` with input ``x`` (dynamic batch) and the segment's named
outputs (``probs`` and/or ``boundary``). Conversion goes Keras ExportArchive -> SavedModel ->
``TFLiteConverter.from_saved_model``, which freezes the variables (converting a concrete
function directly leaves resource variables that LiteRT cannot read).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from edgelesspart._lazy import keras, tensorflow
from edgelesspart.errors import ModelError

SIGNATURE = "serving_default"
INPUT_NAME = "x"


def to_tflite(segment: Any) -> bytes:
    """Convert a single-input Keras segment (dict outputs) to LiteRT bytes."""
    tf = tensorflow()
    k = keras()
    shape = [None, *(int(d) for d in segment.inputs[0].shape[1:])]
    spec = tf.TensorSpec(shape, tf.float32, name=INPUT_NAME)

    def serve(x: Any) -> Any:
        return segment(x, training=False)

    with tempfile.TemporaryDirectory(prefix="edgelesspart-export-") as tmp:
        archive = k.export.ExportArchive()
        archive.track(segment)
        archive.add_endpoint(SIGNATURE, serve, input_signature=[spec])
        archive.write_out(tmp, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(tmp)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        try:
            return converter.convert()
        except Exception as exc:  # the converter raises many internal types
            raise ModelError(
                f"LiteRT conversion of segment {segment.name!r} failed: {exc}. The segment uses an "
                "op outside LiteRT's builtin set."
            ) from exc


def write_tflite(segment: Any, path: str | Path) -> Path:
    """Convert ``segment`` and write it to ``path``."""
    out = Path(path)
    out.write_bytes(to_tflite(segment))
    return out
