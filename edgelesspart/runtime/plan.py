"""The plan: an ordered list of stages, each a device with a layer range and its exits.

EdgeLessPart is two stages (``edge`` then ``cloud``); DEFER is N edge stages; SlimEdge and
dynamic pruning add per-stage knobs in :attr:`Stage.options`. Cut points are named by the Keras
layer whose (single) output tensor is the cut; ``"input"`` and ``"output"`` name the model's
ends. The plan is pure data: frozen, JSON round-trippable, deterministic.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from edgelesspart.errors import PlanError

PLAN_VERSION = 1
MODEL_INPUT = "input"
MODEL_OUTPUT = "output"


@dataclass(frozen=True)
class Stage:
    """One placement: the layers after cut point ``start`` up to and including ``end``.

    ``exits`` are cut point names inside the stage (never past ``end``), in model order.
    The last stage always ends at ``"output"``, whose final classifier is not listed in exits.
    """

    name: str
    device: str
    start: str
    end: str
    exits: tuple[str, ...] = ()
    predicted_latency_ms: float = 0.0
    predicted_memory_bytes: int = 0
    options: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        data = asdict(self)
        data["exits"] = list(self.exits)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stage:
        """Build a stage from :meth:`to_dict` output."""
        try:
            return cls(
                name=str(data["name"]),
                device=str(data["device"]),
                start=str(data["start"]),
                end=str(data["end"]),
                exits=tuple(str(e) for e in data.get("exits", ())),
                predicted_latency_ms=float(data.get("predicted_latency_ms", 0.0)),
                predicted_memory_bytes=int(data.get("predicted_memory_bytes", 0)),
                options=dict(data.get("options", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PlanError(f"Malformed stage in plan: {exc!r}; got {data!r}") from exc


@dataclass(frozen=True)
class Plan:
    """Where the model is split and where its exits are.

    Attributes:
        constraint: the rule that chose the split (``latency``, ``memory``,
            ``expected-latency`` or ``expected-cost``).
        placement: how exits were spaced inside each part (``linear`` or ``pareto``).
        stages: the stages in execution order.
        cut_points: every legal cut point of the model, in model order (for reference).
        boundary_bytes: raw float32 bytes of the tensor crossing each stage boundary.
        parameters: the inputs of the decision (memory fraction, devices, ...).
        rationale: one human sentence explaining the split.
    """

    constraint: str
    placement: str
    stages: tuple[Stage, ...]
    cut_points: tuple[str, ...] = ()
    boundary_bytes: tuple[int, ...] = ()
    parameters: dict[str, Any] = field(default_factory=dict)
    rationale: str = ""
    version: int = PLAN_VERSION

    def __post_init__(self) -> None:
        if not self.stages:
            raise PlanError("A plan needs at least one stage.")
        if self.stages[-1].end != MODEL_OUTPUT:
            raise PlanError(
                f"The last stage must end at the model output, not at {self.stages[-1].end!r}."
            )
        for before, after in zip(self.stages, self.stages[1:]):
            if after.start != before.end:
                raise PlanError(
                    f"Stage {after.name!r} starts at {after.start!r} but stage {before.name!r} "
                    f"ends at {before.end!r}; stages must be contiguous."
                )

    @property
    def split(self) -> str:
        """The cut point where the first stage hands over (``"output"`` if one stage)."""
        return self.stages[0].end

    @property
    def exits(self) -> tuple[str, ...]:
        """Every exit of every stage, in model order."""
        return tuple(e for s in self.stages for e in s.exits)

    def stage(self, name: str) -> Stage:
        """Return the stage called ``name``."""
        for s in self.stages:
            if s.name == name:
                return s
        raise PlanError(f"No stage named {name!r}; stages are {[s.name for s in self.stages]}.")

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready dict."""
        return {
            "version": self.version,
            "constraint": self.constraint,
            "placement": self.placement,
            "stages": [s.to_dict() for s in self.stages],
            "cut_points": list(self.cut_points),
            "boundary_bytes": list(self.boundary_bytes),
            "parameters": dict(self.parameters),
            "rationale": self.rationale,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Plan:
        """Build a plan from :meth:`to_dict` output."""
        if not isinstance(data, dict):
            raise PlanError(f"A plan must be a JSON object, got {type(data).__name__}.")
        version = data.get("version", PLAN_VERSION)
        if version != PLAN_VERSION:
            raise PlanError(f"Plan version {version!r} is not supported (expected {PLAN_VERSION}).")
        try:
            return cls(
                constraint=str(data["constraint"]),
                placement=str(data["placement"]),
                stages=tuple(Stage.from_dict(s) for s in data["stages"]),
                cut_points=tuple(str(c) for c in data.get("cut_points", ())),
                boundary_bytes=tuple(int(b) for b in data.get("boundary_bytes", ())),
                parameters=dict(data.get("parameters", {})),
                rationale=str(data.get("rationale", "")),
            )
        except (KeyError, TypeError) as exc:
            raise PlanError(f"Malformed plan: missing or bad field {exc}.") from exc
