"""Every generated deployment file checked with its target's own tools, offline.

Dockerfiles (edge per target/backend, Lambda container image) parsed by Docker's parser with
shellcheck on every RUN; the systemd unit through ``systemd-analyze verify``; the SAM template
(zip and image routes) through ``cfn-lint``; pins from the target tables, not this machine.
"""

from __future__ import annotations

import json
import shlex

import pytest
from deploy_checks import (
    cfn_lint,
    parse_dockerfile,
    pip_requirements,
    redirections,
    run_lines,
    shellcheck,
    systemd_verify,
)

from edgelesspart.errors import ConfigError
from edgelesspart.packaging.targets import TARGETS, edge_target

EDGE_VARIANTS = [("rpi", "litert"), ("jetson", "litert"), ("jetson", "keras"), ("x86", "litert"),
                 ("x86", "keras")]  # fmt: skip


@pytest.fixture(scope="module")
def edge_packages(tiny_bundle, tmp_path_factory):
    """The package-edge output of the tiny bundle for every (target, backend)."""
    from edgelesspart.packaging.edge import EdgePackageOptions, build_edge_package

    out = {}
    for target, backend in EDGE_VARIANTS:
        path = tmp_path_factory.mktemp(f"edge-{target}-{backend}") / "pkg"
        options = EdgePackageOptions(target, backend, cloud="https://example.test/fn")
        build_edge_package(tiny_bundle, path, options)
        out[target, backend] = path
    return out


@pytest.fixture(scope="module")
def lambda_packages(tiny_bundle, tmp_path_factory):
    """Lambda packages (code only, no vendoring: offline) for both architectures, plus one
    forced onto the container-image route by a tiny zip limit."""
    from edgelesspart.packaging.cloud_lambda import DeployOptions, LambdaLimits, build_package

    out = {}
    for arch in ("x86_64", "arm64"):
        path = tmp_path_factory.mktemp(f"lambda-{arch}") / "pkg"
        out[arch] = build_package(
            tiny_bundle, path, options=DeployOptions(architecture=arch), vendor=False
        )
    path = tmp_path_factory.mktemp("lambda-image") / "pkg"
    out["image"] = build_package(
        tiny_bundle, path, limits=LambdaLimits(zipped_bytes=1000), vendor=False
    )
    return out


def _dockerfiles(edge_packages, lambda_packages):
    files = {f"edge {t}/{b}": p / "Dockerfile" for (t, b), p in edge_packages.items()}
    files |= {f"lambda {k}": r.out / "image" / "Dockerfile" for k, r in lambda_packages.items()}
    return files


def test_every_dockerfile_parses_and_every_run_line_passes_shellcheck(
    edge_packages, lambda_packages, tmp_path
):
    for label, path in _dockerfiles(edge_packages, lambda_packages).items():
        text = path.read_text()
        # GIVEN Docker's own parse of the generated file
        commands = parse_dockerfile(text)
        assert commands[0].cmd == "FROM", label
        assert any(c.cmd in ("ENTRYPOINT", "CMD") and c.json for c in commands), label
        runs = run_lines(text)
        assert runs, label
        for run in runs:
            # THEN shellcheck finds nothing and no word is a redirection or a pipe
            done = shellcheck(run, tmp_path)
            assert done.returncode == 0, f"{label}: {run}\n{done.stdout}"
            assert redirections(run) == [], f"{label}: {run}"


def test_edge_dockerfile_pins_come_from_the_target_table(edge_packages):
    for (target, backend), path in edge_packages.items():
        table = edge_target(target, backend)
        text = (path / "Dockerfile").read_text()
        requirements = [r for run in run_lines(text) for r in pip_requirements(run)]
        assert requirements, (target, backend)
        for requirement in requirements:
            name, _, version = requirement.partition("==")
            assert version, f"{requirement} is not pinned"
            if name == "tensorflow" and target == "jetson":
                assert version == "2.16.1+nv24.08"  # NVIDIA's JetPack build of the 2.16.1 pin
                assert version.split("+")[0] == table.pins["tensorflow"]
                continue
            assert table.pins[name] == version, (target, backend, requirement)
        assert f"the {table.name} table" in text


