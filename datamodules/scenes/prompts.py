"""GenEval's six prompt categories over the synthetic shapes, the held-out prompt split, and scene sampling.

Every category has a finite set of prompts in GenEval's phrasing (:func:`prompts`), e.g.

- ``single_object``: "a photo of a circle"
- ``two_object``: "a photo of a circle and a square"
- ``counting``: "a photo of three squares" (2-4 objects of one shape, colours unnamed)
- ``colors``: "a photo of a red circle"
- ``position``: "a photo of a circle left of a square" (left of / right of / above / below)
- ``color_attr``: "a photo of a red circle and a blue square" (two shapes, two colours)

**Held-out prompts.** Each category's prompts are partitioned once, by a fixed shuffle (:data:`PROMPT_SPLIT_SEED`),
into disjoint train / val / test sets (about 70 / 10 / 20 %, at least one prompt in each): a test prompt never
occurs in training, so the test scores measure composition, not memorised captions. :func:`sample_scene` draws a
prompt (of one split when asked) and then a scene that realises it exactly.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .scene import COLORS, SHAPES, Scene, SceneObject

__all__ = ["CATEGORIES", "COUNTS", "POSITION_MARGIN", "PROMPT_SPLIT_SEED", "RELATIONS", "PromptSpec", "SIZE_RANGE",
           "as_rng", "caption", "fits", "parse_prompt", "place", "prompt_split", "prompts", "relations", "sample_scene",
           "scene_for_prompt"]

CATEGORIES = ("single_object", "two_object", "counting", "colors", "position", "color_attr")
COUNTS = {2: "two", 3: "three", 4: "four"}
RELATIONS = ("left of", "right of", "above", "below")
#: a relation holds when the centres differ by at least this much along its axis (fractions of width / height)
POSITION_MARGIN = 0.1
PROMPT_SPLIT_SEED = 19_21
_SPLIT_FRACTIONS = {"test": 0.2, "val": 0.1}

# sampling geometry, in the normalised units of :class:`SceneObject`
SIZE_RANGE = (0.15, 0.28)
_GAP = 0.04  # free space between two boxes
_PAD = 0.02  # free space between a box and the image border
_ORTHO = 0.04  # position scenes: largest offset across the relation's axis (< POSITION_MARGIN: one relation holds)


@dataclass(frozen=True)
class PromptSpec:
    """What a prompt asks for.

    Args:
        category: one of :data:`CATEGORIES`.
        objects: (shape, colour or None) in the prompt's order.
        count: how many of the (single) shape, for ``counting``; 1 otherwise.
        relation: the first object's relation to the second, for ``position``.
    """

    category: str
    objects: tuple[tuple[str, str | None], ...]
    count: int = 1
    relation: str | None = None


def as_rng(rng: int | np.random.Generator) -> np.random.Generator:
    """A numpy Generator from a seed or a Generator (returned as is)."""
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _noun(shape: str, color: str | None) -> str:
    return _a(f"{color} {shape}" if color else shape)


def _text(spec: PromptSpec) -> str:
    (s1, c1), *rest = spec.objects
    if spec.category == "counting":
        return f"a photo of {COUNTS[spec.count]} {s1}s"
    if spec.category == "position":
        return f"a photo of {_noun(s1, None)} {spec.relation} {_noun(rest[0][0], None)}"
    return "a photo of " + " and ".join(_noun(s, c) for s, c in spec.objects)


def _specs(category: str) -> list[PromptSpec]:
    pairs = [(a, b) for a in SHAPES for b in SHAPES if a != b]
    if category == "single_object":
        return [PromptSpec(category, ((s, None),)) for s in SHAPES]
    if category == "two_object":
        return [PromptSpec(category, ((a, None), (b, None))) for a, b in pairs]
    if category == "counting":
        return [PromptSpec(category, ((s, None),), count=n) for s in SHAPES for n in COUNTS]
    if category == "colors":
        return [PromptSpec(category, ((s, c),)) for s in SHAPES for c in COLORS]
    if category == "position":
        return [PromptSpec(category, ((a, None), (b, None)), relation=r) for a, b in pairs for r in RELATIONS]
    if category == "color_attr":
        return [PromptSpec(category, ((a, c1), (b, c2))) for a, b in pairs for c1 in COLORS for c2 in COLORS
                if c1 != c2]
    raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")


@functools.cache
def _table() -> tuple[dict[str, PromptSpec], dict[str, str]]:
    """prompt -> spec, and prompt -> split (the fixed held-out partition)."""
    specs: dict[str, PromptSpec] = {}
    split: dict[str, str] = {}
    for i, category in enumerate(CATEGORIES):
        texts = sorted(_text(s) for s in _specs(category))
        specs.update({_text(s): s for s in _specs(category)})
        order = np.random.default_rng([PROMPT_SPLIT_SEED, i]).permutation(len(texts))
        n_test, n_val = (max(1, round(f * len(texts))) for f in _SPLIT_FRACTIONS.values())
        for rank, j in enumerate(order):
            split[texts[j]] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    return specs, split


def prompts(category: str, split: str | None = None) -> tuple[str, ...]:
    """The prompts of ``category`` (sorted), all or those of one split (``"train"``, ``"val"``, ``"test"``)."""
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if split not in (None, "train", "val", "test"):
        raise ValueError(f"unknown split {split!r}; expected 'train', 'val' or 'test'")
    specs, splits = _table()
    return tuple(sorted(p for p, s in specs.items() if s.category == category and split in (None, splits[p])))


def parse_prompt(prompt: str) -> PromptSpec:
    """The :class:`PromptSpec` of one of the set's prompts (exact text, as :func:`prompts` lists them)."""
    try:
        return _table()[0][prompt.strip()]
    except KeyError:
        raise ValueError(f"not a prompt of the scene set: {prompt!r} (see datamodules.scenes.prompts())") from None


