"""A dependency-free progress bar for long CLI steps (profiling, evaluation, replay)."""

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
    throttled (every 0.1 s on a terminal, every 5 s elsewhere); the last step is always drawn.
    """
    out = stream or sys.stderr
    start = last = time.perf_counter()
    every = REDRAW_TTY_S if _is_tty(out) else REDRAW_PIPE_S
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
        bar = "#" * filled + "." * (width - filled)
        out.write(f"\r{label} [{bar}] {done}/{total} {now - start:5.1f}s")
        if final:
            out.write("\n")
        out.flush()
