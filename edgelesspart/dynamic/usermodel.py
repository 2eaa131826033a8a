"""Widths for the user's own model: prune-robust training and narrow segments per chain stage.

The chain CNN (:mod:`.model`) is built for widths; this module makes any flat Keras functional
model that :mod:`edgelesspart.pruning` can analyse (a zoo model, a ``.keras`` file) work at
several widths per stage of a chain:

* **Plan** (:func:`plan_widths`): the model is cut into ``N`` stages at cut points (given, or
  DEFER's equal-layer split). The pruning analysis finds the channel groups; a group whose
  channels reach a stage boundary is kept whole, so every width of a stage takes and hands on
  full-shape tensors and each stage's width is independent of its neighbours'. The other
  groups (the stage's *inner* channels) narrow with the stage. Each group's channels are
  ranked once by L1 norm; width ``w`` keeps the first ``ceil(w * C)`` of that ranking.
* **Training** (:func:`train_user_widths`): the sandwich rule with in-place distillation
  (Yu & Huang 2019), as for the chain CNN: each step runs full width (cross-entropy on labels),
  the narrowest width everywhere and random per-stage widths (KL to the full width's
  predictions). A width runs on a *masked* clone that shares the model's layers: the rows of
  every convolution/dense kernel that read a removed channel are multiplied by zero, which
  computes exactly what the rebuilt narrow model computes (the pruning tests prove the
  equivalence).
* **Export** (:func:`export_user_width_bundle`): per stage and width, the model is rebuilt with
  that stage's inner channels removed (:func:`edgelesspart.pruning.surgery.rebuild`: fewer
  filters, not masks), its BatchNorm statistics are re-estimated at that width, and the stage's
  segment is cut out, converted to LiteRT, timed and scored: the same ``dynamic.json`` width
  bundle as the chain CNN's, so ``serve-widths`` and ``serve-pipeline --slo-ms`` serve it.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart._lazy import keras as _keras
from edgelesspart.dynamic.widths import channels_at, check_widths
from edgelesspart.errors import ConfigError, TrainingError
from edgelesspart.progress import progress
from edgelesspart.pruning.groups import ChannelGraph, Flat, analyze, spaces_of
from edgelesspart.pruning.surgery import l1_scores, rebuild

INPUT = "input"


@dataclass(frozen=True)
class WidthPlan:
    """Where a user model is cut and which channel groups narrow with which stage.

    Attributes:
        cuts: the ``N - 1`` boundary cut points (layer names), in model order.
        stage_of: narrowable group name -> stage index.
        ranking: group name -> channel indices, most important first (L1 norm).
        channels: group name -> channels at full width.
    """

    cuts: tuple[str, ...]
    stage_of: dict[str, int]
    ranking: dict[str, tuple[int, ...]]
    channels: dict[str, int]

    @property
    def stages(self) -> int:
        """Number of stages."""
        return len(self.cuts) + 1

    def kept(self, graph: ChannelGraph, widths: Sequence[float]) -> dict[str, np.ndarray]:
        """Kept channel indices of every group when stage ``k`` runs at ``widths[k]``."""
        out = {}
        for g in graph.groups:
            k = self.stage_of.get(g.name)
            if k is None or widths[k] >= 1.0:
                out[g.name] = np.arange(g.channels)
            else:
                keep = channels_at(g.channels, widths[k])
                out[g.name] = np.sort(np.asarray(self.ranking[g.name][:keep]))
        return out

    def inner_channels(self, k: int, width: float) -> int:
        """Inner channels stage ``k`` keeps at ``width`` (summed over its groups)."""
        return sum(channels_at(c, width) for g, c in self.channels.items() if self.stage_of[g] == k)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (kept in the width bundle's training record)."""
        return {
            "cuts": list(self.cuts),
            "groups_per_stage": [
                sum(1 for s in self.stage_of.values() if s == k) for k in range(self.stages)
            ],
            "inner_channels": [self.inner_channels(k, 1.0) for k in range(self.stages)],
        }


