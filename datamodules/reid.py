"""Person re-identification datasets in their official on-disk layouts, and ``ReIDDataModule``.

Layouts (``root`` is the folder holding the dataset folder, or the dataset folder itself):

- ``market1501``: ``market1501/{bounding_box_train,query,bounding_box_test}/PPPP_cCsS_FFFFFF_BB.jpg``
- ``dukemtmc``: ``dukemtmc/{bounding_box_train,query,bounding_box_test}/PPPP_cC_fFFFFFFF.jpg``
- ``occluded_duke``: ``Occluded_Duke/{bounding_box_train,query,bounding_box_test}/`` named as DukeMTMC-reID
- ``msmt17``: ``msmt17/{train,test}/PPPP/PPPP_NNN_CC_*.jpg`` + ``list_{train,val,query,gallery}.txt`` ("relpath pid")

Image files may be ``.jpg``/``.jpeg``/``.png``/``.bmp`` (mixed in one split too); 16-bit images are rescaled to 8 bits
(:func:`datamodules._image.open_rgb8`), not clipped. ``setup`` checks every file of every split first
(:mod:`datamodules._verify`): all bad files are reported at once, or skipped and counted (``on_bad_file='skip'``).

pid -1 (junk) is dropped, pid 0 (distractors) is kept in the gallery, camera ids become 0-based, training pids are
relabelled 0..N-1, and MSMT17's training set is list_train + list_val (as the official FusionReID code does).
"""
from __future__ import annotations

import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no version check over the network on import
import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset, DistributedSampler  # noqa: E402

from ._image import open_rgb8  # noqa: E402
from ._reid_layout import LAYOUTS, find_dataset_dir  # noqa: E402
from ._verify import OnBadFile, VerifyMode, verify_files  # noqa: E402
from .synthetic import is_synthetic  # noqa: E402

_logger = logging.getLogger(__name__)

__all__ = ["LAYOUTS", "PILResize", "ReIDDataModule", "ReIDImageDataset", "RandomIdentitySampler", "ReIDRandomErasing",
           "parse_layout", "find_dataset_dir", "build_transforms"]

Item = tuple[str, int, int]

_PID_CAM = re.compile(r"([-\d]+)_c(\d+)")
#: image files of a split folder (the releases hold .jpg; converted or re-saved copies may hold .png, even mixed)
IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".bmp")


def _parse_folder(folder: Path, drop_junk: bool = True) -> list[Item]:
    items = []
    for p in sorted(q for q in folder.iterdir() if q.suffix.lower() in IMAGE_EXTS and q.is_file()):
        m = _PID_CAM.search(p.name)
        if m is None:
            raise ValueError(f"{p}: file name does not match '<pid>_c<camera>...'")
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1 and drop_junk:
            continue  # junk images are not used
        if cam < 1:
            raise ValueError(f"{p}: camera ids start at 1")
        items.append((str(p), pid, cam - 1))
    return items


