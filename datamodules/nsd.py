"""Natural Scenes Dataset (NSD) as NeuroPictor's authors preprocess it: one 256x256 visual-cortex surface image per
trial (``fmri_npy/NN_norm/surf_%06d.npy``, z-normalised per subject), the trial -> 73k-image index
(``fmri_npy/NN_label.npy``), the COCO stimuli and captions; or the full-brain HDF5 surfaces from which the VC image
is cropped on the fly (``NSD_full_brain/fmri/0N_norm.h5`` + ``vc_roi.npz``, as the authors' convert_brain.py).

Standard split (the official dataset class): training = each subject's own images (``unique_triallabel.npy``: a
pickled {subject - 1: image indices}), one sample per image, the subject's LAST trial of it; test = the ~1,000
shared images (``sub1257_shared_triallabel.npy``) the subject saw, each with its FIRST trial; validation = the first
``val_fraction`` of the shared list. A caption is drawn at random from the image's COCO captions.

NSD is licensed: sign the NSD Data Access Agreement (https://naturalscenesdataset.org) before downloading the
authors' preprocessed files (Hugging Face ``Fudan-fMRI/neuropictor``, folder ``NSD``). Nothing is downloaded here.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ._base import SplitDataModule
from ._image import open_rgb8
from ._layout import layout_error, require_dataset

__all__ = ["NSDDataModule", "NSDSurfaces", "vc_surface_from_full_brain", "NSD_TREE", "NSD_SOURCE"]

NSD_TREE = """<root>/
  fmri_npy/
    01_norm/surf_000000.npy ...      one (256, 256) float VC surface per trial of subject 1
    01_label.npy                     (trials,) 73k-image index of every trial
    02_norm/ ... 08_label.npy
  nsddata_stimuli/stimuli/images/image_000000.png ... image_072999.png
  COCO_73k_annots_curated.npy        (73000, 5) captions ('' = none)
  unique_triallabel.npy              pickled {subject - 1: training image indices}
  sub1257_shared_triallabel.npy      shared test image indices
  NSD_full_brain/                    only for source: h5
    fmri/01_norm.h5                  datasets 'images' (trials, H, W) full-brain surface, 'labels' (trials,)
    vc_roi.npz                       'images'[0]: ROI map (1 = visual cortex)"""
NSD_SOURCE = ("NSD (Allen et al. 2022), https://naturalscenesdataset.org — sign the NSD Data Access Agreement, then "
              "download the authors' preprocessed NSD folder from Hugging Face Fudan-fMRI/neuropictor (~100 GB with "
              "checkpoints; the full-brain HDF5 adds NSD_full_brain). Licensed data: never downloaded automatically.")


def vc_surface_from_full_brain(surface: np.ndarray, vc_roi: np.ndarray, size: int = 256) -> np.ndarray:
    """Crop a full-brain surface image to the visual cortex and resize it to ``size`` (the authors' conversion):
    the VC bounding box widened by 1 px left/right and 10 px up/down, bilinear resize (half-pixel centres, as
    OpenCV), zero outside the nearest-resized VC mask."""
    import torch.nn.functional as F

    vc = vc_roi == 1
    ys, xs = np.nonzero(vc)
    h, w = vc.shape
    x0, x1 = max(int(xs.min()) - 1, 0), min(int(xs.max()) + 1, w)
    y0, y1 = max(int(ys.min()) - 10, 0), min(int(ys.max()) + 10, h)
    crop = torch.from_numpy(np.ascontiguousarray(surface[y0:y1 + 1, x0:x1 + 1], dtype=np.float32))[None, None]
    mask = torch.from_numpy(vc[y0:y1 + 1, x0:x1 + 1].astype(np.float32))[None, None]
    out = F.interpolate(crop, size=(size, size), mode="bilinear", align_corners=False)[0, 0]
    m = F.interpolate(mask, size=(size, size), mode="nearest")[0, 0]
    return (out * m).numpy()


class NSDSurfaces(Dataset):
    """(subject, trial, image) triples of one split. Items: ``fmri`` (1, 256, 256), ``image`` (3, S, S) in [-1, 1],
    ``caption``, ``subject`` (str), ``image_index``.

    Args:
        root: the NSD folder.
        triples: (subject, trial index, 73k image index).
        image_size: stimulus side after resizing.
        source: 'npy' (per-trial surfaces) or 'h5' (full-brain HDF5 cropped to VC on the fly).
    """

    def __init__(self, root: Path, triples: list[tuple[int, int, int]], image_size: int, source: str) -> None:
        self.root, self.triples, self.image_size, self.source = root, triples, image_size, source
        self.captions = np.load(root / "COCO_73k_annots_curated.npy", allow_pickle=True)
        self._h5: dict[int, Any] = {}
        self._roi = None

    def __len__(self) -> int:
        return len(self.triples)

    def _surface(self, sub: int, trial: int) -> np.ndarray:
        if self.source == "npy":
            path = self.root / "fmri_npy" / f"{sub:02d}_norm" / f"surf_{trial:06d}.npy"
            if not path.is_file():
                raise FileNotFoundError(f"NSD surface {path} is missing (trial {trial} of subject {sub})")
            try:
                surf = np.load(path)
            except Exception as e:
                raise ValueError(f"cannot read NSD surface {path}: {e}") from e
        else:
            import h5py

            if sub not in self._h5:
                self._h5[sub] = h5py.File(self.root / "NSD_full_brain" / "fmri" / f"{sub:02d}_norm.h5", "r")
                if self._roi is None:
                    self._roi = np.load(self.root / "NSD_full_brain" / "vc_roi.npz")["images"][0]
            surf = vc_surface_from_full_brain(self._h5[sub]["images"][trial], self._roi)
            path = self.root / "NSD_full_brain" / "fmri" / f"{sub:02d}_norm.h5"
        if surf.shape != (256, 256):
            raise ValueError(f"{path}: expected a (256, 256) surface, got {surf.shape}")
        return surf.astype(np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from PIL import Image

        sub, trial, idx = self.triples[i]
        path = self.root / "nsddata_stimuli" / "stimuli" / "images" / f"image_{idx:06d}.png"
        try:
            img = Image.fromarray(open_rgb8(path)).resize((self.image_size, self.image_size), Image.BILINEAR)
        except (OSError, ValueError, RuntimeError) as e:
            raise ValueError(f"cannot read NSD stimulus {path}: {e}") from e
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)
        caps = [c for c in self.captions[idx] if c] if idx < len(self.captions) else []
        if not caps:
            raise ValueError(f"COCO_73k_annots_curated.npy: image {idx} has no caption")
        return {"fmri": torch.from_numpy(self._surface(sub, trial))[None], "image": image,
                "caption": random.choice(caps), "subject": f"subj{sub:02d}", "image_index": idx}


class NSDDataModule(SplitDataModule):
    """NSD surfaces for NeuroPictor: multi-subject pre-training or single-subject fine-tuning (standard split).

    Args:
        root: the NSD folder (see :data:`NSD_TREE`).
        train_subjects: subjects 1-8 trained on.
        val_subjects: subjects validated / tested on (the shared images they saw).
        val_fraction: fraction of the shared list used for validation (0.25 in the official configs).
        image_size: stimulus side (512).
        source: 'npy' (authors' per-trial surfaces) or 'h5' (full-brain HDF5, VC cropped on the fly).
        batch_size: samples per batch (16 per GPU in the paper).
        num_workers: loader workers.
    """

    def __init__(self, root: str = "data/NSD", train_subjects: list[int] | None = None,
                 val_subjects: list[int] | None = None, val_fraction: float = 0.25, image_size: int = 512,
                 source: str = "npy", batch_size: int = 16, num_workers: int = 4) -> None:
        super().__init__()
        if source not in ("npy", "h5"):
            raise ValueError(f"source must be 'npy' or 'h5', got {source!r}")
        self.root = Path(root)
        self.train_subjects = list(train_subjects or [1])
        self.val_subjects = list(val_subjects or self.train_subjects)
        bad = [s for s in self.train_subjects + self.val_subjects if not 1 <= int(s) <= 8]
        if bad:
            raise ValueError(f"NSD subjects are 1..8, got {bad}")
        self.val_fraction, self.image_size, self.source = val_fraction, image_size, source
        self.batch_size, self.num_workers = batch_size, num_workers
        self.datasets: dict[str, NSDSurfaces] = {}

    def prepare_data(self) -> None:
        req = ["COCO_73k_annots_curated.npy", "unique_triallabel.npy", "sub1257_shared_triallabel.npy",
               "nsddata_stimuli/stimuli/images"]
        subs = sorted(set(self.train_subjects + self.val_subjects))
        req += [f"fmri_npy/{s:02d}_label.npy" for s in subs]
        req += [f"fmri_npy/{s:02d}_norm" for s in subs] if self.source == "npy" else \
            ["NSD_full_brain/vc_roi.npz", *(f"NSD_full_brain/fmri/{s:02d}_norm.h5" for s in subs)]
        require_dataset(self.root, name="NSDDataModule", tree=NSD_TREE, source=NSD_SOURCE, required=req)

    def _labels(self, sub: int) -> np.ndarray:
        return np.load(self.root / "fmri_npy" / f"{sub:02d}_label.npy").astype(np.int64).reshape(-1)

    def split_triples(self) -> dict[str, list[tuple[int, int, int]]]:
        """(subject, trial, image) per split, as the official dataset class selects them."""
        train_sets = np.load(self.root / "unique_triallabel.npy", allow_pickle=True).item()
        shared = np.load(self.root / "sub1257_shared_triallabel.npy", allow_pickle=True).astype(np.int64).reshape(-1)
        out: dict[str, list[tuple[int, int, int]]] = {"train": [], "val": [], "test": []}
        for s in self.train_subjects:
            labels = self._labels(s)
            last = {int(img): t for t, img in enumerate(labels)}  # the last trial of each image
            if s - 1 not in train_sets:
                raise ValueError(f"unique_triallabel.npy has no entry for subject {s} (key {s - 1})")
            for img in train_sets[s - 1]:
                if int(img) not in last:
                    raise ValueError(f"unique_triallabel.npy: image {img} of subject {s} is not in {s:02d}_label.npy")
                out["train"].append((s, last[int(img)], int(img)))
        n_val = int(self.val_fraction * len(shared))
        for s in self.val_subjects:
            labels = self._labels(s)
            first: dict[int, int] = {}
            for t, img in enumerate(labels):
                first.setdefault(int(img), t)
            out["test"] += [(s, first[int(i)], int(i)) for i in shared if int(i) in first]
            out["val"] += [(s, first[int(i)], int(i)) for i in shared[:n_val] if int(i) in first]
        if not out["train"]:
            raise layout_error("the standard split selects no training sample.", name="NSDDataModule",
                               tree=NSD_TREE, source=NSD_SOURCE, root=self.root)
        return out

    def setup(self, stage: str | None = None) -> None:
        self.prepare_data()
        self.datasets = {k: NSDSurfaces(self.root, v, self.image_size, self.source)
                         for k, v in self.split_triples().items()}

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        if not self.datasets:
            self.setup()
        return DataLoader(self.datasets[split], batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, drop_last=shuffle)
