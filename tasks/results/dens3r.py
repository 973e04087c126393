"""Dens3R results recipe (issue 16): stage-1 Dens3R beside classical depth and pose baselines on held-out pairs.

    python -m tasks.results.dens3r --config configs/dens3r/results_cpu.yaml     (CPU, minutes)
    python -m tasks.results.dens3r --config configs/dens3r/results.yaml         (one H200, < 8 min)

Data (what is real, what is synthetic): no geometry dataset with ground truth can be downloaded here.
- Training and the main test set are SYNTHETIC: ray-cast rooms with exact depth and poses
  (``datamodules.geometry.SyntheticGeometryDataModule``), textured with real photographs. Split rule: test scenes use
  other seeds (2,000,000 + i vs i) AND other texture photographs (``heldout_textures``, disjoint from
  ``train_textures``) than training; pinned by tests/test_results_dens3r.py.
- One REAL pair with real ground truth: the Middlebury 2014 "motorcycle" stereo pair scikit-image ships (rectified,
  ground-truth disparity and calibration), depth = f B / (d + doffs); its relative pose is a pure translation along x.

Compared on the same pairs and the same metrics (``tasks.metrics.geometry``):
- depth (view 1; AbsRel, delta < 1.25): ours (pointmap z, per-image median scaling, and the paper's least-squares
  scale-and-shift), the per-image median-scaled constant (= predicting a flat plane at the GT median), and the training
  set's median depth as a constant (no alignment);
- relative pose (AUC@5/10/20 of max(rotation error, translation-direction error), SuperGlue/LoFTR protocol; a pair
  whose estimation fails counts as 180 degrees): ours by Procrustes on the two pointmaps (the task's validation path),
  ours by its matching descriptors (reciprocal nearest neighbours) + ``cv2.findEssentialMat`` / ``cv2.recoverPose``,
  and OpenCV ORB and SIFT features + the same essential-matrix solver, all with the ground-truth intrinsics.

Outputs in ``--out``: ``results.json``, ``results.md``, ``depth.png`` (image, GT, ours, median constant for held-out
pairs and the real pair) and ``pose_cdf.png``.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from datamodules.geometry import SyntheticGeometryDataModule, SyntheticPairs
from tasks.geometry import GeometryTask
from tasks.geometry_inference import fast_reciprocal_nn, relative_pose_from_pointmaps
from tasks.metrics.geometry import depth_metrics, pose_auc, relative_pose_error
from tasks.results._report import checkout_commit, load_config, markdown_table, stamp, write_json

__all__ = ["essential_pose", "opencv_pose", "median_depth_baselines", "stereo_motorcycle_pair", "check_split", "run",
           "main"]

#: pose error given to a pair whose estimation fails (too few matches / no essential matrix)
FAILED = 180.0


# ---------------------------------------------------------------------------------------------- pose baselines
def _normalise(xy: np.ndarray, K: np.ndarray) -> np.ndarray:
    return (xy - K[:2, 2]) / np.array([K[0, 0], K[1, 1]])


def essential_pose(xy1: np.ndarray, xy2: np.ndarray, K1: np.ndarray, K2: np.ndarray, px_thresh: float = 1.0,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray] | None:
    """Pose of camera 2 in camera 1 (``x1 = R x2 + t``, t unit) from pixel matches, by ``cv2.findEssentialMat``
    (RANSAC, 0.999) + ``cv2.recoverPose`` on intrinsics-normalised points; None when it fails (< 5 distinct
    matches, or OpenCV finds no solution)."""
    import cv2

    if len(xy1) < 5:
        return None
    pairs = np.unique(np.concatenate([np.asarray(xy1, np.float64), np.asarray(xy2, np.float64)], 1), axis=0)
    if len(pairs) < 5:  # repeated points: OpenCV's answer to this differs by version (an error, or an arbitrary pose)
        return None
    cv2.setRNGSeed(seed)
    n1 = _normalise(np.asarray(xy1, np.float64), K1)
    n2 = _normalise(np.asarray(xy2, np.float64), K2)
    f = (K1[0, 0] + K1[1, 1] + K2[0, 0] + K2[1, 1]) / 4
    # points of image 2 first: recoverPose's (R, t) then maps camera-2 coordinates to camera 1, like pose2to1
    try:
        E, inl = cv2.findEssentialMat(n2, n1, np.eye(3), method=cv2.RANSAC, prob=0.999, threshold=px_thresh / f)
        if E is None or E.shape[0] < 3:
            return None
        # several stacked solutions: recoverPose picks by the cheirality count on the first (as LoFTR's eval does)
        _, R, t, _ = cv2.recoverPose(E[:3], n2, n1, np.eye(3), mask=inl)
    except cv2.error:  # degenerate matches (e.g. all on a line / repeated points): the estimation fails
        return None
    return R, t[:, 0]


def _to_uint8(img: np.ndarray) -> np.ndarray:
    """(3, H, W) in [-1, 1] -> (H, W) uint8 grey."""
    g = ((np.asarray(img).transpose(1, 2, 0) + 1) * 127.5).clip(0, 255).astype(np.uint8)
    return g.mean(-1).astype(np.uint8)


def opencv_matches(img1: np.ndarray, img2: np.ndarray, method: str = "sift", upscale: int = 1
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Pixel matches (x, y) of two (3, H, W) [-1, 1] images: SIFT (ratio test 0.8) or ORB (Hamming, cross-check).
    ``upscale`` resizes the images first (keypoints are mapped back)."""
    import cv2

    a, b = _to_uint8(img1), _to_uint8(img2)
    if upscale > 1:
        a = cv2.resize(a, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
        b = cv2.resize(b, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)
    if method == "sift":
        det = cv2.SIFT_create()
        k1, d1 = det.detectAndCompute(a, None)
        k2, d2 = det.detectAndCompute(b, None)
        if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
            return np.zeros((0, 2)), np.zeros((0, 2))
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
        good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.8 * n.distance]
    elif method == "orb":
        det = cv2.ORB_create(nfeatures=2000, edgeThreshold=8, patchSize=15, fastThreshold=5)
        k1, d1 = det.detectAndCompute(a, None)
        k2, d2 = det.detectAndCompute(b, None)
        if d1 is None or d2 is None:
            return np.zeros((0, 2)), np.zeros((0, 2))
        good = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(d1, d2)
    else:
        raise ValueError(f"unknown method {method!r}")
    p1 = np.array([k1[m.queryIdx].pt for m in good]).reshape(-1, 2)
    p2 = np.array([k2[m.trainIdx].pt for m in good]).reshape(-1, 2)
    # cv2 keypoints: pixel centres at integer coordinates; ours at +0.5 (render's u = j + 0.5)
    return (p1 + 0.5) / upscale, (p2 + 0.5) / upscale


