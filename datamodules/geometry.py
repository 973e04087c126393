"""Geometry datamodules (Dens3R): synthetic exact scenes, NYUv2 labelled .mat, ScanNet scene folders,
DSINE normal benchmarks, and image-pair lists with poses.

Samples are dicts of arrays. Pairs: ``img1, img2`` (3, H, W) in [-1, 1], ``depth1/2``, ``valid1/2``, ``pts1/2``
(camera-frame pointmaps, OpenCV axes), ``normal1/2`` (camera-frame unit normals, zero = unknown), ``K1/2``,
``pose2to1`` (4x4, camera-2 -> camera-1). Single images: ``img``, and ``depth``/``valid`` or
``normal``/``normal_valid``. Evaluation sets resize the image to multiples of 16 without cropping and keep
the ground truth at its own resolution (the task resizes the prediction back).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from zoo.layers.geometry import normals_from_pointmap

from ._image import open_rgb8
from ._layout import DatasetLayoutError, layout_error, require_dataset
from .synthetic.geometry import pair_sample, render_views

__all__ = [
    "BadSampleError", "DSINENormalDataModule", "DSINENormals", "DatasetLayoutError", "NYUv2DataModule",
    "NYUv2Labeled", "PairList", "PairListDataModule", "ScanNetPairDataModule", "ScanNetPairs",
    "SyntheticGeometryDataModule", "SyntheticPairs", "parse_normal_axes",
]

_logger = logging.getLogger(__name__)


class BadSampleError(ValueError):
    """A file is corrupt or inconsistent; the message names it."""


def _network_hw(h: int, w: int, size: int | None, patch: int = 16) -> tuple[int, int]:
    """Long side -> ``size`` (None keeps the scale), both sides rounded to multiples of ``patch`` (no crop)."""
    s = 1.0 if size is None else size / max(h, w)
    return max(patch, round(h * s / patch) * patch), max(patch, round(w * s / patch) * patch)


def _resize_img(img: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """uint8/float (H, W, 3) -> float32 (3, h, w) in [-1, 1]."""
    t = torch.from_numpy(np.array(img, copy=True)).float()
    if img.dtype == np.uint8:
        t = t / 255.0
    t = t.permute(2, 0, 1)[None]
    if tuple(t.shape[-2:]) != tuple(hw):
        t = F.interpolate(t, size=hw, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return (t[0] * 2 - 1).numpy()


def _resize_nearest(x: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    if x.shape[:2] == tuple(hw):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x)).float()
    t = t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]
    t = F.interpolate(t, size=hw, mode="nearest")[0]
    out = t[0] if x.ndim == 2 else t.permute(1, 2, 0)
    return out.numpy().astype(x.dtype)


def _pointmap(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    h, w = depth.shape
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    return np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1).astype(np.float32)


def _normals_from_depth_pts(pts: np.ndarray, valid: np.ndarray) -> np.ndarray:
    n, ok = normals_from_pointmap(torch.from_numpy(pts)[None], torch.from_numpy(valid)[None])
    return (n[0] * ok[0, ..., None]).numpy().astype(np.float32)


def _scale_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    K = K.astype(np.float32).copy()
    K[0] *= sx
    K[1] *= sy
    return K


def _require(root: Path, required: list[str], name: str, tree: str, source: str) -> None:
    require_dataset(root, name=name, tree=tree, source=source, required=required)


class _Base(pl.LightningDataModule):
    def __init__(self, batch_size: int, num_workers: int) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        self.test_set: Dataset | None = None

    def _loader(self, ds: Dataset | None, shuffle: bool) -> DataLoader:
        if ds is None:
            raise RuntimeError(f"{type(self).__name__} has no such split")
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=shuffle and len(ds) >= self.batch_size, persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        # a ResolutionSchedule may have changed self.size since setup(): apply it to the training set
        size = getattr(self, "size", None)
        if self.train_set is not None and size is not None and getattr(self.train_set, "size", size) != size:
            self.train_set.size = size  # type: ignore[attr-defined]
            if hasattr(self.train_set, "_cache"):
                self.train_set._cache.clear()  # type: ignore[attr-defined]
        return self._loader(self.train_set, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


# ------------------------------------------------------------------------------------------ synthetic
class SyntheticPairs(Dataset):
    """Procedural ray-cast scenes (exact depth, normals, pointmaps, poses); scene ``i`` uses seed ``seed + i``, textured
    with ``textures`` (``skimage.data`` photograph names; None = all the renderer's)."""

    def __init__(self, n: int, size: int = 64, seed: int = 0, cache: bool = True,
                 textures: tuple[str, ...] | list[str] | None = None) -> None:
        self.n, self.size, self.seed, self.cache = n, size, seed, cache
        self.textures = tuple(textures) if textures else None
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        v1, v2 = render_views(self.seed + i, 2, self.size, self.size, textures=self.textures)
        s = pair_sample(v1, v2)
        if self.cache:
            self._cache[i] = s
        return s


class SyntheticGeometryDataModule(_Base):
    """Rendered pairs with exact ground truth for training, the demo and tests (no files needed).

    Args:
        num_train: training scenes.
        num_val: validation scenes (held out: different seeds).
        num_test: test scenes (held out).
        size: square image size (multiple of 16).
        seed: base seed of the training scenes.
        cache: keep rendered samples in memory.
        batch_size: batch size.
        num_workers: dataloader workers.
        train_textures: photographs texturing the training scenes (None: all the renderer's).
        heldout_textures: photographs texturing the validation and test scenes (None: all); disjoint from
            ``train_textures`` for a held-out-texture split.
    """

    def __init__(self, num_train: int = 256, num_val: int = 32, num_test: int = 32, size: int = 64, seed: int = 0,
                 cache: bool = True, batch_size: int = 8, num_workers: int = 0,
                 train_textures: list[str] | None = None, heldout_textures: list[str] | None = None) -> None:
        super().__init__(batch_size, num_workers)
        if size % 16:
            raise ValueError(f"size must be a multiple of 16, got {size}")
        self.num_train, self.num_val, self.num_test = num_train, num_val, num_test
        self.size, self.seed, self.cache = size, seed, cache
        self.train_textures, self.heldout_textures = train_textures, heldout_textures

    def setup(self, stage: str | None = None) -> None:
        tr, ho = self.train_textures, self.heldout_textures
        self.train_set = SyntheticPairs(self.num_train, self.size, self.seed, self.cache, tr)
        self.val_set = SyntheticPairs(self.num_val, self.size, self.seed + 1_000_000, self.cache, ho)
        self.test_set = SyntheticPairs(self.num_test, self.size, self.seed + 2_000_000, self.cache, ho)


# --------------------------------------------------------------------------------------------- NYUv2
NYU_TREE = """<root>/
  nyu_depth_v2_labeled.mat   (MATLAB v7.3 / HDF5: images [N,3,W,H] uint8, depths [N,W,H] float metres
                              (in-painted), rawDepths [N,W,H] (0 = no Kinect reading; used as the validity mask))
  splits.mat                 (testNdxs: 654 1-based indices, trainNdxs: 795)
  masks.mat                  (optional, MATLAB v7.3: masks [N,W,H], > 0 = valid, indexed like depths - the
                              'gt/masks.mat' of the Dens3R/MonoSDF evaluation packs; ANDed with the rawDepths mask)"""
NYU_SOURCE = ("NYU Depth V2 labelled dataset, https://cs.nyu.edu/~silberman/datasets/nyu_depth_v2.html "
              "(nyu_depth_v2_labeled.mat, 2.8 GB, and splits.mat); not auto-downloaded")


class NYUv2Labeled(Dataset):
    """Frames of the official labelled .mat (read with h5py), cut by the Dens3R border crop.

    Valid GT = finite ``depths`` within ``(1e-3, max_depth)``, where the raw Kinect depth exists
    (``rawDepths > 0``: the in-painted values are not evaluated; ``raw_mask=False`` evaluates them) and, when a
    ``masks.mat`` lies beside the .mat, where that official mask is > 0 ("invalid depth masked", spec; the
    released eval_depth.py applies its masks.mat and the range (1e-3, 20))."""

    def __init__(self, root: str | os.PathLike, split: str = "test", size: int | None = 640,
                 border: tuple[int, int, int, int] | None = (9, 9, 12, 12), max_depth: float = 20.0,
                 raw_mask: bool = True) -> None:
        import scipy.io

        self.root = Path(root)
        self.mat = self.root / "nyu_depth_v2_labeled.mat"
        self.mask_mat = self.root / "masks.mat"
        self.size, self.border, self.max_depth = size, border, max_depth
        self.n_bad_depth = 0
        try:
            import h5py

            with h5py.File(self.mat, "r") as f:
                if "images" not in f or "depths" not in f:
                    raise BadSampleError(f"{self.mat}: variables 'images' and 'depths' expected, found {list(f)}")
                self.n_total = f["images"].shape[0]
                if f["depths"].shape[0] != self.n_total or f["images"].shape[2:] != f["depths"].shape[1:]:
                    raise BadSampleError(f"{self.mat}: images {f['images'].shape} and depths {f['depths'].shape} "
                                         "disagree")
                self.use_raw = raw_mask and "rawDepths" in f
                if self.use_raw and f["rawDepths"].shape != f["depths"].shape:
                    raise BadSampleError(f"{self.mat}: rawDepths {f['rawDepths'].shape} and depths "
                                         f"{f['depths'].shape} disagree")
                if raw_mask and not self.use_raw:
                    _logger.warning("%s has no 'rawDepths': in-painted depth is evaluated everywhere", self.mat)
                depth_shape = f["depths"].shape
        except OSError as e:
            raise BadSampleError(f"{self.mat} is not a readable MATLAB v7.3 (HDF5) file: {e}") from e
        self.use_mask = self.mask_mat.is_file()
        if self.use_mask:
            try:
                with h5py.File(self.mask_mat, "r") as f:
                    if "masks" not in f or f["masks"].shape != depth_shape:
                        raise BadSampleError(f"{self.mask_mat}: variable 'masks' of shape {depth_shape} expected, "
                                             f"found {({k: f[k].shape for k in f})}")
            except OSError as e:
                raise BadSampleError(f"{self.mask_mat} is not a readable MATLAB v7.3 (HDF5) file: {e}") from e
        try:
            splits = scipy.io.loadmat(self.root / "splits.mat")
        except Exception as e:  # noqa: BLE001
            raise BadSampleError(f"{self.root / 'splits.mat'} is not a readable .mat file: {e}") from e
        key = {"test": "testNdxs", "train": "trainNdxs"}[split]
        self.indices = [int(i) - 1 for i in np.asarray(splits[key]).reshape(-1)]
        bad = [i + 1 for i in self.indices if not 0 <= i < self.n_total]
        if bad:
            raise BadSampleError(f"{self.root / 'splits.mat'}: indices {bad[:5]} outside 1..{self.n_total}")
        self._h5 = None
        self._mask_h5 = None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: int) -> dict[str, Any]:
        import h5py

        if self._h5 is None:  # opened lazily in each worker
            self._h5 = h5py.File(self.mat, "r")
            self._mask_h5 = h5py.File(self.mask_mat, "r") if self.use_mask else None
        i = self.indices[k]
        img = self._h5["images"][i].transpose(2, 1, 0)  # (3, W, H) column-major -> (H, W, 3)
        depth = self._h5["depths"][i].T.astype(np.float32)
        ok = np.ones(depth.shape, bool)
        if self.use_raw:
            ok &= np.nan_to_num(self._h5["rawDepths"][i].T) > 0
        if self._mask_h5 is not None:
            ok &= self._mask_h5["masks"][i].T > 0
        h, w = depth.shape
        if self.border is not None:
            t, b, l, r = (round(v * s) for v, s in zip(self.border, (h / 480, h / 480, w / 640, w / 640)))
            img, depth, ok = img[t:h - b, l:w - r], depth[t:h - b, l:w - r], ok[t:h - b, l:w - r]
        finite = np.isfinite(depth)
        if not finite.all():
            self.n_bad_depth += 1
            _logger.warning("%s frame %d: %d NaN/inf depth values masked", self.mat, i + 1, int((~finite).sum()))
        valid = ok & finite & (depth > 1e-3) & (depth < self.max_depth)
        depth = np.where(finite, depth, 0).astype(np.float32)
        return {"img": _resize_img(img, _network_hw(*depth.shape, self.size)), "depth": depth, "valid": valid,
                "index": i + 1}


