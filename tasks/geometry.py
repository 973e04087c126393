"""Dens3R geometry task: the two training stages' losses, depth/normal/pose metrics, and ``GeometryTask``.

Losses (spec ``papers/dens3r.md``, arXiv Sec. 3.2, Eqs. 3-11; training code is unreleased, so the details
below are our reading, marked in the model card):

- Pointmaps are compared after normalising each frame by its mean point distance ``z_v`` (over the valid
  points of *both* views expressed in frame v), separately for prediction and ground truth: scale-invariant.
- ``pts_loc``: each view's pointmap in its own frame (Eqs. 3-4). ``pts_glb``: each view's pointmap in the
  other view's frame (Eq. 5). Per-pixel Euclidean distance, averaged over valid pixels, then over the views.
- Optional DUSt3R confidence weighting ``conf * l - alpha * log(conf)`` (``conf_alpha``; the issue asks for
  it in stage 1; the paper's equations have none, so stage 2 defaults to off).
- ``pts_normal``: L1 between GT normals and normals computed from the predicted pointmaps (cross product of
  central differences, kept in the pixel-grid orientation, which faces the capturing camera in any frame), in
  both frames (Eq. 6): local term + global term, each averaged over the two views (so eta2 = 0.1 weights their sum).
- ``match``: symmetric InfoNCE over ground-truth correspondences, temperature 0.07 (Eq. 7, MASt3R).
- ``normal``: L1 (summed over xyz, averaged over valid pixels) between the normal head and GT normals per view
  (Eq. 10); with ``pts_loc`` this supervises the stage-2 "intrinsic-invariant pointmap" P (+) n per view.
- ``depth`` (optional, weight 0 by default): L1 of view-1 depth after least-squares scale-and-shift alignment.

Stage 1 = pts_loc + 1.0 pts_glb + 0.1 pts_normal + 0.075 match (normal head frozen).
Stage 2 = pts_loc + 1.0 pts_glb + 0.1 pts_normal + 1.0 normal (descriptor MLPs frozen, no matching).
"""
from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from tasks._base import ZooTask
from tasks.geometry_inference import relative_pose_from_pointmaps
from tasks.metrics.geometry import (
    align_scale_shift,
    angular_error,
    depth_metrics,
    normal_metrics,
    pose_auc,
    relative_pose_error,
)
from zoo.layers.geometry import normals_from_pointmap

__all__ = [
    "GeometryTask", "ResolutionSchedule", "depth_metrics", "normal_metrics", "pose_auc", "stage_loss",
    "gt_correspondences", "info_nce", "STAGE_WEIGHTS",
]

#: loss weights of the paper's two stages (eta / lambda of Eqs. 8 and 11)
STAGE_WEIGHTS: dict[int, dict[str, float]] = {
    1: {"pts_loc": 1.0, "pts_glb": 1.0, "pts_normal": 0.1, "match": 0.075, "normal": 0.0, "depth": 0.0},
    2: {"pts_loc": 1.0, "pts_glb": 1.0, "pts_normal": 0.1, "match": 0.0, "normal": 1.0, "depth": 0.0},
}


