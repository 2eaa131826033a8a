"""What a prune achieved against what was asked, and which layers held channels back.

Every :func:`~edgelesspart.pruning.prune_model` call builds a :class:`PruneReport`. Ratios count
**filters** (output channels of ``Conv*``/``SeparableConv*``/``Dense`` layers), the unit a pruning
ratio is defined on: the achieved ratio is the share of all the model's filters that were
removed. Filters that could not be pruned are *held back* by the layers that fixed their channels
(a layer that mixes channels, an unknown layer frozen with ``unknown="freeze"``, the model input);
the class count at the model output is kept by design and is reported apart. When more than
:data:`WARN_HELD_SHARE` of the filters are held back, :func:`warn_if_held_back` emits a
:class:`PruningWarning` naming the layers, largest first.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgelesspart.pruning.groups import MODEL_OUTPUT, ChannelGraph

#: Warn when more than this share of the model's filters could not be pruned.
WARN_HELD_SHARE = 0.2
#: Layers named in the warning line (the report keeps them all).
WARN_NAMES = 5


class PruningWarning(UserWarning):
    """A prune removed much less than asked because layers held channels back."""


@dataclass(frozen=True)
class PruneReport:
    """Requested versus achieved pruning of one :func:`prune_model` call.

    Attributes:
        requested: the requested ratio (for per-group ratios: their filter-weighted mean over
            every prunable filter, groups not named counting as 0).
        achieved: share of all the model's filters removed.
        params_ratio: parameters after / before.
        filters: filters in the model before pruning.
        held_share: share of the filters that no ratio could prune (not counting the output's).
        held_back: (layer label, filters it held back), largest first.
        output_filters: filters kept because they are the model output (class count).
    """

    requested: float
    achieved: float
    params_ratio: float
    filters: int
    held_share: float
    held_back: tuple[tuple[str, int], ...]
    output_filters: int

    @property
    def warn(self) -> bool:
        """True when a large share of the filters could not be pruned."""
        return self.held_share > WARN_HELD_SHARE

    def summary(self) -> str:
        """One line: requested vs achieved, parameters, and the layers that held filters back."""
        line = (
            f"pruning ratio requested {self.requested:.2f}, achieved {self.achieved:.2f} of "
            f"{self.filters:,} filters; parameters {self.params_ratio:.2f}x"
        )
        if not self.held_back:
            return line + "; no layer held filters back"
        names = ", ".join(f"{label} {n:,}" for label, n in self.held_back[:WARN_NAMES])
        more = len(self.held_back) - WARN_NAMES
        return (
            f"{line}; {self.held_share:.0%} of the filters could not be pruned, held back by: "
            f"{names}{f' (+{more} more)' if more > 0 else ''}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {
            "requested": self.requested,
            "achieved": self.achieved,
            "params_ratio": self.params_ratio,
            "filters": self.filters,
            "held_share": self.held_share,
            "held_back": [{"layer": label, "filters": n} for label, n in self.held_back],
            "output_filters": self.output_filters,
        }


def build_report(
    graph: ChannelGraph,
    requested: float | Mapping[str, float],
    kept: Mapping[str, np.ndarray],
    params: tuple[int, int],
) -> PruneReport:
    """The report of one prune.

    Args:
        graph: the analysed model.
        requested: the ratio passed to :func:`prune_model` (one value or per group).
        kept: group name -> kept channel indices.
        params: parameters (before, after).
    """
    prunable = sum(g.channels * len(g.producers) for g in graph.groups)
    removed = sum((g.channels - len(kept[g.name])) * len(g.producers) for g in graph.groups)
    held: dict[str, int] = {}
    output = held_total = 0
    for h in graph.held:
        filters = h.channels * len(h.producers)
        blamers = [b for b in h.by if b != MODEL_OUTPUT]
        if not blamers:
            output += filters
            continue
        held_total += filters
        for label in blamers:
            held[label] = held.get(label, 0) + filters
    total = prunable + held_total + output
    if isinstance(requested, Mapping):
        weighted = sum(
            float(requested.get(g.name, 0.0)) * g.channels * len(g.producers) for g in graph.groups
        )
        wanted = weighted / prunable if prunable else 0.0
    else:
        wanted = float(requested)
    return PruneReport(
        requested=wanted,
        achieved=removed / total if total else 0.0,
        params_ratio=params[1] / params[0] if params[0] else 1.0,
        filters=total,
        held_share=held_total / total if total else 0.0,
        held_back=tuple(sorted(held.items(), key=lambda kv: (-kv[1], kv[0]))),
        output_filters=output,
    )


def warn_if_held_back(report: PruneReport, model_name: str) -> None:
    """Emit a :class:`PruningWarning` when a large share of the filters could not be pruned."""
    if report.warn:
        warnings.warn(
            f"Model {model_name!r}: {report.summary()}. These layers fix the channels around "
            "them; docs/pruning.md lists the supported layers and how to replace the others.",
            PruningWarning,
            stacklevel=3,
        )
