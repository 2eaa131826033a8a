"""``package-cloud``: the Lambda zip, its size limits, the SAM template, Dockerfiles and the CLI.

These build code-only zips (``vendor=False``, offline); the zip with its dependencies vendored
for the Lambda platform, run alone under RIE, is tests/packaging/test_lambda_zip.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile

import pytest
import yaml

from edgelesspart.errors import BundleError, ConfigError


@pytest.fixture(scope="module")
def encoded(tiny_bundle) -> bytes:
    """Three real boundary rows (the edge stage run without an early exit), wire-encoded."""
    import numpy as np

    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.codecs import encode_tensor
    from edgelesspart.runtime.executor import ProgressiveExecutor
    from edgelesspart.runtime.manifest import load_manifest

    bundle = Bundle.load(tiny_bundle, stages=["edge"], pool_size=1)
    x = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    boundary = ProgressiveExecutor(bundle, "edge").run(x, threshold=2.0).boundary
    meta = {"bundle_id": load_manifest(tiny_bundle).bundle_id}
    return encode_tensor(boundary, "raw", meta=meta)


@pytest.fixture(scope="module")
def package(tiny_bundle, tmp_path_factory):
    from edgelesspart.packaging.cloud_lambda import build_package

    out = tmp_path_factory.mktemp("pkg") / "dist"
    return build_package(tiny_bundle, out, vendor=False), out


def test_zip_holds_runtime_core_handler_and_cloud_segments_only(package):
    # GIVEN the package of the tiny bundle
    report, _ = package
    names = set(zipfile.ZipFile(report.zip_path).namelist())
    # THEN it has the core, the handler and the cloud .tflite segments (no requirements.txt:
    # Lambda ignores one, the dependencies are vendored)
    assert {"edgelesspart/__init__.py", "edgelesspart/errors.py", "edgelesspart/runtime/cloud.py",
            "cloud_functions/handler.py", "cloud_functions/bundle/manifest.json"} <= names
    assert "requirements.txt" not in names
    segments = {n.rsplit("/", 1)[-1] for n in names if "/segments/" in n}
    assert segments == {"cloud_0.tflite", "cloud_1.tflite"}
    # AND nothing that needs TensorFlow or belongs to the edge or the build
    assert not [n for n in names if n.endswith(".keras") or "edge_runtime" in n]
    assert not [n for n in names if n.startswith("edgelesspart/") and "runtime" not in n
                and n not in ("edgelesspart/__init__.py", "edgelesspart/errors.py")]
    _, out = package
    requirements = (out / "image" / "requirements.txt").read_text()  # the container route's
    assert "numpy==" in requirements and "ai-edge-litert==" in requirements
    assert "lz4==" in requirements and "zstandard==" in requirements  # every core codec decodes
    assert report.zipped_bytes == report.zip_path.stat().st_size


def test_packaged_manifest_is_restricted_and_keeps_the_bundle_id(package, tiny_bundle):
    from edgelesspart.runtime.manifest import load_manifest

    report, _ = package
    packaged = json.loads(
        zipfile.ZipFile(report.zip_path).read("cloud_functions/bundle/manifest.json")
    )
    assert packaged["bundle_id"] == load_manifest(tiny_bundle).bundle_id
    assert all(set(s["files"]) == {"tflite"} for s in packaged["segments"])
    assert packaged["extra"]["package"]["stages"] == ["cloud"]
    assert packaged["extra"]["package"]["omitted"] == [
        "segments/edge_0.tflite", "segments/edge_1.tflite"
    ]


def test_extracted_zip_runs_the_handler_on_its_own(package, tmp_path, encoded):
    # GIVEN the zip extracted alone, as Lambda does
    report, _ = package
    zipfile.ZipFile(report.zip_path).extractall(tmp_path)
    (tmp_path / "payload.bin").write_bytes(encoded)
    script = (
        "import json, sys\n"
        "from edgelesspart.runtime.codecs import to_base64\n"
        "import cloud_functions.handler as h, edgelesspart\n"
        "event = {'tensor_b64': to_base64(open('payload.bin','rb').read()), 'threshold': 2}\n"
        "r = h.handler(event, None)\n"
        "print(json.dumps({'file': edgelesspart.__file__, 'cold': r['cold_start'],\n"
        "  'exits': [a['exit'] for a in r['answers']], 'tf': 'tensorflow' in sys.modules}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "EDGELESSPART_BUNDLE"}
    env["PYTHONPATH"] = str(tmp_path)
    # WHEN the handler is imported from there and invoked
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # THEN the packaged code (not the repo) answered, cold, without TensorFlow
    assert result["file"].startswith(str(tmp_path))
    assert result["cold"] is True and result["exits"] == ["final"] * 3 and not result["tf"]


def test_sam_template_is_plain_yaml_and_names_the_handler(package):
    _, out = package
    text = (out / "template.yaml").read_text()
    template = yaml.safe_load(text)
    function = template["Resources"]["CloudPartFunction"]
    assert function["Type"] == "AWS::Serverless::Function"
    props = function["Properties"]
    assert props["Handler"] == "cloud_functions.handler.handler"
    assert props["Runtime"] == "python3.12" and props["MemorySize"] == 2048
    assert props["CodeUri"] == "function.zip"
    variables = props["Environment"]["Variables"]
    assert variables["EDGELESSPART_BUNDLE"].endswith("cloud_functions/bundle")
    assert "!Ref" not in text and "!GetAtt" not in text
    assert "cloud_functions.handler.handler" in (out / "image" / "Dockerfile").read_text()
    assert not (out / "Dockerfile.edge").exists()  # package-edge is the one edge generator


@pytest.mark.parametrize(
    ("limits", "pattern"),
    [
        ({"zipped_bytes": 1000}, "zip is .* over Lambda"),
        ({"unzipped_bytes": 1000}, "unzipped, over Lambda"),
    ],
)
def test_package_over_a_lambda_limit_becomes_a_container_image(
    tiny_bundle, tmp_path, limits, pattern
):
    import re

    from edgelesspart.packaging.cloud_lambda import LambdaLimits, build_package

    # WHEN the zip would break a limit
    report = build_package(
        tiny_bundle, tmp_path / "out", limits=LambdaLimits(**limits), vendor=False
    )
    # THEN no zip is left behind, the template deploys the image, and the report says why
    assert not (tmp_path / "out" / "function.zip").exists() and report.zip_path is None
    assert re.search(pattern, report.container_reason)
    assert "container image" in report.summary() and "sam build" in report.summary()
    template = yaml.safe_load((tmp_path / "out" / "template.yaml").read_text())
    assert template["Resources"]["CloudPartFunction"]["Properties"]["PackageType"] == "Image"
    assert (tmp_path / "out" / "image" / "Dockerfile").is_file()


def test_validate_sam_rejects_short_form_tags():
    from edgelesspart.packaging.cloud_lambda import validate_sam

    with pytest.raises(ConfigError, match="long form"):
        validate_sam("Resources:\n  F:\n    Type: AWS::Serverless::Function\n    X: !Ref Y\n")


def test_deploy_options_reject_a_bad_function_name():
    from edgelesspart.packaging.cloud_lambda import DeployOptions

    with pytest.raises(ConfigError, match="function name"):
        DeployOptions(function_name="bad name!")


def test_unknown_stage_is_refused(tiny_bundle, tmp_path):
    from edgelesspart.packaging.cloud_lambda import build_package

    with pytest.raises(BundleError, match="Unknown stage"):
        build_package(tiny_bundle, tmp_path, stages=["nowhere"], vendor=False)


@pytest.mark.registry
@pytest.mark.parametrize("arch", ["arm64"])
def test_cli_package_cloud_vendors_for_the_lambda_platform(tiny_bundle, tmp_path, capsys, arch):
    from deploy_registry import require_registry

    from edgelesspart.cli import main

    require_registry()
    argv = ["package-cloud", str(tiny_bundle), "--out", str(tmp_path / "dist"), "--provider",
            "lambda", "--arch", arch]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "function.zip" in out and "lambda-python3.12-arm64" in out
    names = zipfile.ZipFile(tmp_path / "dist" / "function.zip").namelist()
    # THEN numpy's extension in the zip is the cp312 aarch64 build, not this machine's
    assert [n for n in names if n.startswith("numpy/_core/_multiarray_umath.cpython-312-aarch64")]


@pytest.mark.parametrize("command", ["serve-edge", "serve-cloud", "package-cloud"])
def test_cli_help_is_fast_and_tensorflow_free(command):
    code = (
        "import sys\nfrom edgelesspart.cli import main\n"
        f"try:\n    main(['{command}', '--help'])\n"
        "except SystemExit as e:\n    assert e.code == 0\n"
        "bad = [m for m in ('tensorflow', 'flask', 'boto3') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--host" in done.stdout or "--out" in done.stdout


def test_requirements_add_what_the_bundle_codec_needs():
    from edgelesspart.packaging.cloud_lambda import requirements_text

    assert "zfpy" not in requirements_text("int8+zstd")
    zfp = requirements_text("zfp+lz4").splitlines()
    assert any(line.startswith("zfpy") for line in zfp)
    assert len(zfp) == len(set(zfp))  # lz4 is listed once