# ------------------------------------------------------------------------------------------- geometry
def transform_points(T: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply ``(B, 4, 4)`` transforms to ``(B, H, W, 3)`` points."""
    return torch.einsum("bij,bhwj->bhwi", T[:, :3, :3], pts) + T[:, None, None, :3, 3]


def rotate_vectors(T: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bij,bhwj->bhwi", T[:, :3, :3], v)


def gt_correspondences(pts1_in2: torch.Tensor, valid1: torch.Tensor, depth2: torch.Tensor, valid2: torch.Tensor,
                       K2: torch.Tensor, rel_tol: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground-truth matches of one pair: view-1 points expressed in camera 2 (``(H1, W1, 3)``) are projected with
    ``K2``; a pixel matches when it lands inside image 2 on a valid pixel whose depth agrees within ``rel_tol``
    (occlusion test). Returns flat pixel indices ``(idx1, idx2)``."""
    h2, w2 = depth2.shape
    z = pts1_in2[..., 2]
    uv = (pts1_in2[..., :2] / z.clamp(min=1e-9)[..., None]) * K2.diagonal()[:2] + K2[:2, 2]
    u, v = uv[..., 0].floor().long(), uv[..., 1].floor().long()
    ok = valid1.bool() & (z > 1e-6) & (u >= 0) & (u < w2) & (v >= 0) & (v < h2)
    uc, vc = u.clamp(0, w2 - 1), v.clamp(0, h2 - 1)
    d2 = depth2[vc, uc]
    ok &= valid2.bool()[vc, uc] & ((d2 - z).abs() <= rel_tol * z)
    idx1 = torch.nonzero(ok.reshape(-1)).squeeze(1)
    idx2 = (vc * w2 + uc).reshape(-1)[idx1]
    return idx1, idx2


def info_nce(desc1: torch.Tensor, desc2: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE over ``N`` matched descriptor pairs ``(N, D)``: each match against all others."""
    logits = desc1 @ desc2.T / temperature
    target = torch.arange(len(desc1), device=desc1.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    m = m.to(x.dtype)
    return (x * m).sum() / m.sum().clamp(min=1.0)


def _frame_scale(pts_a: torch.Tensor, va: torch.Tensor, pts_b: torch.Tensor, vb: torch.Tensor) -> torch.Tensor:
    """Per-sample mean distance to the origin of the valid points of two pointmaps in one frame: ``(B,)``."""
    da = (pts_a.norm(dim=-1) * va).flatten(1).sum(1)
    db = (pts_b.norm(dim=-1) * vb).flatten(1).sum(1)
    n = (va.flatten(1).sum(1) + vb.flatten(1).sum(1)).clamp(min=1)
    return ((da + db) / n).clamp(min=1e-8)


def _regr(pred: torch.Tensor, gt: torch.Tensor, zp: torch.Tensor, zg: torch.Tensor) -> torch.Tensor:
    return (pred / zp[:, None, None, None] - gt / zg[:, None, None, None]).norm(dim=-1)


def stage_loss(out: Any, batch: dict[str, torch.Tensor], weights: dict[str, float], conf_alpha: float | None = None,
               temperature: float = 0.07, max_matches: int = 512) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Total loss and its parts for a pair batch and a ``heads='all'`` :class:`zoo.dens3r.Dens3ROutput`.

    Batch keys: ``pts1, pts2`` (GT camera-frame pointmaps), ``valid1, valid2``, ``normal1, normal2`` (GT
    camera-frame normals; zero = unknown), ``pose2to1`` (camera-2 -> camera-1), ``depth2``, ``K2``.
    """
    v1, v2 = out.view1, out.view2
    val1, val2 = batch["valid1"].bool(), batch["valid2"].bool()
    T21 = batch["pose2to1"].float()
    T12 = torch.linalg.inv(T21)
    g11, g22 = batch["pts1"].float(), batch["pts2"].float()
    g21, g12 = transform_points(T21, g22), transform_points(T12, g11)  # view 2 in frame 1, view 1 in frame 2
    p11, p22, p21, p12 = v1.pts3d.float(), v2.pts3d.float(), v2.pts3d_other.float(), v1.pts3d_other.float()
    vf1, vf2 = val1.float(), val2.float()
    z1p, z1g = _frame_scale(p11, vf1, p21, vf2), _frame_scale(g11, vf1, g21, vf2)
    z2p, z2g = _frame_scale(p22, vf2, p12, vf1), _frame_scale(g22, vf2, g12, vf1)

    def conf_weighted(l: torch.Tensor, conf: torch.Tensor | None, m: torch.Tensor) -> torch.Tensor:
        if conf_alpha is None or conf is None:
            return _masked_mean(l, m)
        return _masked_mean(l * conf - conf_alpha * torch.log(conf), m)

    parts: dict[str, torch.Tensor] = {}
    parts["pts_loc"] = (conf_weighted(_regr(p11, g11, z1p, z1g), v1.conf, val1)
                        + conf_weighted(_regr(p22, g22, z2p, z2g), v2.conf, val2)) / 2
    parts["pts_glb"] = (conf_weighted(_regr(p12, g12, z2p, z2g), v1.conf_other, val1)
                        + conf_weighted(_regr(p21, g21, z1p, z1g), v2.conf_other, val2)) / 2
    n1, n2 = batch.get("normal1"), batch.get("normal2")
    if n1 is not None and (weights.get("pts_normal", 0) or weights.get("normal", 0)):
        n1, n2 = n1.float(), n2.float()
        nv1, nv2 = val1 & (n1.norm(dim=-1) > 0.5), val2 & (n2.norm(dim=-1) > 0.5)
        terms = []
        # no re-orientation: the grid orientation faces the capturing camera in any frame (a flip towards the
        # frame's origin would wrongly turn view 1's normals towards camera 2 in p12)
        for pts, gt_n, nv in ((p11, n1, nv1), (p22, n2, nv2), (p12, rotate_vectors(T12, n1), nv1),
                              (p21, rotate_vectors(T21, n2), nv2)):
            pn, ok = normals_from_pointmap(pts, orient=None)
            terms.append(_masked_mean((pn - gt_n).abs().sum(-1), ok & nv))
        # Eq. 6 = local term + global term, each averaged over the two views (like pts_loc / pts_glb)
        parts["pts_normal"] = sum(terms) / 2
        if weights.get("normal", 0) and v1.normal is not None:
            parts["normal"] = (_masked_mean((v1.normal.float() - n1).abs().sum(-1), nv1)
                               + _masked_mean((v2.normal.float() - n2).abs().sum(-1), nv2)) / 2
    if weights.get("match", 0) and v1.desc is not None:
        losses = []
        for b in range(len(g11)):
            i1, i2 = gt_correspondences(g12[b], val1[b], batch["depth2"][b].float(), val2[b], batch["K2"][b].float())
            if len(i1) < 2:
                continue
            if len(i1) > max_matches:
                sel = torch.randperm(len(i1), device=i1.device)[:max_matches]
                i1, i2 = i1[sel], i2[sel]
            d1 = v1.desc[b].reshape(-1, v1.desc.shape[-1])[i1].float()
            d2 = v2.desc[b].reshape(-1, v2.desc.shape[-1])[i2].float()
            losses.append(info_nce(d1, d2, temperature))
        parts["match"] = torch.stack(losses).mean() if losses else p11.sum() * 0
    if weights.get("depth", 0):
        d, gt = p11[..., 2], g11[..., 2]
        s, t = align_scale_shift(d.detach(), gt, val1)
        parts["depth"] = _masked_mean((d * s[:, None, None] + t[:, None, None] - gt).abs() / z1g[:, None, None], val1)
    total = sum(weights.get(k, 0.0) * v for k, v in parts.items())
    return total, parts  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- callback
class ResolutionSchedule(pl.Callback):
    """Coarse-to-fine training resolution (paper: 512 px, then 1024 px on high-resolution data): sets the
    datamodule's ``size`` at the given epochs (use with ``reload_dataloaders_every_n_epochs: 1``).

    Args:
        milestones: ``{epoch: size}``, e.g. ``{0: 512, 20: 1024}``.
    """

    def __init__(self, milestones: dict[int, int]) -> None:
        self.milestones = {int(k): int(v) for k, v in milestones.items()}

    def size_for(self, epoch: int) -> int | None:
        due = [s for e, s in sorted(self.milestones.items()) if e <= epoch]
        return due[-1] if due else None

    def _apply(self, trainer: pl.Trainer, epoch: int) -> None:
        dm = trainer.datamodule
        size = self.size_for(epoch)
        if size is not None and dm is not None and hasattr(dm, "size") and dm.size != size:
            dm.size = size

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._apply(trainer, trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Lightning reloads the train loader before the next epoch's hooks run: set the size one epoch ahead
        self._apply(trainer, trainer.current_epoch + 1)


# ------------------------------------------------------------------------------------------------ task
class GeometryTask(ZooTask):
    """Dens3R training (stage 1 / stage 2) and evaluation (depth, normals, relative pose).

    Args:
        model: registered model name (``dens3r_vitl16``, ``dens3r_tiny``, ...).
        pretrained: False, True, a weight tag or a local weight file.
        model_kwargs: constructor overrides of the model.
        compile: compile the network with ``torch.compile``.
        stage: 1 (scale-invariant pointmaps + matching) or 2 (intrinsic-invariant pointmaps + normals).
        init_from: checkpoint to start from (a stage-1 Lightning ``.ckpt``, safetensors or upstream ``.pth``), read
            when the network is built (``ZooTask``; ``load_from_checkpoint`` does not read it).
        loss_weights: overrides of the stage's weights (keys pts_loc, pts_glb, pts_normal, match, normal, depth).
        conf_alpha: confidence-loss alpha; None = no confidence weighting; negative (default) = the stage's
            default (0.2 in stage 1 as the issue asks, None in stage 2 as in the paper).
        match_temperature: InfoNCE temperature.
        max_matches: correspondences sampled per pair for the matching loss.
        freeze: extra model parts to freeze ('encoder', 'decoder', 'pointmap_heads', 'desc', 'normal_head').
        lr: AdamW peak learning rate.
        weight_decay: AdamW weight decay.
        betas: AdamW betas.
        warmup_steps: linear warm-up steps before the cosine decay.
        min_lr_ratio: final LR as a fraction of ``lr``.
        depth_align: alignment of predicted depth in the depth metrics ('scale_shift', 'scale', 'median').
        depth_crop: border crop of the depth metrics ('nyu_border', 'eigen' or None).
        max_depth: max valid depth of the depth metrics (metres).
    """

    def __init__(
        self,
        model: str = "dens3r_tiny",
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        stage: int = 1,
        init_from: str | None = None,
        loss_weights: dict[str, float] | None = None,
        conf_alpha: float | None = -1.0,
        match_temperature: float = 0.07,
        max_matches: int = 512,
        freeze: list[str] | None = None,
        lr: float = 1e-4,
        weight_decay: float = 0.05,
        betas: tuple[float, float] = (0.9, 0.95),
        warmup_steps: int = 0,
        min_lr_ratio: float = 0.01,
        depth_align: str = "scale_shift",
        depth_crop: str | None = None,
        max_depth: float = 20.0,
    ) -> None:
        if stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {stage}")
        self.stage = stage
        self.freeze_parts = list(freeze or [])
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        self.weights = {**STAGE_WEIGHTS[stage], **(loss_weights or {})}
        self.conf_alpha = (0.2 if stage == 1 else None) if conf_alpha is not None and conf_alpha < 0 else conf_alpha
        self._eval: dict[str, list[torch.Tensor]] = {}

    def on_net_built(self) -> None:
        net = self.net
        parts = list(self.freeze_parts)
        parts += ["normal_head"] if self.stage == 1 else ["desc"]
        if self.stage == 1 and getattr(net, "normal_head", None) is None:
            parts.remove("normal_head")
        net.freeze(parts)  # type: ignore[union-attr]

    # ------------------------------------------------------------------------------------------- train
    def _loss(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor], Any]:
        out = self.network(batch["img1"], batch["img2"], heads="all")
        loss, parts = stage_loss(out, batch, self.weights, self.conf_alpha, self.hparams.match_temperature,
                                 self.hparams.max_matches)
        return loss, parts, out

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss, parts, _ = self._loss(batch)
        bs = len(batch["img1"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        for k, v in parts.items():
            self.log(f"train/{k}", v, batch_size=bs)
        return loss

    def example_batch(self, batch_size: int, size: int | None = None) -> dict[str, torch.Tensor]:
        """One rendered pair with exact ground truth at the model's resolution, repeated (``sharezoo bench``)."""
        from torch.utils.data import default_collate

        from datamodules.geometry import SyntheticPairs

        size = size or int(getattr(self.net, "img_size", 64))
        sample = SyntheticPairs(1, size=size)[0]
        return default_collate([sample] * batch_size)

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        b = self.example_batch(batch_size)
        return b["img1"], b["img2"]

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    # -------------------------------------------------------------------------------------------- eval
    def _add(self, key: str, v: torch.Tensor) -> None:
        self._eval.setdefault(key, []).append(v.detach().float().reshape(-1).cpu())

    def _add_normal(self, err: torch.Tensor, ok: torch.Tensor) -> None:
        """Angular errors ``(B, H, W)`` (degrees) of the valid pixels ``ok``: pooled for mean / median /
        thresholds (DSINE benchmark), and each image's RMSE for ``normal_rmse`` (averaged over images, as the
        released eval_normal.py aggregates its per-image RMSE)."""
        self._add("normal_err", err[ok])
        n = ok.flatten(1).sum(1)
        mse = (err.double().pow(2) * ok).flatten(1).sum(1) / n.clamp(min=1)
        self._add("normal_rmse", torch.where(n > 0, mse.sqrt(), torch.full_like(mse, float("nan"))))

    def _eval_step(self, batch: dict[str, torch.Tensor], split: str) -> None:
        hp = self.hparams
        if "img1" in batch:  # image pairs
            if "pts1" in batch:
                loss, parts, out = self._loss(batch)
                self.log(f"{split}/loss", loss, prog_bar=True, batch_size=len(batch["img1"]), sync_dist=True)
                dm = depth_metrics(out.depth.float(), batch["depth1"].float(), batch["valid1"], align=hp.depth_align,
                                   crop=hp.depth_crop, max_depth=hp.max_depth, reduction="none")
                for k, v in dm.items():
                    self._add(f"depth_{k}", v)
                if out.view1.normal is not None and self.stage == 2:
                    err = angular_error(out.view1.normal, batch["normal1"])
                    ok = batch["valid1"].bool() & (batch["normal1"].norm(dim=-1) > 0.5)
                    self._add_normal(err, ok)
            else:
                out = self.network(batch["img1"], batch["img2"], heads="all")
            if "pose2to1" in batch:
                for b in range(len(batch["img1"])):
                    R, t, _ = relative_pose_from_pointmaps(out.view2.pts3d[b].float(), out.view2.pts3d_other[b].float(),
                                                           out.view2.conf[b] if out.view2.conf is not None else None)
                    T = batch["pose2to1"][b].float()
                    re, te = relative_pose_error(R, t, T[:3, :3], T[:3, 3])
                    self._add("pose_err", torch.maximum(re, te))
        else:  # single images: paired with themselves; predictions resized to the GT resolution
            out = self.network(batch["img"])
            if "depth" in batch:
                pred = out.depth.float()
                if pred.shape[-2:] != batch["depth"].shape[-2:]:
                    pred = F.interpolate(pred[:, None], size=batch["depth"].shape[-2:], mode="bilinear",
                                         align_corners=False)[:, 0]
                dm = depth_metrics(pred, batch["depth"].float(), batch.get("valid"), align=hp.depth_align,
                                   crop=hp.depth_crop, max_depth=hp.max_depth, reduction="none")
                for k, v in dm.items():
                    self._add(f"depth_{k}", v)
            if "normal" in batch and out.view1.normal is not None:
                n = out.view1.normal.float()
                if n.shape[1:3] != batch["normal"].shape[1:3]:
                    n = F.interpolate(n.permute(0, 3, 1, 2), size=batch["normal"].shape[1:3], mode="bilinear",
                                      align_corners=False).permute(0, 2, 3, 1)
                err = angular_error(n, batch["normal"])
                ok = batch.get("normal_valid", batch["normal"].norm(dim=-1) > 0.5).bool()
                self._add_normal(err, ok)

    def _eval_end(self, split: str) -> None:
        vals = {k: torch.cat(v) for k, v in self._eval.items()}
        self._eval = {}
        if self.trainer.world_size > 1:  # gather all samples across ranks (variable length: pad)
            for k, v in list(vals.items()):
                n = torch.tensor([len(v)], device=self.device)
                ns = self.all_gather(n).reshape(-1)
                pad = torch.full((int(ns.max()),), float("nan"), device=self.device)
                pad[: len(v)] = v.to(self.device)
                g = self.all_gather(pad).reshape(len(ns), -1)
                vals[k] = torch.cat([g[i, : int(ns[i])] for i in range(len(ns))]).cpu()
        logs: dict[str, float] = {}
        for k, v in vals.items():
            v = v[torch.isfinite(v)]
            if not len(v):
                continue
            if k == "normal_err":
                logs[f"{split}/normal_mean"] = float(v.mean())
                logs[f"{split}/normal_median"] = float(v.median())
                for th, name in ((11.25, "11_25"), (22.5, "22_5"), (30.0, "30")):
                    logs[f"{split}/normal_pct_{name}"] = float((v < th).float().mean() * 100)
            elif k == "pose_err":
                for name, auc in pose_auc(v.numpy()).items():
                    logs[f"{split}/pose_{name}"] = auc
            else:
                logs[f"{split}/{k}"] = float(v.mean())
        for k, v in logs.items():
            self.log(k, v, prog_bar=k.endswith(("abs_rel", "delta1")), sync_dist=False, rank_zero_only=True)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # --------------------------------------------------------------------------------------- optimiser
    def configure_optimizers(self) -> Any:
        hp = self.hparams
        decay, no_decay = [], []
        for n, p in self.net.named_parameters():  # type: ignore[union-attr]
            if p.requires_grad:
                (no_decay if p.ndim <= 1 else decay).append(p)
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas),
                                foreach=True)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self._trainer is not None else 1

        def lr_at(step: int) -> float:
            if step < hp.warmup_steps:
                return (step + 1) / max(1, hp.warmup_steps)
            prog = min(1.0, (step - hp.warmup_steps) / max(1, total - hp.warmup_steps))
            return hp.min_lr_ratio + (1 - hp.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * prog))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
