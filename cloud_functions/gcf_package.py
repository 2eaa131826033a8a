"""Package the cloud part as a Google Cloud Functions (functions-framework) source directory.

``package-cloud --provider gcf`` writes ``OUT/function/``, deployable with
``gcloud functions deploy NAME --runtime python311 --trigger-http --entry-point edgelesspart
--source OUT/function``::

    main.py              the functions-framework entry (see cloud_functions.gcf_entry)
    requirements.txt     functions-framework, numpy, ai-edge-litert, lz4, zstandard (pinned)
    edgelesspart/        __init__.py, errors.py, runtime/*.py (the TF-free core)
    cloud_functions/     __init__.py, handler.py, http_entry.py, gcf_entry.py
    service_http/        the HTTP plumbing http_entry imports (edge_runtime/ on older trees)
    bundle/              manifest.json (LiteRT files only) + the cloud stages' segments

plus ``OUT/function.zip`` (the same tree) to upload. Size limits (Cloud Functions quotas,
cloud.google.com/functions/quotas; not verifiable offline): 100 MB compressed source and 500 MB
uncompressed source plus installed modules; the installed requirements are estimated as
:data:`REQUIREMENTS_INSTALLED_BYTES` (numpy + LiteRT ≈ 135 MB measured, REFERENCE.md §2.4, +
functions-framework/Flask/gunicorn). Every limit is a field of :class:`GcfLimits`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cloud_functions.package import MIB, requirements_text, stage_sources, write_zip
from edgelesspart.errors import BundleError

REQUIREMENTS_INSTALLED_BYTES = 150 * MIB
ENTRY_POINT = "edgelesspart"
BUNDLE_FOLDER = "bundle"
MAIN_PY = '''"""Cloud Functions entry of an EdgeLessPart cloud part (written by package-cloud).

Deploy: gcloud functions deploy NAME --runtime python311 --trigger-http \\
    --entry-point {entry} --source . --set-env-vars EDGELESSPART_TOKEN=...
"""

import os

import functions_framework

os.environ.setdefault(
    "EDGELESSPART_BUNDLE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "bundle")
)

from cloud_functions import gcf_entry  # noqa: E402

gcf_entry.warm()  # the cold start loads the segments, not the first request


@functions_framework.http
def {entry}(request):
    """POST /v1/continue (and /healthz, /metrics, /v1/stats) of the cloud part."""
    return gcf_entry.handle(request)
'''


@dataclass(frozen=True)
class GcfLimits:
    """Deployment size limits, in bytes (Cloud Functions defaults)."""

    compressed_bytes: int = 100 * MIB
    uncompressed_bytes: int = 500 * MIB
    requirements_bytes: int = REQUIREMENTS_INSTALLED_BYTES


@dataclass(frozen=True)
class GcfReport:
    """What :func:`build_gcf_package` wrote."""

    function_dir: Path
    zip_path: Path
    zipped_bytes: int
    unzipped_bytes: int
    estimated_installed_bytes: int
    stages: tuple[str, ...]

    def summary(self) -> str:
        """Human lines for the CLI."""
        return "\n".join(
            [
                f"gcf source: {self.function_dir} (entry point {ENTRY_POINT!r}; "
                f"{self.zipped_bytes / MIB:.2f} MiB zipped in {self.zip_path}, "
                f"{self.unzipped_bytes / MIB:.2f} MiB unzipped, ~"
                f"{self.estimated_installed_bytes / MIB:.0f} MiB with requirements)",
                f"stages: {', '.join(self.stages)}",
                f"deploy: gcloud functions deploy NAME --runtime python311 --trigger-http "
                f"--entry-point {ENTRY_POINT} --source {self.function_dir}",
            ]
        )


def _source_files() -> dict[str, Path]:
    """Archive name -> source file: the runtime core, the cloud entries, their HTTP plumbing."""
    import cloud_functions
    import edgelesspart

    core = Path(edgelesspart.__file__).resolve().parent
    cloud = Path(cloud_functions.__file__).resolve().parent
    root = core.parent
    files = {"edgelesspart/__init__.py": core / "__init__.py"}
    files["edgelesspart/errors.py"] = core / "errors.py"
    for path in sorted((core / "runtime").glob("*.py")):
        files[f"edgelesspart/runtime/{path.name}"] = path
    for name in ("__init__.py", "handler.py", "http_entry.py", "gcf_entry.py"):
        files[f"cloud_functions/{name}"] = cloud / name
    entry = (cloud / "http_entry.py").read_text(encoding="utf-8")
    for package in ("service_http", "edge_runtime"):  # whichever http_entry imports
        if f"from {package}" in entry or f"import {package}" in entry:
            for path in sorted((root / package).glob("*.py")):
                files[f"{package}/{path.name}"] = path
    return files


def gcf_requirements(codec: str | None) -> str:
    """``requirements.txt``: functions-framework plus the runtime core's pinned dependencies."""
    from importlib import metadata

    try:
        framework = f"functions-framework=={metadata.version('functions-framework')}"
    except metadata.PackageNotFoundError:
        framework = "functions-framework>=3.5"
    return framework + "\n" + requirements_text(codec)


