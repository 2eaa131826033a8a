"""Package the cloud part as a Google Cloud Functions (functions-framework) source directory.

``package-cloud --provider gcf`` writes (default ``dist/gcf``) ``OUT/function/``::

    main.py              the functions-framework entry (see cloud_functions.gcf_entry)
    requirements.txt     functions-framework, numpy, ai-edge-litert, lz4, zstandard, pinned from
                         the gcf-python312 table of edgelesspart/packaging/targets.py
    edgelesspart/        __init__.py, errors.py, runtime/*.py (the TF-free core)
    cloud_functions/     __init__.py, handler.py, http_entry.py, gcf_entry.py
    service_http/        the HTTP plumbing http_entry imports (edge_runtime/ on older trees)
    bundle/              manifest.json (LiteRT files only) + the cloud stages' segments

plus ``OUT/function.zip`` (the same tree) to upload. Cloud Functions installs requirements.txt
itself (unlike Lambda), on its python312 runtime.

Generation (``generation``, default 2: what current ``gcloud functions deploy`` creates; 1st gen
is still selectable) decides the deploy command (``--gen2`` / ``--no-gen2``) and the price table
``evaluate`` uses by default (:func:`edgelesspart.devices.pricing_provider`). Auth (``auth``):

* ``public`` (default): ``--allow-unauthenticated``; the function checks the edge's
  HMAC-SHA256 signature with ``EDGELESSPART_TOKEN`` (the edge's ``--cloud-token``).
* ``iam``: ``--no-allow-unauthenticated``; Google's front end wants ``Authorization: Bearer
  <Google ID token>`` for the function URL, so the edge must send one
  (``EDGELESSPART_CLOUD_ID_TOKEN_FILE``); the HMAC signature still rides in its own headers.
  Without an ID token every call gets 403 and every offload is degraded.

Size limits (Cloud Functions quotas, cloud.google.com/functions/quotas; not verifiable offline):
100 MB compressed source and 500 MB uncompressed source plus installed modules; the installed
requirements are estimated as :data:`REQUIREMENTS_INSTALLED_BYTES` (numpy + LiteRT ≈ 135 MB
measured, REFERENCE.md §2.4, + functions-framework/Flask/gunicorn). Every limit is a field of
:class:`GcfLimits`.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.packaging.cloud_lambda import MIB, requirements_text, stage_sources, write_zip
from edgelesspart.packaging.targets import GCF_TARGET, get_target

REQUIREMENTS_INSTALLED_BYTES = 150 * MIB
ENTRY_POINT = "edgelesspart"
BUNDLE_FOLDER = "bundle"
RUNTIME = "python312"
AUTH_CHOICES = ("public", "iam")
MAIN_PY = '''"""Cloud Functions entry of an EdgeLessPart cloud part (written by package-cloud).

Deploy: see the deploy line package-cloud printed, or docs/deploy.md.
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
    generation: int = 2
    auth: str = "public"

    def summary(self) -> str:
        """Human lines for the CLI, with the deploy command for the generation and auth."""
        return "\n".join(
            [
                f"gcf source: {self.function_dir} (entry point {ENTRY_POINT!r}; "
                f"{self.zipped_bytes / MIB:.2f} MiB zipped in {self.zip_path}, "
                f"{self.unzipped_bytes / MIB:.2f} MiB unzipped, ~"
                f"{self.estimated_installed_bytes / MIB:.0f} MiB with requirements)",
                f"stages: {', '.join(self.stages)}",
                f"generation: {self.generation} (evaluate prices gcf at generation "
                f"{self.generation} by default; --gcf-generation changes both)",
                *deploy_lines(self.function_dir, self.generation, self.auth),
            ]
        )


def deploy_lines(source: Path, generation: int, auth: str) -> list[str]:
    """The ``gcloud functions deploy`` command and the edge's settings for one auth choice."""
    gen = "--gen2" if generation == 2 else "--no-gen2"
    command = (
        f"deploy: gcloud functions deploy NAME {gen} --runtime {RUNTIME} --region REGION "
        f"--trigger-http --entry-point {ENTRY_POINT} --source {source} "
    )
    if auth == "iam":
        return [
            command + "--no-allow-unauthenticated --set-env-vars EDGELESSPART_TOKEN=SECRET",
            "auth: IAM. Grant the edge's service account roles/run.invoker (2nd gen) or "
            "roles/cloudfunctions.invoker (1st gen); the edge sends a Google ID token for the "
            "function URL (EDGELESSPART_CLOUD_ID_TOKEN_FILE, refreshed hourly) and still signs "
            "with --cloud-token SECRET. Without the ID token every call is 403 and every "
            "offload degraded.",
        ]
    return [
        command + "--allow-unauthenticated --set-env-vars EDGELESSPART_TOKEN=SECRET",
        "auth: public URL, HMAC. Anyone can reach the URL; the function refuses requests "
        "not signed with SECRET, so start the edge with --cloud-token SECRET (or "
        "EDGELESSPART_CLOUD_TOKEN). For IAM instead, package with --auth iam (docs/deploy.md).",
    ]


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
    """``requirements.txt``: functions-framework plus the runtime core's dependencies, pinned
    from the ``gcf-python312`` table."""
    framework = get_target(GCF_TARGET).requirements(["functions-framework"])[0]
    return framework + "\n" + requirements_text(codec, GCF_TARGET)


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
    generation: int = 2,
    auth: str = "public",
    overwrite: bool = False,
) -> GcfReport:
    """Build ``OUT/function/`` and ``OUT/function.zip`` for Google Cloud Functions.

    Raises:
        BundleError: invalid bundle, no cloud stage, or over a size limit (``out`` untouched).
        ConfigError: a bad generation or auth, or ``out`` holds files and not ``overwrite``.
    """
    from edgelesspart.packaging.output import prepare_out, write_marker

    if generation not in (1, 2):
        raise ConfigError(f"Cloud Functions generation must be 1 or 2, got {generation!r}.")
    if auth not in AUTH_CHOICES:
        raise ConfigError(f"auth must be one of {AUTH_CHOICES}, got {auth!r}.")
    limits = limits or GcfLimits()
    out_dir = Path(out)
    with tempfile.TemporaryDirectory(prefix="edgelesspart-gcf-") as tmp:
        staging = Path(tmp) / "function"
        packaged, chosen = stage_gcf(bundle, staging, stages)
        tmp_zip = Path(tmp) / "function.zip"
        zipped, unzipped, _ = write_zip(staging, tmp_zip)
        installed = check_gcf_limits(zipped, unzipped, limits)
        prepare_out(out_dir, overwrite)
        function_dir = out_dir / "function"
        shutil.copytree(staging, function_dir)
        zip_path = out_dir / "function.zip"
        shutil.copyfile(tmp_zip, zip_path)
    write_marker(out_dir, "gcf", packaged.bundle_id, generation=generation, auth=auth)
    return GcfReport(
        function_dir, zip_path, zipped, unzipped, installed, tuple(chosen), generation, auth
    )
