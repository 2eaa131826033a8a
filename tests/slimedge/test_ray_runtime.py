"""SlimEdge on a real local Ray instance: a device is lost mid-stream, no request is lost."""

from __future__ import annotations

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("keras")
pytestmark = [pytest.mark.needs_tf, pytest.mark.integration]

from edgelesspart.model.litert import to_tflite  # noqa: E402
from edgelesspart.pruning import prune_model  # noqa: E402
from edgelesspart.slimedge.model import build_backbone, build_fusion  # noqa: E402
from edgelesspart.slimedge.ray_runtime import (  # noqa: E402
    AggregatorImpl,
    SlimEdgeService,
    ViewWorkerImpl,
    nearest_ratio,
)

VIEWS, CLASSES, FEATURES, SHAPE = 3, 4, 8, (10, 10, 1)


@pytest.fixture(scope="module")
def ray_local():
    from edgelesspart.pipeline import raykit

    session = raykit.connect("local", num_cpus=2)  # private: own temp dir, loopback
    yield
    raykit.disconnect(session)


@pytest.fixture(scope="module")
def segments():
    """Per view an unpruned and a half-pruned backbone (LiteRT), and the fusion head.

    The views share one backbone's weights (three LiteRT conversions instead of seven keep the
    test short); each device still holds and swaps its own copy.
    """
    import keras

    keras.utils.set_random_seed(0)
    backbone = build_backbone(SHAPE, widths=(4, 8), features=FEATURES, name="bb")
    full, half = to_tflite(backbone), to_tflite(prune_model(backbone, 0.5).model)
    library = {(v, r): b for v in range(VIEWS) for r, b in ((0.0, full), (0.5, half))}
    fusion = to_tflite(build_fusion(VIEWS, CLASSES, features=FEATURES))
    return library, fusion


def local_answer(library, fusion, ratios, present, views):
    feats = [
        ViewWorkerImpl(v, library[(v, ratios[v])], ratios[v]).features(views[v]) for v in present
    ]
    return AggregatorImpl(fusion, VIEWS).fuse(present, *feats)


def test_device_loss_is_replanned_and_no_request_is_lost(ray_local, segments):
    library, fusion = segments
    rng = np.random.default_rng(0)
    requests = [
        [rng.random((2, *SHAPE), dtype=np.float32) for _ in range(VIEWS)] for _ in range(12)
    ]
    plans = {1: [0.0, 0.0, 0.0]}  # precomputed: after losing view 1, survivors run unpruned
    # GIVEN a deployment on Ray, every device at ratio 0.5
    service = SlimEdgeService(
        library,
        fusion,
        [0.5] * VIEWS,
        lambda alive: plans[({0, 1, 2} - set(alive)).pop()],
        revive=False,  # the lost device stays lost (rejoining is tested on a cluster)
    )
    answers = []
    for i, views in enumerate(requests):
        if i == 4:
            service.kill(1)  # WHEN device 1 dies mid-stream
        answers.append(service.infer(views))
    states = service.states()
    service.close()
    # THEN every request got an answer, fused from the views that answered
    assert len(answers) == len(requests) == service.stats.answered
    for probs in answers:
        assert probs.shape == (2, CLASSES)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert service.stats.lost_devices == [1] and service.stats.degraded_answers >= 1
    np.testing.assert_allclose(
        answers[0], local_answer(library, fusion, [0.5] * 3, [0, 1, 2], requests[0]), atol=1e-5
    )
    # AND the survivors were re-planned and swapped to their new segments without stopping
    record = service.stats.replans[0]
    assert record["alive"] == [0, 2] and record["swapped"] == [0, 2]
    assert [s["ratio"] for s in states] == [0.0, 0.0]
    assert all(s["swaps"] == 1 for s in states)
    np.testing.assert_allclose(
        answers[-1], local_answer(library, fusion, [0.0] * 3, [0, 2], requests[-1]), atol=1e-5
    )


def test_nearest_ratio_never_prunes_more_than_planned(segments):
    library, _ = segments
    assert nearest_ratio(library, 0, 0.49) == 0.0
    assert nearest_ratio(library, 0, 0.5) == 0.5
    assert nearest_ratio(library, 0, 0.8) == 0.5


def test_a_device_that_misses_its_deadlines_is_dropped_and_answers_continue(ray_local, segments):
    library, fusion = segments
    rng = np.random.default_rng(1)
    # GIVEN device 2 emulated 200,000x slower than this host: it never meets the 0.5 s deadline
    service = SlimEdgeService(
        library,
        fusion,
        [0.0] * VIEWS,
        lambda alive: [0.5 if v in alive else 0.0 for v in range(VIEWS)],
        factors=[1.0, 1.0, 200_000.0],
        deadline_s=0.5,
        max_missed=2,
        revive=False,
    )
    answers = [
        service.infer([rng.random((1, *SHAPE), dtype=np.float32) for _ in range(VIEWS)])
        for _ in range(4)
    ]
    # THEN the first two requests are fused from views 0 and 1 while device 2 misses its
    # heartbeats; after the second miss it is lost and the survivors are re-planned
    assert all(a.shape == (1, CLASSES) for a in answers)
    assert service.stats.lost_devices == [2] and service.stats.degraded_answers == 2
    assert service.stats.replans[0]["alive"] == [0, 1]
    assert [s["ratio"] for s in service.states()] == [0.5, 0.5]
    service.close()  # its reaper still waits on device 2's calls: stop it before Ray stops


def test_a_killed_device_rejoins_and_the_views_are_replanned_with_it(ray_local, segments):
    import time

    library, fusion = segments
    rng = np.random.default_rng(2)
    plans = {(0, 1, 2): [0.5] * 3, (0, 2): [0.0, 0.0, 0.0]}
    # GIVEN a deployment that re-creates lost devices (the default) on this one-node Ray
    service = SlimEdgeService(library, fusion, [0.5] * VIEWS, lambda alive: plans[tuple(alive)])
    try:
        views = [rng.random((1, *SHAPE), dtype=np.float32) for _ in range(VIEWS)]
        service.infer(views)
        # WHEN device 1's actor dies and requests keep coming
        service.kill(1)
        end = time.monotonic() + 120
        answers = 0
        while service.alive != [0, 1, 2] or not service.stats.lost_devices:
            assert time.monotonic() < end, "device 1 did not rejoin within 120 s"
            probs = service.infer(views)
            assert probs.shape == (1, CLASSES)
            answers += 1
            time.sleep(0.1)
        # THEN it was lost, answered around, re-created from the owned bytes and re-planned in
        assert service.stats.lost_devices == [1] and service.stats.rejoined_devices == [1]
        assert service.ready() and answers >= 1
        assert service.stats.replans[-1]["rejoined"] == [1]
        assert [s["ratio"] for s in service.states()] == [0.5, 0.5, 0.5]
        np.testing.assert_allclose(
            service.infer(views),
            local_answer(library, fusion, [0.5] * 3, [0, 1, 2], views),
            atol=1e-5,
        )
    finally:
        service.close()
