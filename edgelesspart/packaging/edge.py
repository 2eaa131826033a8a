"""``edgelesspart package-edge``: a Docker build context, a systemd unit and an env file.

Output directory (``--out``, default ``dist/edge-<target>``)::

    Dockerfile                  FROM the target's base image (below), LiteRT or TensorFlow
    edgelesspart-edge.service   systemd unit running the container (docker run --env-file)
    edge.env                    EDGELESSPART_* settings (cloud URL, backend, codec, tokens)
    bundle/                     manifest.json + the edge stage's segment files
    src/                        this package's source (pip install --no-deps /src in the image)

Targets and base images:

* ``rpi`` (Raspberry Pi 4/5, 64-bit OS): ``python:3.11-slim-bookworm`` for ``linux/arm64`` with
  LiteRT only; TensorFlow is refused (about 4x slower than LiteRT on the Pi, REFERENCE.md §5.1,
  and ~1.6 GB).
* ``jetson`` (Orin, JetPack 6): ``litert`` uses the same slim arm64 image (CPU); ``keras`` uses
  NVIDIA's L4T JetPack image and NVIDIA's TensorFlow wheel index for JetPack (CUDA on the GPU;
  ``docker run --runtime nvidia``). The default image tag and wheel index are for JetPack 6.1;
  pass ``--base-image``/``--pip-index`` for another JetPack (unverified here: no Jetson).
* ``x86``: ``python:3.11-slim-bookworm`` for ``linux/amd64``; ``keras`` adds ``tensorflow``.

Every ``pip install`` pin comes from the image's table in :mod:`edgelesspart.packaging.targets`
(``l4t-r36`` for Jetson + keras: Python 3.10, numpy 1.26 for NVIDIA's TensorFlow; ``bookworm-arm64``
/ ``bookworm-amd64`` otherwise), never from the build host, and is shell-quoted. The image is
tagged ``edgelesspart-edge:<bundle_id>`` in the Dockerfile comment, the unit and the ``next:``
hint alike. The output directory is refused when it holds files, unless ``overwrite``.

Everything is rendered from ``templates/deploy/*.j2`` in a Jinja2 ``SandboxedEnvironment`` with
``StrictUndefined``; values that reach a shell line are checked against a strict pattern first.
"""

from __future__ import annotations

import re
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgelesspart.errors import BundleError, ConfigError
from edgelesspart.packaging.cloud_lambda import render_template
from edgelesspart.packaging.targets import CORE, EDGE, edge_target
from edgelesspart.runtime.backends import BACKENDS, KERAS, LITERT, file_format
from edgelesspart.runtime.manifest import load_manifest, safe_path

TARGETS = ("jetson", "rpi", "x86")
SLIM = "python:3.11-slim-bookworm"
JETPACK_IMAGE = "nvcr.io/nvidia/l4t-jetpack:r36.4.0"
JETPACK_TF_INDEX = "https://developer.download.nvidia.com/compute/redist/jp/v61"
JETPACK_TF = "tensorflow==2.16.1+nv24.08"
IMAGE = "edgelesspart-edge"
SOURCE_PACKAGES = ("edgelesspart", "edge_runtime", "cloud_functions", "service_http")
TEMPLATES = {
    "Dockerfile": "Dockerfile.device.j2",
    "edgelesspart-edge.service": "edgelesspart-edge.service.j2",
    "edge.env": "edge.env.j2",
}
_SAFE = re.compile(r"^[A-Za-z0-9._:/@+=-]*$")


@dataclass(frozen=True)
class EdgePackageOptions:
    """What ``package-edge`` renders (the CLI flags)."""

    target: str
    backend: str = LITERT
    cloud: str = ""
    port: int = 8080
    threshold: float | None = None
    base_image: str | None = None
    pip_index: str | None = None
    publish: str = "127.0.0.1"
    extra_env: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ConfigError(f"Unknown target {self.target!r}; choose one of {TARGETS}.")
        if self.backend not in BACKENDS:
            raise ConfigError(f"Unknown backend {self.backend!r}; choose one of {BACKENDS}.")
        if self.target == "rpi" and self.backend == KERAS:
            raise ConfigError(
                "The rpi target ships LiteRT only: TensorFlow is about 4x slower than LiteRT on a "
                "Raspberry Pi and adds ~1.6 GB. Use --backend litert (the default)."
            )
        if not 1 <= int(self.port) <= 65535:
            raise ConfigError(f"port must be in 1..65535, got {self.port}.")
        for name in ("cloud", "base_image", "pip_index", "publish"):
            value = getattr(self, name) or ""
            if not _SAFE.match(value):
                raise ConfigError(
                    f"{name} {value!r} has characters that are not allowed in a Dockerfile or "
                    "systemd line; use letters, digits and ._:/@+=- only."
                )
        if self.cloud and not self.cloud.startswith(("http://", "https://", "lambda://")):
            raise ConfigError(
                f"cloud must be http(s)://HOST:PORT or lambda://NAME, got {self.cloud!r}."
            )


@dataclass(frozen=True)
class EdgePackageReport:
    """What :func:`build_edge_package` wrote."""

    out: Path
    target: str
    backend: str
    base_image: str
    image: str
    files: tuple[str, ...]

    def summary(self) -> str:
        """Human lines for the CLI."""
        return "\n".join(
            [
                f"edge package: {self.out} ({self.target}, {self.backend} backend, "
                f"FROM {self.base_image})",
                *(f"wrote: {self.out / name}" for name in self.files),
                f"next: cd {self.out} && docker build -t {self.image} . "
                "(the tag edgelesspart-edge.service runs; see docs/deploy.md)",
            ]
        )


