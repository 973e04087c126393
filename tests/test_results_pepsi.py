"""PEPSI results recipe (issue 16): the held-out-photograph split of the shipped recipes, the baselines and metrics
against independent computations, and the runner end to end on a tiny config. Not the numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from datamodules.inpainting import PhotoCropsInpaintingDataModule
from tasks.results import pepsi as res

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "configs/pepsi/results_cpu.yaml", ROOT / "configs/pepsi/results.yaml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_split_holds_test_photographs_out(path):
    """Train, val and test photographs are disjoint by name and by pixels; evaluation crops and masks are fixed."""
    import hashlib

    cfg = yaml.safe_load(path.read_text())
    dm = PhotoCropsInpaintingDataModule(**cfg["dataset"])
    photos = dm.load()
    digests = {s: {hashlib.sha1(p.tobytes()).hexdigest() for p in ph.values()} for s, ph in photos.items()}
    names = {s: set(ph) for s, ph in photos.items()}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not names[a] & names[b] and not digests[a] & digests[b]
    assert len(names["test"]) >= 3
    ds = dm.eval_dataset("test")
    assert {it.split("[")[0] for it in (ds[i]["path"] for i in range(len(ds)))} == names["test"]
    again = dm.eval_dataset("test")
    for i in (0, len(ds) - 1):
        assert torch.equal(ds[i]["image"], again[i]["image"]) and torch.equal(ds[i]["mask"], again[i]["mask"])


def test_split_refuses_the_same_picture_under_two_names():
    with pytest.raises(ValueError, match="same picture"):  # skimage's cat is chelsea
        PhotoCropsInpaintingDataModule(train_photos=["chelsea"], val_photos=["moon"], test_photos=["cat"]).load()
    with pytest.raises(ValueError, match="more than one split"):
        PhotoCropsInpaintingDataModule(train_photos=["moon"], val_photos=["moon"], test_photos=["coffee"])


def _toy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    holes = np.zeros((2, 32, 32), np.float32)
    holes[:, 8:20, 10:22] = 1
    return img, holes


def test_baselines_fill_only_the_hole():
    img, holes = _toy()
    flat = img.copy()
    flat[0] = (40, 120, 200)  # a flat-colour image: every method must fill its hole with that colour
    for method in ("telea", "ns"):
        out = res.cv2_inpaint(flat, holes, method)
        assert out.shape == flat.shape and out.dtype == np.uint8
        np.testing.assert_array_equal(out[holes == 0], flat[holes == 0])  # known pixels untouched
        assert np.abs(out[0][holes[0] > 0].astype(int) - (40, 120, 200)).max() <= 3  # OpenCV rounds as it marches
    mean = res.mean_fill(img, holes)
    for b in range(2):
        known = img[b][holes[b] == 0].astype(np.float64).mean(0)
        np.testing.assert_array_equal(mean[b][holes[b] > 0], np.broadcast_to(np.round(known), (144, 3)))
        np.testing.assert_array_equal(mean[b][holes[b] == 0], img[b][holes[b] == 0])


def test_score_is_hole_psnr_and_ignores_known_pixels():
    """PSNR counts only the hole's pixels (an independent numpy computation), and changing the prediction outside
    the hole changes nothing (every method is scored on its composite). SSIM matches scikit-image."""
    from skimage.metrics import structural_similarity

    img, holes = _toy()
    pred = img.copy()
    pred[holes > 0] = 128
    noisy_outside = pred.copy()
    noisy_outside[holes == 0] = 0
    s, s2 = res.score(pred, img, holes), res.score(noisy_outside, img, holes)
    for k in s:
        np.testing.assert_allclose(s[k], s2[k], rtol=1e-6)
    for b in range(2):
        h = holes[b] > 0
        mse = ((pred[b][h].astype(np.float64) - img[b][h]) ** 2).mean() / 255.0 ** 2
        assert s["psnr_hole"][b] == pytest.approx(10 * np.log10(1 / mse), abs=1e-3)
        ref = structural_similarity(pred[b] / 255.0, img[b] / 255.0, channel_axis=-1, data_range=1.0,
                                    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert s["ssim"][b] == pytest.approx(ref, abs=2e-3)


def test_runner_end_to_end_tiny(tmp_path):
    cfg = yaml.safe_load(RECIPES[0].read_text())
    cfg["dataset"] |= {"image_size": 32, "batch_size": 2, "train_samples": 8, "eval_crops_per_photo": 1,
                    "train_photos": ["astronaut", "camera"], "val_photos": ["moon"],
                    "test_photos": ["coffee", "flower"]}
    for spec in cfg["models"].values():
        spec["task"] |= {"discriminator_kwargs": {"input_size": 32}}
    cfg["training"] = {"accelerator": "cpu", "max_steps": 4, "val_check_interval": 2, "log_every_n_steps": 1}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rows = res.run(["--config", str(path), "--out", str(tmp_path / "out")])
    masks = cfg["eval"]["masks"]
    assert {r["mask"] for r in rows} == set(masks)
    assert len(rows) == len(masks) * (len(cfg["models"]) + 3)  # ours + Telea + NS + mean fill, per mask kind
    assert all(r["images"] == 2 and np.isfinite(r["psnr_hole"]) for r in rows)
    assert (tmp_path / "out" / "results.md").is_file() and (tmp_path / "out" / "inpainted_vs_opencv.png").is_file()
