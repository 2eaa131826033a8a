"""The build pipeline: dataset + model + constraint + exit definition -> bundle.

``run_build(BuildConfig(...))`` performs, in order: load data, resolve the model, train the
backbone when it is untrained, profile it on this host, scale the profile to the edge and cloud
devices, plan the split and exits, render and attach the exit heads, train them with the
backbone frozen, and export the bundle. Every step is a function of its own module; this one
only wires them together and records what happened.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgelesspart.errors import ConfigError
from edgelesspart.runtime.manifest import Manifest
from edgelesspart.runtime.plan import Plan

CONSTRAINTS = ("latency", "memory", "expected-latency", "expected-cost")
PLACEMENTS = ("linear", "pareto")
#: How the objective modes choose exits: optimally (dynamic programming over exit subsets) or by
#: the linear/Pareto spacing rule. Ignored by the latency and memory rules.
SEARCHES = ("exhaustive", "placement")
#: Validation samples the codec table is measured on (all of them up to this many).
CODEC_MAX_SAMPLES = 1000
#: Most distillation epochs per bottleneck candidate unless --bottleneck-epochs says (early
#: stopping on the validation loss ends most runs sooner).
BOTTLENECK_EPOCHS = 30
#: Validation samples whose boundary bytes per codec are recorded at every profiled cut point.
PROFILE_SAMPLES = 8


@dataclass(frozen=True)
class BuildConfig:
    """Every build option; the CLI flags and the ``--config`` YAML keys mirror these names."""

    constraint: str = "memory"
    model: str = "small_cnn"
    dataset: str = "digits"
    memory_fraction: float = 0.7
    placement: str = "linear"
    search: str = "exhaustive"
    exits_per_part: tuple[int, int] = (2, 2)
    split_exit: str = "no"
    exit_spec: str | None = None
    exit_template: str | None = None
    exit_head: str = "sdn"
    exit_training: str = "distill"
    max_final_drop: float = 1.0
    max_accuracy_drop: float = 1.0
    min_exit_payoff: float = 1.0
    val_fraction: float | None = None
    confidence: str = "max-softmax"
    temperature_scaling: str = "yes"
    temperatures_in_graph: str = "yes"
    edge_device: str = "rpi4"
    cloud_device: str = "gcf-2gb"
    link: str = "wifi"
    epochs: int = 60
    exit_epochs: int | None = None
    batch_size: int = 64
    train_backbone: str = "auto"
    weights: str = "none"
    freeze_epochs: int = 5
    seed: int = 0
    limit: int | None = None
    image_size: int | None = None
    max_cut_points: int = 16
    profiling_kit: str | None = None
    profile_method: str = "litert"
    codec: str = "auto"
    max_codec_loss: float = 0.5
    bottleneck: str = "none"
    bottleneck_max_loss: float = 1.0
    bottleneck_epochs: int | None = None
    bottleneck_finetune: int = 0
    bottleneck_loss: str = "broken"
    out: str | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.constraint not in CONSTRAINTS:
            raise ConfigError(
                f"Unknown constraint {self.constraint!r}; choose one of {CONSTRAINTS}."
            )
        if self.placement not in PLACEMENTS:
            raise ConfigError(f"Unknown placement {self.placement!r}; choose one of {PLACEMENTS}.")
        if self.search not in SEARCHES:
            raise ConfigError(
                f"Unknown search {self.search!r}; choose exhaustive (optimal exits for the "
                "expected-latency/expected-cost constraints) or placement (the spacing rule)."
            )
        if not 0.0 < self.memory_fraction < 1.0:
            raise ConfigError(f"memory_fraction must be in (0, 1), got {self.memory_fraction}.")
        if len(self.exits_per_part) != 2 or not all(0 <= n <= 3 for n in self.exits_per_part):
            raise ConfigError(
                f"exits_per_part must be one or two integers in 0..3 (edge, cloud), got "
                f"{self.exits_per_part!r}; the paper caps exits at 3 per part."
            )
        if self.exit_spec and self.exit_template:
            raise ConfigError("Give either exit_spec or exit_template, not both.")
        _check_exit_options(self)
        if self.train_backbone not in ("auto", "yes", "no"):
            raise ConfigError(
                f"train_backbone must be auto, yes or no; got {self.train_backbone!r}."
            )
        _check_codec_options(self.codec, self.max_codec_loss)
        _check_bottleneck_options(self)
        if self.weights not in ("none", "imagenet"):
            raise ConfigError(f"weights must be none or imagenet; got {self.weights!r}.")
        if self.freeze_epochs < 0:
            raise ConfigError(f"freeze_epochs must be >= 0; got {self.freeze_epochs}.")

    @property
    def bundle_dir(self) -> Path:
        """Where the bundle goes (``--out`` or ``bundles/<model>-<constraint>-<placement>``)."""
        if self.out:
            return Path(self.out)
        stem = Path(self.model).stem if self.model.endswith(".keras") else self.model
        return Path("bundles") / f"{stem}-{self.constraint}-{self.placement}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every option."""
        data = asdict(self)
        data["exits_per_part"] = list(self.exits_per_part)
        return data

    @classmethod
    def from_mapping(cls, data: dict[str, Any]) -> BuildConfig:
        """Build from a dict with CLI-style keys (dashes or underscores); unknown keys fail."""
        known = {f.name for f in fields(cls)}
        clean: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"Unknown build option {key!r}; known: {', '.join(sorted(known))}."
                )
            clean[name] = value
        if "exits_per_part" in clean:
            clean["exits_per_part"] = parse_exits_per_part(clean["exits_per_part"])
        return cls(**clean)


