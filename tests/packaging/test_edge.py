"""``package-edge``: the rendered Dockerfile, systemd unit and env file, checked as text."""

from __future__ import annotations

import configparser
import json

import pytest

from edgelesspart.cli import main
from edgelesspart.errors import ConfigError
from edgelesspart.packaging.edge import EdgePackageOptions, build_edge_package
from edgelesspart.runtime.bundle import Bundle
from edgelesspart.runtime.manifest import load_manifest


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, rest) of every non-comment line of a Dockerfile."""
    rows = []
    for line in dockerfile.splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            word, _, rest = line.strip().partition(" ")
            rows.append((word, rest))
    return rows


def unit(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # keep ExecStart's case
    parser.read_string(text)
    return parser


def env_lines(text: str) -> dict[str, str]:
    pairs = [line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#")]
    return {key: value for key, value in pairs}


@pytest.fixture(scope="module")
def packages(tiny_bundle, tmp_path_factory):
    """The package of the tiny bundle for every (target, backend) the CLI accepts."""
    out = {}
    for target, backend in (
        ("rpi", "litert"),
        ("jetson", "keras"),
        ("jetson", "litert"),
        ("x86", "keras"),
    ):
        path = tmp_path_factory.mktemp(f"{target}-{backend}")
        code = main(
            [
                "package-edge",
                str(tiny_bundle),
                "--target",
                target,
                "--backend",
                backend,
                "--out",
                str(path),
                "--cloud",
                "http://10.0.0.5:9000",
            ]
        )
        assert code == 0
        out[(target, backend)] = path
    return out


def test_pi_image_is_slim_arm64_litert_without_tensorflow(packages):
    # GIVEN the Raspberry Pi package
    root = packages[("rpi", "litert")]
    docker = (root / "Dockerfile").read_text()
    rows = instructions(docker)
    # THEN it starts FROM slim arm64 Python, installs LiteRT and never TensorFlow
    assert rows[0] == ("FROM", "--platform=linux/arm64 python:3.11-slim-bookworm")
    code = "\n".join(f"{w} {r}" for w, r in rows).lower()  # comments may say "no TensorFlow"
    assert "tensorflow" not in code and "keras" not in code
    assert any(w == "RUN" and "ai-edge-litert==" in r for w, r in rows)
    # AND its entrypoint serves the copied bundle with the litert backend as nobody
    entry = json.loads(next(r for w, r in rows if w == "ENTRYPOINT"))
    assert entry[:3] == ["edgelesspart", "serve-edge", "/app/bundle"]
    assert entry[entry.index("--backend") + 1] == "litert"
    assert ("USER", "nobody") in rows


def test_jetson_keras_image_is_l4t_jetpack_with_tensorflow_on_the_gpu(packages):
    root = packages[("jetson", "keras")]
    rows = instructions((root / "Dockerfile").read_text())
    assert rows[0][0] == "FROM" and "nvcr.io/nvidia/l4t-jetpack:" in rows[0][1]
    assert "linux/arm64" in rows[0][1]
    install = " ".join(r for w, r in rows if w == "RUN")
    assert "tensorflow==" in install and "--extra-index-url https://" in install
    service = unit((root / "edgelesspart-edge.service").read_text())
    exec_start = service["Service"]["ExecStart"]
    assert "--runtime nvidia" in exec_start
    assert "--env-file /etc/edgelesspart/edge.env" in exec_start
    assert "-p 127.0.0.1:8080:8080" in exec_start
    assert service["Install"]["WantedBy"] == "multi-user.target"
    assert service["Unit"]["Requires"] == "docker.service"


def test_jetson_litert_and_x86_keras_images(packages):
    jetson = instructions((packages[("jetson", "litert")] / "Dockerfile").read_text())
    assert jetson[0] == ("FROM", "--platform=linux/arm64 python:3.11-slim-bookworm")
    x86 = (packages[("x86", "keras")] / "Dockerfile").read_text()
    assert instructions(x86)[0] == ("FROM", "--platform=linux/amd64 python:3.11-slim-bookworm")
    assert "tensorflow==" in x86
    service = unit((packages[("x86", "keras")] / "edgelesspart-edge.service").read_text())
    assert "--runtime nvidia" not in service["Service"]["ExecStart"]


def test_env_file_and_bundle_copy(packages, tiny_bundle):
    root = packages[("rpi", "litert")]
    env = env_lines((root / "edge.env").read_text())
    codec = load_manifest(tiny_bundle, verify=False).codec.get("name", "raw")
    assert env["EDGELESSPART_CLOUD"] == "http://10.0.0.5:9000"
    assert env["EDGELESSPART_BACKEND"] == "litert" and env["EDGELESSPART_CODEC"] == codec
    assert env["EDGELESSPART_TOKEN"] == ""  # the operator must set one
    # the build context carries the edge stage only, which loads with its hashes verified
    manifest = load_manifest(root / "bundle", verify=False)
    edge = manifest.stage_names[0]
    shipped = {p.name for p in (root / "bundle" / "segments").iterdir()}
    assert shipped == {
        rel.split("/")[-1] for s in manifest.segments if s.stage == edge for rel in s.files.values()
    }
    Bundle.load(root / "bundle", stages=[edge], pool_size=1, verify=True)
    assert (root / "src" / "edgelesspart" / "runtime" / "segments.py").is_file()
    assert not list((root / "src").rglob("__pycache__"))


def test_bad_options_are_refused_before_anything_is_written(tiny_bundle, tmp_path):
    with pytest.raises(ConfigError, match="rpi target ships LiteRT only"):
        EdgePackageOptions(target="rpi", backend="keras")
    with pytest.raises(ConfigError, match="not allowed in a Dockerfile"):
        EdgePackageOptions(target="x86", cloud="http://x;rm -rf /")
    with pytest.raises(ConfigError, match="Unknown target 'android'"):
        EdgePackageOptions(target="android")
    out = tmp_path / "never"
    with pytest.raises(ConfigError):
        build_edge_package(tiny_bundle, out, EdgePackageOptions(target="x86", port=70000))
    assert not out.exists()
