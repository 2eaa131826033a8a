"""Build a tiny real bundle for tests: a small CNN on digits, exits on both sides of the split.

Used by the session-scoped ``tiny_bundle`` fixture. It goes through the real pieces (dataset,
graph, exits, training, LiteRT export) but with a hand-written plan, so it needs no profiling.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

EDGE_EXIT_CUT = "pool1"
SPLIT_CUT = "block2_relu"
CLOUD_EXIT_CUT = "block3_relu"


def tiny_model(keras, input_shape=(32, 32, 3), num_classes=10):
    """A ~10k-parameter CNN with a residual branch; the cut points above are on its trunk."""
    inputs = keras.Input(input_shape, name="image")
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1")(inputs)
    x = keras.layers.MaxPooling2D(2, name="pool1")(x)
    a = keras.layers.Conv2D(16, 3, padding="same", name="block2_a")(x)
    b = keras.layers.Conv2D(16, 1, padding="same", name="block2_b")(x)
    x = keras.layers.Add(name="block2_add")([a, b])
    x = keras.layers.ReLU(name="block2_relu")(x)
    x = keras.layers.MaxPooling2D(2, name="pool2")(x)
    x = keras.layers.Conv2D(24, 3, padding="same", name="block3_conv")(x)
    x = keras.layers.ReLU(name="block3_relu")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name="tiny_cnn")


def build_tiny_bundle(
    out: Path, *, epochs: int = 8, seed: int = 0, bottleneck: int | None = None
) -> Path:
    """Train the tiny model briefly and export it as a bundle at ``out``.

    ``bottleneck``: also train a learned bottleneck of that many channels (stride 2) at the
    split by distillation and export it inside the edge and cloud segments (codec int8).
    """
    from edgelesspart.export import bundle as export

    request, data = tiny_export_request(epochs=epochs, seed=seed, bottleneck=bottleneck)
    export.export_bundle(request, out, probe=np.asarray(data.x_val[:4]))
    return out


def tiny_export_request(
    *, epochs: int = 8, seed: int = 0, bottleneck: int | None = None, exit_epochs: int = 6
):
    """The trained tiny model's ``ExportRequest`` and its data (see :func:`build_tiny_bundle`)."""
    from edgelesspart._lazy import keras
    from edgelesspart.exits import heads as exits
    from edgelesspart.export import bundle as export
    from edgelesspart.model import training
    from edgelesspart.model.datasets import load_dataset
    from edgelesspart.model.graph import cut_tensor, find_cut_points
    from edgelesspart.runtime.plan import Plan, Stage

    k = keras()
    k.utils.set_random_seed(seed)
    data = load_dataset("digits", seed=seed)
    model = tiny_model(k, data.input_shape, data.num_classes)
    config = training.TrainingConfig(
        epochs=epochs, exit_epochs=exit_epochs, batch_size=32, seed=seed
    )
    training.train_backbone(model, data, config)
    cuts = [c.name for c in find_cut_points(model)]
    plan = Plan(
        constraint="memory",
        placement="linear",
        stages=(
            Stage("edge", "host", "input", SPLIT_CUT, (EDGE_EXIT_CUT, SPLIT_CUT), 1.0, 10_000),
            Stage("cloud", "host", SPLIT_CUT, "output", (CLOUD_EXIT_CUT,), 1.0, 20_000),
        ),
        cut_points=tuple(cuts),
        boundary_bytes=(16 * 16 * 16 * 4,),
        parameters={"fixture": True},
        rationale="hand-written plan for tests",
    )
    definition = exits.load_exit_definition(head="paper")  # the paper head: a mix of exits
    builder = exits.compile_exit_builder(definition)
    exit_cuts = {"exit_1": EDGE_EXIT_CUT, "exit_2": SPLIT_CUT, "exit_3": CLOUD_EXIT_CUT}
    exit_tensors = {
        name: exits.attach_exit(builder, cut_tensor(model, cut), data.num_classes, name)
        for name, cut in exit_cuts.items()
    }
    joint, _ = training.train_exits(model, exit_tensors, data, config)
    accuracy = {
        "val": training.classifier_accuracy(joint, data.x_val, data.y_val),
        "test": training.classifier_accuracy(joint, data.x_test, data.y_test),
    }
    neck, codec = None, {"name": "raw"}
    if bottleneck is not None:
        from edgelesspart.model.bottleneck import BottleneckShape, train_bottleneck
        from edgelesspart.model.graph import split_model

        head, tail = split_model(model, SPLIT_CUT)
        neck = train_bottleneck(head, tail, SPLIT_CUT, BottleneckShape(bottleneck, 2),
                                data.x_train, data.x_val, epochs=epochs, seed=seed)  # fmt: skip
        code_raw = 4 * int(np.prod(neck.code_shape))
        codec = {"name": "int8", "size_ratio": (code_raw / 4 + 40) / code_raw,
                 "selected_by": "bottleneck-fixed", "bottleneck": neck.describe()}  # fmt: skip
    request = export.ExportRequest(
        backbone=model,
        exit_tensors=exit_tensors,
        exit_cuts=exit_cuts,
        plan=plan,
        classes=data.classes,
        preprocessing=data.preprocessing,
        exit_code=definition.code,
        exit_source=f"{definition.kind}:{definition.origin}",
        model_info={"name": "tiny_cnn", "source": "test", "params": int(model.count_params())},
        training={"accuracy": accuracy},
        extra={"dataset": {"spec": "digits", "seed": seed, "image_size": None, "limit": None}},
        codec=codec,
        bottleneck=neck,
    )
    return request, data