def _check_exit_options(config: BuildConfig) -> None:
    from edgelesspart.exits.heads import EXIT_HEADS
    from edgelesspart.exits.training import EXIT_TRAININGS
    from edgelesspart.runtime.confidence import MEASURES

    if config.exit_head not in EXIT_HEADS:
        raise ConfigError(
            f"Unknown exit head {config.exit_head!r}; built-in heads: {', '.join(EXIT_HEADS)} "
            "(sdn is the default; paper reproduces the paper), or give --exit-spec/--exit-template."
        )
    if config.exit_training not in EXIT_TRAININGS:
        raise ConfigError(
            f"Unknown exit training {config.exit_training!r}; choose one of "
            f"{', '.join(EXIT_TRAININGS)}."
        )
    if config.temperature_scaling not in ("yes", "no"):
        raise ConfigError(
            f"temperature_scaling must be yes or no, got {config.temperature_scaling!r}."
        )
    if config.temperatures_in_graph not in ("yes", "no"):
        raise ConfigError(
            f"temperatures_in_graph must be yes or no, got {config.temperatures_in_graph!r}."
        )
    if config.split_exit not in ("yes", "no"):
        raise ConfigError(f"split_exit must be yes or no, got {config.split_exit!r}.")
    if config.confidence not in MEASURES:
        raise ConfigError(
            f"Unknown confidence measure {config.confidence!r}; choose {' or '.join(MEASURES)}."
        )
    for name in ("max_final_drop", "max_accuracy_drop"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(
                f"{name} must be a number of accuracy percentage points >= 0 (e.g. 1), "
                f"got {value!r}."
            )
    value = config.min_exit_payoff
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(
            f"min_exit_payoff must be a ratio >= 0 (1: an exit stays when its expected saving "
            f"covers its measured cost; 0: keep every exit), got {value!r}."
        )
    fraction = config.val_fraction
    if fraction is not None and (
        isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not 0 < fraction < 1
    ):
        raise ConfigError(f"val_fraction must be in (0, 1) or unset (auto), got {fraction!r}.")


def _check_codec_options(codec: Any, max_loss: Any) -> None:
    from edgelesspart.runtime.codecs import CODECS

    if codec not in ("auto", *CODECS):
        raise ConfigError(
            f"Unknown codec {codec!r}; choose auto (the smallest codec within --max-codec-loss) "
            f"or one of: {', '.join(CODECS)}."
        )
    if isinstance(max_loss, bool) or not isinstance(max_loss, (int, float)) or not max_loss >= 0:
        raise ConfigError(
            f"max_codec_loss must be a number of accuracy percentage points >= 0 (e.g. 0.5), "
            f"got {max_loss!r}."
        )


def _check_bottleneck_options(config: BuildConfig) -> None:
    from edgelesspart.model.bottleneck import NONE, parse_bottleneck
    from edgelesspart.planning.bottleneck import LOSS_MEASURES

    choice = parse_bottleneck(config.bottleneck)
    object.__setattr__(config, "bottleneck", str(choice))
    value = config.bottleneck_max_loss
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ConfigError(
            f"bottleneck_max_loss must be a number of accuracy percentage points >= 0 (e.g. 1), "
            f"got {value!r}."
        )
    finetune = config.bottleneck_finetune
    if isinstance(finetune, bool) or not isinstance(finetune, int) or finetune < 0:
        raise ConfigError(
            f"bottleneck_finetune must be a number of epochs >= 0 (0: the cloud part stays the "
            f"unmodified model's), got {finetune!r}."
        )
    if config.bottleneck_loss not in LOSS_MEASURES:
        raise ConfigError(
            f"Unknown bottleneck_loss {config.bottleneck_loss!r}; choose broken (samples the "
            "unmodified model gets right and the bottleneck wrong) or accuracy (net accuracy "
            "points lost)."
        )
    if finetune and choice == NONE:
        raise ConfigError("--bottleneck-finetune needs --bottleneck auto or a channel count.")
    if choice != NONE and config.exit_training == "joint":
        raise ConfigError(
            "--bottleneck needs the backbone fixed after it is trained, but --exit-training "
            "joint fine-tunes the backbone; use --exit-training distill or frozen."
        )


def parse_exits_per_part(value: Any) -> tuple[int, int]:
    """``2`` -> (2, 2); ``"2,1"`` or ``[2, 1]`` -> (2, 1) (edge, cloud)."""
    if isinstance(value, str):
        parts = [p for p in value.replace(" ", "").split(",") if p]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        parts = [value]
    try:
        numbers = [int(p) for p in parts]
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"exits_per_part must be integers like 2 or 2,1; got {value!r}.") from exc
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2:
        raise ConfigError(f"exits_per_part takes one or two numbers (edge,cloud); got {value!r}.")
    return numbers[0], numbers[1]


@dataclass(frozen=True)
class BuildResult:
    """What a build produced."""

    bundle: Path
    manifest: Manifest
    plan: Plan
    seconds: dict[str, float] = field(default_factory=dict)


class _Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 2)
        self._last = now


def _profile_codecs(codec: str) -> tuple[str, ...]:
    from edgelesspart.profiling.profiler import PROFILE_CODECS
    from edgelesspart.runtime.codecs import LOSSLESS

    fixed = () if codec == "auto" else (codec,)
    return tuple(dict.fromkeys((*PROFILE_CODECS, *sorted(LOSSLESS), *fixed)))


