"""Synthetic person-ReID datasets in the official on-disk layouts (tests, demo), labelled synthetic.

Person ReID (:func:`write_reid_dataset`): every identity is a fixed "outfit" (hair, shirt, trousers, shoes colours,
an optional stripe and bag side) drawn as a pedestrian silhouette; each image adds a camera-specific brightness and
tint, a small random shift/scale and pixel noise, and is saved as JPEG under the official file names of the layout,
including junk (-1) and distractor (0000) gallery images for Market-1501. The folders written carry the
``SYNTHETIC.md`` marker; the writers refuse folders holding anything they did not write and never overwrite a file.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np

from ._owned import claim, fresh, is_synthetic

__all__ = ["write_reid_dataset", "ensure_demo_reid", "DEMO_REID", "person_image"]

#: the demo dataset's size (Market-1501 layout): enough identities for a meaningful mAP, small enough for a CPU
DEMO_REID: dict[str, Any] = dict(num_train_ids=24, num_test_ids=12, train_images_per_id=8, gallery_images_per_id=5,
                                 num_cameras=6, num_junk=4, num_distractors=6, seed=0)


def _outfit(rng: np.random.Generator) -> dict[str, Any]:
    def colour() -> np.ndarray:
        h, s, v = rng.random(), 0.35 + 0.65 * rng.random(), 0.25 + 0.75 * rng.random()
        return np.array(colorsys.hsv_to_rgb(h, s, v)) * 255.0

    return {"hair": colour() * 0.5, "shirt": colour(), "trousers": colour(), "shoes": colour() * 0.6,
            "stripe": colour() if rng.random() < 0.5 else None, "bag": int(rng.integers(-1, 2)),
            "skin": np.array([224.0, 172.0, 140.0]) * (0.7 + 0.3 * rng.random()), "width": 0.8 + 0.4 * rng.random()}


def person_image(outfit: dict[str, Any], camera: int, rng: np.random.Generator, size: tuple[int, int] = (128, 64)
                 ) -> np.ndarray:
    """One (H, W, 3) uint8 crop of a person wearing ``outfit`` seen by ``camera``."""
    H, W = size
    cam_rng = np.random.default_rng(1000 + camera)  # fixed per camera: brightness, tint, background
    bright = 0.75 + 0.5 * cam_rng.random()
    tint = 1.0 + 0.15 * (cam_rng.random(3) - 0.5)
    bg = cam_rng.random(3) * 120 + 60
    img = np.broadcast_to(bg, (H, W, 3)).astype(np.float32).copy()
    img += rng.normal(0, 12, (H, W, 3))  # background clutter
    cx = W / 2 + rng.uniform(-0.08, 0.08) * W
    s = rng.uniform(0.9, 1.05)
    half = 0.22 * W * outfit["width"] * s

    def box(y0: float, y1: float, x0: float, x1: float, c: np.ndarray) -> None:
        ya, yb = int(np.clip(y0 * H, 0, H)), int(np.clip(y1 * H, 0, H))
        xa, xb = int(np.clip(x0, 0, W)), int(np.clip(x1, 0, W))
        img[ya:yb, xa:xb] = c

    top = 0.04 + rng.uniform(-0.02, 0.02)
    box(top, top + 0.05 * s, cx - 0.5 * half, cx + 0.5 * half, outfit["hair"])
    box(top + 0.05 * s, top + 0.14 * s, cx - 0.45 * half, cx + 0.45 * half, outfit["skin"])
    box(top + 0.15 * s, top + 0.50 * s, cx - half, cx + half, outfit["shirt"])
    if outfit["stripe"] is not None:
        box(top + 0.28 * s, top + 0.34 * s, cx - half, cx + half, outfit["stripe"])
    box(top + 0.50 * s, top + 0.88 * s, cx - 0.9 * half, cx - 0.08 * half, outfit["trousers"])
    box(top + 0.50 * s, top + 0.88 * s, cx + 0.08 * half, cx + 0.9 * half, outfit["trousers"])
    box(top + 0.88 * s, top + 0.94 * s, cx - 0.95 * half, cx + 0.95 * half, outfit["shoes"])
    if outfit["bag"]:
        x0 = cx + outfit["bag"] * half
        box(top + 0.30 * s, top + 0.55 * s, min(x0, x0 + outfit["bag"] * 0.5 * half),
            max(x0, x0 + outfit["bag"] * 0.5 * half), outfit["hair"] * 0.8)
    img = img * bright * tint + rng.normal(0, 6, (H, W, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def _save(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    Image.fromarray(arr).save(fresh(path, "write_reid_dataset"), quality=92)


def _name(layout: str, pid: int, cam: int, k: int) -> str:
    """Official file names: Market ``PPPP_cCsS_FFFFFF_BB.jpg``, Duke ``PPPP_cC_fFFFFFFF.jpg``,
    MSMT17 ``PPPP/PPPP_NNN_CC_<date><time>_NNNN_N.jpg`` (cameras 1-based)."""
    p = "-1" if pid == -1 else f"{pid:04d}"  # real junk files are named -1_c...
    if layout == "market1501":
        return f"{p}_c{cam + 1}s{1 + k % 6}_{(k * 1517 + pid * 31) % 999999:06d}_{1 + k % 4:02d}.jpg"
    if layout in ("dukemtmc", "occluded_duke"):
        return f"{p}_c{cam + 1}_f{(k * 7919 + pid * 97) % 10000000:07d}.jpg"
    tod = ("morning", "noon", "afternoon")[k % 3]
    return f"{pid:04d}/{pid:04d}_{k:03d}_{cam + 1:02d}_0303{tod}_{(k * 37) % 10000:04d}_{k % 2}.jpg"


def write_reid_dataset(
    root: str | Path,
    layout: str = "market1501",
    num_train_ids: int = 8,
    num_test_ids: int = 4,
    train_images_per_id: int = 6,
    gallery_images_per_id: int = 4,
    num_cameras: int = 6,
    num_junk: int = 2,
    num_distractors: int = 2,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
) -> Path:
    """Write a small ReID dataset in ``layout``'s official format under ``root``; returns the dataset folder.

    Test identities get one query image (camera 0 or 1) and ``gallery_images_per_id`` gallery images, of which at
    least one is from another camera, and one is from the query's camera (to exercise the same-camera filter).
    Market-1501 / Duke layouts also get junk (pid -1) and distractor (pid 0) gallery images; MSMT17 gets list files
    (train split into list_train + list_val by identity).

    ``root`` and the dataset folder must be absent, empty or labelled synthetic (``SYNTHETIC.md``); both get the
    label. Raises ``SyntheticDataError`` (nothing written) otherwise, or when a file would be overwritten.
    """
    from .._reid_layout import LAYOUTS

    if layout not in LAYOUTS:
        raise ValueError(f"unknown ReID layout {layout!r}")
    claim(root, "write_reid_dataset")
    d = claim(Path(root) / LAYOUTS[layout]["dirs"][0], "write_reid_dataset")
    rng = np.random.default_rng(seed)
    outfits = {pid: _outfit(rng) for pid in range(1, num_train_ids + num_test_ids + 1)}
    train_pids = list(range(1, num_train_ids + 1))
    test_pids = list(range(num_train_ids + 1, num_train_ids + num_test_ids + 1))
    records: dict[str, list[tuple[str, int]]] = {"train": [], "query": [], "gallery": []}
    if layout == "msmt17":
        # MSMT17 pids are 0-based per split and the list files give them explicitly
        train_pid_map = {p: i for i, p in enumerate(train_pids)}
        test_pid_map = {p: i for i, p in enumerate(test_pids)}
        dirs = {"train": d / "train", "query": d / "test", "gallery": d / "test"}
    else:
        train_pid_map = {p: p for p in train_pids}
        test_pid_map = {p: p for p in test_pids}
        dirs = {"train": d / "bounding_box_train", "query": d / "query", "gallery": d / "bounding_box_test"}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)

    def emit(split: str, pid: int, file_pid: int, cam: int, k: int) -> None:
        name = _name(layout, file_pid, cam, k)
        arr = person_image(outfits[pid], cam, rng, size) if pid > 0 else person_image(_outfit(rng), cam, rng, size)
        _save(dirs[split] / name, arr)
        records[split].append((name, file_pid))

    for pid in train_pids:
        for k in range(train_images_per_id):
            emit("train", pid, train_pid_map[pid], int(rng.integers(num_cameras)), k)
    kq = 10_000  # frame counters of the test images, distinct from the training ones
    for pid in test_pids:
        qcam = int(rng.integers(2))
        emit("query", pid, test_pid_map[pid], qcam, kq)
        cams = [(qcam + 1 + int(rng.integers(num_cameras - 1))) % num_cameras for _ in range(gallery_images_per_id)]
        cams[-1] = qcam  # one same-camera image: removed by the protocol
        for j, cam in enumerate(cams):
            emit("gallery", pid, test_pid_map[pid], cam, kq + 1 + j)
        kq += 100
    if layout != "msmt17":
        for j in range(num_distractors):
            emit("gallery", 0, 0, int(rng.integers(num_cameras)), 20_000 + j)
        for j in range(num_junk):
            emit("gallery", -1, -1, int(rng.integers(num_cameras)), 30_000 + j)
    else:
        n_val = max(1, len(train_pids) // 4)
        val_ids = set(train_pid_map[p] for p in train_pids[-n_val:])
        lists = {
            "list_train.txt": [r for r in records["train"] if r[1] not in val_ids],
            "list_val.txt": [r for r in records["train"] if r[1] in val_ids],
            "list_query.txt": records["query"],
            "list_gallery.txt": records["gallery"],
        }
        for fname, recs in lists.items():
            fresh(d / fname, "write_reid_dataset").write_text("".join(f"{name} {pid}\n" for name, pid in recs))
    return d


def ensure_demo_reid(root: str | Path, layout: str = "market1501") -> Path:
    """The demo ReID dataset (``layout``, :data:`DEMO_REID` sizes) under ``root``, written on first use; returns its
    dataset folder. Writes only into an absent, empty or synthetic-labelled ``root`` (see :func:`write_reid_dataset`).
    """
    from .._reid_layout import LAYOUTS, find_dataset_dir

    d = Path(root) / LAYOUTS[layout]["dirs"][0]
    if is_synthetic(d):
        try:
            return find_dataset_dir(d, layout)
        except FileNotFoundError:
            pass  # an interrupted write: write_reid_dataset refuses to overwrite its files and says so
    return write_reid_dataset(root, layout, **DEMO_REID)