def opencv_pose(img1: np.ndarray, img2: np.ndarray, K1: np.ndarray, K2: np.ndarray, method: str = "sift",
                upscale: int = 1) -> tuple[np.ndarray, np.ndarray] | None:
    """The classical baseline: OpenCV features + essential matrix (camera 2 in camera 1), None on failure."""
    xy1, xy2 = opencv_matches(img1, img2, method, upscale)
    return essential_pose(xy1, xy2, K1, K2)


def pose_error(pose: tuple[np.ndarray, np.ndarray] | None, T_gt: np.ndarray) -> float:
    """max(rotation error, translation-direction error) in degrees; :data:`FAILED` for a failed estimate."""
    if pose is None:
        return FAILED
    R, t = (torch.as_tensor(np.asarray(x), dtype=torch.float64) for x in pose)
    T = torch.as_tensor(np.asarray(T_gt), dtype=torch.float64)
    re, te = relative_pose_error(R, t, T[:3, :3], T[:3, 3])
    return float(torch.maximum(re, te))


# --------------------------------------------------------------------------------------------- depth baselines
def median_depth_baselines(gt: torch.Tensor, valid: torch.Tensor, train_median: float) -> dict[str, dict[str, float]]:
    """Depth metrics (mean over images) of the two constant baselines on ``(B, H, W)`` GT depth:
    ``median_scaled_constant`` (a constant scaled per image to the GT median) and ``train_median`` (the training set's
    median depth everywhere, no alignment)."""
    const = torch.ones_like(gt)
    a = depth_metrics(const, gt, valid, align="median")
    b = depth_metrics(const * train_median, gt, valid, align=None)
    return {"median_scaled_constant": {k: float(v) for k, v in a.items()},
            "train_median": {k: float(v) for k, v in b.items()}}