def export_tiny_chain(model, plan, out: Path, probe: np.ndarray, **extra) -> Path:
    """``export_chain`` of the tiny CNN (32x32x3 inputs scaled by 1/255, ten digit classes)."""
    from edgelesspart.pipeline.export import export_chain

    export_chain(
        model,
        plan,
        out,
        probe=probe,
        classes=tuple(str(i) for i in range(10)),
        preprocessing={"height": 32, "width": 32, "channels": 3, "scale": 1 / 255, "offset": 0.0},
        model_info={"name": "tiny_cnn", "source": "test"},
        **extra,
    )
    return out


def build_tiny_width_bundle(out: Path, widths: tuple[float, ...] = (1.0, 0.5)) -> Path:
    """A tiny 2-stage width bundle (chain CNN, 8/16 channels, 16x16 digits, one sandwich epoch;
    ~15 s), as ``train-widths`` writes one."""
    from edgelesspart.dynamic.export import export_width_bundle
    from edgelesspart.dynamic.model import build_chain_cnn
    from edgelesspart.dynamic.training import WidthTrainingConfig, train_width_robust
    from edgelesspart.model.datasets import load_dataset

    data = load_dataset("digits", image_size=16, limit=240)
    model = build_chain_cnn(data.input_shape, data.num_classes, (8, 16), seed=0)
    config = WidthTrainingConfig(strategy="sandwich", epochs=1, widths=widths, random_passes=1)
    record = train_width_robust(model, data, config)
    export_width_bundle(
        model, data, out, strategy="sandwich", widths=widths, training=record, latency_repeats=5
    )
    return out


def build_tiny_views(out: Path, views: int = 2, features: int = 8) -> Path:
    """A tiny SlimEdge deployment: 2 views of the digits, untrained backbones (4-8 filters),
    ratios 0 and 0.5, synthetic curves, exported through the real path (LiteRT checked)."""
    import keras

    from edgelesspart.pruning import prune_model
    from edgelesspart.slimedge import deploy, optimize
    from edgelesspart.slimedge.curves import CurveModel, ViewCurves
    from edgelesspart.slimedge.model import MultiViewModel, build_backbone, build_fusion
    from edgelesspart.slimedge.views import digits_views

    keras.utils.set_random_seed(0)
    data = digits_views(views, limit=60)
    backbones = [
        build_backbone(data.view_shape, widths=(4, 8), features=features, name=f"bb{v}")
        for v in range(views)
    ]
    model = MultiViewModel(backbones, build_fusion(views, data.num_classes, features=features))
    pruned = {(v, r): bb if r == 0 else prune_model(bb, r).model
              for v, bb in enumerate(backbones) for r in (0.0, 0.5)}  # fmt: skip
    curves = ViewCurves(
        ratios=(0.0, 0.5), accuracy=((0.9, 0.89), (0.9, 0.85)), latency_ms=(1.0, 0.4),
        params=(1e3, 3e2), memory_bytes=(1e5, 4e4), fusion_latency_ms=0.01, base_accuracy=0.9,
        importance=(0.02, 0.05), subsets={"11": 0.9, "10": 0.88, "01": 0.85},
    )  # fmt: skip
    build = deploy.MultiViewBuild(model, data, curves, pruned)
    slots = [optimize.DeviceSlot("rpi4", 4.0, 1e9), optimize.DeviceSlot("jetson-nano", 0.5, 1e9)]
    cm = CurveModel(curves)
    chosen = optimize.nsga2_plan(cm, slots, optimize.Bound(accuracy_floor=0.88))
    failures = optimize.failure_plans(cm, slots)
    deploy.export_deployment(out, build, slots, chosen, baselines={}, failures=failures,
                             max_accuracy_drop=0.02)  # fmt: skip
    return out


def start_local_ray(num_cpus: int = 2, tries: int = 3) -> None:
    """A private local Ray for one test module (``address="local"``: never a cluster someone
    started with ``ray start`` on the host). Ray gives its raylet a fixed 30 s to start; on a
    loaded shared host that can pass, so a start that timed out is tried again."""
    import ray

    for attempt in range(tries):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                     log_to_driver=False)  # fmt: skip
            return
        except Exception as exc:  # noqa: BLE001 - Ray raises a bare Exception for the timeout
            ray.shutdown()
            if "timed out during startup" not in str(exc) or attempt == tries - 1:
                raise