def prompt_split(prompt: str) -> str:
    """The split (``"train"``, ``"val"`` or ``"test"``) that owns ``prompt``."""
    parse_prompt(prompt)
    return _table()[1][prompt.strip()]


def relations(a, b, margin: float = POSITION_MARGIN) -> set[str]:
    """The relations of ``a`` to ``b`` (anything with normalised ``cx``, ``cy``) that hold by at least ``margin``."""
    dx, dy = b.cx - a.cx, b.cy - a.cy
    return {r for r, ok in (("left of", dx >= margin), ("right of", -dx >= margin), ("above", dy >= margin),
                            ("below", -dy >= margin)) if ok}


def caption(scene: Scene, category: str) -> str:
    """The exact prompt of ``category`` that ``scene`` realises (the inverse of :func:`scene_for_prompt`).

    Raises:
        ValueError: the scene does not fit the category (wrong number of objects, repeated shapes where they must
            differ, an ambiguous relation).
    """
    objs = scene.objects
    shapes = [o.shape for o in objs]
    n = {"single_object": 1, "colors": 1, "two_object": 2, "position": 2, "color_attr": 2}.get(category)
    if category == "counting":
        if len(objs) not in COUNTS or len(set(shapes)) != 1:
            raise ValueError(f"a counting scene has 2-4 objects of one shape, got {shapes}")
        return _text(PromptSpec(category, ((shapes[0], None),), count=len(objs)))
    if n is None:
        raise ValueError(f"unknown category {category!r}; expected one of {CATEGORIES}")
    if len(objs) != n or len(set(shapes)) != n:
        raise ValueError(f"a {category} scene has {n} object(s) of different shapes, got {shapes}")
    if category == "position":
        rel = relations(objs[0], objs[1])
        if len(rel) != 1:
            raise ValueError(f"ambiguous position scene: relations {sorted(rel)}")
        return _text(PromptSpec(category, ((shapes[0], None), (shapes[1], None)), relation=rel.pop()))
    named = category in ("colors", "color_attr")
    if category == "color_attr" and objs[0].color == objs[1].color:
        raise ValueError("a color_attr scene has two different colours")
    return _text(PromptSpec(category, tuple((o.shape, o.color if named else None) for o in objs)))


