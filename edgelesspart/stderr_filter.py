"""Keep TensorFlow and LiteRT start-up noise off the CLI's stderr (unless ``--verbose``).

TensorFlow 2.21 logs through absl before ``absl::InitializeLog()`` is called, so
``TF_CPP_MIN_LOG_LEVEL`` no longer hides its oneDNN line, and LiteRT's "Created TensorFlow Lite
XNNPACK delegate for CPU." comes from native code that no Python setting reaches. Both write to
file descriptor 2 directly. :func:`filter_stderr` therefore puts a pipe on fd 2 and a thread
that copies it to the real stderr, dropping only lines that match :data:`NOISE` (nothing is
reordered; progress bars ending in a carriage return pass through at once).
:meth:`StderrFilter.close` restores fd 2 and drains the pipe; it also runs at interpreter exit.
"""

from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading
import warnings

#: Lines dropped from stderr: native start-up logs of TensorFlow/XLA/absl and LiteRT, and the
#: Python absl logger's warnings. Errors (``E0000``/``F0000`` lines) are kept.
NOISE = re.compile(
    rb"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    rb"|[IW]\d{4} [\d:. ]+\d+ \S+:\d+\]"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate"
    rb"|INFO: Initialized TensorFlow Lite runtime"
    rb"|To enable the following instructions: .* rebuild TensorFlow"
    rb"|WARNING:absl:"
    rb"|WARNING: Logging before InitGoogleLogging"
    rb")"
)
_NOISE_PREFIXES = (b"WARNING:", b"INFO:", b"I0", b"W0", b"To enable")


#: Filters in place, newest last (progress bars ask the newest whether stderr is a terminal).
ACTIVE: list[StderrFilter] = []


def stderr_is_terminal() -> bool | None:
    """Whether the stderr behind an active filter is a terminal; ``None`` when none is active."""
    return ACTIVE[-1].was_tty if ACTIVE else None


class StderrFilter:
    """fd 2 through a pipe and a copying thread that drops :data:`NOISE` lines."""

    def __init__(self) -> None:
        sys.stderr.flush()
        self.was_tty = os.isatty(2)  # fd 2 becomes a pipe: remember what the user sees
        self._original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
        self._read_end = read_end
        self._thread = threading.Thread(target=self._pump, name="stderr-filter", daemon=True)
        self._thread.start()
        self.closed = False
        self.dropped = 0
        ACTIVE.append(self)

    def _emit(self, data: bytes) -> None:
        if data:
            os.write(self._original, data)

    def _flush_lines(self, buffer: bytes) -> bytes:
        """Write every finished line (``\\n`` or ``\\r``) that is not noise; return the rest."""
        start = 0
        for match in re.finditer(rb"[\r\n]", buffer):
            line = buffer[start : match.end()]
            start = match.end()
            if NOISE.match(line.lstrip(b"\r")):
                self.dropped += 1
            else:
                self._emit(line)
        rest = buffer[start:]
        if rest and not rest.lstrip(b"\r").startswith(_NOISE_PREFIXES):
            self._emit(rest)  # a partial line that cannot be noise: show it now
            return b""
        return rest

    def _pump(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = os.read(self._read_end, 65536)
            except OSError:
                break
            if not chunk:
                break
            try:
                buffer = self._flush_lines(buffer + chunk)
            except OSError:
                buffer = b""
        if buffer and not NOISE.match(buffer):
            self._emit(buffer)
        os.close(self._read_end)

    def close(self, timeout_s: float = 2.0) -> None:
        """Put the real stderr back on fd 2 and let the thread drain the pipe."""
        if self.closed:
            return
        self.closed = True
        if self in ACTIVE:
            ACTIVE.remove(self)
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self._original, 2)  # closes the pipe's last write end we hold
        self._thread.join(timeout_s)
        if not self._thread.is_alive():
            os.close(self._original)
        # else a child process still holds the pipe (it inherited fd 2): the thread keeps
        # copying its lines to the real stderr, so that descriptor stays open (closing it would
        # let the next open() reuse the number and receive those lines).


def quiet_python_loggers() -> None:
    """Silence the Python-side start-up chatter (absl, TF and Keras warnings, ``UserWarning``)."""
    for name in ("absl", "tensorflow", "keras", "h5py"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"(keras|tensorflow|absl)")


def filter_stderr() -> StderrFilter | None:
    """Start filtering fd 2 (closed again at exit); ``None`` when fd 2 cannot be redirected."""
    try:
        active = StderrFilter()
    except OSError:
        return None
    atexit.register(active.close)
    return active
