"""Segment runner backends: which engine executes a segment file.

* ``litert`` (default): the segment's ``.tflite`` file with LiteRT on the CPU (XNNPACK). What the
  lean install, the Raspberry Pi image and the cloud function run.
* ``keras``: the segment's ``.keras`` file with TensorFlow/Keras, on a GPU when TensorFlow sees
  one (CUDA on a Jetson with NVIDIA's TensorFlow wheel, the path the EdgeLessPart paper used on
  the Jetson Orin Nano), else on the CPU. Files are loaded with ``safe_mode=True`` (no
  deserialised lambdas or code). Needs the ``build`` extra, or TensorFlow from the device vendor.

A third backend was considered and left out on purpose (see ``docs/deploy.md``): ONNX Runtime
with its CUDA/TensorRT execution providers is the usual Jetson route, but the bundle has no ONNX
export (it would need ``tf2onnx`` at build time plus a per-JetPack ``onnxruntime-gpu`` wheel
that PyPI does not carry for aarch64), and LiteRT's GPU delegate ships as a separate native
library (``libtensorflowlite_gpu_delegate.so``) that is not in the ``ai-edge-litert`` wheel, so
neither could be built or tested here; ``keras`` covers the GPU with files every bundle has.

A backend opens a segment as a callable ``runner(x=batch) -> {"probs"?: array, "boundary"?:
array}``, the interface of LiteRT's signature runner, so :class:`~edgelesspart.runtime.segments
.SegmentRunner` pools and checks it the same way whatever the engine. This module imports
TensorFlow only inside the ``keras`` backend's functions.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import BundleError, ConfigError, DependencyError

LITERT = "litert"
KERAS = "keras"
BACKENDS = (LITERT, KERAS)
DEFAULT_BACKEND = LITERT
#: The bundle file format (``SegmentSpec.files`` key) each backend executes.
FILE_FORMATS = {LITERT: "tflite", KERAS: "keras"}
_OUTPUTS = ("probs", "boundary")


def check_backend(name: str) -> str:
    """Return ``name`` if it is a known backend, else raise :class:`ConfigError`."""
    if name not in BACKENDS:
        raise ConfigError(
            f"Unknown segment backend {name!r}. Backends: {', '.join(BACKENDS)} (litert = LiteRT "
            "on the CPU, the default; keras = TensorFlow/Keras, on a GPU when one is visible)."
        )
    return name


def file_format(backend: str) -> str:
    """The ``SegmentSpec.files`` key the backend loads (``tflite`` or ``keras``)."""
    return FILE_FORMATS[check_backend(backend)]


def _tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as exc:
        raise DependencyError(
            "The keras backend needs TensorFlow: pip install 'edgelesspart[build]' (on a Jetson, "
            "NVIDIA's TensorFlow wheel for your JetPack), or use --backend litert."
        ) from exc
    return tf


class KerasSegment:
    """A ``.keras`` segment compiled once with ``tf.function``; thread-safe, shared by a pool.

    One instance per file (see :func:`open_keras`): pooled "runners" of a
    :class:`SegmentRunner` are the same object, so the weights are loaded once per process.
    """

    def __init__(self, path: Path) -> None:
        tf = _tensorflow()
        import keras

        try:
            model = keras.saving.load_model(str(path), safe_mode=True, compile=False)
        except (ValueError, OSError, TypeError) as exc:
            raise BundleError(
                f"Segment file {path} is not a loadable Keras model (safe_mode=True): {exc}"
            ) from exc
        self.path = Path(path)
        self.model = model
        self.outputs = tuple(sorted(model.output)) if isinstance(model.output, dict) else ()
        if not self.outputs or not set(self.outputs) <= set(_OUTPUTS):
            raise BundleError(
                f"Keras segment {path.name} returns {self.outputs or type(model.output).__name__}; "
                f"expected a dict with outputs among {_OUTPUTS}. Re-export the bundle."
            )
        self._fn = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
        self.device = "GPU" if tf.config.list_logical_devices("GPU") else "CPU"

    def __call__(self, **kwargs: np.ndarray) -> dict[str, np.ndarray]:
        out = self._fn(kwargs["x"])
        return {name: np.asarray(value) for name, value in out.items()}


_KERAS_CACHE: dict[tuple[Path, int, int], KerasSegment] = {}
_KERAS_LOCK = threading.Lock()


def open_keras(path: Path) -> KerasSegment:
    """The process-wide :class:`KerasSegment` of ``path`` (loaded on first use).

    Keyed by the file's path, size and modification time: a bundle exported again to the same
    directory is loaded afresh, not served from the old weights.
    """
    resolved = Path(path).resolve()
    stat = resolved.stat()
    key = (resolved, stat.st_size, stat.st_mtime_ns)
    with _KERAS_LOCK:
        segment = _KERAS_CACHE.get(key)
        if segment is None:
            for old in [k for k in _KERAS_CACHE if k[0] == resolved]:
                del _KERAS_CACHE[old]  # the file changed: drop the stale model
            segment = _KERAS_CACHE[key] = KerasSegment(resolved)
        return segment


def open_segment(backend: str, path: Path, outputs: set[str]) -> Any:
    """A callable running the segment file ``path`` with a non-LiteRT ``backend``.

    LiteRT segments are opened by :class:`SegmentRunner` itself (it checks the signature).

    Raises:
        BundleError: the file is missing, unloadable, or does not return ``outputs``.
    """
    if check_backend(backend) != KERAS:
        raise ConfigError(f"Backend {backend!r} is opened by SegmentRunner, not open_segment.")
    if not Path(path).is_file():
        raise BundleError(f"Keras segment file {path} is missing.")
    segment = open_keras(path)
    if set(segment.outputs) != set(outputs):
        raise BundleError(
            f"Keras segment {Path(path).name} returns {sorted(segment.outputs)}; the manifest "
            f"expects {sorted(outputs)}. The bundle and its manifest disagree; re-export."
        )
    return segment


def backend_info(backend: str) -> dict[str, Any]:
    """What a backend runs on here: ``{"backend", "device", "gpus"}`` (for health/metrics)."""
    if check_backend(backend) == LITERT:
        return {"backend": LITERT, "device": "CPU (XNNPACK)", "gpus": []}
    tf = _tensorflow()
    gpus = [d.name for d in tf.config.list_logical_devices("GPU")]
    return {"backend": KERAS, "device": "GPU" if gpus else "CPU", "gpus": gpus}
