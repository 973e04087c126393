"""Pointmap geometry shared by the geometry datamodules (normals of ground-truth depth) and the Dens3R task's
losses: it sits below both so that neither imports the other."""
from __future__ import annotations

import torch

__all__ = ["normals_from_pointmap"]


def normals_from_pointmap(pts: torch.Tensor, valid: torch.Tensor | None = None,
                          orient: str | torch.Tensor | None = "origin") -> tuple[torch.Tensor, torch.Tensor]:
    """Unit normals of a pointmap ``(B, H, W, 3)`` laid out on its capturing camera's pixel grid (OpenCV axes),
    from central differences; returns ``(normals, valid)`` (border pixels and invalid neighbours False).

    The cross product ``d/dy x d/dx`` of the pixel-grid tangents already faces the *capturing* camera for every
    surface that camera sees, and a rigid transform rotates it with the points, so it stays correct when the
    pointmap is expressed in another camera's frame (the global pointmaps of Eq. 6). ``orient`` only matters for
    surfaces seen from behind (noise, wrong predictions):

    - ``"origin"``: flip normals to face the frame's origin (right for a camera-frame pointmap of that camera,
      e.g. normals derived from GT depth);
    - a ``(B, 3)`` tensor: flip to face that point (the capturing camera's centre in the pointmap's frame);
    - ``None``: no flip (the grid orientation; used by the losses, as the released ABSNormalFromDepthLoss).
    """
    dx = torch.zeros_like(pts)
    dy = torch.zeros_like(pts)
    dx[:, :, 1:-1] = pts[:, :, 2:] - pts[:, :, :-2]
    dy[:, 1:-1] = pts[:, 2:] - pts[:, :-2]
    n = torch.cross(dy, dx, dim=-1)  # x right, y down: dy x dx points towards the camera (-z) on a frontal plane
    if orient is not None:
        if isinstance(orient, str) and orient != "origin":
            raise ValueError(f"orient must be 'origin', a (B, 3) camera centre or None, got {orient!r}")
        rel = pts if isinstance(orient, str) else pts - orient.to(pts)[:, None, None, :]
        n = torch.where((n * rel).sum(-1, keepdim=True) > 0, -n, n)
    norm = n.norm(dim=-1, keepdim=True)
    ok = torch.zeros(pts.shape[:-1], dtype=torch.bool, device=pts.device)
    ok[:, 1:-1, 1:-1] = True
    ok &= norm[..., 0] > 1e-12
    if valid is not None:
        v = valid.bool()
        nb = torch.zeros_like(v)
        nb[:, 1:-1, 1:-1] = v[:, 1:-1, 2:] & v[:, 1:-1, :-2] & v[:, 2:, 1:-1] & v[:, :-2, 1:-1] & v[:, 1:-1, 1:-1]
        ok &= nb
    return n / norm.clamp(min=1e-12), ok