def _separate(a: SceneObject, b: SceneObject) -> bool:
    """Boxes apart by at least the gap along x or y (in the unit square, hence at every aspect ratio)."""
    reach = (a.size + b.size) / 2 + _GAP
    return abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach


def _inside(o: SceneObject) -> bool:
    lo, hi = o.size / 2 + _PAD, 1 - o.size / 2 - _PAD
    return lo <= o.cx <= hi and lo <= o.cy <= hi


def fits(o: SceneObject, others: tuple[SceneObject, ...] = ()) -> bool:
    """``o`` lies inside the image (with a small border) and clear of every one of ``others``."""
    return _inside(o) and all(_separate(o, p) for p in others)


def place(rng: np.random.Generator, items: list[tuple[str, str]], others: tuple[SceneObject, ...] = (),
          tries: int = 10_000) -> tuple[SceneObject, ...]:
    """Random non-overlapping objects for (shape, colour) ``items``, also clear of ``others``."""
    for _ in range(tries):
        placed: list[SceneObject] = []
        for shape, color in items:
            s = float(rng.uniform(*SIZE_RANGE))
            lo, hi = s / 2 + _PAD, 1 - s / 2 - _PAD
            for _ in range(100):
                o = SceneObject(shape, color, float(rng.uniform(lo, hi)), float(rng.uniform(lo, hi)), s)
                if all(_separate(o, p) for p in (*others, *placed)):
                    placed.append(o)
                    break
            else:
                break
        else:
            return tuple(placed)
    raise RuntimeError(f"could not place {items} beside {len(others)} objects")


def _place_pair(rng: np.random.Generator, a: tuple[str, str], b: tuple[str, str], relation: str) -> tuple:
    """Two objects with ``relation`` of a to b by a wide margin along its axis and a small one across it."""
    axis, sign = {"left of": (0, 1), "right of": (0, -1), "above": (1, 1), "below": (1, -1)}[relation]
    while True:
        sa, sb = (float(v) for v in rng.uniform(*SIZE_RANGE, size=2))
        pa = rng.uniform(sa / 2 + _PAD, 1 - sa / 2 - _PAD, size=2)
        d = rng.uniform(max(2.5 * POSITION_MARGIN, (sa + sb) / 2 + _GAP), 0.75)
        pb = pa.copy()
        pb[axis] += sign * d
        pb[1 - axis] += rng.uniform(-_ORTHO, _ORTHO)
        oa = SceneObject(*a, float(pa[0]), float(pa[1]), sa)
        ob = SceneObject(*b, float(pb[0]), float(pb[1]), sb)
        if _inside(oa) and _inside(ob) and _separate(oa, ob):
            return oa, ob


def scene_for_prompt(rng: int | np.random.Generator, prompt: str) -> Scene:
    """A random scene that realises ``prompt`` exactly (unnamed colours drawn at random)."""
    rng = as_rng(rng)
    spec = parse_prompt(prompt)
    colors = list(COLORS)
    named = spec.objects * spec.count  # counting: one shape, repeated
    items = [(s, c or colors[rng.integers(len(colors))]) for s, c in named]
    if spec.category == "position":
        return Scene(_place_pair(rng, items[0], items[1], spec.relation))
    return Scene(place(rng, items))


def sample_scene(rng: int | np.random.Generator, category: str, split: str | None = None) -> tuple[Scene, str]:
    """A random scene of ``category`` and its exact prompt; the prompt is drawn from one split's prompts if given."""
    rng = as_rng(rng)
    choices = prompts(category, split)
    prompt = choices[rng.integers(len(choices))]
    scene = scene_for_prompt(rng, prompt)
    assert caption(scene, category) == prompt, (prompt, scene)
    return scene, prompt
