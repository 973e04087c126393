"""An exact GenEval-style judge for the synthetic scene set (:mod:`datamodules.scenes`), by plain image analysis.

Detection (:func:`read_scene`, :func:`detect_objects`): pixels whose chroma (max - min of RGB) is at least
``min_chroma`` are foreground; each takes the palette colour of the nearest hue (the palette's hues are 23 degrees or
more apart, and blending with the neutral background keeps a hue); each colour's 8-connected components of at least
``MIN_OBJECT_AREA`` are candidates; a candidate's shape is the template (inscribed circle, full square, upward
triangle) that best overlaps (IoU) its mask inside its bounding box, and it is an object only when that IoU is at
least ``MIN_SHAPE_IOU`` (a solid fill); its centre is the box centre, normalised like
:class:`~datamodules.scenes.SceneObject`.

Only clean scenes are judged: an image without a near-uniform neutral background (``MIN_BACKGROUND``,
``BACKGROUND_TOL``, ``MAX_BACKGROUND_CHROMA``), with more than ``MAX_OBJECTS`` objects, or with more than
``MAX_CLUTTER`` of its pixels neither background nor near an object is rejected and fails every judgement. Without
this, noise passes: uniform noise holds small coloured blobs of every shape and colour.

Scoring (:func:`judge`) follows GenEval's six categories, the largest detection of a shape standing in for GenEval's
most confident one: ``single_object`` / ``two_object`` - each named shape detected at least once; ``counting`` -
exactly that many of the shape; ``colors`` - the shape's largest detection has the colour; ``position`` - the
largest detections of both shapes stand in the relation (centres apart by ``POSITION_MARGIN`` along its axis);
``color_attr`` - both shapes' largest detections have their colours. Objects the prompt does not name are ignored,
except in counting. GenEval's overall score is the mean of the six category accuracies (:class:`SceneJudgeScore`).

Known limits: it reads this palette on a light, low-chroma background; dull or dark colours (chroma < 60), shading
that crosses a hue boundary, touching same-coloured objects, rotated squares or triangles, and textured backgrounds
are outside what it judges correctly. It is exact on the set's own renders (tested on hundreds of random scenes),
also after mild JPEG (quality 90 without chroma subsampling) or blur.
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

__all__ = ["Detection", "SceneJudgeScore", "SceneReading", "detect_objects", "judge", "judge_edit", "judge_spec",
           "read_scene"]

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


def _shape(mask: np.ndarray) -> tuple[str, float]:
    """The best-fitting shape and its IoU."""
    ious = {s: (mask & t).sum() / (mask | t).sum() for s, t in _templates(*mask.shape).items()}
    best = max(SHAPES, key=ious.__getitem__)
    return best, float(ious[best])


#: a pixel is background when no channel differs from the image's median colour by more than this (0-255): absorbs
#: JPEG ringing and sensor-like noise of a few levels, not texture
BACKGROUND_TOL = 24.0
#: the background (the median colour) must be neutral: a chroma below this; coloured backgrounds shift every hue
MAX_BACKGROUND_CHROMA = 30.0
#: at least this fraction of the pixels must be background; the set's renders keep 0.67 or more even blurred (at most
#: four objects of 0.28 x the shorter side), uniform noise or a mosaic keeps almost none
MIN_BACKGROUND = 0.5
#: an object covers at least this fraction of (shorter side)^2; the set's smallest object (a triangle of side 0.15)
#: covers 0.011, and 0.009 after a 2x area down-sampling; smaller components are specks
MIN_OBJECT_AREA = 0.004
#: an object's best template IoU (solid fill of a circle, square or upward triangle) is at least this; the set's
#: renders give 0.64 or more even after JPEG (quality 75) or a blur, ragged noise blobs and rings give less
MIN_SHAPE_IOU = 0.55
#: more objects than this is not a scene of the set (a scene holds at most five: four counted plus one added)
MAX_OBJECTS = 8
#: non-background pixels farther than a few pixels (``EDGE_MARGIN`` x shorter side, at least 2) from every object
#: may cover at most this fraction of the image; the set's renders leave 0.001 or less under JPEG 75, blur or a 2x
#: down-sampling; specks, salt-and-pepper or dark / grey marks leave more
MAX_CLUTTER = 0.02
EDGE_MARGIN = 0.03


@dataclass(frozen=True)
class SceneReading:
    """What :func:`read_scene` found.

    Args:
        detections: the objects, largest first (those that pass the area and shape checks).
        rejected: why the image is not a clean scene (None when it is); a rejected image fails every judgement.
    """

    detections: list[Detection]
    rejected: str | None


def read_scene(image, min_chroma: float = 60.0) -> SceneReading:
    """The coloured shapes in ``image`` (PIL, array or (3, H, W) tensor) and whether it is a clean scene at all.

    A clean scene has a near-uniform neutral background (``MIN_BACKGROUND`` of the pixels within ``BACKGROUND_TOL``
    of the median colour), at most ``MAX_OBJECTS`` solid objects, and little else (``MAX_CLUTTER``). Each object is a
    one-colour component of at least ``MIN_OBJECT_AREA`` whose pixels fill one of the three shapes
    (``MIN_SHAPE_IOU``).

    Args:
        image: the image.
        min_chroma: least max - min of a pixel's RGB (0-255) to count as an object pixel.
    """
    a = _to_array(image).astype(np.float32)
    h, w = a.shape[:2]
    short = min(h, w)
    bg = np.median(a.reshape(-1, 3), axis=0)
    background = np.abs(a - bg).max(2) <= BACKGROUND_TOL
    if bg.max() - bg.min() > MAX_BACKGROUND_CHROMA:
        return SceneReading([], f"coloured background (median {bg.round().astype(int).tolist()})")
    if background.mean() < MIN_BACKGROUND:
        return SceneReading([], f"no uniform background ({background.mean():.2f} of the pixels)")
    chroma = a.max(2) - a.min(2)
    fg = chroma >= min_chroma
    hue = np.asarray(Image.fromarray(a.astype(np.uint8)).convert("HSV"))[..., 0] / 255.0
    dist = np.abs(hue[..., None] - _HUES)
    label = np.argmin(np.minimum(dist, 1 - dist), axis=-1)
    found, explained = [], np.zeros((h, w), bool)
    for k, color in enumerate(COLORS):
        comps, _ = ndimage.label(fg & (label == k), structure=np.ones((3, 3)))
        for i, sl in enumerate(ndimage.find_objects(comps), start=1):
            mask = comps[sl] == i
            if mask.sum() < MIN_OBJECT_AREA * short ** 2:
                continue
            # the shape from the pixels at least half covered (chroma relative to the object's own, so anti-aliased
            # edges count as much as they cover)
            c = chroma[sl] * mask
            core = c >= 0.5 * np.percentile(c[mask], 90)
            ys, xs = ndimage.find_objects(core.astype(np.int8))[0]
            shape, iou = _shape(core[ys, xs])
            if iou < MIN_SHAPE_IOU:
                continue
            explained[sl] |= mask
            y0, x0 = sl[0].start + ys.start, sl[1].start + xs.start
            found.append(Detection(shape, color, (2 * x0 + xs.stop - xs.start) / 2 / w,
                                   (2 * y0 + ys.stop - ys.start) / 2 / h, float(core.sum()) / (h * w)))
    found.sort(key=lambda d: -d.area)
    if len(found) > MAX_OBJECTS:
        return SceneReading(found, f"{len(found)} objects (more than {MAX_OBJECTS})")
    margin = max(2, round(EDGE_MARGIN * short))
    if explained.any():  # anti-aliased, blurred or JPEG-ringing edges around an object are part of it
        explained = ndimage.binary_dilation(explained, structure=np.ones((3, 3)), iterations=margin)
    clutter = float((~background & ~explained).mean())
    if clutter > MAX_CLUTTER:
        return SceneReading(found, f"clutter: {clutter:.3f} of the pixels are neither background nor an object")
    return SceneReading(found, None)


def detect_objects(image, min_chroma: float = 60.0) -> list[Detection]:
    """The coloured shapes in ``image`` (PIL, array or (3, H, W) tensor), largest first; an empty list when the image
    is not a clean scene (see :func:`read_scene`).

    Args:
        image: the image.
        min_chroma: least max - min of a pixel's RGB (0-255) to count as an object pixel.
    """
    reading = read_scene(image, min_chroma)
    return [] if reading.rejected else reading.detections


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
