"""`edgelesspart build --codec ...`: the codec lands in the manifest, codecs.json and inspect."""

from __future__ import annotations

import json

import pytest

from edgelesspart.build import BuildConfig
from edgelesspart.cli import main
from edgelesspart.errors import ConfigError
from edgelesspart.runtime.manifest import load_manifest

QUICK = ["--limit", "60", "--epochs", "1", "--max-cut-points", "4", "--exits-per-part", "1,0",
         "--profile-method", "tf-function", "--quiet"]  # fmt: skip


@pytest.mark.needs_tf
@pytest.mark.slow
def test_fixed_codec_is_measured_recorded_and_inspected(tmp_path, capsys):
    pytest.importorskip("keras")
    out = tmp_path / "bundle"
    # WHEN the user fixes the codec
    code = main(["build", "--constraint", "memory", "--codec", "fp16", "--out", str(out), *QUICK])
    printed = capsys.readouterr().out
    # THEN the build says which codec it uses
    assert code == 0 and "codec: fp16 (fixed)" in printed
    manifest = load_manifest(out)  # verifies every hash, codecs.json included
    codec = manifest.codec
    assert codec["name"] == "fp16" and codec["selected_by"] == "fixed"
    assert codec["max_loss_pp"] == 0.5 and codec["cut_point"] == manifest.plan.split
    assert 0.45 < codec["size_ratio"] < 0.6  # half the bytes plus the frame header
    rows = {r["codec"]: r for r in codec["table"]}
    assert {"raw", "fp16", "int8+zstd", "fp16+lz4"} <= set(rows)
    assert rows["raw"]["accuracy_delta_pp"] == 0.0
    # AND the plan records the codec and its encoded bytes
    assert manifest.plan.parameters["codec"] == "fp16"
    assert manifest.plan.parameters["boundary_encoded_bytes"] == round(
        rows["fp16"]["bytes_per_sample"]
    )
    # AND codecs.json is in the bundle, hashed like every file
    assert "codecs.json" in manifest.files
    table = json.loads((out / "codecs.json").read_text())
    assert table["cut_point"] == manifest.plan.split and len(table["rows"]) == len(rows)
    # AND the profile holds encoded bytes per cut point
    profile = json.loads((out / "profile.json").read_text())
    assert "fp16" in profile["cut_points"][0]["encoded_bytes"]
    # AND inspect prints the table with the chosen codec marked
    assert main(["inspect", str(out)]) == 0
    text = capsys.readouterr().out
    assert "codec table at" in text and any(
        line.split()[0] == "fp16" and line.rstrip().endswith("*") for line in text.splitlines()
        if line.strip()
    )


def test_unknown_codec_fails_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "never"
    code = main(["build", "--constraint", "memory", "--codec", "bogus", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "Unknown codec 'bogus'" in err and "int8+zstd" in err and "auto" in err
    assert not out.exists()


def test_codec_options_come_from_yaml_too(tmp_path):
    from edgelesspart.commands.build import load_config_file

    path = tmp_path / "build.yaml"
    path.write_text("codec: int8+zstd\nmax-codec-loss: 1.0\n")
    config = BuildConfig.from_mapping(load_config_file(str(path)))
    assert (config.codec, config.max_codec_loss) == ("int8+zstd", 1.0)
    assert BuildConfig().codec == "auto" and BuildConfig().max_codec_loss == 0.5
    with pytest.raises(ConfigError, match=r"max_codec_loss must be a number.*>= 0"):
        BuildConfig(max_codec_loss=-1)
