"""The stage actors run on devices without TensorFlow: the runtime side of the pipeline
(stage, dispatcher, HTTP app, emulation, energy, Ray helpers) must not import it."""

from __future__ import annotations

import subprocess
import sys

MODULES = (
    "edgelesspart.pipeline.stage",
    "edgelesspart.pipeline.dispatcher",
    "edgelesspart.pipeline.app",
    "edgelesspart.pipeline.emulation",
    "edgelesspart.pipeline.energy",
    "edgelesspart.pipeline.raykit",
    "edgelesspart.planning.chain",
    "edgelesspart.commands.serve_pipeline",
)


def test_runtime_side_imports_without_tensorflow():
    code = (
        "import sys, importlib\n"
        f"for m in {MODULES!r}: importlib.import_module(m)\n"
        "bad = [m for m in ('tensorflow', 'keras', 'ray') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "", f"imported at module level: {done.stdout.strip()}"
