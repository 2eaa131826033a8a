"""Package the cloud part for AWS Lambda: a self-contained zip, or a container image.

``package-cloud --provider lambda --arch x86_64|arm64`` writes (default ``dist/lambda``)::

    function.zip        the deployment package, ready to upload as it is:
        edgelesspart/__init__.py, errors.py, runtime/*.py    the TF-free runtime core
        cloud_functions/__init__.py, handler.py              the handler
        cloud_functions/bundle/manifest.json + segments/     the cloud stages' LiteRT segments
        numpy/, ai_edge_litert/, lz4/, zstandard/, ...        vendored for the Lambda platform
    template.yaml       AWS SAM: CodeUri function.zip (zip) or PackageType Image (fallback)
    image/              the container-image route: Dockerfile (FROM the Lambda python3.12 base),
                        requirements.txt (pinned for the runtime), function/ (code + segments)

The dependencies are vendored with pip's resolver for the Lambda runtime's interpreter and
platform, not this machine's: ``pip install --target --only-binary=:all: --implementation cp
--python-version 3.12 --platform manylinux_2_34_<arch> ...`` with the pins of the
``lambda-python3.12-<arch>`` table in :mod:`edgelesspart.packaging.targets`. That needs the
package registry (or ``find_links``, a directory of wheels). Lambda ignores a requirements.txt
in a zip, so none is shipped in it.

Size limits (AWS Lambda): 50 MB zipped for a direct upload and 250 MB unzipped. Both are
measured on the real zip. When the zip breaks one, no zip is written: the template switches to
``PackageType: Image`` over ``image/`` (10 GB limit) and the report says why. Every limit is a
field of :class:`LambdaLimits`, so tests can inject small ones. The staged bundle is loaded with
hash verification before anything is written, and the output directory is refused when it holds
files unless ``overwrite`` (see :mod:`edgelesspart.packaging.output`).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.packaging.targets import (
    CORE,
    LAMBDA_TARGETS,
    Target,
    get_target,
    pip_platform_args,
)
from edgelesspart.runtime.manifest import Manifest, load_manifest, safe_path, write_manifest

MIB = 1024 * 1024
REQUIREMENTS = CORE
HANDLER = "cloud_functions.handler.handler"
BUNDLE_DIR = "cloud_functions/bundle"
ZIP_NAME = "function.zip"
_ZIP_DATE = (2020, 1, 1, 0, 0, 0)
_FUNCTION_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass(frozen=True)
class LambdaLimits:
    """Deployment size limits, in bytes (AWS Lambda defaults)."""

    zipped_bytes: int = 50 * MIB
    unzipped_bytes: int = 250 * MIB


@dataclass(frozen=True)
class DeployOptions:
    """What the SAM template and the Dockerfiles say about the function."""

    function_name: str = "edgelesspart-cloud"
    memory_mb: int = 2048
    timeout_s: int = 30
    runtime: str = "python3.12"
    architecture: str = "x86_64"

    def __post_init__(self) -> None:
        if not _FUNCTION_NAME.match(self.function_name):
            raise ConfigError(
                f"Lambda function name {self.function_name!r} is invalid: use 1-64 letters, "
                "digits, '-' or '_'."
            )
        if not 128 <= self.memory_mb <= 10240:
            raise ConfigError(f"memory_mb must be in 128..10240 MB, got {self.memory_mb}.")
        if not 1 <= self.timeout_s <= 900:
            raise ConfigError(f"timeout_s must be in 1..900 s, got {self.timeout_s}.")
        if self.architecture not in LAMBDA_TARGETS:
            raise ConfigError(f"architecture must be x86_64 or arm64, got {self.architecture!r}.")
        if self.runtime != "python3.12":
            raise ConfigError(
                f"runtime {self.runtime!r} has no pinned target table; the Lambda package is "
                "built for python3.12 (edgelesspart/packaging/targets.py)."
            )

    @property
    def target(self) -> Target:
        """The pin table and platform of this function's runtime and architecture."""
        return get_target(LAMBDA_TARGETS[self.architecture])


