"""``edgelesspart build``: profile, plan, add exits, train and export a bundle."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgelesspart.commands import build_views
from edgelesspart.errors import ConfigError

# CLI flag -> BuildConfig field; every one of them may also come from --config YAML.
OPTIONS: dict[str, dict[str, Any]] = {
    "--constraint": {
        "choices": ["latency", "memory", "expected-latency", "expected-cost"],
        "help": "split rule (paper: latency or memory) or an objective mode",
    },
    "--model": {
        "help": "zoo name (small_cnn, resnet50, mobilenetv2, inceptionv3) or a .keras file"
    },
    "--dataset": {
        "help": "digits (default, offline), digits-hard (offline, MNIST-M style), cifar10, an "
        ".npz file or an image folder"
    },
    "--memory-fraction": {"type": float, "help": "memory rule: edge share of model memory (0.7)"},
    "--placement": {"choices": ["linear", "pareto"], "help": "exit spacing inside each part"},
    "--exits-per-part": {"help": "0..3, or EDGE,CLOUD such as 2,1 (default 2)"},
    "--split-exit": {
        "choices": ["yes", "no"],
        "help": "latency/memory rules: yes puts the edge part's last exit at the split (the "
        "edge's most accurate answer, saving the whole offload; digits-hard: 33 -> 54%% on the "
        "edge); no (default): the paper's k/(n+1) spacing",
    },
    "--exit-spec": {"help": "YAML/JSON list of Keras layers for the exit heads"},
    "--exit-template": {"help": "a Jinja2 template rendering build_exit(x, num_classes, name)"},
    "--exit-head": {
        "choices": ["sdn", "paper", "conv", "sdn-sep"],
        "help": "built-in exit head when no spec/template is given: sdn (default; pooled 4x4 "
        "grid + 1x1 bottleneck), sdn-sep (sdn after a strided separable conv at shallow cuts), "
        "paper (copy of the model's head, as in the paper), conv",
    },
    "--exit-training": {
        "choices": ["frozen", "distill", "joint"],
        "help": "frozen: labels only; distill (default): labels + the final classifier's soft "
        "targets; joint: distill and fine-tune the backbone within --max-final-drop",
    },
    "--max-final-drop": {
        "type": float,
        "help": "joint: most final-classifier validation accuracy loss in points (1); beyond "
        "it the frozen backbone is restored",
    },
    "--max-accuracy-drop": {
        "type": float,
        "help": "serving threshold: the fastest whose validation accuracy is within this many "
        "points of the final classifier's (1); stored in the manifest as the services' default",
    },
    "--min-exit-payoff": {
        "type": float,
        "help": "after export, drop exits whose expected saving (measured, at the serving "
        "threshold) is below this multiple of their measured cost, then re-export (1; 0 keeps all)",
    },
    "--val-fraction": {
        "type": float,
        "help": "validation share of the data (default 0.1, raised from train to the margin's "
        "minimum, 265 samples for 1 point, where the data allow)",
    },
    "--temperature-scaling": {
        "choices": ["yes", "no"],
        "help": "fit one temperature per exit on validation (yes, default); no keeps raw "
        "softmax confidences (as in the paper)",
    },
    "--temperatures-in-graph": {
        "choices": ["yes", "no"],
        "help": "build each fitted temperature into its exit head, so the served model outputs "
        "calibrated probabilities (yes, default); no leaves the scaling to the runtime",
    },
    "--confidence": {
        "choices": ["max-softmax", "entropy"],
        "help": "exit confidence: calibrated top-1 probability (default) or 1 - normalised "
        "entropy (BranchyNet)",
    },
    "--edge-device": {"help": "edge device profile (rpi4, jetson-orin-nano, host, or a JSON)"},
    "--cloud-device": {"help": "cloud device profile (gcf-2gb, lambda-2gb, host, or a JSON)"},
    "--link": {"help": "link for objective modes: wifi, lte, 5g, 3g, loopback or a JSON"},
    "--epochs": {
        "type": int,
        "help": "most backbone epochs (60; training stops earlier when validation loss stops "
        "improving, with the learning rate halved on plateaus); exits too unless --exit-epochs",
    },
    "--exit-epochs": {"type": int, "help": "exit-training epochs"},
    "--batch-size": {"type": int, "help": "training batch size"},
    "--train-backbone": {
        "choices": ["auto", "yes", "no"],
        "help": "auto: train zoo models, keep .keras weights",
    },
    "--weights": {
        "choices": ["none", "imagenet"],
        "help": "zoo model start: none (random, default) or imagenet (ResNet50, MobileNetV2: "
        "from the Keras cache, or downloaded; fine-tuned head first, then every layer)",
    },
    "--freeze-epochs": {
        "type": int,
        "help": "--weights imagenet: epochs training only the new head before unfreezing (5)",
    },
    "--seed": {"type": int, "help": "seed for data split, weights and training"},
    "--limit": {"type": int, "help": "at most N samples per split (quick runs)"},
    "--image-size": {"type": int, "help": "input side for digits/image folders (32)"},
    "--max-cut-points": {"type": int, "help": "candidate cut points to profile (16)"},
    "--profiling-kit": {
        "help": "also write a profiling kit (LiteRT slices at every candidate cut point) to DIR; "
        "run `edgelesspart profile-device DIR --out DEVICE.json` on the device, then build "
        "with --edge-device DEVICE.json"
    },
    "--profile-method": {"choices": ["litert", "tf-function"], "help": "how latency is timed"},
    "--search": {
        "choices": ["exhaustive", "placement"],
        "help": "expected-latency/expected-cost constraints: choose exits optimally "
        "(exhaustive, default) or by the --placement spacing rule",
    },
    "--codec": {
        "help": "boundary tensor codec: auto (default; the fewest bytes within "
        "--max-codec-loss) or raw, fp16, int8, lz4, zstd, zfp, fp16+lz4, int8+lz4, zfp+lz4, "
        "fp16+zstd, int8+zstd"
    },
    "--max-codec-loss": {
        "type": float,
        "help": "auto codec: most validation accuracy loss allowed, in percentage points (0.5)",
    },
    "--bottleneck": {
        "help": "learned bottleneck at the split: none (default), auto (train a few channel "
        "counts, use one only where its crossing of --link wins within --bottleneck-max-loss) "
        "or a channel count (e.g. 4)",
    },
    "--bottleneck-max-loss": {
        "type": float,
        "help": "bottleneck: most validation accuracy loss allowed against the unmodified "
        "model, in percentage points (1.0)",
    },
    "--bottleneck-epochs": {
        "type": int,
        "help": "bottleneck: most distillation epochs per candidate (30; early stopping)",
    },
    "--bottleneck-loss": {
        "choices": ["broken", "accuracy"],
        "help": "bottleneck: the loss --bottleneck-max-loss bounds: broken (default: samples "
        "the unmodified model gets right and the bottleneck wrong) or accuracy (net points lost)",
    },
    "--bottleneck-finetune": {
        "type": int,
        "help": "bottleneck: then fine-tune the decoder and the cloud part for at most this "
        "many epochs (0, default: the cloud part stays the unmodified model's); kept per "
        "candidate only where it lowers the validation loss against the unmodified model",
    },
    "--out": {"help": "bundle directory (default bundles/<model>-<constraint>-<placement>)"},
}


def register(sub: Any) -> None:
    """Add the ``build`` subcommand."""
    parser = sub.add_parser(
        "build",
        help="build a deployable bundle from a Keras model",
        description="Profile a Keras model, pick the split and exit points, render and train "
        "the exits, and export LiteRT/Keras segments plus a manifest. With only --constraint "
        "it builds the default: a small CNN on the bundled digits data.",
    )
    defaults = _config_defaults()
    for flag, kwargs in OPTIONS.items():
        # None keeps "not given" apart (flags > --config YAML > BuildConfig); help shows the last
        value = defaults.get(flag.lstrip("-").replace("-", "_"))
        if value is not None and "default" not in kwargs.get("help", "").lower():
            kwargs = {**kwargs, "help": f"{kwargs.get('help', '')} (default: {value})"}
        parser.add_argument(flag, default=None, **kwargs)
    parser.add_argument("--config", help="YAML file holding the same keys as the flags")
    parser.add_argument(
        "--pipeline", help="DEFER chain: one device per node, e.g. rpi4,rpi4,jetson-orin-nano"
    )
    parser.add_argument("--nodes", type=int, help="DEFER chain of N nodes of --edge-device")
    build_views.add_flags(parser)  # SlimEdge: --views/--devices/--deployment
    parser.add_argument("--overwrite", action="store_true", help="replace an existing bundle")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _config_defaults() -> dict[str, Any]:
    """BuildConfig's field defaults (what applies when neither a flag nor --config sets one)."""
    import dataclasses

    from edgelesspart.build import BuildConfig

    fields = dataclasses.fields(BuildConfig)
    return {f.name: f.default for f in fields if f.default is not dataclasses.MISSING}


