"""Dens3R inference utilities: pre/post-processing, matching, pose from pointmaps, multi-view alignment.

- :func:`preprocess_image` / :func:`rescale_to_original`: resize the long side to the network size, centre
  crop to patch multiples, and map dense predictions back to the original resolution.
- :func:`fast_reciprocal_nn`: reciprocal nearest neighbours on dense descriptors, started from a sparse grid
  and iterated (the MASt3R "fast NN" idea: only the cycle-consistent matches are kept).
- :func:`procrustes` / :func:`relative_pose_from_pointmaps`: weighted similarity (Umeyama) alignment.
- :func:`make_pairs`, :func:`pairwise_inference`, :func:`global_align`: multi-view inference over image
  pairs (exhaustive or sliding window) and a DUSt3R-style gradient alignment of all pairwise pointmaps into
  one world frame (per-image pose, focal and depth map; per-pair similarity), initialised along a maximum
  spanning tree of pair confidences. No COLMAP needed.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


# ----------------------------------------------------------------------------------- pre/post-process
def preprocess_image(image: np.ndarray | torch.Tensor, size: int = 512, patch_size: int = 16
                     ) -> tuple[torch.Tensor, dict[str, Any]]:
    """uint8/float ``(H, W, 3)`` image -> network input ``(3, H', W')`` in [-1, 1] and the info to undo it.

    The long side is resized to ``size`` (aspect ratio kept), then the image is centre-cropped so both sides are
    multiples of ``patch_size``.
    """
    img = torch.as_tensor(np.asarray(image))
    if img.dtype == torch.uint8:
        img = img.float() / 255.0
    img = img.float().permute(2, 0, 1)[None]
    h, w = img.shape[-2:]
    s = size / max(h, w)
    rh, rw = max(patch_size, round(h * s)), max(patch_size, round(w * s))
    img = F.interpolate(img, size=(rh, rw), mode="bicubic", align_corners=False, antialias=s < 1).clamp(0, 1)
    ch, cw = rh // patch_size * patch_size, rw // patch_size * patch_size
    top, left = (rh - ch) // 2, (rw - cw) // 2
    img = img[..., top:top + ch, left:left + cw]
    info = {"orig_hw": (int(h), int(w)), "resized_hw": (rh, rw), "crop": (top, left, ch, cw)}
    return (img[0] * 2 - 1), info


def rescale_to_original(x: torch.Tensor, info: dict[str, Any], mode: str = "bilinear") -> torch.Tensor:
    """Map a dense prediction ``(H', W', C)`` or ``(H', W')`` from the network grid back to the original image.

    The centre crop is undone by edge replication, then the map is resized to ``orig_hw``. Pointmaps/depths
    keep their metric values (a resize does not change 3D coordinates); renormalise normals/descriptors
    afterwards if unit length matters.
    """
    squeeze = x.dim() == 2
    t = (x[..., None] if squeeze else x).permute(2, 0, 1)[None].float()
    top, left, ch, cw = info["crop"]
    rh, rw = info["resized_hw"]
    t = F.pad(t, (left, rw - cw - left, top, rh - ch - top), mode="replicate")
    kw = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    t = F.interpolate(t, size=tuple(info["orig_hw"]), mode=mode, **kw)[0].permute(1, 2, 0)
    return t[..., 0] if squeeze else t


# ------------------------------------------------------------------------------------------- matching
def _nn(query: torch.Tensor, base: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Index in ``base`` (M, D) of the max-dot-product neighbour of each ``query`` row (N, D)."""
    out = []
    for i in range(0, len(query), chunk):
        out.append((query[i:i + chunk] @ base.T).argmax(1))
    return torch.cat(out) if out else torch.empty(0, dtype=torch.long, device=query.device)


