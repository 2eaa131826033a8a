"""Progress on long steps: a line per update off a terminal, a bar in place on one."""

from __future__ import annotations

import io

import numpy as np
import pytest

from edgelesspart.progress import EpochProgress, progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_writes_whole_lines_without_carriage_returns():
    out = io.StringIO()
    assert list(progress(range(3), 3, "profiling", stream=out)) == [0, 1, 2]
    text = out.getvalue()
    assert "\r" not in text and text.endswith("\n")
    assert text.splitlines()[-1].startswith("profiling [") and "3/3" in text


def test_progress_on_a_terminal_redraws_in_place():
    out = Terminal()
    list(progress(range(3), 3, "profiling", stream=out))
    assert out.getvalue().startswith("\r") and out.getvalue().count("\n") == 1


def test_epoch_progress_is_a_line_per_epoch_off_a_terminal():
    out = io.StringIO()
    report = EpochProgress("backbone", 3, stream=out)
    for epoch in range(3):
        report.epoch(epoch, {"loss": 1.0 / (epoch + 1), "val_loss": 0.5, "note": "x"})
    report.close()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert [line.split("  ")[0] for line in lines] == [
        "backbone: epoch 1/3", "backbone: epoch 2/3", "backbone: epoch 3/3",
    ]  # fmt: skip
    assert "loss 0.5" in lines[1] and "val_loss 0.5" in lines[1] and "note" not in lines[1]


def test_epoch_progress_is_a_bar_on_a_terminal_closed_after_early_stopping():
    out = Terminal()
    report = EpochProgress("exits", 10, stream=out)
    report.epoch(0, {"loss": 2.0})
    report.epoch(1, {"loss": 1.0})
    report.close()  # early stopping after 2 of 10 epochs: the bar's line is ended
    text = out.getvalue()
    assert text.count("\r") == 2 and "[####" in text and text.endswith("\n")


@pytest.mark.needs_tf
def test_backbone_training_reports_every_epoch(capfd):
    from edgelesspart._lazy import keras
    from edgelesspart.model.training import TrainingConfig, train_backbone

    class Data:
        rng = np.random.default_rng(0)
        x_train = rng.random((64, 4), dtype=np.float32)
        y_train = (x_train[:, 0] > 0.5).astype(np.int64)
        x_val, y_val = x_train[:16], y_train[:16]

    k = keras()
    inputs = k.Input((4,))
    model = k.Model(inputs, k.layers.Dense(2, activation="softmax")(inputs))
    capfd.readouterr()
    epochs = train_backbone(model, Data, TrainingConfig(epochs=2, batch_size=32, patience=5))
    err = capfd.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("backbone: epoch")]
    assert epochs == 2 and len(lines) == 2 and "val_loss" in lines[-1]
    # AND progress=False keeps stderr clean
    train_backbone(model, Data, TrainingConfig(epochs=1, batch_size=32, progress=False))
    assert "backbone: epoch" not in capfd.readouterr().err


@pytest.mark.needs_tf
def test_train_widths_reports_every_epoch(capfd):
    from edgelesspart.dynamic.model import build_chain_cnn
    from edgelesspart.dynamic.training import WidthTrainingConfig, train_width_robust
    from edgelesspart.model.datasets import load_dataset

    data = load_dataset("digits", image_size=16, limit=120)
    model = build_chain_cnn(data.input_shape, data.num_classes, (4, 8), seed=0)
    config = WidthTrainingConfig(strategy="sandwich", epochs=2, widths=(1.0, 0.5), random_passes=0)
    capfd.readouterr()
    train_width_robust(model, data, config)
    lines = [line for line in capfd.readouterr().err.splitlines() if "epoch" in line]
    assert [line.split("  ")[0] for line in lines] == [
        "train-widths (sandwich): epoch 1/2", "train-widths (sandwich): epoch 2/2",
    ]  # fmt: skip


def test_a_terminal_behind_the_cli_stderr_filter_still_gets_the_bar(monkeypatch, capsys):
    # GIVEN the CLI's stderr filter (fd 2 is its pipe) in front of a terminal
    import types

    import edgelesspart.stderr_filter as stderr_filter

    monkeypatch.setattr(stderr_filter, "ACTIVE", [types.SimpleNamespace(was_tty=True)])
    list(progress(range(2), 2, "profile-kit"))
    assert capsys.readouterr().err.startswith("\r")  # the bar, not a line per update
    # AND in front of a log file it is lines
    monkeypatch.setattr(stderr_filter, "ACTIVE", [types.SimpleNamespace(was_tty=False)])
    list(progress(range(2), 2, "profile-kit"))
    assert "\r" not in capsys.readouterr().err


def test_the_real_filter_remembers_whether_stderr_was_a_terminal():
    import os

    from edgelesspart.stderr_filter import filter_stderr, stderr_is_terminal

    was = os.isatty(2)
    active = filter_stderr()
    if active is None:
        pytest.skip("fd 2 cannot be redirected here")
    try:
        assert stderr_is_terminal() is was and not os.isatty(2)
    finally:
        active.close()
    assert stderr_is_terminal() is None
