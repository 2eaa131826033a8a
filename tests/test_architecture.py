"""The layout and the dependency rule (docs/architecture.md): the import-linter contracts hold,
the root of ``edgelesspart`` stays small, and every subpackage says what it owns."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "edgelesspart"


def _lint_imports() -> str:
    found = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if found is None:
        pytest.skip("import-linter is not installed (it is in the dev extra)")
    return found


def test_import_contracts_hold():
    # GIVEN the contracts in pyproject.toml (layers, forbidden, independence, acyclic siblings)
    # WHEN import-linter checks the four root packages, function-level imports included
    done = subprocess.run(
        [_lint_imports(), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    # THEN every contract is kept
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_broken_layer_is_caught(tmp_path):
    # GIVEN a copy of the project where the runtime core imports the planner (an arrow upward)
    copy = tmp_path / "copy"
    shutil.copytree(
        ROOT,
        copy,
        ignore=shutil.ignore_patterns(".venv*", ".git", "results", "bundles", "build", "dist"),
    )
    executor = copy / "edgelesspart" / "runtime" / "executor.py"
    executor.write_text(
        executor.read_text() + "\n\ndef _up():\n    from edgelesspart.planning import planner\n"
    )
    # WHEN import-linter runs on the copy
    env = {"PYTHONPATH": str(copy), "PATH": str(Path(sys.executable).parent)}
    done = subprocess.run(
        [_lint_imports(), "--no-cache"],
        cwd=copy,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    # THEN the layers contract breaks and names the import
    assert done.returncode != 0
    assert "edgelesspart.runtime.executor -> edgelesspart.planning.planner" in done.stdout


def test_root_keeps_at_most_eight_modules():
    modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(modules) <= 8, modules


@pytest.mark.parametrize(
    "package",
    sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py")),
)
def test_every_subpackage_says_what_it_owns(package):
    init = PACKAGE / package / "__init__.py"
    doc = ast.get_docstring(ast.parse(init.read_text()))
    assert doc and len(doc.split()) >= 15, f"{init} needs a paragraph on what it owns"
