"""The run-time half of edgelesspart.dynamic imports without TensorFlow or Keras."""

from __future__ import annotations

import subprocess
import sys

RUNTIME_MODULES = (
    "edgelesspart.dynamic.widths",
    "edgelesspart.dynamic.controller",
    "edgelesspart.dynamic.stage",
    "edgelesspart.dynamic.pipeline",
    "edgelesspart.dynamic.edge",
    "edgelesspart.dynamic.app",
    "edgelesspart.commands.dynamic",
)


def test_runtime_modules_do_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        f"for m in {RUNTIME_MODULES!r}: __import__(m)\n"
        "heavy = [m for m in ('tensorflow', 'keras', 'ray') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
