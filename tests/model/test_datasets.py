"""Tests for dataset loading and splitting (edgelesspart.model.datasets)."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest
from PIL import Image

from edgelesspart.errors import DatasetError
from edgelesspart.model import datasets
from edgelesspart.model.datasets import Dataset, load_dataset

DIGITS_TOTAL = 1797


@pytest.fixture(scope="module")
def digits() -> Dataset:
    """The default dataset, seed 0."""
    return load_dataset("digits", seed=0)


def _write_npz(path, **arrays) -> str:
    np.savez(path, **arrays)
    return str(path)


@pytest.fixture
def npz_arrays() -> dict[str, np.ndarray]:
    """A small valid grayscale uint8 dataset: 3 classes, 30 train and 9 test images."""
    rng = np.random.default_rng(0)
    return {
        "x_train": rng.integers(0, 256, (30, 6, 6), dtype=np.uint8),
        "y_train": np.tile(np.arange(3), 10),
        "x_test": rng.integers(0, 256, (9, 6, 6), dtype=np.uint8),
        "y_test": np.tile(np.arange(3), 3).reshape(9, 1),
        "classes": np.array(["cat", "dog", "fox"]),
    }


@pytest.fixture
def image_folder(tmp_path):
    """Two classes of tiny solid-colour PNGs (red, blue) plus one JPEG, 6 images each."""
    root = tmp_path / "shapes"
    for name, colour in (("blue", (0, 0, 255)), ("red", (255, 0, 0))):
        (root / name).mkdir(parents=True)
        for i in range(5):
            Image.new("RGB", (12 + i, 10), colour).save(root / name / f"{i}.png")
        Image.new("RGB", (9, 9), colour).save(root / name / "extra.jpg", quality=95)
        (root / name / "notes.txt").write_text("ignored")
    return root


def test_digits_shapes_ranges_and_preprocessing(digits):
    # GIVEN the default dataset
    # WHEN its splits are inspected
    sizes = [len(digits.x_train), len(digits.x_val), len(digits.x_test)]
    # THEN it is 32x32 RGB float32 in [0, 1] with int labels, split ~70/10/20
    assert digits.name == "digits"
    assert digits.input_shape == (32, 32, 3) and digits.num_classes == 10
    assert digits.classes == tuple(str(i) for i in range(10))
    for x, y in ((digits.x_train, digits.y_train), (digits.x_test, digits.y_test)):
        assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0
        assert np.issubdtype(y.dtype, np.integer) and len(x) == len(y)
    assert sum(sizes) == DIGITS_TOTAL
    assert abs(sizes[1] - 0.1 * DIGITS_TOTAL) < 10 and abs(sizes[2] - 0.2 * DIGITS_TOTAL) < 10
    assert digits.preprocessing == {
        "height": 32, "width": 32, "channels": 3, "scale": 1 / 255, "offset": 0.0,
    }  # fmt: skip
    np.testing.assert_array_equal(digits.x_train[..., 0], digits.x_train[..., 2])


def test_digits_split_is_seeded(digits):
    # GIVEN the same seed twice and another seed
    again = load_dataset("digits", seed=0)
    other = load_dataset("digits", seed=1)
    # WHEN the splits are compared
    # THEN the same seed gives the same split and another seed a different one
    np.testing.assert_array_equal(again.x_test, digits.x_test)
    np.testing.assert_array_equal(again.y_train, digits.y_train)
    assert not np.array_equal(other.y_test, digits.y_test)
    assert not np.array_equal(other.x_val, digits.x_val)


def test_digits_split_is_stratified(digits):
    # GIVEN the class shares of the whole dataset
    everything = np.concatenate([digits.y_train, digits.y_val, digits.y_test])
    overall = np.bincount(everything) / len(everything)
    # WHEN each split's class shares are computed
    for labels in (digits.y_train, digits.y_val, digits.y_test):
        shares = np.bincount(labels, minlength=10) / len(labels)
        # THEN every class keeps (about) its overall share in every split
        np.testing.assert_allclose(shares, overall, atol=0.01)


def test_digits_limit_and_image_size():
    # GIVEN a cap of 20 samples per split and 16x16 inputs
    # WHEN loading digits
    small = load_dataset("digits", limit=20, image_size=16)
    # THEN every split holds 20 samples of the requested size
    assert [len(small.x_train), len(small.x_val), len(small.x_test)] == [20, 20, 20]
    assert small.input_shape == (16, 16, 3)
    assert small.preprocessing["height"] == small.preprocessing["width"] == 16


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_fraction": 1.5}, r"val_fraction must be in \[0, 1\), got 1.5"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, r"val_fraction \+ test_fraction must be"),
        ({"limit": 0}, r"limit must be a positive integer"),
        ({"image_size": -3}, r"image_size must be a positive integer"),
    ],
)
def test_bad_options_are_refused(options, message):
    # GIVEN an impossible option
    # WHEN loading
    # THEN the error names it and the accepted values
    with pytest.raises(DatasetError, match=message):
        load_dataset("digits", **options)


def test_unknown_spec_lists_the_options():
    # GIVEN a name that is neither built in nor a path
    # WHEN loading it
    # THEN the error lists what is accepted
    with pytest.raises(
        DatasetError, match=r"Unknown dataset 'mnist'.*digits, digits-hard, cifar10.*\.npz"
    ):
        load_dataset("mnist")


def test_npz_round_trip(tmp_path, npz_arrays):
    # GIVEN an .npz of uint8 grayscale images, (N,) and (N, 1) labels and class names
    path = _write_npz(tmp_path / "pets.npz", **npz_arrays)
    # WHEN loading it
    data = load_dataset(path, val_fraction=0.2, seed=4)
    # THEN the images are scaled to [0, 1] with one channel, test is kept and val is carved
    assert data.name == "pets" and data.classes == ("cat", "dog", "fox")
    assert data.input_shape == (6, 6, 1) and data.preprocessing["channels"] == 1
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (24, 6, 9)
    np.testing.assert_allclose(data.x_test[..., 0], npz_arrays["x_test"] / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(data.y_test, np.tile(np.arange(3), 3))
    assert np.bincount(data.y_val).tolist() == [2, 2, 2]
    train_and_val = np.concatenate([data.x_train, data.x_val])[..., 0]
    as_bytes = np.round(train_and_val * 255).astype(np.uint8)
    assert sorted(map(bytes, as_bytes)) == sorted(map(bytes, npz_arrays["x_train"]))


def test_npz_float_rgb_images_are_kept(tmp_path, npz_arrays):
    # GIVEN float RGB images already in [0, 1] and no class names
    x = np.random.default_rng(1).random((30, 5, 5, 3)).astype(np.float32)
    arrays = {**npz_arrays, "x_train": x, "x_test": x[:9]}
    del arrays["classes"]
    # WHEN loading
    data = load_dataset(_write_npz(tmp_path / "f.npz", **arrays), limit=4)
    # THEN values are unchanged and classes default to the label numbers
    assert data.classes == ("0", "1", "2") and data.input_shape == (5, 5, 3)
    np.testing.assert_array_equal(data.x_test, x[:4])


def test_npz_images_are_resized_on_request(tmp_path, npz_arrays):
    # GIVEN 6x6 uint8 grayscale images and 5x5 float RGB images
    uint8_path = _write_npz(tmp_path / "u.npz", **npz_arrays)
    x = np.random.default_rng(2).random((30, 5, 5, 3)).astype(np.float32)
    float_path = _write_npz(tmp_path / "f.npz", **{**npz_arrays, "x_train": x, "x_test": x[:9]})
    # WHEN loading both at image_size=10
    grey = load_dataset(uint8_path, image_size=10)
    rgb = load_dataset(float_path, image_size=10)
    # THEN both are resized bilinearly, keeping channels and the [0, 1] range
    assert grey.input_shape == (10, 10, 1) and rgb.input_shape == (10, 10, 3)
    assert grey.preprocessing["height"] == rgb.preprocessing["width"] == 10
    for data in (grey, rgb):
        assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0
    np.testing.assert_allclose(rgb.x_test.mean(axis=(1, 2)), x[:9].mean(axis=(1, 2)), atol=0.05)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"y_test": None}, r"lacks y_test .*needs x_train, y_train, x_test, y_test"),
        ({"y_train": np.zeros(29, np.int64)}, r"y_train has shape \(29,\) but there are 30"),
        ({"x_test": np.zeros((9, 7, 7), np.uint8)}, r"x_train images are \(6, 6, 1\) but x_test"),
        ({"x_train": np.full((30, 6, 6), 2.0)}, r"float x_train must be in \[0, 1\]"),
        ({"y_train": np.full(30, 0.5)}, r"non-negative integer class indices"),
        ({"classes": np.array(["a", "b"])}, r"at least 3 names"),
    ],
)
def test_bad_npz_is_refused(tmp_path, npz_arrays, change, message):
    # GIVEN an .npz with one thing wrong
    arrays = {key: value for key, value in {**npz_arrays, **change}.items() if value is not None}
    path = _write_npz(tmp_path / "bad.npz", **arrays)
    # WHEN loading it
    # THEN the error says what is wrong
    with pytest.raises(DatasetError, match=message):
        load_dataset(path)


def test_npz_object_arrays_are_refused_not_unpickled(tmp_path, npz_arrays):
    # GIVEN an .npz whose labels are a pickled object array
    objects = np.array([{"label": i} for i in range(30)], dtype=object)
    path = _write_npz(tmp_path / "pickled.npz", **{**npz_arrays, "y_train": objects})
    # WHEN loading it
    # THEN it is refused without unpickling, with the fix
    with pytest.raises(DatasetError, match=r"without pickle.*object arrays are refused"):
        load_dataset(path)


def test_missing_npz_file(tmp_path):
    # GIVEN a path to an .npz that does not exist
    # WHEN loading it
    # THEN the error says so
    with pytest.raises(DatasetError, match=r"Dataset file not found: .*nothing.npz"):
        load_dataset(str(tmp_path / "nothing.npz"))


def test_image_folder(image_folder):
    # GIVEN a folder with red/ and blue/ subfolders of PNG and JPEG images
    # WHEN loading it as 8x8 images
    data = load_dataset(str(image_folder), image_size=8, val_fraction=0.2, test_fraction=0.2)
    # THEN classes are the sorted folder names and each label matches its images' colour
    assert data.name == "shapes" and data.classes == ("blue", "red")
    assert data.input_shape == (8, 8, 3) and data.preprocessing["height"] == 8
    assert [len(data.y_train), len(data.y_val), len(data.y_test)] == [8, 2, 2]
    for x, y in ((data.x_train, data.y_train), (data.x_test, data.y_test)):
        red_dominant = x[..., 0].mean(axis=(1, 2)) > x[..., 2].mean(axis=(1, 2))
        np.testing.assert_array_equal(red_dominant, y == 1)
    assert data.x_train.max() == pytest.approx(1.0, abs=0.02)


def test_image_folder_errors(tmp_path, image_folder):
    # GIVEN a folder with one class, and a class folder holding a broken PNG
    single = tmp_path / "single"
    (single / "only").mkdir(parents=True)
    (image_folder / "red" / "broken.png").write_bytes(b"not a png")
    # WHEN loading them
    # THEN each error names the problem
    with pytest.raises(DatasetError, match=r"has 1 class subfolder\(s\); expected one subfolder"):
        load_dataset(str(single))
    with pytest.raises(DatasetError, match=r"Could not read image .*broken.png"):
        load_dataset(str(image_folder))


def test_cifar10_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    # GIVEN an empty Keras cache and no network (every connection fails at once)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", no_network)
    keras = pytest.importorskip("keras")
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", pytest.fail)
    # WHEN loading cifar10
    start = time.monotonic()
    with pytest.raises(DatasetError) as caught:
        load_dataset("cifar10")
    # THEN it fails quickly, without trying the loader, and says how to provide the data
    assert time.monotonic() - start < 5.0
    message = str(caught.value)
    assert "cifar-10-python.tar.gz" in message and ".npz" in message
    assert str(tmp_path / "datasets" / "cifar-10-batches-py-target_archive") in message


def test_cifar10_cached_but_broken_archive_is_a_dataset_error(tmp_path, monkeypatch):
    # GIVEN a cached archive that the Keras loader cannot read
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "cifar-10-batches-py-target_archive").write_bytes(b"truncated")
    keras = pytest.importorskip("keras")

    def broken_loader():
        raise ValueError("Incomplete or corrupted file detected.")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", broken_loader)
    # WHEN loading cifar10
    # THEN the loader's error is wrapped with the instructions
    with pytest.raises(DatasetError, match=r"ValueError: Incomplete or corrupted.*\.npz"):
        load_dataset("cifar10")


def test_cifar10_from_cache_uses_its_split_and_carves_validation(tmp_path, monkeypatch):
    # GIVEN a cached CIFAR-10 (a small stand-in returned by the Keras loader)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    (tmp_path / "datasets").mkdir()
    (tmp_path / "datasets" / "cifar-10-batches-py-target_archive").write_bytes(b"cached")
    keras = pytest.importorskip("keras")
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8)
    y_train = np.tile(np.arange(10, dtype=np.uint8), 10).reshape(100, 1)
    x_test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y_test = np.tile(np.arange(10, dtype=np.uint8), 2).reshape(20, 1)
    monkeypatch.setattr(
        keras.datasets.cifar10, "load_data", lambda: ((x_train, y_train), (x_test, y_test))
    )
    # WHEN loading cifar10 with a 20 % validation share
    data = load_dataset("cifar10", val_fraction=0.2, seed=7)
    # THEN CIFAR's test split is kept, validation comes out of train, values are in [0, 1]
    assert data.classes == datasets.CIFAR10_CLASSES and data.input_shape == (32, 32, 3)
    assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (80, 20, 20)
    np.testing.assert_allclose(data.x_test, x_test / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(np.bincount(data.y_val), np.full(10, 2))
