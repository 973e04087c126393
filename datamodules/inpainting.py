"""Image inpainting data: CelebA-HQ and Places2 (Places365-Standard) folders + split lists, and hole masks.

A batch is ``{'image': (B,3,S,S) in [-1, 1], 'mask': (B,1,S,S) with 1 = hole, 'path': [str]}``.

Masks (``train_mask`` / ``eval_mask``), generated at the final image size ``S``:
- ``'free_form'``: random brush strokes, the official PEPSI generator (``ff_mask``: 3..5 strokes of 5..15 vertices,
  segment length 20..50 px, width 15..30 px at 256x256), lengths scaled by ``S / 256``;
- ``'square_center'`` / ``'square_random'``: a 128x128 square at 256x256 (side ``S / 2``), centred or at a random
  offset;
- ``'square_list'`` (evaluation only): the same square at fixed offsets read from ``mask_list``, a text file of one
  ``x y`` per image (the official ``List/test_mask256.txt``, ``<mask path> x y`` lines, works as is), paired by index
  with the evaluated split's images (:func:`read_square_list`);
- ``'folder'``: mask images from ``mask_dir`` (e.g. the official ``test_mask256`` / ``test_maskff`` sets or the
  irregular-mask test sets), which must be ``S x S`` and binary (``mask_threshold`` binarises soft/JPEG masks).
Evaluation masks are seeded by the sample index, so every validation pass sees the same holes.

Real photographs for tests and the demo: ``datamodules.synthetic.write_skimage_photos`` lays scikit-image's bundled
photos out in the CelebA-HQ or Places2 layout (with the official-style list files), labelled synthetic.
"""
from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._base import SplitDataModule
from ._image import open_rgb8, to_8bit
from ._layout import DatasetLayoutError, layout_error, require_dataset
from ._verify import VerifyMode, verify_files
from .synthetic import is_synthetic, write_skimage_photos

_logger = logging.getLogger(__name__)

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
MaskKind = Literal["free_form", "square_center", "square_random", "square_list", "folder"]

__all__ = [
    "CelebAHQInpaintingDataModule", "InpaintingDataError", "InpaintingDataModule", "InpaintingImageDataset",
    "MaskGenerator", "PhotoCropsDataset", "PhotoCropsInpaintingDataModule", "Places2InpaintingDataModule",
    "free_form_mask", "load_image", "load_mask_image", "load_photo",
    "read_square_list", "square_mask",
]


class InpaintingDataError(ValueError):
    """A bad input file (unreadable image, mask of the wrong size or not binary); the message names the file."""


# ------------------------------------------------------------------------------------------------------ masks
def square_mask(size: int, hole: int | None = None, center: bool = True,
                rng: np.random.Generator | None = None) -> np.ndarray:
    """A square hole: side ``hole`` (default ``size // 2``, i.e. 128 at 256), centred or at a random offset.

    Returns:
        (size, size) float32, 1 = hole.
    """
    hole = size // 2 if hole is None else hole
    m = np.zeros((size, size), np.float32)
    if center:
        y = x = (size - hole) // 2
    else:
        rng = rng or np.random.default_rng()
        # upstream make_sq_mask: randint(0, size - hole - 1) inclusive
        y, x = (int(v) for v in rng.integers(0, max(size - hole - 1, 0), size=2, endpoint=True))
    m[y:y + hole, x:x + hole] = 1.0
    return m


def free_form_mask(size: int, rng: np.random.Generator | None = None, max_len: float = 50, max_width: float = 30,
                   max_angle: float = math.pi, max_num: int = 5, max_vertices: int = 15, min_len: float = 20,
                   min_width: float = 15, min_vertices: int = 5, scale: float | None = None) -> np.ndarray:
    """Free-form brush strokes, vectorised from the official ``ff_mask`` (same sampling and geometry).

    A mask has ``randint(3, max_num)`` strokes; each stroke starts at a random pixel and draws
    ``randint(min_vertices, max_vertices)`` segments of random angle in [-max_angle, max_angle] and length in
    [min_len, max_len]; a segment covers the pixels within ``width`` of its line (inside its widened bounding box)
    and of its two end points. Lengths and widths are given at 256x256 and scaled by ``scale`` (default size/256).

    Returns:
        (size, size) float32, 1 = hole.
    """
    rng = rng or np.random.default_rng()
    s = size / 256.0 if scale is None else scale
    max_len, min_len = max(1, round(max_len * s)), max(1, round(min_len * s))
    max_width, min_width = max(1, round(max_width * s)), max(1, round(min_width * s))
    hole = np.zeros((size, size), bool)
    xx, yy = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")  # x = row, y = column (as upstream)
    for _ in range(int(rng.integers(3, max(3, max_num), endpoint=True))):
        sx, sy = (int(v) for v in rng.integers(0, size, size=2, endpoint=True))
        n_ver = int(rng.integers(min_vertices, max_vertices, endpoint=True))
        width = int(rng.integers(min_width, max_width, endpoint=True))
        for _ in range(n_ver):
            angle = rng.uniform(-max_angle, max_angle)
            length = int(rng.integers(min_len, max_len, endpoint=True))
            ex = min(size - 1, max(0, int(sx + length * math.sin(angle))))
            ey = min(size - 1, max(0, int(sy + length * math.cos(angle))))
            lx, hx = min(sx, ex), max(sx, ex)
            ly, hy = min(sy, ey), max(sy, ey)
            if abs(sy - ey) + abs(sx - ex) != 0:  # pixels near the segment's line, inside the widened box
                wlx = max(0, lx - int(abs(width * math.cos(angle))))
                whx = min(size - 1, hx + 1 + int(abs(width * math.cos(angle))))
                wly = max(0, ly - int(abs(width * math.sin(angle))))
                why = min(size - 1, hy + 1 + int(abs(width * math.sin(angle))))
                bx, by = xx[wlx:whx, wly:why], yy[wlx:whx, wly:why]
                d = np.abs((ey - sy) * bx - (ex - sx) * by - ey * sx + sy * ex) / math.hypot(sy - ey, sx - ex)
                hole[wlx:whx, wly:why] |= d <= width
            wlx, whx = max(0, lx - width), min(size - 1, hx + width + 1)  # round caps at both ends
            wly, why = max(0, ly - width), min(size - 1, hy + width + 1)
            bx, by = xx[wlx:whx, wly:why], yy[wlx:whx, wly:why]
            cap = (np.hypot(sx - bx, sy - by) <= width) | (np.hypot(ex - bx, ey - by) <= width)
            hole[wlx:whx, wly:why] |= cap
            sx, sy = ex, ey
    return hole.astype(np.float32)


