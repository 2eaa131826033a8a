"""Environment-aware dynamic pruning: stages that change width at run time to meet an SLO.

This package owns the *width* knob of DESIGN.md. At build time (TensorFlow, :mod:`.model`,
:mod:`.training`, :mod:`.export`) it trains a chain CNN so that every stage works at several
widths without retraining (nested "slimmable" training over ordered channels, or sandwich-rule
training with in-place distillation; plain post-hoc L1 pruning is the baseline), slices the
trained weights into a real narrow model per stage and width (fewer channels, not masked),
exports each as a LiteRT segment and records each width's measured latency and accuracy in a
``dynamic.json`` manifest. At run time (TF-free: :mod:`.widths`, :mod:`.controller`,
:mod:`.stage`, :mod:`.pipeline`) a stage holds every width's segments and switches with
``set_width`` between requests, and a pure controller reads per-stage service time, queue
length and throughput, finds the bottleneck and picks a width per stage that meets the latency
SLO at the highest accuracy, with hysteresis and a reason for every decision.
"""
