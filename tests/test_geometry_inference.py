"""Inference utilities on synthetic scenes with exact ground truth: rescaling, matching, pose, global alignment."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

import zoo
from datamodules.synthetic.geometry import intrinsics, look_at, random_scene, render, render_views
from tasks.geometry import gt_correspondences
from tasks.geometry_inference import (
    estimate_focal,
    fast_reciprocal_nn,
    global_align,
    make_pairs,
    pairwise_inference,
    preprocess_image,
    procrustes,
    relative_pose_from_pointmaps,
    rescale_to_original,
)
from tasks.metrics.geometry import relative_pose_error


def test_preprocess_and_rescale_back_to_original_resolution():
    rng = np.random.default_rng(0)
    scene = random_scene(rng)
    h, w = 48, 80
    K = intrinsics(h, w)
    c2w = look_at(np.array([0.0, 0.0, 0.0]), np.array([0.0, 0.0, 5.0]))
    orig = render(scene, K, c2w, h, w)
    x, info = preprocess_image((orig["image"] * 255).astype(np.uint8), size=64)
    ch, cw = info["crop"][2:]
    assert x.shape == (3, ch, cw) and ch % 16 == 0 and cw % 16 == 0 and x.min() >= -1 and x.max() <= 1
    # render the exact network-grid view: scaled intrinsics, principal point shifted by the crop
    rh, rw = info["resized_hw"]
    Kn = K.copy()
    Kn[0] *= rw / w
    Kn[1] *= rh / h
    Kn[0, 2] -= info["crop"][1]
    Kn[1, 2] -= info["crop"][0]
    net = render(scene, Kn, c2w, ch, cw)
    back = rescale_to_original(torch.tensor(net["depth"]), info)
    assert back.shape == (h, w)
    top = int(np.ceil(info["crop"][0] * h / rh)) + 1
    inner = slice(top, h - top)
    rel = (back[inner] - torch.tensor(orig["depth"])[inner]).abs() / torch.tensor(orig["depth"])[inner]
    assert rel.median() < 0.01 and (rel < 0.05).float().mean() > 0.9
    pts = rescale_to_original(torch.tensor(net["pts3d"]), info)
    assert pts.shape == (h, w, 3)


def test_fast_reciprocal_nn_recovers_true_correspondences():
    v1, v2 = render_views(1, 2, 32, 32)
    T21 = np.linalg.inv(v1["c2w"]) @ v2["c2w"]
    T12 = torch.tensor(np.linalg.inv(T21), dtype=torch.float32)
    p12 = torch.tensor(v1["pts3d"]) @ T12[:3, :3].T + T12[:3, 3]
    i1, i2 = gt_correspondences(p12, torch.tensor(v1["valid"]), torch.tensor(v2["depth"]), torch.tensor(v2["valid"]),
                                torch.tensor(v2["K"]))
    g = torch.Generator().manual_seed(0)
    d1 = torch.nn.functional.normalize(torch.randn(32 * 32, 24, generator=g), dim=-1)
    d2 = torch.nn.functional.normalize(torch.randn(32 * 32, 24, generator=g), dim=-1)
    d2[i2] = d1[i1]  # a true match shares its descriptor
    # only pixels whose match kept their code can be matched (others are occluded / out of view: random codes)
    mask1 = torch.zeros(32 * 32, dtype=torch.bool)
    mask1[i1[(d2[i2] * d1[i1]).sum(1) > 0.999]] = True
    xy1, xy2 = fast_reciprocal_nn(d1.reshape(32, 32, 24), d2.reshape(32, 32, 24), subsample=4,
                                  mask1=mask1.reshape(32, 32))
    assert len(xy1) > 20
    f1, f2 = xy1[:, 1] * 32 + xy1[:, 0], xy2[:, 1] * 32 + xy2[:, 0]
    # every returned match is a mutual nearest neighbour (brute force, independent)
    sim = d1 @ d2.T
    assert torch.equal(sim[f1].argmax(1), f2) and torch.equal(sim[:, f2].argmax(0), f1)
    gt = dict(zip(i1.tolist(), i2.tolist()))
    correct = sum(gt.get(a) == b for a, b in zip(f1.tolist(), f2.tolist()))
    assert correct == len(f1)


def test_procrustes_focal_and_pose_from_gt_pointmaps():
    rng = np.random.default_rng(2)
    src = torch.tensor(rng.normal(size=(50, 3)))
    R = torch.tensor(Rotation.from_rotvec([0.3, -0.1, 0.5]).as_matrix())
    dst = 2.5 * src @ R.T + torch.tensor([1.0, -2.0, 0.5])
    s, Re, t = procrustes(src, dst)
    assert s.item() == pytest.approx(2.5) and torch.allclose(Re, R, atol=1e-8)
    v1, v2 = render_views(3, 2, 32, 32)
    assert estimate_focal(torch.tensor(v1["pts3d"])).item() == pytest.approx(v1["K"][0, 0], rel=1e-4)
    T21 = np.linalg.inv(v1["c2w"]) @ v2["c2w"]
    p21 = torch.tensor(v2["pts3d"] @ T21[:3, :3].T + T21[:3, 3], dtype=torch.float32)
    Rp, tp, sp = relative_pose_from_pointmaps(torch.tensor(v2["pts3d"]) * 0.5, p21 * 0.5)
    re, te = relative_pose_error(Rp, tp, torch.tensor(T21[:3, :3]), torch.tensor(T21[:3, 3]))
    assert re < 0.01 and te < 0.01 and sp.item() == pytest.approx(1.0, abs=1e-4)


def _gt_pair_preds(views, pairs, rng, noise=0.0):
    preds = {}
    for i, j in pairs:
        Tij = np.linalg.inv(views[i]["c2w"]) @ views[j]["c2w"]  # j -> i
        s = float(rng.uniform(0.5, 2.0))  # each pair has its own unknown scale
        pi = views[i]["pts3d"] * s
        pj = (views[j]["pts3d"] @ Tij[:3, :3].T + Tij[:3, 3]) * s
        if noise:
            pi = pi * (1 + noise * rng.normal(size=pi.shape[:2] + (1,)))
            pj = pj * (1 + noise * rng.normal(size=pj.shape[:2] + (1,)))
        one = torch.ones(pi.shape[:2])
        preds[(i, j)] = {"pts_i": torch.tensor(pi, dtype=torch.float32), "pts_j": torch.tensor(pj, dtype=torch.float32),
                         "conf_i": one, "conf_j": one}
    return preds


def test_global_alignment_recovers_poses_focals_and_geometry():
    views = render_views(7, 3, 24, 24)
    pairs = make_pairs(3, "complete")
    assert len(pairs) == 6 and len(make_pairs(6, "swin", window=2)) == 2 * 12
    rng = np.random.default_rng(0)
    res = global_align(_gt_pair_preds(views, pairs, rng), 3, niter=30, lr=5e-4)
    for i, j in ((0, 1), (0, 2), (1, 2)):
        Tgt = np.linalg.inv(views[i]["c2w"]) @ views[j]["c2w"]
        Test = torch.linalg.inv(res.cam2world[i]) @ res.cam2world[j]
        re, te = relative_pose_error(Test[:3, :3], Test[:3, 3], torch.tensor(Tgt[:3, :3]), torch.tensor(Tgt[:3, 3]))
        assert re < 0.5 and te < 1.0, (i, j, re, te)
    assert torch.allclose(res.focals, torch.tensor(views[0]["K"][0, 0]).expand(3), rtol=0.01)
    world_gt = torch.tensor(np.stack([v["pts3d_world"] for v in views])).reshape(-1, 3)
    s, R, t = procrustes(res.pts3d.reshape(-1, 3), world_gt)
    resid = (s * res.pts3d.reshape(-1, 3).double() @ R.T + t - world_gt).norm(dim=1)
    assert resid.median() < 0.02


def test_global_alignment_optimisation_reduces_loss_with_noise():
    views = render_views(8, 3, 24, 24)
    preds = _gt_pair_preds(views, make_pairs(3), np.random.default_rng(1), noise=0.02)
    init = global_align(preds, 3, niter=0)
    opt = global_align(preds, 3, niter=30, lr=0.002)
    assert opt.loss < init.loss


def test_pairwise_inference_with_tiny_model():
    m = zoo.create_model("dens3r_tiny").eval()
    imgs = [torch.randn(3, 32, 32) for _ in range(2)]
    assert set(make_pairs(3, "swin", window=1)) == {(0, 1), (1, 2), (0, 2), (1, 0), (2, 1), (2, 0)}
    preds = pairwise_inference(m, imgs, make_pairs(2), batch_size=4)
    assert set(preds) == {(0, 1), (1, 0)}
    assert preds[(0, 1)]["pts_i"].shape == (32, 32, 3) and preds[(0, 1)]["conf_j"].shape == (32, 32)
    res = global_align(preds, 2, niter=3)
    assert res.pts3d.shape == (2, 32, 32, 3) and torch.isfinite(res.pts3d).all()
