"""Dens3R: joint pointmap, depth, normal and matching prediction from an image pair (arXiv 2507.16290).

A Siamese ViT encoder (timm blocks, 2-D RoPE with position interpolation inside every attention) encodes both
images; a decoder of self- + cross-attention blocks, shared by the two views as in the paper (or two stacks as
in the released code, ``shared_decoder=False``), lets each view attend to the other; DPT heads predict, per
pixel, view 1's pointmap in its own frame (``local_head``), view 2's pointmap in view 1's frame
(``global_head``), a confidence, a 24-d L2-normalised matching descriptor (MLP over encoder + decoder tokens,
pixel-shuffled) and, from one head shared by both views, the surface normal. Depth = z of view 1's pointmap.
A single image is paired with itself.
"""
from __future__ import annotations

import argparse
import logging
import os
import re
from dataclasses import dataclass, fields
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from timm.layers import Mlp, PatchEmbed
from timm.layers.attention import Attention
from timm.models.vision_transformer import Block
from torch import nn

from ._builder import build_model
from ._registry import register_model
from .layers.dpt import DPTHead
from .layers.rope2d import RoPE2D, grid_positions

_logger = logging.getLogger(__name__)

__all__ = ["Dens3R", "Dens3ROutput", "Dens3RView", "checkpoint_filter_fn", "convert_official_checkpoint"]

MODEL_CARD = {
    "paper": "Dens3R: A Foundation Model for 3D Geometry Prediction (Fang, Gao et al., arXiv 2507.16290, 2025)",
    "url": "https://arxiv.org/abs/2507.16290",
    "code": "https://github.com/G-1nOnly/Dens3R",
    "license": "CC BY-NC-SA 4.0 (upstream code and weights); this re-implementation: Apache-2.0",
    "reported_params_m": {"dens3r_vitl16": 624.152},
    "deviations": [
        "Encoder/decoder widths and depths are not stated in the paper: dens3r_vitl16 assumes the MASt3R lineage "
        "(ViT-L/16 encoder 1024-d x 24 blocks x 16 heads, ViT-B decoder 768-d x 12 blocks x 12 heads, DPT "
        "feature_dim 256 / last_dim 128, layer_dims 96/192/384/768, descriptor MLP hidden 4x). This gives "
        "588.2M params with the shared decoder (paper 624.152M, ratio 0.942) and 701.6M with two stacks "
        "(paper 737.591M); the released code also builds an unused skip unit in the coarsest DPT fusion block of "
        "each of the 3 heads (3.5M, dropped here, skipped by the converter): counted like upstream, 591.7M / "
        "705.2M. The 113.44M difference between the two layouts matches the paper exactly (one 12 x 768-d "
        "decoder stack); the common ~32.4M remainder is unexplained (not one more DPT head, 20.2M, nor one "
        "descriptor MLP, 56.9M; an ATMRoPE block would be 12.6M) and needs the released checkpoint's args "
        "string to resolve.",
        "Decoder: shared by both views by default (paper, ICLR App. A.1); shared_decoder=False builds the two "
        "stacks of the released code (dec_blocks / dec_blocks2). Checkpoints of either layout convert; weights "
        "of the released model class (two stacks, or symmetrize_dec=True = shared) reproduce its pointmaps, "
        "confidences, descriptors and normals to ~1e-5 after conversion, incl. interpolated RoPE at 2x size and "
        "odd token grids (tests/test_dens3r_upstream.py, run against a local checkout of the released code).",
        "The shared decoder runs the two views as one batch (same maths as two calls of the same stack).",
        "Normals: the released reg_dense_normal clips to [-1, 1] and then L2-normalises (the spec says 'no "
        "renormalisation'; the code at commit a734987 does renormalise); normal_renorm=True follows the code.",
        "RoPE: position interpolation t = m * 32 / L with L = longest token side (the released pos_embed.py); "
        "training jitter draws one offset per coordinate value per forward call (upstream caches it once). "
        "PI alone did not keep a dens3r_tiny trained at 64 px consistent at 128 px (benchmarks/dens3r_pi_consistency"
        ".py: depth AbsRel 0.13 -> 0.27-0.33 with PI, beating plain extrapolated RoPE with 1 of 3 seeds), in line "
        "with the paper's note that PI needs high-resolution training (its 1024-px fine stage).",
        "Only the RoPE100 position mode is implemented (not ATMRoPE / DINO learned pos-embed); the released "
        "model's mode is not confirmed.",
        "Landscape transposition (transpose_to_landscape) is not applied inside the model: inputs of any "
        "orientation are encoded as given; tasks.geometry_inference.preprocess_image keeps the aspect ratio.",
        "Heads run in float32 outside autocast (as upstream) when heads_fp32=True.",
        "Stage-2 'intrinsic-invariant pointmap' P (+) n is realised as joint supervision of the pointmap and the "
        "normal head output per view (the paper gives no closed form); see tasks.geometry.",
        "Training recipe (optimizer, LR, batch, iterations, augmentation) is unpublished: the configs' values "
        "are our choices (AdamW betas 0.9/0.95, wd 0.05, warm-up + cosine, like DUSt3R).",
        "Losses (tasks.geometry, training code unreleased): per-frame normaliser = mean distance of the valid "
        "points of both views in that frame (Eqs. 3-5), Euclidean per-pixel distance averaged over valid pixels "
        "and then over the two views; normals from a pointmap = cross product of central differences in the "
        "pixel-grid orientation (faces the capturing camera, also for the global pointmaps in the other frame; no "
        "flip, like the released ABSNormalFromDepthLoss), L_pts_n = local + global term each averaged over the "
        "views (the released loss sums the two views instead); "
        "InfoNCE over up to max_matches GT correspondences per pair with the other matches as negatives; the "
        "loss weights are the spec's (stage 1: 1.0/1.0/0.1/0.075, stage 2: 1.0/1.0/0.1/1.0).",
        "Confidence weighting (conf * l - alpha log conf, alpha 0.2) is ON in stage 1 (the issue asks for it) "
        "although the paper's objective (Eq. 8) has none and argues for dropping it: a deviation, flagged in "
        "stage1.yaml; OFF in stage 2 (paper). Both are switchable (conf_alpha: null = paper objective).",
        "Training runs both pointmap heads on both views (heads='all') to get each view's pointmap in its own "
        "and in the other frame, as the per-view losses need; inference uses the released pairing (view-1 "
        "local head, view-2 global head).",
        "Stage 1 freezes the normal head (not yet attached in the paper); stage 2 freezes the descriptor MLPs "
        "(no matching loss in stage 2).",
        "Coarse-to-fine (512 then 1024 px) is a ResolutionSchedule callback on the datamodule size; the "
        "paper's 28-dataset mixture is not reproduced (ScanNet-style folders + synthetic scenes only).",
        "Limitation of the shipped fine stage: the paper trains at 1024 px only on natively high-resolution data "
        "(tier A + part of tier B); configs/dens3r/stage{1,2}.yaml switch ScanNet (640x480 depth) to 1024 "
        "px, so the GT depth is upsampled with nearest neighbour (no new detail; staircase normals derived from "
        "it). Use natively >= 1024-px data for the fine stage, or drop the 1024 milestone.",
        "Normal axis conventions: our normals (GT and prediction) are in the OpenCV camera frame (x right, y down, "
        "z forward), facing the camera. The released eval_normal.py negates the predicted x of the released "
        "weights ('left hand to right hand') and flips GT axes per dataset (NYUv2: z; iBims-1: x; DIODE: x, z; "
        "Sintel: z; ScanNet: reversed channels, then x, y), on files read with OpenCV (BGR for PNGs). Which map a "
        "DSINE-format folder needs for released weights is not verified here: DSINENormalDataModule(normal_axes=...) "
        "applies one per dataset (a common reflection of prediction and GT leaves angular errors unchanged, so the "
        "prediction x-flip composes into it); check it on a few images before quoting numbers.",
        "Normal metrics: mean / median / % < 11.25, 22.5, 30 deg pooled over all valid pixels (DSINE benchmark); "
        "normal_rmse = RMSE of the angular error (degrees) per image, averaged over images (the released "
        "eval_normal.py averages per-image RMSEs, but of unit-vector differences, not angles).",
        "NYUv2 depth: valid GT = rawDepths > 0 (the in-painted pixels of 'depths' are not evaluated) AND an "
        "optional official masks.mat, in (1e-3, 20) m with predictions clipped to it (the released "
        "eval_depth.py uses its masks.mat and that range).",
        "Conversion of released checkpoints: absolute position embeddings (enc_pos_embed / dec_pos_embed, "
        "pos_embed 'cosine' / 'DINO') and ATMRoPE are rejected; a descriptor confidence (desc_conf / MASt3R "
        "two_confs) and a normal 'kappa' channel are not implemented and raise unless extra_outputs='drop' "
        "(descriptors / normals unchanged, the extra channel discarded).",
        "Relative pose for the pose-AUC metric comes from a weighted Procrustes between view 2's own-frame and "
        "view-1-frame pointmaps (not the paper's matching + RANSAC / COLMAP pipeline).",
        "Global multi-view alignment is our own DUSt3R-style gradient method (per-image pose/focal/depth, per-pair "
        "similarity, spanning-tree initialisation); no COLMAP/GLOMAP/NeuS post-processing.",
        "No released weights are in the manifest yet (checkpoint 'under approval' / Taobao3D); upstream .pth "
        "files convert with convert_official_checkpoint.",
    ],
}


