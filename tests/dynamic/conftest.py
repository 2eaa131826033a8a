"""Dynamic-pruning test setup: a tiny 2-stage width bundle (widths 1 and 0.5), built once per
session in ~15 s: chain CNN with 8/16 channels on 16x16 digits, one short sandwich epoch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

WIDTHS = (1.0, 0.5)


@dataclass(frozen=True)
class TinyWidthBundle:
    """The bundle directory, the trained Keras model and a few test inputs."""

    path: Path
    model: object
    x: np.ndarray
    y: np.ndarray


@pytest.fixture(scope="session")
def width_bundle(tmp_path_factory: pytest.TempPathFactory) -> TinyWidthBundle:
    from edgelesspart.dynamic.export import export_width_bundle
    from edgelesspart.dynamic.model import build_chain_cnn
    from edgelesspart.dynamic.training import WidthTrainingConfig, train_width_robust
    from edgelesspart.model.datasets import load_dataset

    data = load_dataset("digits", image_size=16, limit=240)
    model = build_chain_cnn(data.input_shape, data.num_classes, (8, 16), seed=0)
    config = WidthTrainingConfig(strategy="sandwich", epochs=1, widths=WIDTHS, random_passes=1)
    record = train_width_robust(model, data, config)
    out = tmp_path_factory.mktemp("width") / "tiny-width"
    export_width_bundle(
        model, data, out, strategy="sandwich", widths=WIDTHS, training=record, latency_repeats=5
    )
    return TinyWidthBundle(out, model, data.x_test[:24], data.y_test[:24])
