"""Dependency-free progress for long CLI steps (profiling, profile-kit, evaluation, replay,
training epochs).

On a terminal a bar is redrawn in place (``\\r``); anywhere else (a log file, a pipe, CI) each
update is its own line, throttled, so logs never fill with carriage returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")

#: Seconds between redraws on a terminal, and on anything else (a log file, a pipe).
REDRAW_TTY_S = 0.1
REDRAW_PIPE_S = 5.0


def _is_tty(stream: TextIO) -> bool:
    """Whether ``stream`` ends on a terminal (seen through the CLI's stderr filter, whose pipe
    on fd 2 would otherwise always say no)."""
    if stream is sys.stderr:
        from edgelesspart.stderr_filter import stderr_is_terminal

        behind_filter = stderr_is_terminal()
        if behind_filter is not None:
            return behind_filter
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def progress(
    items: Iterable[T],
    total: int,
    label: str,
    *,
    stream: TextIO | None = None,
    enabled: bool = True,
) -> Iterator[T]:
    """Yield ``items`` while drawing ``label [#####.....] k/total  elapsed`` on ``stream``.

    Draws on stderr by default and only when enabled, so piped output stays clean. Redraws are
    throttled (every 0.1 s on a terminal, in place; every 5 s elsewhere, one line each); the
    last step is always drawn.
    """
    out = stream or sys.stderr
    start = last = time.perf_counter()
    tty = _is_tty(out)
    every = REDRAW_TTY_S if tty else REDRAW_PIPE_S
    width = 28
    drawn = False
    for done, item in enumerate(items, start=1):
        yield item
        if not enabled:
            continue
        now = time.perf_counter()
        final = done >= total
        if not final and drawn and now - last < every:
            continue
        last, drawn = now, True
        filled = int(width * min(done, total) / max(total, 1))
        text = (
            f"{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total} {now - start:5.1f}s"
        )
        _draw(out, text, final, tty)


def _draw(out: TextIO, text: str, final: bool, tty: bool) -> None:
    """A bar in place on a terminal; a whole line per update anywhere else."""
    if tty:
        out.write("\r" + text + ("\n" if final else ""))
    else:
        out.write(text + "\n")
    out.flush()


class EpochProgress:
    """Per-epoch progress of a training step: a bar on a terminal, one line per epoch otherwise.

    Framework-free: a Keras callback (:func:`edgelesspart.model.training.progress_callback`) or a
    hand-written loop calls :meth:`epoch` after each epoch with its metrics. The line reads
    ``backbone: epoch 3/8  loss 0.412  val_loss 0.398  12.3s``; early stopping ends it with
    :meth:`close`.
    """

    def __init__(
        self, label: str, epochs: int, *, stream: TextIO | None = None, enabled: bool = True
    ) -> None:
        self.label, self.epochs, self.enabled = label, int(epochs), enabled
        self.out = stream or sys.stderr
        self.tty = _is_tty(self.out)
        self.start = time.perf_counter()
        self.done = 0
        self._open = False

    def epoch(self, index: int, metrics: dict | None = None) -> None:
        """Report that epoch ``index`` (0-based) ended with ``metrics`` (name -> number)."""
        self.done = index + 1
        if not self.enabled:
            return
        shown = "  ".join(
            f"{k} {float(v):.4g}" for k, v in (metrics or {}).items() if _is_number(v)
        )
        elapsed = time.perf_counter() - self.start
        width = 20
        if self.tty:
            filled = int(width * min(self.done, self.epochs) / max(self.epochs, 1))
            bar = f"[{'#' * filled}{'.' * (width - filled)}] "
        else:
            bar = ""
        parts = [f"{self.label}: {bar}epoch {self.done}/{self.epochs}", shown, f"{elapsed:.1f}s"]
        final = self.done >= self.epochs
        _draw(self.out, "  ".join(p for p in parts if p), final, self.tty)
        self._open = self.tty and not final

    def close(self) -> None:
        """End the bar's line (after early stopping) so later output starts on a fresh line."""
        if self.enabled and self._open:
            self.out.write("\n")
            self.out.flush()
            self._open = False


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
