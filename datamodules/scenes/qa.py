"""Questions with exact single-word answers about a synthetic scene (count, color, shape, position).

- ``count``: "how many circles are there?" (every shape, 0 included) and "how many red objects are there?" (the
  colours present) -> "2"
- ``color``: "what color is the square?" (shapes that occur once) -> "red"
- ``shape``: "what shape is the red object?" (colours that occur once) -> "circle"
- ``position``: "is the circle left or right of the square?" / "is the circle above or below the square?" ->
  "left" / "right" / "above" / "below", asked only when the centres differ by at least ``POSITION_MARGIN`` along
  that axis, for objects named uniquely (:func:`~datamodules.scenes.edits.refer`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .edits import refer
from .prompts import POSITION_MARGIN, as_rng
from .scene import COLORS, SHAPES, Scene

__all__ = ["QA", "QA_KINDS", "questions"]

QA_KINDS = ("count", "color", "shape", "position")


@dataclass(frozen=True)
class QA:
    """One question and its exact answer.

    Args:
        question: the question, lower case, ending in "?".
        answer: one word or number.
        kind: one of :data:`QA_KINDS`.
    """

    question: str
    answer: str
    kind: str


def _all(scene: Scene) -> dict[str, list[QA]]:
    qa: dict[str, list[QA]] = {k: [] for k in QA_KINDS}
    for s in SHAPES:
        qa["count"].append(QA(f"how many {s}s are there?", str(scene.count(s)), "count"))
    for c in COLORS:
        if scene.count(color=c):
            qa["count"].append(QA(f"how many {c} objects are there?", str(scene.count(color=c)), "count"))
    for o in scene.objects:
        if scene.count(o.shape) == 1:
            qa["color"].append(QA(f"what color is the {o.shape}?", o.color, "color"))
        if scene.count(color=o.color) == 1:
            qa["shape"].append(QA(f"what shape is the {o.color} object?", o.shape, "shape"))
    named = [(o, refer(scene, i)) for i, o in enumerate(scene.objects) if refer(scene, i)]
    for a, ra in named:
        for b, rb in named:
            if a is b:
                continue
            dx, dy = b.cx - a.cx, b.cy - a.cy
            if abs(dx) >= POSITION_MARGIN:
                qa["position"].append(QA(f"is {ra} left or right of {rb}?", "left" if dx > 0 else "right",
                                         "position"))
            if abs(dy) >= POSITION_MARGIN:
                qa["position"].append(QA(f"is {ra} above or below {rb}?", "above" if dy > 0 else "below",
                                         "position"))
    return qa


def questions(scene: Scene, rng: int | np.random.Generator, n: int | None = None) -> list[QA]:
    """Questions about ``scene`` in random order, the kinds taking turns (so the first four differ in kind when
    the scene allows); all of them, or the first ``n``."""
    rng = as_rng(rng)
    groups = [[g[i] for i in rng.permutation(len(g))] for k, g in _all(scene).items() if g]
    groups = [groups[i] for i in rng.permutation(len(groups))]
    out = [g[j] for j in range(max(map(len, groups), default=0)) for g in groups if j < len(g)]
    return out if n is None else out[:n]
