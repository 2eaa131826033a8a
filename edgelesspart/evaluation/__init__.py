"""Evaluation of a bundle over confidence thresholds: accuracy, exit mix, latency, memory, cost.

Pure numpy and TensorFlow-free: the sweep consumes one executor ``Trace`` and computes every
threshold from it. Pricing is data (:mod:`edgelesspart.profiling.pricing`); matplotlib is imported
only to plot.
Metric definitions: ``docs/evaluation.md``.
"""

from edgelesspart.evaluation.baselines import (
    BASELINES,
    Backbone,
    BaselineResult,
    backbone_from_trace,
    baselines,
)
from edgelesspart.evaluation.calibration import (
    apply_temperature,
    calibrate_trace,
    expected_calibration_error,
    fit_temperature,
    fit_temperatures,
    select_threshold,
)
from edgelesspart.evaluation.plots import plot_evaluation, plot_overlay
from edgelesspart.evaluation.report import (
    Evaluation,
    format_table,
    load_evaluation,
    write_outputs,
)
from edgelesspart.evaluation.sweep import (
    LatencyModel,
    MeasuredSegment,
    StageMemory,
    ThresholdResult,
    concat_traces,
    exit_accuracy,
    exit_costs,
    parse_thresholds,
    sweep,
)

__all__ = [
    "BASELINES",
    "Backbone",
    "BaselineResult",
    "Evaluation",
    "LatencyModel",
    "MeasuredSegment",
    "StageMemory",
    "ThresholdResult",
    "apply_temperature",
    "backbone_from_trace",
    "baselines",
    "calibrate_trace",
    "concat_traces",
    "exit_accuracy",
    "exit_costs",
    "expected_calibration_error",
    "fit_temperature",
    "fit_temperatures",
    "format_table",
    "load_evaluation",
    "parse_thresholds",
    "plot_evaluation",
    "plot_overlay",
    "select_threshold",
    "sweep",
    "write_outputs",
]