def make_plan(
    config: BuildConfig,
    host_profile: Any,
    model_name: str,
    heads: tuple[dict[str, Any], int] | None = None,
    crossings: dict[str, Any] | None = None,
) -> tuple[Plan, dict]:
    """Scale the host profile to both devices and apply the configured planning rule.

    ``heads`` = (cut point -> :class:`~edgelesspart.exits.cost.HeadCost`, backbone MACs): the
    objective modes then charge each exit head's estimated time on its device. ``crossings``
    (split -> :class:`~edgelesspart.planning.bottleneck.Crossing` in device ms): measured
    bottlenecks the planner may use where they win.
    """
    from edgelesspart.planning import planner
    from edgelesspart.profiling import devices, links

    edge = devices.load_device(config.edge_device)
    cloud = devices.load_device(config.cloud_device)
    from edgelesspart.profiling.kit import host_reference_ms

    edge_profile = devices.profile_for_device(host_profile, edge, host_reference_ms)
    cloud_profile = devices.profile_for_device(host_profile, cloud, host_reference_ms)
    common = {
        "placement": config.placement,
        "exits_per_part": config.exits_per_part,
        "edge_device": edge,
        "cloud_device": cloud,
        "codec": config.codec,
    }
    if config.constraint in ("latency", "memory"):
        plan = planner.plan_split(
            edge_profile,
            cloud_profile,
            constraint=config.constraint,
            memory_fraction=config.memory_fraction,
            crossings=crossings,
            split_exit=config.split_exit == "yes",
            link=links.load_link(config.link) if crossings else None,
            **common,
        )
    else:
        plan = planner.plan_objective(
            edge_profile,
            cloud_profile,
            objective=config.constraint,
            link=links.load_link(config.link),
            search=config.search,
            exit_head_ms=_head_ms(heads, edge_profile, cloud_profile),
            crossings=crossings,
            **common,
        )
    if heads is not None:
        chosen = {cut: heads[0][cut].to_dict() for cut in plan.exits if cut in heads[0]}
        plan = replace(plan, parameters={**plan.parameters, "exit_heads": chosen})
    summary = {
        "edge_device": edge.name,
        "cloud_device": cloud.name,
        "edge_full_model_ms": edge_profile.total.latency_ms,
        "cloud_full_model_ms": cloud_profile.total.latency_ms,
        "model": model_name,
    }
    sources = devices.latency_sources(edge_profile, cloud_profile)
    plan = replace(plan, parameters={**plan.parameters, "latency_sources": sources})
    return plan, {**summary, "latency_sources": sources}


def _head_ms(heads: Any, edge_profile: Any, cloud_profile: Any) -> tuple[dict, dict] | None:
    """Each candidate exit head's estimated ms on the edge and on the cloud device."""
    from edgelesspart.exits.cost import device_head_ms

    if heads is None:
        return None
    costs, macs = heads
    return (
        device_head_ms(costs, macs, edge_profile.total.latency_ms),
        device_head_ms(costs, macs, cloud_profile.total.latency_ms),
    )


def _head_costs(
    config: BuildConfig, model: Any, definition: Any, profile: Any, classes: int
) -> tuple[dict[str, Any], int]:
    """Parameters and MACs of the exit head at every profiled cut point, and the backbone's."""
    from edgelesspart.exits import cost as exit_cost
    from edgelesspart.exits import heads as exits

    if definition.kind == "default":
        pooling = exits.classifier_pooling(model)
        definition = exits.load_exit_definition(pooling=pooling, head=config.exit_head)
    cuts = [cp.name for cp in profile.cut_points]
    costs = exit_cost.head_costs(model, definition, cuts, classes)
    return costs, exit_cost.model_macs(model)


def _exit_heads(
    model: Any, plan: Plan, definition: Any, classes: int, head: str = "sdn"
) -> tuple[Any, dict, dict]:
    """Render the exit definition and attach one head per planned exit (exit_1, exit_2, ...)."""
    from edgelesspart.exits import heads as exits
    from edgelesspart.model.graph import cut_tensor

    if definition.kind == "default":
        pooling = exits.classifier_pooling(model)
        definition = exits.load_exit_definition(pooling=pooling, head=head)
    builder = exits.compile_exit_builder(definition)
    exit_cuts = {f"exit_{i + 1}": cut for i, cut in enumerate(plan.exits)}
    exit_tensors = {
        name: exits.attach_exit(builder, cut_tensor(model, cut), classes, name)
        for name, cut in exit_cuts.items()
    }
    return definition, exit_cuts, exit_tensors


def _host() -> str:
    import os
    import platform

    return f"{platform.machine()} {platform.system()}, {os.cpu_count()} CPUs, batch 1"


