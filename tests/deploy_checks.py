"""Checks of generated deployment files with the tools their targets use (shared by tests).

* Dockerfiles: parsed by the ``dockerfile`` package (a wrapper of Docker's own parser, BuildKit's
  ``moby/buildkit/frontend/dockerfile/parser``), every shell-form ``RUN`` checked by shellcheck
  and tokenised with :mod:`shlex` to refuse any redirection or pipe (``keras>=3.3`` unquoted is
  valid shell, so shellcheck alone passes it).
* systemd units: ``systemd-analyze verify`` in a scratch root holding the host's systemd units, a
  stand-in ``docker.service`` and an executable ``/usr/bin/docker``; any output is a failure,
  since systemd only warns (exit 0) about keys it ignores.
* SAM templates: ``cfn-lint`` (with its SAM transform).
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SHELL_OPERATORS = {"&&", "||"}
SYSTEMD_UNIT_DIRS = (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system"))


def tool(name: str) -> str:
    """The path of a dev tool installed next to this Python (venv ``bin/``) or on PATH."""
    local = Path(sys.executable).parent / name
    if local.is_file():
        return str(local)
    found = shutil.which(name)
    if not found:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]' installs it")
    return found


def parse_dockerfile(text: str) -> list:
    """Docker's own parse of ``text`` (``dockerfile.Command`` tuples)."""
    import dockerfile

    return list(dockerfile.parse_string(text))


def run_lines(text: str) -> list[str]:
    """The shell-form ``RUN`` commands of a Dockerfile."""
    return [" ".join(c.value) for c in parse_dockerfile(text) if c.cmd == "RUN" and not c.json]


def shellcheck(script: str, tmp: Path) -> subprocess.CompletedProcess:
    """shellcheck ``script`` as a POSIX sh script (RUN uses ``/bin/sh -c``)."""
    path = tmp / "run.sh"
    path.write_text("#!/bin/sh\n" + script + "\n", encoding="utf-8")
    return subprocess.run(
        [tool("shellcheck"), "--shell=sh", "--severity=style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def redirections(command: str) -> list[str]:
    """Shell operators other than ``&&``/``||`` in ``command`` (redirects, pipes, ``;``)."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    tokens = list(lexer)
    return [t for t in tokens if set(t) <= set("<>|&;()") and t not in SHELL_OPERATORS]


def pip_requirements(command: str) -> list[str]:
    """The requirement arguments of every ``pip install`` in a RUN line (options skipped)."""
    words, out = shlex.split(command), []
    for i, word in enumerate(words):
        if word == "install" and i and words[i - 1] == "pip":
            rest = words[i + 1 :]
            skip = False
            for arg in rest:
                if arg == "&&":
                    break
                if skip:
                    skip = False
                    continue
                if arg in ("--extra-index-url", "--index-url", "-r", "--find-links"):
                    skip = True
                    continue
                if not arg.startswith("-") and not arg.startswith("/"):
                    out.append(arg)
    return out


def systemd_verify(unit_text: str, name: str, tmp: Path) -> subprocess.CompletedProcess:
    """``systemd-analyze verify`` of a unit installed in a scratch root (see module docstring)."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.fail("systemd-analyze is missing: apt-get install -y systemd (.ci/run does)")
    root = tmp / "root"
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    for source in SYSTEMD_UNIT_DIRS:
        if source.is_dir() and not source.is_symlink():
            shutil.copytree(source, root / source.relative_to("/"), symlinks=True)
            break
    docker = root / "usr" / "bin" / "docker"
    docker.parent.mkdir(parents=True, exist_ok=True)
    docker.write_text("#!/bin/sh\nexit 0\n")
    docker.chmod(0o755)
    (units / "docker.service").write_text(
        "[Unit]\nDescription=Docker Engine stand-in\n[Service]\nExecStart=/usr/bin/docker\n"
    )
    (units / name).write_text(unit_text, encoding="utf-8")
    env = {**os.environ, "SYSTEMD_LOG_COLOR": "0"}
    return subprocess.run(
        [analyze, "verify", f"--root={root}", name],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


def cfn_lint(*templates: Path) -> subprocess.CompletedProcess:
    """``cfn-lint`` of CloudFormation/SAM templates (region us-east-1), in one run."""
    return subprocess.run(
        [tool("cfn-lint"), "--regions", "us-east-1", "--", *map(str, templates)],
        capture_output=True,
        text=True,
        timeout=180,
    )
