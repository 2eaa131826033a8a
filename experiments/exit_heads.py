"""Exit-head comparison: head x depth -> accuracy, added latency and parameters.

For one trained backbone (a zoo model trained here, or a ``.keras`` file such as P1's ResNet50
backbone) the script picks ``--depths`` cut points spread evenly over the model's cut points,
attaches every built-in exit head (``edgelesspart.exits.heads.EXIT_HEADS``: paper, sdn, conv) at
every
one of them, and trains all of those exits together in one run (backbone frozen, the product's
distillation loss, so every head gets the same data, epochs and teacher). Then per head and
depth it reports:

* ``accuracy``: the exit's top-1 test accuracy if every test sample answered there;
* ``added_ms``: the head alone as a LiteRT model, batch 1, median of ``--repeats`` runs on this
  host: what the exit adds to a sample's latency at that depth;
* ``prefix_ms`` / ``depth``: the backbone up to the cut point on LiteRT, and its share of the
  full backbone's time (the compute a sample has spent when it reaches the exit);
* ``params``: the head's parameter count (bytes on the device = 4 x params in float32).

Writes ``results/exit_heads/<model>.json`` and ``.md`` (the Markdown table pasted into
``docs/exit_heads.md``) and records the host's CPU load.

Usage::

    .venv/bin/python experiments/exit_heads.py [--model small_cnn | resnet50 | PATH.keras]
        [--depths 4] [--epochs 8] [--limit N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # noqa: E402

OUT = benchlib.ROOT / "results" / "exit_heads"


def _args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small_cnn", help="zoo name or a trained .keras file")
    parser.add_argument("--depths", type=int, default=4, help="cut points to attach heads at")
    parser.add_argument("--epochs", type=int, default=8, help="backbone (zoo) and exit epochs")
    parser.add_argument("--limit", type=int, default=None, help="samples per split (quick runs)")
    parser.add_argument("--repeats", type=int, default=50, help="timed batch-1 runs per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    return parser.parse_args(argv)


def pick_cuts(model: Any, depths: int) -> list[str]:
    """``depths`` cut points spread evenly over the model's (excluding input and output)."""
    from edgelesspart.model.graph import find_cut_points

    names = [c.name for c in find_cut_points(model) if c.name not in ("input", "output")]
    if len(names) <= depths:
        return names
    picks = np.linspace(0, len(names) - 1, depths + 2)[1:-1]
    return [names[int(round(i))] for i in picks]


def litert_ms(keras_model: Any, shape: tuple[int, ...], repeats: int) -> float:
    """Median batch-1 LiteRT latency of a single-input Keras model (ms)."""
    from ai_edge_litert.interpreter import Interpreter

    from edgelesspart.model.litert import write_tflite

    with tempfile.TemporaryDirectory() as tmp:
        path = write_tflite(keras_model, Path(tmp) / "m.tflite")
        interpreter = Interpreter(model_path=str(path), num_threads=1)
    index = interpreter.get_input_details()[0]["index"]
    interpreter.resize_tensor_input(index, [1, *shape])
    interpreter.allocate_tensors()
    x = np.random.default_rng(0).random((1, *shape), dtype=np.float32)
    times = []
    for _ in range(repeats + 3):
        interpreter.set_tensor(index, x)
        start = time.perf_counter()
        interpreter.invoke()
        times.append((time.perf_counter() - start) * 1000.0)
    return float(statistics.median(times[3:]))


def head_cost(definition: Any, shape: tuple[int, ...], classes: int, repeats: int) -> dict:
    """Parameters and LiteRT latency of one head on a cut tensor of ``shape``."""
    from edgelesspart._lazy import keras
    from edgelesspart.exits import heads as exits

    k = keras()
    inputs = k.Input(shape)
    out = exits.attach_exit(exits.compile_exit_builder(definition), inputs, classes, "probe")
    model = k.Model(inputs, {"probs": out})
    return {"params": int(model.count_params()), "added_ms": litert_ms(model, shape, repeats)}