@dataclass(frozen=True)
class PackageReport:
    """What :func:`build_package` wrote and how big it is.

    ``zip_path`` is ``None`` when the zip broke a Lambda limit; ``container_reason`` then says
    which, and the template deploys ``image/`` instead.
    """

    out: Path
    zip_path: Path | None
    zipped_bytes: int
    unzipped_bytes: int
    stages: tuple[str, ...]
    files: tuple[str, ...]
    target: str
    vendored: tuple[str, ...] = ()
    container_reason: str | None = None
    written: tuple[Path, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """Human lines for the CLI: sizes, the route taken and how to deploy it."""
        size = (
            f"{self.zipped_bytes / MIB:.2f} MiB zipped, {self.unzipped_bytes / MIB:.2f} MiB "
            f"unzipped, for {self.target}"
        )
        if self.zip_path is not None:
            lines = [f"package: {self.zip_path} ({size}; limits 50 MB zipped / 250 MB unzipped)"]
        else:
            lines = [
                f"package: container image (the zip would be {size}): {self.container_reason}",
                f"image: docker build -t edgelesspart-cloud {self.out / 'image'} (or sam build)",
            ]
        lines.append(f"stages: {', '.join(self.stages)}; {len(self.files)} files")
        if self.vendored:
            lines.append(f"vendored: {', '.join(self.vendored)}")
        lines += [f"wrote: {path}" for path in self.written]
        lines.append(
            f"deploy: cd {self.out} && sam deploy --guided"
            + (" (sam build first: it builds the image)" if self.zip_path is None else "")
        )
        lines.append(
            "edge: edgelesspart package-edge BUNDLE --target rpi|jetson|x86 --cloud "
            "lambda://FUNCTION_NAME (the one edge-image generator)"
        )
        return "\n".join(lines)


def restrict_manifest(manifest: Manifest, stages: Sequence[str]) -> Manifest:
    """The manifest a cloud package ships: LiteRT files only, noting what is left out."""
    segments = tuple(
        replace(seg, files={k: v for k, v in seg.files.items() if k == "tflite"})
        for seg in manifest.segments
    )
    kept = {seg.files["tflite"] for seg in segments if "tflite" in seg.files}
    shipped = sorted(seg.files["tflite"] for seg in segments if seg.stage in stages)
    extra = dict(manifest.extra)
    extra["package"] = {
        "stages": list(stages),
        "shipped": shipped,
        "omitted": sorted(kept - set(shipped)),
    }
    files = {rel: digest for rel, digest in manifest.files.items() if rel in kept}
    return replace(manifest, segments=segments, files=files, extra=extra)


def _cloud_stages(manifest: Manifest, stages: Sequence[str] | None) -> tuple[str, ...]:
    names = manifest.stage_names
    marked = [s.name for s in manifest.plan.stages if s.options.get("tier") == "cloud"]
    chosen = tuple((marked or names[1:]) if stages is None else stages)
    if not chosen:
        raise BundleError(
            f"Bundle has the single stage {list(names)}: there is no cloud part to package."
        )
    unknown = [s for s in chosen if s not in names]
    if unknown:
        raise BundleError(f"Unknown stage(s) {unknown}; this bundle has stages {list(names)}.")
    missing = [
        seg.name for seg in manifest.segments if seg.stage in chosen and "tflite" not in seg.files
    ]
    if missing:
        raise BundleError(
            f"Segments {missing} have no .tflite file; the cloud runtime needs LiteRT segments. "
            "Re-export the bundle with the tflite format."
        )
    return chosen


def _source_files() -> dict[str, Path]:
    """Archive name -> source file of the runtime core and the handler."""
    import cloud_functions
    import edgelesspart

    core = Path(edgelesspart.__file__).resolve().parent
    cloud = Path(cloud_functions.__file__).resolve().parent
    files = {
        "edgelesspart/__init__.py": core / "__init__.py",
        "edgelesspart/errors.py": core / "errors.py",
        "cloud_functions/__init__.py": cloud / "__init__.py",
        "cloud_functions/handler.py": cloud / "handler.py",
    }
    for path in sorted((core / "runtime").glob("*.py")):
        files[f"edgelesspart/runtime/{path.name}"] = path
    return files


def requirements_text(codec: str | None = None, target: Target | str | None = None) -> str:
    """``requirements.txt`` pinned for ``target`` (default: Lambda python3.12 x86_64).

    Always the runtime core's own dependencies (numpy, LiteRT, lz4, zstandard), plus what the
    bundle's boundary ``codec`` needs beyond them (``zfpy`` for the zfp codecs). The versions
    come from the target's table, never from this machine.
    """
    from edgelesspart.runtime.codecs import codec_packages

    table = _as_target(target)
    needed = (*REQUIREMENTS, *(codec_packages(codec) if codec else ()))
    return "\n".join(table.requirements(needed)) + "\n"


def _as_target(target: Target | str | None) -> Target:
    if isinstance(target, Target):
        return target
    return get_target(target or LAMBDA_TARGETS["x86_64"])


def vendor_requirements(
    into: Path, requirements: Sequence[str], target: Target, *, find_links: str | None = None
) -> tuple[str, ...]:
    """Install ``requirements`` and their dependencies into ``into`` for ``target``'s platform.

    pip resolves binary wheels for the target's interpreter and manylinux platform (not this
    machine's) and installs them without byte-compiling. Returns the ``name==version`` of every
    distribution installed.

    Raises:
        BundleError: pip failed (no registry, or no wheel for the target); the message has
            pip's last lines and how to package offline.
    """
    command = [
        sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
        "--no-compile", "--no-warn-script-location", "--target", str(into),
        *pip_platform_args(target),
    ]  # fmt: skip
    if find_links:
        command += ["--no-index", "--find-links", find_links]
    report = into.parent / f"{into.name}-pip-report.json"
    command += ["--report", str(report), *requirements]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired as exc:
        raise BundleError(f"pip took over 900 s to vendor {list(requirements)}.") from exc
    if done.returncode != 0:
        tail = "\n".join(done.stderr.strip().splitlines()[-6:])
        raise BundleError(
            f"Could not vendor {list(requirements)} for {target.name} ({target.description}) "
            f"with pip:\n{tail}\npip needs the package registry; offline, pass a directory of "
            "wheels for that platform (--find-links)."
        )
    installed = json.loads(report.read_text(encoding="utf-8")).get("install", [])
    report.unlink()
    shutil.rmtree(into / "bin", ignore_errors=True)  # console scripts: no use in a function
    return tuple(f"{item['metadata']['name']}=={item['metadata']['version']}" for item in installed)


def stage_sources(
    bundle: str | Path,
    staging: Path,
    sources: dict[str, Path],
    bundle_folder: str,
    stages: Sequence[str] | None = None,
) -> tuple[Manifest, Manifest, list[str]]:
    """Copy ``sources`` (archive name -> file) and the cloud stages' bundle files into
    ``staging`` (the bundle under ``bundle_folder``, with its restricted manifest).

    Returns:
        ``(manifest, packaged manifest, chosen stages)``.
    """
    manifest = load_manifest(bundle, verify=True)
    chosen = _cloud_stages(manifest, stages)
    packaged = restrict_manifest(manifest, chosen)
    for name, source in sources.items():
        target = staging / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    bundle_dir = staging / bundle_folder
    for rel in packaged.extra["package"]["shipped"]:
        target = safe_path(bundle_dir, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(safe_path(bundle, rel), target)
    bundle_dir.mkdir(parents=True, exist_ok=True)
    write_manifest(bundle_dir, packaged)
    return manifest, packaged, chosen


def stage_package(
    bundle: str | Path, staging: Path, stages: Sequence[str] | None = None
) -> Manifest:
    """Copy the runtime core, the handler and the cloud segments into ``staging``."""
    _, packaged, chosen = stage_sources(bundle, staging, _source_files(), BUNDLE_DIR, stages)
    from edgelesspart.runtime.bundle import Bundle

    Bundle.load(staging / BUNDLE_DIR, verify=True, stages=chosen, pool_size=1)
    return packaged


def write_zip(staging: Path, zip_path: Path) -> tuple[int, int, tuple[str, ...]]:
    """Zip ``staging`` deterministically; return (zipped bytes, unzipped bytes, names)."""
    names, unzipped = [], 0
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in staging.rglob("*") if p.is_file()):
            name = path.relative_to(staging).as_posix()
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            data = path.read_bytes()
            archive.writestr(info, data)
            names.append(name)
            unzipped += len(data)
    return zip_path.stat().st_size, unzipped, tuple(names)


def limit_problem(zipped: int, unzipped: int, limits: LambdaLimits) -> str | None:
    """Why a zip of these sizes cannot be deployed as a zip, or ``None`` if it can."""
    if zipped > limits.zipped_bytes:
        return (
            f"the zip is {zipped / MIB:.1f} MiB, over Lambda's {limits.zipped_bytes / MIB:.1f} "
            "MiB limit for a direct upload"
        )
    if unzipped > limits.unzipped_bytes:
        return (
            f"the package is {unzipped / MIB:.1f} MiB unzipped, over Lambda's "
            f"{limits.unzipped_bytes / MIB:.0f} MiB unzipped limit"
        )
    return None


def build_package(
    bundle: str | Path,
    out: str | Path,
    *,
    options: DeployOptions | None = None,
    limits: LambdaLimits | None = None,
    stages: Sequence[str] | None = None,
    overwrite: bool = False,
    vendor: bool = True,
    target: Target | None = None,
    find_links: str | None = None,
) -> PackageReport:
    """Build the Lambda package of ``bundle`` in ``out`` (see the module docstring).

    Args:
        bundle: the bundle directory.
        out: the output directory (refused when it holds files, unless ``overwrite``).
        options: function name, memory, timeout, runtime and architecture.
        limits: Lambda's size limits.
        stages: the stages to package (default: every stage after the edge's).
        overwrite: replace an earlier package in ``out``.
        vendor: vendor the dependencies into the zip (``False`` only for code-only tests).
        target: the platform to vendor for (default: ``options``' runtime and architecture;
            a test passes this machine's, to run the zip here).
        find_links: a directory of wheels to vendor from instead of the registry.

    Raises:
        BundleError: the bundle is invalid or has no cloud stage, or vendoring failed
            (nothing is written to ``out`` in these cases).
        ConfigError: ``out`` holds files and ``overwrite`` is false.
    """
    from edgelesspart.packaging.output import check_out, prepare_out, write_marker

    options = options or DeployOptions()
    limits = limits or LambdaLimits()
    table = target or options.target
    out_dir = Path(out)
    check_out(out_dir, overwrite)
    with tempfile.TemporaryDirectory(prefix="edgelesspart-pkg-") as tmp:
        staging = Path(tmp) / "function"
        packaged = stage_package(bundle, staging, stages)
        requirements = requirements_text(packaged.codec.get("name"), options.target)
        zip_root = Path(tmp) / "zip"
        shutil.copytree(staging, zip_root)
        vendored: tuple[str, ...] = ()
        if vendor:
            vendored = vendor_requirements(
                zip_root, requirements.split(), table, find_links=find_links
            )
        tmp_zip = Path(tmp) / ZIP_NAME
        zipped, unzipped, names = write_zip(zip_root, tmp_zip)
        problem = limit_problem(zipped, unzipped, limits)
        prepare_out(out_dir, overwrite)
        written = _write_image_context(out_dir / "image", staging, requirements, options)
        zip_path = None
        if problem is None:
            zip_path = out_dir / ZIP_NAME
            shutil.copyfile(tmp_zip, zip_path)
            written.insert(0, zip_path)
    stages_done = tuple(packaged.extra["package"]["stages"])
    template = out_dir / "template.yaml"
    template.write_text(render_sam(packaged, options, image=zip_path is None), encoding="utf-8")
    written.append(template)
    write_marker(out_dir, "lambda", packaged.bundle_id, architecture=options.architecture)
    return PackageReport(
        out_dir, zip_path, zipped, unzipped, stages_done, names, table.name, vendored, problem,
        tuple(written),
    )  # fmt: skip


def _write_image_context(
    image: Path, staging: Path, requirements: str, options: DeployOptions
) -> list[Path]:
    """``image/``: Dockerfile, requirements.txt and function/ (code + segments, no deps)."""
    shutil.copytree(staging, image / "function")
    (image / "requirements.txt").write_text(requirements, encoding="utf-8")
    platform = "linux/arm64" if options.architecture == "arm64" else "linux/amd64"
    context = {
        "handler": HANDLER,
        "python_version": options.runtime.removeprefix("python"),
        "platform": platform,
        "function_name": options.function_name,
        "bundle_env": "EDGELESSPART_BUNDLE",
    }
    (image / "Dockerfile").write_text(
        render_template("Dockerfile.cloud.j2", context), encoding="utf-8"
    )
    return [image / "Dockerfile", image / "requirements.txt", image / "function"]


def render_sam(manifest: Manifest, options: DeployOptions, *, image: bool = False) -> str:
    """``template.yaml`` (AWS SAM) for the zip, or for ``image/`` when ``image``.

    Validated with ``yaml.safe_load`` (long-form intrinsics only); ``cfn-lint`` checks it in
    the tests.
    """
    context = {
        "function_name": options.function_name,
        "handler": HANDLER,
        "runtime": options.runtime,
        "architecture": options.architecture,
        "memory_mb": int(options.memory_mb),
        "timeout_s": int(options.timeout_s),
        "code_uri": ZIP_NAME,
        "image": image,
        "image_tag": f"{options.runtime}-{manifest.bundle_id}",
        "bundle_id": manifest.bundle_id,
        "bundle_env": "EDGELESSPART_BUNDLE",
        "bundle_path": f"/var/task/{BUNDLE_DIR}",
    }
    text = render_template("template.yaml.j2", context)
    validate_sam(text)
    return text


def render_template(name: str, context: dict[str, Any]) -> str:
    """Render ``templates/deploy/<name>`` in a Jinja sandbox with StrictUndefined."""
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    from edgelesspart.exits.heads import templates_dir

    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader(str(templates_dir() / "deploy")),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
    )
    env.filters["json"] = json.dumps
    try:
        return env.get_template(name).render(**context)
    except jinja2.TemplateError as exc:
        raise ConfigError(f"Deploy template {name!r} failed to render: {exc}") from exc


def validate_sam(text: str) -> dict[str, Any]:
    """Parse a rendered SAM template with ``yaml.safe_load`` and check its shape.

    Raises:
        ConfigError: not YAML (e.g. a ``!Ref`` short-form tag), or no serverless function.
    """
    import yaml

    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"Rendered template.yaml is not plain YAML ({exc}); use the long form "
            "(Ref:, Fn::GetAtt:) instead of !Ref-style tags."
        ) from exc
    resources = data.get("Resources", {}) if isinstance(data, dict) else {}
    functions = [r for r in resources.values() if r.get("Type") == "AWS::Serverless::Function"]
    if not functions:
        raise ConfigError("Rendered template.yaml defines no AWS::Serverless::Function.")
    return data
