"""A dependency-free progress bar for long CLI steps (profiling, evaluation)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TextIO, TypeVar

T = TypeVar("T")


def progress(
    items: Iterable[T],
    total: int,
    label: str,
    *,
    stream: TextIO | None = None,
    enabled: bool = True,
) -> Iterator[T]:
    """Yield ``items`` while drawing ``label [#####.....] k/total  elapsed`` on ``stream``.

    Draws on stderr by default and only when enabled, so piped output stays clean.
    """
    out = stream or sys.stderr
    start = time.perf_counter()
    width = 28
    for done, item in enumerate(items, start=1):
        yield item
        if enabled:
            filled = int(width * done / max(total, 1))
            bar = "#" * filled + "." * (width - filled)
            elapsed = time.perf_counter() - start
            out.write(f"\r{label} [{bar}] {done}/{total} {elapsed:5.1f}s")
            if done >= total:
                out.write("\n")
            out.flush()
