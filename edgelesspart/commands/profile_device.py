"""``edgelesspart profile-kit`` and ``profile-device``: measure a model on the device itself.

``profile-kit`` (build install, TensorFlow) writes the LiteRT slices of a model at every
candidate cut point; ``build --profiling-kit DIR`` writes the same kit as part of a build.
``profile-device`` (lean install, no TensorFlow) runs a kit on the machine it is on and writes
``DEVICE.json``; ``build --edge-device DEVICE.json`` plans with those latencies, no factor.
"""

from __future__ import annotations

import argparse
from typing import Any


def register(sub: Any) -> None:
    """Add the ``profile-kit`` and ``profile-device`` subcommands."""
    kit = sub.add_parser(
        "profile-kit",
        help="write a profiling kit (LiteRT slices at every candidate cut point) for a model",
        description="Convert the stretch between every two candidate cut points to LiteRT and "
        "write them with kit.json. Copy the directory to the device and run profile-device "
        "there. Weights do not change latency, so nothing is trained.",
    )
    kit.add_argument("--model", default="small_cnn", help="zoo name or .keras file")
    kit.add_argument("--dataset", default="digits", help="dataset that fixes the input shape")
    kit.add_argument(
        "--image-size", type=int, default=None, help="input side (default: 32, as in build)"
    )
    kit.add_argument("--max-cut-points", type=int, default=16, help="as in build (16)")
    kit.add_argument("--out", required=True, help="kit directory to write")
    kit.add_argument("--overwrite", action="store_true", help="replace an existing kit")
    kit.set_defaults(func=run_kit)

    device = sub.add_parser(
        "profile-device",
        help="run a profiling kit on this machine and write DEVICE.json (no TensorFlow)",
        description="Time every cut point of the kit with LiteRT (median and p95 of the "
        "cumulative latency), record resident memory and the machine's identity (CPU, cores, "
        "memory, LiteRT version, delegates). Pass the file to build --edge-device.",
    )
    device.add_argument("kit", help="profiling kit directory (holding kit.json)")
    device.add_argument("--out", default="DEVICE.json", help="output file (DEVICE.json)")
    device.add_argument(
        "--name",
        default=None,
        help="device name recorded in DEVICE.json (default: <board or machine>-measured, "
        "e.g. raspberry-pi-4-model-b-measured); a plan names the device by the DEVICE.json "
        "path it was given",
    )
    device.add_argument("--repeats", type=int, default=30, help="timed chain runs (30)")
    device.add_argument("--warmup", type=int, default=3, help="untimed chain runs first (3)")
    device.add_argument("--threads", type=int, default=1, help="LiteRT threads (1, as served)")
    device.add_argument(
        "--memory-fraction",
        type=float,
        default=0.5,
        help="share of this machine's memory a model part may plan with (0.5)",
    )
    device.set_defaults(func=run_device)


def run_kit(args: argparse.Namespace) -> int:
    """Build the model (untrained) and write its kit."""
    from edgelesspart.model import datasets, zoo
    from edgelesspart.profiling.kit import write_kit

    data = datasets.load_dataset(args.dataset, limit=16, image_size=args.image_size)
    model, info = zoo.resolve_model(args.model, data.input_shape, data.num_classes)
    kit = write_kit(
        model,
        args.out,
        model_name=info["name"],
        max_cut_points=args.max_cut_points,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {args.out}: {len(kit.cut_points)} slices of {kit.model} (kit {kit.kit_id}); "
        f"on the device: edgelesspart profile-device {args.out} --out DEVICE.json"
    )
    return 0


def run_device(args: argparse.Namespace) -> int:
    """Measure the kit here and write DEVICE.json."""
    from edgelesspart.runtime.device_profiler import pretty_summary, profile_kit

    profile = profile_kit(
        args.kit,
        name=args.name,
        warmup=args.warmup,
        repeats=args.repeats,
        num_threads=args.threads,
        memory_fraction=args.memory_fraction,
    )
    path = profile.save(args.out)
    print(pretty_summary(profile))
    print(f"wrote {path}; plan with it: edgelesspart build --edge-device {path}")
    return 0
