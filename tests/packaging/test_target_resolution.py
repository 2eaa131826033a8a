"""pip's own resolver on every generated requirement set, for its target's Python and platform.

For each target table (edgelesspart/packaging/targets.py) the requirements an artifact really
installs are read back from the artifact (the edge Dockerfile's ``pip install`` lines, the
Lambda image's and the GCF source's requirements.txt) and resolved with
``pip install --dry-run --only-binary=:all: --implementation cp --python-version X --platform
manylinux_..._<arch> --report``: every pin must resolve, at exactly the pinned version, to a
wheel for that platform, with all its dependencies. Needs the package registry (marked
``registry``; skipped with a message when it is unreachable). About 5-15 s per target.
"""

from __future__ import annotations

import pytest
from deploy_checks import pip_requirements, run_lines
from deploy_registry import require_registry, resolve

from edgelesspart.packaging.targets import TARGETS, pip_platform_args

pytestmark = [pytest.mark.registry, pytest.mark.timeout(900)]


def _edge_requirements(tiny_bundle, tmp, target, backend):
    from edgelesspart.packaging.edge import EdgePackageOptions, build_edge_package

    out = tmp / f"{target}-{backend}"
    build_edge_package(tiny_bundle, out, EdgePackageOptions(target, backend))
    text = (out / "Dockerfile").read_text()
    return [r for run in run_lines(text) for r in pip_requirements(run)]


def _cloud_requirements(tiny_bundle, tmp, name):
    from edgelesspart.packaging.cloud_gcf import gcf_requirements
    from edgelesspart.packaging.cloud_lambda import DeployOptions, build_package, requirements_text

    if name == "gcf-python312":
        # what build_gcf_package writes, with the zfp codec's extra (zfpy) to cover it too
        return gcf_requirements("zfp+lz4").split()
    arch = "arm64" if name.endswith("arm64") else "x86_64"
    report = build_package(
        tiny_bundle, tmp / name, options=DeployOptions(architecture=arch), vendor=False
    )
    shipped = (report.out / "image" / "requirements.txt").read_text().split()
    assert shipped == requirements_text("raw", name).split()
    return requirements_text("zfp+lz4", name).split()


CASES = {
    "l4t-r36": ("jetson", "keras"),
    "bookworm-arm64": ("rpi", "litert"),
    "bookworm-amd64": ("x86", "keras"),
    "lambda-python3.12-x86_64": None,
    "lambda-python3.12-arm64": None,
    "gcf-python312": None,
}


@pytest.mark.parametrize("name", list(CASES))
def test_generated_requirements_resolve_for_their_target(name, tiny_bundle, tmp_path):
    require_registry()
    target = TARGETS[name]
    edge = CASES[name]
    if edge:
        requirements = _edge_requirements(tiny_bundle, tmp_path, *edge)
    else:
        requirements = _cloud_requirements(tiny_bundle, tmp_path, name)
    if name == "l4t-r36":
        # NVIDIA's tensorflow==2.16.1+nv24.08 lives on developer.download.nvidia.com, which is no
        # package registry; the PyPI 2.16.1 it is built from carries the same requirements.
        nvidia = [r for r in requirements if "+nv" in r]
        assert nvidia == ["tensorflow==2.16.1+nv24.08"]
        requirements = [r.split("+")[0] if "+nv" in r else r for r in requirements]
    # WHEN pip resolves them for the target's interpreter and platform
    resolved = resolve(requirements, pip_platform_args(target), tmp_path)
    # THEN every pin resolves at its version, to a wheel built for that Python and platform
    for requirement in requirements:
        pkg, _, version = requirement.partition("==")
        item = resolved[pkg.lower()]
        assert item["metadata"]["version"] == version, (name, requirement)
    for pkg, item in resolved.items():
        wheel = item["download_info"]["url"].rsplit("/", 1)[-1]
        assert wheel.endswith(".whl"), (name, pkg, wheel)
        tags = wheel[:-4].split("-")[-3:]
        assert tags[2] == "any" or tags[2].endswith(target.arch), (name, wheel)
        assert tags[0] in ("py3", "py2.py3", target.abi) or tags[1] == "abi3", (name, wheel)