def equal_layer_cuts(model: Any, stages: int) -> tuple[str, ...]:
    """DEFER's partition: the cut points nearest to ``k/N`` of the layers (distinct, ordered)."""
    from edgelesspart.model.graph import find_cut_points

    cps = [cp.name for cp in find_cut_points(model)]
    index = {layer.name: i for i, layer in enumerate(model.layers)}
    if stages < 1 or len(cps) < stages - 1:
        raise ConfigError(
            f"Model {model.name!r} has {len(cps)} cut points; it cannot be cut into {stages} "
            "stages. Use fewer stages."
        )
    cuts: list[int] = []
    for k in range(1, stages):
        low = cuts[-1] + 1 if cuts else 0
        high = len(cps) - (stages - k)
        target = len(model.layers) * k / stages
        cuts.append(min(range(low, high + 1), key=lambda i: (abs(index[cps[i]] - target), i)))
    return tuple(cps[i] for i in cuts)


def plan_widths(
    model: Any, stages: int = 4, cuts: Sequence[str] | None = None
) -> tuple[ChannelGraph, WidthPlan]:
    """Analyse ``model``, cut it into stages and assign every inner channel group to its stage.

    Raises:
        PruningError: the model cannot be analysed (the message names the layer).
        ConfigError: a cut that is not a cut point, out of order, or no inner channels at all.
    """
    from edgelesspart.model.graph import cut_tensor

    cuts = tuple(cuts) if cuts else equal_layer_cuts(model, stages)
    graph = analyze(model)
    rank = {name: i for i, name in enumerate(graph.order)}
    for c in cuts:
        cut_tensor(model, c)  # GraphError when it is not a cut point
    positions = [rank[c] for c in cuts]
    if positions != sorted(set(positions)):
        raise ConfigError(f"Cut points {list(cuts)} must be distinct and in model order.")
    boundary = {graph.space_group[s] for c in cuts for s in spaces_of(graph.outputs[c])}
    scores = l1_scores(model, graph)
    stage_of, ranking, channels = {}, {}, {}
    for index, g in enumerate(graph.groups):
        if index in boundary:
            continue
        stage_of[g.name] = sum(1 for p in positions if rank[g.name] > p)
        ranking[g.name] = tuple(int(i) for i in np.argsort(-scores[g.name], kind="stable"))
        channels[g.name] = g.channels
    if not stage_of:
        raise ConfigError(
            f"Model {model.name!r} has no channels inside its stages that can narrow (every "
            "prunable group reaches a stage boundary); choose other cut points."
        )
    return graph, WidthPlan(cuts, stage_of, ranking, channels)


class _Masks:
    """One mask variable per narrowable group (a plain holder: Keras does not track it)."""

    def __init__(self, plan: WidthPlan) -> None:
        keras = _keras()
        self.names = sorted(plan.stage_of, key=list(plan.stage_of).index)
        self.vars = {
            g: keras.Variable(np.ones(plan.channels[g], np.float32), trainable=False, name=f"m_{g}")
            for g in self.names
        }


