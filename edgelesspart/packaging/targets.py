"""Deployment targets and their pinned requirements: one table per Python + platform.

A generated artifact (an edge Dockerfile, a Lambda zip, a Cloud Functions source directory)
installs its requirements on the *target*, not on the build host, so its pins come from the
target's table here and never from the versions installed where ``package-*`` runs. Each table
was resolved with pip's own resolver for the target's interpreter and platform::

    pip install --dry-run --ignore-installed --only-binary=:all: --implementation cp \\
        --python-version 3.10 --platform manylinux_2_35_aarch64 ... \\
        --platform manylinux2014_aarch64 --target /tmp/x --report report.json <pins>

and ``tests/packaging/test_targets_resolve.py`` re-runs that resolution for every table (it needs
the package registry and skips with a message when the registry is unreachable). The platform
tags are every ``manylinux_2_X`` up to the target's glibc, because pip does not widen an explicit
``--platform`` to older manylinux versions.

Targets (glibc from the distribution each one runs):

* ``l4t-r36``: NVIDIA L4T r36 / JetPack 6 (Ubuntu 22.04, glibc 2.35), Python 3.10, aarch64.
  NVIDIA's TensorFlow 2.16 wheel for JetPack needs ``numpy<2``, so this table is the numpy 1.26
  world; Keras 3.12 is the last Keras for Python 3.10.
* ``bookworm-arm64``: Raspberry Pi OS / Debian bookworm (glibc 2.36), Python 3.11, aarch64:
  the ``python:3.11-slim-bookworm`` image on a Pi or a Jetson without TensorFlow.
* ``bookworm-amd64``: the same image on x86_64 (the ``x86`` edge target).
* ``lambda-python3.12-x86_64`` / ``lambda-python3.12-arm64``: AWS Lambda's python3.12 runtime
  (Amazon Linux 2023, glibc 2.34).
* ``gcf-python312``: Google Cloud Functions' python312 runtime (Ubuntu 22.04, glibc 2.35), x86_64.

Nothing here imports anything heavy; :func:`pip_platform_args` is pure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edgelesspart.errors import ConfigError

#: The runtime core's own dependencies (every cloud package and every edge image installs them).
CORE = ("numpy", "ai-edge-litert", "lz4", "zstandard")
#: What the edge service adds on top of the core (Flask under waitress, offload clients, images).
EDGE = ("flask", "waitress", "requests", "boto3", "pillow", "pyyaml", "jinja2")

_COMMON = {
    "ai-edge-litert": "2.3.0",
    "lz4": "4.4.5",
    "zstandard": "0.25.0",
    "zfpy": "1.0.1.post0",
    "flask": "3.1.3",
    "waitress": "3.0.2",
    "requests": "2.34.2",
    "boto3": "1.44.18",
    "pyyaml": "6.0.4",
    "jinja2": "3.1.6",
}


@dataclass(frozen=True)
class Target:
    """One place a package runs: its interpreter, platform and pinned requirement versions.

    Attributes:
        name: the table's key (``l4t-r36``, ``lambda-python3.12-arm64``, ...).
        description: what runs there, for messages and docs.
        python: the interpreter's ``major.minor``.
        arch: ``x86_64`` or ``aarch64`` (the manylinux spelling).
        glibc: the distribution's glibc ``(major, minor)``: the newest manylinux tag accepted.
        pins: requirement name -> exact version on this target.
        notes: requirements this table cannot pin from the package registry (and why).
    """

    name: str
    description: str
    python: str
    arch: str
    glibc: tuple[int, int]
    pins: Mapping[str, str]
    notes: Mapping[str, str] = field(default_factory=dict)

    def requirements(self, names: Iterable[str]) -> list[str]:
        """``name==version`` for every ``name``, in order, from this table.

        Raises:
            ConfigError: a name this target has no pin for.
        """
        out = []
        for name in dict.fromkeys(names):
            if name not in self.pins:
                raise ConfigError(
                    f"Target {self.name!r} has no pinned version of {name!r}; add it to the "
                    f"table in edgelesspart/packaging/targets.py (pinned: {sorted(self.pins)})."
                )
            out.append(f"{name}=={self.pins[name]}")
        return out

    @property
    def abi(self) -> str:
        """The CPython ABI tag (``cp310``)."""
        return "cp" + self.python.replace(".", "")

    def platforms(self) -> list[str]:
        """Every manylinux platform tag this target's glibc accepts, newest first."""
        major, minor = self.glibc
        tags = [f"manylinux_{major}_{m}_{self.arch}" for m in range(minor, 16, -1)]
        tags.append(f"manylinux2014_{self.arch}")
        if self.arch == "x86_64":
            tags += ["manylinux2010_x86_64", "manylinux1_x86_64"]
        return tags


