"""The synthetic compositional scene set (:mod:`datamodules.scenes`) written as text-to-image, editing and VQA
JSONL files with PNG images (tests, demos, the UniPic and NEO results). Labelled ``SYNTHETIC.md``.

Layout (paths in the JSONL files are relative to the split folder)::

    root/SYNTHETIC.md
    root/{train,val,test}/SYNTHETIC.md
    root/<split>/images/000000.png     one rendered scene per t2i line
    root/<split>/edits/000000.png      its edit target
    root/<split>/t2i.jsonl    {"image", "caption", "category", "scene"}
    root/<split>/edit.jsonl   {"source", "instruction", "target", "target_scene"}
    root/<split>/vqa.jsonl    {"image", "conversations": [{"from": "human", "value": "<image>\\n..."},
                               {"from": "gpt", "value": "..."}], "kind"}

**Split rule.** Captions are held out: every split draws its prompts only from its own part of the fixed prompt
partition (:func:`datamodules.scenes.prompt_split`), so no test (or val) caption occurs in train, and each split
samples its scenes, colours, positions, edits and questions from its own seed (``[seed, split index]``), so no image
repeats across splits. The categories take turns. Train and val images are ``size`` x ``size``; every third round
of the six categories in test is rendered at one of ``aspect_sizes`` (default ``size`` x 1.5 ``size`` and 1.5 ``size`` x ``size``), aspect
ratios never seen in training.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from datamodules.scenes import CATEGORIES, questions, render_scene, sample_edit, sample_scene

from ._owned import claim, fresh

__all__ = ["SPLITS", "write_scene_dataset"]

SPLITS = ("train", "val", "test")
_W = "write_scene_dataset"


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    fresh(path, _W).write_text("".join(json.dumps(r) + "\n" for r in rows))


def write_scene_dataset(root: str | os.PathLike, n_train: int = 240, n_val: int = 60, n_test: int = 120,
                        seed: int = 0, size: int = 64,
                        aspect_sizes: tuple[tuple[int, int], ...] | None = None,
                        questions_per_image: int = 2) -> Path:
    """Write the synthetic scene set (t2i, edit and VQA files per split) under ``root``.

    Args:
        root: the folder; absent, empty or labelled ``SYNTHETIC.md`` (nothing is overwritten).
        n_train: scenes (t2i lines) in train.
        n_val: scenes in val.
        n_test: scenes in test.
        seed: base seed; split k uses ``[seed, k]``.
        size: side of the square train / val images (and of two thirds of the test images).
        aspect_sizes: (H, W) of the other test images; default ((size, 3 size / 2), (3 size / 2, size)).
        questions_per_image: VQA lines per scene.

    Returns:
        the root.
    """
    root = claim(root, _W)
    aspect_sizes = tuple(aspect_sizes or ((size, size * 3 // 2), (size * 3 // 2, size)))
    for k, (split, n) in enumerate(zip(SPLITS, (n_train, n_val, n_test), strict=True)):
        folder = claim(root / split, _W)
        rng = np.random.default_rng([seed, k])
        t2i, edit, vqa = [], [], []
        for i in range(n):
            category = CATEGORIES[i % len(CATEGORIES)]
            scene, prompt = sample_scene(rng, category, split=split)
            # every third round of the categories is non-square, so each category has both shapes of image
            rnd = i // len(CATEGORIES)
            hw = aspect_sizes[(i + rnd // 3) % len(aspect_sizes)] if split == "test" and rnd % 3 == 2 else (size, size)
            image = f"images/{i:06d}.png"
            render_scene(scene, hw).save(fresh(folder / image, _W))
            t2i.append({"image": image, "caption": prompt, "category": category, "scene": scene.to_dict()})
            try:
                instruction, target = sample_edit(scene, rng)
            except ValueError:  # e.g. four same-coloured squares filling every corner: nothing nameable to edit
                pass
            else:
                render_scene(target, hw).save(fresh(folder / f"edits/{i:06d}.png", _W))
                edit.append({"source": image, "instruction": instruction, "target": f"edits/{i:06d}.png",
                             "target_scene": target.to_dict()})
            for qa in questions(scene, rng, n=questions_per_image):
                vqa.append({"image": image, "conversations": [{"from": "human", "value": f"<image>\n{qa.question}"},
                                                               {"from": "gpt", "value": qa.answer}], "kind": qa.kind})
        for name, rows in (("t2i", t2i), ("edit", edit), ("vqa", vqa)):
            _write_jsonl(folder / f"{name}.jsonl", rows)
    return root