@torch.no_grad()
def fast_reciprocal_nn(desc1: torch.Tensor, desc2: torch.Tensor, subsample: int = 8, max_iter: int = 10,
                       mask1: torch.Tensor | None = None, mask2: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Reciprocal nearest-neighbour matches between dense descriptor maps.

    Start from every ``subsample``-th pixel of image 1; map it to its nearest neighbour in image 2 and back;
    pixels that return to themselves are reciprocal matches; the others restart from where they landed, for up
    to ``max_iter`` rounds (converging towards cycle-consistent points).

    Args:
        desc1: ``(H1, W1, D)`` descriptors (L2-normalised: dot product = similarity).
        desc2: ``(H2, W2, D)``.
        subsample: grid step of the starting points.
        max_iter: refinement rounds.
        mask1: ``(H1, W1)`` pixels allowed to match (e.g. confidence above a threshold).
        mask2: ``(H2, W2)``.

    Returns:
        ``xy1``, ``xy2``: ``(M, 2)`` integer pixel coordinates (x, y) of the matches, unique in image 1.
    """
    h1, w1, d = desc1.shape
    h2, w2, _ = desc2.shape
    f1, f2 = desc1.reshape(-1, d).float(), desc2.reshape(-1, d).float()
    idx1_all = torch.arange(h1 * w1, device=desc1.device)
    idx2_all = torch.arange(h2 * w2, device=desc1.device)
    if mask1 is not None:
        idx1_all = idx1_all[mask1.reshape(-1).bool()]
    if mask2 is not None:
        idx2_all = idx2_all[mask2.reshape(-1).bool()]
    if len(idx1_all) == 0 or len(idx2_all) == 0:
        z = torch.empty(0, 2, dtype=torch.long, device=desc1.device)
        return z, z.clone()
    b1, b2 = f1[idx1_all], f2[idx2_all]
    ys, xs = torch.meshgrid(torch.arange(subsample // 2, h1, subsample, device=desc1.device),
                            torch.arange(subsample // 2, w1, subsample, device=desc1.device), indexing="ij")
    start = (ys * w1 + xs).reshape(-1)
    if mask1 is not None:
        start = start[mask1.reshape(-1).bool()[start]]
    cur = start  # flat pixel indices in image 1
    found1, found2 = [], []
    for _ in range(max_iter):
        if len(cur) == 0:
            break
        to2 = idx2_all[_nn(f1[cur], b2)]
        back = idx1_all[_nn(f2[to2], b1)]
        ok = back == cur
        found1.append(cur[ok])
        found2.append(to2[ok])
        cur = torch.unique(back[~ok])
    if not found1:
        z = torch.empty(0, 2, dtype=torch.long, device=desc1.device)
        return z, z.clone()
    m1, m2 = torch.cat(found1), torch.cat(found2)
    m1, inv = torch.unique(m1, return_inverse=True)
    first = torch.full((len(m1),), -1, dtype=torch.long, device=m1.device)
    first.scatter_(0, inv.flip(0), torch.arange(len(inv), device=m1.device).flip(0))
    m2 = m2[first]
    xy1 = torch.stack([m1 % w1, m1 // w1], -1)
    xy2 = torch.stack([m2 % w2, m2 // w2], -1)
    return xy1, xy2


# ------------------------------------------------------------------------------------- rigid geometry
def procrustes(src: torch.Tensor, dst: torch.Tensor, weights: torch.Tensor | None = None, with_scale: bool = True
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Weighted Umeyama: ``s, R, t`` minimising ``sum w ||s R src + t - dst||^2`` for ``(N, 3)`` point sets."""
    src, dst = src.double(), dst.double()
    w = torch.ones(len(src), dtype=src.dtype, device=src.device) if weights is None else weights.double()
    w = w / w.sum().clamp(min=1e-12)
    mu_s, mu_d = (w[:, None] * src).sum(0), (w[:, None] * dst).sum(0)
    xs, xd = src - mu_s, dst - mu_d
    cov = (w[:, None] * xd).T @ xs
    U, S, Vt = torch.linalg.svd(cov)
    D = torch.eye(3, dtype=src.dtype, device=src.device)
    D[2, 2] = torch.sign(torch.det(U @ Vt)).item() or 1.0
    R = U @ D @ Vt
    var = (w * (xs**2).sum(1)).sum()
    s = (S * D.diagonal()).sum() / var.clamp(min=1e-12) if with_scale else src.new_tensor(1.0)
    t = mu_d - s * R @ mu_s
    return s, R, t


def relative_pose_from_pointmaps(pts_self: torch.Tensor, pts_in_other: torch.Tensor,
                                 conf: torch.Tensor | None = None, mask: torch.Tensor | None = None
                                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pose of a camera in another camera's frame from its pointmap in its own frame (``pts_self``) and in
    the other frame (``pts_in_other``), both ``(H, W, 3)``: returns ``R, t, s`` with ``x_other ~ s R x_self + t``
    (camera-self -> camera-other; ``t`` carries the pointmaps' scale)."""
    a, b = pts_self.reshape(-1, 3), pts_in_other.reshape(-1, 3)
    keep = torch.isfinite(a).all(1) & torch.isfinite(b).all(1)
    if mask is not None:
        keep &= mask.reshape(-1).bool()
    w = conf.reshape(-1)[keep] if conf is not None else None
    s, R, t = procrustes(a[keep], b[keep], w)
    return R.float(), t.float(), s.float()


def estimate_focal(pts: torch.Tensor, pp: tuple[float, float] | None = None, mask: torch.Tensor | None = None
                   ) -> torch.Tensor:
    """Least-squares focal of a camera-frame pointmap ``(H, W, 3)`` whose pixel ``(u, v)`` sees ``pts[v, u]``:
    ``min_f sum (u - cx - f X/Z)^2 + (v - cy - f Y/Z)^2`` (pixel centres at +0.5)."""
    h, w = pts.shape[:2]
    cx, cy = pp if pp is not None else (w / 2, h / 2)
    v, u = torch.meshgrid(torch.arange(h, device=pts.device) + 0.5, torch.arange(w, device=pts.device) + 0.5,
                          indexing="ij")
    z = pts[..., 2]
    keep = z > 1e-6
    if mask is not None:
        keep &= mask.bool()
    x, y = pts[..., 0][keep] / z[keep], pts[..., 1][keep] / z[keep]
    du, dv = u[keep] - cx, v[keep] - cy
    return ((du * x + dv * y).sum() / (x * x + y * y).sum().clamp(min=1e-12)).float()


# --------------------------------------------------------------------------------------- multi-view
def make_pairs(n: int, mode: str = "complete", window: int = 3, symmetric: bool = True) -> list[tuple[int, int]]:
    """Image pairs for multi-view inference: ``'complete'`` (all pairs) or ``'swin'`` (each image with the next
    ``window`` ones, cyclic when ``n > window + 1``). ``symmetric`` adds (j, i) for each (i, j)."""
    if mode == "complete":
        pairs = list(itertools.combinations(range(n), 2))
    elif mode == "swin":
        pairs = sorted({tuple(sorted((i, (i + k) % n))) for i in range(n) for k in range(1, window + 1)
                        if (i + k) % n != i and (i + k < n or n > window + 1)})
    else:
        raise ValueError(f"unknown pair mode {mode!r}")
    return pairs + [(j, i) for i, j in pairs] if symmetric else pairs


@torch.no_grad()
def pairwise_inference(model: nn.Module, images: list[torch.Tensor], pairs: list[tuple[int, int]],
                       batch_size: int = 4) -> dict[tuple[int, int], dict[str, torch.Tensor]]:
    """Run the pair network on each ``(i, j)``: ``pts_i``/``pts_j`` = images i and j in camera i's frame,
    ``conf_i``/``conf_j`` their confidences (``(H, W, ...)`` each; images of one pair share a size)."""
    out: dict[tuple[int, int], dict[str, torch.Tensor]] = {}
    dev = next(model.parameters()).device
    for k in range(0, len(pairs), batch_size):
        chunk = pairs[k:k + batch_size]
        same = len({tuple(images[i].shape) for p in chunk for i in p}) == 1
        groups = [chunk] if same else [[p] for p in chunk]
        for g in groups:
            x1 = torch.stack([images[i] for i, _ in g]).to(dev)
            x2 = torch.stack([images[j] for _, j in g]).to(dev)
            pred = model(x1, x2)
            for b, (i, j) in enumerate(g):
                v1, v2 = pred.view1, pred.view2
                ones = torch.ones_like(v1.pts3d[b, ..., 0])
                out[(i, j)] = {
                    "pts_i": v1.pts3d[b].float().cpu(), "pts_j": v2.pts3d_other[b].float().cpu(),
                    "conf_i": (v1.conf[b] if v1.conf is not None else ones).float().cpu(),
                    "conf_j": (v2.conf_other[b] if v2.conf_other is not None else ones).float().cpu(),
                }
    return out


def _quat_to_rot(q: torch.Tensor) -> torch.Tensor:
    q = F.normalize(q, dim=-1)
    w, x, y, z = q.unbind(-1)
    return torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    ], -1).reshape(q.shape[:-1] + (3, 3))


def _rot_to_quat(R: torch.Tensor) -> torch.Tensor:
    from scipy.spatial.transform import Rotation

    xyzw = Rotation.from_matrix(R.detach().double().cpu().numpy()).as_quat()
    return torch.as_tensor(xyzw[..., [3, 0, 1, 2]], dtype=torch.float32)


@dataclass
class GlobalAlignment:
    """Result of :func:`global_align` (world frame = camera 0 of the spanning-tree root, scale arbitrary).

    Attributes:
        cam2world: ``(N, 4, 4)`` camera-to-world poses.
        focals: ``(N,)`` focal lengths in pixels.
        depths: ``(N, H, W)`` depth maps.
        pts3d: ``(N, H, W, 3)`` world pointmaps.
        loss: final alignment loss.
    """

    cam2world: torch.Tensor
    focals: torch.Tensor
    depths: torch.Tensor
    pts3d: torch.Tensor
    loss: float


def _backproject(depth: torch.Tensor, focal: torch.Tensor, pp: torch.Tensor) -> torch.Tensor:
    n, h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h, device=depth.device) + 0.5, torch.arange(w, device=depth.device) + 0.5,
                          indexing="ij")
    x = (u[None] - pp[:, 0, None, None]) / focal[:, None, None]
    y = (v[None] - pp[:, 1, None, None]) / focal[:, None, None]
    return torch.stack([x, y, torch.ones_like(x)], -1) * depth[..., None]