def test_jetson_keras_image_is_the_python310_numpy1_world(edge_packages):
    text = (edge_packages["jetson", "keras"] / "Dockerfile").read_text()
    requirements = dict(r.split("==") for run in run_lines(text) for r in pip_requirements(run))
    assert edge_target("jetson", "keras").python == "3.10"
    assert requirements["numpy"].startswith("1.")  # NVIDIA's TF 2.16 wheel needs numpy<2
    assert requirements["keras"] == TARGETS["l4t-r36"].pins["keras"]
    assert "--extra-index-url" in text


def test_systemd_unit_passes_systemd_analyze_verify(edge_packages, tmp_path):
    for (target, backend), path in edge_packages.items():
        unit = (path / "edgelesspart-edge.service").read_text()
        done = systemd_verify(unit, "edgelesspart-edge.service", tmp_path / f"{target}-{backend}")
        assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), (
            f"{target}/{backend}: {done.stdout}{done.stderr}"
        )


def test_systemd_verify_catches_a_bad_unit(tmp_path):
    # GIVEN a unit with a value systemd ignores (it only warns): the check must still fail
    bad = "[Unit]\nDescription=x\n[Service]\nExecStart=/usr/bin/docker run x\nRestart=sometimes\n"
    done = systemd_verify(bad, "bad.service", tmp_path)
    assert "Restart" in done.stdout + done.stderr or "restart" in done.stdout + done.stderr


def test_unit_hint_and_dockerfile_name_the_same_image(edge_packages, tiny_bundle, capsys):
    from edgelesspart.cli import main
    from edgelesspart.runtime.manifest import load_manifest

    image = f"edgelesspart-edge:{load_manifest(tiny_bundle).bundle_id}"
    path = edge_packages["rpi", "litert"]
    exec_start = next(
        line
        for line in (path / "edgelesspart-edge.service").read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    assert shlex.split(exec_start)[-1] == image
    assert f"docker build -t {image} ." in (path / "Dockerfile").read_text()
    # AND the CLI's next: hint builds exactly that tag
    out = path.parent / "again"
    assert main(["package-edge", str(tiny_bundle), "--target", "rpi", "--out", str(out)]) == 0
    hint = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("next:"))
    assert f"docker build -t {image} ." in hint


def test_sam_templates_pass_cfn_lint(lambda_packages):
    import yaml

    routes = ("x86_64", "arm64", "image")
    templates = [lambda_packages[route].out / "template.yaml" for route in routes]
    done = cfn_lint(*templates)  # one run: cfn-lint starts slowly
    assert done.returncode == 0, done.stdout + done.stderr
    for route, template in zip(routes, templates):
        report = lambda_packages[route]
        resources = yaml.safe_load(template.read_text())["Resources"]
        props = resources["CloudPartFunction"]["Properties"]
        if route == "image":
            assert props["PackageType"] == "Image" and "Runtime" not in props
            assert report.zip_path is None and "over Lambda" in report.container_reason
            assert not (report.out / "function.zip").exists()
        else:
            assert props["CodeUri"] == "function.zip" and props["Runtime"] == "python3.12"
            assert props["Architectures"] == [route]


def test_cfn_lint_catches_a_bad_template(tmp_path):
    bad = tmp_path / "template.yaml"
    bad.write_text(
        'AWSTemplateFormatVersion: "2010-09-09"\nTransform: AWS::Serverless-2016-10-31\n'
        "Resources:\n  F:\n    Type: AWS::Serverless::Function\n    Properties:\n"
        "      CodeUri: function.zip\n      Handler: h.h\n      Runtime: python3.12\n"
        "      MemorySize: 99999\n"
    )
    assert cfn_lint(bad).returncode != 0


