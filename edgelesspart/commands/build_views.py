"""``edgelesspart build --views N --devices a,b,...``: a SlimEdge multi-view deployment.

Trains a multi-view model (one backbone per view, fusion head, view dropout) on the bundled
digits (distinct crops with their own noise) or a user ``.npz`` (``x_view0 ...``, ``y``),
measures the per-view pruning curves, chooses one pruning ratio per device with NSGA-II, and
exports one pruned segment per device (plus every measured ratio for failure swaps) and the
fusion segment. Options may also come from a YAML deployment file (``--deployment``), data only.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgelesspart.errors import ConfigError

#: flags this path adds to ``edgelesspart build``; it shares the plain build's --dataset, --epochs,
#: --seed, --out, --overwrite and --max-accuracy-drop (in points: the floor is the unpruned
#: accuracy minus that many points, default 2)
FLAGS: dict[str, dict[str, Any]] = {
    "--views": {"type": int, "help": "SlimEdge: number of views (one device each)"},
    "--devices": {"help": "SlimEdge: one device per view, comma-separated (rpi4,rpi5,...)"},
    "--deployment": {
        "help": "SlimEdge: YAML file (views, devices, dataset, epochs, seed, out, "
        "max_accuracy_drop, latency_slo, memory_mb, ratios)"
    },
    "--latency-slo": {"type": float, "help": "SlimEdge: latency SLO in ms instead of a floor"},
}
DEFAULTS = {"dataset": "digits", "epochs": 10, "seed": 0, "max_accuracy_drop": 2.0}
YAML_KEYS = {"views", "devices", "dataset", "epochs", "seed", "out", "max_accuracy_drop",
             "latency_slo", "memory_mb", "ratios"}  # fmt: skip


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add the SlimEdge flags to the ``build`` parser."""
    for flag, kwargs in FLAGS.items():
        parser.add_argument(flag, default=None, **kwargs)


def wanted(args: argparse.Namespace) -> bool:
    """Whether this build is a SlimEdge one."""
    return getattr(args, "views", None) is not None or getattr(args, "deployment", None) is not None


def settings(args: argparse.Namespace) -> dict[str, Any]:
    """Defaults < deployment YAML < flags."""
    import yaml

    values = dict(DEFAULTS)
    if args.deployment:
        try:
            data = yaml.safe_load(Path(args.deployment).read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"Cannot read deployment file {args.deployment}: {exc}.") from exc
        if not isinstance(data, dict) or set(data) - YAML_KEYS:
            raise ConfigError(
                f"Deployment file {args.deployment} must be a mapping with keys among "
                f"{', '.join(sorted(YAML_KEYS))}."
            )
        values.update(data)
    for key in ("views", "devices", "dataset", "epochs", "seed", "out", "max_accuracy_drop",
                "latency_slo"):  # fmt: skip
        value = getattr(args, key, None)
        if value is not None:
            values[key] = value
    devices = values.get("devices")
    if isinstance(devices, str):
        devices = [d.strip() for d in devices.split(",") if d.strip()]
    if not devices or not values.get("views") or len(devices) != int(values["views"]):
        raise ConfigError(
            f"--views {values.get('views')} needs exactly one device per view in --devices "
            f"(got {devices or 'none'}), e.g. --views 4 --devices rpi4,rpi5,jetson-nano,rpi4-1gb."
        )
    values["devices"] = devices
    return values


def run_views(args: argparse.Namespace) -> int:
    """Build, plan and export; print the front and the choice."""
    from edgelesspart.profiling.devices import load_device
    from edgelesspart.slimedge import deploy, optimize, verify
    from edgelesspart.slimedge.curves import CurveModel

    s = settings(args)
    profiles = [load_device(d) for d in s["devices"]]
    slots = deploy.slots_for(profiles)
    if s.get("memory_mb"):
        budget = float(s["memory_mb"]) * 2**20
        slots = [optimize.DeviceSlot(x.name, x.factor, budget) for x in slots]
    ratios = tuple(float(r) for r in s.get("ratios", deploy.DEFAULT_RATIOS))
    build = deploy.build_multiview(
        _data(s), epochs=int(s["epochs"]), seed=int(s["seed"]), ratios=ratios
    )
    model = CurveModel(build.curves)
    base = build.curves.base_accuracy
    drop = float(s["max_accuracy_drop"]) / 100.0
    if s.get("latency_slo") is not None:
        bound = optimize.Bound(latency_slo_ms=float(s["latency_slo"]))
    else:
        bound = optimize.Bound(accuracy_floor=base - drop)
    # the front is checked on the real model (validation split, pruned backbones as deployed)
    verifier = verify.PlanVerifier.from_backbones(
        build.model.fusion, build.pruned, build.data.val, build.data.y_val
    )
    chosen = verify.verified_nsga2_plan(model, slots, bound, verifier, seed=int(s["seed"]))
    baselines = {
        "uniform": optimize.uniform_plan(model, slots, bound),
        "unpruned": optimize.unpruned_plan(model, slots, bound),
    }
    failures = verify.verified_failure_plans(model, slots, verifier, max_drop=drop)
    out = s.get("out") or f"bundles/slimedge-{len(slots)}views"
    path = deploy.export_deployment(
        out, build, slots, chosen, baselines=baselines, failures=failures,
        overwrite=bool(getattr(args, "overwrite", False)), max_accuracy_drop=drop,
    )  # fmt: skip
    print(format_report(chosen, baselines, failures, base))
    print(f"deployment: {path}")
    return 0


def _data(s: dict[str, Any]) -> Any:
    from edgelesspart.slimedge.views import digits_views, load_npz_views

    if s["dataset"] in ("digits", "digits-hard"):
        return digits_views(int(s["views"]), seed=int(s["seed"]), dataset=s["dataset"])
    data = load_npz_views(s["dataset"], seed=int(s["seed"]))
    if data.n_views != int(s["views"]):
        raise ConfigError(f"{s['dataset']} holds {data.n_views} views, not --views {s['views']}.")
    return data


def format_report(
    chosen: Any, baselines: dict[str, Any], failures: dict[int, Any], base: float
) -> str:
    """The Pareto front, the choice, the baselines and the single-failure plans as text."""
    lines = [f"Pareto front (predicted; unpruned validation accuracy {base:.3f}):"]
    lines += [f"  accuracy {a:.3f}  latency {lat:8.3f} ms" for a, lat in chosen.front]
    for label, plan in (("chosen (NSGA-II)", chosen), *baselines.items()):
        ratios = ", ".join(f"{d}={r:.2f}" for d, r in zip(plan.devices, plan.ratios))
        verdict = "" if plan.feasible else "  [violates memory or bound]"
        lines.append(
            f"{label:>17}: accuracy {plan.accuracy:.3f}, slowest device {plan.latency_ms:.3f} ms "
            f"({ratios}){verdict}"
        )
        if plan.verified_accuracy is not None:
            lines.append(f"{'':>17}  verified validation accuracy {plan.verified_accuracy:.3f}")
    for lost, plan in failures.items():
        ratios = ", ".join(f"{plan.devices[v]}={plan.ratios[v]:.2f}" for v in plan.present)
        lines.append(
            f"  if {plan.devices[lost]} (view {lost}) fails: accuracy {plan.accuracy:.3f}"
            + _verified(plan)
            + f", {plan.latency_ms:.3f} ms ({ratios})"
        )
    return "\n".join(lines)


def _verified(plan: Any) -> str:
    if plan.verified_accuracy is None:
        return ""
    return f" (verified {plan.verified_accuracy:.3f})"