def _parse_msmt_list(list_file: Path, image_dir: Path) -> list[Item]:
    items = []
    for n, line in enumerate(list_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rel, pid = line.split()
            cam = int(Path(rel).name.split("_")[2])
        except (ValueError, IndexError) as e:
            raise ValueError(f"{list_file}:{n}: expected '<pid>/<pid>_<n>_<camera>_... <pid>', got {line!r}") from e
        items.append((str(image_dir / rel), int(pid), cam - 1))
    return items


def _relabel(items: list[Item]) -> list[Item]:
    pids = sorted({pid for _, pid, _ in items})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [(path, mapping[pid], cam) for path, pid, cam in items]


def parse_layout(root: str | Path, layout: str) -> dict[str, list[Item]]:
    """Read a ReID dataset in its official layout.

    Args:
        root: folder holding the dataset folder (e.g. ``data`` with ``data/market1501``), or the dataset folder.
        layout: ``market1501 | dukemtmc | msmt17 | occluded_duke``.

    Returns:
        ``{'train': [(path, pid, camid)], 'query': [...], 'gallery': [...]}``; train pids relabelled 0..N-1,
        query/gallery pids as in the files (0 = distractor), junk (-1) dropped, camids 0-based.
    """
    d = find_dataset_dir(root, layout)
    if is_synthetic(d):
        _logger.warning("%s at %s is SYNTHETIC data (SYNTHETIC.md), not the real dataset", layout, d)
    if layout == "msmt17":
        v2 = not (d / "train").is_dir()
        train_dir, test_dir = (d / "mask_train_v2", d / "mask_test_v2") if v2 else (d / "train", d / "test")
        train = _parse_msmt_list(d / "list_train.txt", train_dir) + _parse_msmt_list(d / "list_val.txt", train_dir)
        query = _parse_msmt_list(d / "list_query.txt", test_dir)
        gallery = _parse_msmt_list(d / "list_gallery.txt", test_dir)
    else:
        train = _parse_folder(d / "bounding_box_train")
        query = _parse_folder(d / "query")
        gallery = _parse_folder(d / "bounding_box_test")
    out = {"train": _relabel(train), "query": query, "gallery": gallery}
    for split, items in out.items():
        if not items:
            raise ValueError(f"{layout} at {d}: the {split} split is empty")
    return out


# --------------------------------------------------------------------------------------------------- augmentations
class ReIDRandomErasing(A.ImageOnlyTransform):
    """Random erasing after normalisation, timm 'pixel' mode (Zhong et al. 2017), as in FusionReID's pipeline.

    With probability p, up to 10 attempts draw an area in [min_area, max_area] of the image and a log-uniform aspect
    ratio in [min_aspect, 1/min_aspect]; the first box that fits is filled with N(0, 1) noise per pixel and channel.
    (albumentations' ``Erasing`` samples the ratio linearly and fills uniformly, so it is not used.)

    Why not timm's ``RandomErasing(mode='pixel')``: it draws the same boxes (same draws in the same order; equal
    under one RNG state, ``tests/test_data_random_erasing.py``), but from the global ``random`` module and fills
    from the global torch RNG, on CHW tensors after ``ToTensorV2``. This transform draws from the albumentations
    pipeline's own seeded generators (``build_transforms(seed=...)``, reseeded per worker), so the augmentation
    stream stays reproducible and per-worker; the fill values therefore differ (same N(0, 1) distribution).

    Args:
        p: probability.
        min_area: smallest erased fraction of the image.
        max_area: largest erased fraction of the image.
        min_aspect: smallest aspect ratio (the largest is its inverse).
    """

    def __init__(self, p: float = 0.5, min_area: float = 0.02, max_area: float = 1 / 3, min_aspect: float = 0.3
                 ) -> None:
        super().__init__(p=p)
        self.min_area, self.max_area, self.min_aspect = min_area, max_area, min_aspect
        self.log_aspect = (math.log(min_aspect), math.log(1 / min_aspect))

    def get_params_dependent_on_data(self, params: dict[str, Any], data: dict[str, Any]) -> dict[str, Any]:
        H, W = params["shape"][:2]
        for _ in range(10):
            area = self.py_random.uniform(self.min_area, self.max_area) * H * W
            ratio = math.exp(self.py_random.uniform(*self.log_aspect))
            h, w = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
            if w < W and h < H:
                top, left = self.py_random.randint(0, H - h), self.py_random.randint(0, W - w)
                return {"box": (top, left, h, w)}
        return {"box": None}

    def apply(self, img: np.ndarray, box: tuple[int, int, int, int] | None = None, **params: Any) -> np.ndarray:
        if box is None:
            return img
        top, left, h, w = box
        img = img.copy()
        img[top:top + h, left:left + w] = self.random_generator.standard_normal((h, w) + img.shape[2:]).astype(
            img.dtype)
        return img

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("min_area", "max_area", "min_aspect")


class PILResize(A.ImageOnlyTransform):
    """Resize a uint8 image with PIL, exactly as torchvision's ``T.Resize`` does on the PIL images of the official
    FusionReID pipeline.

    PIL widens its filter support when it downscales (antialiasing), which cv2's ``INTER_LINEAR`` / ``INTER_CUBIC``
    (albumentations' ``Resize``) do not; on large MSMT17 / DukeMTMC crops the two differ visibly.

    Args:
        height: output height.
        width: output width.
        interpolation: PIL filter: 'bicubic' (the official training resize, ``T.Resize(size, interpolation=3)``),
            'bilinear' (the official test resize, ``T.Resize(size)``), 'nearest', 'lanczos', 'box' or 'hamming'.
        p: probability.
    """

    FILTERS: ClassVar[dict[str, int]] = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "box": 4,
                                         "hamming": 5}  # PIL's Resampling values

    def __init__(self, height: int, width: int, interpolation: str = "bilinear", p: float = 1.0) -> None:
        super().__init__(p=p)
        if interpolation not in self.FILTERS:
            raise ValueError(f"unknown interpolation {interpolation!r}; choose one of {', '.join(self.FILTERS)}")
        self.height, self.width, self.interpolation = int(height), int(width), interpolation

    def apply(self, img: np.ndarray, **params: Any) -> np.ndarray:
        from PIL import Image

        if img.dtype != np.uint8:
            raise TypeError(f"PILResize expects a uint8 image (resize before Normalize), got {img.dtype}")
        if img.shape[:2] == (self.height, self.width):
            return img
        squeeze = img.ndim == 3 and img.shape[2] == 1
        pil = Image.fromarray(img[..., 0] if squeeze else img)
        out = np.asarray(pil.resize((self.width, self.height), self.FILTERS[self.interpolation]))
        return out[..., None] if squeeze else out

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("height", "width", "interpolation")


