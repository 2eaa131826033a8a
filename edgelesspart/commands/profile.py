"""``edgelesspart profile``: measure a model's per-cut-point profile and write profile.json."""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``profile`` subcommand."""
    parser = sub.add_parser(
        "profile",
        help="measure latency, memory and boundary size at every cut point",
        description="Profile a model on this host with the runtime's execution path (LiteRT), "
        "then scale it to a device profile. Weights do not change latency, so nothing is trained.",
    )
    parser.add_argument("--model", default="small_cnn", help="zoo name or .keras file")
    parser.add_argument("--dataset", default="digits", help="dataset that fixes the input shape")
    parser.add_argument("--device", default="host", help="device profile to scale to (host)")
    parser.add_argument(
        "--max-cut-points", type=int, default=16, help="candidate cut points to profile"
    )
    parser.add_argument(
        "--method", choices=["litert", "tf-function"], default="litert", help="how latency is timed"
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed runs per cut point")
    parser.add_argument("--out", default="profile.json", help="output file (profile.json)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Profile, scale, write and print a short table."""
    from edgelesspart.model import datasets, zoo
    from edgelesspart.model.graph import functional_model
    from edgelesspart.profiling import devices, profiler

    data = datasets.load_dataset(args.dataset, limit=16)
    model, info = zoo.resolve_model(args.model, data.input_shape, data.num_classes)
    host = profiler.profile_model(
        functional_model(model),
        model_name=info["name"],
        max_cut_points=args.max_cut_points,
        method=args.method,
        repeats=args.repeats,
        show_progress=not args.quiet,
    )
    profile = devices.profile_for_device(host, devices.load_device(args.device))
    profile.save(args.out)
    print(f"{'cut point':<32} {'ms':>9} {'memory KiB':>11} {'boundary KiB':>13}")
    for cp in profile.cut_points:
        print(
            f"{cp.name:<32} {cp.latency_ms:>9.4f} {cp.memory_bytes / 1024:>11.1f} "
            f"{cp.boundary_bytes / 1024:>13.1f}"
        )
    print(f"wrote {args.out} ({profile.device}, {len(profile.cut_points)} cut points)")
    return 0