# ------------------------------------------------------------------------------------------------ the real pair
def stereo_motorcycle_pair(width: int = 96) -> dict[str, np.ndarray]:
    """The Middlebury 2014 motorcycle pair shipped by scikit-image, resized to ``width`` (height a multiple of 16):
    images (3, H, W) in [-1, 1], GT depth (f B / (disparity + doffs), metres) and validity of view 1, both
    intrinsics, and the GT pose (camera 2 = right, at +x of camera 1 = left)."""
    import cv2
    import skimage.data

    left, right, disp = skimage.data.stereo_motorcycle()
    h0, w0 = left.shape[:2]
    f, cx, cy, doffs, base = 994.978, 311.193, 254.877, 31.086, 0.193001  # the calibration in skimage's docstring
    depth = f * base / (disp.astype(np.float64) + doffs)
    valid0 = np.isfinite(disp) & (disp > 0)
    h = max(16, int(round(h0 * width / w0 / 16)) * 16)
    sx, sy = width / w0, h / h0
    img = [cv2.resize(x, (width, h), interpolation=cv2.INTER_AREA).astype(np.float32).transpose(2, 0, 1) / 127.5 - 1
           for x in (left, right)]
    d = cv2.resize(np.where(valid0, depth, 0).astype(np.float32), (width, h), interpolation=cv2.INTER_NEAREST)
    v = cv2.resize(valid0.astype(np.uint8), (width, h), interpolation=cv2.INTER_NEAREST).astype(bool) & (d > 0)
    K1 = np.array([[f * sx, 0, cx * sx], [0, f * sy, cy * sy], [0, 0, 1]])
    K2 = K1.copy()
    K2[0, 2] = (cx + doffs) * sx
    T = np.eye(4)
    T[0, 3] = base
    return {"img1": img[0], "img2": img[1], "depth1": d, "valid1": v, "K1": K1, "K2": K2, "pose2to1": T}


# ----------------------------------------------------------------------------------------------------- split
def check_split(data: dict[str, Any]) -> dict[str, Any]:
    """The split rule: training and test scenes share no seed and no texture photograph. Returns the seed ranges."""
    seed, n_train, n_test = int(data.get("seed", 0)), int(data["num_train"]), int(data["num_test"])
    train_seeds, test_seeds = range(seed, seed + n_train), range(seed + 2_000_000, seed + 2_000_000 + n_test)
    if set(train_seeds) & set(test_seeds):
        raise ValueError("training and test scenes share seeds")
    tr, te = set(data.get("train_textures") or []), set(data.get("heldout_textures") or [])
    if not tr or not te or tr & te:
        raise ValueError(f"train_textures and heldout_textures must be given and disjoint (shared: {sorted(tr & te)})")
    return {"train_seeds": [train_seeds.start, train_seeds.stop], "test_seeds": [test_seeds.start, test_seeds.stop],
            "train_textures": sorted(tr), "heldout_textures": sorted(te)}


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def _predict(net: torch.nn.Module, s: dict[str, np.ndarray], device: torch.device) -> Any:
    img1 = torch.as_tensor(s["img1"])[None].to(device)
    img2 = torch.as_tensor(s["img2"])[None].to(device)
    return net(img1, img2, heads="all")


