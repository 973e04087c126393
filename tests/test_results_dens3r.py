"""Dens3R results recipe (issue 16): the split rule, the classical baselines on known answers, the runner (tiny)."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.geometry import SyntheticGeometryDataModule, SyntheticPairs
from datamodules.synthetic.geometry import intrinsics, look_at, random_scene, render
from tasks.geometry import transform_points
from tasks.results._report import load_config
from tasks.results.dens3r import (
    FAILED,
    check_split,
    essential_pose,
    median_depth_baselines,
    opencv_pose,
    pose_error,
    stereo_motorcycle_pair,
)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/dens3r/results_cpu.yaml", "configs/dens3r/results.yaml"]


@pytest.mark.parametrize("path", CONFIGS)
def test_config_split_rule(path):
    cfg = load_config(ROOT / path)
    s = check_split(cfg["dataset"])
    assert s["train_seeds"][1] <= s["test_seeds"][0]
    assert set(s["train_textures"]).isdisjoint(s["heldout_textures"])


def test_check_split_rejects_shared_textures():
    with pytest.raises(ValueError, match="disjoint"):
        check_split({"num_train": 4, "num_test": 2, "train_textures": ["brick"], "heldout_textures": ["brick"]})


def test_heldout_textures_change_only_the_pixels():
    """A texture split keeps every scene's geometry (same seeds -> same depth) and changes its pictures."""
    a = SyntheticPairs(1, 32, seed=5, textures=("astronaut", "brick"))[0]
    b = SyntheticPairs(1, 32, seed=5, textures=("gravel", "coins"))[0]
    c = SyntheticPairs(1, 32, seed=5)[0]
    assert np.array_equal(a["depth1"], b["depth1"]) and np.array_equal(a["depth1"], c["depth1"])
    assert not np.allclose(a["img1"], b["img1"])
    dm = SyntheticGeometryDataModule(num_train=2, num_val=1, num_test=1, size=32, train_textures=["brick"],
                                     heldout_textures=["gravel"])
    dm.setup("fit")
    assert dm.train_set.textures == ("brick",) and dm.test_set.textures == ("gravel",)
    assert dm.test_set.seed - dm.train_set.seed == 2_000_000


def test_median_depth_baselines_by_hand():
    gt = torch.tensor([[[1.0, 2.0], [4.0, 8.0]]])
    valid = torch.tensor([[[True, True], [True, False]]])
    out = median_depth_baselines(gt, valid, train_median=4.0)
    # per-image median-scaled constant: the median of the valid GT {1, 2, 4} = 2 everywhere
    assert out["median_scaled_constant"]["abs_rel"] == pytest.approx((1 / 1 + 0 / 2 + 2 / 4) / 3, abs=1e-6)
    assert out["median_scaled_constant"]["delta1"] == pytest.approx(1 / 3, abs=1e-6)
    # the training median (4) without alignment
    assert out["train_median"]["abs_rel"] == pytest.approx((3 / 1 + 2 / 2 + 0 / 4) / 3, abs=1e-6)
    assert out["train_median"]["delta1"] == pytest.approx(1 / 3, abs=1e-6)


def _pair(size: int = 256, yaw_deg: float = 8.0):
    """A rendered pair with a known relative pose: camera 2 is camera 1 moved right and turned by ``yaw_deg``."""
    scene = random_scene(np.random.default_rng(1))
    K = intrinsics(size, size, 60.0)
    c1 = look_at(np.array([0.0, -0.2, 0.0]), np.array([0.0, 0.0, 5.0]))
    yaw = np.radians(yaw_deg)
    c2 = look_at(np.array([0.6, -0.2, 0.0]), np.array([0.6 + 5 * np.sin(yaw), 0.0, 5 * np.cos(yaw)]))
    v1, v2 = render(scene, K, c1, size, size), render(scene, K, c2, size, size)
    T = np.linalg.inv(c1) @ c2
    img = [(v["image"].transpose(2, 0, 1) * 2 - 1).astype(np.float32) for v in (v1, v2)]
    return img, K, T, v2


