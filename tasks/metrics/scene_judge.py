"""An exact GenEval-style judge for the synthetic scene set (:mod:`datamodules.scenes`), by plain image analysis.

Detection (:func:`detect_objects`): pixels whose chroma (max - min of RGB) is at least ``min_chroma`` are
foreground; each takes the palette colour of the nearest hue (the palette's hues are 23 degrees or more apart, and
blending with the neutral background keeps a hue); each colour's 8-connected components larger than a speck are
objects; an object's shape is the template (inscribed circle, full square, upward triangle) that best overlaps
(IoU) its mask inside its bounding box; its centre is the box centre, normalised like
:class:`~datamodules.scenes.SceneObject`.

Scoring (:func:`judge`) follows GenEval's six categories, the largest detection of a shape standing in for GenEval's
most confident one: ``single_object`` / ``two_object`` - each named shape detected at least once; ``counting`` -
exactly that many of the shape; ``colors`` - the shape's largest detection has the colour; ``position`` - the
largest detections of both shapes stand in the relation (centres apart by ``POSITION_MARGIN`` along its axis);
``color_attr`` - both shapes' largest detections have their colours. Objects the prompt does not name are ignored,
except in counting. GenEval's overall score is the mean of the six category accuracies (:class:`SceneJudgeScore`).

Known limits: it reads this palette on a light, low-chroma background; dull or dark colours (chroma < 60), shading
that crosses a hue boundary, touching same-coloured objects, rotated squares or triangles, and textured backgrounds
are outside what it judges correctly. It is exact on the set's own renders (tested on hundreds of random scenes).
"""
from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from torchmetrics import Metric

from datamodules.scenes import CATEGORIES, COLORS, SHAPES, Scene, caption, parse_prompt, relations

__all__ = ["Detection", "SceneJudgeScore", "detect_objects", "judge", "judge_edit", "judge_spec"]

_HUES = np.array([colorsys.rgb_to_hsv(*(v / 255 for v in rgb))[0] for rgb in COLORS.values()])


@dataclass(frozen=True)
class Detection:
    """One object found in an image.

    Args:
        shape: the best-fitting of :data:`~datamodules.scenes.SHAPES`.
        color: the palette colour of its hue.
        cx: bounding-box centre x as a fraction of the width.
        cy: bounding-box centre y as a fraction of the height.
        area: its pixels as a fraction of the image's pixels.
    """

    shape: str
    color: str
    cx: float
    cy: float
    area: float


