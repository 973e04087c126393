"""Synthetic person-ReID datasets in the official on-disk layouts (tests, demo), labelled synthetic.

Person ReID (:func:`write_reid_dataset`): every identity is a fixed "outfit" (hair, shirt, trousers, shoes colours,
an optional stripe and bag side) drawn as a pedestrian silhouette; each image adds a camera-specific brightness and
tint, a small random shift/scale and pixel noise, and is saved as JPEG under the official file names of the layout,
including junk (-1) and distractor (0000) gallery images for Market-1501.

Photo-patch ReID (:func:`write_photo_reid_dataset`, the results recipe of issue 16): the pixels are REAL photographs
(the ones scikit-image and scikit-learn ship), the views are SYNTHETIC. Every identity is one region of one photograph;
each image of it is a crop re-drawn with a random shift / scale / rotation (viewpoint) and a fixed per-camera
brightness, tint, gamma, blur, noise and JPEG quality. Identities of one photo are hard negatives of each other;
training and test identities come from disjoint photographs. The folders written carry the
``SYNTHETIC.md`` marker; the writers refuse folders holding anything they did not write and never overwrite a file.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Any

import numpy as np

from ._owned import claim, fresh, is_synthetic

__all__ = ["write_reid_dataset", "ensure_demo_reid", "DEMO_REID", "person_image", "write_photo_reid_dataset",
           "load_photo", "photo_view", "PHOTOS", "PHOTO_SPLIT", "DEMO_PHOTO_REID"]

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


def ensure_demo_reid(root: str | Path, layout: str = "market1501", kind: str = "pedestrians") -> Path:
    """The demo ReID dataset (``layout``, :data:`DEMO_REID` sizes) under ``root``, written on first use; returns its
    dataset folder. Writes only into an absent, empty or synthetic-labelled ``root`` (see :func:`write_reid_dataset`).
    ``kind='photo_patches'``: the photo-patch set (:data:`DEMO_PHOTO_REID`, Market-1501 layout only).
    """
    if kind not in ("pedestrians", "photo_patches"):
        raise ValueError(f"unknown demo ReID kind {kind!r}: pedestrians | photo_patches")
    if kind == "photo_patches" and layout != "market1501":
        raise ValueError("the photo-patch demo set is written in the market1501 layout only")
    from .._reid_layout import LAYOUTS, find_dataset_dir

    d = Path(root) / LAYOUTS[layout]["dirs"][0]
    if is_synthetic(d):
        try:
            return find_dataset_dir(d, layout)
        except FileNotFoundError:
            pass  # an interrupted write: write_reid_dataset refuses to overwrite its files and says so
    if kind == "photo_patches":
        return write_photo_reid_dataset(root, **DEMO_PHOTO_REID)
    return write_reid_dataset(root, layout, **DEMO_REID)


# ------------------------------------------------------------------------------------- photo-patch ReID (issue 16)
#: the photographs shipped with scikit-image (``skimage.data.<name>``) and scikit-learn (``sklearn:<file>``), offline
PHOTOS: tuple[str, ...] = (
    "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "sklearn:china.jpg",
    "camera", "moon", "brick", "grass", "page", "motorcycle", "retina", "sklearn:flower.jpg", "coins", "gravel",
    "text")
#: the default split by photograph (no photograph in both): 12 training photos, 6 held-out test photos
PHOTO_SPLIT: dict[str, tuple[str, ...]] = {
    "train": ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry",
              "sklearn:china.jpg", "camera", "moon", "brick", "grass", "page"),
    "test": ("motorcycle", "retina", "sklearn:flower.jpg", "coins", "gravel", "text"),
}
#: the CPU demo's sizes (``ReIDDataModule(synthetic_if_missing='photo_patches')``)
DEMO_PHOTO_REID: dict[str, Any] = dict(train_photos=PHOTO_SPLIT["train"], test_photos=PHOTO_SPLIT["test"],
                                       train_ids_per_photo=10, test_ids_per_photo=8, train_images_per_id=6,
                                       gallery_images_per_id=4, num_distractors=48, num_cameras=6, seed=0)


def load_photo(name: str, min_side: int = 384) -> np.ndarray:
    """A shipped photograph as (H, W, 3) uint8, resized so that its shorter side is at most ``min_side``."""
    import cv2

    if name.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(name.split(":", 1)[1])
    elif name == "motorcycle":
        import skimage.data

        img = skimage.data.stereo_motorcycle()[0]
    else:
        import skimage.data

        img = getattr(skimage.data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, -1)
    img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
    scale = min_side / min(img.shape[:2])
    if scale < 1:
        img = cv2.resize(img, (round(img.shape[1] * scale), round(img.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return img


def _anchors(img: np.ndarray, n: int, rng: np.random.Generator, min_std: float = 12.0, tries: int = 20000
             ) -> list[tuple[float, float, float]]:
    """``n`` identity regions (centre x, centre y, box height; width = height / 2) with texture, spread out."""
    H, W = img.shape[:2]
    gray = img.mean(-1)
    out: list[tuple[float, float, float]] = []
    for _ in range(tries):
        if len(out) == n:
            break
        bh = rng.uniform(0.25, 0.5) * min(H, W)
        cx, cy = rng.uniform(bh / 4, W - bh / 4), rng.uniform(bh / 2, H - bh / 2)
        y0, y1, x0, x1 = int(cy - bh / 2), int(cy + bh / 2), int(cx - bh / 4), int(cx + bh / 4)
        if gray[max(y0, 0):y1, max(x0, 0):x1].std() < min_std:
            continue  # flat (sky, black border): not identifiable
        if any(np.hypot(cx - ax, cy - ay) < 0.25 * max(bh, ah) for ax, ay, ah in out):
            continue
        out.append((cx, cy, bh))
    if len(out) < n:
        raise ValueError(f"only {len(out)} of {n} textured regions found in a {H}x{W} photo; ask for fewer")
    return out


def _camera(camera: int) -> dict[str, Any]:
    r = np.random.default_rng(2000 + camera)  # fixed per camera
    return {"bright": r.uniform(0.7, 1.25), "tint": 1.0 + 0.25 * (r.random(3) - 0.5), "gamma": r.uniform(0.75, 1.35),
            "blur": r.uniform(0.0, 1.2), "noise": r.uniform(2.0, 9.0), "jpeg": int(r.integers(35, 90))}


def photo_view(img: np.ndarray, anchor: tuple[float, float, float], camera: int, rng: np.random.Generator,
               size: tuple[int, int] = (128, 64)) -> np.ndarray:
    """One (H, W, 3) uint8 view of the region ``anchor`` of ``img`` seen by ``camera`` (synthetic view of real pixels).
    """
    import cv2

    H, W = size
    cx, cy, bh = anchor
    cx += rng.uniform(-0.12, 0.12) * bh / 2
    cy += rng.uniform(-0.12, 0.12) * bh
    s = H / (bh * rng.uniform(0.8, 1.25))  # source -> output scale
    M = cv2.getRotationMatrix2D((cx, cy), rng.uniform(-12, 12), s)
    M[:, 2] += (W / 2 - cx, H / 2 - cy)
    out = cv2.warpAffine(img, M, (W, H), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REFLECT101).astype(np.float32)
    cam = _camera(camera)
    if cam["blur"] > 0.3:
        out = cv2.GaussianBlur(out, (0, 0), cam["blur"])
    out = 255.0 * (np.clip(out / 255.0, 0, 1) ** cam["gamma"]) * cam["bright"] * cam["tint"]
    out = np.clip(out + rng.normal(0, cam["noise"], out.shape), 0, 255).astype(np.uint8)
    ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, cam["jpeg"]])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1].copy()


def write_photo_reid_dataset(
    root: str | Path,
    train_photos: tuple[str, ...] | list[str] = PHOTO_SPLIT["train"],
    test_photos: tuple[str, ...] | list[str] = PHOTO_SPLIT["test"],
    train_ids_per_photo: int = 10,
    test_ids_per_photo: int = 8,
    train_images_per_id: int = 6,
    gallery_images_per_id: int = 4,
    num_distractors: int = 48,
    num_cameras: int = 6,
    size: tuple[int, int] = (128, 64),
    seed: int = 0,
) -> Path:
    """Write a photo-patch ReID dataset (real photographs, synthetic views) in the Market-1501 layout.

    Split rule: training identities are regions of ``train_photos``, query/gallery identities and distractors
    (pid 0, random regions) of ``test_photos``; the two lists must be disjoint. Each test identity gets one query
    (camera 0 or 1) and ``gallery_images_per_id`` gallery images, one of them from the query's camera (removed by the
    protocol). Writes ``root/market1501/{bounding_box_train,query,bounding_box_test}`` plus ``photo_ids.csv``
    (pid, photo) and returns the dataset folder; ``root`` must be absent, empty or labelled synthetic.
    """
    overlap = set(train_photos) & set(test_photos)
    if overlap:
        raise ValueError(f"photos in both splits: {sorted(overlap)}")
    claim(root, "write_photo_reid_dataset")
    d = claim(Path(root) / "market1501", "write_photo_reid_dataset")
    rng = np.random.default_rng(seed)
    dirs = {"train": d / "bounding_box_train", "query": d / "query", "gallery": d / "bounding_box_test"}
    for p in dirs.values():
        p.mkdir(parents=True, exist_ok=True)
    rows = ["pid,photo,split"]
    pid = 0
    per_photo = -(-num_distractors // len(test_photos)) if test_photos else 0
    distractors: list[tuple[np.ndarray, tuple[float, float, float]]] = []
    for split, photos, n_ids in (("train", train_photos, train_ids_per_photo), ("test", test_photos,
                                                                                  test_ids_per_photo)):
        for photo in photos:
            img = load_photo(photo)
            anchors = _anchors(img, n_ids + (per_photo if split == "test" else 0), rng)
            distractors += [(img, a) for a in anchors[n_ids:]]  # regions apart from every identity's region
            for anchor in anchors[:n_ids]:
                pid += 1
                rows.append(f"{pid},{photo},{split}")
                if split == "train":
                    for k in range(train_images_per_id):
                        cam = int(rng.integers(num_cameras))
                        _save(dirs["train"] / _name("market1501", pid, cam, k), photo_view(img, anchor, cam, rng, size))
                    continue
                qcam = int(rng.integers(2))
                _save(dirs["query"] / _name("market1501", pid, qcam, 10_000), photo_view(img, anchor, qcam, rng, size))
                cams = [(qcam + 1 + int(rng.integers(num_cameras - 1))) % num_cameras
                        for _ in range(gallery_images_per_id)]
                cams[-1] = qcam  # one same-camera image: removed by the protocol
                for j, cam in enumerate(cams):
                    _save(dirs["gallery"] / _name("market1501", pid, cam, 10_001 + j),
                          photo_view(img, anchor, cam, rng, size))
    for j, (img, anchor) in enumerate(distractors[:num_distractors]):  # other regions of the test photos: pid 0
        cam = int(rng.integers(num_cameras))
        _save(dirs["gallery"] / _name("market1501", 0, cam, 20_000 + j), photo_view(img, anchor, cam, rng, size))
    fresh(d / "photo_ids.csv", "write_photo_reid_dataset").write_text("\n".join(rows) + "\n")
    return d
