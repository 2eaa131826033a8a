"""Output directories of the ``package-*`` commands: defaults per provider, no silent overwrite.

Every package directory gets a marker file, :data:`MARKER`, naming what wrote it. A non-empty
directory is refused unless ``--overwrite`` is given, and even then only a directory that holds
the marker is emptied: ``--out .`` or ``--out ~`` by mistake never deletes anything.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from edgelesspart.errors import ConfigError

MARKER = ".edgelesspart-package.json"


def default_out(kind: str) -> Path:
    """``dist/lambda``, ``dist/gcf`` or ``dist/edge-<target>`` (``kind`` is the last part)."""
    return Path("dist") / kind


def check_out(out: Path, overwrite: bool) -> bool:
    """Whether ``out`` holds an earlier package to replace; raise if it may not be replaced.

    Called before any slow work, so a refusal comes at once.

    Raises:
        ConfigError: ``out`` holds files and ``overwrite`` is false, or it holds files that
            no ``package-*`` command wrote (no marker), or it is a file.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; choose a directory.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError(
                f"{out} already holds files; pass --overwrite to replace them, or choose "
                "another --out."
            )
        if not (out / MARKER).is_file():
            raise ConfigError(
                f"{out} holds files that no edgelesspart package-* command wrote (no {MARKER}); "
                "refusing to delete them even with --overwrite. Choose another --out."
            )
        return True
    return False


def prepare_out(out: Path, overwrite: bool) -> None:
    """Make ``out`` an empty directory (see :func:`check_out` for what is refused)."""
    if check_out(out, overwrite):
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def write_marker(out: Path, kind: str, bundle_id: str, **extra: object) -> None:
    """Record in ``out`` that a ``package-*`` command wrote it (``kind``: lambda, gcf, edge-...)."""
    record = {"kind": kind, "bundle_id": bundle_id, **extra}
    (out / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