def build_transforms(train: bool, image_size: tuple[int, int] = (256, 128), flip_prob: float = 0.5, pad: int = 10,
                     erasing_prob: float = 0.5, mean: tuple[float, ...] = (0.5, 0.5, 0.5),
                     std: tuple[float, ...] = (0.5, 0.5, 0.5), seed: int | None = None,
                     interpolation: str | None = None):
    """FusionReID's pipeline: resize [-> flip -> pad + random crop] -> normalise [-> random erasing].

    The resize is PIL's, as the official torchvision pipeline: bicubic in training (``T.Resize(size,
    interpolation=3)``) and bilinear at test time (``T.Resize(size)``), antialiased when downscaling;
    ``interpolation`` overrides the filter (see :class:`PILResize`).
    """
    import cv2
    from albumentations.pytorch import ToTensorV2

    h, w = image_size
    ops: list[Any] = [PILResize(h, w, interpolation or ("bicubic" if train else "bilinear"))]
    if train:
        ops += [A.HorizontalFlip(p=flip_prob),
                A.Pad(padding=pad, fill=0, border_mode=cv2.BORDER_CONSTANT),
                A.RandomCrop(h, w)]
    ops.append(A.Normalize(mean=mean, std=std, max_pixel_value=255.0))
    if train and erasing_prob > 0:
        ops.append(ReIDRandomErasing(p=erasing_prob))
    ops.append(ToTensorV2())
    return A.Compose(ops, seed=seed)


# ---------------------------------------------------------------------------------------------------------- dataset
class ReIDImageDataset(Dataset):
    """(path, pid, camid) items -> dicts ``{image, pid, camid, index[, is_query]}``.

    Args:
        items: the samples.
        transform: albumentations pipeline (RGB uint8 HWC in, CHW tensor out).
        num_query: when given, the first ``num_query`` items are queries (``is_query`` is added).
    """

    def __init__(self, items: list[Item], transform: Any, num_query: int | None = None) -> None:
        self.items = items
        self.transform = transform
        self.num_query = num_query

    def __len__(self) -> int:
        return len(self.items)

    def reseed(self, seed: int) -> None:
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed % (2 ** 32))

    def __getitem__(self, i: int) -> dict[str, Any]:
        path, pid, cam = self.items[i]
        img = open_rgb8(path)  # errors name the file; 16-bit images rescaled, not clipped
        out = {"image": self.transform(image=img)["image"], "pid": pid, "camid": cam, "index": i}
        if self.num_query is not None:
            out["is_query"] = i < self.num_query
        return out


