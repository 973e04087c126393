"""Normals-from-pointmap loss (Eq. 6) on exact planes seen by two cameras with a large relative rotation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tasks.geometry import STAGE_WEIGHTS, stage_loss
from zoo.dens3r import Dens3ROutput, Dens3RView
from zoo.layers.geometry import normals_from_pointmap

H, W, F = 12, 14, 10.0


def _look_at(centre: np.ndarray, target: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Camera-to-world 4x4 (OpenCV axes: x right, y down, z forward) looking from ``centre`` at ``target``."""
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, up)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    T = np.eye(4)
    T[:3, :3] = np.stack([x, y, z], 1)
    T[:3, 3] = centre
    return T


def _view_of_plane(c2w: np.ndarray, n_world: np.ndarray, d: float) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame pointmap of the plane ``n . x = d`` and its camera-facing unit normal in that frame."""
    u, v = np.meshgrid(np.arange(W) + 0.5, np.arange(H) + 0.5)
    rays = np.stack([(u - W / 2) / F, (v - H / 2) / F, np.ones_like(u)], -1)
    R, c = c2w[:3, :3], c2w[:3, 3]
    t = (d - n_world @ c) / (rays @ R.T @ n_world)
    assert (t > 0).all(), "the plane must lie in front of the camera at every pixel"
    pts = rays * t[..., None]
    n_cam = R.T @ n_world
    if (pts @ n_cam).mean() > 0:
        n_cam = -n_cam
    return pts, np.broadcast_to(n_cam, pts.shape).copy()


def _two_view_plane():
    """A thin sheet (two-sided plane) seen from the front by camera 1 and from behind by camera 2 (~160 deg apart):
    each view's normals face its own camera, so in the other camera's frame they point *away* from that origin."""
    n = np.array([0.25, -0.3, -1.0])
    n /= np.linalg.norm(n)  # faces camera 1 (at the origin)
    p0 = np.array([0.1, 0.05, 3.0])
    c2w1 = np.eye(4)
    c2w2 = _look_at(p0 - 3.0 * n + np.array([0.4, 0.0, 0.0]), p0, np.array([0.0, -1.0, 0.2]))
    pts1, n1 = _view_of_plane(c2w1, n, float(n @ p0))
    pts2, n2 = _view_of_plane(c2w2, n, float(n @ p0))
    T21 = np.linalg.inv(c2w1) @ c2w2  # camera 2 -> camera 1
    angle = math.degrees(math.acos(np.clip((np.trace(T21[:3, :3]) - 1) / 2, -1, 1)))
    b = {"pts1": pts1, "pts2": pts2, "normal1": n1, "normal2": n2, "pose2to1": T21,
         "valid1": np.ones((H, W), bool), "valid2": np.ones((H, W), bool)}
    return {k: torch.as_tensor(v)[None].float() if v.dtype != bool else torch.as_tensor(v)[None]
            for k, v in b.items()}, angle


def _exact_output(b: dict[str, torch.Tensor], scale: float = 1.0) -> Dens3ROutput:
    T21 = b["pose2to1"][0]
    T12 = torch.linalg.inv(T21)
    p21 = b["pts2"] @ T21[:3, :3].T + T21[:3, 3]
    p12 = b["pts1"] @ T12[:3, :3].T + T12[:3, 3]
    v1 = Dens3RView(pts3d=b["pts1"] * scale, pts3d_other=p12 * scale)
    v2 = Dens3RView(pts3d=b["pts2"] * scale, pts3d_other=p21 * scale)
    return Dens3ROutput(v1, v2)


@pytest.fixture(scope="module")
def plane():
    return _two_view_plane()


def test_exact_plane_gives_zero_normal_loss_across_a_large_rotation(plane):
    b, angle = plane
    assert angle > 120
    out = _exact_output(b, scale=2.5)
    # the setting that broke the flip-to-origin: view 1's GT normals in camera 2's frame face away from its origin
    T12 = torch.linalg.inv(b["pose2to1"][0])
    n12 = b["normal1"][0] @ T12[:3, :3].T
    assert ((n12 * out.view1.pts3d_other[0]).sum(-1) > 0).all()
    _, parts = stage_loss(out, b, {"pts_loc": 1.0, "pts_glb": 1.0, "pts_normal": 0.1}, conf_alpha=None)
    assert parts["pts_loc"] < 1e-5 and parts["pts_glb"] < 1e-5
    assert parts["pts_normal"] < 1e-4, float(parts["pts_normal"])


def test_normals_orientation_options(plane):
    b, _ = plane
    T12 = torch.linalg.inv(b["pose2to1"][0])
    p12 = b["pts1"] @ T12[:3, :3].T + T12[:3, 3]
    gt = b["normal1"] @ T12[:3, :3].T
    grid, ok = normals_from_pointmap(p12, orient=None)
    towards_cam1, _ = normals_from_pointmap(p12, orient=T12[:3, 3][None])  # camera 1's centre in frame 2
    towards_origin, _ = normals_from_pointmap(p12)
    m = ok[0]
    assert torch.allclose(grid[0][m], gt[0][m], atol=1e-5)
    assert torch.allclose(towards_cam1[0][m], gt[0][m], atol=1e-5)
    assert torch.allclose(towards_origin[0][m], -gt[0][m], atol=1e-5)  # wrong for a cross-view pointmap
    with pytest.raises(ValueError, match="orient"):
        normals_from_pointmap(p12, orient="camera")


def test_pts_normal_is_local_plus_global_term(plane):
    """Eq. 6: L_pts_n = local term + global term, each averaged over the two views -> one wrong local view
    contributes half of its per-view L1 (eta2 = 0.1 then weights the sum, as the spec's objective)."""
    b, _ = plane
    out = _exact_output(b)
    ramp = torch.linspace(0.6, 1.4, W)[None, None, :, None]
    out.view1.pts3d = out.view1.pts3d * ramp  # bends view 1's local pointmap only
    pn, ok = normals_from_pointmap(out.view1.pts3d, orient=None)
    per_view = (pn - b["normal1"]).abs().sum(-1)[ok].mean()
    assert per_view > 0.05
    total, parts = stage_loss(out, b, {"pts_normal": 0.1}, conf_alpha=None)
    assert parts["pts_normal"] == pytest.approx(float(per_view) / 2, rel=1e-4, abs=1e-6)
    assert total == pytest.approx(0.1 * float(per_view) / 2, rel=1e-4)
    assert STAGE_WEIGHTS[1]["pts_normal"] == STAGE_WEIGHTS[2]["pts_normal"] == 0.1
