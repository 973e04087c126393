"""Editing instructions over the synthetic scenes, each with its exact target scene.

Four kinds (:data:`EDIT_KINDS`): ``recolor`` ("make the square green"), ``remove`` ("remove the red circle"),
``add`` ("add a blue triangle at the top left": the new object sits within 0.03 of that quadrant's centre) and
``move`` ("move the circle to the right": by :data:`MOVE_SHIFT` of the width / height). An object is named by its
shape when that is unique in the scene, else by colour and shape when that pair is unique; objects that neither
names are never edited, so every instruction picks out exactly one target.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from .prompts import SIZE_RANGE, as_rng, fits
from .scene import COLORS, SHAPES, Scene, SceneObject

__all__ = ["ADD_ANCHORS", "EDIT_KINDS", "MOVE_SHIFT", "MOVES", "refer", "sample_edit"]

EDIT_KINDS = ("recolor", "remove", "add", "move")
#: how far ``move`` shifts an object (a fraction of the width or height)
MOVE_SHIFT = 0.3
MOVES = {"to the left": (-MOVE_SHIFT, 0.0), "to the right": (MOVE_SHIFT, 0.0), "up": (0.0, -MOVE_SHIFT),
         "down": (0.0, MOVE_SHIFT)}
#: where ``add`` puts the new object (its centre within ``_JITTER`` of the anchor)
ADD_ANCHORS = {"top left": (0.25, 0.25), "top right": (0.75, 0.25), "bottom left": (0.25, 0.75),
               "bottom right": (0.75, 0.75)}
_JITTER = 0.03


def refer(scene: Scene, i: int) -> str | None:
    """The shortest unique name of object ``i`` ("the square", "the red square"), or None if none is unique."""
    o = scene.objects[i]
    if scene.count(o.shape) == 1:
        return f"the {o.shape}"
    if scene.count(o.shape, o.color) == 1:
        return f"the {o.color} {o.shape}"
    return None


def _recolor(scene: Scene, rng: np.random.Generator) -> tuple[str, Scene] | None:
    named = [i for i in range(len(scene.objects)) if refer(scene, i)]
    if not named:
        return None
    i = int(rng.choice(named))
    o = scene.objects[i]
    new = str(rng.choice([c for c in COLORS if c != o.color]))
    objs = list(scene.objects)
    objs[i] = dataclasses.replace(o, color=new)
    return f"make {refer(scene, i)} {new}", Scene(tuple(objs))


def _remove(scene: Scene, rng: np.random.Generator) -> tuple[str, Scene] | None:
    named = [i for i in range(len(scene.objects)) if refer(scene, i)]
    if len(scene.objects) < 2 or not named:
        return None
    i = int(rng.choice(named))
    return f"remove {refer(scene, i)}", Scene(scene.objects[:i] + scene.objects[i + 1:])


def _add(scene: Scene, rng: np.random.Generator) -> tuple[str, Scene] | None:
    shape, color = str(rng.choice(SHAPES)), str(rng.choice(list(COLORS)))
    for where in rng.permutation(list(ADD_ANCHORS)):
        ax, ay = ADD_ANCHORS[str(where)]
        for _ in range(50):
            o = SceneObject(shape, color, ax + float(rng.uniform(-_JITTER, _JITTER)),
                            ay + float(rng.uniform(-_JITTER, _JITTER)), float(rng.uniform(*SIZE_RANGE)))
            if fits(o, scene.objects):
                return f"add a{'n' if color[0] in 'aeiou' else ''} {color} {shape} at the {where}", \
                    Scene(scene.objects + (o,))
    return None


def _move(scene: Scene, rng: np.random.Generator) -> tuple[str, Scene] | None:
    options = [(i, m) for i in range(len(scene.objects)) if refer(scene, i) for m in MOVES]
    for k in rng.permutation(len(options)):
        i, m = options[k]
        o = scene.objects[i]
        dx, dy = MOVES[m]
        moved = dataclasses.replace(o, cx=o.cx + dx, cy=o.cy + dy)
        if fits(moved, scene.objects[:i] + scene.objects[i + 1:]):
            objs = list(scene.objects)
            objs[i] = moved
            return f"move {refer(scene, i)} {m}", Scene(tuple(objs))
    return None


_EDITS = {"recolor": _recolor, "remove": _remove, "add": _add, "move": _move}


def sample_edit(scene: Scene, rng: int | np.random.Generator, kind: str | None = None) -> tuple[str, Scene]:
    """A random instruction for ``scene`` and the exact scene it asks for (of ``kind``, else of a random kind).

    Raises:
        ValueError: no edit of the kind(s) is possible on this scene.
    """
    rng = as_rng(rng)
    kinds = [kind] if kind else [str(k) for k in rng.permutation(EDIT_KINDS)]
    for k in kinds:
        if k not in _EDITS:
            raise ValueError(f"unknown edit kind {k!r}; expected one of {EDIT_KINDS}")
        out = _EDITS[k](scene, rng)
        if out is not None:
            return out
    raise ValueError(f"no {kind or 'edit'} possible on {scene}")
