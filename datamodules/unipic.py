"""UniPic data: text-to-image, editing triplets and understanding conversations in their JSON / JSONL layouts.

One folder per split (``train/``, ``val/``, ``test/``) holding any of::

    t2i.jsonl   {"image": "images/0.png", "caption": "..."}            (also "prompt" / "text"; + "category", "scene")
    edit.jsonl  {"source": "...", "instruction": "...", "target": "..."} (+ "target_scene")
    vqa.jsonl   {"image": "...", "conversations": [{"from": "human", "value": "<image>\\nq"}, {"from": "gpt", ...}]}

(a ``.json`` file holding a list of the same objects works too). Image paths are relative to the split folder. The
compositional scene set (:func:`datamodules.synthetic.scenes.write_scene_dataset`, SYNTHETIC) is written in exactly
this layout, with its exact ``category`` / ``scene`` / ``target_scene`` / answers for the judge; two real image sets
are written by :func:`write_skimage_photos` (scikit-image's photographs, captioned from their own docstrings) and
:func:`write_digits` (scikit-learn's handwritten digits, captioned by their labels).

Batches are dicts of per-task sub-batches (``{"text2image": ..., "image_edit": ..., "image2text": ...}``, the official
``data_dict``); text stays text (the task applies the model's tokenizer and chat template).
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from ._image import open_rgb8
from ._layout import layout_error, require_dataset

__all__ = ["UniPicDataModule", "UniPicT2IDataset", "UniPicEditDataset", "UniPicVQADataset", "read_records",
           "write_skimage_photos", "write_digits", "TASKS"]

#: data kinds -> their file (without extension) and the official data_dict key
TASKS = {"t2i": "text2image", "edit": "image_edit", "vqa": "image2text"}
_TREE = """<root>/
  train/ val/ test/          one folder per split, each with any of:
    t2i.jsonl                {"image": "images/000000.png", "caption": "a red circle"}
    edit.jsonl               {"source": "...png", "instruction": "make the circle green", "target": "...png"}
    vqa.jsonl                {"image": "...png", "conversations": [{"from": "human", "value": "<image>\\nq"},
                                                                   {"from": "gpt", "value": "a"}]}
    images/ ...              the files the lines name (paths relative to the split folder)"""
_SOURCE = ("your own data in this layout; the synthetic scene set: `datamodules.synthetic.scenes.write_scene_dataset"
           "(root)` (or `synthetic_scenes: true`); real photographs: `datamodules.unipic.write_skimage_photos(root)`, "
           "`write_digits(root)`")
_REQUIRED = {"t2i": ("image", "caption"), "edit": ("source", "instruction", "target"),
             "vqa": ("image", "conversations")}


def read_records(path: str | os.PathLike, kind: str) -> list[dict[str, Any]]:
    """The records of a ``.jsonl`` / ``.json`` file of ``kind`` (t2i, edit, vqa), checked: a malformed line or a
    missing field raises an error naming the file and line, a missing image names the image."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        if not isinstance(rows, list):
            raise ValueError(f"{path}: expected a JSON list of records, got {type(rows).__name__}")
        numbered = list(enumerate(rows, 1))
    else:
        numbered = []
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                numbered.append((i, json.loads(line)))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{i}: malformed JSON line ({e.msg})") from e
    out = []
    for i, row in numbered:
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{i}: a record must be a JSON object")
        if kind == "t2i" and "caption" not in row:
            for alt in ("prompt", "text"):
                if alt in row:
                    row = {**row, "caption": row[alt]}
        missing = [k for k in _REQUIRED[kind] if k not in row]
        if missing:
            raise ValueError(f"{path}:{i}: missing field(s) {missing} (a {kind} record has {list(_REQUIRED[kind])})")
        for key in ("image", "source", "target"):
            if key in row and not (path.parent / row[key]).is_file():
                raise FileNotFoundError(f"{path}:{i}: {key} image {path.parent / row[key]} does not exist")
        if kind == "vqa" and (len(row["conversations"]) < 2 or row["conversations"][0].get("from") != "human"):
            raise ValueError(f"{path}:{i}: conversations must start with a human turn and have an answer")
        out.append(row)
    return out


def _find(folder: Path, kind: str) -> Path | None:
    for ext in (".jsonl", ".json"):
        if (folder / f"{kind}{ext}").is_file():
            return folder / f"{kind}{ext}"
    return None


@functools.lru_cache(maxsize=8)
def _resize(size: int) -> Any:
    """albumentations' area-interpolation resize to ``size`` x ``size``, built once per size (its construction
    validates its arguments, which costs more than resizing a small image)."""
    import albumentations as A
    import cv2

    return A.Resize(size, size, interpolation=cv2.INTER_AREA)


def load_image(path: Path, size: int) -> torch.Tensor:
    """An RGB image as a (3, size, size) tensor in [-1, 1] (resized by albumentations, area interpolation)."""
    try:
        arr = open_rgb8(path)  # 16-bit images rescaled, not clipped
    except (OSError, RuntimeError, ValueError) as e:
        raise OSError(f"cannot read image {path}: {e.__cause__ or e}") from e
    arr = _resize(size)(image=arr)["image"]
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float() / 127.5 - 1.0


