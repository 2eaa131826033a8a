"""End to end: `edgelesspart build` on the bundled digits data, then `inspect` and the bundle."""

from __future__ import annotations

import json

import pytest

from edgelesspart.cli import main
from edgelesspart.runtime.manifest import load_manifest

pytest.importorskip("keras")
pytestmark = [pytest.mark.needs_tf, pytest.mark.slow]

QUICK = ["--limit", "120", "--epochs", "1", "--max-cut-points", "6", "--quiet"]


@pytest.mark.parametrize("constraint, placement", [("latency", "pareto"), ("memory", "linear")])
def test_build_cli_exports_a_consistent_bundle(tmp_path, capsys, constraint, placement):
    out = tmp_path / "bundle"
    spec = "templates/exits/examples/conv_gap.yaml"
    # WHEN the user builds with a constraint, a placement and their own exit spec
    code = main(["build", "--constraint", constraint, "--placement", placement,
                 "--exit-spec", spec, "--exits-per-part", "2,1", "--out", str(out), *QUICK])
    printed = capsys.readouterr().out
    # THEN the plan is printed with split, exits and per-part predictions
    assert code == 0
    assert "split after" in printed and "stage edge" in printed and "stage cloud" in printed
    assert "predicted" in printed and "MiB" in printed
    manifest = load_manifest(out)
    edge, cloud = manifest.plan.stages
    assert manifest.plan.constraint == constraint and manifest.plan.placement == placement
    # exits are local to their part and capped
    assert len(edge.exits) <= 2 and len(cloud.exits) <= 1
    for seg in manifest.segments:
        assert seg.exit is None or seg.exit == "final" or any(
            e.name == seg.exit and e.stage == seg.stage for e in manifest.exits
        )
    code_text = (out / "exits" / "generated_exit.py").read_text()
    assert "def build_exit(x, num_classes, name)" in code_text and "Conv2D" in code_text
    assert manifest.extra["build_config"]["exit_spec"] == spec
    # AND inspect summarises the same bundle
    assert main(["inspect", str(out)]) == 0
    assert manifest.bundle_id in capsys.readouterr().out
    profile = json.loads((out / "profile.json").read_text())
    assert profile["cut_points"][-1]["name"] == "output"


def test_bad_exit_spec_fails_before_anything_is_written(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("layers:\n  - {layer: Lambda, function: print}\n")
    out = tmp_path / "never"
    code = main(["build", "--constraint", "memory", "--exit-spec", str(spec), "--out", str(out),
                 *QUICK])
    err = capsys.readouterr().err
    assert code == 2 and "Lambda" in err and "error" in err
    assert not out.exists()
