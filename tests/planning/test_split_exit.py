"""The edge part's last exit at the split (``build --split-exit yes``, the default): placement
on the hand-computed toy profile of ``test_planner.py`` (c1..c5 at 10, 20, 40, 70, 90 ms)."""

from __future__ import annotations

from test_planner import WEIGHTS, make_profile

from edgelesspart.planning import planner
from edgelesspart.planning.placement import place_edge_exits, place_exits
from edgelesspart.runtime.plan import MODEL_INPUT


def test_last_edge_exit_sits_at_the_split_the_others_at_k_over_n():
    host = make_profile(weights=WEIGHTS)
    # split at c4 (70 ms): relative depths c1 .14, c2 .29, c3 .57, c4 1
    # paper spacing, targets 1/3 and 2/3 -> c2 and c3
    assert place_edge_exits(host, "c4", 2) == place_exits(host, MODEL_INPUT, "c4", 2)
    assert place_edge_exits(host, "c4", 2) == ("c2", "c3")
    # at the split: one exit at target 1/2 -> c3, then the split itself
    assert place_edge_exits(host, "c4", 2, at_split=True) == ("c3", "c4")
    assert place_edge_exits(host, "c4", 1, at_split=True) == ("c4",)
    assert place_edge_exits(host, "c4", 0, at_split=True) == ()
    # never a duplicate when the split is the only candidate
    assert place_edge_exits(host, "c1", 3, at_split=True) == ("c1",)


def test_plan_split_places_the_split_exit_only_when_asked():
    host = make_profile(weights=WEIGHTS)
    edge, cloud = host.scaled("slow-edge", 2.0), host.scaled("fast-cloud", 0.5)
    paper = planner.plan_split(edge, cloud, constraint="memory", exits_per_part=(2, 2))
    ours = planner.plan_split(edge, cloud, constraint="memory", exits_per_part=(2, 2),
                              split_exit=True)  # fmt: skip
    assert ours.split == paper.split and ours.stages[1].exits == paper.stages[1].exits
    assert ours.stages[0].exits[-1] == ours.split != paper.stages[0].exits[-1]
    assert ours.parameters["split_exit"] is True and "split_exit" not in paper.parameters
