"""The Lambda zip deploys on its own: unzipped into an empty directory, it answers under AWS's
Runtime Interface Emulator with nothing else on the path.

What is honest here: the zip must *run* on this machine, so its dependencies are vendored for
this machine's interpreter and platform (CPython 3.11, x86_64 manylinux), with the pins of the
Lambda python3.12 table, through the same :func:`build_package` code path as the real
``--arch x86_64|arm64`` packages. That python3.12 wheels resolve for both Lambda platforms is
checked by test_target_resolution.py; this test checks that the zip is self-contained.

The runtime side mimics Lambda's: the function code is in the task root (the unzipped
directory, the working directory), and the runtime client (``awslambdaric``, which Lambda keeps
in ``/var/runtime``) is copied into a separate runtime directory. Python runs with ``-S -s`` (no
site-packages) and ``PYTHONPATH`` = that runtime directory only, so numpy, LiteRT, lz4 and the
runtime core can only come from the zip. Needs the package registry and the RIE binary (both
skipped with a message when unavailable).
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import requests
from deploy_registry import require_registry
from lambda_rie import INVOKE, rie_binary, running_rie

pytestmark = [pytest.mark.registry, pytest.mark.integration, pytest.mark.timeout(900)]

RUNTIME_CLIENT = ("awslambdaric", "runtime_client", "simplejson", "snapshot_restore_py")


def host_target():
    """A target table for this machine: the Lambda pins, this Python, this platform."""
    from edgelesspart.packaging.targets import TARGETS, Target

    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the self-contained zip is run on Linux x86_64 only (RIE binary)")
    if sys.version_info < (3, 11):
        pytest.skip("the Lambda table pins numpy 2.4, which needs Python >= 3.11")
    libc, version = platform.libc_ver()
    if libc != "glibc":
        pytest.skip(f"manylinux wheels need glibc, this machine has {libc or 'unknown'}")
    major, minor = (int(v) for v in version.split(".")[:2])
    lam = TARGETS["lambda-python3.12-x86_64"]
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    return Target("host", f"this machine (CPython {python})", python, "x86_64", (major, minor),
                  lam.pins)  # fmt: skip


def _runtime_dir(into: Path) -> Path:
    """Lambda's /var/runtime stand-in: awslambdaric and its own dependencies, nothing else."""
    import awslambdaric

    site = Path(awslambdaric.__file__).resolve().parents[1]
    into.mkdir()
    for entry in site.iterdir():
        if entry.name.split(".")[0].split("-")[0] in RUNTIME_CLIENT:
            target = into / entry.name
            (shutil.copytree if entry.is_dir() else shutil.copyfile)(entry, target)
    return into


@pytest.fixture(scope="module")
def lambda_zip(tiny_bundle, tmp_path_factory):
    require_registry()
    from edgelesspart.packaging.cloud_lambda import build_package

    target = host_target()
    out = tmp_path_factory.mktemp("lambda") / "dist"
    return build_package(tiny_bundle, out, target=target)


def test_zip_is_within_the_limits_and_holds_its_dependencies(lambda_zip):
    report = lambda_zip
    assert report.zip_path is not None and report.container_reason is None
    names = set(zipfile.ZipFile(report.zip_path).namelist())
    assert "requirements.txt" not in names  # Lambda ignores one; the deps are in the zip
    for package in ("numpy/__init__.py", "ai_edge_litert/__init__.py", "lz4/__init__.py",
                    "zstandard/__init__.py", "cloud_functions/handler.py"):  # fmt: skip
        assert package in names, package
    assert not [n for n in names if n.endswith(".pyc")]
    assert report.zipped_bytes <= 50 * 2**20 and report.unzipped_bytes <= 250 * 2**20
    assert {v.split("==")[0] for v in report.vendored} >= {"numpy", "ai-edge-litert"}


def test_unzipped_package_runs_alone_under_the_runtime_interface_emulator(
    lambda_zip, tmp_path, tiny_bundle
):
    from edgelesspart.runtime.codecs import encode_tensor, to_base64
    from edgelesspart.runtime.manifest import load_manifest

    rie = rie_binary()
    # GIVEN the zip unzipped into an empty directory, and a runtime directory with the client
    task = tmp_path / "task"
    task.mkdir()
    zipfile.ZipFile(lambda_zip.zip_path).extractall(task)
    runtime = _runtime_dir(tmp_path / "runtime")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(runtime),
        "LAMBDA_TASK_ROOT": str(task),
        "AWS_LAMBDA_FUNCTION_NAME": "edgelesspart-cloud",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
        "AWS_LAMBDA_FUNCTION_TIMEOUT": "60",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    command = [sys.executable, "-S", "-s", "-m", "awslambdaric", "cloud_functions.handler.handler"]
    bundle_id = load_manifest(tiny_bundle).bundle_id
    boundary = np.random.default_rng(3).random((2, 16, 16, 16), dtype=np.float32)
    event = {"tensor_b64": to_base64(encode_tensor(boundary, meta={"bundle_id": bundle_id})),
             "threshold": 2.0}  # fmt: skip
    # WHEN RIE invokes the handler from there
    with running_rie(rie, command, cwd=task, env=env, log=tmp_path / "rie.log") as port:
        reply = requests.post(INVOKE.format(port), json=event, timeout=120)
    # THEN it answers every row with the cloud part's final classifier
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert "errorMessage" not in body, body
    assert [a["exit"] for a in body["answers"]] == ["final", "final"]
    assert body["bundle_id"] == bundle_id and body["cold_start"] is True
    # AND, in the same environment, every module the handler uses comes from the task root
    probe = (
        "import json, sys\nimport cloud_functions.handler, numpy, ai_edge_litert, lz4, zstandard\n"
        "mods = {m: sys.modules[m].__file__ for m in ('cloud_functions.handler', 'numpy', "
        "'ai_edge_litert', 'lz4', 'zstandard')}\n"
        "print(json.dumps({'mods': mods, 'tf': 'tensorflow' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-S", "-s", "-c", probe], cwd=task, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert all(path.startswith(str(task)) for path in result["mods"].values()), result
    assert not result["tf"]
