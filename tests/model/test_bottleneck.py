"""The ``--bottleneck`` option and its candidates (edgelesspart.model.bottleneck); no training."""

from __future__ import annotations

import pytest

from edgelesspart.build import BuildConfig
from edgelesspart.errors import ConfigError
from edgelesspart.model.bottleneck import BottleneckShape, candidate_shapes, parse_bottleneck


def test_the_option_takes_none_auto_or_a_channel_count():
    assert parse_bottleneck("none") == "none" and parse_bottleneck(" AUTO ") == "auto"
    assert parse_bottleneck("4") == 4 and parse_bottleneck(8) == 8
    with pytest.raises(ConfigError, match="Unknown bottleneck 'tiny'.*channel count"):
        parse_bottleneck("tiny")
    with pytest.raises(ConfigError, match="at least 1 channel"):
        parse_bottleneck("0")


def test_build_config_checks_the_bottleneck_options():
    assert BuildConfig(bottleneck=4).bottleneck == "4"
    assert BuildConfig.from_mapping({"bottleneck": "auto"}).bottleneck == "auto"
    with pytest.raises(ConfigError, match="bottleneck_max_loss must be"):
        BuildConfig(bottleneck="auto", bottleneck_max_loss=-1)
    # joint exit training would change the tail the decoder was trained for
    with pytest.raises(ConfigError, match="--exit-training joint fine-tunes the backbone"):
        BuildConfig(bottleneck="auto", exit_training="joint")


def test_candidates_shrink_the_boundary():
    # GIVEN an (8, 8, 64) boundary: auto trains C/8 and C/16 at stride 1 and C/4 at stride 2
    assert candidate_shapes((8, 8, 64), "auto") == [
        BottleneckShape(8, 1),
        BottleneckShape(4, 1),
        BottleneckShape(16, 2),
    ]
    # odd or small spatial sizes get no strided candidate; dense boundaries are 1-D
    assert candidate_shapes((7, 7, 64), 4) == [BottleneckShape(4, 1)]
    assert candidate_shapes((256,), "auto") == [BottleneckShape(32, 1), BottleneckShape(16, 1)]
    with pytest.raises(ConfigError, match="does not shrink a boundary of 16 channels"):
        candidate_shapes((8, 8, 16), 16)