class _Records(Dataset):
    kind = "t2i"

    def __init__(self, folder: str | os.PathLike, image_size: int = 32) -> None:
        self.folder, self.image_size = Path(folder), image_size
        path = _find(self.folder, self.kind)
        if path is None:
            raise FileNotFoundError(f"{self.folder}: no {self.kind}.jsonl / {self.kind}.json")
        self.rows = read_records(path, self.kind)

    def __len__(self) -> int:
        return len(self.rows)

    def _img(self, rel: str) -> torch.Tensor:
        return load_image(self.folder / rel, self.image_size)


class UniPicT2IDataset(_Records):
    """Text-to-image records: ``image``, ``caption`` (+ ``category``, ``scene`` JSON when the set has them).

    Args:
        folder: the split folder.
        image_size: square training size.
    """

    kind = "t2i"

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        return {"image": self._img(r["image"]), "caption": r["caption"], "category": r.get("category", ""),
                "scene": json.dumps(r["scene"]) if "scene" in r else ""}


class UniPicEditDataset(_Records):
    """Editing triplets: ``source``, ``instruction``, ``target`` (+ ``target_scene``).

    Args:
        folder: the split folder.
        image_size: square training size.
    """

    kind = "edit"

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        return {"source": self._img(r["source"]), "target": self._img(r["target"]), "instruction": r["instruction"],
                "target_scene": json.dumps(r["target_scene"]) if "target_scene" in r else ""}


class UniPicVQADataset(_Records):
    """Understanding conversations: the image and the first human question / answer pair (``<image>`` removed from
    the question: the model's prompt places the image slots).

    Args:
        folder: the split folder.
        image_size: square size.
    """

    kind = "vqa"

    def __getitem__(self, i: int) -> dict[str, Any]:
        r = self.rows[i]
        q, a = r["conversations"][0]["value"], r["conversations"][1]["value"]
        return {"image": self._img(r["image"]), "question": q.replace("<image>", "").strip(), "answer": a.strip(),
                "kind": r.get("kind", "")}


_DATASETS = {"t2i": UniPicT2IDataset, "edit": UniPicEditDataset, "vqa": UniPicVQADataset}


class UniPicDataModule(pl.LightningDataModule):
    """Text-to-image / editing / understanding data in the UniPic layouts (module docstring).

    Args:
        root: the dataset folder (``train/``, ``val/``, ``test/``).
        tasks: which of ``t2i``, ``edit``, ``vqa`` to load (the stage's loss weights decide what trains).
        image_size: square generation size.
        und_image_size: square understanding size (None: ``image_size``; the model resizes to its tower's size).
        batch_size: per-task batch size.
        num_workers: loader workers.
        synthetic_scenes: when ``root`` is missing or empty, write the SYNTHETIC scene set there first.
        scene_counts: (train, val, test) scenes of a written scene set.
        scene_image_size: image side of a written scene set.
        seed: seed of a written scene set.
    """

    def __init__(self, root: str = "data/unipic_scenes", tasks: tuple[str, ...] = ("t2i", "edit", "vqa"),
                 image_size: int = 32, und_image_size: int | None = None, batch_size: int = 16, num_workers: int = 0,
                 synthetic_scenes: bool = False, scene_counts: tuple[int, int, int] = (600, 60, 120),
                 scene_image_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        bad = [t for t in tasks if t not in TASKS]
        if bad:
            raise ValueError(f"unknown UniPic data kinds {bad}: use {list(TASKS)}")
        self.root, self.tasks = Path(root), tuple(tasks)
        self.image_size, self.und_image_size = image_size, und_image_size or image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.synthetic_scenes, self.scene_counts = synthetic_scenes, tuple(scene_counts)
        self.scene_image_size, self.seed = scene_image_size, seed
        self.sets: dict[str, dict[str, Dataset]] = {}

    def prepare_data(self) -> None:
        empty = not self.root.exists() or not any(self.root.iterdir())
        if empty and self.synthetic_scenes:
            from .synthetic.scenes import write_scene_dataset

            n_train, n_val, n_test = self.scene_counts
            write_scene_dataset(self.root, n_train, n_val, n_test, seed=self.seed, size=self.scene_image_size)
        require_dataset(self.root, name="UniPic data", tree=_TREE, source=_SOURCE, required=("train",))

    def setup(self, stage: str | None = None) -> None:
        if not self.root.exists():
            self.prepare_data()
        for split in ("train", "val", "test"):
            folder = self.root / split
            if not folder.is_dir():
                continue
            sets = {}
            for t in self.tasks:
                if _find(folder, t) is not None:
                    size = self.und_image_size if t == "vqa" else self.image_size
                    sets[t] = _DATASETS[t](folder, size)
            self.sets[split] = sets
        if not self.sets.get("train"):
            raise layout_error(f"{self.root / 'train'} holds none of {[f'{t}.jsonl' for t in self.tasks]}",
                               name="UniPic data", tree=_TREE, source=_SOURCE, root=self.root)

    def _loader(self, ds: Dataset, shuffle: bool) -> DataLoader:
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=shuffle and len(ds) >= self.batch_size)

    def train_dataloader(self) -> Any:
        from pytorch_lightning.utilities import CombinedLoader

        return CombinedLoader({TASKS[t]: self._loader(ds, True) for t, ds in self.sets["train"].items()},
                              mode="max_size_cycle")

    def _eval(self, split: str) -> list[DataLoader]:
        sets = self.sets.get(split) or {}
        self.eval_tasks = [TASKS[t] for t in sets]
        return [self._loader(ds, False) for ds in sets.values()]

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval("test")


