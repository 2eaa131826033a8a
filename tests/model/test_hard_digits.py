"""Tests for the ``digits-hard`` generator: determinism, cache, split by source digit."""

from __future__ import annotations

import numpy as np
import pytest

from edgelesspart.model import datasets, hard_digits

pytest.importorskip("skimage", reason="digits-hard draws its backgrounds from scikit-image")

SOURCES = 24
RENDER = hard_digits.render  # the real renderer, before any test patches it


def test_render_is_deterministic_and_seeded() -> None:
    """Same seed, same pixels (rendered twice from scratch); another seed, other pixels."""
    images, labels, sources = hard_digits.render(limit=SOURCES)
    again, labels_again, sources_again = hard_digits.render(limit=SOURCES)
    assert images.shape == (SOURCES * hard_digits.DEFAULT_VARIANTS, 32, 32, 3)
    assert images.dtype == np.uint8
    np.testing.assert_array_equal(images, again)
    np.testing.assert_array_equal(labels, labels_again)
    np.testing.assert_array_equal(sources, sources_again)
    assert hard_digits.fingerprint(images) == hard_digits.fingerprint(again)
    other, _, _ = hard_digits.render(seed=hard_digits.DEFAULT_GENERATOR_SEED + 1, limit=SOURCES)
    assert not np.array_equal(images, other)
    # the renderings of one digit differ from each other (jitter), and are not blank
    variants = images.reshape(SOURCES, hard_digits.DEFAULT_VARIANTS, -1)
    assert all(not np.array_equal(v[0], v[1]) for v in variants)
    assert images.std() > 20


def test_render_prefix_is_stable() -> None:
    """A sample's pixels depend on its own index only: a shorter render is a prefix."""
    short, _, _ = hard_digits.render(limit=4)
    longer, _, _ = hard_digits.render(limit=SOURCES)
    np.testing.assert_array_equal(short, longer[: len(short)])


def test_cache_round_trip_and_stale_file(tmp_path, monkeypatch) -> None:
    """The cache file is written once, read back bit-identical, and ignored when stale."""
    monkeypatch.setenv("EDGELESSPART_CACHE", str(tmp_path))
    monkeypatch.setattr(hard_digits, "render", lambda seed, variants: _small(seed, variants))
    first = hard_digits.load_rendered(seed=7, variants=2)
    path = hard_digits.cache_path(7, 2)
    assert path.is_file() and path.parent == tmp_path / "datasets"
    monkeypatch.setattr(hard_digits, "render", _fail)
    cached = hard_digits.load_rendered(seed=7, variants=2)
    for a, b in zip(first, cached):
        np.testing.assert_array_equal(a, b)
    path.write_bytes(b"not an npz")  # a corrupt cache file is rendered again, not trusted
    monkeypatch.setattr(hard_digits, "render", lambda seed, variants: _small(seed, variants))
    again = hard_digits.load_rendered(seed=7, variants=2)
    np.testing.assert_array_equal(again[0], first[0])


def _small(seed: int, variants: int):
    return RENDER(seed=seed, variants=variants, limit=6)


def _fail(*_args, **_kwargs):
    raise AssertionError("rendered although the cache holds the file")


def test_load_dataset_splits_by_source_digit(tmp_path, monkeypatch) -> None:
    """load_dataset('digits-hard') is seeded, and no source digit is in two splits."""
    monkeypatch.setenv("EDGELESSPART_CACHE", str(tmp_path))
    sources = 60
    rendered = RENDER(limit=sources)
    monkeypatch.setattr(hard_digits, "load_rendered", lambda: rendered)
    data = datasets.load_dataset("digits-hard", seed=3)
    again = datasets.load_dataset("digits-hard", seed=3)
    np.testing.assert_array_equal(data.x_val, again.x_val)
    np.testing.assert_array_equal(data.y_test, again.y_test)
    assert data.name == "digits-hard" and data.input_shape == (32, 32, 3)
    assert data.num_classes == 10
    total = len(data.x_train) + len(data.x_val) + len(data.x_test)
    assert total == sources * hard_digits.DEFAULT_VARIANTS
    # each rendering is a distinct image; identify its source by matching the full render
    images, _, source_of = rendered
    lookup = {img.tobytes(): int(s) for img, s in zip(images, source_of)}
    owners = {
        split: {
            lookup[np.round(x * 255).astype(np.uint8).tobytes()]
            for x in getattr(data, f"x_{split}")
        }
        for split in ("train", "val", "test")
    }
    assert not owners["train"] & owners["val"]
    assert not owners["train"] & owners["test"]
    assert not owners["val"] & owners["test"]
    other = datasets.load_dataset("digits-hard", seed=4)
    assert not np.array_equal(other.y_val, data.y_val)
