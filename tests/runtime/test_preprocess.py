"""Input validation and image preprocessing (no bundle needed)."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edgelesspart.errors import InputError
from edgelesspart.runtime import preprocess
from edgelesspart.runtime.manifest import InputSpec, TensorSpec
from edgelesspart.runtime.preprocess import image_to_tensor, validate_input

SPEC = TensorSpec((4, 4, 3))
RGB_INPUT = InputSpec(
    TensorSpec((32, 32, 3)),
    {"height": 32, "width": 32, "channels": 3, "scale": 1 / 255, "offset": 0.0},
)


def _image_bytes(mode: str, size: tuple[int, int], fmt: str, value: int = 255) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color=value if mode == "L" else (value, 0, 0)).save(buffer, format=fmt)
    return buffer.getvalue()


def test_one_sample_gets_a_batch_dimension():
    # GIVEN one sample without the batch dimension
    x = np.ones((4, 4, 3), np.float32)
    # WHEN it is validated
    out = validate_input(x, SPEC)
    # THEN it becomes a batch of one, unchanged
    assert out.shape == (1, 4, 4, 3)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out[0], x)


def test_a_batch_passes_and_other_numeric_dtypes_are_cast():
    # GIVEN batches in float64 and int64
    for dtype in (np.float64, np.int64, np.float16, np.uint8):
        x = np.ones((2, 4, 4, 3), dtype)
        # WHEN validated
        out = validate_input(x, SPEC)
        # THEN they come back float32, C-contiguous, same values
        assert out.dtype == np.float32 and out.flags["C_CONTIGUOUS"]
        np.testing.assert_array_equal(out, np.ones((2, 4, 4, 3), np.float32))


def test_wrong_shape_says_expected_and_got():
    # GIVEN a batch of the wrong spatial size
    x = np.zeros((2, 5, 4, 3), np.float32)
    # WHEN / THEN the error names the expected and received shapes
    with pytest.raises(
        InputError, match=r"Expected .*\(N, 4, 4, 3\) float32.*got shape \(2, 5, 4, 3\)"
    ):
        validate_input(x, SPEC)


def test_wrong_rank_is_refused():
    with pytest.raises(InputError, match=r"got shape \(4, 4\) float32"):
        validate_input(np.zeros((4, 4), np.float32), SPEC)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused_naming_the_sample(bad):
    # GIVEN a batch whose second sample holds a non-finite value
    x = np.zeros((3, 4, 4, 3), np.float32)
    x[1, 0, 0, 0] = bad
    # WHEN / THEN the error names sample 1
    with pytest.raises(InputError, match=r"NaN or Inf .* sample\(s\) \[1\]"):
        validate_input(x, SPEC)


def test_float64_overflowing_float32_is_refused():
    x = np.full((1, 4, 4, 3), 1e300, np.float64)
    with pytest.raises(InputError, match="too large for float32"):
        validate_input(x, SPEC)


@pytest.mark.parametrize("x", [np.zeros((1, 4, 4, 3), bool), np.full((1, 4, 4, 3), "a")])
def test_non_numeric_dtypes_are_refused(x):
    with pytest.raises(InputError, match=r"numeric tensor .* got dtype"):
        validate_input(x, SPEC)


def test_non_arrays_and_empty_batches_are_refused():
    with pytest.raises(InputError, match="numpy array .* got list"):
        validate_input([[1.0]], SPEC)  # type: ignore[arg-type]
    with pytest.raises(InputError, match="empty batch"):
        validate_input(np.zeros((0, 4, 4, 3), np.float32), SPEC)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_image_is_resized_converted_and_scaled(fmt):
    # GIVEN a 64x48 grayscale image (white) and a 32x32 RGB bundle scaling by 1/255
    data = _image_bytes("L", (64, 48), fmt, value=255)
    # WHEN it is preprocessed
    x = image_to_tensor(data, RGB_INPUT)
    # THEN it is a float32 batch of one RGB 32x32 image with values near 1
    assert x.shape == (1, 32, 32, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x, 1.0, atol=0.02)


def test_grayscale_bundle_gets_one_channel_with_offset():
    # GIVEN a bundle taking 8x8x1 inputs mapped to [-1, 1]
    spec = InputSpec(
        TensorSpec((8, 8, 1)),
        {"height": 8, "width": 8, "channels": 1, "scale": 2 / 255, "offset": -1.0},
    )
    # WHEN a black RGB image is preprocessed
    x = image_to_tensor(_image_bytes("RGB", (16, 16), "PNG", value=0), spec)
    # THEN it has one channel and the offset applied
    assert x.shape == (1, 8, 8, 1)
    np.testing.assert_allclose(x, -1.0, atol=1e-6)


def test_not_an_image_is_refused():
    with pytest.raises(InputError, match="Could not decode the request body as a PNG or JPEG"):
        image_to_tensor(b"definitely not an image", RGB_INPUT)


def test_other_image_formats_are_refused():
    with pytest.raises(InputError, match="Expected a PNG or JPEG image, got format 'GIF'"):
        image_to_tensor(_image_bytes("L", (8, 8), "GIF"), RGB_INPUT)


def test_huge_images_are_refused_before_decoding(monkeypatch):
    # GIVEN a pixel limit lower than the image
    monkeypatch.setattr(preprocess, "MAX_IMAGE_PIXELS", 100)
    # WHEN / THEN the image is refused with the limit in the message
    with pytest.raises(InputError, match="larger than the 100-pixel limit"):
        image_to_tensor(_image_bytes("L", (20, 20), "PNG"), RGB_INPUT)


def test_a_bundle_without_image_input_refuses_images():
    spec = InputSpec(TensorSpec((16, 16, 8)), {})
    with pytest.raises(InputError, match="not an image"):
        image_to_tensor(_image_bytes("RGB", (16, 16), "PNG"), spec)


def test_a_ready_batch_comes_back_without_a_copy_and_non_finite_ones_are_still_refused():
    # GIVEN a batch already in the spec's shape, dtype and C order
    x = np.ones((3, 4, 4, 3), np.float32)
    # WHEN validated
    out = validate_input(x, SPEC)
    # THEN it is the same array (the fast path copies nothing)
    assert out is x
    # AND the fast path still refuses NaN/Inf in any sample, with the same message
    for bad in (np.nan, np.inf, -np.inf):
        y = x.copy()
        y[2, 3, 3, 2] = bad
        with pytest.raises(InputError, match=r"NaN or Inf .* sample\(s\) \[2\]"):
            validate_input(y, SPEC)
    # AND large finite values, whose sum of squares overflows float32 (the quick NaN/Inf check
    # is one dot product), still pass: the exact check decides then
    huge = np.full((3, 4, 4, 3), 3e37, np.float32)
    assert validate_input(huge, SPEC) is huge
    # AND a batch larger than the dot product's limit is checked too
    big = np.ones((200, 4, 4, 3), np.float32)
    big[150, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match=r"sample\(s\) \[150\]"):
        validate_input(big, SPEC)
    # AND a non-contiguous or byte-swapped view is copied into a fresh C-contiguous batch
    view = np.ones((3, 4, 4, 6), np.float32)[..., ::2]
    swapped = x.astype(">f4")
    for other in (view, swapped):
        out = validate_input(other, SPEC)
        assert out is not other and out.flags["C_CONTIGUOUS"] and out.dtype == np.float32
        np.testing.assert_array_equal(out, x)


@pytest.mark.parametrize("mode,size", [("RGB", (32, 32)), ("RGBA", (40, 30)), ("P", (32, 32)),
                                       ("L", (32, 32)), ("I;16", (20, 48))])  # fmt: skip
@pytest.mark.parametrize("channels,pre", [(3, {"scale": 1 / 255}),
                                          (1, {"scale": 2 / 255, "offset": -1.0})])  # fmt: skip
def test_image_decoding_equals_convert_resize_and_scale_bit_for_bit(mode, size, channels, pre):
    # GIVEN an image of some mode and size, and a bundle input of 32 x 32 x channels
    rng = np.random.default_rng(7)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 4), dtype=np.uint8), "RGBA")
    image = image.convert(mode)
    buf = io.BytesIO()
    image.save(buf, "PNG")
    spec = InputSpec(TensorSpec((32, 32, channels), "float32"),
                     {"height": 32, "width": 32, "channels": channels, **pre})  # fmt: skip
    # WHEN it is decoded (conversion and resize are skipped where they would be copies)
    got = image_to_tensor(buf.getvalue(), spec)
    # THEN the values are exactly those of convert + bilinear resize + pixel * scale + offset
    ref = Image.open(io.BytesIO(buf.getvalue())).convert("L" if channels == 1 else "RGB")
    ref = np.asarray(ref.resize((32, 32), Image.Resampling.BILINEAR), dtype=np.float32)
    ref = ref.reshape(1, 32, 32, channels) * pre["scale"] + pre.get("offset", 0.0)
    assert got.dtype == np.float32 and got.shape == (1, 32, 32, channels)
    assert np.array_equal(got, ref)
