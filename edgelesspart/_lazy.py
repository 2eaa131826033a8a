"""Lazy imports of the heavy build-time dependencies, with an install hint when missing."""

from __future__ import annotations

import os
from types import ModuleType

from edgelesspart.errors import DependencyError

BUILD_HINT = "pip install 'edgelesspart[build]'"


def _quiet_tensorflow() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")


def tensorflow() -> ModuleType:
    """Import and return ``tensorflow``, or raise :class:`DependencyError` naming the fix."""
    _quiet_tensorflow()
    try:
        import tensorflow as tf
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DependencyError(
            f"TensorFlow is needed for build-time work but is not installed ({exc}). "
            f"Install it with: {BUILD_HINT}"
        ) from exc
    return tf


def keras() -> ModuleType:
    """Import and return ``keras`` (Keras 3 on the TensorFlow backend)."""
    tensorflow()
    try:
        import keras as keras_module
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise DependencyError(
            f"Keras is not installed ({exc}). Install it with: {BUILD_HINT}"
        ) from exc
    return keras_module


def optional(module: str, extra_hint: str) -> ModuleType:
    """Import an optional module or raise :class:`DependencyError` with ``extra_hint``."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise DependencyError(
            f"{module} is not installed ({exc}). Install it with: {extra_hint}"
        ) from exc