def backbone(args: argparse.Namespace, data: Any) -> tuple[Any, str]:
    """The trained backbone: a ``.keras`` file as it is, or a zoo model trained here."""
    from edgelesspart.model import training, zoo
    from edgelesspart.model.graph import functional_model

    model, info = zoo.resolve_model(args.model, data.input_shape, data.num_classes, seed=args.seed)
    model = functional_model(model)
    if info.get("source") == "zoo":
        config = training.TrainingConfig(epochs=args.epochs, seed=args.seed)
        training.train_backbone(model, data, config)
    return model, str(info["name"])


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Attach, train and measure every head at every depth; return the record."""
    from edgelesspart.exits import heads as exits
    from edgelesspart.exits.training import train_exits_distilled
    from edgelesspart.model import datasets, training
    from edgelesspart.model.graph import cut_tensor, extract

    data = datasets.load_dataset("digits", seed=args.seed, limit=args.limit)
    model, name = backbone(args, data)
    cuts = pick_cuts(model, args.depths)
    pooling = exits.classifier_pooling(model)
    definitions = {h: exits.load_exit_definition(pooling=pooling, head=h) for h in exits.EXIT_HEADS}
    outputs: dict[str, Any] = {}
    for head, definition in definitions.items():
        builder = exits.compile_exit_builder(definition)
        for i, cut in enumerate(cuts):
            outputs[f"{head}_{i}"] = exits.attach_exit(
                builder, cut_tensor(model, cut), data.num_classes, f"{head}_{i}"
            )
    config = training.TrainingConfig(epochs=args.epochs, exit_epochs=args.epochs, seed=args.seed)
    start = time.perf_counter()
    joint, result = train_exits_distilled(model, outputs, data, config, mode="distill")
    train_s = time.perf_counter() - start
    accuracy = training.classifier_accuracy(joint, data.x_test, data.y_test)
    full_ms = litert_ms(extract(model, "input", {"probs": model.outputs[0]}),
                        data.input_shape, args.repeats)  # fmt: skip
    rows = []
    for i, cut in enumerate(cuts):
        tensor = cut_tensor(model, cut)
        shape = tuple(int(d) for d in tensor.shape[1:])
        prefix = litert_ms(extract(model, "input", {"boundary": tensor}), data.input_shape,
                           args.repeats)  # fmt: skip
        for head, definition in definitions.items():
            cost = head_cost(definition, shape, data.num_classes, args.repeats)
            rows.append({
                "head": head, "cut": cut, "depth": round(prefix / full_ms, 3),
                "shape": list(shape), "accuracy": accuracy[f"{head}_{i}"],
                "prefix_ms": round(prefix, 3), **cost,
            })  # fmt: skip
    return {
        "model": name,
        "final_test_accuracy": accuracy["final"],
        "full_model_ms": round(full_ms, 3),
        "exit_training": result.to_dict(),
        "train_s": round(train_s, 1),
        "epochs": args.epochs,
        "samples": {"train": len(data.x_train), "test": len(data.x_test)},
        "rows": rows,
    }


def markdown(record: dict[str, Any]) -> str:
    """The comparison as a Markdown table (one row per depth, one column group per head)."""
    heads = list(dict.fromkeys(r["head"] for r in record["rows"]))
    lines = [
        f"{record['model']}: final classifier {100 * record['final_test_accuracy']:.1f} % test "
        f"accuracy, full model {record['full_model_ms']:.2f} ms (LiteRT, batch 1)",
        "",
        "| cut point (depth) | " + " | ".join(
            f"{h}: acc / +ms / params" for h in heads) + " |",
        "|---|" + "---|" * len(heads),
    ]  # fmt: skip
    for cut in dict.fromkeys(r["cut"] for r in record["rows"]):
        cells = {r["head"]: r for r in record["rows"] if r["cut"] == cut}
        first = next(iter(cells.values()))
        lines.append(
            f"| {cut} ({100 * first['depth']:.0f} %) | "
            + " | ".join(
                f"{100 * cells[h]['accuracy']:.1f} % / {cells[h]['added_ms']:.3f} / "
                f"{cells[h]['params']:,}"
                for h in heads
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, write JSON and Markdown, print the table."""
    args = _args(argv)
    load_before = benchlib.load_average()
    start = time.perf_counter()
    record = run(args)
    record.update({
        "seconds": round(time.perf_counter() - start, 1),
        "machine": benchlib.machine_info(),
        "load_average": {"before": load_before, "after": benchlib.load_average()},
        "command": benchlib.command_line(None if argv is None else [__file__, *argv]),
    })  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(record["model"]).stem
    (args.out / f"{stem}.json").write_text(json.dumps(benchlib.to_json_ready(record), indent=2))
    table = markdown(record)
    (args.out / f"{stem}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