def _seed_worker(worker_id: int) -> None:
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "reseed"):
        info.dataset.reseed(info.seed)  # distinct per worker and per epoch


class RandomIdentitySampler(DistributedSampler):
    """P x K identity sampler: batches of ``batch_size`` = P identities x K (``num_instances``) images each.

    Each identity's images are shuffled and cut into chunks of K (sampled with replacement when it has fewer);
    every step draws P x world_size distinct identities that still have chunks, and rank r takes the r-th group of
    P, so ranks see disjoint identities within a step. All ranks build the same plan from ``seed + epoch``, so the
    number of batches is equal. It subclasses ``DistributedSampler`` only so that Lightning does not wrap it again.

    Args:
        pids: identity of every training sample.
        batch_size: per-rank batch size (multiple of num_instances).
        num_instances: K, images per identity.
        num_replicas: world size (default 1).
        rank: this rank (default 0).
        seed: base seed.
    """

    def __init__(self, pids: list[int], batch_size: int, num_instances: int, num_replicas: int = 1, rank: int = 0,
                 seed: int = 0) -> None:
        if batch_size % num_instances:
            raise ValueError(f"batch_size {batch_size} is not a multiple of num_instances {num_instances}")
        self.pids = list(pids)
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.num_pids_per_batch = batch_size // num_instances
        self.num_replicas, self.rank, self.seed, self.epoch = num_replicas, rank, seed, 0
        self.index_by_pid: dict[int, list[int]] = defaultdict(list)
        for i, pid in enumerate(self.pids):
            self.index_by_pid[pid].append(i)
        need = self.num_pids_per_batch * num_replicas
        if len(self.index_by_pid) < need:
            raise ValueError(f"P x world_size = {need} identities per step, but the data has {len(self.index_by_pid)}")
        self.shuffle, self.drop_last = True, True  # what Lightning may read off a DistributedSampler
        self._cache: tuple[int, list[int]] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _plan(self) -> list[int]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        rng = np.random.default_rng(self.seed + self.epoch)
        K = self.num_instances
        chunks: dict[int, list[list[int]]] = {}
        for pid in sorted(self.index_by_pid):
            idx = self.index_by_pid[pid]
            idx = list(rng.choice(idx, size=K, replace=True)) if len(idx) < K else list(rng.permutation(idx))
            chunks[pid] = [idx[j:j + K] for j in range(0, len(idx) - K + 1, K)]
        P, world = self.num_pids_per_batch, self.num_replicas
        mine: list[int] = []
        while True:
            avail = [pid for pid, c in chunks.items() if c]
            if len(avail) < P * world:
                break
            chosen = rng.choice(avail, size=P * world, replace=False)
            for pid in chosen[self.rank * P:(self.rank + 1) * P]:
                mine.extend(int(i) for i in chunks[int(pid)][0])
            for pid in chosen:
                chunks[int(pid)].pop(0)
        self._cache = (self.epoch, mine)
        return mine

    def __iter__(self) -> Iterator[int]:
        return iter(self._plan())

    def __len__(self) -> int:
        return len(self._plan())