def load_config_file(path: str) -> dict[str, Any]:
    """Read a YAML build config (data only, ``yaml.safe_load``)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}.") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"Config file {path} is not valid YAML: {exc}.") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"Config file {path} must hold a mapping of options, not {type(data).__name__}."
        )
    return data


def config_from_args(args: argparse.Namespace) -> Any:
    """Merge defaults < config file < flags into a ``BuildConfig``."""
    from edgelesspart.build import BuildConfig

    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    for flag in OPTIONS:
        value = getattr(args, flag[2:].replace("-", "_"))
        if value is not None:
            values[flag[2:]] = value
    if args.overwrite:
        values["overwrite"] = True
    return BuildConfig.from_mapping(values)


def run(args: argparse.Namespace) -> int:
    """Build the bundle and print the plan."""
    from edgelesspart.build import run_build
    from edgelesspart.export.summary import format_plan

    if build_views.wanted(args):
        return build_views.run_views(args)
    config = config_from_args(args)
    if args.pipeline or args.nodes:
        from edgelesspart.commands.serve_pipeline import run_pipeline_build

        return run_pipeline_build(args, config)
    result = run_build(config, show_progress=not args.quiet)
    print(format_plan(result.plan))  # with the device latencies evaluate and inspect reuse
    accuracy = result.manifest.training.get("accuracy", {}).get("test", {})
    if accuracy:
        print("test accuracy: " + ", ".join(f"{k}={v:.3f}" for k, v in accuracy.items()))
    timings = ", ".join(f"{k} {v:.1f}s" for k, v in result.seconds.items())
    print(f"bundle: {result.bundle} (id {result.manifest.bundle_id}); {timings}")
    from edgelesspart.evaluation.plan_truth import bundle_warnings  # plan truth (docs/demo.md)

    for warning in bundle_warnings(result.bundle, link=config.link):
        print(f"warning: {warning}")
    return 0