def global_align(preds: dict[tuple[int, int], dict[str, torch.Tensor]], n_images: int, niter: int = 300,
                 lr: float = 0.01, focals: torch.Tensor | list[float] | None = None, optimize_focal: bool = True,
                 min_conf: float = 0.0) -> GlobalAlignment:
    """Align pairwise pointmaps into one world frame (DUSt3R-style global alignment, own implementation).

    Unknowns: per image a camera-to-world pose (quaternion + translation), a log-depth map and a log focal;
    per pair ``e = (i, j)`` a similarity (log scale, quaternion, translation). Minimised with Adam:
    ``sum_e sum_{v in e} mean(conf_v^e * || X_v^world - s_e (R_e X_v^e + t_e) ||)``, with the mean log pair
    scale pinned to 0 (removes the global scale freedom). Initialisation: a maximum spanning tree over
    pairs scored by mean confidence, chaining Procrustes alignments; camera poses from each image's own-frame
    pointmap (needs, for every image, a pair in which it is the first view; symmetric pairs guarantee it).

    Args:
        preds: :func:`pairwise_inference` output (all maps of one image share its ``(H, W)``; one size overall).
        n_images: number of images.
        niter: Adam iterations (0 = the spanning-tree initialisation only).
        lr: Adam learning rate.
        focals: known focal lengths (pixels) per image; estimated from the pointmaps when None.
        optimize_focal: refine focals in the optimisation.
        min_conf: confidences below this get zero weight.
    """
    edges = list(preds)
    h, w = next(iter(preds.values()))["pts_i"].shape[:2]
    dev = next(iter(preds.values()))["pts_i"].device
    own = {}  # image -> (pts in own frame, conf) from a pair where it is the first view (best confidence)
    for (i, j), p in preds.items():
        if i not in own or p["conf_i"].mean() > own[i][1].mean():
            own[i] = (p["pts_i"], p["conf_i"])
    missing = [v for v in range(n_images) if v not in own]
    if missing:
        raise ValueError(f"images {missing} are never the first view of a pair; use symmetric pairs")

    # --- maximum spanning tree (Prim) over undirected pair scores
    score: dict[tuple[int, int], float] = {}
    for (i, j), p in preds.items():
        key = (min(i, j), max(i, j))
        score[key] = max(score.get(key, 0.0), float(p["conf_i"].mean() * p["conf_j"].mean()))
    world: dict[int, torch.Tensor] = {}
    best_edge = max(score, key=score.get)  # type: ignore[arg-type]
    e0 = best_edge if best_edge in preds else best_edge[::-1]
    world[e0[0]], world[e0[1]] = preds[e0]["pts_i"].clone(), preds[e0]["pts_j"].clone()
    while len(world) < n_images:
        cands = [(s, k) for k, s in score.items() if (k[0] in world) != (k[1] in world)]
        if not cands:
            raise ValueError("the pair graph is not connected")
        _, (a, b) = max(cands)
        known, new = (a, b) if a in world else (b, a)
        e = (known, new) if (known, new) in preds else (new, known)
        p = preds[e]
        pk, pn = (p["pts_i"], p["pts_j"]) if e[0] == known else (p["pts_j"], p["pts_i"])
        ck = p["conf_i"] if e[0] == known else p["conf_j"]
        s, R, t = procrustes(pk.reshape(-1, 3), world[known].reshape(-1, 3), ck.reshape(-1))
        world[new] = (s * pn.reshape(-1, 3).double() @ R.T + t).float().reshape(h, w, 3)

    # --- per-image camera init: similarity from own-frame pointmap to its world pointmap
    pp = torch.tensor([[w / 2, h / 2]] * n_images, device=dev)
    if focals is None:
        f0 = torch.stack([estimate_focal(own[v][0]) for v in range(n_images)])
    else:
        f0 = torch.as_tensor(focals, dtype=torch.float32, device=dev)
    # a degenerate pointmap (e.g. an untrained network) gives no usable focal: fall back to a 60-degree FOV
    f0 = torch.where(torch.isfinite(f0) & (f0 > 0), f0, torch.full_like(f0, 0.5 * w / np.tan(np.radians(30))))
    quats, trans, logd = [], [], []
    for v in range(n_images):
        s, R, t = procrustes(own[v][0].reshape(-1, 3), world[v].reshape(-1, 3), own[v][1].reshape(-1))
        quats.append(_rot_to_quat(R))
        trans.append(t.float())
        logd.append(torch.log((own[v][0][..., 2] * s).clamp(min=1e-6)).float())
    # --- per-edge similarity init
    e_logs, e_quat, e_t = [], [], []
    for e in edges:
        i, j = e
        src = torch.cat([preds[e]["pts_i"].reshape(-1, 3), preds[e]["pts_j"].reshape(-1, 3)])
        dst = torch.cat([world[i].reshape(-1, 3), world[j].reshape(-1, 3)])
        s, R, t = procrustes(src, dst)
        e_logs.append(torch.log(s).float())
        e_quat.append(_rot_to_quat(R))
        e_t.append((t / s).float())  # stored so that world = s * (R x + t')

    q_img = nn.Parameter(torch.stack(quats).to(dev))
    t_img = nn.Parameter(torch.stack(trans))
    log_depth = nn.Parameter(torch.stack(logd))
    log_f = nn.Parameter(torch.log(f0.float()))
    log_s = nn.Parameter(torch.stack(e_logs))
    q_e = nn.Parameter(torch.stack(e_quat).to(dev))
    t_e = nn.Parameter(torch.stack(e_t))
    ls_offset = log_s.detach().mean()
    params = [q_img, t_img, log_depth, q_e, t_e, log_s] + ([log_f] if optimize_focal else [])
    X_i = torch.stack([preds[e]["pts_i"] for e in edges])
    X_j = torch.stack([preds[e]["pts_j"] for e in edges])
    w_i = torch.stack([preds[e]["conf_i"] for e in edges])
    w_j = torch.stack([preds[e]["conf_j"] for e in edges])
    w_i, w_j = w_i * (w_i >= min_conf), w_j * (w_j >= min_conf)
    ei = torch.tensor([e[0] for e in edges], device=dev)
    ej = torch.tensor([e[1] for e in edges], device=dev)

    def world_points() -> torch.Tensor:
        cam = _backproject(log_depth.exp(), log_f.exp(), pp)
        R = _quat_to_rot(q_img)
        return torch.einsum("nij,nhwj->nhwi", R, cam) + t_img[:, None, None]

    def loss_fn() -> torch.Tensor:
        pts = world_points()
        R = _quat_to_rot(q_e)
        s = (log_s - log_s.mean() + ls_offset).exp()[:, None, None, None]
        ai = s * (torch.einsum("nij,nhwj->nhwi", R, X_i) + t_e[:, None, None])
        aj = s * (torch.einsum("nij,nhwj->nhwi", R, X_j) + t_e[:, None, None])
        li = (w_i * (pts[ei] - ai).norm(dim=-1)).mean()
        lj = (w_j * (pts[ej] - aj).norm(dim=-1)).mean()
        return li + lj

    if niter > 0:
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, niter, eta_min=lr * 0.01)
        for _ in range(niter):
            opt.zero_grad()
            loss = loss_fn()
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        loss = float(loss_fn())
        c2w = torch.eye(4, device=dev).repeat(n_images, 1, 1)
        c2w[:, :3, :3] = _quat_to_rot(q_img)
        c2w[:, :3, 3] = t_img
        return GlobalAlignment(c2w, log_f.exp(), log_depth.exp(), world_points(), loss)
