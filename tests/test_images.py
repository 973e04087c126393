"""``datamodules._image``: 16-bit and float images are rescaled to 8 bits, never clipped to white."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datamodules._image import open_rgb8, to_8bit


def test_sixteen_bit_png_is_rescaled_not_clipped(tmp_path):
    ramp = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)  # 0 .. 63000
    path = tmp_path / "g16.png"
    Image.fromarray(ramp).save(path)  # PIL writes a 16-bit grayscale PNG
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        clipped = np.asarray(im.convert("RGB"))[..., 0]
    assert (clipped == 255).mean() > 0.9  # what plain PIL does: almost all white
    rgb = open_rgb8(path)
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8
    expected = np.rint(ramp.astype(np.float64) * 255 / 65535).astype(np.uint8)  # independent: the linear map
    np.testing.assert_array_equal(rgb[..., 0], expected)
    np.testing.assert_array_equal(open_rgb8(path, "L"), expected)


def test_eight_bit_images_are_unchanged(tmp_path):
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_array_equal(open_rgb8(tmp_path / "a.png"), arr)


def test_float_images_outside_unit_range_are_refused_by_name():
    im = Image.fromarray(np.full((2, 2), 3.0, dtype=np.float32))
    with pytest.raises(ValueError, match="img.tif"):
        to_8bit(im, name="img.tif")
    ok = to_8bit(Image.fromarray(np.full((2, 2), 0.5, dtype=np.float32)))
    assert np.asarray(ok)[0, 0, 0] == 128


def test_unreadable_file_is_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(RuntimeError, match="broken.jpg"):
        open_rgb8(bad)