def _mask_layer_class() -> Any:
    keras = _keras()

    class GroupMask(keras.layers.Layer):
        """Multiplies a tensor's channels by the masks of the groups they belong to."""

        def __init__(self, parts: list, positions: int, holder: _Masks, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.parts, self.positions, self.holder = parts, positions, holder

        def call(self, x: Any) -> Any:
            ops = keras.ops
            vec = ops.concatenate(
                [self.holder.vars[g] if g else ops.ones((n,), "float32") for g, n in self.parts]
            )
            if self.positions > 1:
                vec = ops.tile(vec, [self.positions])
            return x * ops.cast(vec, x.dtype)

    return GroupMask


def masked_model(model: Any, graph: ChannelGraph, plan: WidthPlan) -> tuple[Any, _Masks]:
    """A clone of ``model`` sharing its layers, with every narrowable channel masked where read.

    Returns the clone and the mask holder; set a mask with ``holder.vars[group].assign(...)``.
    """
    keras = _keras()
    holder = _Masks(plan)
    mask_cls = _mask_layer_class()
    group_names = [g.name for g in graph.groups]

    def parts_of(desc: Any) -> tuple[list, int]:
        segments = desc.segments if isinstance(desc, Flat) else desc
        parts = []
        for s, n in segments:
            g = graph.space_group[s]
            name = group_names[g] if g >= 0 else None
            parts.append((name if name in plan.stage_of else None, n))
        return parts, desc.positions if isinstance(desc, Flat) else 1

    def call(layer: Any, *args: Any, **kwargs: Any) -> Any:
        if graph.kinds.get(layer.name) == "producer":
            parts, positions = parts_of(graph.inputs[layer.name][0])
            if any(g for g, _ in parts):
                args = (mask_cls(parts, positions, holder, name=f"mask_{layer.name}")(args[0]),)
        return layer(*args, **kwargs)

    clone = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    return clone, holder


@dataclass(frozen=True)
class UserWidthConfig:
    """Hyper-parameters of sandwich-rule width training of a user model."""

    epochs: int = 3
    batch_size: int = 64
    learning_rate: float = 1e-3
    widths: tuple[float, ...] = (1.0, 0.75, 0.5, 0.25)
    random_passes: int = 1
    uniform_pass: bool = True
    pretrain_epochs: int = 0
    pretrain_learning_rate: float = 3e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if (
            self.epochs < 0
            or self.batch_size < 1
            or self.random_passes < 0
            or self.pretrain_epochs < 0
        ):
            raise TrainingError(
                f"epochs >= 0, pretrain_epochs >= 0, batch_size >= 1 and random_passes >= 0 are "
                f"required, got {self.epochs}, {self.pretrain_epochs}, {self.batch_size}, "
                f"{self.random_passes}."
            )
        object.__setattr__(self, "widths", check_widths(self.widths))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "strategy": "sandwich",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "learning_rate": self.learning_rate,
            "widths": list(self.widths),
            "random_passes": self.random_passes,
            "uniform_pass": self.uniform_pass,
            "pretrain_epochs": self.pretrain_epochs,
            "pretrain_learning_rate": self.pretrain_learning_rate,
            "seed": self.seed,
        }


def _pass_masks(
    plan: WidthPlan, holder: _Masks, configs: list[tuple[float, ...]]
) -> list[np.ndarray]:
    """Per group, a ``(passes, C)`` stack of masks for the width configurations."""
    out = []
    for g in holder.names:
        rows = []
        for cfg in configs:
            m = np.zeros(plan.channels[g], np.float32)
            keep = channels_at(plan.channels[g], cfg[plan.stage_of[g]])
            m[list(plan.ranking[g][:keep])] = 1.0
            rows.append(m)
        out.append(np.stack(rows))
    return out


def _make_step(clone: Any, holder: _Masks, optimizer: Any, passes: int) -> Any:
    from edgelesspart.dynamic.training import make_width_step

    mask_vars = [holder.vars[g] for g in holder.names]

    def forward(x: Any, masks: list[Any]) -> Any:
        for var, m in zip(mask_vars, masks):
            var.assign(m)
        return clone(x, training=True)

    return make_width_step(forward, clone.trainable_variables, optimizer, passes, distill=True)


def sandwich_configs(
    config: UserWidthConfig, stages: int, rng: np.random.Generator
) -> list[tuple[float, ...]]:
    """One step's width configurations: full (the teacher), narrowest everywhere, with
    ``uniform_pass`` one random intermediate width everywhere, then ``random_passes`` random
    widths per stage."""
    full = tuple(1.0 for _ in range(stages))
    narrowest = tuple(config.widths[-1] for _ in range(stages))
    middle = list(config.widths[1:-1])
    uniform = [(float(rng.choice(middle)),) * stages] if config.uniform_pass and middle else []
    randoms = [
        tuple(float(rng.choice(config.widths)) for _ in range(stages))
        for _ in range(config.random_passes)
    ]
    return [full, narrowest, *uniform, *randoms]


