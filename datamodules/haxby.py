"""Haxby et al. (2001) BOLD fMRI in the OpenfMRI layout (any OpenfMRI tree of the same form, one or more subjects).

Real data bundled with the package (``datamodules/data/haxby2001/``, subject 1 as redistributed by PyMVPA; see its
ATTRIBUTION.md): 12 runs of 121 volumes (TR 2.5 s), 8 object categories shown in 22.5-s blocks. Each volume inside
a category block (onset shifted by ``hrf_shift_s``) is one sample; every voxel is z-scored within its run (over
all the run's volumes, rest included); splits leave whole runs out (``val_runs`` / ``test_runs``, never shared).

The stimulus pictures were never distributed. Image targets (``targets: proxies``) are clearly labelled CATEGORY
PROXIES — one fixed picture per category (scikit-image's photographs where one fits: ``chelsea`` for cat,
``astronaut`` for face, ``coffee`` for bottle; simple drawings otherwise) — never the stimuli.
"""
from __future__ import annotations

import logging
import os
import random
import zlib
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ._base import SplitDataModule
from ._layout import layout_error, require_dataset

__all__ = ["HaxbyDataModule", "OpenFMRIRuns", "SubjectBatchSampler", "category_proxy_images", "load_openfmri_subject",
           "BUNDLED_HAXBY", "PROXY_NOTE"]

_log = logging.getLogger(__name__)

#: the bundled OpenfMRI tree (subject 1 of Haxby 2001)
BUNDLED_HAXBY = Path(__file__).resolve().parent / "data" / "haxby2001" / "haxby2001"
PROXY_NOTE = ("CATEGORY PROXIES, not the stimuli: the Haxby (2001) pictures were never distributed; each category "
              "is represented by one fixed stand-in picture (scikit-image photographs or simple drawings)")

_TREE = """<root>/
  scan_key.txt                                   "TR 2.5"
  models/model001/condition_key.txt              "task001 cond001 house" ... one line per category
  sub001/
    BOLD/task001_run001/bold_1slice.nii.gz       4-D NIfTI (x, y, z, t), one per run
    BOLD/task001_run002/...
    model/model001/onsets/task001_run001/cond001.txt   "onset duration weight" lines (seconds)
    masks/...                                    optional voxel masks (NIfTI, same grid)"""
_SOURCE = ("Haxby et al. 2001 (Science 293:2425) via OpenfMRI ds000105 / PyMVPA's example data (MIT); subject 1 is "
           "bundled at datamodules/data/haxby2001/haxby2001 (the default root)")


# ------------------------------------------------------------------------------------------------------ reading
def _read_nifti(path: Path) -> np.ndarray:
    import nibabel as nib

    try:
        return np.asarray(nib.load(str(path)).dataobj, dtype=np.float32)
    except Exception as e:  # nibabel raises several types for truncated/corrupt files
        raise ValueError(f"cannot read NIfTI {path}: {e}") from e