# ----------------------------------------------------------------------------------------------- blocks
class RopeAttention(Attention):
    """timm ``Attention`` with 2-D RoPE applied to queries and keys, fused SDPA."""

    def forward(self, x: torch.Tensor, pos: torch.Tensor, rope: RoPE2D | None = None) -> torch.Tensor:  # type: ignore[override]
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        if rope is not None:
            cos, sin = rope.cos_sin(pos, self.head_dim, q.dtype)
            q, k = rope.rotate(q, cos, sin), rope.rotate(k, cos, sin)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop.p if self.training else 0.0)
        x = self.norm(x.transpose(1, 2).reshape(b, n, self.attn_dim))
        return self.proj_drop(self.proj(x))


class RopeCrossAttention(nn.Module):
    """Cross-attention from ``x`` to a memory ``y``, 2-D RoPE on both sides (queries at x's positions)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.projq = nn.Linear(dim, dim, bias=qkv_bias)
        self.projk = nn.Linear(dim, dim, bias=qkv_bias)
        self.projv = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.attn_drop = attn_drop

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor, rope: RoPE2D | None
    ) -> torch.Tensor:
        b, n, c = x.shape
        m = y.shape[1]
        q = self.projq(x).reshape(b, n, self.num_heads, self.head_dim).transpose(1, 2)
        k = self.projk(y).reshape(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.projv(y).reshape(b, m, self.num_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = rope(q, xpos), rope(k, ypos)
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class EncoderBlock(Block):
    """timm ViT ``Block`` whose attention takes token positions for RoPE."""

    def forward(self, x: torch.Tensor, pos: torch.Tensor, rope: RoPE2D | None = None) -> torch.Tensor:  # type: ignore[override]
        x = x + self.drop_path1(self.ls1(self.attn(self.norm1(x), pos, rope)))
        return x + self.drop_path2(self.ls2(self.mlp(self.norm2(x))))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the other view's (normalised) tokens, MLP; pre-norm residuals."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0) -> None:
        super().__init__()
        norm = partial(nn.LayerNorm, eps=1e-6)
        self.norm1 = norm(dim)
        self.attn = RopeAttention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = norm(dim)
        self.cross_attn = RopeCrossAttention(dim, num_heads, qkv_bias=True)
        self.norm_y = norm(dim)
        self.norm3 = norm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        from timm.layers import DropPath

        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, xpos: torch.Tensor, ypos: torch.Tensor, rope: RoPE2D | None
    ) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), xpos, rope))
        y = self.norm_y(y)
        x = x + self.drop_path(self.cross_attn(self.norm2(x), y, xpos, ypos, rope))
        return x + self.drop_path(self.mlp(self.norm3(x)))


# ------------------------------------------------------------------------------------------------ heads
def _exp_pointmap(xyz: torch.Tensor) -> torch.Tensor:
    """Regress points through the norm: ``xyz / |xyz| * expm1(|xyz|)`` (DUSt3R ``depth_mode='exp'``)."""
    d = xyz.norm(dim=-1, keepdim=True)
    return xyz / d.clamp(min=1e-8) * torch.expm1(d)


class PointmapHead(nn.Module):
    """DPT for a pointmap (+ confidence) and an MLP over [encoder, last decoder] tokens for descriptors."""

    def __init__(
        self, enc_dim: int, dec_dim: int, hooks: list[int], patch_size: int, conf: bool, desc_dim: int,
        desc_hidden_ratio: float, feature_dim: int, last_dim: int, layer_dims: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.desc_dim = desc_dim
        self.dpt = DPTHead([enc_dim, dec_dim, dec_dim, dec_dim], 3 + int(conf), hooks, patch_size, layer_dims,
                           feature_dim, last_dim)
        idim = enc_dim + dec_dim
        self.desc_mlp = Mlp(idim, int(desc_hidden_ratio * idim), desc_dim * patch_size**2) if desc_dim else None

    def pointmap(self, tokens: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        return self.dpt(tokens, hw).permute(0, 2, 3, 1)  # B,H,W,3(+1)

    def descriptors(self, tokens: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        assert self.desc_mlp is not None
        x = self.desc_mlp(torch.cat([tokens[0], tokens[-1]], dim=-1))  # B, N, D*p*p
        b = x.shape[0]
        x = x.transpose(1, 2).reshape(b, -1, hw[0] // self.patch_size, hw[1] // self.patch_size)
        x = F.pixel_shuffle(x, self.patch_size).permute(0, 2, 3, 1)  # B,H,W,D
        return F.normalize(x, dim=-1)


class NormalHead(nn.Module):
    """DPT for surface normals (shared by both views)."""

    def __init__(self, enc_dim: int, dec_dim: int, hooks: list[int], patch_size: int, feature_dim: int,
                 last_dim: int, layer_dims: tuple[int, ...]) -> None:
        super().__init__()
        self.dpt = DPTHead([enc_dim, dec_dim, dec_dim, dec_dim], 3, hooks, patch_size, layer_dims, feature_dim,
                           last_dim)

    def forward(self, tokens: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor:
        return self.dpt(tokens, hw).permute(0, 2, 3, 1)


# ---------------------------------------------------------------------------------------------- outputs
@dataclass
class Dens3RView:
    """Per-view predictions, channels last.

    Attributes:
        pts3d: ``(B, H, W, 3)`` pointmap in this view's own camera frame (local head), if computed.
        conf: ``(B, H, W)`` its confidence (>= conf_min), if the model has confidence.
        pts3d_other: ``(B, H, W, 3)`` this view's pointmap in the *other* view's frame (global head), if computed.
        conf_other: its confidence.
        desc: ``(B, H, W, D)`` L2-normalised matching descriptors.
        normal: ``(B, H, W, 3)`` surface normals in this view's camera frame.
    """

    pts3d: torch.Tensor | None = None
    conf: torch.Tensor | None = None
    pts3d_other: torch.Tensor | None = None
    conf_other: torch.Tensor | None = None
    desc: torch.Tensor | None = None
    normal: torch.Tensor | None = None

    def to_dict(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


@dataclass
class Dens3ROutput:
    """Predictions for an image pair. In the default ``heads='pair'`` mode, as in the released model:
    ``view1.pts3d`` (view 1 in its frame) and ``view2.pts3d_other`` (view 2 in view 1's frame)."""

    view1: Dens3RView
    view2: Dens3RView

    @property
    def depth(self) -> torch.Tensor:
        """``(B, H, W)`` depth of view 1 = z of its own-frame pointmap."""
        assert self.view1.pts3d is not None
        return self.view1.pts3d[..., 2]


# ------------------------------------------------------------------------------------------------ model
class Dens3R(nn.Module):
    """Dens3R pair network.

    Args:
        img_size: nominal training resolution (only for ``default_cfg``; any multiple of the patch size runs).
        patch_size: ViT patch size (16).
        in_chans: input channels.
        enc_dim: encoder width.
        enc_depth: encoder blocks.
        enc_heads: encoder attention heads.
        dec_dim: decoder width.
        dec_depth: decoder blocks.
        dec_heads: decoder attention heads.
        mlp_ratio: MLP expansion of all blocks.
        shared_decoder: one decoder stack for both views (paper); False = two stacks (released code).
        rope_freq: RoPE frequency base.
        rope_interpolate: position interpolation of the RoPE coordinates to ``[0, rope_ref_len)``.
        rope_ref_len: interpolation range (32 tokens = 512 px at patch 16).
        rope_jitter: training-time jitter of the interpolated positions.
        desc_dim: matching descriptor channels (24; 0 disables the descriptor MLPs).
        desc_hidden_ratio: hidden width of the descriptor MLP relative to enc_dim + dec_dim.
        conf: predict a confidence channel with the pointmaps.
        conf_min: lower bound of the confidence (``conf = conf_min + exp(x)``).
        normal_head: build the shared normal head.
        normal_renorm: L2-normalise normals after clipping to [-1, 1] (the released code does).
        head_feature_dim: DPT fusion width.
        head_last_dim: DPT channels before the output conv.
        head_layer_dims: DPT pyramid widths.
        heads_fp32: run the heads in float32 outside autocast.
        drop_path_rate: stochastic depth of the encoder (linearly increasing) and decoder.
    """

    def __init__(
        self,
        img_size: int = 512,
        patch_size: int = 16,
        in_chans: int = 3,
        enc_dim: int = 1024,
        enc_depth: int = 24,
        enc_heads: int = 16,
        dec_dim: int = 768,
        dec_depth: int = 12,
        dec_heads: int = 12,
        mlp_ratio: float = 4.0,
        shared_decoder: bool = True,
        rope_freq: float = 100.0,
        rope_interpolate: bool = True,
        rope_ref_len: float = 32.0,
        rope_jitter: bool = False,
        desc_dim: int = 24,
        desc_hidden_ratio: float = 4.0,
        conf: bool = True,
        conf_min: float = 1.0,
        normal_head: bool = True,
        normal_renorm: bool = True,
        head_feature_dim: int = 256,
        head_last_dim: int = 128,
        head_layer_dims: tuple[int, ...] | list[int] = (96, 192, 384, 768),
        heads_fp32: bool = True,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.img_size = img_size
        self.patch_size = patch_size
        self.enc_dim, self.dec_dim = enc_dim, dec_dim
        self.shared_decoder = shared_decoder
        self.has_conf = conf
        self.conf_min = conf_min
        self.desc_dim = desc_dim
        self.normal_renorm = normal_renorm
        self.heads_fp32 = heads_fp32
        self.rope = RoPE2D(rope_freq, interpolate=rope_interpolate, ref_len=rope_ref_len, jitter=rope_jitter)
        norm = partial(nn.LayerNorm, eps=1e-6)

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, enc_dim, strict_img_size=False, flatten=False,
                                      output_fmt="NHWC")
        dpr = [x.item() for x in torch.linspace(0, drop_path_rate, enc_depth)] if drop_path_rate else [0.0] * enc_depth
        self.enc_blocks = nn.ModuleList([
            EncoderBlock(enc_dim, enc_heads, mlp_ratio, qkv_bias=True, norm_layer=norm, attn_layer=RopeAttention,
                         drop_path=dpr[i])
            for i in range(enc_depth)
        ])
        self.enc_norm = norm(enc_dim)
        self.decoder_embed = nn.Linear(enc_dim, dec_dim)
        self.dec_blocks = nn.ModuleList([DecoderBlock(dec_dim, dec_heads, mlp_ratio, drop_path_rate)
                                         for _ in range(dec_depth)])
        self.dec_blocks2 = None if shared_decoder else nn.ModuleList([
            DecoderBlock(dec_dim, dec_heads, mlp_ratio, drop_path_rate) for _ in range(dec_depth)])
        self.dec_norm = norm(dec_dim)

        # hooks over [encoder output, decoder layer 1..L] (MASt3R/Dens3R head factory: [0, L/2, 3L/4, L])
        self.hooks = [0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth]
        head_kw = dict(feature_dim=head_feature_dim, last_dim=head_last_dim, layer_dims=tuple(head_layer_dims))
        self.local_head = PointmapHead(enc_dim, dec_dim, self.hooks, patch_size, conf, desc_dim, desc_hidden_ratio,
                                       **head_kw)
        self.global_head = PointmapHead(enc_dim, dec_dim, self.hooks, patch_size, conf, desc_dim, desc_hidden_ratio,
                                        **head_kw)
        self.normal_head = NormalHead(enc_dim, dec_dim, self.hooks, patch_size, **head_kw) if normal_head else None
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)  # CroCo/MAE initialisation
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------ trunk
    def encode(self, img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, 3, H, W)`` -> encoder tokens ``(B, N, enc_dim)`` and their (y, x) positions ``(B, N, 2)``."""
        h, w = img.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {self.patch_size}")
        x = self.patch_embed(img)  # B, h, w, C
        b, gh, gw, c = x.shape
        x = x.reshape(b, gh * gw, c)
        pos = grid_positions(b, gh, gw, img.device)
        for blk in self.enc_blocks:
            x = blk(x, pos, self.rope)
        return self.enc_norm(x), pos

    def decode(
        self, f1: torch.Tensor, pos1: torch.Tensor, f2: torch.Tensor, pos2: torch.Tensor
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the decoder; returns per view ``[encoder tokens, decoder layer 1, ..., layer L (normalised)]``."""
        out1, out2 = [f1], [f2]
        x1, x2 = self.decoder_embed(f1), self.decoder_embed(f2)
        blocks2 = self.dec_blocks if self.dec_blocks2 is None else self.dec_blocks2
        same_grid = pos1.shape == pos2.shape
        for blk1, blk2 in zip(self.dec_blocks, blocks2):
            if self.dec_blocks2 is None and same_grid:
                # one shared stack: both directions as a single batch
                y = blk1(torch.cat([x1, x2]), torch.cat([x2, x1]), torch.cat([pos1, pos2]), torch.cat([pos2, pos1]),
                         self.rope)
                x1, x2 = y.chunk(2)
            else:
                x1, x2 = blk1(x1, x2, pos1, pos2, self.rope), blk2(x2, x1, pos2, pos1, self.rope)
            out1.append(x1)
            out2.append(x2)
        out1[-1], out2[-1] = self.dec_norm(out1[-1]), self.dec_norm(out2[-1])
        return out1, out2

    # ------------------------------------------------------------------------------------------ heads
    def _points(self, head: PointmapHead, tokens: list[torch.Tensor], hw: tuple[int, int]) -> tuple:
        out = head.pointmap(tokens, hw)
        pts = _exp_pointmap(out[..., :3])
        conf = self.conf_min + out[..., 3].exp() if self.has_conf else None
        return pts, conf

    def _normals(self, tokens: list[torch.Tensor], hw: tuple[int, int]) -> torch.Tensor | None:
        if self.normal_head is None:
            return None
        n = self.normal_head(tokens, hw).clamp(-1.0, 1.0)
        return F.normalize(n, dim=-1, eps=1e-12) if self.normal_renorm else n

    def _heads(self, dec1: list[torch.Tensor], dec2: list[torch.Tensor], hw1: tuple[int, int], hw2: tuple[int, int],
               heads: str) -> Dens3ROutput:
        v1, v2 = Dens3RView(), Dens3RView()
        if heads == "all" and hw1 == hw2:
            # both views through each pointmap head as one batch (fewer, larger convolutions)
            both = [torch.cat([a, b]) for a, b in zip(dec1, dec2)]
            pts, conf = self._points(self.local_head, both, hw1)
            v1.pts3d, v2.pts3d = pts.chunk(2)
            v1.conf, v2.conf = conf.chunk(2) if conf is not None else (None, None)
            pts, conf = self._points(self.global_head, both, hw1)
            v1.pts3d_other, v2.pts3d_other = pts.chunk(2)
            v1.conf_other, v2.conf_other = conf.chunk(2) if conf is not None else (None, None)
        else:
            v1.pts3d, v1.conf = self._points(self.local_head, dec1, hw1)
            v2.pts3d_other, v2.conf_other = self._points(self.global_head, dec2, hw2)
            if heads == "all":
                v1.pts3d_other, v1.conf_other = self._points(self.global_head, dec1, hw1)
                v2.pts3d, v2.conf = self._points(self.local_head, dec2, hw2)
        if self.desc_dim:
            v1.desc = self.local_head.descriptors(dec1, hw1)
            v2.desc = self.global_head.descriptors(dec2, hw2)
        if hw1 == hw2 and self.normal_head is not None:
            n = self._normals([torch.cat([a, b]) for a, b in zip(dec1, dec2)], hw1)
            v1.normal, v2.normal = n.chunk(2)  # type: ignore[union-attr]
        else:
            v1.normal, v2.normal = self._normals(dec1, hw1), self._normals(dec2, hw2)
        return Dens3ROutput(v1, v2)

    def forward(
        self, img1: torch.Tensor | dict[str, torch.Tensor], img2: torch.Tensor | None = None, heads: str = "pair"
    ) -> Dens3ROutput:
        """Predict geometry for an image pair.

        Args:
            img1: ``(B, 3, H, W)`` normalised image (or a batch dict with ``img1`` and optionally ``img2``).
            img2: the second view; ``None`` pairs ``img1`` with itself (single-image mode).
            heads: ``'pair'`` (released model: view-1 local, view-2 global pointmap) or ``'all'`` (both
                pointmap heads on both views, as the training losses need).
        """
        if isinstance(img1, dict):
            img2 = img1.get("img2")
            img1 = img1["img1"]
        if heads not in ("pair", "all"):
            raise ValueError(f"heads must be 'pair' or 'all', got {heads!r}")
        same = img2 is None or img2 is img1
        if img2 is None:
            img2 = img1
        hw1, hw2 = tuple(img1.shape[-2:]), tuple(img2.shape[-2:])
        if same:
            f1, pos1 = self.encode(img1)
            f2, pos2 = f1, pos1
        elif hw1 == hw2:
            f, pos = self.encode(torch.cat([img1, img2]))  # Siamese encoder, one batch
            f1, f2 = f.chunk(2)
            pos1, pos2 = pos.chunk(2)
        else:
            (f1, pos1), (f2, pos2) = self.encode(img1), self.encode(img2)
        dec1, dec2 = self.decode(f1, pos1, f2, pos2)
        if self.heads_fp32 and torch.is_autocast_enabled(dec1[0].device.type):
            with torch.autocast(dec1[0].device.type, enabled=False):
                return self._heads([t.float() for t in dec1], [t.float() for t in dec2], hw1, hw2, heads)
        return self._heads(dec1, dec2, hw1, hw2, heads)

    def compile_regions(self) -> list[nn.Module]:
        """The repeated blocks a task compiles in place with ``compile="regional"``: every encoder and decoder
        block (blocks of one class share one compiled graph). Patch embedding, norms and the DPT heads stay eager."""
        return [*self.enc_blocks, *self.dec_blocks, *(self.dec_blocks2 or ())]

    def freeze(self, parts: list[str] | tuple[str, ...]) -> None:
        """Turn off gradients of named parts: 'encoder', 'decoder', 'pointmap_heads', 'desc', 'normal_head'."""
        groups = {
            "encoder": [self.patch_embed, self.enc_blocks, self.enc_norm],
            "decoder": [self.decoder_embed, self.dec_blocks, self.dec_blocks2, self.dec_norm],
            "pointmap_heads": [self.local_head.dpt, self.global_head.dpt],
            "desc": [self.local_head.desc_mlp, self.global_head.desc_mlp],
            "normal_head": [self.normal_head],
        }
        for p in parts:
            if p not in groups:
                raise ValueError(f"unknown part {p!r}; choose from {sorted(groups)}")
            for m in groups[p]:
                if m is not None:
                    m.requires_grad_(False)