def test_lambda_image_requirements_are_the_lambda_table(lambda_packages):
    for arch in ("x86_64", "arm64"):
        report = lambda_packages[arch]
        lines = (report.out / "image" / "requirements.txt").read_text().split()
        table = TARGETS[f"lambda-python3.12-{arch}"]
        assert lines == table.requirements(["numpy", "ai-edge-litert", "lz4", "zstandard"])
        assert (
            "--platform=linux/" + ("arm64" if arch == "arm64" else "amd64")
            in (report.out / "image" / "Dockerfile").read_text()
        )


def test_package_outputs_refuse_to_overwrite(tiny_bundle, tmp_path, capsys):
    from edgelesspart.cli import main
    from edgelesspart.packaging.output import MARKER

    out = tmp_path / "gcf"
    argv = ["package-cloud", str(tiny_bundle), "--provider", "gcf", "--out", str(out)]
    assert main(argv) == 0
    main_py = (out / "function" / "main.py").read_text()
    # WHEN another package (the Lambda one) targets the same directory
    lam = ["package-cloud", str(tiny_bundle), "--provider", "lambda", "--out", str(out)]
    capsys.readouterr()
    # THEN it is refused with one line and exit 2, and the GCF package is untouched
    assert main(lam) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    assert (out / "function" / "main.py").read_text() == main_py
    assert json.loads((out / MARKER).read_text())["kind"] == "gcf"
    # AND package-edge refuses the same way
    edge = ["package-edge", str(tiny_bundle), "--target", "rpi", "--out", str(out)]
    assert main(edge) == 2
    # AND --overwrite replaces it
    gcf2 = [*argv, "--overwrite", "--gcf-generation", "1"]
    assert main(gcf2) == 0
    assert json.loads((out / MARKER).read_text())["generation"] == 1


def test_overwrite_never_deletes_a_directory_it_did_not_write(tmp_path):
    from edgelesspart.packaging.output import prepare_out

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="no edgelesspart package"):
        prepare_out(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def test_default_outputs_are_per_provider():
    from edgelesspart.packaging.output import default_out

    assert str(default_out("lambda")) == "dist/lambda"
    assert str(default_out("gcf")) == "dist/gcf"
    assert str(default_out("edge-rpi")) == "dist/edge-rpi"


@pytest.mark.parametrize("generation", [1, 2])
def test_evaluate_prices_the_gcf_generation_package_cloud_packages(
    tiny_bundle, tmp_path, capsys, generation
):
    from edgelesspart.cli import main

    flag = [] if generation == 2 else ["--gcf-generation", "1"]  # 2 is both commands' default
    pkg = tmp_path / "gcf"
    argv = ["package-cloud", str(tiny_bundle), "--provider", "gcf", "--out", str(pkg), *flag]
    assert main(argv) == 0
    out = capsys.readouterr().out
    deploy = next(line for line in out.splitlines() if line.startswith("deploy: gcloud"))
    assert ("--gen2" if generation == 2 else "--no-gen2") in deploy
    assert "--runtime python312" in deploy and "--allow-unauthenticated" in deploy
    assert any(line.startswith("auth: public URL, HMAC") for line in out.splitlines())
    ev = tmp_path / "ev"
    argv = ["evaluate", str(tiny_bundle), "--out", str(ev), "--quiet", "--no-plots",
            "--provider", "gcf", "--thresholds", "0.5", *flag]  # fmt: skip
    assert main(argv) == 0
    pricing = json.loads((ev / "evaluation.json").read_text())["pricing"]
    assert pricing["name"] == ("gcf-2nd-gen" if generation == 2 else "gcf-1st-gen")
    marker = json.loads((pkg / ".edgelesspart-package.json").read_text())
    assert marker["generation"] == generation


def test_gcf_iam_deploy_hint_names_the_id_token(tiny_bundle, tmp_path, capsys):
    from edgelesspart.cli import main

    argv = ["package-cloud", str(tiny_bundle), "--provider", "gcf", "--out", str(tmp_path / "g"),
            "--auth", "iam"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "--no-allow-unauthenticated" in out and "EDGELESSPART_CLOUD_ID_TOKEN_FILE" in out