def pip_platform_args(target: Target) -> list[str]:
    """pip options that resolve wheels for ``target`` instead of this machine (binary only)."""
    args = ["--only-binary=:all:", "--implementation", "cp", "--python-version", target.python]
    args += ["--abi", target.abi, "--abi", "abi3", "--abi", "none"]
    for tag in target.platforms():
        args += ["--platform", tag]
    return args


_BOOKWORM_PINS = {**_COMMON, "numpy": "2.4.6", "pillow": "13.0.0"}


_L4T_PINS = {
    **_COMMON,
    "numpy": "1.26.4",  # NVIDIA's TensorFlow 2.16 for JetPack 6 requires numpy<2
    "pillow": "12.3.0",
    "zfpy": "1.0.1",  # 1.0.1.post0 has no cp310 aarch64 wheel
    "keras": "3.12.4",  # the last Keras 3 that installs on Python 3.10
    # The PyPI build of the version NVIDIA's JetPack wheel is cut from: the registry check
    # resolves it as a stand-in (same requirements); the image installs NVIDIA's build.
    "tensorflow": "2.16.1",
}
_LAMBDA_PINS = {**_COMMON, "numpy": "2.4.6"}

TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target(
            "l4t-r36",
            "NVIDIA L4T r36 (JetPack 6, Ubuntu 22.04) with its system Python 3.10, aarch64",
            "3.10",
            "aarch64",
            (2, 35),
            _L4T_PINS,
            {
                "tensorflow": "the image installs NVIDIA's tensorflow==2.16.1+nv24.08 from "
                "developer.download.nvidia.com (not a package registry the tests can reach); the "
                "table pins the PyPI tensorflow 2.16.1 it is built from, whose requirements "
                "(numpy<2) the registry check resolves"
            },
        ),
        Target(
            "bookworm-arm64",
            "Raspberry Pi OS / Debian bookworm, python:3.11-slim-bookworm, aarch64",
            "3.11",
            "aarch64",
            (2, 36),
            _BOOKWORM_PINS,  # no TensorFlow: the Pi refuses it, a Jetson uses l4t-r36
        ),
        Target(
            "bookworm-amd64",
            "Debian bookworm, python:3.11-slim-bookworm, x86_64",
            "3.11",
            "x86_64",
            (2, 36),
            {**_BOOKWORM_PINS, "tensorflow": "2.21.0", "keras": "3.15.1"},
        ),
        Target(
            "lambda-python3.12-x86_64",
            "AWS Lambda python3.12 (Amazon Linux 2023), x86_64",
            "3.12",
            "x86_64",
            (2, 34),
            _LAMBDA_PINS,
        ),
        Target(
            "lambda-python3.12-arm64",
            "AWS Lambda python3.12 (Amazon Linux 2023), arm64 (Graviton)",
            "3.12",
            "aarch64",
            (2, 34),
            _LAMBDA_PINS,
        ),
        Target(
            "gcf-python312",
            "Google Cloud Functions python312 (Ubuntu 22.04), x86_64",
            "3.12",
            "x86_64",
            (2, 35),
            {**_LAMBDA_PINS, "functions-framework": "3.10.2"},
        ),
    )
}

#: The Lambda ``Architectures`` value -> its target table.
LAMBDA_TARGETS = {
    "x86_64": "lambda-python3.12-x86_64",
    "arm64": "lambda-python3.12-arm64",
}
GCF_TARGET = "gcf-python312"


def get_target(name: str) -> Target:
    """The target table called ``name``.

    Raises:
        ConfigError: an unknown name (the message lists the known ones).
    """
    try:
        return TARGETS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown deployment target {name!r}; known targets: {', '.join(TARGETS)}."
        ) from None


def edge_target(target: str, backend: str) -> Target:
    """The table of a ``package-edge`` image: ``target`` (jetson|rpi|x86) with ``backend``."""
    if target == "jetson" and backend == "keras":
        return TARGETS["l4t-r36"]
    return TARGETS["bookworm-amd64" if target == "x86" else "bookworm-arm64"]