# -------------------------------------------------------------------------------- upstream conversion
_HEAD_PREFIXES = {
    "ptsmatch_local_head.": "local_head.",
    "ptsmatch_global_head.": "global_head.",
    "normal_local_head.": "normal_head.",
}
_DROP_PREFIXES = ("mask_token", "prediction_head", "downstream_head", "scratch.layer_rn")
_POS_EMBED_KEYS = ("enc_pos_embed", "dec_pos_embed")


def _upstream_args(ckpt: dict[str, Any]) -> str | None:
    """The model-constructor string of an upstream checkpoint's ``args`` (argparse.Namespace or dict), if any."""
    args = ckpt.get("args")
    text = args.get("model") if isinstance(args, dict) else getattr(args, "model", None)
    return text if isinstance(text, str) else None


def _args_flag(text: str | None, *names: str) -> bool:
    """True when the constructor string sets one of ``names`` to True (``desc_conf=True`` / ``two_confs=True``)."""
    return bool(text) and any(re.search(rf"\b{n}\s*=\s*(True|1)\b", text) for n in names)  # type: ignore[arg-type]


def _check_position_mode(keys: Any, text: str | None) -> None:
    bad = sorted({k.removeprefix("module.") for k in keys} & set(_POS_EMBED_KEYS))
    m = re.search(r"pos_embed\s*=\s*['\"]([^'\"]+)['\"]", text or "")
    if m and m[1].startswith("ATMRoPE"):
        raise ValueError(f"checkpoint uses the ATMRoPE position mode (pos_embed={m[1]!r}), which is not implemented")
    if bad or (m and not re.fullmatch(r"RoPE\d+(\.\d+)?", m[1])):
        what = f"tensors {bad}" if bad else f"pos_embed={m[1]!r}"  # type: ignore[index]
        raise ValueError(
            f"the checkpoint uses absolute position embeddings ({what}: the 'cosine' or learned 'DINO' pos_embed "
            "modes of the released code, added to the tokens); only the RoPE100 mode is implemented here, so these "
            "weights cannot be loaded without changing the model's outputs")