def image_settings(options: EdgePackageOptions) -> dict[str, Any]:
    """Base image, platform, pip, framework requirements and docker flags of a target."""
    arm = options.target in ("jetson", "rpi")
    gpu = options.target == "jetson" and options.backend == KERAS
    table = edge_target(options.target, options.backend)
    settings: dict[str, Any] = {
        "platform": "linux/arm64" if arm else "linux/amd64",
        "base_image": SLIM,
        "pip": "pip",
        "apt_packages": [],
        "framework_requirements": [],
        "pip_index": None,
        "docker_run_flags": "",
        "pin_table": table.name,
        "base_note": "Slim Debian with LiteRT (XNNPACK on the CPU); no TensorFlow in this image.",
    }
    if gpu:
        settings.update(
            base_image=JETPACK_IMAGE,
            pip="python3 -m pip",
            apt_packages=["python3-pip"],
            framework_requirements=[JETPACK_TF, *table.requirements(["keras"])],
            pip_index=JETPACK_TF_INDEX,
            docker_run_flags="--runtime nvidia ",
            base_note="NVIDIA L4T JetPack base with NVIDIA's TensorFlow wheel (CUDA on the "
            "Jetson GPU); match the tag and wheel index to the board's JetPack release.",
        )
    elif options.backend == KERAS:
        settings.update(
            framework_requirements=table.requirements(["tensorflow", "keras"]),
            base_note="Slim Debian with TensorFlow for the keras backend (CPU, or a GPU the "
            "container is given).",
        )
    if options.base_image:
        settings["base_image"] = options.base_image
    if options.pip_index:
        settings["pip_index"] = options.pip_index
    return settings


def edge_requirements(options: EdgePackageOptions, codec: str | None = None) -> list[str]:
    """The pinned runtime requirements an edge image installs, from its target's table.

    The runtime core and the edge service always; what the bundle's boundary ``codec`` needs
    beyond them (``zfpy`` for the zfp codecs).
    """
    from edgelesspart.runtime.codecs import codec_packages

    extra = codec_packages(codec) if codec else ()
    return edge_target(options.target, options.backend).requirements([*CORE, *EDGE, *extra])


def image_tag(bundle_id: str) -> str:
    """The image tag of an edge package: the Dockerfile, the unit and the hint all use it."""
    return f"{IMAGE}:{bundle_id}"


def render_edge_files(manifest: Any, options: EdgePackageOptions) -> dict[str, str]:
    """The three text files of an edge package, rendered for ``manifest``'s bundle."""
    settings = image_settings(options)
    image = image_tag(manifest.bundle_id)
    codec = str(manifest.codec.get("name", "raw"))
    quote = [shlex.quote(r) for r in settings["framework_requirements"]]
    context = {
        **settings,
        "target": options.target,
        "backend": options.backend,
        "bundle_id": manifest.bundle_id,
        "image": image,
        "container": "edgelesspart-edge",
        "port": int(options.port),
        "publish": options.publish,
        "cloud": options.cloud,
        "codec": codec,
        "threshold": options.threshold,
        "extra_env": list(options.extra_env),
        "requirements": [shlex.quote(r) for r in edge_requirements(options, codec)],
        "framework_requirements": quote,
    }
    return {name: render_template(template, context) for name, template in TEMPLATES.items()}


def _copy_bundle(bundle: Path, out: Path, backend: str) -> None:
    """manifest.json + every file of the edge stage's segments (hash-checked on load)."""
    from edgelesspart.runtime.bundle import Bundle

    manifest = load_manifest(bundle, verify=True)
    edge = manifest.stage_names[0]
    fmt = file_format(backend)
    target = out / "bundle"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copyfile(bundle / "manifest.json", target / "manifest.json")
    for seg in manifest.segments:
        if seg.stage != edge:
            continue
        if fmt not in seg.files:
            raise BundleError(
                f"Segment {seg.name!r} has no {fmt!r} file for the {backend} backend."
            )
        for rel in seg.files.values():  # the service verifies every file of what it loads
            dest = safe_path(target, rel)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(safe_path(bundle, rel), dest)
    if backend == LITERT:  # the keras backend needs TensorFlow; the image checks it on start
        Bundle.load(target, stages=[edge], pool_size=1, verify=True)


def _copy_source(out: Path) -> None:
    import edgelesspart

    root = Path(edgelesspart.__file__).resolve().parents[1]
    target = out / "src"
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCE_PACKAGES:
        if (root / name).is_dir():
            shutil.copytree(root / name, target / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        if (root / name).is_file():
            shutil.copyfile(root / name, target / name)


def build_edge_package(
    bundle: str | Path, out: str | Path, options: EdgePackageOptions, *, overwrite: bool = False
) -> EdgePackageReport:
    """Write the edge package of ``bundle`` for ``options.target`` into ``out``.

    Raises:
        BundleError: the bundle is invalid or lacks the backend's segment files.
        ConfigError: bad options, or ``out`` holds files and ``overwrite`` is false.
    """
    from edgelesspart.packaging.output import prepare_out, write_marker

    source, target = Path(bundle), Path(out)
    manifest = load_manifest(source, verify=False)
    rendered = render_edge_files(manifest, options)
    prepare_out(target, overwrite)
    _copy_bundle(source, target, options.backend)
    _copy_source(target)
    for name, text in rendered.items():
        (target / name).write_text(text, encoding="utf-8")
    write_marker(target, f"edge-{options.target}", manifest.bundle_id, backend=options.backend)
    return EdgePackageReport(
        target,
        options.target,
        options.backend,
        image_settings(options)["base_image"],
        image_tag(manifest.bundle_id),
        (*rendered, "bundle/", "src/"),
    )
