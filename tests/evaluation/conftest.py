"""Fixtures for the evaluation tests: hand-built traces (no model, no TensorFlow)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

try:
    from edgelesspart.runtime.executor import Trace
except ImportError:  # the executor is written by another agent; same fields

    @dataclass(frozen=True)
    class Trace:  # type: ignore[no-redef]
        exits: tuple[str, ...]
        exit_stage: dict[str, str]
        exit_segment: dict[str, str]
        probs: dict[str, np.ndarray]
        segments: tuple[str, ...]
        segment_stage: dict[str, str]
        segment_ms: dict[str, float]
        boundary_bytes: dict[str, int]


EXITS = ("exit_1", "exit_2", "exit_3", "final")
SEGMENTS = ("edge_0", "edge_1", "cloud_0", "cloud_1")
STAGES = {"edge_0": "edge", "edge_1": "edge", "cloud_0": "cloud", "cloud_1": "cloud"}
SEGMENT_MS = {"edge_0": 2.0, "edge_1": 3.0, "cloud_0": 5.0, "cloud_1": 4.0}
BOUNDARY = {"edge_0": 1000, "edge_1": 8000, "cloud_0": 500, "cloud_1": 0}


@dataclass(frozen=True)
class FakeLink:
    """rtt + bytes over a fixed uplink, like edgelesspart.profiling.links.Link."""

    rtt_ms: float = 10.0
    uplink_mbps: float = 8.0

    def transfer_ms(self, nbytes: int) -> float:
        return self.rtt_ms + nbytes * 8 / (self.uplink_mbps * 1e6) * 1000


def prob_row(top: int, conf: float, classes: int = 3) -> list[float]:
    """A probability row whose top-1 class is ``top`` with confidence ``conf``."""
    rest = (1.0 - conf) / (classes - 1)
    return [conf if c == top else rest for c in range(classes)]


def make_trace(probs: dict[str, np.ndarray], segment_ms: dict[str, float] | None = None) -> Trace:
    """A 4-segment edge/cloud trace with an exit at the end of every segment."""
    return Trace(
        exits=EXITS,
        exit_stage={e: STAGES[s] for e, s in zip(EXITS, SEGMENTS)},
        exit_segment=dict(zip(EXITS, SEGMENTS)),
        probs={k: np.asarray(v, dtype=np.float32) for k, v in probs.items()},
        segments=SEGMENTS,
        segment_stage=dict(STAGES),
        segment_ms=dict(segment_ms or SEGMENT_MS),
        boundary_bytes=dict(BOUNDARY),
    )


@pytest.fixture
def hand_trace():
    """Five samples, three classes; labels are all class 0 except sample 4 (class 1).

    s0: exit_1 0.95 right.  s1: exit_2 0.92 right.  s2: exit_3 0.95 right.
    s3: only final 0.99 right.  s4: exit_1 0.85 wrong, exit_2 0.95 right.
    """
    low = prob_row(0, 0.5)
    probs = {
        "exit_1": [prob_row(0, 0.95), prob_row(0, 0.6), low, low, prob_row(0, 0.85)],
        "exit_2": [prob_row(0, 0.95), prob_row(0, 0.92), low, low, prob_row(1, 0.95)],
        "exit_3": [prob_row(0, 0.95), prob_row(0, 0.95), prob_row(0, 0.95), low,
                   prob_row(1, 0.95)],
        "final": [prob_row(0, 0.99), prob_row(0, 0.99), prob_row(0, 0.99), prob_row(0, 0.99),
                  prob_row(1, 0.99)],
    }
    labels = np.array([0, 0, 0, 0, 1])
    return make_trace(probs), labels


@pytest.fixture(scope="session")
def random_trace():
    """A factory of random traces with random labels (seeded)."""

    def build(seed: int, n: int = 64, classes: int = 4):
        rng = np.random.default_rng(seed)
        probs = {}
        for i, name in enumerate(EXITS):
            logits = rng.normal(size=(n, classes)) * (1.0 + i)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs[name] = e / e.sum(axis=1, keepdims=True)
        labels = rng.integers(0, classes, size=n)
        return make_trace(probs), labels

    return build


@pytest.fixture
def fake_link():
    """10 ms RTT, 8 Mbps uplink: 8000 bytes take 10 + 8 = 18 ms."""
    return FakeLink()
