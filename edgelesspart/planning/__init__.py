"""Build stage 3, planning: where to split, where to put exits, how to cross each link.

Owns the pure planners: the two-part planner (:mod:`.planner`) with its exit placement
(:mod:`.placement`), objective modes (:mod:`.objective`), payload and 6 MB rule
(:mod:`.payload`), codec choice (:mod:`.codec_selection`), the plan-truth check against edge-only
and cloud-only (:mod:`.check`), and the N-node chain planner of the pipeline (:mod:`.chain`). It
may import :mod:`edgelesspart.profiling`, :mod:`edgelesspart.model`, the runtime core and the
root helpers; multi-node subsystems import it, never the reverse.
"""