def test_essential_pose_on_exact_correspondences():
    """The solver and its conventions (x1 = R x2 + t, pixel centres at +0.5) recover the known pose exactly."""
    img, K, T, v2 = _pair(64)
    p21 = transform_points(torch.tensor(T, dtype=torch.float32)[None], torch.tensor(v2["pts3d"])[None])[0].numpy()
    ok = v2["valid"] & (p21[..., 2] > 0.1)
    yy, xx = np.mgrid[0:64, 0:64]
    xy2 = np.stack([xx[ok] + 0.5, yy[ok] + 0.5], 1)
    P = p21[ok]
    xy1 = np.stack([K[0, 0] * P[:, 0] / P[:, 2] + K[0, 2], K[1, 1] * P[:, 1] / P[:, 2] + K[1, 2]], 1)
    inside = (xy1 > 0).all(1) & (xy1 < 64).all(1)
    assert pose_error(essential_pose(xy1[inside][::5], xy2[inside][::5], K, K), T) < 0.5


@pytest.mark.parametrize("method", ["sift", "orb"])
def test_opencv_baseline_recovers_a_known_rotation(method):
    img, K, T, _ = _pair(256, yaw_deg=8.0)
    pose = opencv_pose(img[0], img[1], K, K, method)
    assert pose is not None
    R = pose[0]
    ang = np.degrees(np.arccos(np.clip((np.trace(R.T @ T[:3, :3]) - 1) / 2, -1, 1)))
    assert ang < 3.0  # the true rotation is 8 degrees (about 1.2-1.7 degrees off here)
    assert pose_error(pose, T) < 10.0


def test_pose_failures_count_as_failed():
    K = intrinsics(32, 32)
    assert essential_pose(np.zeros((3, 2)), np.zeros((3, 2)), K, K) is None  # fewer than 5 matches
    assert essential_pose(np.ones((20, 2)), np.ones((20, 2)), K, K) is None  # degenerate: one point repeated
    assert pose_error(None, np.eye(4)) == FAILED


def test_real_pair_has_consistent_ground_truth():
    """The Middlebury pair: depth from disparity, camera 2 at +x; the right image's pixel = left pixel - disparity."""
    s = stereo_motorcycle_pair(96)
    assert s["img1"].shape[1] % 16 == 0 and s["img1"].shape[2] == 96
    assert s["valid1"].mean() > 0.5 and np.all(s["depth1"][s["valid1"]] > 0)
    assert np.allclose(s["pose2to1"][:3, :3], np.eye(3)) and s["pose2to1"][0, 3] > 0
    d = s["depth1"][s["valid1"]]
    assert 0.5 < np.median(d) < 10  # metres: a motorcycle a few metres away


def test_runner_end_to_end_tiny(tmp_path):
    from tasks.results.dens3r import main

    res = main(["--config", str(ROOT / "configs/dens3r/results.yaml"), "--out", str(tmp_path), "--tiny"])
    for k in ("ours_median", "ours_scale_shift", "median_scaled_constant", "train_median"):
        assert 0 <= res["heldout"]["depth"][k]["abs_rel"] and 0 <= res["heldout"]["depth"][k]["delta1"] <= 1
    assert set(res["heldout"]["pose"]) == {"ours_procrustes", "ours_matches", "opencv_sift", "opencv_orb"}
    assert all(0 <= v["auc@20"] <= 1 for v in res["heldout"]["pose"].values())
    assert json.loads((tmp_path / "results.json").read_text())["split"]["heldout_textures"]
    for f in ("results.md", "depth.png", "pose_cdf.png", "net.pt"):
        assert (tmp_path / f).is_file(), f


def test_h200_script_is_the_recipe():
    text = (ROOT / "benchmarks/results_dens3r_h200.sh").read_text()
    assert "-m tasks.results.dens3r" in text and "configs/dens3r/results.yaml" in text
    assert "benchmarks/results/issue16/dens3r" in text
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/results_dens3r_h200.sh")]).returncode == 0


def test_prerender_in_processes_equals_rendering_here():
    from tasks.results.dens3r import prerender

    a, b = SyntheticPairs(3, 32, seed=9, textures=("gravel",)), SyntheticPairs(3, 32, seed=9, textures=("gravel",))
    prerender(a, workers=2)
    assert sorted(a._cache) == [0, 1, 2]
    for i in range(3):
        assert np.array_equal(a[i]["img1"], b[i]["img1"]) and np.array_equal(a[i]["pose2to1"], b[i]["pose2to1"])
