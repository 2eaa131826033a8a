"""Plan truth on a built bundle: the plan re-checked with exit rates measured on validation.

The planner's check (:mod:`edgelesspart.planning.check`) compares a plan with edge-only and
cloud-only on assumed exit rates; here the rates come from running the bundle's own exits at the
serving threshold through the TF-free executor, as the services run them (docs/demo.md).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgelesspart.errors import EdgeLessPartError
from edgelesspart.planning.check import PlanCheck, chance_warning, check_for_devices
from edgelesspart.profiling.profile import ModelProfile


def _confidence(probs: Any, measure: str) -> Any:
    import numpy as np

    p = np.asarray(probs, dtype=np.float64)
    if measure == "entropy":
        classes = max(p.shape[1], 2)
        entropy = -(p * np.log(np.clip(p, 1e-12, None))).sum(axis=1) / np.log(classes)
        return 1.0 - entropy
    return p.max(axis=1)


def measured_exit_rates(
    trace: Any, threshold: float, exit_cuts: Mapping[str, str]
) -> dict[str, float]:
    """P(answer at exit | reached it) per exit cut point, measured on a trace at ``threshold``.

    Args:
        trace: an executor ``Trace`` (every exit's probabilities for every row).
        threshold: the serving threshold.
        exit_cuts: exit name -> cut point (the manifest's exits).
    """
    import numpy as np

    measure = str(getattr(trace, "measure", "max-softmax"))
    running = None
    rates: dict[str, float] = {}
    for name in trace.exits:
        if name not in exit_cuts:
            continue  # the final classifier answers whatever is left
        confident = _confidence(trace.probs[name], measure) >= threshold
        running = np.ones(len(confident), bool) if running is None else running
        reached = int(running.sum())
        rates[exit_cuts[name]] = float((confident & running).sum() / reached) if reached else 0.0
        running = running & ~confident
    return rates


def check_bundle(bundle: str | Any, *, link: str | None = None, limit: int = 1000) -> PlanCheck:
    """Check a built bundle's plan with exit rates measured on its validation split.

    The bundle's host profile, plan devices and build link are used; the exit rates are those of
    the bundle's own exits at the serving threshold (``manifest.serving``, else 0.8) on at most
    ``limit`` validation samples, run through the TF-free executor as the services run them.
    """
    from pathlib import Path

    from edgelesspart.evaluation.pipeline import load_eval_data
    from edgelesspart.runtime.bundle import Bundle
    from edgelesspart.runtime.executor import ProgressiveExecutor

    loaded = Bundle.load(Path(bundle), pool_size=1)
    manifest = loaded.manifest
    host = ModelProfile.load(Path(bundle) / "profile.json")
    serving = getattr(manifest, "serving", None) or {}
    threshold = float(serving.get("threshold", 0.8))
    x_val = load_eval_data(manifest).x_val[:limit]
    trace = ProgressiveExecutor(loaded, manifest.stage_names[0]).trace(x_val, timing_samples=1)
    rates = measured_exit_rates(trace, threshold, {e.name: e.cut_point for e in manifest.exits})
    build = manifest.extra.get("build_config", {})
    sources = manifest.plan.parameters.get("latency_sources") or {}
    factors = {
        role: float(entry["factor"])
        for role, entry in sources.items()
        if isinstance(entry, dict) and isinstance(entry.get("factor"), (int, float))
    }
    return check_for_devices(
        manifest.plan,
        host,
        edge_device=manifest.plan.stages[0].device,
        cloud_device=manifest.plan.stages[-1].device,
        link=link or str(build.get("link", "wifi")),
        input_bytes=manifest.input.tensor.nbytes,
        exit_rates=rates,
        factors=factors,
    )


def bundle_warnings(bundle: str | Any, *, link: str | None = None) -> list[str]:
    """Every plan-truth warning for a built bundle: dominated plan, model at chance."""
    from edgelesspart.runtime.manifest import load_manifest

    manifest = load_manifest(bundle, verify=False)
    final = manifest.training.get("accuracy", {}).get("test", {}).get("final")
    try:
        warnings = list(check_bundle(bundle, link=link).warnings)
    except EdgeLessPartError as exc:  # a bundle the check cannot model must not fail the build
        warnings = [f"the plan could not be checked against edge-only and cloud-only: {exc}"]
    chance = chance_warning(final, len(manifest.classes))
    return warnings + ([chance] if chance else [])
