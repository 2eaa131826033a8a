"""P12: the whole composition: run-time widths + early exits + a cloud tail on an emulated chain.

1. Model: a width bundle (``dynamic.json``). By default the chain CNN with five stages
   (32/48/64/96/128 channels, 32x32 digits, sandwich rule; ``--quick``: one epoch, widths 1 and
   0.5) is trained and exported; ``--bundle DIR`` uses a given one instead (e.g.
   ``train-widths --model mobilenetv2 --stages 5``). Exit heads are trained after each edge
   stage, one per stage and width (:func:`edgelesspart.dynamic.exits.add_width_exits`; the
   serving threshold is chosen on the validation split; ``--shared-heads``: one per stage),
   and the chain manifest is written, whose last stage is the cloud tail.
2. Services, all on loopback: the cloud tail in ``serve-cloud``'s app (the last stage at full
   width, HTTP ``/v1/continue``); the whole model in a second such app (every stage: the
   adaptive arm's shed route); and the edge chain as Ray actors, one per edge stage (the
   first N-1 stages: 4 edge nodes for a 5-stage bundle), each an emulated RPi4-class device
   (it sleeps to ``scale`` x its segment's measured latency, plus its exit head's when the
   head ran) sending over an emulated link (``--link-mbps``, ``--link-rtt-ms``; offloads to
   the cloud go over the same link model).
3. Load, defined on the static arm (the composed chain at full width): node ``k`` computes the
   share of the requests no earlier exit answered (test exit shares at the serving
   threshold). The busiest node (share x (stage + head time)) is scaled to ``--stage-ms``,
   the open-loop arrival rate is ``--load`` of its capacity, and it is the node slowed
   ``--slowdown`` x mid-run, then recovered. Three arms, one after the other in the same run,
   same arrivals:

   * ``adaptive``: the SLO width controller (curves: each width's head latency, the chain's
     accuracy *with exits* when that stage narrows) + exits + the tail offload, and, unless
     ``--no-shed``, a shed route: the controller narrows only within ``--accuracy-budget``
     and sends the least share of arrivals straight to the whole model in the cloud that
     brings the bottleneck under its target. The static arm cannot do either: its widths and
     its offload point are fixed;
   * ``static``: full width, the same exits and tail offload;
   * ``defer``: full width, no exits, no cloud: every stage (the last one too) on its own edge
     node (DEFER).

Reported per arm, during the slowdown and overall: SLO attainment (a refused request counts as
missed), throughput, accuracy, the offload share (tail offloads + shed) and the cloud cost per
million requests (each share x the price of one invocation of the cloud tier,
``--cloud-device``, from the bundled price tables, at the tail's or the whole model's measured
full-width latency). Headline: adaptive / static SLO attainment during the slowdown (goals:
>= 3x, throughput >= 1.5x, accuracy within 2 points of static full width); the ratios against
DEFER are reported too.

Usage::

    .venv/bin/python experiments/bench_p12_composed.py [--quick] [--bundle DIR] [--slowdown 2.5]
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_p9_dynamic as p9  # noqa: E402
import benchlib  # noqa: E402

CHANNELS = (32, 48, 64, 96, 128)
EPOCHS, QUICK_EPOCHS = 5, 1
WIDTHS, QUICK_WIDTHS = (1.0, 0.75, 0.5, 0.25), (1.0, 0.5)
HEAD_EPOCHS, QUICK_HEAD_EPOCHS = 30, 5
ARMS = ("adaptive", "static", "defer")
#: The full run adds the adaptive arm without its shed route: what widths alone deliver.
FULL_ARMS = ("adaptive", "widths", "static", "defer")
QUICK_REDUCED = "1 training epoch on 400 images, widths 1 and 0.5, 10 s runs"
SLO_GOAL, THROUGHPUT_GOAL, ACCURACY_POINTS = 3.0, 1.5, 2.0


def _args(argv: list[str] | None) -> Any:
    def extra(parser: Any) -> None:
        parser.add_argument("--bundle", type=Path, default=None, help="a width bundle to use")
        parser.add_argument("--retrain", action="store_true", help="ignore the cached bundle")
        parser.add_argument("--dataset", default="digits", help="digits or digits-hard")
        parser.add_argument("--slowdown", type=float, default=2.5, help="injected factor")
        parser.add_argument("--stage-ms", type=float, default=40.0, help="slowest edge stage")
        parser.add_argument("--load", type=float, default=0.65, help="share of capacity")
        parser.add_argument("--slo-factor", type=float, default=2.5, help="SLO / e2e latency")
        parser.add_argument("--link-mbps", type=float, default=100.0, help="emulated links")
        parser.add_argument("--link-rtt-ms", type=float, default=2.0, help="per transfer")
        parser.add_argument("--cloud-device", default="lambda-2gb", help="priced cloud tier")
        parser.add_argument(
            "--shared-heads", action="store_true",
            help="one exit head per stage for every width (default: one per stage and width)",
        )  # fmt: skip
        parser.add_argument(
            "--no-shed", action="store_true",
            help="adaptive arm: widths only, no shedding to the whole model in the cloud",
        )  # fmt: skip
        parser.add_argument(
            "--accuracy-budget", type=float, default=0.01,
            help="with shedding: widths never cost more accuracy than this (0..1)",
        )  # fmt: skip

    return benchlib.parse_args(__doc__.splitlines()[0], argv, extra)


# ------------------------------------------------------------------------------ bundle


def chain_cnn_bundle(data: Any, out: Path, quick: bool, retrain: bool) -> Path:
    """The five-stage chain CNN width bundle (cached under ``out`` when it matches)."""
    from edgelesspart.dynamic.widths import load_manifest

    epochs = QUICK_EPOCHS if quick else EPOCHS
    widths = QUICK_WIDTHS if quick else WIDTHS
    if not retrain and (out / "dynamic.json").is_file():
        try:
            m = load_manifest(out)
            if m.training.get("epochs") == epochs and m.widths == widths and m.exits:
                print(f"  cached bundle {benchlib.relative_to_root(str(out))}")
                return out
        except Exception as exc:  # noqa: BLE001 - a stale cache is rebuilt
            print(f"  cache unusable ({exc}); retraining")
    from edgelesspart.dynamic.export import export_width_bundle
    from edgelesspart.dynamic.model import build_chain_cnn
    from edgelesspart.dynamic.training import WidthTrainingConfig, train_width_robust

    if out.exists():
        shutil.rmtree(out)
    model = build_chain_cnn(data.input_shape, data.num_classes, CHANNELS, seed=0)
    config = WidthTrainingConfig(strategy="sandwich", epochs=epochs, widths=widths)
    record = train_width_robust(model, data, config)
    export_width_bundle(model, data, out, strategy="sandwich", widths=widths, training=record)
    return out


def prepare(bundle: Path, data: Any, quick: bool, shared_heads: bool = False) -> tuple[Any, Any]:
    """Exit heads (when missing, or of the other kind: one per width or one per stage) and the
    chain manifest; returns (width manifest, chain)."""
    from edgelesspart.dynamic.exits import add_width_exits, summary, write_chain_manifest
    from edgelesspart.dynamic.widths import load_manifest
    from edgelesspart.runtime.manifest import load_manifest as load_chain

    manifest = load_manifest(bundle)
    per_width = not shared_heads
    if not manifest.exits or manifest.serving.get("per_width_heads") is not per_width:
        # none yet, made before heads per width (no per_width_heads), or the other kind
        epochs = QUICK_HEAD_EPOCHS if quick else HEAD_EPOCHS
        manifest = add_width_exits(bundle, data, epochs=epochs, per_width=per_width)
    print(summary(manifest))
    write_chain_manifest(bundle)
    return manifest, load_chain(bundle)


# ------------------------------------------------------------------------------ runs


def scenario(manifest: Any, args: Any) -> dict[str, Any]:
    """Scale, load, SLO and slowdown schedule from the measured curves of the edge stages.

    The load is defined on the composed chain at full width, the static arm's: node ``k``
    computes the share ``reach[k]`` of the requests that no earlier exit answered (the exit
    shares measured on the test split at the serving threshold), each in its full-width stage
    time plus its exit head's. The busiest node (largest ``reach x time``) is scaled to
    ``--stage-ms``, the arrival rate is ``--load`` of its capacity, and it is the node slowed.
    """
    edge = len(manifest.stages) - 1
    heads = [float((manifest.exit_head(k, 1.0) or {}).get("latency_ms", 0.0)) for k in range(edge)]
    full = [manifest.stages[k].at(1.0).latency_ms + heads[k] for k in range(edge)]
    shares = manifest.serving.get("test_exit_shares") or {}
    reach = [1.0 - sum(float(shares.get(f"exit_{j}", 0.0)) for j in range(k)) for k in range(edge)]
    work = [r * f for r, f in zip(reach, full)]
    slow = int(np.argmax(work))
    scale = max(1.0, args.stage_ms / full[slow])
    tail = manifest.stages[-1].at(1.0).latency_ms
    e2e_ms = scale * (sum(full) + tail)  # the chain at full width, every stage on a node
    quick = args.quick
    return {
        "scale": scale,
        "edge_stages": edge,
        "stage_ms": [round(scale * f, 2) for f in full],
        "head_ms": [round(scale * h, 2) for h in heads],
        "reach": [round(r, 4) for r in reach],
        "cloud_ms": round(tail, 3),
        "rate": args.load * 1000.0 / (scale * work[slow]),
        "slo_ms": args.slo_factor * e2e_ms,
        "stage": slow,
        "factor": args.slowdown,
        "slow_start_s": 3.0 if quick else 10.0,
        "slow_end_s": 8.0 if quick else 35.0,
        "end_s": 10.0 if quick else 50.0,
    }


def run_arm(
    arm: str, bundle: Path, manifest: Any, data: Any, sc: dict, args: Any, url: str, whole: str
):
    """One arm of the scenario: its records summarised (``url``: the cloud tail; ``whole``:
    the whole model in the cloud, the adaptive arm's shed route unless ``--no-shed``)."""
    from edgelesspart.dynamic.controller import (
        ControllerConfig,
        WidthController,
        curves_from_manifest,
    )
    from edgelesspart.dynamic.pipeline import DynamicPipeline
    from edgelesspart.pipeline.contract import make_offloader
    from edgelesspart.pipeline.emulation import HostCpuMeter

    composed = arm != "defer"
    controller, shed_route = None, None
    if arm in ("adaptive", "widths"):
        curves, full = curves_from_manifest(manifest, scale=sc["scale"], exits=True)
        config = ControllerConfig(slo_ms=sc["slo_ms"], accuracy_budget=args.accuracy_budget)
        shed_accuracy = None
        if arm == "adaptive" and not args.no_shed:
            shed_accuracy = float(manifest.serving["validation_final_accuracy"])
            shed_route = make_offloader(whole, timeout_s=5.0)
        controller = WidthController(curves[: sc["edge_stages"]], full, config, shed_accuracy)
    pipe = DynamicPipeline(
        bundle, scale=sc["scale"], controller=controller, slo_ms=sc["slo_ms"],
        edge_stages=sc["edge_stages"] if composed else None,
        threshold=float(manifest.serving["threshold"]) if composed else None,
        offloader=make_offloader(url, timeout_s=5.0) if composed else None,
        link_mbps=args.link_mbps, link_rtt_ms=args.link_rtt_ms, shed_offloader=shed_route,
    )  # fmt: skip
    with pipe, HostCpuMeter() as meter:
        records = p9.run_load(pipe, data.x_test, data.y_test, sc["rate"], sc)
        metrics = pipe.metrics()
    lo, hi = sc["slow_start_s"], sc["slow_end_s"]
    answered = [r for r in records if "latency_ms" in r]
    shed = sum(1 for r in answered if r.get("shed"))
    tails = sum(1 for r in answered if r.get("offloaded") and not r.get("shed"))
    exits: dict[str, int] = {}
    for r in answered:
        key = "cloud" if r.get("offloaded") and not r.get("degraded") else str(r.get("exit"))
        key = "shed" if r.get("shed") else key
        exits[key] = exits.get(key, 0) + 1
    during = [r for r in answered if lo <= r["submit_s"] < hi]
    return {
        "arm": arm,
        "overall": p9.window_stats(records, sc["slo_ms"], 0, sc["end_s"] + 60),
        "slowdown": p9.window_stats(records, sc["slo_ms"], lo, hi),
        "before": p9.window_stats(records, sc["slo_ms"], 0, lo),
        "offload_share": (tails + shed) / len(answered) if answered else None,
        "tail_share": tails / len(answered) if answered else None,
        "shed_share": shed / len(answered) if answered else None,
        "shed_share_during_slowdown": (
            sum(1 for r in during if r.get("shed")) / len(during) if during else None
        ),
        "degraded": sum(1 for r in answered if r.get("degraded")),
        "answered_by": exits,
        "widths_during_slowdown": _width_mix(records, lo, hi),
        "decisions": metrics.get("decisions", [])[-12:],
        "offloads": metrics.get("offloads"),
        "host": meter.result,
        "host_bound_items": sum(s["host_bound_items"] for s in metrics["stages"]),
    }


def _width_mix(records: list[dict[str, Any]], lo: float, hi: float) -> dict[str, int]:
    """How often each stage width was used by requests submitted in [lo, hi)."""
    mix: dict[str, int] = {}
    for r in records:
        if lo <= r["submit_s"] < hi:
            for k, w in enumerate(r.get("widths") or []):
                key = f"stage{k}@{w:g}"
                mix[key] = mix.get(key, 0) + 1
    return dict(sorted(mix.items()))


def price_per_offload(cloud_device: str, cloud_ms: float) -> float:
    """USD of one invocation of the cloud tier running the tail for ``cloud_ms``."""
    from edgelesspart.planning.objective import default_cost_fn
    from edgelesspart.profiling.devices import load_device

    return float(default_cost_fn(load_device(cloud_device))(cloud_ms))


# ------------------------------------------------------------------------------ main


def measure(args: Any) -> dict[str, Any]:
    """Prepare the bundle, start the cloud tail on loopback and a local Ray, run the arms."""
    from cloud_functions.local_server import create_app
    from edgelesspart.model.datasets import load_dataset
    from edgelesspart.pipeline import raykit
    from edgelesspart.runtime.cloud import CloudPart
    from service_http.wsgi import BackgroundServer

    if args.bundle is not None:
        from edgelesspart.dynamic.widths import load_manifest

        size = load_manifest(args.bundle).stages[0].input.shape[0]
        data = load_dataset(args.dataset, image_size=int(size), seed=args.seed)
        bundle = args.bundle
    else:  # --quick: 400 images per split (one short epoch on CI's 2 cores)
        limit = 400 if args.quick else None
        data = load_dataset(args.dataset, image_size=32, seed=args.seed, limit=limit)
        tag = "" if args.dataset == "digits" else f"-{args.dataset}"
        bundle = args.out / "bundles" / f"p12-chain{tag}{'-quick' if args.quick else ''}"
        chain_cnn_bundle(data, bundle, args.quick, args.retrain)
    manifest, chain = prepare(bundle, data, args.quick, args.shared_heads)
    sc = scenario(manifest, args)
    price = price_per_offload(args.cloud_device, sc["cloud_ms"])
    whole_ms = sum(s.at(1.0).latency_ms for s in manifest.stages)
    whole_price = price_per_offload(args.cloud_device, whole_ms)
    details: dict[str, Any] = {
        "bundle": benchlib.relative_to_root(str(bundle)),
        "model": manifest.training.get("model", "chain_cnn"),
        "uniform_accuracy": dict(manifest.uniform_accuracy),
        "exits": [dict(e) for e in manifest.exits],
        "serving": dict(manifest.serving),
        "scenario": sc,
        "link": {"mbps": args.link_mbps, "rtt_ms": args.link_rtt_ms},
        "cloud": {
            "device": args.cloud_device, "price_per_offload_usd": price,
            "whole_model_ms": round(whole_ms, 3), "price_per_shed_usd": whole_price,
        },
        "shed_route": not args.no_shed,
        "accuracy_budget": args.accuracy_budget,
    }  # fmt: skip
    owned = _connect(raykit)
    try:
        whole_model = CloudPart(bundle, stages=[s.name for s in chain.plan.stages])
        with (
            BackgroundServer(create_app(str(bundle)), threads=8) as cloud,
            BackgroundServer(create_app(cloud=whole_model), threads=8) as whole,
        ):
            for arm in ARMS if args.quick else FULL_ARMS:
                print(f"  arm {arm} ...", flush=True)
                run = run_arm(arm, bundle, manifest, data, sc, args, cloud.url, whole.url)
                cost = (run["tail_share"] or 0.0) * price + (run["shed_share"] or 0.0) * whole_price
                run["cost_per_million_usd"] = round(cost * 1e6, 4)
                details[arm] = run
    finally:
        raykit.disconnect(owned)
    return details


def _connect(raykit: Any) -> Any:
    """A private local Ray; one retry (a busy host can miss Ray's fixed raylet start time)."""
    try:
        return raykit.connect("local", num_cpus=2)
    except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception on this timeout
        print(f"  Ray did not start ({exc}); retrying once")
        return raykit.connect("local", num_cpus=2)


def headline(details: dict[str, Any], args: Any) -> tuple[Any, dict[str, Any]]:
    """Adaptive / static (and / DEFER) during the slowdown; the three goal checks."""
    ad = details["adaptive"]["slowdown"]
    ratios = {}
    for base in ("static", "defer"):
        st = details[base]["slowdown"]
        floor = 1.0 / max(1, st["requests"])  # 0 of n met: a lower bound, as if 1 had met it
        ratios[base] = {
            "slo_ratio": (ad["slo_attainment"] or 0) / max(st["slo_attainment"] or 0, floor),
            "slo_ratio_is_lower_bound": not st["slo_attainment"],
            "throughput_ratio": ad["throughput_per_s"] / max(st["throughput_per_s"], 1e-9),
        }
    full_acc = details["static"]["overall"]["accuracy"] or 0.0
    gap = 100.0 * (full_acc - (ad["accuracy"] or 0.0))
    checks = {
        "vs_static": ratios["static"],
        "vs_defer": ratios["defer"],
        "accuracy_gap_points": gap,
        "slo_met": ratios["static"]["slo_ratio"] >= SLO_GOAL,
        "throughput_met": ratios["static"]["throughput_ratio"] >= THROUGHPUT_GOAL,
        "accuracy_met": gap <= ACCURACY_POINTS,
    }
    met = checks["slo_met"] and checks["throughput_met"] and checks["accuracy_met"]
    st = details["static"]["slowdown"]
    if "widths" in details:  # the ablation: the same controller without its shed route
        wd = details["widths"]["slowdown"]
        floor = 1.0 / max(1, st["requests"])
        checks["widths_only_vs_static"] = {
            "slo_ratio": (wd["slo_attainment"] or 0) / max(st["slo_attainment"] or 0, floor),
            "throughput_ratio": wd["throughput_per_s"] / max(st["throughput_per_s"], 1e-9),
            "accuracy_gap_points": 100.0 * (full_acc - (wd["accuracy"] or 0.0)),
        }
    head = benchlib.Headline(
        "P12",
        "adaptive/static SLO attainment during slowdown (widths+exits+cloud)",
        ratios["static"]["slo_ratio"],
        "x",
        f">= {SLO_GOAL:g}x, throughput >= {THROUGHPUT_GOAL:g}x, accuracy within "
        f"{ACCURACY_POINTS:g} points of static full width",
        None if args.quick else met,
        ours=f"{(ad['slo_attainment'] or 0):.0%} SLO, {ad['throughput_per_s']:.1f}/s, acc "
        f"{(ad['accuracy'] or 0):.3f}, offload {details['adaptive']['offload_share'] or 0:.0%} "
        f"(shed {details['adaptive']['shed_share_during_slowdown'] or 0:.0%} during the "
        f"slowdown), ${details['adaptive']['cost_per_million_usd']:.2f}/1M requests",
        reference=f"{(st['slo_attainment'] or 0):.0%} SLO, {st['throughput_per_s']:.1f}/s, acc "
        f"{full_acc:.3f} (static full width, same exits and offload)",
    )
    return head, checks


def print_summary(details: dict[str, Any]) -> None:
    """One line per arm on stdout."""
    sc = details["scenario"]
    print(
        f"  {details['model']}: {sc['edge_stages']} edge stages + cloud tail, SLO "
        f"{sc['slo_ms']:.0f} ms, {sc['rate']:.1f} req/s, stage {sc['stage']} slowed "
        f"{sc['factor']:g}x in [{sc['slow_start_s']:g}, {sc['slow_end_s']:g}) s"
    )
    for arm in [a for a in FULL_ARMS if a in details]:
        run = details[arm]
        s, o = run["slowdown"], run["overall"]
        print(
            f"  {arm:8s} slowdown: SLO {s['slo_attainment'] or 0:.0%}, "
            f"{s['throughput_per_s']:.1f}/s, acc {s['accuracy']}, p95 {s['latency_p95_ms']} ms"
            f" | overall: SLO {o['slo_attainment'] or 0:.0%}, acc {o['accuracy']}, offload "
            f"{run['offload_share'] or 0:.0%} (shed {run['shed_share'] or 0:.0%}), "
            f"${run['cost_per_million_usd']:.2f}/1M, answered "
            f"by {run['answered_by']}"
        )


def main(argv: list[str] | None = None) -> int:
    """Run P12 and print its headline last."""
    start = time.perf_counter()
    args = _args(argv)
    details = measure(args)
    print_summary(details)
    head, checks = headline(details, args)
    details["goals"] = checks
    sc = details["scenario"]
    result = benchlib.BenchResult(
        bench="P12",
        what=f"{details['model']}: {sc['edge_stages']} emulated edge nodes (Ray actors) with "
        f"exit heads + a cloud tail (serve-cloud on loopback), stage {sc['stage']} slowed "
        f"{args.slowdown:g}x mid-run; widths from the SLO controller",
        baseline="static full width with the same exits and offload; DEFER (no exits, no cloud)",
        headline=head,
        quick=args.quick,
        reduced=[QUICK_REDUCED] if args.quick else [],
        details=details,
        seconds=round(time.perf_counter() - start, 1),
    )
    return benchlib.finish(result, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