def _ours_pose(out: Any, s: dict[str, np.ndarray], conf_thr: float) -> tuple[tuple | None, tuple | None]:
    """Ours: Procrustes on the pointmaps, and descriptor matches + essential matrix."""
    v2 = out.view2
    R, t, _ = relative_pose_from_pointmaps(v2.pts3d[0].float().cpu(), v2.pts3d_other[0].float().cpu(),
                                           v2.conf[0].float().cpu() if v2.conf is not None else None)
    proc = (R.double().numpy(), t.double().numpy())
    ess = None
    if out.view1.desc is not None:
        d1, d2 = out.view1.desc[0].float().cpu(), out.view2.desc[0].float().cpu()
        m1 = out.view1.conf[0].cpu() > conf_thr if out.view1.conf is not None else None
        m2 = out.view2.conf[0].cpu() > conf_thr if out.view2.conf is not None else None
        xy1, xy2 = fast_reciprocal_nn(d1, d2, subsample=2, mask1=m1, mask2=m2)
        ess = essential_pose(xy1.numpy() + 0.5, xy2.numpy() + 0.5, s["K1"], s["K2"])
    return proc, ess


def evaluate(net: torch.nn.Module, pairs: list[dict[str, np.ndarray]], train_median: float, device: torch.device,
             cfg: dict[str, Any]) -> dict[str, Any]:
    """Every method's depth and pose metrics on ``pairs``; returns rows and the per-pair pose errors."""
    ev = cfg.get("eval", {})
    errs: dict[str, list[float]] = {k: [] for k in ("ours_procrustes", "ours_matches", "opencv_sift", "opencv_orb")}
    preds, gts, valids = [], [], []
    for s in pairs:
        out = _predict(net, s, device)
        preds.append(out.depth[0].float().cpu())
        gts.append(torch.as_tensor(s["depth1"]).float())
        valids.append(torch.as_tensor(s["valid1"]).bool())
        if "pose2to1" in s:
            proc, ess = _ours_pose(out, s, float(ev.get("conf_thr", 1.0)))
            errs["ours_procrustes"].append(pose_error(proc, s["pose2to1"]))
            errs["ours_matches"].append(pose_error(ess, s["pose2to1"]))
            for m in ("sift", "orb"):
                pose = opencv_pose(s["img1"], s["img2"], s["K1"], s["K2"], m, int(ev.get("opencv_upscale", 1)))
                errs[f"opencv_{m}"].append(pose_error(pose, s["pose2to1"]))
    pred, gt, valid = torch.stack(preds), torch.stack(gts), torch.stack(valids)
    max_depth = float(ev.get("max_depth", 20.0))
    depth = {"ours_median": depth_metrics(pred, gt, valid, align="median", max_depth=max_depth),
             "ours_scale_shift": depth_metrics(pred, gt, valid, align="scale_shift", max_depth=max_depth)}
    depth = {k: {m: float(x) for m, x in v.items()} for k, v in depth.items()}
    depth.update(median_depth_baselines(gt, valid, train_median))
    pose = {k: {**pose_auc(v), "median_err": float(np.median(v)), "failed": int(np.sum(np.asarray(v) >= FAILED))}
            for k, v in errs.items() if v}
    return {"depth": depth, "pose": pose, "pose_errors": errs, "pred_depth": pred}


def _render(args: tuple[SyntheticPairs, int]) -> dict[str, np.ndarray]:
    ds, i = args
    return ds[i]


def prerender(ds: SyntheticPairs, workers: int = 1) -> None:
    """Render every pair of ``ds`` into its in-memory cache, in ``workers`` processes (rendering is numpy on CPU)."""
    todo = [i for i in range(len(ds)) if i not in ds._cache]
    if workers > 1 and len(todo) > workers:
        import multiprocessing as mp

        with mp.get_context("fork").Pool(workers) as pool:
            for i, s in zip(todo, pool.imap(_render, [(ds, i) for i in todo], chunksize=8)):
                ds._cache[i] = s
    else:
        for i in todo:
            ds[i]


def train_median_depth(dm: SyntheticGeometryDataModule) -> float:
    """The median of every valid training depth (the constant baseline's value)."""
    ds = dm.train_set
    vals = [s["depth1"][s["valid1"]] for s in (ds[i] for i in range(len(ds)))]
    return float(np.median(np.concatenate(vals)))


