"""The objects of the synthetic scene set (labelled synthetic): coloured shapes on a plain light background.

A :class:`Scene` is a tuple of :class:`SceneObject`\\ s, each a shape of :data:`SHAPES` in a colour of :data:`COLORS`
with its bounding-box centre ``(cx, cy)`` normalised to the image's width and height and its side ``size``
normalised to the image's shorter side. So one scene renders at any (H, W), non-square aspect ratios included, and
two objects that do not overlap in the unit square (their boxes separated along x or y) do not overlap at any aspect
ratio: stretching one axis only moves them further apart relative to their sizes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["BACKGROUND", "COLORS", "SHAPES", "Scene", "SceneObject", "render_scene"]

SHAPES = ("circle", "square", "triangle")

#: colour name -> RGB; hues 0, 29, 52, 134, 224, 276 degrees, so a hue classifier separates them with wide margins
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 130, 20),
    "yellow": (235, 205, 20),
    "green": (30, 160, 60),
    "blue": (30, 80, 220),
    "purple": (140, 50, 200),
}

#: a neutral grey (r = g = b): blending an object's edge with it keeps the object's hue exactly
BACKGROUND = (245, 245, 245)

_SUPERSAMPLE = 4  # render at 4x and box-filter down: mild anti-aliasing


@dataclass(frozen=True)
class SceneObject:
    """One shape of a scene.

    Args:
        shape: one of :data:`SHAPES`; squares are axis-aligned, triangles point up.
        color: one of :data:`COLORS`.
        cx: bounding-box centre x as a fraction of the image width.
        cy: bounding-box centre y as a fraction of the image height (0 = top).
        size: side of the bounding box as a fraction of the image's shorter side.
    """

    shape: str
    color: str
    cx: float
    cy: float
    size: float

    def __post_init__(self) -> None:
        if self.shape not in SHAPES:
            raise ValueError(f"unknown shape {self.shape!r}; expected one of {SHAPES}")
        if self.color not in COLORS:
            raise ValueError(f"unknown colour {self.color!r}; expected one of {tuple(COLORS)}")
        for k in ("cx", "cy", "size"):  # 4 decimals: readable JSON, and edits (cx + 0.3) stay exact
            object.__setattr__(self, k, round(float(getattr(self, k)), 4))

    def box(self, height: int = 1, width: int = 1) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the bounding box in pixels of an (height, width) image (unit square by default)."""
        half = self.size * min(height, width) / 2
        x, y = self.cx * width, self.cy * height
        return x - half, y - half, x + half, y + half


@dataclass(frozen=True)
class Scene:
    """A set of non-overlapping shapes; the order is the caption's order (the first object is the subject).

    Args:
        objects: the shapes.
    """

    objects: tuple[SceneObject, ...]

    def to_dict(self) -> dict:
        """A JSON-able dict ``{"objects": [{"shape", "color", "cx", "cy", "size"}, ...]}``."""
        return {"objects": [asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> Scene:
        """The inverse of :meth:`to_dict`."""
        return cls(tuple(SceneObject(**o) for o in d["objects"]))

    def count(self, shape: str | None = None, color: str | None = None) -> int:
        """Number of objects of that shape and/or colour."""
        return sum((shape is None or o.shape == shape) and (color is None or o.color == color) for o in self.objects)


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def render_scene(scene: Scene, size: int | tuple[int, int] = 64) -> Image.Image:
    """Draw ``scene`` as an RGB image of ``size`` (an int for square images or (H, W)), mildly anti-aliased."""
    h, w = _hw(size)
    s = _SUPERSAMPLE
    img = Image.new("RGB", (w * s, h * s), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for o in scene.objects:
        x0, y0, x1, y1 = (v * s for v in o.box(h, w))
        fill = COLORS[o.color]
        # PIL's boxes include their last pixel: subtract one so the drawn side is exactly size * s pixels
        if o.shape == "circle":
            draw.ellipse((x0, y0, x1 - 1, y1 - 1), fill=fill)
        elif o.shape == "square":
            draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=fill)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return img.resize((w, h), Image.BOX)
