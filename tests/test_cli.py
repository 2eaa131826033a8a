"""The CLI: fast TensorFlow-free --help for every subcommand, one-line errors, build options."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from edgelesspart.build import BuildConfig, parse_exits_per_part
from edgelesspart.cli import COMMAND_MODULES, main
from edgelesspart.errors import ConfigError

SUBCOMMANDS = ["build", "profile", "inspect", "evaluate", "serve-edge", "serve-cloud",
               "package-cloud", "replay"]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("argv", [["--help"], *([name, "--help"] for name in SUBCOMMANDS)])
def test_help_does_not_import_tensorflow(argv):
    # WHEN --help runs in a fresh interpreter
    result = run_python(f"""
        import sys
        from edgelesspart.cli import main
        try:
            main({argv!r})
        except SystemExit as exc:
            assert exc.code == 0, exc.code
        heavy = [m for m in ("tensorflow", "keras", "flask", "boto3", "matplotlib")
                 if m in sys.modules]
        print("HEAVY", heavy)
    """)
    # THEN it succeeds and nothing heavy was imported
    assert result.returncode == 0, result.stderr
    assert "HEAVY []" in result.stdout
    assert "usage: edgelesspart" in result.stdout


def test_every_registered_module_exists():
    import importlib

    for name in COMMAND_MODULES:
        assert callable(importlib.import_module(f"edgelesspart.commands.{name}").register)


def test_user_error_is_one_line_and_exit_code_2(tmp_path, capsys):
    code = main(["inspect", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "edgelesspart inspect: error: No manifest.json" in err


def test_build_config_file_and_flag_precedence(tmp_path):
    from edgelesspart.cli import make_parser
    from edgelesspart.commands.build import config_from_args

    config_file = tmp_path / "build.yaml"
    config_file.write_text("constraint: latency\nplacement: pareto\nexits-per-part: 3,1\n"
                           "memory_fraction: 0.5\n")
    args = make_parser().parse_args(["build", "--config", str(config_file), "--placement",
                                     "linear"])
    config = config_from_args(args)
    assert config.constraint == "latency"
    assert config.placement == "linear"  # the flag wins over the file
    assert config.exits_per_part == (3, 1) and config.memory_fraction == 0.5


def test_build_config_rejects_bad_values(tmp_path):
    with pytest.raises(ConfigError, match="Unknown build option 'colour'"):
        BuildConfig.from_mapping({"colour": "red"})
    with pytest.raises(ConfigError, match="at most 3|in 0..3"):
        BuildConfig(exits_per_part=(4, 1))
    with pytest.raises(ConfigError, match="memory_fraction must be in"):
        BuildConfig(memory_fraction=1.5)
    with pytest.raises(ConfigError, match="either exit_spec or exit_template"):
        BuildConfig(exit_spec="a.yaml", exit_template="b.j2")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    assert main(["build", "--config", str(bad)]) == 2


@pytest.mark.parametrize("value, expected", [(2, (2, 2)), ("3,1", (3, 1)), ([0, 2], (0, 2))])
def test_exits_per_part_parsing(value, expected):
    assert parse_exits_per_part(value) == expected


NOISE_LINES = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796139016.107972    6490 port.cc:153] oneDNN custom operations are on.\n"
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n"
)


def test_stderr_filter_drops_native_noise_and_keeps_the_rest():
    # GIVEN native-style writes straight to fd 2 (as TensorFlow and LiteRT do), mixed with a
    # real error, a progress bar drawn with carriage returns and an absl error line
    code = textwrap.dedent(f"""
        import os, sys
        from edgelesspart.stderr_filter import filter_stderr
        active = filter_stderr()
        os.write(2, {NOISE_LINES.encode()!r})
        sys.stderr.write("\\rbar 1/2"); sys.stderr.flush()
        sys.stderr.write("\\rbar 2/2\\n"); sys.stderr.flush()
        os.write(2, b"E0000 00:00:1.0  1 x.cc:1] a real native error\\n")
        print("edgelesspart build: error: something the user must see", file=sys.stderr)
        active.close()
        print("dropped", active.dropped)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    # THEN only the noise is gone, in order, and the process exits normally
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        b"\rbar 1/2\rbar 2/2\n"
        b"E0000 00:00:1.0  1 x.cc:1] a real native error\n"
        b"edgelesspart build: error: something the user must see\n"
    )
    assert b"dropped 3" in result.stdout


def test_stderr_filter_closed_while_a_child_holds_the_pipe_writes_nowhere_else(tmp_path):
    # GIVEN a child process that inherited the filtered fd 2 and writes after close() returned
    target = tmp_path / "reused.txt"
    code = textwrap.dedent(f"""
        import os, subprocess, sys
        from edgelesspart.stderr_filter import filter_stderr
        active = filter_stderr()
        child = subprocess.Popen([sys.executable, "-c",
            "import sys, time; time.sleep(0.5); sys.stderr.write('child line\\n')"])
        active.close(timeout_s=0.05)
        # WHEN the parent opens a file right after (it would get a freed descriptor number)
        fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT)
        child.wait()
        active._thread.join(5)
        os.close(fd)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    # THEN the child's line reached the real stderr, not the file
    assert result.returncode == 0, result.stderr
    assert b"child line" in result.stderr
    assert target.read_bytes() == b""


def test_verbose_is_accepted_before_and_after_the_subcommand():
    from edgelesspart.cli import make_parser

    parser = make_parser()
    assert parser.parse_args(["--verbose", "inspect", "b"]).verbose is True
    assert parser.parse_args(["inspect", "b", "--verbose"]).verbose is True
    assert parser.parse_args(["inspect", "b"]).verbose is False


@pytest.mark.slow
def test_cli_output_is_free_of_tensorflow_and_litert_noise(tmp_path):
    # GIVEN a command that imports TensorFlow and creates LiteRT interpreters
    argv = ["profile", "--max-cut-points", "2", "--repeats", "1", "--quiet",
            "--out", str(tmp_path / "p.json")]
    # WHEN it runs as a user runs it (a fresh process, no --verbose)
    result = subprocess.run([sys.executable, "-m", "edgelesspart.cli", *argv],
                            capture_output=True, text=True, timeout=300)
    # THEN it succeeds, prints its table, and stderr holds none of the start-up noise
    assert result.returncode == 0, result.stderr[-2000:]
    assert "wrote" in result.stdout
    for noise in ("oneDNN", "XNNPACK", "absl::InitializeLog", "cpu_feature_guard"):
        assert noise not in result.stderr, result.stderr[-2000:]