# --------------------------------------------------------------------------------------------------- figures
def plot_depth(pairs: list[dict[str, np.ndarray]], preds: list[torch.Tensor], path: Path,
               titles: list[str]) -> None:
    """Rows: image, GT depth, ours (median-scaled), the median constant; invalid GT in black."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(pairs), 4, figsize=(7.2, 1.9 * len(pairs)), squeeze=False)
    for r, (s, p, title) in enumerate(zip(pairs, preds, titles)):
        gt, v = np.asarray(s["depth1"]), np.asarray(s["valid1"]).astype(bool)
        p = p.numpy() * np.median(gt[v]) / max(np.median(p.numpy()[v]), 1e-9)
        lo, hi = np.percentile(gt[v], [2, 98])
        for c, im in enumerate([None, gt, p, np.full_like(gt, np.median(gt[v]))]):
            ax = axes[r, c]
            if c == 0:
                ax.imshow((np.asarray(s["img1"]).transpose(1, 2, 0) * 0.5 + 0.5).clip(0, 1))
                ax.set_ylabel(title, fontsize=7)
            else:
                ax.imshow(np.where(v, im, np.nan), cmap="turbo", vmin=lo, vmax=hi)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(("image", "GT depth", "ours (median-scaled)", "median constant")[c], fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_pose_cdf(errs: dict[str, list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3))
    for k, v in errs.items():
        e = np.sort(np.asarray(v))
        ax.plot(e, np.arange(1, len(e) + 1) / len(e), label=k)
    ax.set_xlim(0, 30)
    ax.set_xlabel("pose error (deg, max of R and t-direction)")
    ax.set_ylabel("fraction of held-out pairs")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------ main
_DEPTH_COLS = [("method", "method", ""), ("abs_rel", "AbsRel", ".3f"), ("delta1", "δ<1.25", ".3f")]
_POSE_COLS = [("method", "method", ""), ("auc@5", "AUC@5", ".3f"), ("auc@10", "AUC@10", ".3f"),
              ("auc@20", "AUC@20", ".3f"), ("median_err", "median err (°)", ".1f"), ("failed", "failed", "d")]
_LABELS = {"ours_median": "Dens3R (ours), median-scaled", "ours_scale_shift": "Dens3R (ours), scale+shift (paper)",
           "median_scaled_constant": "constant, median-scaled per image", "train_median": "training median depth",
           "ours_procrustes": "Dens3R (ours), Procrustes on pointmaps",
           "ours_matches": "Dens3R (ours), descriptor matches + essential matrix",
           "opencv_sift": "OpenCV SIFT + essential matrix", "opencv_orb": "OpenCV ORB + essential matrix"}


def _rows(d: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    return [{"method": _LABELS.get(k, k), **v} for k, v in d.items()]


def run(cfg: dict[str, Any], out: str | Path) -> dict[str, Any]:
    """Train stage 1 on the training scenes, evaluate every method on the held-out and the real pairs, write the
    tables and figures."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data, t = cfg["dataset"], cfg["train"]
    split = check_split(data)
    pl.seed_everything(cfg.get("seed", 0), workers=True)
    dm = SyntheticGeometryDataModule(num_train=data["num_train"], num_val=data.get("num_val", 16),
                                     num_test=data["num_test"], size=data["size"], seed=data.get("seed", 0),
                                     batch_size=t["batch_size"], num_workers=t.get("num_workers", 0),
                                     train_textures=data["train_textures"], heldout_textures=data["heldout_textures"])
    dm.setup("fit")
    t0 = time.perf_counter()
    test = SyntheticPairs(data["num_test"], data["size"], data.get("seed", 0) + 2_000_000,
                          textures=data["heldout_textures"])
    for ds in (dm.train_set, test):  # before CUDA is initialised: the render workers are forked
        prerender(ds, int(t.get("render_workers", 1)))
    render_s = time.perf_counter() - t0
    task = GeometryTask(model=cfg["network"], model_kwargs=cfg.get("network_kwargs") or None, stage=1,
                        conf_alpha=t.get("conf_alpha", 0.2), lr=t["lr"], weight_decay=t.get("weight_decay", 0.05),
                        warmup_steps=t.get("warmup_steps", 20), max_matches=t.get("max_matches", 256),
                        compile=t.get("compile", False))
    trainer = pl.Trainer(max_epochs=t["max_epochs"], accelerator=t.get("accelerator", "auto"), devices=1,
                         precision=t.get("precision", "32-true"), logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         limit_val_batches=0, gradient_clip_val=1.0, log_every_n_steps=10)
    trainer.fit(task, train_dataloaders=dm.train_dataloader())  # not the datamodule: its setup() would drop the cache
    train_s = time.perf_counter() - t0 - render_s
    torch.save(task.net.state_dict(), out / "net.pt")  # the evaluated weights (re-evaluate without retraining)
    net = task.network.eval()
    device = next(task.net.parameters()).device
    med = train_median_depth(dm)
    pairs = [test[i] for i in range(len(test))]
    t1 = time.perf_counter()
    res = evaluate(net, pairs, med, device, cfg)
    real = stereo_motorcycle_pair(int(cfg.get("real_width", 96)))
    real_res = evaluate(net, [real], med, device, {"eval": {**cfg.get("eval", {}), "max_depth": 1e3}})
    eval_s = time.perf_counter() - t1
    n_fig = min(3, len(pairs))
    plot_depth(pairs[:n_fig] + [real], list(res["pred_depth"][:n_fig]) + [real_res["pred_depth"][0]],
               out / "depth.png", [f"held-out {i}" for i in range(n_fig)] + ["real (Middlebury)"])
    plot_pose_cdf(res["pose_errors"], out / "pose_cdf.png")
    result = {"family": "dens3r", **stamp("tasks.results.dens3r"), "split": split,
              "split_rule": data.get("split_rule", ""), "dataset": data, "train": t, "network": cfg["network"],
              "params_m": sum(p.numel() for p in task.net.parameters()) / 1e6, "render_s": render_s, "train_s": train_s,
              "eval_s": eval_s,
              "train_median_depth": med, "heldout": {"depth": res["depth"], "pose": res["pose"]},
              "real_pair": {"depth": real_res["depth"],
                            "pose_err_deg": {k: v[0] for k, v in real_res["pose_errors"].items() if v}},
              "pose_errors": res["pose_errors"]}
    write_json(out / "results.json", result)
    real_pose = [{"method": _LABELS[k], "err": v} for k, v in result["real_pair"]["pose_err_deg"].items()]
    md = [f"# Dens3R results ({result['machine']})", "",
          f"Command: `{result['command']}` — commit {result['commit']}, torch {result['torch']}; {cfg['network']} "
          f"({result['params_m']:.2f} M params) trained {train_s:.0f} s (+ {render_s:.0f} s rendering), evaluated "
          f"{eval_s:.0f} s.", "",
          f"Held-out SYNTHETIC pairs ({data['num_test']} scenes, seeds {split['test_seeds']}, textures "
          f"{', '.join(split['heldout_textures'])} never seen in training), {data['size']} px:", "",
          markdown_table(_rows(res["depth"]), _DEPTH_COLS), "", markdown_table(_rows(res["pose"]), _POSE_COLS), "",
          f"REAL pair (Middlebury 2014 motorcycle, scikit-image; {real['img1'].shape[2]}x{real['img1'].shape[1]}):",
          "", markdown_table(_rows(real_res["depth"]), _DEPTH_COLS), "",
          markdown_table(real_pose, [("method", "method", ""), ("err", "pose error (°)", ".1f")]), ""]
    (out / "results.md").write_text("\n".join(md))
    return result


def tiny_overrides() -> dict[str, Any]:
    """A seconds-long smoke run of a config (tests, ``--tiny``)."""
    return {"network": "dens3r_tiny", "network_kwargs": {}, "real_width": 64,
            "dataset": {"num_train": 4, "num_val": 2, "num_test": 3, "size": 32},
            "train": {"max_epochs": 1, "batch_size": 2, "accelerator": "cpu", "precision": "32-true",
                      "compile": False, "num_workers": 0, "warmup_steps": 1}}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="configs/dens3r/results*.yaml")
    p.add_argument("--out", default=None, help="output folder (default: the config's out)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run of the config (CPU)")
    a = p.parse_args(argv)
    checkout_commit()  # the commit the run starts from (cached for stamp())
    cfg = load_config(a.config, tiny_overrides() if a.tiny else None)
    return run(cfg, a.out or cfg["out"])


if __name__ == "__main__":
    main()