def _run_epochs(
    clone: Any,
    holder: _Masks,
    plan: WidthPlan,
    data: Any,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    configs: Any,
    rng: np.random.Generator,
    label: str,
) -> float:
    """``epochs`` epochs of steps over ``configs()``'s width configurations; the last mean loss."""
    keras = _keras()
    passes = len(configs())
    steps = max(1, int(np.ceil(len(data.x_train) / batch_size)))
    schedule = keras.optimizers.schedules.CosineDecay(
        learning_rate, decay_steps=max(1, epochs * steps), alpha=0.05
    )
    step = _make_step(clone, holder, keras.optimizers.Adam(schedule), passes)
    x_all = np.asarray(data.x_train, dtype=np.float32)
    y_all = np.asarray(data.y_train, dtype=np.int64)
    loss = float("nan")
    for _epoch in progress(range(epochs), epochs, label):
        order = rng.permutation(len(x_all))
        losses = []
        for s in range(steps):
            idx = order[s * batch_size : (s + 1) * batch_size]
            masks = _pass_masks(plan, holder, configs())
            losses.append(float(step(x_all[idx], y_all[idx], masks)))
        loss = float(np.mean(losses))
    return loss


def train_user_widths(
    model: Any, graph: ChannelGraph, plan: WidthPlan, data: Any, config: UserWidthConfig
) -> dict[str, Any]:
    """Train ``model`` in place so every stage works at every width of ``config``.

    With ``pretrain_epochs``, the model first trains at full width only (cross-entropy), then
    the sandwich rule fine-tunes it for ``epochs`` (the teacher of the in-place distillation is
    then a trained network from the first step, not a random one).

    Returns a JSON-ready record: the config, the plan, wall seconds per phase and the last mean
    loss.
    """
    keras = _keras()
    keras.utils.set_random_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    clone, holder = masked_model(model, graph, plan)
    full = (1.0,) * plan.stages
    start = time.perf_counter()
    pre_loss = None
    if config.pretrain_epochs:
        pre_loss = _run_epochs(
            clone, holder, plan, data, epochs=config.pretrain_epochs,
            learning_rate=config.pretrain_learning_rate, batch_size=config.batch_size,
            configs=lambda: [full], rng=rng, label="full-width training (epochs)",
        )  # fmt: skip
    pretrain_s = time.perf_counter() - start
    loss = float("nan")
    if config.epochs:
        loss = _run_epochs(
            clone, holder, plan, data, epochs=config.epochs,
            learning_rate=config.learning_rate, batch_size=config.batch_size,
            configs=lambda: sandwich_configs(config, plan.stages, rng), rng=rng,
            label="width training (epochs)",
        )  # fmt: skip
    for var in holder.vars.values():  # leave the shared layers as the full-width model
        var.assign(np.ones(var.shape, np.float32))
    return {
        **config.to_dict(),
        "plan": plan.to_dict(),
        "epochs_run": config.epochs,
        "pretrain_seconds": round(pretrain_s, 2),
        "seconds": round(time.perf_counter() - start, 2),
        "pretrain_final_loss": None if pre_loss is None else round(pre_loss, 5),
        "final_loss": round(loss, 5),
    }


def narrow_model(model: Any, graph: ChannelGraph, plan: WidthPlan, widths: Sequence[float]) -> Any:
    """The real narrow model with stage ``k`` at ``widths[k]`` (fewer filters; not settled)."""
    return rebuild(model, graph, plan.kept(graph, widths))


def stage_segment(model: Any, plan: WidthPlan, k: int, name: str) -> Any:
    """Stage ``k`` of ``model`` (full or narrow) as a segment: ``boundary`` or ``probs`` out."""
    from edgelesspart.model.graph import cut_tensor, extract

    start = INPUT if k == 0 else plan.cuts[k - 1]
    if k == plan.stages - 1:
        return extract(model, start, {"probs": model.outputs[0]}, name=name)
    return extract(model, start, {"boundary": cut_tensor(model, plan.cuts[k])}, name=name)


def layer_span(plan: WidthPlan, k: int) -> tuple[str, str]:
    """(start, end) cut names of stage ``k`` (``input``/``predictions`` at the ends)."""
    start = INPUT if k == 0 else plan.cuts[k - 1]
    end = "output" if k == plan.stages - 1 else plan.cuts[k]
    return start, end


