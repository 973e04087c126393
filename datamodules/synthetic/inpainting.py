"""Inpainting stand-in data: scikit-image's bundled photographs laid out in the CelebA-HQ or Places2 layout (tests,
demo), with the official-style split lists. The folder is labelled ``SYNTHETIC.md`` (a stand-in, not the dataset)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np

from ._owned import claim, fresh

__all__ = ["SKIMAGE_TEST", "SKIMAGE_TRAIN", "write_skimage_photos"]

#: scikit-image's bundled photographs (offline); the last three are held out for validation/test
SKIMAGE_TRAIN = ("astronaut", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                 "colorwheel", "camera", "brick", "grass", "coins")
SKIMAGE_TEST = ("coffee", "moon", "gravel")


def _square_crops(img: np.ndarray, n: int) -> list[np.ndarray]:
    """Centre square crop plus (n - 1) smaller corner crops of a photo."""
    h, w = img.shape[:2]
    s = min(h, w)
    crops = [img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]]
    c = int(0.6 * s)
    for y, x in [(0, 0), (0, w - c), (h - c, 0), (h - c, w - c)][: max(0, n - 1)]:
        crops.append(img[y:y + c, x:x + c])
    return crops


def write_skimage_photos(root: str | os.PathLike, layout: Literal["celebahq", "places2"] = "celebahq",
                         image_size: int = 256, crops_per_photo: int = 5) -> Path:
    """Lay scikit-image's bundled photographs out as a real CelebA-HQ or Places2 folder (tests and the demo).

    Each photo gives ``crops_per_photo`` square crops resized to ``image_size``; list files are written in the
    official formats (CelebA-HQ: PEPSI's absolute ``D:/dataset/inpainting/...`` lines; Places2: ``/x/name/%08d.jpg
    label`` and ``Places365_val_%08d.jpg label``). Photos of :data:`SKIMAGE_TEST` form the test split.

    The photographs are real but the dataset is not CelebA-HQ / Places2, so ``root`` is labelled ``SYNTHETIC.md``
    like every writer's folder: it must be absent, empty or so labelled (``SyntheticDataError`` otherwise, nothing
    written), and no file is overwritten.

    Returns:
        the root.
    """
    import skimage.data
    from PIL import Image

    w_ = "write_skimage_photos"
    root = claim(root, w_)
    counter = {"train": 0, "test": 0}
    lines: dict[str, list[str]] = {"train": [], "test": []}
    for split, names in (("train", SKIMAGE_TRAIN), ("test", SKIMAGE_TEST)):
        for label, name in enumerate(names):
            img = getattr(skimage.data, name)()
            img = np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]
            for crop in _square_crops(img, crops_per_photo):
                pil = Image.fromarray(crop.astype(np.uint8)).resize((image_size, image_size), Image.LANCZOS)
                if layout == "celebahq":
                    i = counter["train"] + counter["test"]
                    folder = "train_fh256" if split == "train" else "test_fh256"
                    rel = f"{folder}/img{i:08d}.png"
                    lines[split].append(f"D:/dataset/inpainting/{rel}")
                else:
                    if split == "train":
                        rel_in = f"{name[0]}/{name}/{counter['train'] + 1:08d}.jpg"
                        rel = f"data_256/{rel_in}"
                        lines[split].append(f"/{rel_in} {label}")
                    else:
                        rel = f"val_256/Places365_val_{counter['test'] + 1:08d}.jpg"
                        lines[split].append(f"{Path(rel).name} {label}")
                counter[split] += 1
                pil.save(fresh(root / rel, w_), quality=95)
    if layout == "celebahq":
        fresh(root / "train_fh256.txt", w_).write_text("\n".join(lines["train"]) + "\n")
        fresh(root / "test_fh256.txt", w_).write_text("\n".join(lines["test"]) + "\n")
    else:
        fresh(root / "places365_train_standard.txt", w_).write_text("\n".join(lines["train"]) + "\n")
        fresh(root / "places365_val.txt", w_).write_text("\n".join(lines["test"]) + "\n")
    return root