def _to_array(image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, an (H, W, 3) array (uint8 or float in [0, 1]) or a (3, H, W) tensor."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if isinstance(image, torch.Tensor):
        image = image.detach().float().cpu()
        image = (image.clamp(0, 1) * 255).round().byte() if image.max() <= 1.0 else image.clamp(0, 255).byte()
        image = image.permute(1, 2, 0).numpy()
    a = np.asarray(image)
    if a.dtype != np.uint8:
        a = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    return a


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    v, u = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    return {"circle": (u - 0.5) ** 2 + (v - 0.5) ** 2 <= 0.25, "square": np.ones((h, w), bool),
            "triangle": np.abs(u - 0.5) <= v / 2}


def _shape(mask: np.ndarray) -> str:
    ious = {s: (mask & t).sum() / (mask | t).sum() for s, t in _templates(*mask.shape).items()}
    return max(SHAPES, key=ious.__getitem__)


def detect_objects(image, min_chroma: float = 60.0, min_size: float = 0.05) -> list[Detection]:
    """The coloured shapes in ``image`` (PIL, array or (3, H, W) tensor), largest first.

    Args:
        image: the image.
        min_chroma: least max - min of a pixel's RGB (0-255) to count as an object pixel.
        min_size: components smaller than half a (min_size x shorter side) square are specks and ignored.
    """
    a = _to_array(image).astype(np.float32)
    h, w = a.shape[:2]
    chroma = a.max(2) - a.min(2)
    fg = chroma >= min_chroma
    hue = np.asarray(Image.fromarray(a.astype(np.uint8)).convert("HSV"))[..., 0] / 255.0
    dist = np.abs(hue[..., None] - _HUES)
    label = np.argmin(np.minimum(dist, 1 - dist), axis=-1)
    min_area = 0.5 * (min_size * min(h, w)) ** 2
    found = []
    for k, color in enumerate(COLORS):
        comps, n = ndimage.label(fg & (label == k), structure=np.ones((3, 3)))
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            mask = comps[sl] == i
            if mask.sum() < min_area:
                continue
            # the shape from the pixels at least half covered (chroma relative to the object's own, so anti-aliased
            # edges count as much as they cover)
            c = chroma[sl] * mask
            core = c >= 0.5 * np.percentile(c[mask], 90)
            ys, xs = ndimage.find_objects(core.astype(np.int8))[0]
            y0, x0 = sl[0].start + ys.start, sl[1].start + xs.start
            found.append(Detection(_shape(core[ys, xs]), color, (2 * x0 + xs.stop - xs.start) / 2 / w,
                                   (2 * y0 + ys.stop - ys.start) / 2 / h, float(core.sum()) / (h * w)))
    return sorted(found, key=lambda d: -d.area)


def judge_spec(detections: Sequence[Detection], spec) -> bool:
    """GenEval's verdict for one prompt (a :class:`~datamodules.scenes.PromptSpec`) on detected objects."""
    by_shape = {s: [d for d in sorted(detections, key=lambda d: -d.area) if d.shape == s] for s in SHAPES}
    if spec.category == "counting":
        return len(by_shape[spec.objects[0][0]]) == spec.count
    top = []
    for shape, color in spec.objects:
        if not by_shape[shape] or (color is not None and by_shape[shape][0].color != color):
            return False
        top.append(by_shape[shape][0])
    return spec.relation is None or spec.relation in relations(top[0], top[1])


def judge(image, scene: Scene | None, category: str, prompt: str | None = None) -> bool:
    """Whether ``image`` shows what the prompt of ``category`` asks (the prompt given, or ``scene``'s caption)."""
    prompt = prompt if prompt is not None else caption(scene, category)
    spec = parse_prompt(prompt)
    if spec.category != category:
        raise ValueError(f"prompt {prompt!r} is of category {spec.category!r}, not {category!r}")
    return judge_spec(detect_objects(image), spec)


def judge_edit(image, target_scene: Scene, pos_tol: float = 0.15) -> bool:
    """Whether ``image`` shows exactly ``target_scene``'s objects: the same (shape, colour) multiset, nothing
    extra, and each object's centre within ``pos_tol`` (fraction of width / height) of its target's."""
    dets = detect_objects(image)
    if len(dets) != len(target_scene.objects):
        return False
    for key in {(o.shape, o.color) for o in target_scene.objects}:
        want = [o for o in target_scene.objects if (o.shape, o.color) == key]
        got = [d for d in dets if (d.shape, d.color) == key]
        if len(got) != len(want):
            return False
        cost = np.array([[max(abs(o.cx - d.cx), abs(o.cy - d.cy)) for d in got] for o in want])
        rows, cols = linear_sum_assignment(cost)
        if cost[rows, cols].max() > pos_tol:
            return False
    return True


class SceneJudgeScore(Metric):
    """GenEval-style accuracy per category and overall (the mean of the categories seen), synchronised across ranks.

    ``update(images, categories, scenes=None, prompts=None)`` judges each image (PIL, (H, W, 3) array or (3, H, W)
    tensor; a (B, 3, H, W) batch works too) against its prompt (or its scene's caption);
    ``update_verdicts(verdicts, categories)`` counts verdicts judged elsewhere. ``compute()`` returns
    ``{category: accuracy, ..., "overall": mean}`` for the categories with at least one sample.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("correct", torch.zeros(len(CATEGORIES), dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("total", torch.zeros(len(CATEGORIES), dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, images, categories: Sequence[str], scenes: Sequence[Scene] | None = None,
               prompts: Sequence[str] | None = None, verdicts: Sequence[bool] | None = None) -> None:
        """Judge ``images`` against their ``prompts`` (or their ``scenes``' captions) of ``categories``; or, with
        ``verdicts``, count verdicts judged elsewhere (``images`` then unused)."""
        if verdicts is None:
            if scenes is None and prompts is None:
                raise ValueError("SceneJudgeScore.update needs scenes or prompts (or verdicts)")
            n = len(categories)
            scenes = scenes if scenes is not None else [None] * n
            prompts = prompts if prompts is not None else [None] * n
            verdicts = [judge(im, s, c, p) for im, s, c, p in zip(images, scenes, categories, prompts, strict=True)]
        for v, c in zip(verdicts, categories, strict=True):
            i = CATEGORIES.index(c)
            self.correct[i] += float(bool(v))
            self.total[i] += 1

    def update_verdicts(self, verdicts: Sequence[bool], categories: Sequence[str]) -> None:
        """Count verdicts judged elsewhere."""
        self.update(None, categories, verdicts=verdicts)

    def compute(self) -> dict[str, torch.Tensor]:
        seen = self.total > 0
        acc = self.correct / self.total.clamp_min(1)
        out = {c: acc[i].float() for i, c in enumerate(CATEGORIES) if seen[i]}
        out["overall"] = acc[seen].mean().float() if seen.any() else torch.tensor(float("nan"))
        return out