def _remap_dpt(rest: str) -> str:
    m = re.match(r"^act_postprocess\.(\d)\.(.*)$", rest)
    if m:
        return f"reassemble.{m[1]}.{m[2]}"
    m = re.match(r"^scratch\.layer(\d)_rn\.(.*)$", rest)
    if m:
        return f"project.{int(m[1]) - 1}.{m[2]}"
    m = re.match(r"^scratch\.refinenet(\d)\.(resConfUnit1|resConfUnit2|out_conv)\.(.*)$", rest)
    if m:
        sub = {"resConfUnit1": "res_skip", "resConfUnit2": "res_out", "out_conv": "out_conv"}[m[2]]
        return f"fusion.{int(m[1]) - 1}.{sub}.{m[3]}"
    m = re.match(r"^head\.(.*)$", rest)
    if m:
        return f"output.{m[1]}"
    raise KeyError(rest)


def is_upstream_state_dict(state_dict: dict[str, Any]) -> bool:
    """True for the DUSt3R/MASt3R/Dens3R key layout (``enc_blocks.``, ``ptsmatch_local_head.dpt.act_postprocess``)."""
    return any(k.startswith(tuple(_HEAD_PREFIXES)) for k in state_dict) or any(
        ".dpt.act_postprocess." in k or ".dpt.scratch." in k for k in state_dict)


