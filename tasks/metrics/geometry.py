"""Geometry metrics: depth (after least-squares alignment), surface-normal angles, relative-pose AUC.

Protocols follow the Dens3R evaluation scripts (spec ``papers/dens3r.md``): depth is clipped to
``[min_depth, max_depth]``, aligned per image by least-squares scale-and-shift on the valid pixels, clipped
again, then AbsRel / delta thresholds / RMSE are computed per image and averaged over images; normals use
the angle between unit vectors (mean, median, RMSE, % under 11.25 / 22.5 / 30 degrees); pose AUC integrates
the recall-vs-error curve up to each threshold (the SuperGlue/LoFTR ``error_auc`` definition).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

#: NYUv2 labelled-frame borders (top, bottom, left, right) in pixels at 480x640 cut by the Dens3R eval script
NYU_BORDER = (9, 9, 12, 12)
#: the Eigen et al. evaluation crop at 480x640 (rows 45:471, cols 41:601)
EIGEN_CROP = (45, 480 - 471, 41, 640 - 601)


def border_mask(h: int, w: int, crop: str | Sequence[int] | None, ref_hw: tuple[int, int] = (480, 640),
                device: torch.device | str | None = None) -> torch.Tensor:
    """Boolean ``(h, w)`` mask that removes a border. ``crop``: ``'nyu_border'``, ``'eigen'``, ``None`` or explicit
    ``(top, bottom, left, right)`` pixels at ``ref_hw`` (scaled to ``(h, w)``)."""
    m = torch.ones(h, w, dtype=torch.bool, device=device)
    if crop is None:
        return m
    t, b, l, r = {"nyu_border": NYU_BORDER, "eigen": EIGEN_CROP}[crop] if isinstance(crop, str) else crop
    sy, sx = h / ref_hw[0], w / ref_hw[1]
    t, b, l, r = round(t * sy), round(b * sy), round(l * sx), round(r * sx)
    m[:t] = False
    m[h - b:] = False
    m[:, :l] = False
    m[:, w - r:] = False
    return m


def align_scale_shift(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image least squares ``min_{s,t} sum_mask (s * pred + t - gt)^2`` for ``(B, H, W)`` maps; closed form
    of the 2x2 normal equations (degenerate images get ``s = 1, t = 0``)."""
    m = mask.to(pred.dtype)
    a00 = (m * pred * pred).sum((-2, -1))
    a01 = (m * pred).sum((-2, -1))
    a11 = m.sum((-2, -1))
    b0 = (m * pred * gt).sum((-2, -1))
    b1 = (m * gt).sum((-2, -1))
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.ones_like(det))
    shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
    return scale, shift


