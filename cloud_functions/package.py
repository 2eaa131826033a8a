"""Package the cloud part as a deployable AWS Lambda zip, plus a SAM template and Dockerfiles.

The zip holds exactly what the handler needs and nothing that needs TensorFlow::

    edgelesspart/__init__.py, edgelesspart/errors.py, edgelesspart/runtime/*.py
    cloud_functions/__init__.py, cloud_functions/handler.py
    cloud_functions/bundle/manifest.json           (restricted: LiteRT files only, see below)
    cloud_functions/bundle/segments/<cloud>.tflite (the cloud stages' segments only)
    requirements.txt                               (numpy, ai-edge-litert, pinned)

The packaged manifest keeps every segment (the runtime checks the chain from the model input)
but lists only ``.tflite`` files; the edge segments' files are omitted from the zip, which the
runtime accepts because a cloud part loads only its own stages. The staged bundle is loaded
with hash verification before the zip is written.

Size limits (AWS Lambda, zip deployment): 50 MB zipped for a direct upload and 250 MB
unzipped including layers. The dependencies are not in the zip (``sam build`` installs
``requirements.txt``, or ship them as a layer), so the unzipped estimate adds their installed
size: numpy 2.x ≈ 73 MB and ai-edge-litert 2.3 ≈ 59 MB on CPython 3.11 manylinux x86_64
(measured, REFERENCE.md §2.4), rounded up to :data:`REQUIREMENTS_INSTALLED_BYTES` = 140 MiB.
Every limit is a field of :class:`LambdaLimits`, so tests can inject small ones.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.runtime.manifest import Manifest, load_manifest, safe_path, write_manifest

MIB = 1024 * 1024
REQUIREMENTS_INSTALLED_BYTES = 140 * MIB
REQUIREMENTS = ("numpy", "ai-edge-litert", "lz4", "zstandard")
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
    requirements_bytes: int = REQUIREMENTS_INSTALLED_BYTES


@dataclass(frozen=True)
class DeployOptions:
    """What the SAM template and the Dockerfiles say about the function."""

    function_name: str = "edgelesspart-cloud"
    memory_mb: int = 2048
    timeout_s: int = 30
    runtime: str = "python3.11"
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
        if self.architecture not in ("x86_64", "arm64"):
            raise ConfigError(f"architecture must be x86_64 or arm64, got {self.architecture!r}.")


@dataclass(frozen=True)
class PackageReport:
    """What :func:`build_package` wrote and how big it is."""

    zip_path: Path
    zipped_bytes: int
    unzipped_bytes: int
    estimated_installed_bytes: int
    stages: tuple[str, ...]
    files: tuple[str, ...]
    written: tuple[Path, ...] = field(default_factory=tuple)

    def summary(self) -> str:
        """Human lines for the CLI."""
        lines = [
            f"package: {self.zip_path} ({self.zipped_bytes / MIB:.2f} MiB zipped, "
            f"{self.unzipped_bytes / MIB:.2f} MiB unzipped, "
            f"~{self.estimated_installed_bytes / MIB:.0f} MiB with requirements installed)",
            f"stages: {', '.join(self.stages)}; {len(self.files)} files",
        ]
        lines += [f"wrote: {path}" for path in self.written]
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


def requirements_text(codec: str | None = None) -> str:
    """``requirements.txt`` pinned to the versions installed here (what the tests ran with).

    Always the runtime core's own dependencies (numpy, LiteRT, lz4, zstandard), plus what the
    bundle's boundary ``codec`` needs beyond them (``zfpy`` for the zfp codecs).
    """
    from edgelesspart.runtime.codecs import codec_packages

    needed = (*REQUIREMENTS, *(codec_packages(codec) if codec else ()))
    lines = []
    for name in dict.fromkeys(needed):
        try:
            lines.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            lines.append(name)
    return "\n".join(lines) + "\n"


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
    manifest, packaged, chosen = stage_sources(bundle, staging, _source_files(), BUNDLE_DIR, stages)
    bundle_dir = staging / BUNDLE_DIR
    (staging / "requirements.txt").write_text(
        requirements_text(manifest.codec.get("name")), encoding="utf-8"
    )
    from edgelesspart.runtime.bundle import Bundle

    Bundle.load(bundle_dir, verify=True, stages=chosen, pool_size=1)
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


def check_limits(zipped: int, unzipped: int, limits: LambdaLimits) -> int:
    """Return the estimated installed size; raise if the package breaks a Lambda limit.

    Raises:
        BundleError: over the zipped or the (estimated) unzipped limit.
    """
    installed = unzipped + limits.requirements_bytes
    if zipped > limits.zipped_bytes:
        raise BundleError(
            f"The Lambda zip is {zipped / MIB:.1f} MiB, over the {limits.zipped_bytes / MIB:.1f} "
            "MiB limit for a direct upload. Split the model later (fewer cloud layers), upload "
            "through S3, or deploy the container image from Dockerfile.cloud."
        )
    if installed > limits.unzipped_bytes:
        raise BundleError(
            f"The Lambda package would be ~{installed / MIB:.1f} MiB unzipped ({unzipped / MIB:.1f}"
            f" MiB of code and segments + {limits.requirements_bytes / MIB:.0f} MiB for numpy and "
            f"ai-edge-litert), over the {limits.unzipped_bytes / MIB:.0f} MiB limit. Deploy the "
            "container image from Dockerfile.cloud (10 GB limit) or shrink the cloud part."
        )
    return installed


def build_package(
    bundle: str | Path,
    out: str | Path,
    *,
    options: DeployOptions | None = None,
    limits: LambdaLimits | None = None,
    stages: Sequence[str] | None = None,
) -> PackageReport:
    """Build ``function.zip``, ``requirements.txt``, ``template.yaml`` and the Dockerfiles.

    Raises:
        BundleError: the bundle is invalid, has no cloud stage, or the package is too big
            (nothing is left behind in ``out`` in that case).
    """
    options = options or DeployOptions()
    limits = limits or LambdaLimits()
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edgelesspart-pkg-") as tmp:
        staging = Path(tmp) / "function"
        packaged = stage_package(bundle, staging, stages)
        tmp_zip = Path(tmp) / ZIP_NAME
        zipped, unzipped, names = write_zip(staging, tmp_zip)
        installed = check_limits(zipped, unzipped, limits)
        zip_path = out_dir / ZIP_NAME
        shutil.copyfile(tmp_zip, zip_path)
        function_dir = out_dir / "function"
        shutil.rmtree(function_dir, ignore_errors=True)
        shutil.copytree(staging, function_dir)
    stages_done = tuple(packaged.extra["package"]["stages"])
    written = [zip_path, function_dir]
    (out_dir / "requirements.txt").write_text(
        requirements_text(packaged.codec.get("name")), encoding="utf-8"
    )
    written.append(out_dir / "requirements.txt")
    for name, text in render_deploy_files(packaged, options).items():
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return PackageReport(zip_path, zipped, unzipped, installed, stages_done, names, tuple(written))


def render_deploy_files(manifest: Manifest, options: DeployOptions) -> dict[str, str]:
    """Render ``template.yaml`` (validated with ``yaml.safe_load``) and the two Dockerfiles."""
    context = {
        "function_name": options.function_name,
        "handler": HANDLER,
        "runtime": options.runtime,
        "python_version": options.runtime.removeprefix("python"),
        "architecture": options.architecture,
        "memory_mb": int(options.memory_mb),
        "timeout_s": int(options.timeout_s),
        "code_uri": "function/",
        "bundle_id": manifest.bundle_id,
        "bundle_env": "EDGELESSPART_BUNDLE",
        "bundle_path": f"/var/task/{BUNDLE_DIR}",
        "requirements": requirements_text(manifest.codec.get("name")).split(),
    }
    rendered = {
        "template.yaml": render_template("template.yaml.j2", context),
        "Dockerfile.cloud": render_template("Dockerfile.cloud.j2", context),
        "Dockerfile.edge": render_template("Dockerfile.edge.j2", context),
    }
    validate_sam(rendered["template.yaml"])
    return rendered


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
