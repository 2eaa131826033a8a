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
    config = training.TrainingConfig(epochs=epochs, exit_epochs=6, batch_size=32, seed=seed)
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
    export.export_bundle(request, out, probe=np.asarray(data.x_val[:4]))
    return out