# ------------------------------------------------------------------------------------------ real image writers
def _write_t2i(root: Path, rows: list[tuple[Image.Image, str]], note: str, val_every: int = 5,
               split_of: dict[int, str] | None = None, vqa: list[tuple[str, str]] | None = None) -> Path:
    """Rows -> the t2i layout: every ``val_every``-th row in test/, or ``split_of[row index]`` (rows without one are
    skipped); ``vqa`` (question, answer) per row also writes vqa.jsonl over the same images."""
    root.mkdir(parents=True, exist_ok=True)
    if any(root.iterdir()):
        raise FileExistsError(f"{root} is not empty: the writer never writes into an existing folder")
    (root / "README.md").write_text(note + "\n")
    lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    vqa_lines: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    for i, (im, caption) in enumerate(rows):
        if split_of is None:
            split = "test" if i % val_every == val_every - 1 else "train"
        elif i in split_of:
            split = split_of[i]
        else:
            continue
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        im.save(root / split / "images" / f"{i:05d}.png")
        lines[split].append(json.dumps({"image": f"images/{i:05d}.png", "caption": caption}))
        if vqa is not None:
            conv = [{"from": "human", "value": "<image>\n" + vqa[i][0]}, {"from": "gpt", "value": vqa[i][1]}]
            vqa_lines[split].append(json.dumps({"image": f"images/{i:05d}.png", "conversations": conv}))
    for split, ls in lines.items():
        if ls:
            (root / split / "t2i.jsonl").write_text("\n".join(ls) + "\n")
        if vqa_lines[split]:
            (root / split / "vqa.jsonl").write_text("\n".join(vqa_lines[split]) + "\n")
    return root


def write_skimage_photos(root: str | os.PathLike, size: int = 64) -> Path:
    """scikit-image's RGB example photographs (REAL images) in the t2i layout, each captioned by the first line of
    its own docstring (``skimage.data.astronaut``: "Color image of the astronaut Eileen Collins."); every fifth in
    test/. Centre-cropped to a square and resized to ``size``."""
    import skimage.data as sd

    rows = []
    for name in ("astronaut", "chelsea", "coffee", "rocket", "retina", "immunohistochemistry", "colorwheel",
                 "cat", "hubble_deep_field", "skin", "logo"):
        fn = getattr(sd, name, None)
        if fn is None:
            continue
        try:
            arr = np.asarray(fn())
        except Exception:  # noqa: BLE001 - an image that needs a download (pooch) is skipped offline
            continue
        if arr.ndim != 3:
            continue
        im = Image.fromarray(arr[..., :3].astype(np.uint8))
        s = min(im.size)
        im = im.crop(((im.width - s) // 2, (im.height - s) // 2, (im.width + s) // 2, (im.height + s) // 2))
        caption = (fn.__doc__ or name).strip().splitlines()[0].strip()
        rows.append((im.resize((size, size), Image.LANCZOS), caption))
    return _write_t2i(Path(root), rows, "REAL photographs from scikit-image (skimage.data), captioned from their "
                                        "docstrings; see scikit-image's data licences (skimage/data/README).")


def write_digits(root: str | os.PathLike, size: int = 32, limit: int | None = None,
                 splits: dict[str, Any] | None = None, question: str | None = None) -> Path:
    """scikit-learn's 8x8 handwritten digits (REAL, UCI) in the t2i layout, captioned "a handwritten digit <d>",
    upscaled to ``size`` (nearest) as dark strokes on white; every fifth in test/, or ``splits`` = {split: indices
    into ``load_digits()``} (only those written; file names keep the index). ``question`` (e.g. "Which digit is
    this?") also writes vqa.jsonl with the digit as the answer."""
    from sklearn.datasets import load_digits

    d = load_digits()
    rows = []
    for img, y in list(zip(d.images, d.target))[:limit]:
        arr = (255 - img / 16.0 * 255).astype(np.uint8)
        im = Image.fromarray(arr).convert("RGB").resize((size, size), Image.NEAREST)
        rows.append((im, f"a handwritten digit {int(y)}"))
    split_of = None if splits is None else {int(i): s for s, idx in splits.items() for i in idx}
    vqa = None if question is None else [(question, str(int(y))) for y in d.target]
    return _write_t2i(Path(root), rows, "REAL handwritten digits (scikit-learn load_digits: UCI optdigits, 8x8), "
                                        "captioned by their labels.", split_of=split_of, vqa=vqa)
