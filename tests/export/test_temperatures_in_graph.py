"""Temperatures built into the exit heads serve what the runtime's temperature scaling serves.

One trained tiny model is exported twice: as bundles were before (the manifest's
``serving.temperatures``, applied by the runtime in Python) and with each temperature in its
exit head (``serving.temperatures_in_graph``, nothing left to the runtime). Both must give the
same labels, exits and confidences (to float32 rounding), batch or row by row.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from edgelesspart.build import split_temperatures  # noqa: E402
from edgelesspart.errors import BundleError  # noqa: E402
from edgelesspart.export import bundle as export  # noqa: E402
from edgelesspart.runtime.bundle import Bundle  # noqa: E402
from edgelesspart.runtime.confidence import ExitScorer  # noqa: E402
from edgelesspart.runtime.executor import ProgressiveExecutor  # noqa: E402
from edgelesspart.runtime.manifest import load_manifest, write_manifest  # noqa: E402

pytestmark = pytest.mark.needs_tf

#: three sharpening (final strongly, like the shared bundle's 0.05), one softening
TEMPERATURES = {"exit_1": 0.12, "exit_2": 0.5, "exit_3": 1.5, "final": 0.08}
#: float32 rounding of the graph's softmax(logits / T) vs float64 softmax(log p / T)
CONF_TOL = 2e-5


def _set_serving(path, serving):
    write_manifest(path, replace(load_manifest(path), serving=serving))


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(runtime-scaled bundle, in-graph bundle, test inputs) of one trained tiny model."""
    from bundle_factory import tiny_export_request

    request, data = tiny_export_request(epochs=4, exit_epochs=4)
    assert all(export.foldable(request, name) for name in TEMPERATURES)
    root = tmp_path_factory.mktemp("temperatures")
    probe = np.asarray(data.x_val[:4])
    export.export_bundle(request, root / "runtime", probe=probe)
    _set_serving(root / "runtime", {"temperatures": TEMPERATURES})
    folded = replace(request, temperatures=TEMPERATURES)
    export.export_bundle(folded, root / "graph", probe=probe)
    _set_serving(root / "graph", split_temperatures({"temperatures": TEMPERATURES},
                                                    set(TEMPERATURES)))  # fmt: skip
    x = np.asarray(data.x_test[:150], dtype=np.float32)
    return root / "runtime", root / "graph", x


def test_the_manifest_moves_the_temperatures_it_built_in(pair):
    _, graph, _ = pair
    serving = load_manifest(graph).serving
    # THEN the runtime finds nothing to apply, and the fitted values are kept as a record
    assert serving["temperatures"] == {}
    assert serving["temperatures_in_graph"] == TEMPERATURES
    executor = ProgressiveExecutor(Bundle.load(graph), "edge")
    assert dict(executor.scorer.temperatures) == {}


def test_heads_output_the_probabilities_the_runtime_computed(pair):
    runtime, graph, x = pair
    # WHEN both bundles trace the same inputs (the runtime one scales in Python)
    ours = ProgressiveExecutor(Bundle.load(runtime), "edge").trace(x)
    theirs = ProgressiveExecutor(Bundle.load(graph), "edge").trace(x)
    # THEN every exit's calibrated probabilities agree to float32 rounding
    assert ours.exits == theirs.exits == tuple(TEMPERATURES)
    uncalibrated = ProgressiveExecutor(Bundle.load(runtime), "edge")
    uncalibrated.scorer = ExitScorer()
    raw = uncalibrated.trace(x)
    for name in ours.exits:
        np.testing.assert_allclose(theirs.probs[name], ours.probs[name], atol=CONF_TOL, rtol=0)
        # AND the temperature did change them (sharper or softer than the raw softmax)
        assert np.abs(raw.probs[name] - ours.probs[name]).max() > 0.01


@pytest.mark.parametrize("threshold", [0.2, 0.6, 0.9])
def test_served_answers_are_the_same(pair, threshold):
    runtime, graph, x = pair
    stages = {}
    for path in (runtime, graph):
        bundle = Bundle.load(path)
        stages[path] = [ProgressiveExecutor(bundle, s) for s in bundle.stages]

    def answers(path, rows):
        edge, cloud = stages[path]
        result = edge.run(rows, threshold)
        done = list(result.answers)
        if len(result.pending):
            later = cloud.run(result.boundary, threshold, trusted=True)
            for j, row in enumerate(result.pending.tolist()):
                done[row] = later.answers[j]
        return done

    compared = near = 0
    for rows in (x, *[x[i : i + 1] for i in range(len(x))]):  # the batch, then row by row
        for a, b in zip(answers(runtime, rows), answers(graph, rows)):
            if abs(a.confidence - threshold) < CONF_TOL or abs(b.confidence - threshold) < CONF_TOL:
                near += 1  # float32 rounding may put this one on either side of the threshold
                continue
            compared += 1
            assert (a.label, a.exit, a.stage) == (b.label, b.exit, b.stage)
            assert b.confidence == pytest.approx(a.confidence, abs=CONF_TOL)
    assert compared == 2 * len(x) - near and near <= 4
    exits = {a.exit for a in answers(graph, x)}  # the comparison covered edge and cloud exits
    assert exits >= ({"exit_1", "exit_2"} if threshold < 0.5 else {"final"})


def test_a_head_that_is_not_a_softmax_stays_with_the_runtime():
    # GIVEN probabilities from a sigmoid head and from a softmax layer
    inputs = keras.Input((6,))
    sigmoid = keras.layers.Dense(3, activation="sigmoid", name="odd")(inputs)
    softmax = keras.layers.Softmax(name="sm")(keras.layers.Dense(3, name="z")(inputs))
    # THEN the sigmoid cannot carry a temperature, the softmax can
    with pytest.raises(BundleError, match="Leave it to the runtime"):
        export.calibrated_probs(sigmoid, 0.5, "odd")
    calibrated = export.calibrated_probs(softmax, 0.5, "sm")
    model = keras.Model(inputs, {"raw": softmax, "calibrated": calibrated})
    out = model(np.random.default_rng(0).normal(size=(5, 6)).astype(np.float32))
    logp = np.log(np.asarray(out["raw"], dtype=np.float64)) / 0.5
    want = np.exp(logp - logp.max(axis=1, keepdims=True))
    want /= want.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(np.asarray(out["calibrated"]), want, atol=1e-6)