def load_mask_image(path: str | os.PathLike, size: int, holes_are: Literal["black", "white"] = "black",
                    threshold: float | None = None) -> np.ndarray:
    """Read a mask image; it must be ``size x size`` and binary (0/255 or 0/1) unless ``threshold`` binarises it.

    Args:
        path: the mask file.
        size: expected side.
        holes_are: 'black' (PEPSI's test masks: 0 = hole) or 'white'.
        threshold: binarise at this fraction of the maximum instead of requiring exact 0/255 values.

    Returns:
        (size, size) float32, 1 = hole.

    Raises:
        InpaintingDataError: unreadable, wrong size or not binary (the message names the file).
    """
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            arr = np.asarray(to_8bit(im, "L", path))  # 16-bit masks rescaled, not clipped
    except Exception as e:
        raise InpaintingDataError(f"cannot read mask image {path}: {type(e).__name__}: {e}") from e
    if arr.shape != (size, size):
        raise InpaintingDataError(f"mask {path} is {arr.shape[1]}x{arr.shape[0]}, expected {size}x{size} "
                                  f"(masks are not resized: resizing would blur the hole boundary)")
    top = 1 if arr.max() <= 1 else 255
    if threshold is None:
        bad = ~np.isin(arr, (0, top))
        if bad.any():
            raise InpaintingDataError(
                f"mask {path} is not binary: {int(bad.sum())} pixels are neither 0 nor {top} "
                f"(values {np.unique(arr[bad])[:5].tolist()}...); set mask_threshold to binarise it")
        white = arr == top
    else:
        white = arr >= threshold * top
    return (white if holes_are == "white" else ~white).astype(np.float32)