def _bottleneck(
    config: BuildConfig,
    model: Any,
    plan: Plan,
    data: Any,
    host_profile: Any,
    summary: dict,
    heads: Any,
    log: Any,
) -> tuple[Plan, Any]:
    """Train and measure bottlenecks at the split, then re-plan with the winner as a crossing.

    The planner sees the chosen bottleneck as one more way across the link at the split and
    keeps it only where it wins (``auto``); a channel count given by the user is kept as asked.
    """
    from edgelesspart.planning.bottleneck_stage import fit_bottleneck
    from edgelesspart.profiling import devices, links

    host_ms = max(host_profile.total.latency_ms, 1e-9)
    neck = fit_bottleneck(
        model, plan.split, data,
        choice=config.bottleneck if config.bottleneck == "auto" else int(config.bottleneck),
        codec=config.codec, max_codec_loss=config.max_codec_loss,
        max_loss_pp=config.bottleneck_max_loss, link=links.load_link(config.link),
        cloud_device=devices.load_device(config.cloud_device),
        factors=(summary["edge_full_model_ms"] / host_ms, summary["cloud_full_model_ms"] / host_ms),
        epochs=config.bottleneck_epochs or BOTTLENECK_EPOCHS,
        batch_size=config.batch_size, seed=config.seed, max_samples=CODEC_MAX_SAMPLES,
        host=_host(), log=log, finetune_epochs=config.bottleneck_finetune,
        loss=config.bottleneck_loss,
    )  # fmt: skip
    if neck.decision.warning:
        log(f"warning: {neck.decision.warning}")
    log(f"bottleneck: {neck.decision.reason}")
    if neck.crossing is None:
        return plan, neck
    replanned, _ = make_plan(
        config, host_profile, summary["model"], heads, crossings={plan.split: neck.crossing}
    )
    if replanned.split == plan.split and replanned.parameters.get("bottleneck"):
        _apply_finetune(neck, log)
        return replanned, neck
    if config.bottleneck != "auto" and replanned.split == plan.split:
        log(f"bottleneck: the planner would not use {neck.crossing.name}; kept as asked")
        _apply_finetune(neck, log)
        return _force_crossing(replanned, neck.crossing, config), neck
    log(f"bottleneck: the planner keeps the codec at {replanned.split}; no bottleneck")
    neck.decision = replace(neck.decision, used=None, reason=neck.decision.reason + "; the "
                            "planner found it no better for the objective")  # fmt: skip
    neck.crossing = None
    return replanned, neck


def _apply_finetune(neck: Any, log: Any) -> None:
    """Put the used bottleneck's fine-tuned cloud part into the backbone (before the exits are
    trained, so cloud exits, their temperatures and the serving threshold are fitted on it)."""
    if neck.apply_finetune():
        log(f"bottleneck: the cloud part after {neck.used.cut_point} is the fine-tuned one")


def _force_crossing(plan: Plan, crossing: Any, config: BuildConfig) -> Plan:
    """Record a user-fixed bottleneck crossing in the plan's parameters."""
    from edgelesspart.planning import payload
    from edgelesspart.planning.planner import crossing_payload
    from edgelesspart.profiling import devices

    cloud = devices.load_device(config.cloud_device)
    chosen = crossing_payload(plan.split, crossing)
    parameters = {
        **plan.parameters,
        **payload.payload_parameters(chosen, config.codec, cloud),
        "bottleneck": crossing.name,
        "bottleneck_forced": True,
        "crossing_edge_ms": crossing.edge_ms,
        "crossing_cloud_ms": crossing.cloud_ms,
        "crossing_loss_pp": crossing.loss_pp,
    }
    return replace(plan, parameters=parameters)


def _bottleneck_codec(config: BuildConfig, neck: Any, plan: Plan) -> tuple[dict, dict, Plan]:
    """The manifest ``codec`` entry, ``codecs.json`` and plan for a bundle using a bottleneck."""
    from edgelesspart.planning import payload
    from edgelesspart.profiling import devices

    option, pair = neck.decision.used, neck.used
    cloud = devices.load_device(config.cloud_device)
    code_raw = 4 * int(np.prod(pair.code_shape))
    table = neck.table
    entry = {
        "name": option.codec,
        "params": {},
        "size_ratio": round(option.bytes_per_sample / code_raw, 6),
        "bytes_per_sample": option.bytes_per_sample,
        "accuracy_delta_pp": option.accuracy_delta_pp,
        "max_loss_pp": float(config.bottleneck_max_loss),
        "loss_measure": config.bottleneck_loss,
        "selected_by": "bottleneck-auto" if config.bottleneck == "auto" else "bottleneck-fixed",
        "cut_point": table.cut_point,
        "samples": table.samples,
        "raw_accuracy": table.raw_accuracy,
        "table": [r.to_dict() for r in table.rows],
        "bottleneck": {
            **pair.describe(),
            **{k: v for k, v in option.to_dict().items() if k not in ("label", "channels")},
            "boundary_size_ratio": option.size_ratio,
            "reason": neck.decision.reason,
            "test": neck.test,
        },
    }
    nbytes = int(round(option.bytes_per_sample))
    parameters = {
        **plan.parameters,
        "planning_codec": plan.parameters.get("codec"),
        "codec": option.codec,
        "codec_reason": neck.decision.reason,
        "boundary_encoded_bytes": nbytes,
        "boundary_wire_bytes": payload.wire_bytes(nbytes, cloud),
        "boundary_bytes_measured": True,
    }
    codecs_json = {**table.to_dict(), "bottleneck": neck.record()}
    return entry, codecs_json, replace(plan, parameters=parameters)


