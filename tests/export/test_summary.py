"""The measured codec table as people read it: ``edgelesspart inspect`` and the Markdown script.

Synthetic tables check the formatting against numbers worked out by hand; a copy of the tiny
bundle with a really measured table (tests/codec_bundle.py) checks ``inspect BUNDLE`` and
``experiments/codec_table.py BUNDLE`` end to end, as a user runs them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgelesspart.cli import main
from edgelesspart.export.summary import format_codec_markdown, format_codec_table

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "codec_table.py"

#: raw float32 tensor = 4000 bytes; size_ratio = bytes_per_sample / 4000.
ROWS = [
    {"codec": "raw", "bytes_per_sample": 4100, "size_ratio": 1.025, "accuracy_delta_pp": 0.0,
     "encode_ms": 0.01, "decode_ms": 0.02},
    {"codec": "fp16+lz4", "bytes_per_sample": 1250, "size_ratio": 0.3125,
     "accuracy_delta_pp": -0.5, "encode_ms": 0.1234, "decode_ms": 0.05},
    {"codec": "int8+zstd", "bytes_per_sample": 800, "size_ratio": 0.2, "accuracy_delta_pp": 0.25,
     "encode_ms": 1.5, "decode_ms": 0.75},
]  # fmt: skip
TABLE = {"cut_point": "block2_relu", "shape": [10, 10, 10], "samples": 200,
         "raw_accuracy": 0.9125, "host": "x86_64 Linux, 2 CPUs, batch 1", "rows": ROWS,
         "skipped": {"zfp": "its optional library is not installed"}}  # fmt: skip


def test_markdown_table_rows_are_worked_out_by_hand():
    text = format_codec_markdown(TABLE, chosen="fp16+lz4")
    lines = text.splitlines()
    # THEN the caption says where and on what it was measured
    assert lines[0] == (
        "Measured at cut point `block2_relu`, boundary shape (10, 10, 10), 200 validation "
        "samples, raw accuracy 91.25 %, timings on x86_64 Linux, 2 CPUs, batch 1."
    )
    # AND every row is bytes, raw/bytes, delta, ms, with the chosen codec marked
    assert lines[2].startswith("| codec | bytes/sample | x fewer than raw fp32 |")
    assert lines[4] == "| raw | 4,100 | 0.98x | +0.00 | 0.010 | 0.020 |  |"
    assert lines[5] == "| fp16+lz4 | 1,250 | 3.20x | -0.50 | 0.123 | 0.050 | ✓ |"
    assert lines[6] == "| int8+zstd | 800 | 5.00x | +0.25 | 1.500 | 0.750 |  |"
    # AND a codec that could not be measured is listed with its reason, not dropped
    assert lines[-1] == "- not measured: zfp: its optional library is not installed"
    # AND without a chosen codec nothing is marked
    assert "✓" not in format_codec_markdown(TABLE)


def test_markdown_reads_a_manifest_codec_entry_too():
    entry = {"name": "int8+zstd", "cut_point": "c", "samples": 5, "table": ROWS}
    text = format_codec_markdown(entry, chosen=entry["name"])
    assert text.splitlines()[0] == "Measured at cut point `c`, 5 validation samples."
    assert sum(line.startswith("| ") for line in text.splitlines()) == 1 + len(ROWS)


def test_inspect_table_for_an_entry_without_measurements_is_empty():
    assert format_codec_table({"name": "raw"}) == []


# --- a real measured table on the tiny bundle ------------------------------------------------


@pytest.fixture(scope="module")
def codec_bundle(tiny_bundle, tmp_path_factory):
    from codec_bundle import with_codec_table

    return with_codec_table(tiny_bundle, tmp_path_factory.mktemp("codecs") / "bundle")


def _table(bundle: Path) -> dict:
    return json.loads((bundle / "codecs.json").read_text())


def test_inspect_prints_every_measured_codec(codec_bundle, capsys):
    from edgelesspart.runtime.manifest import load_manifest

    chosen = load_manifest(codec_bundle).codec["name"]
    # WHEN the user inspects the bundle
    assert main(["inspect", str(codec_bundle)]) == 0
    lines = capsys.readouterr().out.splitlines()
    # THEN the table header names the split, the samples and the rule
    table = _table(codec_bundle)
    head = lines.index("codec table at block2_relu (60 validation samples, auto, max loss 0.5 pp):")
    assert lines[head + 1].split() == ["codec", "bytes/sample", "vs", "raw", "dAcc", "pp",
                                       "enc", "ms", "dec", "ms"]  # fmt: skip
    # AND one line per measured codec: bytes, x fewer than raw fp32, delta, encode/decode ms
    body = lines[head + 2 : head + 2 + len(table["rows"])]
    for line, row in zip(body, table["rows"]):
        cells = line.split()
        assert cells[0] == row["codec"]
        assert cells[1] == f"{row['bytes_per_sample']:,.0f}"
        assert cells[2] == f"{row['raw_bytes'] / row['bytes_per_sample']:.2f}x"
        assert cells[3:6] == [f"{row['accuracy_delta_pp']:+.2f}", f"{row['encode_ms']:.3f}",
                              f"{row['decode_ms']:.3f}"]  # fmt: skip
        assert (cells[-1] == "*") == (row["codec"] == chosen)
    # AND lossless codecs cost nothing in accuracy, and raw is just over its tensor
    lossless = [r for r in table["rows"] if r["lossless"]]
    assert {r["codec"] for r in lossless} >= {"raw", "lz4", "zstd"}
    assert all(r["accuracy_delta_pp"] == 0.0 for r in lossless)
    assert 16 * 16 * 16 * 4 < table["rows"][0]["bytes_per_sample"] < 16 * 16 * 16 * 4 + 300


def test_inspect_refuses_a_tampered_codec_table(codec_bundle, tmp_path, capsys):
    import shutil

    copy = Path(shutil.copytree(codec_bundle, tmp_path / "tampered"))
    table = _table(copy)
    table["rows"][0]["bytes_per_sample"] = 1.0
    (copy / "codecs.json").write_text(json.dumps(table))
    assert main(["inspect", str(copy)]) == 2
    assert "codecs.json" in capsys.readouterr().err


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_codec_table_script_prints_the_bundles_markdown(codec_bundle):
    from edgelesspart.runtime.manifest import load_manifest

    result = _script(str(codec_bundle))
    assert result.returncode == 0, result.stderr
    table = _table(codec_bundle)
    assert result.stdout.strip() == format_codec_markdown(
        table, load_manifest(codec_bundle).codec["name"]
    )
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")][1:]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [r["codec"] for r in table["rows"]]
    assert sum("✓" in r for r in rows) == 1


def test_codec_table_script_explains_a_bundle_without_a_table(tiny_bundle, tmp_path):
    result = _script(str(tiny_bundle))
    assert result.returncode == 2
    assert "has no measured codec table" in result.stderr and "--codec auto" in result.stderr
    missing = _script(str(tmp_path))
    assert missing.returncode == 2 and "manifest.json" in missing.stderr
