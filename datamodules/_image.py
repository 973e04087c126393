"""Reading images as 8-bit RGB / L without silent clipping.

``PIL.Image.convert("RGB")`` maps a 16-bit grayscale image (mode ``I;16`` / ``I``) by clipping each value at 255,
so a 16-bit photograph comes out almost white. :func:`open_rgb8` / :func:`to_8bit` scale 16-bit data to 8 bits
instead (``v * 255 / 65535``), and refuse float images outside [0, 1] with a message naming the file.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np
from PIL import Image

_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_8bit(im: Image.Image, mode: str = "RGB", name: Any = None) -> Image.Image:
    """``im`` as an 8-bit image of ``mode`` ('RGB' or 'L'); 16-bit and [0, 1] float data are rescaled, not clipped.

    Args:
        im: an opened PIL image.
        mode: the 8-bit mode wanted.
        name: what to call the image in errors (its path).
    """
    if im.mode in _SIXTEEN_BIT:
        arr = np.asarray(im).astype(np.float64)
        if arr.min() < 0 or arr.max() > 65535:
            raise ValueError(f"{name or 'image'}: mode {im.mode} values in [{arr.min():g}, {arr.max():g}] are not "
                             f"16-bit intensities")
        im = Image.fromarray(np.rint(arr * (255.0 / 65535.0)).astype(np.uint8), mode="L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        if not np.isfinite(arr).all() or arr.min() < 0 or arr.max() > 1:
            raise ValueError(f"{name or 'image'}: a float image must hold finite values in [0, 1] "
                             f"(found [{np.nanmin(arr):g}, {np.nanmax(arr):g}])")
        im = Image.fromarray(np.rint(arr * 255.0).astype(np.uint8), mode="L")
    return im if im.mode == mode else im.convert(mode)


def open_rgb8(path: str | os.PathLike, mode: str = "RGB") -> np.ndarray:
    """The image at ``path`` as a uint8 HWC (RGB) or HW (L) array; errors name the file."""
    try:
        with Image.open(path) as im:
            return np.asarray(to_8bit(im, mode, path))
    except ValueError:
        raise
    except Exception as e:  # noqa: BLE001 - name the file instead of a bare decoder traceback
        raise RuntimeError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