class NYUv2DataModule(_Base):
    """NYUv2 depth evaluation on the official 654-image test split (labelled .mat via h5py).

    Args:
        root: folder with ``nyu_depth_v2_labeled.mat`` and ``splits.mat`` (and optionally ``masks.mat``).
        size: network input long side (multiples of 16, no crop); None keeps the native size.
        border: (top, bottom, left, right) border cut at 480x640 (Dens3R eval: 9/9/12/12); None keeps it.
        max_depth: max valid GT depth in metres (20, as the released eval_depth.py; NYU depth stays below 10).
        raw_mask: evaluate only pixels with a raw Kinect reading (``rawDepths > 0``) when the .mat has it.
        batch_size: batch size.
        num_workers: dataloader workers.
    """

    def __init__(self, root: str, size: int | None = 640, border: tuple[int, int, int, int] | None = (9, 9, 12, 12),
                 max_depth: float = 20.0, raw_mask: bool = True, batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root, self.size, self.border, self.max_depth = Path(root), size, border, max_depth
        self.raw_mask = raw_mask

    def prepare_data(self) -> None:
        _require(self.root, ["nyu_depth_v2_labeled.mat", "splits.mat"], "NYUv2", NYU_TREE, NYU_SOURCE)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        self.test_set = NYUv2Labeled(self.root, "test", self.size, self.border, self.max_depth, self.raw_mask)
        self.val_set = self.test_set


# ------------------------------------------------------------------------------------------- ScanNet
SCANNET_TREE = """<root>/
  scene0000_00/
    color/<frame>.jpg            (any resolution; resized to the depth resolution)
    depth/<frame>.png            (uint16 millimetres)
    pose/<frame>.txt             (4x4 camera-to-world; frames with inf/NaN poses are skipped)
    intrinsic/intrinsic_depth.txt (4x4; intrinsic_color.txt is not needed)
  scene0000_01/ ..."""
SCANNET_SOURCE = ("ScanNet, http://www.scan-net.org (terms of use required); export the .sens files with the "
                  "official SensReader (python/reader.py --export_color_images --export_depth_images --export_poses "
                  "--export_intrinsics); not auto-downloaded")


class ScanNetPairs(Dataset):
    """Frame pairs ``(i, i + frame_gap)`` of ScanNet-style scene folders, with GT pointmaps and relative pose."""

    def __init__(self, scenes: list[Path], frame_gap: int = 10, size: int = 512, normals_from_depth: bool = True,
                 max_depth: float = 10.0) -> None:
        self.size, self.normals_from_depth, self.max_depth = size, normals_from_depth, max_depth
        self.pairs: list[tuple[Path, str, str]] = []
        self.n_skipped = 0
        for sc in scenes:
            frames = sorted((p.stem for p in (sc / "depth").glob("*.png")), key=lambda s: int(s) if s.isdigit() else s)
            good = []
            for f in frames:
                try:
                    pose = np.loadtxt(sc / "pose" / f"{f}.txt")
                except (OSError, ValueError) as e:
                    raise BadSampleError(f"{sc / 'pose' / (f + '.txt')}: unreadable pose ({e})") from e
                if pose.shape != (4, 4) or not np.isfinite(pose).all():
                    self.n_skipped += 1
                    continue
                good.append(f)
            ids = {int(f): f for f in good if f.isdigit()}
            # pairs (i, i + frame_gap) starting every frame_gap frames
            self.pairs += [(sc, ids[a], ids[a + frame_gap]) for a in sorted(ids)
                           if a % frame_gap == 0 and a + frame_gap in ids]
        if self.n_skipped:
            _logger.warning("ScanNet: %d frames with invalid (inf/NaN) poses skipped", self.n_skipped)

    def __len__(self) -> int:
        return len(self.pairs)

    def _frame(self, scene: Path, f: str) -> dict[str, np.ndarray]:
        from PIL import Image

        cpath, dpath = scene / "color" / f"{f}.jpg", scene / "depth" / f"{f}.png"
        try:
            img = open_rgb8(cpath)  # 16-bit images rescaled, not clipped
            depth = np.asarray(Image.open(dpath)).astype(np.float32) / 1000.0
        except Exception as e:  # noqa: BLE001
            raise BadSampleError(f"{scene.name}/{f}: cannot read {cpath.name}/{dpath.name}: {e}") from e
        if depth.ndim != 2:
            raise BadSampleError(f"{dpath}: depth must be a single-channel uint16 PNG, got shape {depth.shape}")
        K = np.loadtxt(scene / "intrinsic" / "intrinsic_depth.txt")[:3, :3]
        h, w = depth.shape
        hw = _network_hw(h, w, self.size)
        depth = _resize_nearest(depth, hw)
        K = _scale_K(K, hw[1] / w, hw[0] / h)
        valid = np.isfinite(depth) & (depth > 1e-3) & (depth < self.max_depth)
        depth = np.where(valid, depth, 0).astype(np.float32)
        pts = _pointmap(depth, K)
        normal = _normals_from_depth_pts(pts, valid) if self.normals_from_depth else np.zeros_like(pts)
        return {"img": _resize_img(img, hw), "depth": depth, "valid": valid, "pts": pts, "normal": normal, "K": K,
                "c2w": np.loadtxt(scene / "pose" / f"{f}.txt").astype(np.float32)}

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        scene, a, b = self.pairs[i]
        f1, f2 = self._frame(scene, a), self._frame(scene, b)
        out = {"pose2to1": (np.linalg.inv(f1["c2w"]) @ f2["c2w"]).astype(np.float32)}
        for k in ("img", "depth", "valid", "pts", "normal", "K"):
            out[f"{k}1" if k != "pts" else "pts1"] = f1[k]
            out[f"{k}2" if k != "pts" else "pts2"] = f2[k]
        return out


class ScanNetPairDataModule(_Base):
    """Training/validation pairs from ScanNet-style scene folders.

    Args:
        root: folder of ``scene*`` folders.
        val_scenes: scene names held out for validation (default: the last scene).
        frame_gap: pair frame ``i`` with the next valid frame at most this many ids later.
        size: network long side (coarse-to-fine: 512, then 1024 via ``ResolutionSchedule``).
        normals_from_depth: derive GT normals from the depth pointmap (ScanNet has no GT normals).
        max_depth: max valid depth in metres.
        batch_size: batch size.
        num_workers: dataloader workers.
    """

    def __init__(self, root: str, val_scenes: list[str] | None = None, frame_gap: int = 10, size: int = 512,
                 normals_from_depth: bool = True, max_depth: float = 10.0, batch_size: int = 4,
                 num_workers: int = 4) -> None:
        super().__init__(batch_size, num_workers)
        self.root, self.val_scenes, self.frame_gap, self.size = Path(root), val_scenes, frame_gap, size
        self.normals_from_depth, self.max_depth = normals_from_depth, max_depth

    def _scenes(self) -> list[Path]:
        _require(self.root, [], "ScanNet", SCANNET_TREE, SCANNET_SOURCE)
        scenes = sorted(p for p in self.root.iterdir() if p.is_dir() and p.name.startswith("scene"))
        if not scenes:
            raise layout_error(f"no scene* folders in {self.root}.", name="ScanNet", tree=SCANNET_TREE,
                               source=SCANNET_SOURCE, root=self.root)
        for sc in scenes:
            _require(sc, ["color", "depth", "pose", "intrinsic/intrinsic_depth.txt"], f"ScanNet scene {sc.name}",
                     SCANNET_TREE, SCANNET_SOURCE)
        return scenes

    def prepare_data(self) -> None:
        self._scenes()

    def setup(self, stage: str | None = None) -> None:
        scenes = self._scenes()
        val = set(self.val_scenes) if self.val_scenes is not None else {scenes[-1].name}
        tr = [s for s in scenes if s.name not in val] or scenes
        kw = dict(frame_gap=self.frame_gap, size=self.size, normals_from_depth=self.normals_from_depth,
                  max_depth=self.max_depth)
        self.train_set = ScanNetPairs(tr, **kw)
        self.val_set = ScanNetPairs([s for s in scenes if s.name in val], **kw)
        self.test_set = self.val_set


# ---------------------------------------------------------------------------------------------- DSINE
DSINE_TREE = """<root>/
  <dataset>/                (nyuv2, scannet, ibims, sintel, oasis, vkitti, diode ...)
    <name>_img.png          (RGB)
    <name>_normal.png       (uint8 RGB = (n + 1) / 2 * 255, camera frame; all-zero pixels = invalid)
    <name>_intrins.npy      (optional 3x3)
  ('<name>-normal.png' naming is accepted too)"""
DSINE_SOURCE = "DSINE evaluation sets, https://github.com/baegwangbin/DSINE (dsine_eval.zip); not auto-downloaded"


def parse_normal_axes(spec: str) -> tuple[list[int], np.ndarray]:
    """``"x,y,z"`` style axis map -> ``(source index, sign)`` per output axis; e.g. ``"-x,y,z"`` negates x and
    ``"z,y,x"`` swaps x and z. Output axis i = sign_i * input[index_i]."""
    parts = [p.strip() for p in spec.split(",")]
    idx, sign = [], []
    for p in parts:
        neg = p.startswith("-")
        a = p.lstrip("+-")
        if a not in ("x", "y", "z"):
            raise ValueError(f"normal_axes {spec!r}: each entry is [-]x, [-]y or [-]z")
        idx.append("xyz".index(a))
        sign.append(-1.0 if neg else 1.0)
    if sorted(idx) != [0, 1, 2]:
        raise ValueError(f"normal_axes {spec!r}: must name x, y and z once each")
    return idx, np.asarray(sign, np.float32)


class DSINENormals(Dataset):
    """Normal-benchmark images with GT normal PNGs; non-unit GT normals are masked and counted; ``normal_axes``
    maps the file's axes to the model's (OpenCV camera frame: x right, y down, z forward)."""

    def __init__(self, folder: Path, size: int | None = None, unit_tol: float = 0.1,
                 normal_axes: str = "x,y,z") -> None:
        self.size, self.unit_tol = size, unit_tol
        self.axes = parse_normal_axes(normal_axes)
        self.items: list[tuple[Path, Path]] = []
        for n in sorted(folder.glob("*normal.png")):
            stem = n.name[: -len("_normal.png")] if n.name.endswith("_normal.png") else n.name[: -len("-normal.png")]
            cands = [folder / f"{stem}_img.png", folder / f"{stem}-img.png", folder / f"{stem}.png",
                     folder / f"{stem}.jpg", folder / f"{stem}_img.jpg"]
            img = next((c for c in cands if c.exists()), None)
            if img is None:
                raise BadSampleError(f"{n}: no matching image ({', '.join(c.name for c in cands[:3])})")
            self.items.append((img, n))
        self.n_masked = 0

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        ip, npth = self.items[i]
        try:
            img = open_rgb8(ip)  # 16-bit images rescaled, not clipped
            raw = open_rgb8(npth).astype(np.float32)
        except Exception as e:  # noqa: BLE001
            raise BadSampleError(f"cannot read {ip} / {npth}: {e}") from e
        if img.shape[:2] != raw.shape[:2]:
            raise BadSampleError(f"{ip} is {img.shape[:2]} but its normal map {npth} is {raw.shape[:2]}")
        n = raw / 255.0 * 2 - 1
        norm = np.linalg.norm(n, axis=-1)
        nonzero = raw.sum(-1) > 0
        unit = np.abs(norm - 1) <= self.unit_tol
        bad = nonzero & ~unit
        if bad.any():
            self.n_masked += int(bad.sum())
        valid = nonzero & unit
        n = np.where(valid[..., None], n / np.maximum(norm, 1e-6)[..., None], 0).astype(np.float32)
        idx, sign = self.axes
        n = np.ascontiguousarray(n[..., idx] * sign)
        return {"img": _resize_img(img, _network_hw(*img.shape[:2], self.size)), "normal": n, "normal_valid": valid}


class DSINENormalDataModule(_Base):
    """Surface-normal evaluation on a DSINE-format benchmark folder.

    Args:
        root: DSINE eval root.
        dataset: sub-folder (``nyuv2``, ``scannet``, ``ibims``, ``sintel``, ...).
        size: network long side (multiples of 16, no crop); None keeps the native size.
        unit_tol: GT normals whose length differs from 1 by more than this are masked (and counted).
        normal_axes: axis map from the files' normals to the model's frame (OpenCV camera axes, normals facing
            the camera), e.g. ``"-x,y,z"`` negates x, ``"z,y,x"`` swaps x and z; ``"x,y,z"`` = files already in
            that frame. Angular errors are unchanged when a reflection is applied to prediction and GT together,
            so a flip of the *prediction* (the released eval_normal.py negates the predicted x of the released
            weights) is expressed here too, composed with the dataset's own axis convention (model card).
        batch_size: batch size.
        num_workers: dataloader workers.
    """

    def __init__(self, root: str, dataset: str = "nyuv2", size: int | None = 1024, unit_tol: float = 0.1,
                 normal_axes: str = "x,y,z", batch_size: int = 1, num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root, self.dataset, self.size, self.unit_tol = Path(root), dataset, size, unit_tol
        parse_normal_axes(normal_axes)  # fail at construction on a bad spec
        self.normal_axes = normal_axes

    def prepare_data(self) -> None:
        _require(self.root, [self.dataset], "DSINE", DSINE_TREE, DSINE_SOURCE)
        if not any((self.root / self.dataset).glob("*normal.png")):
            raise layout_error(f"no *_normal.png files in {self.root / self.dataset}.", name="DSINE", tree=DSINE_TREE,
                               source=DSINE_SOURCE, root=self.root)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        self.test_set = DSINENormals(self.root / self.dataset, self.size, self.unit_tol, self.normal_axes)
        self.val_set = self.test_set


# ----------------------------------------------------------------------------------------- pair lists
PAIRS_TREE = """<root>/
  pairs.txt     one pair per line: img0 img1 rot0 rot1 K0(9 values) K1(9) T_0to1(16, row-major 4x4 mapping
                camera-0 to camera-1 coordinates)  (the ScanNet-1500 / SuperGlue test-pair format)
  <images referenced by pairs.txt, relative to root>"""
PAIRS_SOURCE = ("ScanNet-1500: scannet_test_1500 + scannet_test_pairs_with_gt.txt from the SuperGlue / LoFTR "
                "repositories (ScanNet terms apply); any list in this format works")


class PairList(Dataset):
    """Image pairs with intrinsics and GT relative pose from a ScanNet-1500-format text file."""

    def __init__(self, root: Path, pairs_file: str = "pairs.txt", size: int = 512) -> None:
        self.root, self.size = root, size
        self.rows = []
        path = root / pairs_file
        for ln, line in enumerate(path.read_text().splitlines(), 1):
            tok = line.split()
            if not tok:
                continue
            if len(tok) != 38:
                raise BadSampleError(f"{path}:{ln}: expected 38 fields (2 names, 2 rotations, 9 + 9 + 16 numbers), "
                                     f"got {len(tok)}")
            try:
                vals = np.array([float(t) for t in tok[4:]], dtype=np.float64)
            except ValueError as e:
                raise BadSampleError(f"{path}:{ln}: non-numeric camera values ({e})") from e
            self.rows.append((tok[0], tok[1], vals[:9].reshape(3, 3), vals[9:18].reshape(3, 3),
                              vals[18:].reshape(4, 4)))

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        n0, n1, K0, K1, T01 = self.rows[i]
        out: dict[str, np.ndarray] = {}
        for k, (name, K) in enumerate(((n0, K0), (n1, K1)), 1):
            p = self.root / name
            try:
                img = open_rgb8(p)  # 16-bit images rescaled, not clipped
            except Exception as e:  # noqa: BLE001
                raise BadSampleError(f"cannot read image {p}: {e}") from e
            h, w = img.shape[:2]
            hw = _network_hw(h, w, self.size)
            out[f"img{k}"] = _resize_img(img, hw)
            out[f"K{k}"] = _scale_K(K, hw[1] / w, hw[0] / h)
        out["pose2to1"] = np.linalg.inv(T01).astype(np.float32)  # camera-1 (second image) -> camera-0 (first)
        return out


class PairListDataModule(_Base):
    """Relative-pose evaluation (pose AUC@5/10/20) on an image-pair list with GT poses.

    Args:
        root: folder holding ``pairs_file`` and the images it names.
        pairs_file: the list (ScanNet-1500 format).
        size: network long side.
        batch_size: batch size (pairs of one batch must share a size).
        num_workers: dataloader workers.
    """

    def __init__(self, root: str, pairs_file: str = "pairs.txt", size: int = 512, batch_size: int = 1,
                 num_workers: int = 0) -> None:
        super().__init__(batch_size, num_workers)
        self.root, self.pairs_file, self.size = Path(root), pairs_file, size

    def prepare_data(self) -> None:
        _require(self.root, [self.pairs_file], "image-pair list", PAIRS_TREE, PAIRS_SOURCE)

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        self.test_set = PairList(self.root, self.pairs_file, self.size)
        self.val_set = self.test_set