def align_scale(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-image least-squares scale ``min_s sum_mask (s * pred - gt)^2``."""
    m = mask.to(pred.dtype)
    return (m * pred * gt).sum((-2, -1)) / (m * pred * pred).sum((-2, -1)).clamp(min=1e-12)


def _clip_depth(d: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    d = torch.nan_to_num(d, nan=lo, posinf=hi, neginf=lo)
    return d.clamp(lo, hi)


def depth_metrics(
    pred: torch.Tensor,
    gt: torch.Tensor,
    mask: torch.Tensor | None = None,
    align: str | None = "scale_shift",
    min_depth: float = 1e-3,
    max_depth: float = 20.0,
    crop: str | Sequence[int] | None = None,
    reduction: str = "mean",
) -> dict[str, torch.Tensor]:
    """Depth errors of ``pred`` vs ``gt`` (``(B, H, W)`` or ``(H, W)``).

    Args:
        pred: predicted depth.
        gt: ground-truth depth (values outside ``(min_depth, max_depth)`` are invalid).
        mask: extra validity mask.
        align: ``'scale_shift'`` (Dens3R eval), ``'scale'``, ``'median'`` or ``None``.
        min_depth: lower clip / validity bound.
        max_depth: upper clip / validity bound.
        crop: border crop (:func:`border_mask`), e.g. ``'nyu_border'``.
        reduction: ``'mean'`` over images, or ``'none'`` for per-image values.

    Returns:
        ``abs_rel``, ``delta1``, ``delta2``, ``delta3`` (fractions), ``rmse``.
    """
    if pred.dim() == 2:
        pred, gt = pred[None], gt[None]
        mask = None if mask is None else mask[None]
    pred, gt = pred.double(), gt.double()
    valid = (gt > min_depth) & (gt < max_depth) & torch.isfinite(gt)
    if mask is not None:
        valid &= mask.bool()
    if crop is not None:
        valid &= border_mask(*gt.shape[-2:], crop, device=gt.device)
    pred = _clip_depth(pred, min_depth, max_depth)
    if align == "scale_shift":
        s, t = align_scale_shift(pred, gt, valid)
        pred = pred * s[:, None, None] + t[:, None, None]
    elif align == "scale":
        pred = pred * align_scale(pred, gt, valid)[:, None, None]
    elif align == "median":
        ratios = [gt[i][valid[i]].median() / pred[i][valid[i]].median().clamp(min=1e-12) if valid[i].any()
                  else gt.new_tensor(1.0) for i in range(len(gt))]
        pred = pred * torch.stack(ratios)[:, None, None]
    elif align is not None:
        raise ValueError(f"unknown align {align!r}")
    pred = _clip_depth(pred, min_depth, max_depth)
    n = valid.sum((-2, -1)).clamp(min=1)
    vf = valid.double()
    ratio = torch.maximum(gt / pred, pred / gt)
    out = {
        "abs_rel": (vf * (gt - pred).abs() / gt.clamp(min=min_depth)).sum((-2, -1)) / n,
        "delta1": (vf * (ratio < 1.25)).sum((-2, -1)) / n,
        "delta2": (vf * (ratio < 1.25**2)).sum((-2, -1)) / n,
        "delta3": (vf * (ratio < 1.25**3)).sum((-2, -1)) / n,
        "rmse": ((vf * (gt - pred) ** 2).sum((-2, -1)) / n).sqrt(),
    }
    has = valid.flatten(1).any(1)
    if reduction == "none":
        return {k: torch.where(has, v, torch.full_like(v, float("nan"))).float() for k, v in out.items()}
    return {k: v[has].mean().float() if has.any() else v.new_tensor(float("nan")).float() for k, v in out.items()}


def angular_error(pred: torch.Tensor, gt: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Angle in degrees between (not necessarily unit) vectors along ``dim``."""
    p = torch.nn.functional.normalize(pred.double(), dim=dim)
    g = torch.nn.functional.normalize(gt.double(), dim=dim)
    return torch.rad2deg(torch.arccos((p * g).sum(dim).clamp(-1.0, 1.0)))


def normal_metrics(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor | None = None,
                   channels_last: bool = False) -> dict[str, torch.Tensor]:
    """Surface-normal angular errors over all valid pixels (pooled, as the DSINE benchmark does).

    Args:
        pred: ``(B, 3, H, W)`` or ``(N, 3)`` (``channels_last=True``: ``(B, H, W, 3)``).
        gt: same shape; all-zero GT vectors are invalid.
        mask: ``(B, H, W)`` / ``(N,)`` validity.
        channels_last: the vector axis is the last one.

    Returns:
        ``mean``, ``median``, ``rmse`` (degrees) and ``pct_11_25``, ``pct_22_5``, ``pct_30`` (percent).
    """
    dim = -1 if channels_last or pred.dim() == 2 else 1
    err = angular_error(pred, gt, dim)
    valid = gt.norm(dim=dim) > 1e-6
    if mask is not None:
        valid &= mask.bool()
    e = err[valid]
    if e.numel() == 0:
        nan = pred.new_tensor(float("nan"))
        return dict.fromkeys(("mean", "median", "rmse", "pct_11_25", "pct_22_5", "pct_30"), nan)
    srt = e.sort().values
    n = srt.numel()
    return {
        "mean": e.mean().float(), "median": ((srt[(n - 1) // 2] + srt[n // 2]) / 2).float(),
        "rmse": e.pow(2).mean().sqrt().float(),
        "pct_11_25": (e < 11.25).double().mean().mul(100).float(),
        "pct_22_5": (e < 22.5).double().mean().mul(100).float(),
        "pct_30": (e < 30.0).double().mean().mul(100).float(),
    }


def rotation_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation angle in degrees of ``(..., 3, 3)`` rotation matrices."""
    tr = R.diagonal(dim1=-2, dim2=-1).sum(-1)
    return torch.rad2deg(torch.arccos(((tr - 1) / 2).clamp(-1.0, 1.0)))


def relative_pose_error(R_pred: torch.Tensor, t_pred: torch.Tensor, R_gt: torch.Tensor, t_gt: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation error and translation *direction* error (degrees; translation sign ambiguity folded, as in
    SuperGlue/LoFTR evaluation). Shapes ``(..., 3, 3)`` and ``(..., 3)``."""
    r_err = rotation_angle(R_pred.double().transpose(-1, -2) @ R_gt.double())
    t_err = angular_error(t_pred, t_gt)
    t_err = torch.minimum(t_err, 180.0 - t_err)
    return r_err.float(), t_err.float()


def pose_auc(errors: Sequence[float] | np.ndarray | torch.Tensor, thresholds: Sequence[float] = (5, 10, 20)
             ) -> dict[str, float]:
    """Area under the recall-vs-pose-error curve up to each threshold, normalised to [0, 1].

    The curve goes through (0, 0) and (e_i, i / N) for the sorted errors e_i (linear in between), and is
    integrated by the trapezoidal rule up to the threshold (SuperGlue/LoFTR ``error_auc``).
    """
    e = np.sort(np.asarray(torch.as_tensor(errors).double().cpu().numpy() if not isinstance(errors, np.ndarray)
                           else errors, dtype=np.float64))
    n = len(e)
    recall = np.arange(1, n + 1) / max(n, 1)
    e = np.concatenate([[0.0], e])
    recall = np.concatenate([[0.0], recall])
    out = {}
    for th in thresholds:
        k = np.searchsorted(e, th)
        xs = np.concatenate([e[:k], [th]])
        ys = np.concatenate([recall[:k], [recall[k - 1]]])
        out[f"auc@{th:g}"] = float(np.sum((xs[1:] - xs[:-1]) * (ys[1:] + ys[:-1]) / 2) / th)
    return out