def choose_codec(
    config: BuildConfig, model: Any, plan: Plan, data: Any, log: Any = print, neck: Any = None
) -> tuple[dict[str, Any], dict[str, Any], Plan]:
    """Measure every codec at the plan's split on validation data and pick one.

    Returns the manifest ``codec`` entry, the ``codecs.json`` table and the plan with the chosen
    codec and its measured bytes recorded in ``parameters`` (the planner's own pick, made
    before accuracy was known, stays as ``planning_codec``). With a bottleneck step's result
    (``neck``), its table is reused; when it chose a bottleneck the entry describes the code.
    """
    from edgelesspart.planning import codec_selection, payload
    from edgelesspart.profiling import devices

    if neck is not None and neck.used is not None:
        return _bottleneck_codec(config, neck, plan)
    cloud = devices.load_device(config.cloud_device)
    x_val, y_val = data.x_val[:CODEC_MAX_SAMPLES], data.y_val[:CODEC_MAX_SAMPLES]
    if neck is not None and neck.table.cut_point == plan.split:
        table = neck.table
    else:
        table = codec_selection.measure_at_split(model, plan.split, x_val, y_val, host=_host())
    limit = payload.payload_limit(cloud)
    entry = codec_selection.codec_entry(table, config.codec, config.max_codec_loss, max_bytes=limit)
    chosen = table.row(entry["name"])
    if limit is not None and chosen.largest_bytes > limit:
        raise ConfigError(
            f"Codec {chosen.codec!r} sends up to {chosen.largest_bytes:,.0f} bytes per sample at "
            f"{plan.split!r}, over the {cloud.name} payload limit ({limit:,} bytes before "
            "base64); use --codec auto or a smaller codec."
        )
    if entry["selected_by"] == "fixed" and chosen.loss_pp > config.max_codec_loss:
        log(
            f"warning: codec {chosen.codec} loses {chosen.loss_pp:.2f} accuracy points on "
            f"validation, more than --max-codec-loss {config.max_codec_loss:g}; kept as asked"
        )
    parameters = {
        **plan.parameters,
        # objective_value (objective modes) stays the planner's: computed with planning_codec
        "planning_codec": plan.parameters.get("codec"),
        "codec": chosen.codec,
        "codec_reason": (
            f"auto: fewest bytes within {config.max_codec_loss:g} pp accuracy loss on validation"
            if entry["selected_by"] == "auto"
            else "fixed by the user"
        ),
        "boundary_encoded_bytes": int(round(chosen.bytes_per_sample)),
        "boundary_wire_bytes": payload.wire_bytes(int(round(chosen.bytes_per_sample)), cloud),
        "boundary_bytes_measured": True,
    }
    table_json = table.to_dict()
    if neck is not None:  # a bottleneck was considered and not used: say why
        table_json["bottleneck"] = neck.record()
        entry = {**entry, "bottleneck": None, "bottleneck_reason": neck.decision.reason}
    return entry, table_json, replace(plan, parameters=parameters)


def _train(
    config: BuildConfig,
    model: Any,
    data: Any,
    untrained: bool,
    log: Any = print,
    progress: bool = True,
) -> tuple[Any, bool, Any]:
    """Train the backbone when asked (or, with ``auto``, when it came untrained from the zoo);
    ``progress`` reports every epoch (of this and of the exit training) on stderr."""
    from edgelesspart.model import training

    pretrained = getattr(model, "_edgelesspart_pretrained", None) is not None
    train_config = training.TrainingConfig(
        epochs=config.epochs,
        exit_epochs=config.exit_epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        progress=progress,
        freeze_epochs=config.freeze_epochs if pretrained else 0,
        learning_rate=1e-3 if pretrained else training.TrainingConfig.learning_rate,
    )
    do_train = config.train_backbone == "yes" or (config.train_backbone == "auto" and untrained)
    run = training.fit_backbone(model, data, train_config) if do_train else None
    if run is not None:
        log(f"backbone: {run.epochs} epochs, {run.reason(train_config.patience)}")
    return train_config, do_train, run


def _training_check(
    joint: Any, data: Any, accuracy: dict, run: Any, train_config: Any, log: Any
) -> dict[str, Any]:
    """Reference accuracy, train accuracy and the undertrained warnings; printed and recorded."""
    from edgelesspart.model import training

    reference, reference_name = training.reference_for(data, seed=train_config.seed)
    subset = slice(0, 1024)
    train_acc = training.classifier_accuracy(joint, data.x_train[subset], data.y_train[subset])
    warnings = training.undertrained_warnings(
        accuracy,
        reference=reference,
        reference_name=reference_name,
        train_accuracy=train_acc.get("final"),
        run=run,
        patience=train_config.patience,
    )
    for warning in warnings:
        log(f"warning: {warning}")
    return {
        "reference_val_accuracy": round(reference, 5),
        "reference_model": reference_name,
        "train_accuracy_final": train_acc.get("final"),
        "warnings": warnings,
    }