def stage_gcf(bundle: str | Path, staging: Path, stages: Sequence[str] | None = None) -> tuple:
    """Write the function source tree into ``staging``; return the packaged manifest."""
    manifest, packaged, chosen = stage_sources(
        bundle, staging, _source_files(), BUNDLE_FOLDER, stages
    )
    bundle_dir = staging / BUNDLE_FOLDER
    (staging / "main.py").write_text(MAIN_PY.format(entry=ENTRY_POINT), encoding="utf-8")
    (staging / "requirements.txt").write_text(
        gcf_requirements(manifest.codec.get("name")), encoding="utf-8"
    )
    from edgelesspart.runtime.bundle import Bundle

    Bundle.load(bundle_dir, verify=True, stages=chosen, pool_size=1)
    compile(MAIN_PY.format(entry=ENTRY_POINT), "main.py", "exec")  # a syntax error fails here
    return packaged, chosen


def check_gcf_limits(zipped: int, unzipped: int, limits: GcfLimits) -> int:
    """Return the estimated installed size; raise if the source breaks a GCF limit."""
    installed = unzipped + limits.requirements_bytes
    if zipped > limits.compressed_bytes:
        raise BundleError(
            f"The function source is {zipped / MIB:.1f} MiB compressed, over Cloud Functions' "
            f"{limits.compressed_bytes / MIB:.0f} MiB limit. Split the model later (fewer cloud "
            "layers) or deploy the cloud part as a container (Cloud Run)."
        )
    if installed > limits.uncompressed_bytes:
        raise BundleError(
            f"The function would be ~{installed / MIB:.1f} MiB uncompressed with its modules, "
            f"over Cloud Functions' {limits.uncompressed_bytes / MIB:.0f} MiB limit. Deploy the "
            "cloud part as a container (Cloud Run) or shrink it."
        )
    return installed


def build_gcf_package(
    bundle: str | Path,
    out: str | Path,
    *,
    limits: GcfLimits | None = None,
    stages: Sequence[str] | None = None,
) -> GcfReport:
    """Build ``OUT/function/`` and ``OUT/function.zip`` for Google Cloud Functions.

    Raises:
        BundleError: invalid bundle, no cloud stage, or over a size limit (``out`` untouched).
    """
    limits = limits or GcfLimits()
    out_dir = Path(out)
    with tempfile.TemporaryDirectory(prefix="edgelesspart-gcf-") as tmp:
        staging = Path(tmp) / "function"
        _, chosen = stage_gcf(bundle, staging, stages)
        tmp_zip = Path(tmp) / "function.zip"
        zipped, unzipped, _ = write_zip(staging, tmp_zip)
        installed = check_gcf_limits(zipped, unzipped, limits)
        out_dir.mkdir(parents=True, exist_ok=True)
        function_dir = out_dir / "function"
        shutil.rmtree(function_dir, ignore_errors=True)
        shutil.copytree(staging, function_dir)
        zip_path = out_dir / "function.zip"
        shutil.copyfile(tmp_zip, zip_path)
    return GcfReport(function_dir, zip_path, zipped, unzipped, installed, tuple(chosen))