# ------------------------------------------------------------------------------------------------------ datamodule
class ReIDDataModule(pl.LightningDataModule):
    """A person-ReID dataset in its official layout (Market-1501, DukeMTMC-reID, MSMT17, Occluded-Duke).

    Training batches are P x K (identities x ``num_instances``) dicts ``{image, pid, camid, index}``; validation and
    test iterate the query then the gallery, with ``is_query`` set on each sample.

    Args:
        root: folder holding the dataset folder (``data`` for ``data/market1501``) or the dataset folder itself.
        layout: market1501 | dukemtmc | msmt17 | occluded_duke.
        image_size: (height, width) after resizing (None: the model's input size, else (256, 128)).
        batch_size: per-device training batch (P x K); 128 = 8 identities x 16 as in the paper.
        num_instances: K, images per identity in a training batch (16 in the paper).
        test_batch_size: per-device evaluation batch.
        num_workers: dataloader workers.
        pin_memory: pin host memory for faster host-to-device copies.
        flip_prob: horizontal flip probability.
        pad: zero padding before the random crop.
        erasing_prob: random erasing probability.
        mean: normalisation mean (None: the model's, else (0.5, 0.5, 0.5)).
        std: normalisation std (None: the model's, else (0.5, 0.5, 0.5)).
        seed: sampler / augmentation seed.
        synthetic_if_missing: write a small synthetic dataset in this layout under ``root`` when none is found
            (demo and tests; never for real experiments); only into an absent, empty or synthetic-labelled root.
            True or 'pedestrians': drawn pedestrians; 'photo_patches': regions of the shipped real photographs seen
            through synthetic cameras, training and test identities from disjoint photos (market1501 layout only).
        preprocessing_model: a zoo model name (``arch[.tag]``) whose preprocessing (``zoo.resolve_data_config``:
            input size, mean/std, resize interpolation) fills ``image_size``, ``mean``, ``std`` and ``interpolation``
            left None; ``sharezoo`` fills it with the task's ``model`` when the config leaves it out.
        interpolation: PIL resize filter for both splits (None: the model's, else bicubic train / bilinear test).
        verify: check every image of every split before training: 'header' (cheap: opens, size, file end),
            'decode' (full decode, slow on big sets) or 'off'.
        on_bad_file: 'error' (one error listing every bad file) or 'skip' (leave them out, logged and counted in
            ``skipped_files``).
    """

    def __init__(
        self,
        root: str = "data",
        layout: str = "market1501",
        image_size: tuple[int, int] | None = None,
        batch_size: int = 128,
        num_instances: int = 16,
        test_batch_size: int = 256,
        num_workers: int = 4,
        pin_memory: bool = True,
        flip_prob: float = 0.5,
        pad: int = 10,
        erasing_prob: float = 0.5,
        mean: tuple[float, float, float] | None = None,
        std: tuple[float, float, float] | None = None,
        seed: int = 1111,
        synthetic_if_missing: bool | str = False,
        preprocessing_model: str | None = None,
        interpolation: str | None = None,
        verify: VerifyMode = "header",
        on_bad_file: OnBadFile = "error",
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown ReID layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
        if verify not in ("header", "decode", "off") or on_bad_file not in ("error", "skip"):
            raise ValueError(f"verify must be 'header', 'decode' or 'off' (got {verify!r}) and on_bad_file 'error' or "
                             f"'skip' (got {on_bad_file!r})")
        self.save_hyperparameters()
        self.root, self.layout = root, layout
        from zoo import resolve_data_config

        cfg = resolve_data_config(preprocessing_model, image_size=image_size, mean=mean, std=std, interpolation=interpolation)
        size = cfg.get("image_size", (256, 128))
        self.image_size = (int(size[0]), int(size[1]))
        self.mean = tuple(float(m) for m in cfg.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(float(v) for v in cfg.get("std", (0.5, 0.5, 0.5)))
        self.interpolation: str | None = cfg.get("interpolation")
        self._splits: dict[str, list[Item]] | None = None
        self.skipped_files: list[str] = []
        self.train_set: ReIDImageDataset | None = None
        self.eval_set: ReIDImageDataset | None = None

    # lazily parsed (and verified), so the CLI can link num_classes / num_cameras into the model before setup()
    @property
    def splits(self) -> dict[str, list[Item]]:
        if self._splits is None:
            self._ensure_present()
            self._splits = self._verified(parse_layout(self.root, self.layout))
        return self._splits

    def _verified(self, splits: dict[str, list[Item]]) -> dict[str, list[Item]]:
        """Every split's files checked up front (``verify``); bad ones raise, or are left out and counted."""
        hp = self.hparams
        paths = [p for items in splits.values() for p, _, _ in items]
        bad = verify_files(paths, verify=hp.verify, on_bad_file=hp.on_bad_file,
                           what=f"{self.layout} at {self.root} (train/query/gallery)")
        if not bad:
            return splits
        self.skipped_files = sorted(bad)
        out = {k: [it for it in v if it[0] not in bad] for k, v in splits.items()}
        out["train"] = _relabel(out["train"])  # an identity whose images were all skipped leaves no label gap
        for split, items in out.items():
            if not items:
                raise ValueError(f"{self.layout} at {self.root}: every file of the {split} split is bad")
        return out

    @property
    def num_classes(self) -> int:
        """Training identities."""
        return len({pid for _, pid, _ in self.splits["train"]})

    @property
    def num_cameras(self) -> int:
        """Cameras over all splits (max camid + 1)."""
        return 1 + max(cam for items in self.splits.values() for _, _, cam in items)

    @property
    def num_query(self) -> int:
        return len(self.splits["query"])

    def _ensure_present(self) -> None:
        try:
            find_dataset_dir(self.root, self.layout)
        except FileNotFoundError:
            if not self.hparams.synthetic_if_missing:
                raise
            from .synthetic import ensure_demo_reid

            _logger.warning("no %s dataset under %s: writing a SYNTHETIC one (synthetic_if_missing=True)",
                            self.layout, self.root)
            kind = "pedestrians" if self.hparams.synthetic_if_missing is True else self.hparams.synthetic_if_missing
            ensure_demo_reid(self.root, self.layout, kind=kind)

    def prepare_data(self) -> None:
        self._ensure_present()
        find_dataset_dir(self.root, self.layout)

    def setup(self, stage: str | None = None) -> None:
        hp = self.hparams
        s = self.splits
        tr = dict(image_size=self.image_size, mean=self.mean, std=self.std, interpolation=self.interpolation)
        self.train_set = ReIDImageDataset(
            s["train"], build_transforms(True, flip_prob=hp.flip_prob, pad=hp.pad, erasing_prob=hp.erasing_prob,
                                         seed=hp.seed, **tr))
        self.eval_set = ReIDImageDataset(s["query"] + s["gallery"], build_transforms(False, **tr),
                                         num_query=len(s["query"]))

    def _loader_kwargs(self) -> dict[str, Any]:
        nw = self.hparams.num_workers
        return dict(num_workers=nw, pin_memory=self.hparams.pin_memory and torch.cuda.is_available(),
                    persistent_workers=nw > 0, worker_init_fn=_seed_worker)

    def _world(self) -> tuple[int, int]:
        t = self.trainer
        if t is not None:
            return t.world_size, t.global_rank
        return 1, 0

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        world, rank = self._world()
        sampler = RandomIdentitySampler([pid for _, pid, _ in self.train_set.items], self.hparams.batch_size,
                                        self.hparams.num_instances, world, rank, self.hparams.seed)
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, sampler=sampler, drop_last=True,
                          **self._loader_kwargs())

    def _eval_loader(self) -> DataLoader:
        if self.eval_set is None:
            self.setup("test")
        return DataLoader(self.eval_set, batch_size=self.hparams.test_batch_size, shuffle=False,
                          **self._loader_kwargs())

    def val_dataloader(self) -> DataLoader:
        """Query then gallery (``is_query`` flag); the test split, as in the official protocol."""
        return self._eval_loader()

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader()

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader()