def run_build(config: BuildConfig, *, show_progress: bool = True, log: Any = print) -> BuildResult:
    """Run the whole pipeline for ``config`` and return the exported bundle."""
    from edgelesspart._lazy import keras
    from edgelesspart.exits import heads as exits
    from edgelesspart.export import bundle as export
    from edgelesspart.model import training, zoo
    from edgelesspart.model.graph import functional_model
    from edgelesspart.profiling import profiler

    clock = _Clock()
    keras().utils.set_random_seed(config.seed)
    data, validation = load_build_data(config)
    # Reject a bad exit spec/template before any training time is spent.
    definition = exits.load_exit_definition(
        config.exit_spec, config.exit_template, head=config.exit_head
    )
    model, model_info = zoo.resolve_model(
        config.model, data.input_shape, data.num_classes, seed=config.seed, weights=config.weights
    )
    model = functional_model(model)
    sizes = f"{len(data.x_train)}/{len(data.x_val)}/{len(data.x_test)}"
    log(f"data: {data.name}, train/val/test = {sizes}; model: {model_info['name']}")
    if validation.get("note"):
        log(f"validation: {validation['note']}")
    clock.lap("load")
    train_config, trained, backbone_run = _train(
        config, model, data, model_info.get("source") == "zoo", log, show_progress
    )
    backbone_epochs = backbone_run.epochs if backbone_run is not None else 0
    clock.lap("train_backbone")
    host_profile = profiler.profile_model(
        model,
        model_name=model_info["name"],
        max_cut_points=config.max_cut_points,
        method=config.profile_method,
        show_progress=show_progress,
        seed=config.seed,
        samples=data.x_val[:PROFILE_SAMPLES],
        codecs=_profile_codecs(config.codec),
    )
    if config.profiling_kit:
        from edgelesspart.profiling.kit import write_kit

        write_kit(
            model,
            config.profiling_kit,
            model_name=model_info["name"],
            max_cut_points=config.max_cut_points,
            overwrite=config.overwrite,
        )
        log(f"profiling kit: {config.profiling_kit} (run `edgelesspart profile-device` on it)")
    clock.lap("profile")
    heads = _head_costs(config, model, definition, host_profile, data.num_classes)
    plan, profile_summary = make_plan(config, host_profile, model_info["name"], heads)
    neck = None
    if config.bottleneck != "none":
        plan, neck = _bottleneck(config, model, plan, data, host_profile, profile_summary, heads,
                                 log)  # fmt: skip
        clock.lap("bottleneck")
    definition, exit_cuts, exit_tensors = _exit_heads(
        model, plan, definition, data.num_classes, config.exit_head
    )
    joint, exit_epochs, exit_training = _train_exits(config, model, exit_tensors, data,
                                                     train_config, log)  # fmt: skip
    clock.lap("train_exits")
    codec, codec_table, plan = choose_codec(config, model, plan, data, log, neck=neck)
    log(
        f"codec: {codec['name']} ({codec['selected_by']}), {1 / codec['size_ratio']:.2f}x fewer "
        f"bytes than raw fp32 {'code' if neck and neck.used else 'boundary'}, accuracy delta "
        f"{codec['accuracy_delta_pp']:+.2f} pp on {codec['samples']} validation samples"
    )
    clock.lap("codec")
    accuracy = {
        "val": training.classifier_accuracy(joint, data.x_val, data.y_val),
        "test": training.classifier_accuracy(joint, data.x_test, data.y_test),
    }
    report = training.TrainingReport(trained, backbone_epochs, exit_epochs, accuracy)
    training_record = {
        **report.to_dict(),
        "exit_training": exit_training,
        "backbone_run": backbone_run.to_dict(train_config.patience) if backbone_run else None,
        "check": _training_check(joint, data, accuracy, backbone_run, train_config, log),
    }
    request = export.ExportRequest(
        backbone=model,
        exit_tensors=exit_tensors,
        exit_cuts=exit_cuts,
        plan=plan,
        classes=data.classes,
        preprocessing=data.preprocessing,
        exit_code=definition.code,
        exit_source=f"{definition.kind}:{definition.origin}",
        model_info=model_info,
        profile={**host_profile.to_dict(), "planning": profile_summary},
        training=training_record,
        extra={
            "dataset": {
                "spec": config.dataset,
                "seed": config.seed,
                "image_size": config.image_size,
                "limit": config.limit,
                "val_fraction": validation["val_fraction"],
                "validation": validation,
            },
            "build_config": config.to_dict(),
        },
        codec=codec,
        codec_table=codec_table,
        bottleneck=None if neck is None else neck.used,
        # converted once: the exit-payoff pass re-exports the same backbone
        reference_tflite=export.reference_tflite(model, data.x_val[:4]),
    )
    manifest = export.export_bundle(
        request, config.bundle_dir, probe=data.x_val[:4], overwrite=config.overwrite
    )
    clock.lap("export")
    manifest = _choose_serving(config, manifest, data, log)
    clock.lap("serving")
    if config.min_exit_payoff > 0:
        manifest, request = _drop_unprofitable_exits(config, request, manifest, data, log)
        plan = manifest.plan
        clock.lap("exit_payoff")
    if config.temperatures_in_graph == "yes":
        manifest = _temperatures_into_heads(config, request, manifest, data, log)
        clock.lap("temperatures_in_graph")
    return BuildResult(config.bundle_dir, manifest, plan, clock.seconds)


#: the automatic validation split takes at most this share of the data (train keeps the rest)
MAX_AUTO_VAL_FRACTION = 0.25


def load_build_data(config: BuildConfig) -> tuple[Any, dict[str, Any]]:
    """The build's dataset, with the validation split enlarged where it is too small.

    The serving threshold's margin (``calibration.min_samples_for_bound``) needs about
    ``(1 + z) / max_accuracy_drop`` validation samples (265 for 1 point) to approve any
    threshold that loses a sample. When the default split is smaller and no ``val_fraction``
    was given, the validation share is raised (the extra samples come out of train; the test
    split keeps its members) to reach that size, as long as validation stays within
    :data:`MAX_AUTO_VAL_FRACTION` of the data and ``limit`` does not cap the splits. Returns the
    data and a record (``val_fraction`` to reload the same splits, sizes, a note).
    """
    from edgelesspart.evaluation.calibration import min_samples_for_bound
    from edgelesspart.model import datasets

    kwargs = {"seed": config.seed, "image_size": config.image_size, "limit": config.limit}
    if config.val_fraction is not None:
        data = datasets.load_dataset(config.dataset, val_fraction=config.val_fraction, **kwargs)
        return data, {"val_fraction": config.val_fraction, "enlarged": False, "note": ""}
    data = datasets.load_dataset(config.dataset, **kwargs)
    needed = min_samples_for_bound(config.max_accuracy_drop / 100.0)
    n_val, n_train = len(data.y_val), len(data.y_train)
    record: dict[str, Any] = {"val_fraction": None, "enlarged": False, "min_samples": needed,
                              "validation_samples": n_val, "note": ""}  # fmt: skip
    if n_val >= needed:
        return data, record
    if config.limit is not None:
        record["note"] = f"{n_val} samples, below the {needed} the margin needs (--limit caps it)"
        return data, record
    pools = (n_train + n_val + len(data.y_test), n_train + n_val)  # digits/folders; npz/cifar10
    for pool in pools:
        fraction = (needed + data.num_classes) / pool  # per-class rounding loses < 1 per class
        if fraction > MAX_AUTO_VAL_FRACTION:
            break
        bigger = datasets.load_dataset(config.dataset, val_fraction=fraction, **kwargs)
        if len(bigger.y_val) >= needed:
            record.update(
                val_fraction=round(fraction, 6),
                enlarged=True,
                validation_samples=len(bigger.y_val),
                taken_from_train=n_train - len(bigger.y_train),
                note=f"enlarged from {n_val} to {len(bigger.y_val)} samples, "
                f"{n_train - len(bigger.y_train)} taken from train, so the threshold's margin "
                f"can work ({needed} needed for a {config.max_accuracy_drop:g}-point bound); "
                f"validation fraction {fraction:.3f}",
            )
            return bigger, record
    record["note"] = (
        f"{n_val} samples, below the {needed} the margin needs; the data are too small to take "
        f"more from train (at most {MAX_AUTO_VAL_FRACTION:.0%} of the data goes to validation)"
    )
    return data, record