def _condition_names(root: Path, model: str, task: str) -> dict[int, str]:
    path = root / "models" / model / "condition_key.txt"
    if not path.is_file():
        raise layout_error(f"{path} is missing.", name="OpenfMRI", tree=_TREE, source=_SOURCE, root=root)
    names = {}
    for i, line in enumerate(path.read_text().splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 3 or not parts[1].startswith("cond"):
            raise ValueError(f"{path}:{i}: expected 'task cond00N name', got {line!r}")
        if parts[0] == task:
            names[int(parts[1][4:])] = " ".join(parts[2:])
    if not names:
        raise ValueError(f"{path}: no condition of {task}")
    return names


def _tr(root: Path) -> float:
    path = root / "scan_key.txt"
    if not path.is_file():
        raise layout_error(f"{path} is missing.", name="OpenfMRI", tree=_TREE, source=_SOURCE, root=root)
    parts = path.read_text().split()
    try:
        return float(parts[parts.index("TR") + 1])
    except (ValueError, IndexError) as e:
        raise ValueError(f"{path}: expected 'TR <seconds>', got {path.read_text()!r}") from e


def load_openfmri_subject(root: str | os.PathLike, subject: str = "sub001", bold: str = "bold_1slice",
                          mask: str | None = "../mask.nii.gz", task: str = "task001", model: str = "model001",
                          hrf_shift_s: float = 0.0) -> dict[str, Any]:
    """Read one subject: per-run z-scored voxel samples inside category blocks.

    Args:
        root: the OpenfMRI tree.
        subject: subject folder.
        bold: BOLD file stem in each run folder.
        mask: voxel mask NIfTI relative to ``root`` (same grid as the BOLD), or None for every voxel whose signal
            varies in every run.
        task: task id of the run folders and onsets.
        model: model folder of the onsets and condition key.
        hrf_shift_s: shift of every block onset (seconds) to account for the haemodynamic delay.

    Returns:
        ``x`` (N, V) float32, ``y`` (N,) 0-based category, ``run`` (N,) run number, ``names`` category names,
        ``tr`` seconds, ``num_voxels``.
    """
    root = Path(root)
    names = _condition_names(root, model, task)
    tr = _tr(root)
    runs = sorted((root / subject / "BOLD").glob(f"{task}_run*"))
    if not runs:
        raise layout_error(f"{root / subject / 'BOLD'} holds no {task}_run* folder.", name="OpenfMRI", tree=_TREE,
                           source=_SOURCE, root=root)
    vol_mask = None
    if mask is not None:
        mpath = (root / mask).resolve()
        if not mpath.is_file():
            raise layout_error(f"mask {mpath} is missing.", name="OpenfMRI", tree=_TREE, source=_SOURCE, root=root)
        vol_mask = _read_nifti(mpath) > 0
    data = []
    for run_dir in runs:
        path = run_dir / f"{bold}.nii.gz"
        if not path.is_file():
            raise layout_error(f"{path} is missing.", name="OpenfMRI", tree=_TREE, source=_SOURCE, root=root)
        vol = _read_nifti(path)
        if vol.ndim != 4:
            raise ValueError(f"{path}: expected a 4-D BOLD series, got shape {vol.shape}")
        if vol_mask is not None and vol_mask.shape != vol.shape[:3]:
            raise ValueError(f"{path}: mask grid {vol_mask.shape} differs from the BOLD grid {vol.shape[:3]}")
        if not np.isfinite(vol).all():
            raise ValueError(f"{path}: BOLD holds NaN or infinite values")
        data.append((int(run_dir.name.split("run")[-1]), run_dir, vol))
    if vol_mask is None:
        vol_mask = np.logical_and.reduce([v.std(-1) > 0 for _, _, v in data])
    xs, ys, rs = [], [], []
    onset_root = root / subject / "model" / model / "onsets"
    for run, run_dir, vol in data:
        series = vol[vol_mask].T  # (T, V)
        series = (series - series.mean(0)) / np.maximum(series.std(0), 1e-6)  # per-run z-scoring
        for cond in sorted(names):
            path = onset_root / f"{task}_run{run:03d}" / f"cond{cond:03d}.txt"
            if not path.is_file():
                raise layout_error(f"{path} is missing.", name="OpenfMRI", tree=_TREE, source=_SOURCE, root=root)
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    onset, duration = (float(v) for v in line.split()[:2])
                except ValueError as e:
                    raise ValueError(f"{path}:{i}: expected 'onset duration weight', got {line!r}") from e
                first = int(round((onset + hrf_shift_s) / tr))
                last = int(round((onset + hrf_shift_s + duration) / tr))
                if first < 0 or last > series.shape[0]:
                    raise ValueError(f"{path}:{i}: block {onset}+{duration} s (shift {hrf_shift_s}) lies outside the "
                                     f"{series.shape[0]} volumes of {run_dir / (bold + '.nii.gz')}")
                xs.append(series[first:last])
                ys += [cond] * (last - first)
                rs += [run] * (last - first)
    order = sorted(names)
    label = {c: i for i, c in enumerate(order)}
    return {"x": np.concatenate(xs).astype(np.float32), "y": np.array([label[c] for c in ys]),
            "run": np.array(rs), "names": [names[c] for c in order], "tr": tr, "num_voxels": int(vol_mask.sum())}


# -------------------------------------------------------------------------------------------------- proxy images
def _drawing(name: str, size: int) -> np.ndarray | None:
    from skimage.draw import disk, polygon, rectangle

    img = np.full((size, size, 3), 0.92, np.float32)
    s = size / 32.0

    def poly(rows, cols, color):
        rr, cc = polygon(np.array(rows) * s, np.array(cols) * s, img.shape[:2])
        img[rr, cc] = color

    if name == "house":
        poly([14, 28, 28, 14], [6, 6, 26, 26], (0.75, 0.3, 0.2))
        poly([14, 4, 14], [4, 16, 28], (0.35, 0.2, 0.15))
        poly([20, 28, 28, 20], [13, 13, 19, 19], (0.25, 0.15, 0.1))
    elif name == "shoe":
        poly([14, 24, 27, 27, 20, 14], [4, 4, 8, 29, 28, 14], (0.2, 0.2, 0.25))
    elif name == "scissors":
        for c in (10, 22):
            rr, cc = disk((24 * s, c * s), 4 * s, shape=img.shape[:2])
            img[rr, cc] = (0.8, 0.1, 0.1)
        poly([21, 3, 4, 22], [11, 20, 22, 13], (0.6, 0.6, 0.65))
        poly([21, 3, 4, 22], [21, 12, 10, 19], (0.6, 0.6, 0.65))
    elif name == "chair":
        poly([4, 18, 18, 4], [8, 8, 11, 11], (0.45, 0.28, 0.12))
        poly([16, 19, 19, 16], [8, 8, 24, 24], (0.45, 0.28, 0.12))
        poly([19, 29, 29, 19], [8, 8, 10, 10], (0.45, 0.28, 0.12))
        poly([19, 29, 29, 19], [22, 22, 24, 24], (0.45, 0.28, 0.12))
    elif name == "bottle":
        rr, cc = rectangle((12 * s, 10 * s), end=(29 * s, 21 * s), shape=img.shape[:2])
        img[rr.astype(int), cc.astype(int)] = (0.1, 0.5, 0.2)
        rr, cc = rectangle((3 * s, 14 * s), end=(12 * s, 17 * s), shape=img.shape[:2])
        img[rr.astype(int), cc.astype(int)] = (0.1, 0.5, 0.2)
    else:
        return None
    return img


def category_proxy_images(names: Sequence[str], size: int = 32) -> dict[str, np.ndarray]:
    """One (size, size, 3) float image in [0, 1] per category name — CATEGORY PROXIES (see :data:`PROXY_NOTE`).

    scikit-image photographs: cat = ``chelsea``, face = ``astronaut`` (cropped to the face; NASA, public domain),
    bottle = ``coffee`` is not used (a cup is not a bottle: a drawing instead); scrambledpix = ``chelsea`` with its
    pixels permuted by a fixed seed; drawings for house, shoe, scissors, chair, bottle; any other name gets a flat
    colour derived from the name.
    """
    try:
        import skimage.data
        from skimage.transform import resize
    except ImportError as e:  # pragma: no cover - scikit-image is a test/demo dependency
        raise ImportError("category proxy images need scikit-image (pip install scikit-image)") from e

    def photo(img: np.ndarray) -> np.ndarray:
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        return resize(img, (size, size), anti_aliasing=True).astype(np.float32)

    out = {}
    for name in names:
        key = name.lower()
        if key == "cat":
            img = photo(skimage.data.chelsea())
        elif key == "face":
            img = photo(skimage.data.astronaut()[20:220, 130:330])
        elif key == "scrambledpix":
            cat = photo(skimage.data.chelsea()).reshape(-1, 3)
            img = cat[np.random.default_rng(0).permutation(len(cat))].reshape(size, size, 3)
        else:
            img = _drawing(key, size)
            if img is None:
                rng = np.random.default_rng(zlib.crc32(key.encode()))
                img = np.broadcast_to(rng.uniform(0.1, 0.9, 3).astype(np.float32), (size, size, 3)).copy()
        out[name] = img
    return out


# ------------------------------------------------------------------------------------------------- datasets
class OpenFMRIRuns(Dataset):
    """Samples of one or more subjects restricted to some runs.

    Each item: ``fmri`` (V_s,) z-scored voxels, ``label``, ``run``, ``subject``, ``caption`` ("a photo of a
    <category>"), and ``image`` (3, S, S) in [-1, 1] — the category's proxy picture — when ``proxies`` are given.
    """

    def __init__(self, subjects: dict[str, dict[str, Any]], runs: Sequence[int],
                 proxies: dict[str, np.ndarray] | None = None) -> None:
        self.items: list[tuple[str, int]] = []
        self.subjects = subjects
        for name, d in subjects.items():
            self.items += [(name, i) for i in np.flatnonzero(np.isin(d["run"], list(runs)))]
        self.proxies = None if proxies is None else {
            k: torch.from_numpy(v).permute(2, 0, 1).float() * 2 - 1 for k, v in proxies.items()}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, Any]:
        subject, j = self.items[i]
        d = self.subjects[subject]
        name = d["names"][int(d["y"][j])]
        item = {"fmri": torch.from_numpy(d["x"][j]), "label": int(d["y"][j]), "run": int(d["run"][j]),
                "subject": subject, "caption": f"a photo of a {name}"}
        if self.proxies is not None:
            item["image"] = self.proxies[name]
        return item


