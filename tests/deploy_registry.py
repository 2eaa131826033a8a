"""Package-registry access for the deploy tests: skip cleanly when PyPI cannot be reached."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

INDEX = "https://pypi.org/simple/numpy/"


def require_registry() -> None:
    """Skip the calling test with a message when the package registry is unreachable."""
    import requests

    try:
        response = requests.get(
            INDEX, headers={"Accept": "application/vnd.pypi.simple.v1+json"}, timeout=10
        )
        response.raise_for_status()
    except requests.RequestException as exc:
        pytest.skip(
            f"package registry unreachable ({INDEX}: {exc}); this registry check is skipped"
        )


def resolve(requirements: list[str], pip_args: list[str], tmp: Path) -> dict[str, dict]:
    """``pip install --dry-run --report`` of ``requirements`` with ``pip_args`` (a target's
    platform options); return name (lower case) -> the report's install item."""
    report = tmp / "report.json"
    command = [
        sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
        "--disable-pip-version-check", "--target", str(tmp / "target"), "--report", str(report),
        *pip_args, *requirements,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"pip could not resolve {requirements}:\n{done.stderr[-3000:]}"
    items = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item for item in items}