def unprofitable_exits(payoff: dict[str, Any], min_payoff: float = 1.0) -> dict[str, dict]:
    """``exit name -> its payoff row`` for exits whose expected saving is below ``min_payoff``
    times their measured cost at the serving threshold (:func:`exit_payoff`'s rows)."""
    return {
        name: row
        for name, row in payoff.get("exits", {}).items()
        if row["expected_saving_ms"] < min_payoff * row["expected_cost_ms"]
        or row["expected_saving_ms"] <= 0.0
    }


def drop_exits(plan: Plan, cuts: set[str] | frozenset[str]) -> Plan:
    """``plan`` without the exits at ``cuts`` (split, stages and everything else unchanged)."""
    stages = tuple(
        replace(s, exits=tuple(e for e in s.exits if e not in cuts)) for s in plan.stages
    )
    parameters = dict(plan.parameters)
    if isinstance(parameters.get("exit_heads"), dict):
        parameters["exit_heads"] = {
            c: v for c, v in parameters["exit_heads"].items() if c not in cuts
        }
    return replace(plan, stages=stages, parameters=parameters)


def _without_exits(training: dict[str, Any], names: set[str]) -> dict[str, Any]:
    """The training record with the dropped exits' accuracies moved to ``dropped_exits``."""
    accuracy = training.get("accuracy")
    if not isinstance(accuracy, dict):
        return training
    kept = {
        split: {k: v for k, v in values.items() if k not in names}
        for split, values in accuracy.items()
        if isinstance(values, dict)
    }
    gone = {
        split: {k: v for k, v in values.items() if k in names}
        for split, values in accuracy.items()
        if isinstance(values, dict)
    }
    previous = training.get("dropped_exits_accuracy", {})
    merged = {s: {**previous.get(s, {}), **gone[s]} for s in gone}
    return {**training, "accuracy": kept, "dropped_exits_accuracy": merged}


def _drop_unprofitable_exits(
    config: BuildConfig, request: Any, manifest: Manifest, data: Any, log: Any
) -> tuple[Manifest, Any]:
    """Second planning pass on measured costs: remove the exits that cost more than they save.

    The planner places exits from MAC estimates; after export the serving choice measures each
    exit head's host time and, at the serving threshold, what it saves
    (:func:`~edgelesspart.evaluation.serving.exit_payoff`). Only exits of the plan's last stage
    are judged: there an answer saves only the rest of the backbone on the same device, while an
    exit before a split also saves the offload (transfer and remote compute), which the host
    payoff does not price (they keep their warning). Last-stage exits whose expected saving is below
    ``min_exit_payoff`` times their expected cost are removed from the plan, the bundle is
    re-exported from the same trained heads and the threshold re-chosen; repeated until every
    remaining exit pays off (each pass removes at least one). The removed exits and their
    figures are recorded in ``plan.parameters['dropped_exits']``. Returns the manifest and the
    export request of the bundle now on disk.
    """
    from edgelesspart.evaluation.compute import format_saving
    from edgelesspart.export import bundle as export

    dropped: list[dict[str, Any]] = []
    for _ in range(len(request.plan.exits)):
        # only exits of the last stage: an exit before a split also saves the offload (link and
        # remote compute), which this host-compute payoff does not count
        last = set(request.plan.stages[-1].exits)
        losers = {
            name: row
            for name, row in unprofitable_exits(
                manifest.serving["payoff"], config.min_exit_payoff
            ).items()
            if row["cut_point"] in last
        }
        if not losers:
            break
        for name, row in losers.items():
            log(
                f"exit payoff: dropping {name} at {row['cut_point']}: measured cost "
                f"{row['expected_cost_ms']:.4f} ms per sample (head {row['head_ms']:.4f} ms on "
                f"{100 * row['reach']:.0f}% of samples) vs expected saving "
                f"{row['expected_saving_ms']:.4f} ms (answers {100 * row['answered']:.1f}%)"
            )
            dropped.append({"exit": name, **row})
        cuts = {row["cut_point"] for row in losers.values()}
        plan = drop_exits(request.plan, cuts)
        plan = replace(plan, parameters={**plan.parameters, "dropped_exits": dropped})
        keep = {n: c for n, c in request.exit_cuts.items() if n not in losers}
        request = replace(
            request,
            plan=plan,
            exit_cuts=keep,
            exit_tensors={n: t for n, t in request.exit_tensors.items() if n in keep},
            training=_without_exits(request.training, set(losers)),
        )
        fresh = export.export_bundle(
            request, config.bundle_dir, probe=data.x_val[:4], overwrite=True
        )
        manifest = _choose_serving(config, fresh, data, log)
    if dropped:
        left = ", ".join(f"{n} at {c}" for n, c in request.exit_cuts.items()) or "none"
        log(
            f"exit payoff: {len(dropped)} exit(s) removed after measurement; kept: {left}; net "
            f"compute saving now {format_saving(manifest.serving['payoff']['net'])}"
        )
    return manifest, request