def read_square_list(path: str | os.PathLike, size: int, hole: int | None = None) -> list[tuple[int, int]]:
    """Read the fixed square-hole offsets of ``eval_mask: square_list``: one ``x y`` per line.

    Format (the official PEPSI ``List/test_mask256.txt`` is read as is): each non-blank line is ``x y`` or
    ``<anything> x y`` (the official lines are ``D:/dataset/inpainting/test_mask256/mask_%05d.png x y``; the first
    token is ignored); ``#`` starts a comment line. ``x`` and ``y`` are the integer top-left offsets, in pixels of the
    ``size x size`` image, of a ``hole x hole`` square (default ``size // 2``: 128 at 256). ``x`` is the ROW
    (vertical) offset and ``y`` the COLUMN offset: the official ``main.py`` crops the local-PSNR hole as
    ``img[:, x:x + 128, y:y + 128, :]`` of NHWC arrays (its offsets range over 0..127, from
    ``randint(0, 256 - 128 - 1)``); the official mask PNGs, not in its repository, are assumed to hold their hole at
    that crop (their ordering of x and y is an assumption, unverifiable without them). Line ``i`` belongs to the ``i``-th image of the evaluated split, as upstream
    pairs ``test_mask256.txt`` line ``i`` with ``test_fh256.txt`` line ``i``. The official list is for 256x256 images.

    Returns:
        ``[(x, y), ...]`` in file order.

    Raises:
        DatasetLayoutError: the file does not exist or holds no offsets.
        InpaintingDataError: a bad line (not 2 or 3 tokens, non-integer or out-of-range offsets); the message names
            the file and the line number.
    """
    path = Path(path)
    hole = size // 2 if hole is None else hole
    if not path.is_file():
        raise DatasetLayoutError(f"mask_list {path} does not exist: eval_mask 'square_list' needs a text file of one "
                                 f"'x y' offset per evaluation image (e.g. the official List/test_mask256.txt)")
    offsets: list[tuple[int, int]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        if len(tokens) not in (2, 3):
            raise InpaintingDataError(f"{path}, line {lineno}: expected 'x y' (or the official '<mask path> x y'), "
                                      f"got {line.strip()!r}")
        try:
            x, y = int(tokens[-2]), int(tokens[-1])
        except ValueError:
            raise InpaintingDataError(f"{path}, line {lineno}: the offsets must be integers, got "
                                      f"{' '.join(tokens[-2:])!r} in {line.strip()!r}") from None
        if not (0 <= x <= size - hole and 0 <= y <= size - hole):
            raise InpaintingDataError(f"{path}, line {lineno}: offset x={x} y={y} puts the {hole}x{hole} hole outside "
                                      f"the {size}x{size} image (0 <= x, y <= {size - hole}; the official list is "
                                      f"for 256x256 images)")
        offsets.append((x, y))
    if not offsets:
        raise DatasetLayoutError(f"mask_list {path} holds no 'x y' lines")
    return offsets


class MaskGenerator:
    """Picks the hole mask of one sample.

    Args:
        kind: 'free_form', 'square_center', 'square_random', 'square_list' or 'folder'.
        size: image side.
        mask_dir: folder of mask images (kind 'folder').
        holes_are: colour of the holes in the mask images.
        threshold: binarisation threshold for non-binary mask images (None = require binary).
        mask_list: text file of square-hole offsets (kind 'square_list', :func:`read_square_list`).
    """

    def __init__(self, kind: MaskKind, size: int, mask_dir: str | os.PathLike | None = None,
                 holes_are: Literal["black", "white"] = "black", threshold: float | None = None,
                 mask_list: str | os.PathLike | None = None) -> None:
        if kind not in ("free_form", "square_center", "square_random", "square_list", "folder"):
            raise ValueError(f"unknown mask kind {kind!r}: use free_form, square_center, square_random, square_list "
                             f"or folder")
        self.kind, self.size, self.holes_are, self.threshold = kind, size, holes_are, threshold
        self.files: list[Path] = []
        self.mask_list = Path(mask_list) if mask_list is not None else None
        self.offsets: list[tuple[int, int]] = []
        if kind == "square_list":
            if self.mask_list is None:
                raise DatasetLayoutError("mask kind 'square_list' needs mask_list, a text file of one 'x y' square "
                                         "offset per evaluation image (e.g. the official List/test_mask256.txt)")
            self.offsets = read_square_list(self.mask_list, size)
        if kind == "folder":
            if mask_dir is None or not Path(mask_dir).is_dir():
                raise DatasetLayoutError(f"mask kind 'folder' needs mask_dir, a folder of {size}x{size} binary mask "
                                         f"images (got {mask_dir!r})")
            self.files = sorted(p for p in Path(mask_dir).rglob("*") if p.suffix.lower() in IMAGE_EXTS)
            if not self.files:
                raise DatasetLayoutError(f"mask_dir {mask_dir} has no mask images ({', '.join(IMAGE_EXTS)})")

    def check_count(self, num_images: int, split: str) -> None:
        """Kind 'square_list': the list must have an offset for each of the split's ``num_images`` images (a longer
        list is used up to ``num_images``: the official one has 15,000 lines for 3,000 test images)."""
        if self.kind != "square_list":
            return
        if len(self.offsets) < num_images:
            raise InpaintingDataError(
                f"mask_list {self.mask_list} has {len(self.offsets)} 'x y' lines but the {split} split has "
                f"{num_images} images: one line per image is needed (line i = image i of the split, in list order)")
        if len(self.offsets) > num_images:
            _logger.info("mask_list %s: using the first %d of its %d offsets for the %d %s images", self.mask_list,
                         num_images, len(self.offsets), num_images, split)

    def __call__(self, index: int, rng: np.random.Generator) -> np.ndarray:
        if self.kind == "square_list":
            if index >= len(self.offsets):
                raise InpaintingDataError(f"mask_list {self.mask_list} has no line for image {index} "
                                          f"({len(self.offsets)} offsets)")
            x, y = self.offsets[index]
            hole = self.size // 2
            m = np.zeros((self.size, self.size), np.float32)
            m[x:x + hole, y:y + hole] = 1.0  # x = row, y = column (the official crop [:, x:x+128, y:y+128])
            return m
        if self.kind == "free_form":
            return free_form_mask(self.size, rng)
        if self.kind == "square_center":
            return square_mask(self.size, center=True)
        if self.kind == "square_random":
            return square_mask(self.size, center=False, rng=rng)
        path = self.files[index % len(self.files)]
        return load_mask_image(path, self.size, self.holes_are, self.threshold)


# ----------------------------------------------------------------------------------------------------- images
def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB. Raises :class:`InpaintingDataError` naming the file."""
    try:
        return open_rgb8(path)  # 16-bit images rescaled to 8 bits, not clipped to white
    except Exception as e:
        cause = e.__cause__ or e
        raise InpaintingDataError(f"cannot read image {path}: {type(cause).__name__}: {cause}") from e


def build_transform(size: int, train: bool, hflip: bool) -> Callable[..., dict[str, Any]]:
    """albumentations: resize to ``size x size`` (as upstream), optional flip in training, scale to [-1, 1]."""
    import albumentations as A
    from albumentations.pytorch import ToTensorV2

    ops: list[Any] = [A.Resize(size, size, interpolation=1)]
    if train and hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    ops += [A.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), max_pixel_value=255.0), ToTensorV2()]
    return A.Compose(ops)


class InpaintingImageDataset(Dataset):
    """Images + masks.

    Args:
        paths: image files.
        transform: albumentations transform producing a (3,S,S) tensor in [-1, 1].
        masks: the mask generator.
        seed: evaluation seed (masks depend on ``(seed, index)`` only); None draws fresh masks each time (training).
        on_bad_image: 'raise' (a clear error naming the file) or 'skip' (log it, count it, use the next image).
    """

    def __init__(self, paths: Sequence[Path], transform: Callable[..., dict[str, Any]], masks: MaskGenerator,
                 seed: int | None = None, on_bad_image: Literal["raise", "skip"] = "raise") -> None:
        self.paths = list(paths)
        self.transform = transform
        self.masks = masks
        self.seed = seed
        self.on_bad_image = on_bad_image
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.paths)

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng((self.seed, index))
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))  # per-worker torch seed

    def __getitem__(self, index: int) -> dict[str, Any]:
        for attempt in range(len(self.paths)):
            i = (index + attempt) % len(self.paths)
            path = self.paths[i]
            try:
                img = load_image(path)
            except InpaintingDataError as e:
                if self.on_bad_image == "raise":
                    raise
                self.skipped.append(str(path))
                _logger.warning("skipping bad image (%d skipped so far): %s", len(self.skipped), e)
                continue
            image = self.transform(image=img)["image"]
            mask = torch.from_numpy(self.masks(index, self._rng(index)))[None]
            return {"image": image, "mask": mask, "path": str(path)}
        raise InpaintingDataError(f"every image of the dataset is unreadable (e.g. {self.paths[0]})")


# ------------------------------------------------------------------------------------------------ datamodules
def read_split_list(list_file: Path, root: Path, image_dir: str) -> list[Path]:
    """Image paths of a split list (first token of each line; the rest, e.g. labels or offsets, is ignored).

    Entries may be relative to ``root/image_dir`` or to ``root``, or absolute; absolute paths from another machine
    (the official lists hold ``D:/dataset/inpainting/train_fh256/...``) are re-rooted by their last components.
    """
    entries = [ln.split()[0].replace("\\", "/") for ln in list_file.read_text().splitlines() if ln.strip()]
    if not entries:
        raise DatasetLayoutError(f"split list {list_file} is empty")
    base = root / image_dir

    def candidates(e: str) -> list[Path]:
        parts = [p for p in e.split("/") if p and not p.endswith(":")]
        out = [Path(e)] if Path(e).is_absolute() else []
        out += [base / "/".join(parts), root / "/".join(parts)]
        out += [root / "/".join(parts[-2:]), base / parts[-1]]
        return out

    # find the rule that works on the first entry, apply it to all (no stat of millions of files)
    for rule in range(len(candidates(entries[0]))):
        if candidates(entries[0])[rule].is_file():
            paths = [candidates(e)[rule] for e in entries]
            missing = [p for p in paths[:: max(1, len(paths) // 100)] if not p.is_file()]
            if missing:
                raise DatasetLayoutError(f"{list_file}: {len(missing)} sampled entries are missing, e.g. {missing[0]}")
            return paths
    raise DatasetLayoutError(f"{list_file}: its first entry {entries[0]!r} was not found under {base} or {root}")


def scan_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTS)


class InpaintingDataModule(SplitDataModule):
    """Image folder + split lists for inpainting. Subclasses fix the layout of a dataset.

    Args:
        root: dataset root.
        image_size: side S of the square images the model sees (256 in the paper).
        batch_size: images per batch (8 in the paper).
        num_workers: DataLoader workers.
        train_mask: mask of training samples: 'free_form' (paper), 'square_random', 'square_center' or 'folder'.
        eval_mask: mask of validation/test samples (fixed per sample index): one of the above or 'square_list'.
        mask_dir: folder of mask images for 'folder' masks (must be S x S and binary).
        mask_list: offsets file for 'square_list' masks: one ``x y`` (row, column of the S/2 x S/2 hole's top-left
            corner) per line, line i for image i of the evaluated split in its order (the split list's order, else
            sorted file names); the official List/test_mask256.txt works as is (see :func:`read_square_list`). A
            relative path is taken as given when it exists, else under ``root``.
        mask_holes_are: colour of the holes in mask images: 'black' (PEPSI's test masks) or 'white'.
        mask_threshold: binarise non-binary mask images at this fraction of white (None: they are an error).
        hflip: random horizontal flips in training (the paper uses no augmentation).
        on_bad_image: 'raise' a clear error naming an unreadable image, or 'skip' it (logged and counted); with
            ``verify`` on, every bad file of a split is found in ``setup`` and listed in one error (or left out).
        train_list: training split list, relative to root (None: every image under train_dir).
        val_list: validation split list.
        test_list: test split list.
        train_dir: training image folder under root (list entries are relative to it).
        val_dir: validation image folder.
        test_dir: test image folder.
        limit_val_images: use only the first N validation images (None: all).
        seed: seed of the evaluation masks.
        verify: check every image of the used splits in ``setup``: 'header' (cheap: opens, size, file end),
            'decode' (full decode; slow on big sets such as Places2) or 'off'.
    """

    #: printed when the layout is missing; subclasses fill it in
    expected_tree: str = ""
    where_to_get: str = ""

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 4,
        train_mask: MaskKind = "free_form",
        eval_mask: MaskKind = "square_random",
        mask_dir: str | None = None,
        mask_holes_are: Literal["black", "white"] = "black",
        mask_threshold: float | None = None,
        hflip: bool = False,
        on_bad_image: Literal["raise", "skip"] = "raise",
        train_list: str | None = None,
        val_list: str | None = None,
        test_list: str | None = None,
        train_dir: str = "train",
        val_dir: str = "val",
        test_dir: str = "test",
        limit_val_images: int | None = None,
        seed: int = 0,
        mask_list: str | None = None,
        verify: VerifyMode = "header",
    ) -> None:
        super().__init__()
        if train_mask == "square_list":
            raise ValueError("train_mask 'square_list' is not supported: the offsets list pairs fixed squares with "
                             "evaluation images; train with 'free_form' (paper) or 'square_random'")
        self.save_hyperparameters()
        self.root = Path(root)
        self.image_size = image_size
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits = {"train": (train_list, train_dir), "val": (val_list, val_dir), "test": (test_list, test_dir)}
        # own copy of the options (save_hyperparameters records the most derived class's arguments only)
        self.options = {"train_mask": train_mask, "eval_mask": eval_mask, "mask_dir": mask_dir,
                        "mask_holes_are": mask_holes_are, "mask_threshold": mask_threshold, "hflip": hflip,
                        "on_bad_image": on_bad_image, "limit_val_images": limit_val_images, "seed": seed,
                        "mask_list": mask_list, "verify": verify}
        self.skipped_files: list[str] = []
        self.datasets: dict[str, InpaintingImageDataset] = {}

    @property
    def in_chans(self) -> int:
        return 3

    # -------------------------------------------------------------------------------------------- layout
    def _layout(self) -> dict[str, Any]:
        return {"name": type(self).__name__, "tree": self.expected_tree, "source": self.where_to_get}

    def _layout_error(self, problem: str) -> DatasetLayoutError:
        return layout_error(problem, root=self.root, **self._layout())

    def split_paths(self, split: str) -> list[Path]:
        """The image files of ``split`` ('train', 'val', 'test')."""
        require_dataset(self.root, **self._layout())
        if is_synthetic(self.root) and not getattr(self, "_told_synthetic", False):
            self._told_synthetic = True
            _logger.warning("%s reads SYNTHETIC stand-in data at %s (SYNTHETIC.md)", type(self).__name__, self.root)
        list_name, image_dir = self.splits[split]
        if list_name is not None and (self.root / list_name).is_file():
            return read_split_list(self.root / list_name, self.root, image_dir)
        folder = self.root / image_dir
        if not folder.is_dir():
            missing = f"neither the list {self.root / list_name} nor " if list_name else ""
            raise self._layout_error(f"{split} split: {missing}the image folder {folder} exists.")
        paths = scan_images(folder)
        if not paths:
            raise self._layout_error(f"{split} split: {folder} has no images ({', '.join(IMAGE_EXTS)}).")
        return paths

    def mask_list_path(self) -> Path | None:
        """The ``mask_list`` file: as given when it exists, else relative to ``root``."""
        ml = self.options["mask_list"]
        if ml is None:
            return None
        p = Path(ml)
        if not p.is_absolute() and not p.is_file() and (self.root / p).is_file():
            return self.root / p
        return p

    def prepare_data(self) -> None:
        for split in self.splits:
            self.split_paths(split)

    def setup(self, stage: str | None = None) -> None:
        from types import SimpleNamespace

        hp = SimpleNamespace(**self.options)
        s = self.image_size
        eval_masks = MaskGenerator(hp.eval_mask, s, hp.mask_dir, hp.mask_holes_are, hp.mask_threshold,
                                   self.mask_list_path())
        want = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}
        for split in want.get(stage or "fit", ("train", "val", "test")):
            if split in self.datasets:
                continue
            paths = self.split_paths(split)
            if split == "val" and hp.limit_val_images:
                paths = paths[: hp.limit_val_images]
            paths = self._verified(paths, split)
            if split == "train":
                masks = MaskGenerator(hp.train_mask, s, hp.mask_dir, hp.mask_holes_are, hp.mask_threshold)
                self.datasets[split] = InpaintingImageDataset(paths, build_transform(s, True, hp.hflip), masks, None,
                                                              hp.on_bad_image)
            else:
                eval_masks.check_count(len(paths), split)
                self.datasets[split] = InpaintingImageDataset(paths, build_transform(s, False, False), eval_masks,
                                                              hp.seed, hp.on_bad_image)

    def _verified(self, paths: list[Path], split: str) -> list[Path]:
        """``paths`` checked up front (``verify``): every bad file in one error, or left out and counted."""
        on_bad = "skip" if self.options["on_bad_image"] == "skip" else "error"
        bad = verify_files(paths, verify=self.options["verify"], on_bad_file=on_bad,
                           what=f"{type(self).__name__} {split} split at {self.root}")
        if not bad:
            return paths
        self.skipped_files += sorted(bad)
        kept = [p for p in paths if str(p) not in bad]
        if not kept:
            raise InpaintingDataError(f"every image of the {split} split under {self.root} is unreadable")
        return kept

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        ds = self.datasets[split]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=shuffle and len(ds) >= self.batch_size, pin_memory=torch.cuda.is_available(),
                          persistent_workers=self.num_workers > 0)


class CelebAHQInpaintingDataModule(InpaintingDataModule):
    """CelebA-HQ at 256x256 in PEPSI's layout: 27,000 training and 3,000 test faces (validation = the test list).

    Args:
        root: dataset root.
        image_size: side S of the images (256 in the paper).
        batch_size: images per batch.
        num_workers: DataLoader workers.
        train_mask: training masks ('free_form' in the paper).
        eval_mask: evaluation masks (the paper: 128x128 squares and free-form, one test pass each; the official
            fixed squares are ``'square_list'`` with ``mask_list`` = the official List/test_mask256.txt, or
            ``'folder'`` with ``mask_dir`` = the official test_mask256 images, paired by sorted index).
        mask_dir: folder of mask images for 'folder' masks (e.g. the official test_mask256 / test_maskff).
        mask_list: offsets file for 'square_list' masks (one ``x y`` per line; line i = image i of the test list,
            in the list's order, as upstream pairs test_mask256.txt with test_fh256.txt).
        mask_holes_are: colour of the holes in mask images.
        mask_threshold: binarise non-binary mask images at this fraction (None: error).
        hflip: random horizontal flips in training.
        on_bad_image: 'raise' or 'skip' unreadable images.
        train_list: training list (the official List/train_fh256.txt works as is).
        val_list: validation list.
        test_list: test list.
        train_dir: training image folder.
        val_dir: validation image folder.
        test_dir: test image folder.
        limit_val_images: validate on the first N images only.
        seed: seed of the evaluation masks.
        verify: check every image of the used splits in ``setup``: 'header' (cheap: opens, size, file end),
            'decode' (full decode; slow on big sets such as Places2) or 'off'.
    """

    expected_tree = """<root>/
  train_fh256/img00000000.png ... img00026999.png   27,000 training faces, 256x256 PNG
  test_fh256/img00027000.png ... img00029999.png    3,000 test faces (also the validation split)
  train_fh256.txt  test_fh256.txt                   optional split lists, one image path per line; the official
                                                    List/*.txt work as is (their D:/dataset/inpainting/ prefix is
                                                    re-rooted here); without them the folders are listed
  test_mask256/mask_00000.png ...                   optional mask images for eval_mask: folder (0 = hole)
  test_mask256.txt                                  optional square offsets for eval_mask: square_list (mask_list;
                                                    the official List/test_mask256.txt, '<mask path> x y' lines)"""
    where_to_get = (
        "CelebA-HQ is not downloaded automatically (CelebA licence: non-commercial research only). Build it from "
        "CelebA with the progressive-GAN tooling (github.com/tkarras/progressive_growing_of_gans, dataset_tool.py "
        "create_celebahq) or take a pre-made release (e.g. CelebAMask-HQ's CelebA-HQ-img), resize to 256x256 and "
        "name the files img%08d.png; the split lists are List/*.txt of "
        "github.com/Forty-lock/PEPSI-Fast_image_inpainting_with_parallel_decoding_network.")

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 4,
        train_mask: MaskKind = "free_form",
        eval_mask: MaskKind = "square_random",
        mask_dir: str | None = None,
        mask_list: str | None = None,
        mask_holes_are: Literal["black", "white"] = "black",
        mask_threshold: float | None = None,
        hflip: bool = False,
        on_bad_image: Literal["raise", "skip"] = "raise",
        train_list: str | None = "train_fh256.txt",
        val_list: str | None = "test_fh256.txt",
        test_list: str | None = "test_fh256.txt",
        train_dir: str = "train_fh256",
        val_dir: str = "test_fh256",
        test_dir: str = "test_fh256",
        limit_val_images: int | None = None,
        seed: int = 0,
        verify: VerifyMode = "header",
    ) -> None:
        super().__init__(root, image_size, batch_size, num_workers, train_mask, eval_mask, mask_dir, mask_holes_are,
                         mask_threshold, hflip, on_bad_image, train_list, val_list, test_list, train_dir, val_dir,
                         test_dir, limit_val_images, seed, mask_list=mask_list, verify=verify)


class Places2InpaintingDataModule(InpaintingDataModule):
    """Places2 (Places365-Standard, 256x256 "small images") in its official layout; validation/test = the val set.

    Args:
        root: dataset root.
        image_size: side S of the images (256 in the paper).
        batch_size: images per batch.
        num_workers: DataLoader workers.
        train_mask: training masks.
        eval_mask: evaluation masks ('square_list' + ``mask_list``: fixed squares from an offsets file).
        mask_dir: folder of mask images for 'folder' masks.
        mask_list: offsets file for 'square_list' masks (one ``x y`` per line; line i = image i of the val list).
        mask_holes_are: colour of the holes in mask images.
        mask_threshold: binarise non-binary mask images at this fraction (None: error).
        hflip: random horizontal flips in training.
        on_bad_image: 'raise' or 'skip' unreadable images.
        train_list: training list (places365_train_standard.txt, entries relative to data_256/).
        val_list: validation list (places365_val.txt, entries relative to val_256/).
        test_list: test list (default: the val list; Places365's test images have no public split use here).
        train_dir: training image folder.
        val_dir: validation image folder.
        test_dir: test image folder.
        limit_val_images: validate on the first N images only (36,500 in the full val set).
        seed: seed of the evaluation masks.
        verify: check every image of the used splits in ``setup``: 'header' (cheap: opens, size, file end),
            'decode' (full decode; slow on big sets such as Places2) or 'off'.
    """

    expected_tree = """<root>/
  data_256/a/airfield/00000001.jpg ...           Places365-Standard training images, 256x256 (1,803,460)
  val_256/Places365_val_00000001.jpg ...         validation images, 256x256 (36,500; also the test split)
  places365_train_standard.txt                   '/a/airfield/00000001.jpg 0' per line (filelist_places365-standard)
  places365_val.txt                              'Places365_val_00000001.jpg 165' per line"""
    where_to_get = (
        "Places2 is not downloaded automatically (research/non-commercial terms). Get 'Small images (256 * 256)' "
        "train_256_places365standard.tar, val_256.tar and filelist_places365-standard.tar from "
        "http://places2.csail.mit.edu/download.html and extract them into the root.")

    def __init__(
        self,
        root: str,
        image_size: int = 256,
        batch_size: int = 8,
        num_workers: int = 4,
        train_mask: MaskKind = "free_form",
        eval_mask: MaskKind = "square_random",
        mask_dir: str | None = None,
        mask_list: str | None = None,
        mask_holes_are: Literal["black", "white"] = "black",
        mask_threshold: float | None = None,
        hflip: bool = False,
        on_bad_image: Literal["raise", "skip"] = "raise",
        train_list: str | None = "places365_train_standard.txt",
        val_list: str | None = "places365_val.txt",
        test_list: str | None = "places365_val.txt",
        train_dir: str = "data_256",
        val_dir: str = "val_256",
        test_dir: str = "val_256",
        limit_val_images: int | None = None,
        seed: int = 0,
        verify: VerifyMode = "header",
    ) -> None:
        super().__init__(root, image_size, batch_size, num_workers, train_mask, eval_mask, mask_dir, mask_holes_are,
                         mask_threshold, hflip, on_bad_image, train_list, val_list, test_list, train_dir, val_dir,
                         test_dir, limit_val_images, seed, mask_list=mask_list, verify=verify)


class SkimagePhotosInpaintingDataModule(CelebAHQInpaintingDataModule):
    """The demo: scikit-image's bundled photographs written (once) in the CelebA-HQ layout, then read like it.

    Args:
        root: where the photos are laid out: an absent, empty or synthetic-labelled folder (default
            ``zoo.cache_dir('derived/inpainting') / 'skimage_photos_<S>'``).
        image_size: side S of the images.
        batch_size: images per batch.
        num_workers: DataLoader workers.
        train_mask: training masks.
        eval_mask: evaluation masks.
        crops_per_photo: square crops taken from each photograph.
        hflip: random horizontal flips in training.
        seed: seed of the evaluation masks.
    """

    def __init__(
        self,
        root: str | None = None,
        image_size: int = 64,
        batch_size: int = 8,
        num_workers: int = 0,
        train_mask: MaskKind = "free_form",
        eval_mask: MaskKind = "square_random",
        crops_per_photo: int = 5,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        if root is None:
            from zoo import cache_dir

            root = str(cache_dir("derived/inpainting") / f"skimage_photos_{image_size}")
        super().__init__(root, image_size, batch_size, num_workers, train_mask, eval_mask, hflip=hflip, seed=seed)
        self.crops_per_photo = crops_per_photo

    def split_paths(self, split: str) -> list[Path]:
        if not (self.root / "test_fh256.txt").is_file():
            write_skimage_photos(self.root, "celebahq", self.image_size, self.crops_per_photo)
        return super().split_paths(split)


# ------------------------------------------------------------------------------------- held-out photographs
def load_photo(name: str) -> np.ndarray:
    """A real photograph shipped with scikit-image (``skimage.data.<name>``, e.g. 'astronaut') or scikit-learn
    ('china', 'flower': ``sklearn.datasets.load_sample_image``) as (H, W, 3) uint8 RGB (grey photos repeated)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        img = load_sample_image(f"{name}.jpg")
    else:
        import skimage.data

        fn = getattr(skimage.data, name, None)
        if fn is None or not callable(fn):
            raise InpaintingDataError(f"unknown photograph {name!r}: a scikit-image `skimage.data` image name or "
                                      f"'china' / 'flower' (scikit-learn)")
        img = np.asarray(fn())
    if img.dtype != np.uint8:
        raise InpaintingDataError(f"photograph {name!r} is {img.dtype}, not an 8-bit photograph")
    return np.stack([img] * 3, -1) if img.ndim == 2 else img[..., :3]


def _crop_resize(img: np.ndarray, y: int, x: int, side: int, size: int, flip: bool = False) -> torch.Tensor:
    """Square crop → ``size x size`` (area-averaged) → (3, S, S) float in [-1, 1]."""
    from PIL import Image

    crop = Image.fromarray(np.ascontiguousarray(img[y:y + side, x:x + side])).resize((size, size), Image.BOX)
    arr = np.asarray(crop, np.float32) / 127.5 - 1.0
    if flip:
        arr = arr[:, ::-1]
    return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


class PhotoCropsDataset(Dataset):
    """Square crops of whole photographs with hole masks.

    Training (``seed`` None): each item is a fresh random crop (side a random fraction ``crop_scale`` of the
    photo's short side, random position, random flip) of a random photo. Evaluation (``seed`` set): item ``i`` is a
    fixed crop of photo ``i % len(photos)`` drawn from ``(seed, i)`` with a fixed mask: every pass sees the same.

    Args:
        photos: {name: (H, W, 3) uint8}.
        size: output side.
        length: items per epoch.
        masks: the mask generator.
        crop_scale: (min, max) crop side as a fraction of the photo's short side.
        seed: None for training, else the evaluation seed.
        hflip: random horizontal flips (training only).
    """

    def __init__(self, photos: dict[str, np.ndarray], size: int, length: int, masks: MaskGenerator,
                 crop_scale: tuple[float, float] = (0.3, 1.0), seed: int | None = None, hflip: bool = True) -> None:
        self.photos, self.names = photos, sorted(photos)
        self.size, self.length, self.masks, self.crop_scale, self.seed, self.hflip = (
            size, length, masks, tuple(crop_scale), seed, hflip)

    def __len__(self) -> int:
        return self.length

    def _rng(self, index: int) -> np.random.Generator:
        if self.seed is not None:
            return np.random.default_rng((self.seed, index))
        return np.random.default_rng(int(torch.randint(0, 2**62, (1,)).item()))

    def crop_box(self, index: int, rng: np.random.Generator) -> tuple[str, int, int, int]:
        """(photo, top, left, side) of item ``index``."""
        name = self.names[index % len(self.names)] if self.seed is not None else self.names[
            int(rng.integers(len(self.names)))]
        h, w = self.photos[name].shape[:2]
        short = min(h, w)
        side = max(self.size, int(round(short * rng.uniform(*self.crop_scale))))
        side = min(side, short)
        return name, int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1)), side

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = self._rng(index)
        name, y, x, side = self.crop_box(index, rng)
        flip = self.seed is None and self.hflip and bool(rng.integers(2))
        image = _crop_resize(self.photos[name], y, x, side, self.size, flip)
        mask = torch.from_numpy(self.masks(index, rng))[None]
        return {"image": image, "mask": mask, "path": f"{name}[{y}:{y + side},{x}:{x + side}]"}


class PhotoCropsInpaintingDataModule(SplitDataModule):
    """Inpainting on real photographs split BY PHOTOGRAPH (scikit-image / scikit-learn sample photos): the model
    trains on random crops of the training photos and is judged on fixed crops of photos it never saw.

    The three photo lists must be disjoint, by name and by content (``skimage.data.cat`` and ``chelsea`` are the
    same picture: a split holding both under two names is an error). Real photographs, not the papers' datasets.

    Args:
        train_photos: photographs of the training split (``skimage.data`` names, 'china', 'flower').
        val_photos: photographs of the validation split (checkpoint monitoring).
        test_photos: held-out photographs of the test split.
        image_size: side S of the crops.
        batch_size: images per batch.
        num_workers: DataLoader workers.
        train_mask: training masks ('free_form' as the paper, or 'square_random').
        eval_mask: evaluation masks (fixed per item).
        crop_scale: (min, max) side of a training crop as a fraction of the photo's short side.
        train_samples: training crops per epoch.
        eval_crops_per_photo: fixed crops per validation/test photo.
        hflip: random horizontal flips in training.
        seed: seed of the evaluation crops and masks.
    """

    def __init__(
        self,
        train_photos: Sequence[str] = ("astronaut", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field",
                                       "camera", "brick", "grass", "coins"),
        val_photos: Sequence[str] = ("moon", "gravel"),
        test_photos: Sequence[str] = ("coffee", "china", "flower"),
        image_size: int = 64,
        batch_size: int = 8,
        num_workers: int = 0,
        train_mask: MaskKind = "free_form",
        eval_mask: MaskKind = "free_form",
        crop_scale: tuple[float, float] = (0.3, 1.0),
        train_samples: int = 1024,
        eval_crops_per_photo: int = 8,
        hflip: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.photo_lists = {"train": list(train_photos), "val": list(val_photos), "test": list(test_photos)}
        self.image_size, self.batch_size, self.num_workers = image_size, batch_size, num_workers
        self.train_mask, self.eval_mask, self.crop_scale = train_mask, eval_mask, tuple(crop_scale)
        self.train_samples, self.eval_crops_per_photo, self.hflip, self.seed = (
            train_samples, eval_crops_per_photo, hflip, seed)
        self.photos: dict[str, dict[str, np.ndarray]] = {}
        self.datasets: dict[str, PhotoCropsDataset] = {}
        names = [n for v in self.photo_lists.values() for n in v]
        if len(set(names)) != len(names):
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"photographs in more than one split (or twice): {dup}")

    @property
    def in_chans(self) -> int:
        return 3

    def load(self) -> dict[str, dict[str, np.ndarray]]:
        """{split: {name: photo}}, checked for identical pictures across names."""
        if not self.photos:
            import hashlib

            seen: dict[str, str] = {}
            for split, names in self.photo_lists.items():
                self.photos[split] = {}
                for n in names:
                    img = load_photo(n)
                    digest = hashlib.sha1(img.tobytes()).hexdigest()
                    if digest in seen:
                        raise ValueError(f"photograph {n!r} ({split}) is the same picture as {seen[digest]}")
                    seen[digest] = f"{n!r}"
                    self.photos[split][n] = img
        return self.photos

    def eval_dataset(self, split: str, mask: MaskKind | None = None, seed: int | None = None) -> PhotoCropsDataset:
        """The fixed crops of ``split`` ('val' or 'test') with ``mask`` holes (default ``eval_mask``)."""
        photos = self.load()[split]
        gen = MaskGenerator(mask or self.eval_mask, self.image_size)
        return PhotoCropsDataset(photos, self.image_size, self.eval_crops_per_photo * len(photos), gen,
                                 self.crop_scale, self.seed if seed is None else seed, False)

    def setup(self, stage: str | None = None) -> None:
        photos = self.load()
        if "train" not in self.datasets:
            self.datasets["train"] = PhotoCropsDataset(photos["train"], self.image_size, self.train_samples,
                                                       MaskGenerator(self.train_mask, self.image_size),
                                                       self.crop_scale, None, self.hflip)
            self.datasets["val"] = self.eval_dataset("val")
            self.datasets["test"] = self.eval_dataset("test")

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if split not in self.datasets:
            self.setup()
        ds = self.datasets[split]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          drop_last=shuffle, persistent_workers=self.num_workers > 0)
