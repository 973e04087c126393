"""ReID datamodules: official layouts (junk/distractors, camids, relabelling), errors, sampler, transforms, configs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.reid import (
    PILResize,
    RandomIdentitySampler,
    ReIDDataModule,
    ReIDImageDataset,
    ReIDRandomErasing,
    build_transforms,
    parse_layout,
)
from datamodules.synthetic import ensure_demo_reid, write_reid_dataset

ROOT = Path(__file__).resolve().parents[1]
LAYOUTS = ["market1501", "dukemtmc", "msmt17", "occluded_duke"]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("reid")
    for layout in LAYOUTS:
        write_reid_dataset(root, layout, num_train_ids=6, num_test_ids=3, train_images_per_id=4,
                           gallery_images_per_id=3, num_junk=2, num_distractors=2)
    return root


@pytest.mark.parametrize("layout", LAYOUTS)
def test_parse_layout(data_root, layout):
    s = parse_layout(data_root, layout)
    assert sorted({pid for _, pid, _ in s["train"]}) == list(range(6))  # relabelled 0..N-1
    assert len(s["train"]) == 24 and len(s["query"]) == 3
    cams = {c for items in s.values() for _, _, c in items}
    assert min(cams) >= 0 and max(cams) <= 5  # 0-based
    assert all(Path(p).is_file() for items in s.values() for p, _, _ in items)
    g_pids = [pid for _, pid, _ in s["gallery"]]
    assert -1 not in g_pids and all(pid != -1 for _, pid, _ in s["query"])
    if layout == "msmt17":
        assert len(s["gallery"]) == 9  # no junk/distractor files in MSMT17
        assert {pid for _, pid, _ in s["query"]} == {0, 1, 2}  # test pids as in the list files
    else:
        assert g_pids.count(0) == 2 and len(s["gallery"]) == 9 + 2  # distractors kept, 2 junk dropped
        junk = list((data_root / ("Occluded_Duke" if layout == "occluded_duke" else layout) /
                     "bounding_box_test").glob("-1_c*.jpg"))
        assert len(junk) == 2  # junk files exist on disk with the official name


def test_parse_real_filename_patterns(tmp_path):
    d = tmp_path / "market1501"
    for split, names in {"bounding_box_train": ["0002_c1s1_000451_03.jpg", "0007_c3s3_077419_03.jpg"],
                         "query": ["0001_c1s1_001051_00.jpg"],
                         "bounding_box_test": ["-1_c1s1_000401_03.jpg", "0000_c6s1_000151_01.jpg",
                                               "0001_c2s1_000301_01.jpg"]}.items():
        (d / split).mkdir(parents=True)
        for n in names:
            (d / split / n).write_bytes(b"")
    s = parse_layout(tmp_path, "market1501")
    assert [(pid, c) for _, pid, c in s["train"]] == [(0, 0), (1, 2)]
    assert [(pid, c) for _, pid, c in s["gallery"]] == [(0, 5), (1, 1)]
    m = tmp_path / "MSMT17_V1"
    (m / "train" / "0000").mkdir(parents=True), (m / "test").mkdir()
    (m / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (m / "list_val.txt").write_text("0001/0001_002_15_0303noon_0001_1.jpg 1\n")
    (m / "list_query.txt").write_text("0000/0000_000_03_0303afternoon_0002_0.jpg 0\n")
    (m / "list_gallery.txt").write_text("0000/0000_001_07_0303morning_0003_0.jpg 0\n")
    s = parse_layout(tmp_path, "msmt17")
    assert [(pid, c) for _, pid, c in s["train"]] == [(0, 0), (1, 14)]  # train + val, camera field - 1
    assert s["query"][0][0].endswith("test/0000/0000_000_03_0303afternoon_0002_0.jpg") and s["query"][0][2] == 2


def test_missing_root_explains_layout_and_source(tmp_path):
    with pytest.raises(FileNotFoundError) as e:
        parse_layout(tmp_path / "nowhere", "market1501")
    msg = str(e.value)
    assert "bounding_box_train" in msg and "bounding_box_test" in msg and "zheng-lab" in msg
    with pytest.raises(FileNotFoundError, match="list_train.txt"):
        ReIDDataModule(str(tmp_path), "msmt17").num_classes
    with pytest.raises(ValueError, match="unknown ReID layout"):
        ReIDDataModule(str(tmp_path), "viper")


def test_corrupt_image_names_the_file(tmp_path):
    bad = tmp_path / "0001_c1s1_000001_01.jpg"
    bad.write_bytes(b"\xff\xd8 not a jpeg")
    ds = ReIDImageDataset([(str(bad), 0, 0)], build_transforms(False, (64, 32)))
    with pytest.raises(RuntimeError, match="0001_c1s1_000001_01.jpg"):
        ds[0]


def test_datamodule_properties_before_setup_and_batches(data_root):
    dm = ReIDDataModule(str(data_root), "dukemtmc", image_size=(64, 32), batch_size=8, num_instances=4,
                        num_workers=0, test_batch_size=7)
    assert dm.num_classes == 6 and dm.num_cameras <= 6 and dm.train_set is None  # parsed lazily, no setup
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (8, 3, 64, 32) and b["image"].dtype == torch.float32
    assert len(set(b["pid"].tolist())) == 2
    flags = torch.cat([x["is_query"] for x in dm.val_dataloader()])
    assert flags[:3].all() and not flags[3:].any() and len(flags) == 3 + 11  # query first, then gallery


def test_synthetic_if_missing_and_demo(tmp_path):
    dm = ReIDDataModule(str(tmp_path / "demo"), "market1501", synthetic_if_missing=True)
    assert dm.num_classes == 24 and dm.num_cameras == 6
    assert (dm.hparams.batch_size, dm.hparams.num_instances) == (128, 16)  # the paper's 8 ids x 16 by default
    d = ensure_demo_reid(tmp_path / "demo")
    assert (d / "SYNTHETIC.md").is_file() and (tmp_path / "demo" / "SYNTHETIC.md").is_file()  # labelled synthetic
    mtime = (d / "SYNTHETIC.md").stat().st_mtime_ns
    ensure_demo_reid(tmp_path / "demo")  # written once
    assert (d / "SYNTHETIC.md").stat().st_mtime_ns == mtime


# ------------------------------------------------------------------------------------------------------ sampler
def _pids(n_ids=10, per_id=(3, 5, 8)) -> list[int]:
    out = []
    for pid in range(n_ids):
        out += [pid] * per_id[pid % len(per_id)]
    return out


def test_identity_sampler_pxk():
    pids = _pids()
    s = RandomIdentitySampler(pids, batch_size=12, num_instances=4, seed=3)
    idx = list(s)
    assert len(idx) == len(s) and len(idx) % 12 == 0 and len(idx) > 0
    for b in range(0, len(idx), 12):
        batch = [pids[i] for i in idx[b:b + 12]]
        assert sorted(np.unique(batch, return_counts=True)[1].tolist()) == [4, 4, 4]  # P=3 ids x K=4
    assert list(RandomIdentitySampler(pids, 12, 4, seed=3)) == idx  # reproducible
    s.set_epoch(1)
    assert list(s) != idx  # reshuffled per epoch
    assert isinstance(s, torch.utils.data.DistributedSampler)  # so Lightning does not wrap it


def test_identity_sampler_distributed_split_is_disjoint():
    pids = _pids(n_ids=16)
    ranks = [RandomIdentitySampler(pids, batch_size=8, num_instances=4, num_replicas=2, rank=r, seed=0)
             for r in range(2)]
    plans = [list(s) for s in ranks]
    assert len(plans[0]) == len(plans[1]) > 0
    for b in range(0, len(plans[0]), 8):
        ids = [{pids[i] for i in p[b:b + 8]} for p in plans]
        assert len(ids[0]) == len(ids[1]) == 2 and not ids[0] & ids[1]  # distinct identities per step
    with pytest.raises(ValueError, match="identities"):
        RandomIdentitySampler(pids[:8], batch_size=8, num_instances=4, num_replicas=2)


# --------------------------------------------------------------------------------------------------- transforms
def test_transforms():
    img = (np.random.default_rng(0).random((128, 64, 3)) * 255).astype(np.uint8)
    tr, te = build_transforms(True, (64, 32), seed=0), build_transforms(False, (64, 32))
    assert tr(image=img)["image"].shape == (3, 64, 32)
    a, b = te(image=img)["image"], te(image=img)["image"]
    assert torch.equal(a, b) and a.min() >= -1 and a.max() <= 1  # (x/255 - 0.5) / 0.5
    er = ReIDRandomErasing(p=1.0)
    er.set_random_seed(0)
    areas = []
    for _ in range(30):
        out = er(image=np.zeros((64, 32, 3), np.float32))["image"]
        areas.append((out != 0).any(-1).mean())
    areas = np.array(areas)
    assert (areas > 0).mean() > 0.8 and areas.max() <= 1 / 3 + 0.05 and areas[areas > 0].min() >= 0.015


def test_resize_matches_the_official_torchvision_pil_pipeline():
    """On a real photo (downscaled 2x / 4x), the test pipeline equals the official T.Resize (PIL bilinear, antialiased)
    + ToTensor + Normalize, and the training resize is PIL bicubic (T.Resize(size, interpolation=3)); cv2's
    non-antialiased resize (the previous pipeline) is measurably different."""
    import cv2
    import skimage.data
    import torchvision.transforms as T
    from PIL import Image

    img = skimage.data.astronaut()[:, 64:448]  # 512 x 384 RGB uint8
    size = (256, 128)
    official_test = T.Compose([T.Resize(size), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    ref = official_test(Image.fromarray(img))
    ours = build_transforms(False, size)(image=img)["image"]
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=0)
    train_resize = build_transforms(True, size, seed=0).transforms[0]
    assert isinstance(train_resize, PILResize) and train_resize.interpolation == "bicubic"
    bicubic = np.asarray(T.Resize(size, interpolation=T.InterpolationMode.BICUBIC)(Image.fromarray(img)))
    assert np.array_equal(train_resize(image=img)["image"], bicubic)
    cv2_linear = cv2.resize(img, size[::-1], interpolation=cv2.INTER_LINEAR)
    ref_u8 = np.asarray(T.Resize(size)(Image.fromarray(img))).astype(float)
    assert np.abs(cv2_linear - ref_u8).mean() > 1.0  # aliasing: not a rounding difference
    assert PILResize(*size)(image=np.zeros((*size, 3), np.uint8))["image"].shape == (*size, 3)
    with pytest.raises(ValueError, match="interpolation"):
        PILResize(8, 4, "cubic")


# ------------------------------------------------------------------------------------------------------ configs
# results*.yaml are the issue-16 recipes read by tasks.results.fusionreid (tests/test_results_reid.py), not CLI configs
CONFIGS = sorted(p for p in (ROOT / "configs").glob("fusionreid/*.yaml") if not p.name.startswith("results"))


@pytest.mark.filterwarnings("ignore:LightningCLI's args parameter")
@pytest.mark.parametrize("path", CONFIGS, ids=[f"{p.parent.name}/{p.name}" for p in CONFIGS])
def test_config_parses_and_instantiates(path):
    import pytorch_lightning as pl
    from pytorch_lightning.cli import LightningCLI

    from datamodules.reid import ReIDDataModule as DM
    from tasks.reid import ReIDTask

    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       auto_configure_optimizers=False, run=False,
                       args=["--config", str(path), "--trainer.accelerator", "cpu", "--trainer.devices", "1",
                             "--trainer.logger", "false"])
    assert isinstance(cli.model, ReIDTask) and isinstance(cli.datamodule, DM)
    assert cli.model.hparams.model.startswith("fusionreid_")
    # validation is the query/gallery test split: no checkpoint is selected on it, the last one is reported
    from pytorch_lightning.callbacks import ModelCheckpoint
    ckpts = [cb for cb in cli.trainer.callbacks if isinstance(cb, ModelCheckpoint)]
    assert ckpts and all(cb.monitor is None and cb.save_last for cb in ckpts)
    assert "--ckpt_path best" not in path.read_text()
    if path.stem not in ("demo", "recipe"):  # the paper recipe on one dataset
        assert cli.trainer.max_epochs == 180 and cli.model.hparams.lr == 0.005
        assert cli.datamodule.hparams.batch_size == 128 and cli.datamodule.hparams.num_instances == 16
        assert cli.datamodule.layout == path.stem
