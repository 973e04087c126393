"""Geometry metrics and losses against independent numpy / scipy / sklearn computations."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.integrate
import torch
from scipy.spatial.transform import Rotation
from sklearn.metrics import mean_squared_error

from datamodules.synthetic.geometry import pair_sample, render_views
from tasks.geometry import (
    STAGE_WEIGHTS,
    depth_metrics,
    gt_correspondences,
    info_nce,
    normal_metrics,
    pose_auc,
    stage_loss,
)
from tasks.metrics.geometry import align_scale_shift, border_mask, relative_pose_error, rotation_angle
from zoo.dens3r import Dens3ROutput, Dens3RView
from zoo.layers.geometry import normals_from_pointmap


def _np_depth_metrics(pred, gt, lo=1e-3, hi=20.0):
    """Reference: the protocol written out with numpy lstsq, per image, then averaged."""
    res = {k: [] for k in ("abs_rel", "delta1", "delta2", "delta3", "rmse")}
    for p, g in zip(pred, gt):
        p = np.clip(np.nan_to_num(p, nan=lo, posinf=hi), lo, hi)
        v = (g > lo) & (g < hi)
        A = np.stack([p[v], np.ones(v.sum())], 1)
        (s, t), *_ = np.linalg.lstsq(A, g[v], rcond=None)
        q = np.clip(p * s + t, lo, hi)[v]
        gv = g[v]
        r = np.maximum(gv / q, q / gv)
        res["abs_rel"].append(np.mean(np.abs(gv - q) / gv))
        for k in (1, 2, 3):
            res[f"delta{k}"].append(np.mean(r < 1.25**k))
        res["rmse"].append(np.sqrt(mean_squared_error(gv, q)))
    return {k: float(np.mean(v)) for k, v in res.items()}


def test_depth_metrics_match_numpy_reference():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 8.0, (3, 20, 24))
    gt[0, :3] = 0  # invalid
    pred = 0.3 * gt + 0.7 + rng.normal(0, 0.3, gt.shape)  # affine-distorted + noise
    got = depth_metrics(torch.tensor(pred), torch.tensor(gt))
    ref = _np_depth_metrics(pred, gt)
    for k in ref:
        assert got[k].item() == pytest.approx(ref[k], rel=1e-4, abs=1e-6), k
    # a pure scale-and-shift distortion is removed exactly by the alignment
    exact = depth_metrics(torch.tensor(2.0 * gt + 1.0), torch.tensor(gt))
    assert exact["abs_rel"] < 1e-6 and exact["delta1"] == 1.0


def test_align_scale_shift_equals_lstsq():
    rng = np.random.default_rng(1)
    p, g = rng.normal(size=(2, 6, 7)), rng.normal(size=(2, 6, 7))
    m = rng.random((2, 6, 7)) > 0.3
    s, t = align_scale_shift(torch.tensor(p), torch.tensor(g), torch.tensor(m))
    for b in range(2):
        (rs, rt), *_ = np.linalg.lstsq(np.stack([p[b][m[b]], np.ones(m[b].sum())], 1), g[b][m[b]], rcond=None)
        assert s[b].item() == pytest.approx(rs) and t[b].item() == pytest.approx(rt)


def test_border_masks():
    m = border_mask(480, 640, "nyu_border")
    assert m.sum() == (480 - 18) * (640 - 24) and not m[8].any() and m[9, 12]
    e = border_mask(480, 640, "eigen")
    assert e.sum() == (471 - 45) * (601 - 41)


def test_normal_metrics_match_numpy_both_layouts():
    rng = np.random.default_rng(2)
    gt = rng.normal(size=(2, 3, 8, 9))
    pred = gt + rng.normal(0, 0.4, gt.shape)
    mask = rng.random((2, 8, 9)) > 0.2
    g = np.moveaxis(gt, 1, -1)[mask]
    p = np.moveaxis(pred, 1, -1)[mask]
    cos = (p * g).sum(1) / np.linalg.norm(p, axis=1) / np.linalg.norm(g, axis=1)
    ang = np.degrees(np.arccos(np.clip(cos, -1, 1)))
    got = normal_metrics(torch.tensor(pred), torch.tensor(gt), torch.tensor(mask))
    assert got["mean"].item() == pytest.approx(ang.mean(), rel=1e-5)
    assert got["median"].item() == pytest.approx(np.median(ang), rel=1e-5)
    assert got["rmse"].item() == pytest.approx(np.sqrt((ang**2).mean()), rel=1e-5)
    for k, th in (("pct_11_25", 11.25), ("pct_22_5", 22.5), ("pct_30", 30.0)):
        assert got[k].item() == pytest.approx(100 * (ang < th).mean(), abs=1e-4)
    flat = normal_metrics(torch.tensor(p), torch.tensor(g))  # (N, 3)
    assert flat["mean"].item() == pytest.approx(ang.mean(), rel=1e-5)


def test_pose_auc_matches_integral_of_recall_curve():
    rng = np.random.default_rng(3)
    errs = np.abs(rng.normal(0, 12, 200))
    got = pose_auc(errs)
    e = np.r_[0.0, np.sort(errs)]
    r = np.r_[0.0, np.arange(1, len(errs) + 1) / len(errs)]
    for th in (5, 10, 20):
        k = int((e <= th).sum())
        ref = scipy.integrate.quad(lambda x: np.interp(x, e[:k], r[:k]), 0, th, points=e[1:k], limit=1000)[0] / th
        assert got[f"auc@{th}"] == pytest.approx(ref, abs=2e-4)
    assert pose_auc([0.0, 0.0])["auc@5"] == pytest.approx(1.0)


def test_rotation_and_pose_errors_vs_scipy():
    R1 = Rotation.from_rotvec([0.1, -0.2, 0.3])
    R2 = Rotation.from_rotvec([0.12, -0.18, 0.25])
    ref = np.degrees((R1.inv() * R2).magnitude())
    got = rotation_angle(torch.tensor((R1.inv() * R2).as_matrix()))
    assert got.item() == pytest.approx(ref, rel=1e-6)
    re, te = relative_pose_error(torch.tensor(R1.as_matrix()), torch.tensor([1.0, 0, 0]),
                                 torch.tensor(R2.as_matrix()), torch.tensor([-1.0, 0.01, 0]))
    assert re.item() == pytest.approx(ref, rel=1e-5) and te.item() == pytest.approx(np.degrees(np.arctan(0.01)), rel=1e-3)


def test_info_nce_matches_manual_log_softmax():
    rng = np.random.default_rng(4)
    d1 = rng.normal(size=(6, 5))
    d2 = rng.normal(size=(6, 5))
    d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
    d2 /= np.linalg.norm(d2, axis=1, keepdims=True)
    s = d1 @ d2.T / 0.07
    lsm_r = s - np.log(np.exp(s - s.max(1, keepdims=True)).sum(1, keepdims=True)) - s.max(1, keepdims=True)
    lsm_c = s.T - np.log(np.exp(s.T - s.T.max(1, keepdims=True)).sum(1, keepdims=True)) - s.T.max(1, keepdims=True)
    ref = -(np.diag(lsm_r).mean() + np.diag(lsm_c).mean()) / 2
    assert info_nce(torch.tensor(d1), torch.tensor(d2)).item() == pytest.approx(ref, rel=1e-6)


def test_normals_from_plane_pointmap_are_exact():
    n = np.array([0.2, -0.5, -0.8])
    n /= np.linalg.norm(n)
    h, w, f = 10, 12, 8.0
    u, v = np.meshgrid(np.arange(w) + 0.5, np.arange(h) + 0.5)
    rays = np.stack([(u - w / 2) / f, (v - h / 2) / f, np.ones_like(u)], -1)
    depth_along = -3.0 / (rays @ n)  # plane n.x = -3 (facing the camera)
    pts = torch.tensor(rays * depth_along[..., None])[None]
    est, ok = normals_from_pointmap(pts)
    assert ok[0, 1:-1, 1:-1].all() and not ok[0, 0].any()
    assert torch.allclose(est[0][ok[0]], torch.tensor(n).expand(int(ok.sum()), 3), atol=1e-6)


@pytest.fixture(scope="module")
def pair():
    v1, v2 = render_views(5, 2, 32, 32)
    return {k: torch.as_tensor(v)[None] for k, v in pair_sample(v1, v2).items()}


def _perfect_output(b, scale=1.0):
    T21 = b["pose2to1"][0]
    g21 = b["pts2"] @ T21[:3, :3].T + T21[:3, 3]
    T12 = torch.linalg.inv(T21)
    g12 = b["pts1"] @ T12[:3, :3].T + T12[:3, 3]
    one = torch.ones_like(b["depth1"])
    v1 = Dens3RView(pts3d=b["pts1"] * scale, conf=one, pts3d_other=g12 * scale, conf_other=one, normal=b["normal1"])
    v2 = Dens3RView(pts3d=b["pts2"] * scale, conf=one, pts3d_other=g21 * scale, conf_other=one, normal=b["normal2"])
    return Dens3ROutput(v1, v2)


def test_stage_losses_vanish_for_exact_prediction_up_to_scale(pair):
    w = {**STAGE_WEIGHTS[2], "depth": 1.0}
    _, parts = stage_loss(_perfect_output(pair, scale=3.7), pair, w, conf_alpha=None)
    assert parts["pts_loc"] < 1e-5 and parts["pts_glb"] < 1e-5 and parts["normal"] < 1e-5 and parts["depth"] < 1e-5
    # normals from the exact pointmap agree with GT except at depth discontinuities (~0.26 per view and frame;
    # pts_normal = local + global term, each averaged over the views)
    assert parts["pts_normal"] < 0.6
    bad = _perfect_output(pair)
    bad.view1.pts3d = bad.view1.pts3d * torch.linspace(0.5, 1.5, 32)[None, None, :, None]
    _, parts_bad = stage_loss(bad, pair, w, conf_alpha=None)
    assert parts_bad["pts_loc"] > 0.05 and parts_bad["pts_normal"] > parts["pts_normal"]


def test_stage1_confidence_and_matching_terms(pair):
    out = _perfect_output(pair)
    i1, i2 = gt_correspondences(
        (pair["pts1"][0] @ torch.linalg.inv(pair["pose2to1"][0])[:3, :3].T + torch.linalg.inv(pair["pose2to1"][0])[:3, 3]),
        pair["valid1"][0], pair["depth2"][0], pair["valid2"][0], pair["K2"][0])
    assert len(i1) > 100
    # descriptors = random codes attached to 3D points: matches get identical descriptors -> low InfoNCE
    codes = torch.nn.functional.normalize(torch.randn(32 * 32, 16), dim=-1)
    d1 = codes.clone()
    d2 = torch.nn.functional.normalize(torch.randn(32 * 32, 16), dim=-1)
    d2[i2] = codes[i1]
    out.view1.desc, out.view2.desc = d1.reshape(1, 32, 32, 16), d2.reshape(1, 32, 32, 16)
    _, parts = stage_loss(out, pair, STAGE_WEIGHTS[1], conf_alpha=0.2, max_matches=64)
    rnd = _perfect_output(pair)
    rnd.view1.desc = torch.nn.functional.normalize(torch.randn(1, 32, 32, 16), dim=-1)
    rnd.view2.desc = torch.nn.functional.normalize(torch.randn(1, 32, 32, 16), dim=-1)
    _, parts_rnd = stage_loss(rnd, pair, STAGE_WEIGHTS[1], conf_alpha=0.2, max_matches=64)
    assert parts["match"] < 0.5 * parts_rnd["match"]
    # conf = 1 and alpha log(1) = 0: the confidence-weighted loss equals the plain one
    assert parts["pts_loc"] < 1e-5