class SubjectBatchSampler(Sampler[list[int]]):
    """Batches of one subject each (subjects have different voxel counts), subjects interleaved at random.

    Args:
        dataset: an :class:`OpenFMRIRuns`.
        batch_size: samples per batch.
        shuffle: shuffle within subjects and the batch order.
        seed: base seed (the epoch is added).
    """

    def __init__(self, dataset: OpenFMRIRuns, batch_size: int, shuffle: bool = True, seed: int = 0) -> None:
        self.by_subject: dict[str, list[int]] = defaultdict(list)
        for i, (s, _) in enumerate(dataset.items):
            self.by_subject[s].append(i)
        self.batch_size, self.shuffle, self.seed, self.epoch = batch_size, shuffle, seed, 0

    def __iter__(self) -> Iterator[list[int]]:
        rng = random.Random(self.seed + self.epoch)
        self.epoch += 1
        batches = []
        for idx in self.by_subject.values():
            idx = list(idx)
            if self.shuffle:
                rng.shuffle(idx)
            batches += [idx[i:i + self.batch_size] for i in range(0, len(idx), self.batch_size)]
        if self.shuffle:
            rng.shuffle(batches)
        return iter(batches)

    def __len__(self) -> int:
        return sum(-(-len(v) // self.batch_size) for v in self.by_subject.values())


class HaxbyDataModule(SplitDataModule):
    """Haxby 2001 / any OpenfMRI tree: leave-run-out splits, per-run z-scored voxels, category labels, proxy images.

    Args:
        root: the OpenfMRI tree (default: the bundled Haxby subject 1).
        subjects: subject folders to read (each becomes an adapter of its own voxel count).
        bold: BOLD file stem per run (``bold_1slice``: the 40x20 slice; ``bold_25mm``: the 2.5-mm volume).
        mask: voxel mask relative to ``root`` (default the PyMVPA slice mask beside the tree: 530 voxels), or None
            for every voxel that varies in every run.
        task: OpenfMRI task id.
        model: OpenfMRI model folder.
        hrf_shift_s: onset shift in seconds (0: on this data a shift lowers the linear baseline; see the tests).
        val_runs: runs held out for validation.
        test_runs: runs held out for testing (never trained or validated on).
        targets: 'proxies' adds each category's proxy image (see :data:`PROXY_NOTE`); 'none' omits images.
        image_size: proxy image side.
        batch_size: samples per batch (one subject per batch).
        num_workers: loader workers.
    """

    def __init__(self, root: str | None = None, subjects: list[str] | None = None, bold: str = "bold_1slice",
                 mask: str | None = "../mask.nii.gz", task: str = "task001", model: str = "model001",
                 hrf_shift_s: float = 0.0, val_runs: list[int] | None = None, test_runs: list[int] | None = None,
                 targets: str = "proxies", image_size: int = 32, batch_size: int = 32, num_workers: int = 0) -> None:
        super().__init__()
        if targets not in ("proxies", "none"):
            raise ValueError(f"targets must be 'proxies' or 'none', got {targets!r}")
        self.root = Path(root) if root else BUNDLED_HAXBY
        self.subject_names = list(subjects or ["sub001"])
        self.bold, self.mask, self.task, self.model_id, self.hrf_shift_s = bold, mask, task, model, hrf_shift_s
        self.val_runs = list(val_runs if val_runs is not None else [10])
        self.test_runs = list(test_runs if test_runs is not None else [11, 12])
        overlap = set(self.val_runs) & set(self.test_runs)
        if overlap:
            raise ValueError(f"val_runs and test_runs share runs {sorted(overlap)}")
        self.targets, self.image_size = targets, image_size
        self.batch_size, self.num_workers = batch_size, num_workers
        self.data: dict[str, dict[str, Any]] | None = None
        self.datasets: dict[str, OpenFMRIRuns] = {}

    def prepare_data(self) -> None:
        require_dataset(self.root, name="HaxbyDataModule", tree=_TREE, source=_SOURCE,
                        required=["scan_key.txt", "models", *self.subject_names])

    def _load(self) -> dict[str, dict[str, Any]]:
        if self.data is None:
            self.prepare_data()
            self.data = {s: load_openfmri_subject(self.root, s, self.bold, self.mask, self.task, self.model_id,
                                                  self.hrf_shift_s) for s in self.subject_names}
        return self.data

    # data links read before setup()
    @property
    def subjects(self) -> dict[str, int]:
        """Subject -> voxel count (the model's adapters)."""
        return {s: d["num_voxels"] for s, d in self._load().items()}

    @property
    def category_names(self) -> list[str]:
        return next(iter(self._load().values()))["names"]

    @property
    def num_classes(self) -> int:
        return len(self.category_names)

    def runs(self) -> dict[str, list[int]]:
        """The run numbers of each split (disjoint)."""
        all_runs = sorted({int(r) for d in self._load().values() for r in np.unique(d["run"])})
        missing = sorted(set(self.val_runs + self.test_runs) - set(all_runs))
        if missing:
            raise ValueError(f"{self.root}: runs {missing} do not exist (runs: {all_runs})")
        held = set(self.val_runs) | set(self.test_runs)
        return {"train": [r for r in all_runs if r not in held], "val": self.val_runs, "test": self.test_runs}

    def setup(self, stage: str | None = None) -> None:
        data = self._load()
        proxies = category_proxy_images(self.category_names, self.image_size) if self.targets == "proxies" else None
        self.datasets = {k: OpenFMRIRuns(data, v, proxies) for k, v in self.runs().items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        ds = self.datasets[split]
        return DataLoader(ds, batch_sampler=SubjectBatchSampler(ds, self.batch_size, shuffle),
                          num_workers=self.num_workers)