def split_temperatures(
    serving: dict[str, Any], in_graph: set[str] | frozenset[str]
) -> dict[str, Any]:
    """The ``serving`` entry once the temperatures of the exits ``in_graph`` are in their heads.

    ``temperatures`` keeps what the runtime must still apply (every other exit, as fitted);
    ``temperatures_in_graph`` records the fitted values the exported heads already apply. A
    runtime that knows only ``temperatures`` (older releases included) therefore scores such a
    bundle correctly: it finds nothing to apply to those exits.
    """
    fitted = dict(serving.get("temperatures") or {})
    moved = {name: t for name, t in fitted.items() if name in in_graph}
    return {
        **serving,
        "temperatures": {name: t for name, t in fitted.items() if name not in in_graph},
        "temperatures_in_graph": moved,
    }


def _temperatures_into_heads(
    config: BuildConfig, request: Any, manifest: Manifest, data: Any, log: Any
) -> Manifest:
    """Re-export with each fitted temperature built into its exit head (P2: no Python scoring).

    The serving choice fits the temperatures on the exported bundle's validation trace; this
    re-exports the same trained model with ``softmax(logits / T)`` as each exit's output
    (:func:`edgelesspart.export.bundle.calibrated_probs`) wherever the head ends in a softmax
    the exporter knows, and moves those temperatures from ``serving.temperatures`` (applied by
    the runtime) to ``serving.temperatures_in_graph`` (a record). Everything else the serving
    choice measured stays valid: the graphs differ by one scale that LiteRT folds into the
    classifier's weights, and the calibrated values equal the runtime's to float32 rounding.
    """
    from edgelesspart.export import bundle as export
    from edgelesspart.runtime.manifest import write_manifest

    fitted = manifest.serving.get("temperatures") or {}
    names = {e.name for e in manifest.exits}
    fold = {
        name: float(t)
        for name, t in fitted.items()
        if float(t) != 1.0 and name in names and export.foldable(request, name)
    }
    kept = sorted(n for n, t in fitted.items() if float(t) != 1.0 and n not in fold)
    if kept:
        log(f"temperatures: {', '.join(kept)} stay with the runtime (head not a known softmax)")
    if not fold:
        return manifest
    fresh = export.export_bundle(
        replace(request, temperatures=fold), config.bundle_dir,
        probe=data.x_val[:4], overwrite=True,
    )  # fmt: skip
    manifest = replace(fresh, serving=split_temperatures(manifest.serving, set(fold)))
    write_manifest(config.bundle_dir, manifest)
    log(f"temperatures built into the exit heads: {', '.join(sorted(fold))}")
    return manifest


def _train_exits(
    config: BuildConfig, model: Any, exit_tensors: dict, data: Any, train_config: Any, log: Any
) -> tuple[Any, int, dict[str, Any]]:
    """Train the exits as ``config.exit_training`` asks; report the final classifier's change."""
    from edgelesspart.exits import training as exit_training
    from edgelesspart.model import training

    if config.exit_training == "frozen":
        joint, epochs = training.train_exits(model, exit_tensors, data, train_config)
        return joint, epochs, {"mode": "frozen", "used": "frozen", "epochs": epochs}
    joint, result = exit_training.train_exits_distilled(
        model, exit_tensors, data, train_config, mode=config.exit_training,
        max_final_drop=config.max_final_drop, log=log,
    )  # fmt: skip
    record = result.to_dict()
    if config.exit_training == "joint":
        change = record["final_accuracy_change_pp"]
        log(
            f"joint exit training: final classifier validation accuracy "
            f"{record['final_val_accuracy']['before']:.3f} -> "
            f"{record['final_val_accuracy']['after']:.3f} ({change:+.2f} pt, bound "
            f"-{config.max_final_drop:g} pt){'; fell back to distill' if result.fell_back else ''}"
        )
    return joint, result.epochs, record


def _choose_serving(config: BuildConfig, manifest: Manifest, data: Any, log: Any) -> Manifest:
    """Fit exit temperatures and the default threshold on validation; record them; print them."""
    from edgelesspart.evaluation.compute import format_saving
    from edgelesspart.evaluation.serving import choose_serving, format_serving, payoff_warnings
    from edgelesspart.runtime.manifest import write_manifest

    serving = choose_serving(
        config.bundle_dir, data, max_accuracy_drop=config.max_accuracy_drop,
        measure=config.confidence, link=config.link,
        calibrate=config.temperature_scaling == "yes",
    )  # fmt: skip
    manifest = replace(manifest, serving=serving)
    write_manifest(config.bundle_dir, manifest)
    log(format_serving(serving))
    net = serving["payoff"]["net"]
    log(
        f"compute: {net['served_host_ms']:.3f} ms per sample at the serving threshold against "
        f"{net['full_model_host_ms']:.3f} ms without exits (host, validation exit mix; "
        f"{net['full_model_source']}): net saving {format_saving(net)}, exit heads and "
        "per-segment overhead included"
    )
    edge_share = float(serving["validation"]["edge_share"])
    for warning in payoff_warnings(
        serving["payoff"], config.constraint, edge_share, manifest.plan.split
    ):
        log(f"warning: {warning}")
    return manifest