def convert_official_checkpoint(
    checkpoint: str | os.PathLike | dict[str, Any], shared_decoder: bool | None = None, two_stacks: str = "error",
    extra_outputs: str = "error",
) -> dict[str, torch.Tensor]:
    """Convert a released Dens3R (DUSt3R/MASt3R-layout) checkpoint to this implementation's keys.

    Args:
        checkpoint: path to the upstream ``.pth`` (read with ``weights_only=True``; its ``args`` Namespace is
            allow-listed) or an already loaded state dict / ``{'model': state_dict, ...}``.
        shared_decoder: layout of the target model: True = one decoder stack, False = two stacks, None = keep
            the checkpoint's layout.
        two_stacks: when the checkpoint has two *different* decoder stacks and the target is shared:
            ``'error'`` (default), ``'view1'`` (keep ``dec_blocks``) or ``'average'``.
        extra_outputs: outputs this implementation does not have: a descriptor confidence (``desc_conf=True`` /
            MASt3R's ``two_confs=True`` in the checkpoint's ``args``: one more channel of the descriptor MLP) and a
            normal "kappa" channel (a 4-channel normal head). ``'error'`` (default) raises; ``'drop'`` removes
            those output channels (descriptors and normals are unchanged; matching then uses the pointmap
            confidence instead of the descriptor confidence, and no kappa is predicted).

    Returns:
        A state dict for :class:`Dens3R` (``create_model(..., shared_decoder=...)``).

    Raises:
        ValueError: absolute position embeddings (``enc_pos_embed`` / ``dec_pos_embed``, a non-RoPE ``pos_embed``),
            the ATMRoPE block, unsupported extra outputs (see ``extra_outputs``) or two different decoder stacks.
    """
    if extra_outputs not in ("error", "drop"):
        raise ValueError(f"extra_outputs must be 'error' or 'drop', got {extra_outputs!r}")
    sd = _load_upstream(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    text = _upstream_args(sd)
    if "model" in sd and isinstance(sd["model"], dict):
        sd = sd["model"]
    _check_position_mode(sd.keys(), text)
    out: dict[str, torch.Tensor] = {}
    layer_rn: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        k = k[7:] if k.startswith("module.") else k
        if k.startswith("atm_block."):
            raise ValueError("checkpoint uses the ATMRoPE position mode (atm_block.*), which is not implemented")
        head = next((p for p in _HEAD_PREFIXES if k.startswith(p)), None)
        if head is not None:
            rest = k[len(head):]
            new_head = _HEAD_PREFIXES[head]
            if rest.startswith("dpt.scratch.refinenet4.resConfUnit1."):
                continue  # built but never used upstream (the coarsest level has no skip input)
            if rest.startswith("dpt.scratch.layer_rn."):
                layer_rn[new_head + rest] = v  # duplicate view of scratch.layerN_rn; checked below
                continue
            if rest.startswith("dpt."):
                out[new_head + "dpt." + _remap_dpt(rest[4:])] = v
            elif rest.startswith("head_local_features."):
                out[new_head + "desc_mlp." + rest[len("head_local_features."):]] = v
            else:
                raise KeyError(f"unexpected upstream head key {k}")
            continue
        if k.startswith(_DROP_PREFIXES):
            continue
        out[k] = v
    for k, v in layer_rn.items():  # the ModuleList aliases scratch.layer{i+1}_rn: must agree
        head, rest = k.split("dpt.scratch.layer_rn.")
        idx, param = rest.split(".", 1)
        twin = out.get(f"{head}dpt.project.{idx}.{param}")
        if twin is not None and not torch.equal(twin, v):
            raise ValueError(f"upstream {k} differs from its alias scratch.layer{int(idx) + 1}_rn")
        if twin is None:
            out[f"{head}dpt.project.{idx}.{param}"] = v
    _strip_extra_outputs(out, text, extra_outputs)
    has2 = any(k.startswith("dec_blocks2.") for k in out)
    if shared_decoder is True and has2:
        stack2 = {k: v for k, v in out.items() if k.startswith("dec_blocks2.")}
        differ = [k for k, v in stack2.items() if not torch.equal(v, out[k.replace("dec_blocks2.", "dec_blocks.", 1)])]
        if differ and two_stacks == "error":
            raise ValueError(
                f"the checkpoint has two different decoder stacks ({len(differ)} tensors differ, e.g. {differ[0]}); "
                "build the model with shared_decoder=False to load it exactly, or pass two_stacks='view1'/'average'"
            )
        if differ and two_stacks == "average":
            for k in stack2:
                k1 = k.replace("dec_blocks2.", "dec_blocks.", 1)
                out[k1] = (out[k1].float() + stack2[k].float()).div(2).to(out[k1].dtype)
        for k in stack2:
            del out[k]
    elif shared_decoder is False and not has2:
        # a shared-decoder checkpoint used by a two-stack model: both stacks start from the same weights
        for k in [k for k in out if k.startswith("dec_blocks.")]:
            out[k.replace("dec_blocks.", "dec_blocks2.", 1)] = out[k].clone()
    return out


def _strip_extra_outputs(out: dict[str, torch.Tensor], text: str | None, mode: str) -> None:
    """Descriptor-confidence and normal-kappa output channels: raise (``'error'``) or drop them in place."""
    fc2 = [k for k in out if re.match(r"^(local|global)_head\.desc_mlp\.fc2\.(weight|bias)$", k)]
    if fc2 and _args_flag(text, "desc_conf", "two_confs"):
        if mode == "error":
            raise ValueError(
                "the checkpoint's descriptor MLP also predicts a descriptor confidence (desc_conf/two_confs=True in "
                "its args): one more output channel than Dens3R(desc_dim=...) has. Pass extra_outputs='drop' to keep "
                "the descriptors and drop that channel (matching then uses the pointmap confidence)")
        w = out[fc2[0].rsplit(".", 1)[0] + ".weight"]
        p2 = int(out["patch_embed.proj.weight"].shape[-1]) ** 2
        keep = (w.shape[0] // p2 - 1) * p2  # pixel-shuffle layout: channel c = rows [c p^2, (c + 1) p^2)
        for k in fc2:
            out[k] = out[k][:keep]
    nw = out.get("normal_head.dpt.output.4.weight")
    if nw is not None and nw.shape[0] != 3:
        if nw.shape[0] != 4 or mode == "error":
            raise ValueError(
                f"the checkpoint's normal head has {nw.shape[0]} output channels (3 normal + 1 'kappa' uncertainty "
                "of normal_mode='...kappa'); this implementation predicts 3. Pass extra_outputs='drop' to drop the "
                "kappa channel (normals unchanged)" if nw.shape[0] == 4 else
                f"the checkpoint's normal head has {nw.shape[0]} output channels; 3 (or 3 + kappa) expected")
        for k in ("normal_head.dpt.output.4.weight", "normal_head.dpt.output.4.bias"):
            if k in out:
                out[k] = out[k][:3]


def _load_upstream(path: str | os.PathLike) -> dict[str, Any]:
    # upstream training checkpoints carry an argparse.Namespace under 'args': allow exactly that class
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    return ckpt


def upstream_model_kwargs(checkpoint: str | os.PathLike | dict[str, Any]) -> dict[str, Any]:
    """Infer :class:`Dens3R` constructor kwargs from an upstream checkpoint (shapes, and its ``args`` string)."""
    ckpt = _load_upstream(checkpoint) if not isinstance(checkpoint, dict) else checkpoint
    sd = ckpt["model"] if isinstance(ckpt.get("model"), dict) else ckpt
    text = _upstream_args(ckpt)
    _check_position_mode(sd.keys(), text)
    enc_dim = sd["patch_embed.proj.weight"].shape[0]
    dec_dim = sd["decoder_embed.weight"].shape[0]
    depth = lambda p: 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(p))  # noqa: E731
    kw: dict[str, Any] = dict(
        patch_size=sd["patch_embed.proj.weight"].shape[-1], enc_dim=enc_dim, dec_dim=dec_dim,
        enc_depth=depth("enc_blocks."), dec_depth=depth("dec_blocks."),
        enc_heads=max(1, enc_dim // 64), dec_heads=max(1, dec_dim // 64),
        shared_decoder=not any(k.startswith("dec_blocks2.") for k in sd),
        conf=sd["ptsmatch_local_head.dpt.head.4.weight"].shape[0] == 4,
        normal_head=any(k.startswith("normal_local_head.") for k in sd),
    )
    fc2 = sd.get("ptsmatch_local_head.head_local_features.fc2.weight")
    # a descriptor confidence (desc_conf / MASt3R two_confs) is one more fc2 output channel than the descriptor
    desc_conf = _args_flag(text, "desc_conf", "two_confs")
    kw["desc_dim"] = fc2.shape[0] // kw["patch_size"] ** 2 - int(desc_conf) if fc2 is not None else 0
    if isinstance(text, str):
        for ours, theirs in (("enc_heads", "enc_num_heads"), ("dec_heads", "dec_num_heads")):
            m = re.search(rf"{theirs}\s*=\s*(\d+)", text)
            if m:
                kw[ours] = int(m[1])
        m = re.search(r"pos_embed\s*=\s*['\"]RoPE(\d+(?:\.\d+)?)['\"]", text)
        if m:
            kw["rope_freq"] = float(m[1])
    return kw


def read_checkpoint(path: str | os.PathLike, model: Dens3R | None = None) -> dict[str, torch.Tensor]:
    """The family's reader for ``zoo.load_checkpoint``: an upstream training checkpoint (``{'model', 'args'}``) is
    converted here, with its ``args`` (they say whether the descriptor MLP has a confidence channel); any other file
    is returned as stored (unwrapped), for :func:`checkpoint_filter_fn`."""
    from ._pretrained import read_weight_file, unwrap_state_dict

    raw = read_weight_file(path)
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and "args" in raw \
            and is_upstream_state_dict(raw["model"]):
        shared = None if model is None else getattr(model, "dec_blocks2", None) is None
        return convert_official_checkpoint(raw, shared_decoder=shared)
    return unwrap_state_dict(raw, path)


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: Dens3R) -> dict[str, torch.Tensor]:
    """Remap an upstream state dict for ``model`` (used by ``create_model(..., checkpoint_path=...)``)."""
    if not is_upstream_state_dict(state_dict):
        return state_dict
    return convert_official_checkpoint(state_dict, shared_decoder=model.dec_blocks2 is None)


# --------------------------------------------------------------------------------------------- variants
def _create(name: str, pretrained: bool | str, defaults: dict[str, Any], **kwargs: Any) -> Dens3R:
    return build_model(Dens3R, name, pretrained, defaults, **kwargs)  # type: ignore[return-value]


@register_model
def dens3r_vitl16(pretrained: bool | str = False, **kwargs: Any) -> Dens3R:
    """Dens3R paper config: ViT-L/16 encoder + one shared ViT-B decoder (RoPE100 + PI), DPT heads, 512 px."""
    return _create("dens3r_vitl16", pretrained, dict(enc_dim=1024, enc_depth=24, enc_heads=16, dec_dim=768,
                                                       dec_depth=12, dec_heads=12), **kwargs)


@register_model
def dens3r_vitb16(pretrained: bool | str = False, **kwargs: Any) -> Dens3R:
    """Dens3R with a ViT-B/16 encoder + shared 512-d x 8 decoder (CroCo default widths), DPT heads."""
    return _create("dens3r_vitb16", pretrained, dict(enc_dim=768, enc_depth=12, enc_heads=12, dec_dim=512,
                                                       dec_depth=8, dec_heads=16), **kwargs)


@register_model
def dens3r_tiny(pretrained: bool | str = False, **kwargs: Any) -> Dens3R:
    """Tiny Dens3R for CPU tests: enc 64-d x 2, dec 32-d x 2, DPT 32/16, 8-d descriptors, 64 px."""
    return _create("dens3r_tiny", pretrained, dict(
        img_size=64, enc_dim=64, enc_depth=2, enc_heads=4, dec_dim=32, dec_depth=2, dec_heads=4, desc_dim=8,
        desc_hidden_ratio=2.0, head_feature_dim=32, head_last_dim=16, head_layer_dims=(16, 16, 32, 32)), **kwargs)