def _segment_spec(segment: Any, plan: WidthPlan, k: int, w: float, filename: str) -> Any:
    from edgelesspart.dynamic.widths import width_key
    from edgelesspart.runtime.manifest import FINAL_EXIT, SegmentSpec, TensorSpec

    last = k == plan.stages - 1
    start, end = layer_span(plan, k)
    return SegmentSpec(
        name=f"stage{k}_w{width_key(w)}",
        stage=f"stage{k}",
        start=start,
        end=end,
        input=TensorSpec(tuple(int(d) for d in segment.inputs[0].shape[1:])),
        exit=FINAL_EXIT if last else None,
        boundary=None if last else TensorSpec(tuple(int(d) for d in segment.outputs[0].shape[1:])),
        files={"tflite": filename},
    )


def export_user_width_bundle(
    model: Any,
    graph: ChannelGraph,
    plan: WidthPlan,
    data: Any,
    out_dir: str | Path,
    *,
    widths: Sequence[float],
    training: Mapping[str, Any] | None = None,
    latency_repeats: int = 30,
) -> Any:
    """Write the width bundle (``dynamic.json`` + one LiteRT segment per stage x width).

    Every narrow segment is cut from the model rebuilt with only its stage narrowed, after its
    BatchNorm statistics were re-estimated on training images at that width (US-Nets' BN
    calibration); accuracies come from the exported LiteRT files. ``model``'s own BatchNorm
    statistics are settled at full width first (it is modified in place).

    Returns:
        The :class:`~edgelesspart.dynamic.widths.DynamicManifest` written.
    """
    from edgelesspart.dynamic.export import _manifest, measure_latency_ms, score_widths
    from edgelesspart.dynamic.widths import sha256_file, width_key, write_manifest
    from edgelesspart.errors import BundleError
    from edgelesspart.model.litert import write_tflite
    from edgelesspart.model.training import SETTLE_IMAGES, settle_batchnorm
    from edgelesspart.runtime.segments import SegmentRunner

    widths = check_widths(widths)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not len(data.x_test):
        raise BundleError("The dataset has no test images to score the widths with.")
    calib = np.asarray(data.x_train[:SETTLE_IMAGES], dtype=np.float32)
    settle_batchnorm(model, calib)
    rows: list[list[tuple]] = [[] for _ in range(plan.stages)]
    for w in progress(widths, len(widths), "exporting widths"):
        for k in range(plan.stages):
            if w < 1.0 and not any(s == k for s in plan.stage_of.values()):
                source = model  # a stage with no inner channels has one width: its full one
            elif w < 1.0:
                config = [1.0] * plan.stages
                config[k] = w
                source = narrow_model(model, graph, plan, config)
                settle_batchnorm(source, calib)
            else:
                source = model
            filename = f"stage{k}_w{width_key(w)}.tflite"
            segment = stage_segment(source, plan, k, name=f"stage{k}_w{width_key(w)}")
            write_tflite(segment, out / filename)
            spec = _segment_spec(segment, plan, k, w, filename)
            runner = SegmentRunner(out / filename, spec, pool_size=1)
            sample = calib[:1] if k == 0 else _boundary(model, plan, k, calib[:1])
            latency = measure_latency_ms(runner, sample, latency_repeats)
            channels = plan.inner_channels(k, w)
            rows[k].append((w, channels, spec, sha256_file(out / filename), latency))
    strategy = str((training or {}).get("strategy", "sandwich"))
    draft = _manifest(strategy, widths, rows, {}, {}, data, dict(training or {}))
    single, uniform = score_widths(out, draft, data.x_test, data.y_test)
    manifest = _manifest(strategy, widths, rows, single, uniform, data, dict(training or {}))
    write_manifest(manifest, out)
    return manifest


def _boundary(model: Any, plan: WidthPlan, k: int, x: np.ndarray) -> np.ndarray:
    """The full-width input of stage ``k`` for images ``x``."""
    from edgelesspart.model.graph import cut_tensor, extract

    head = extract(model, INPUT, {"boundary": cut_tensor(model, plan.cuts[k - 1])}, name="head")
    return np.asarray(head(x, training=False)["boundary"], dtype=np.float32)
