"""``edgelesspart evaluate BUNDLE``: sweep confidence thresholds on the build's test split.

Nothing heavy is imported at module level (no TensorFlow, no matplotlib); see :func:`run`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgelesspart.errors import ConfigError

PROVIDER_CHOICES = ("gcf", "gcf-2nd-gen", "lambda")


def register(subparsers: Any) -> None:
    """Add the ``evaluate`` subcommand."""
    parser = subparsers.add_parser(
        "evaluate",
        help="accuracy, exit mix, latency, memory and cloud cost over confidence thresholds",
        description=(
            "Trace the bundle once on its build's test split, then report for every threshold: "
            "accuracy, exit mix, offload rate, expected/p50/p95 latency, edge and cloud memory "
            "and cloud cost per 1M requests, plus edge-only, cloud-only and split-without-exits "
            "baselines. Writes evaluation.json, evaluation.csv and evaluation.png."
        ),
    )
    parser.add_argument("bundle", help="bundle directory (holding manifest.json)")
    parser.add_argument(
        "--thresholds",
        default="0.3:0.9:0.05",
        help="start:stop:step (stop included) or a comma list (default: %(default)s)",
    )
    parser.add_argument("--edge-device", help="device profile of the edge (default: the plan's)")
    parser.add_argument("--cloud-device", help="device profile of the cloud (default: the plan's)")
    parser.add_argument("--link", default="wifi",
                        help="wifi, lte, 5g, 3g, loopback or a link JSON file "
                        "(default: %(default)s)")
    parser.add_argument("--provider", choices=PROVIDER_CHOICES, default=None,
                        help="pricing table; gcf = Cloud Functions of --gcf-generation (default: "
                        "the provider of the plan's cloud device, as package-cloud uses)")
    parser.add_argument("--gcf-generation", type=int, choices=(1, 2), default=None,
                        help="Cloud Functions generation priced for gcf (default: 2, the "
                        "generation package-cloud packages)")
    parser.add_argument("--architecture", choices=("x86_64", "arm64"), default="x86_64",
                        help="Lambda CPU architecture (default: %(default)s)")
    parser.add_argument("--memory-mb", type=int,
                        help="cloud function memory (default: the cloud device's, else 2048)")
    parser.add_argument("--cold-start-ms", type=float, default=0.0,
                        help="extra latency (and, on Lambda, billed INIT) of a cold start")
    parser.add_argument("--cold-start-prob", type=float, default=0.0,
                        help="probability an offloaded request meets a cold container")
    parser.add_argument("--offload-overhead-ms", type=float, default=0.0,
                        help="fixed software cost of one offload (HTTP, JSON, encode/decode), "
                        "measured on your deployment (default: %(default)s)")
    parser.add_argument("--response-bytes", type=int, default=512,
                        help="bytes of the cloud's answer, for egress pricing "
                        "(default: %(default)s)")
    parser.add_argument("--calibrate", action="store_true",
                        help="temperature-scale each exit on the validation split first")
    parser.add_argument("--max-accuracy-drop", type=float, metavar="POINTS",
                        help="pick the fastest threshold whose validation accuracy is within "
                        "POINTS percentage points of the full model (e.g. 1, as in build) and "
                        "report it on test")
    parser.add_argument("--batch-size", type=int, default=256, help="rows per LiteRT call")
    parser.add_argument("--out", help="output directory (default: the bundle)")
    parser.add_argument("--no-plots", action="store_true", help="skip evaluation.png")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Evaluate the bundle, write the outputs, print the table; return the exit code."""
    if (Path(args.bundle) / "dynamic.json").is_file():  # a width bundle: accuracy/latency per width
        from edgelesspart.commands.dynamic import run_widths

        return run_widths(argparse.Namespace(bundle=args.bundle, json=False))
    if _chain_cloud(args.bundle):  # N edge stages + a cloud tail
        return run_chain_cloud(args)
    from edgelesspart.evaluation.pipeline import EvaluationConfig, evaluate_bundle
    from edgelesspart.evaluation.report import format_table, write_outputs
    from edgelesspart.evaluation.sweep import parse_thresholds
    from edgelesspart.profiling.devices import (
        DEFAULT_GCF_GENERATION,
        bundle_cloud_provider,
        pricing_provider,
    )

    config = EvaluationConfig(
        thresholds=parse_thresholds(args.thresholds),
        edge_device=args.edge_device,
        cloud_device=args.cloud_device,
        link=args.link,
        provider=pricing_provider(
            args.provider or bundle_cloud_provider(args.bundle),
            args.gcf_generation or DEFAULT_GCF_GENERATION,
        ),
        architecture=args.architecture,
        memory_mb=args.memory_mb,
        cold_start_ms=args.cold_start_ms,
        cold_start_prob=args.cold_start_prob,
        offload_overhead_ms=args.offload_overhead_ms,
        response_bytes=args.response_bytes,
        calibrate=args.calibrate,
        max_accuracy_drop=_points_to_fraction(args.max_accuracy_drop),
        batch_size=args.batch_size,
    )
    evaluation = evaluate_bundle(args.bundle, config, show_progress=not args.quiet)
    out = Path(args.out) if args.out else Path(args.bundle)
    written = list(write_outputs(evaluation, out))
    if not args.no_plots:
        from edgelesspart.evaluation.plots import plot_evaluation

        written.append(plot_evaluation(evaluation, out / "evaluation.png"))
    print(format_table(evaluation))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def _points_to_fraction(points: float | None) -> float | None:
    """``--max-accuracy-drop`` is in points, as in ``build``; the sweep takes a fraction."""
    if points is None:
        return None
    if not 0 <= points <= 100:
        raise ConfigError(
            f"--max-accuracy-drop is in percentage points (0-100, e.g. 1 for one point, as in "
            f"build), got {points:g}."
        )
    return points / 100.0


def _chain_cloud(bundle: str) -> bool:
    from edgelesspart.evaluation.chain_cloud import has_cloud_tail
    from edgelesspart.runtime.manifest import load_manifest

    return has_cloud_tail(load_manifest(bundle, verify=False))


def run_chain_cloud(args: argparse.Namespace) -> int:
    """``evaluate`` on a chain with a cloud tail: edge-stage exit mix, offload share, cost."""
    import json

    from edgelesspart.evaluation.chain_cloud import evaluate_chain_cloud, format_chain_cloud
    from edgelesspart.evaluation.sweep import parse_thresholds

    report = evaluate_chain_cloud(
        args.bundle, thresholds=parse_thresholds(args.thresholds), batch_size=args.batch_size
    )
    out = Path(args.out) if args.out else Path(args.bundle)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "evaluation.json"
    path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(format_chain_cloud(report))
    print(f"wrote {path}")
    return 0
