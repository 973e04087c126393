"""NeuroPictor: fMRI-conditioned Stable Diffusion 2.1 + ControlNet, with cross-subject voxel adapters (STTM).

"NeuroPictor: Refining fMRI-to-Image Reconstruction via Multi-individual Pretraining and Multi-level Modulation",
Huo et al., ECCV 2024 (arXiv 2403.18211); the subject adapters follow "See Through Their Minds" (Liu et al., AAAI
2025, arXiv 2403.06361). Structure (the official code's ``cldm_fmri_surf.py``):

- fMRI encoder: an MAE-style ViT over the 256x256 single-channel cortical-surface image (patch 16 -> 256 patches +
  cls = 257 tokens of width 1024, fixed 2-D sin-cos positions, pre-norm timm blocks, final LayerNorm). It is
  fine-tuned. Its autoencoder decoder (:class:`FMRIAutoencoder`) exists only for its own pre-training objective.
- High-level semantic network (:class:`FMRIToSemantic`): tokens mixed by 1x1 Conv1d over the token axis
  (257 -> 128 -> 77), Linear, LayerNorm -> the 77x1024 cross-attention context (``clip_txt``); a parallel branch
  of the same form passes a zero-initialised Conv1d(77, 77, 3) and is added (the fine-tuning model only).
- Low-level manipulation network: a diffusers ``ControlNetModel.from_unet`` copy of the frozen SD 2.1 UNet's
  encoder whose conditioning embedding is :class:`FMRIToControl` (tokens -> (B, 320, 64, 64), zero-initialised
  output conv), added to the output of the first input block (``conv_in``) exactly where ControlNet adds its hint.
- LDM: diffusers ``UNet2DConditionModel`` / ``AutoencoderKL`` from the SD 2.1-base configs, epsilon prediction, the
  scaled-linear beta schedule 0.00085 -> 0.012 over 1000 steps, latent scale 0.18215; DDIM sampling with
  classifier-free guidance (:func:`sample_images`).
- Cross-subject adapters (STTM): a shallow per-subject ``Linear(voxels -> adapter_dim)`` into a shared space, and a
  shared stem onto the encoder's surface image; subjects whose data already is the surface image use no adapter.

The network returns :class:`NeuroPictorOutput`; losses live in ``tasks.neuropictor``.
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._builder import build_model
from ._registry import register_model

__all__ = [
    "FMRIEncoder", "FMRIAutoencoder", "FMRIToSemantic", "FMRIToControl", "SubjectAdapters", "NeuroPictor",
    "NeuroPictorOutput", "sample_images", "sincos_pos_embed_2d", "convert_official_checkpoint",
    "convert_official_fmri_autoencoder", "to_official_state_dict", "vae_to_official", "checkpoint_filter_fn",
    "SD21_UNET", "SD21_VAE", "SD21_SCHEDULER", "OPENCLIP_H14_TEXT",
]

#: SD 2.1-base UNet (diffusers config of stabilityai/stable-diffusion-2-1-base; "attention_head_dim" = heads)
SD21_UNET: dict[str, Any] = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=1024, attention_head_dim=(5, 10, 20, 20), use_linear_projection=True,
)
#: SD 2.x VAE (f = 8, 4 latent channels)
SD21_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512,
)
#: LDM's "linear" schedule (linspace of sqrt(beta), squared) is diffusers' scaled_linear; DDIM as SD's sampler
SD21_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading",
)
#: OpenCLIP ViT-H/14 text tower (laion2b_s32b_b79k), the SD 2.x text encoder
OPENCLIP_H14_TEXT: dict[str, Any] = dict(context_length=77, vocab_size=49408, width=1024, heads=16, layers=24)

MODEL_CARD: dict[str, Any] = {
    "paper": "Huo, Wang, Qian, Wang, Li, Feng, Fu. NeuroPictor: Refining fMRI-to-Image Reconstruction via "
             "Multi-individual Pretraining and Multi-level Modulation. ECCV 2024 (arXiv 2403.18211); subject "
             "adapters after Liu, Ma, Zhu, Jing, Zheng. See Through Their Minds. AAAI 2025 (arXiv 2403.06361)",
    "url": "https://arxiv.org/abs/2403.18211",
    "code": "https://github.com/jingyanghuo/neuropictor",
    "license": "architecture: paper; SD 2.1 / OpenCLIP configs: their licences (CreativeML Open RAIL++-M, MIT); "
               "this implementation: Apache-2.0 (no code copied from the official repository)",
    # The paper reports no parameter count; the official code builds the same SD 2.1 modules from the same configs.
    "reported_params_m": {},
    "component_params_m": {
        "neuropictor_sd21": "measured on the meta device: fmri_encoder 302.84 (depth 24 assumed), semantic 2.21, "
                            "unet 865.91 (frozen), controlnet 367.95 = 363.14 UNet-encoder copy + zero convs + 4.80 "
                            "fMRI->control mapper (the official ControlNet also holds an unused 1.09M image hint "
                            "block), vae 83.65 (frozen), text_encoder 354.03 (frozen); trainable 672.73; adapters: "
                            "67.17 shared stem + ~V x 1024 per voxel subject (none at paper size with NSD surfaces)",
    },
    "speed_h200": "One NVIDIA H200, commit bd1ea31, random weights (benchmarks/results/neuropictor.jsonl, "
                  "benchmarks/neuropictor_h200.sh train): the paper-size fine-tuning step of neuropictor_sd21 (batch "
                  "16, 512 px, bf16-mixed, AdamW; 672.7 M trainable of 1,976.6 M) takes 361 ms eager (44.3 "
                  "samples/s, 40.5 GiB peak) and 296 ms under torch.compile (54.1 samples/s, 31.9 GiB; cold compile "
                  "264 s). Beside the official code in one run (commit a93e229, neuropictor_h200.sh official; "
                  "their classes at random init, their pins, xformers routed to exact SDPA; their AdamW holds "
                  "676.2 M, of which the same 672.7 M are updated, while autograd computes 1,541.8 M gradients): "
                  "ours eager 359.8 ms vs theirs 557.8 ms as released (checkpointing on) = 1.55x, 466.0 ms with "
                  "checkpointing off = 1.30x; the issue's 2x target is not reached yet (compiled 296 ms is 1.88x, "
                  "not the same run). DDIM 50 steps, CFG 5.0, batch 4 at 512 px: 3.11 s eager, 1.87 s with "
                  "the UNet and ControlNet compiled (0.47 s an image; benchmarks/README.md, NeuroPictor). The steps "
                  "above ran PyTorch's default (foreach) AdamW, channels-first, the VAE encoder eager; the task now "
                  "fuses AdamW on CUDA and, with compile on, compiles the VAE encoder, and neuropictor_h200.sh "
                  "official times their two runs beside our compile_cl step (+ channels_last), ablation the eager, "
                  "eager_cl and regional_cl steps (bench_neuropictor.py --modes).",
    "deviations": [
        "fMRI encoder depth and heads are not in the official repository (they sit in the Hugging Face "
        "fMRI_AutoEncoder.yaml, not retrievable here): encoder_depth=24, encoder_heads=16 (ViT-L-like at width "
        "1024) are ASSUMPTIONS, configurable; the released encoder checkpoint fixes them when loaded.",
        "The encoder's own pre-training (UK Biobank) in the official code is a bottleneck autoencoder, not "
        "masked-patch MAE: the cls token -> Linear(1024, 2048) -> decoder with mask tokens at every patch "
        "reconstructs the whole surface (loss over the valid-surface mask). FMRIAutoencoder follows the code; "
        "decoder width 512 / depth 8 are ASSUMPTIONS (not retrievable). UKB pre-training data are not available here.",
        "Semantic-loss target: default 'penultimate' (OpenCLIP ViT-H/14 text transformer without its last block, "
        "then ln_final), as the spec states. The official code's training target (encode_text_final) runs all 24 "
        "blocks; sem_target_layer='final' reproduces it. The cross-attention context for CFG's unconditional "
        "branch is the penultimate embedding of the empty string in both.",
        "STTM's adapter form, shared-decoder depth/width, loss weights (GVLC/FVC) are not published (repository "
        "holds only a README). ASSUMPTIONS here: a subject adapter is LayerNorm + Linear(voxels -> adapter_dim "
        "= 1024) + GELU (+ dropout); a shared Linear(adapter_dim -> adapter_grid^2) stem paints the encoder's "
        "surface image (bilinear to the surface size when adapter_grid differs); the 'shared deep decoder' is the "
        "whole NeuroPictor network. STTM's contrastive losses and diffusion prior are not implemented.",
        "Subjects given as a 256x256 surface image (NSD as the authors preprocess it) use no adapter, exactly the "
        "NeuroPictor model; voxel subjects (Haxby, synthetic) need one. A batch holds one subject when adapters "
        "are used (their voxel counts differ).",
        "The official ControlNet keeps ControlNet's unused image hint block (input_hint_block, 1.09M params); it is "
        "dropped here (convert_official_checkpoint discards those keys). Its fMRI mapper becomes the diffusers "
        "ControlNet's controlnet_cond_embedding, which adds it after conv_in (= the official first input block).",
        "unet_encoder_no_grad=True reproduces the multi-subject pre-training's no_grad over the frozen UNet's input "
        "and middle blocks (the context then reaches the semantic network only through the UNet's output blocks "
        "and the ControlNet); the fine-tuning model (default False) backpropagates through all of them.",
        "Category head (num_classes > 0) on the encoder's cls token exists only for the Haxby demo; not in the paper. "
        "Measured (configs/neuropictor/demo.yaml, 8 epochs on runs 1-9, ~6 min wall on 2 shared CPU cores): "
        "held-out runs 11-12 category accuracy 0.479 vs 0.556 for a scikit-learn logistic regression on the same "
        "voxels and runs (chance 0.125) — the linear baseline wins.",
        "Tiny variant: no VAE (pixel-space diffusion on a small image), tiny OpenCLIP-form text tower; for tests "
        "and the CPU demo only.",
        "The released checkpoints (Hugging Face Fudan-fMRI/neuropictor, ~100 GB incl. data) are not mirrored: the "
        "manifest lists no weight; convert a downloaded .ckpt with convert_official_checkpoint / "
        "create_model(..., pretrained='path/to/epoch.ckpt').",
    ],
}


# --------------------------------------------------------------------------------------------------- building blocks
def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, cls_token: bool = True) -> torch.Tensor:
    """MAE's fixed 2-D sin-cos position embedding, (1 + h*w, dim) with a zero row for the cls token.

    Half of the channels encode the row, half the column; each half is [sin(pos * omega), cos(pos * omega)] with
    omega = 1 / 10000^(k / (dim/4)).
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64), torch.arange(grid_w, dtype=torch.float64),
                            indexing="ij")

    def enc(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    # MAE builds the grid as (w, h) and encodes grid[0] (column index) first
    emb = torch.cat([enc(xs), enc(ys)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, dim, dtype=emb.dtype), emb], dim=0)
    return emb.float()


class FMRIEncoder(nn.Module):
    """MAE-style ViT over the cortical-surface image: (B, C, H, W) -> (B, 1 + (H/p)(W/p), D) after the final LN.

    Args:
        surface_size: surface image side (256 in the paper).
        patch_size: patch side (16 -> 256 patches).
        in_chans: surface channels (1).
        embed_dim: width (1024).
        depth: transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden ratio.
        drop_path_rate: stochastic depth of every block (the official encoder uses one rate for all).
    """

    def __init__(self, surface_size: int = 256, patch_size: int = 16, in_chans: int = 1, embed_dim: int = 1024,
                 depth: int = 24, num_heads: int = 16, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0) -> None:
        super().__init__()
        from timm.layers import PatchEmbed
        from timm.models.vision_transformer import Block

        if surface_size % patch_size:
            raise ValueError(f"surface_size {surface_size} is not a multiple of patch_size {patch_size}")
        self.surface_size, self.patch_size, self.in_chans = surface_size, patch_size, in_chans
        self.grid = surface_size // patch_size
        self.num_tokens = self.grid ** 2 + 1
        self.embed_dim = embed_dim
        self.patch_embed = PatchEmbed(surface_size, patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        # a fixed parameter (requires_grad False) as in MAE: it is part of the released state dict
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(embed_dim, self.grid, self.grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, drop_path=drop_path_rate) for _ in range(depth)
        )
        self.norm = nn.LayerNorm(embed_dim)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, surface: torch.Tensor) -> torch.Tensor:
        if surface.ndim != 4 or surface.shape[1:] != (self.in_chans, self.surface_size, self.surface_size):
            raise ValueError(f"fMRI surface must be (B, {self.in_chans}, {self.surface_size}, {self.surface_size}), "
                             f"got {tuple(surface.shape)}")
        x = self.patch_embed(surface) + self.pos_embed[:, 1:]
        cls = (self.cls_token + self.pos_embed[:, :1]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls, x], dim=1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class FMRIAutoencoder(nn.Module):
    """The encoder's pre-training model (official ``fMRI_Autoencoder``): the cls token is projected to a
    ``latent_dim`` code; a ViT decoder with a mask token at every patch reconstructs the whole surface from it.

    Args:
        encoder: an :class:`FMRIEncoder`.
        latent_dim: bottleneck code width (2048 upstream).
        decoder_dim: decoder width (assumed 512).
        decoder_depth: decoder blocks (assumed 8).
        decoder_heads: decoder heads (upstream: the encoder's).
    """

    def __init__(self, encoder: FMRIEncoder, latent_dim: int = 2048, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.encoder = encoder
        g, p, c = encoder.grid, encoder.patch_size, encoder.in_chans
        self.pred = nn.Linear(encoder.embed_dim, latent_dim)
        self.decoder_embed = nn.Linear(latent_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed = nn.Parameter(sincos_pos_embed_2d(decoder_dim, g, g)[None], requires_grad=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, 4.0, qkv_bias=True)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim)
        self.decoder_pred = nn.Linear(decoder_dim, p * p * c)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, surface: torch.Tensor) -> torch.Tensor:
        """Surface (B, C, H, W) -> its reconstruction (B, C, H, W)."""
        from einops import rearrange

        code = self.pred(self.encoder(surface)[:, :1])
        z = self.decoder_embed(code)
        e = self.encoder
        z = torch.cat([z, self.mask_token.expand(z.shape[0], e.grid ** 2, -1)], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            z = blk(z)
        patches = self.decoder_pred(self.decoder_norm(z))[:, 1:]
        return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=e.grid, p=e.patch_size, c=e.in_chans)


class FMRIToSemantic(nn.Module):
    """High-level semantic network: tokens (B, N, D) -> context (B, L, Dc) and ``clip_txt`` (B, L, Dc).

    Token mixing is a 1x1 Conv1d over the token axis (tokens as channels) N -> N//2 -> L, then Linear(D, Dc) and
    LayerNorm. The parallel branch of the same form passes a zero-initialised Conv1d(L, L, 3) and is added to
    ``clip_txt`` when ``use_extra`` (the fine-tuning model); the pre-training model uses ``clip_txt`` alone.

    Args:
        num_tokens: encoder tokens N (257).
        token_dim: encoder width D (1024).
        context_len: context length L (77).
        context_dim: context width Dc (1024).
        use_extra: add the zero-initialised extra branch.
    """

    def __init__(self, num_tokens: int = 257, token_dim: int = 1024, context_len: int = 77, context_dim: int = 1024,
                 use_extra: bool = True) -> None:
        super().__init__()
        hidden = num_tokens // 2
        self.use_extra = use_extra
        self.channel_mapper = nn.Sequential(nn.Conv1d(num_tokens, hidden, 1), nn.Conv1d(hidden, context_len, 1))
        self.dim_mapper = nn.Linear(token_dim, context_dim)
        self.norm = nn.LayerNorm(context_dim)
        self.extra_clip = nn.Sequential(nn.Conv1d(num_tokens, hidden, 1), nn.Conv1d(hidden, context_len, 1),
                                        nn.Linear(token_dim, context_dim), nn.LayerNorm(context_dim))
        self.extra_clip_out = nn.Conv1d(context_len, context_len, 3, padding=1)
        nn.init.zeros_(self.extra_clip_out.weight)
        nn.init.zeros_(self.extra_clip_out.bias)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        clip_txt = self.norm(self.dim_mapper(self.channel_mapper(tokens)))
        if not self.use_extra:
            return clip_txt, clip_txt
        return clip_txt + self.extra_clip_out(self.extra_clip(tokens)), clip_txt


class FMRIToControl(nn.Module):
    """Low-level mapper: tokens (B, N, D) -> hint (B, C, S, S) for the ControlNet (C = 320, S = 64 in the paper).

    Conv1d(N, 2N, 1) -> Conv1d(2N, C, 1) over the token axis, Linear(D, S*S) + SiLU, a zero-initialised
    Conv1d(C, C, 3), reshape. Used as the diffusers ControlNet's ``controlnet_cond_embedding``.

    Args:
        num_tokens: encoder tokens N.
        token_dim: encoder width D.
        out_channels: ControlNet's first-block width C.
        out_size: latent side S.
    """

    def __init__(self, num_tokens: int = 257, token_dim: int = 1024, out_channels: int = 320, out_size: int = 64
                 ) -> None:
        super().__init__()
        self.out_channels, self.out_size = out_channels, out_size
        self.channel_mapper = nn.Sequential(nn.Conv1d(num_tokens, num_tokens * 2, 1),
                                            nn.Conv1d(num_tokens * 2, out_channels, 1))
        self.dim_mapper = nn.Sequential(nn.Linear(token_dim, out_size ** 2), nn.SiLU())
        self.out = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.out(self.dim_mapper(self.channel_mapper(tokens)))
        return x.reshape(-1, self.out_channels, self.out_size, self.out_size)


class SubjectAdapters(nn.Module):
    """STTM-style cross-subject adapters: one shallow adapter per voxel subject into a shared ``adapter_dim`` space,
    then a shared stem that paints the encoder's surface image (the configurable assumptions of the model card).

    Args:
        subjects: subject name -> voxel count.
        adapter_dim: shared-space width.
        surface_size: encoder surface side.
        adapter_grid: side of the painted grid (bilinear to ``surface_size`` when smaller).
        in_chans: surface channels.
        dropout: dropout on the shared-space code.
    """

    def __init__(self, subjects: dict[str, int], adapter_dim: int, surface_size: int, adapter_grid: int,
                 in_chans: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.adapter_dim, self.surface_size, self.grid, self.in_chans = adapter_dim, surface_size, adapter_grid, in_chans
        self.adapters = nn.ModuleDict({str(s): self._adapter(int(v)) for s, v in subjects.items()})
        self.dropout = nn.Dropout(dropout)
        # the shared stem exists once there is a voxel subject (a surface-only model has no adapter parameters)
        self.stem = nn.Linear(adapter_dim, in_chans * adapter_grid ** 2) if subjects else None

    def _adapter(self, num_voxels: int) -> nn.Module:
        if num_voxels < 1:
            raise ValueError(f"a subject adapter needs at least one voxel, got {num_voxels}")
        return nn.Sequential(nn.LayerNorm(num_voxels), nn.Linear(num_voxels, self.adapter_dim), nn.GELU())

    def add_subject(self, name: str, num_voxels: int) -> nn.Module:
        """Add (and return) a new subject's adapter: the "new subject = train only its adapter" workflow."""
        if name in self.adapters:
            raise ValueError(f"subject {name!r} already has an adapter")
        if self.stem is None:
            self.stem = nn.Linear(self.adapter_dim, self.in_chans * self.grid ** 2)
        ref = self.stem.weight
        self.adapters[name] = self._adapter(num_voxels).to(device=ref.device, dtype=ref.dtype)
        return self.adapters[name]

    def num_voxels(self, subject: str) -> int:
        return self.adapters[subject][0].normalized_shape[0]

    def forward(self, voxels: torch.Tensor, subject: str) -> torch.Tensor:
        """Voxels (B, V) of one subject -> surface image (B, C, S, S)."""
        if subject not in self.adapters:
            raise KeyError(f"no adapter for subject {subject!r}; known: {sorted(self.adapters)} (add_subject() adds one)")
        if voxels.ndim != 2 or voxels.shape[1] != self.num_voxels(subject):
            raise ValueError(f"subject {subject!r} expects voxels (B, {self.num_voxels(subject)}), "
                             f"got {tuple(voxels.shape)}")
        x = self.stem(self.dropout(self.adapters[subject](voxels)))
        x = x.reshape(-1, self.in_chans, self.grid, self.grid)
        if self.grid != self.surface_size:
            x = F.interpolate(x, size=(self.surface_size, self.surface_size), mode="bilinear", align_corners=False)
        return x


# -------------------------------------------------------------------------------------------------------- the model
@dataclass
class NeuroPictorOutput:
    """``eps``: predicted noise (B, C, h, w); ``clip_txt``: the semantic prediction (B, L, Dc) the semantic loss
    compares with the text features; ``context``: the cross-attention context used; ``logits``: category logits
    (B, K) when the model has a category head, else None."""

    eps: torch.Tensor
    clip_txt: torch.Tensor
    context: torch.Tensor
    logits: torch.Tensor | None = None


class NeuroPictor(nn.Module):
    """NeuroPictor (fMRI encoder + semantic network + fMRI ControlNet on a frozen SD 2.1 UNet), with subject adapters.

    Args:
        surface_size: side of the cortical-surface image the encoder reads.
        patch_size: encoder patch side.
        in_chans: surface channels.
        encoder_dim: encoder width.
        encoder_depth: encoder blocks (24 assumed at paper size; see the card).
        encoder_heads: encoder heads.
        drop_path_rate: encoder stochastic depth.
        context_len: cross-attention context length (77).
        context_dim: context width (1024 = OpenCLIP ViT-H/14 text width = the UNet's cross_attention_dim).
        semantic_extra: add the zero-initialised extra semantic branch (fine-tuning model; off in pre-training).
        unet: diffusers ``UNet2DConditionModel`` config (default SD 2.1-base).
        vae: diffusers ``AutoencoderKL`` config, or None for pixel-space diffusion (tiny variant).
        vae_scale: latent scaling factor.
        image_size: generated image side (512).
        text_encoder: OpenCLIP ``TextTransformer`` config for the semantic target and the unconditional context, or
            None (then the unconditional context is zeros and no semantic target can be computed).
        sem_target_layer: semantic-loss target: 'penultimate' (spec) or 'final' (the official code).
        scheduler: diffusers scheduler config (SD 2.1's).
        unet_encoder_no_grad: run the frozen UNet's down and middle blocks without gradient to the context
            (the official multi-subject pre-training).
        subjects: voxel subjects -> voxel counts (each gets an adapter); surface subjects need none.
        adapter_dim: adapters' shared-space width.
        adapter_grid: side of the grid the shared stem paints (then resized to ``surface_size``).
        adapter_dropout: dropout on the shared-space code.
        num_classes: category head on the encoder's cls token (0 = none; the Haxby demo uses it).
        sd21_path: a local diffusers-format SD 2.1 folder (``unet/``, ``vae/`` safetensors) loaded before the
            ControlNet is copied from the UNet.
        text_encoder_path: a local OpenCLIP ViT-H/14 checkpoint (``open_clip_pytorch_model.bin``/safetensors).
        fmri_encoder_path: the official UKB fMRI autoencoder checkpoint (``checkpoint_120000.pth``); its decoder
            is dropped.
    """

    def __init__(
        self,
        surface_size: int = 256,
        patch_size: int = 16,
        in_chans: int = 1,
        encoder_dim: int = 1024,
        encoder_depth: int = 24,
        encoder_heads: int = 16,
        drop_path_rate: float = 0.0,
        context_len: int = 77,
        context_dim: int = 1024,
        semantic_extra: bool = True,
        unet: dict[str, Any] | None = None,
        vae: dict[str, Any] | None = None,
        vae_scale: float = 0.18215,
        image_size: int = 512,
        text_encoder: dict[str, Any] | None = None,
        sem_target_layer: str = "penultimate",
        scheduler: dict[str, Any] | None = None,
        unet_encoder_no_grad: bool = False,
        subjects: dict[str, int] | None = None,
        adapter_dim: int = 1024,
        adapter_grid: int | None = None,
        adapter_dropout: float = 0.0,
        num_classes: int = 0,
        sd21_path: str | None = None,
        text_encoder_path: str | None = None,
        fmri_encoder_path: str | None = None,
    ) -> None:
        super().__init__()
        from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel

        if sem_target_layer not in ("penultimate", "final"):
            raise ValueError(f"sem_target_layer must be 'penultimate' or 'final', got {sem_target_layer!r}")
        unet_cfg = dict(SD21_UNET if unet is None else unet)
        if unet_cfg.get("cross_attention_dim") != context_dim:
            raise ValueError(f"the UNet's cross_attention_dim {unet_cfg.get('cross_attention_dim')} must equal "
                             f"context_dim {context_dim}")
        self.image_size, self.vae_scale, self.sem_target_layer = image_size, vae_scale, sem_target_layer
        self.context_len, self.context_dim = context_len, context_dim
        self.unet_encoder_no_grad = unet_encoder_no_grad
        self.scheduler_config = dict(SD21_SCHEDULER if scheduler is None else scheduler)
        self.fmri_encoder = FMRIEncoder(surface_size, patch_size, in_chans, encoder_dim, encoder_depth, encoder_heads,
                                        drop_path_rate=drop_path_rate)
        n = self.fmri_encoder.num_tokens
        self.semantic = FMRIToSemantic(n, encoder_dim, context_len, context_dim, use_extra=semantic_extra)
        self.unet = UNet2DConditionModel(**unet_cfg)
        self.vae = AutoencoderKL(**vae) if vae is not None else None
        factor = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        if image_size % factor:
            raise ValueError(f"image_size {image_size} is not a multiple of the VAE factor {factor}")
        self.latent_size = image_size // factor
        self.latent_channels = self.unet.config.in_channels
        if sd21_path:
            self._load_sd21(Path(sd21_path))
        # ControlNet = a copy of the (loaded) UNet's encoder with zero-initialised output convolutions
        self.controlnet = ControlNetModel.from_unet(self.unet)
        self.controlnet.controlnet_cond_embedding = FMRIToControl(
            n, encoder_dim, self.unet.config.block_out_channels[0], self.latent_size)
        self.text_encoder = self._text_tower(text_encoder) if text_encoder is not None else None
        if text_encoder_path and self.text_encoder is not None:
            self._load_text_encoder(Path(text_encoder_path))
        self.adapters = SubjectAdapters(subjects or {}, adapter_dim, surface_size, adapter_grid or surface_size,
                                        in_chans, adapter_dropout)
        self.category_head = nn.Linear(encoder_dim, num_classes) if num_classes > 0 else None
        self.num_classes = num_classes
        for frozen in (self.unet, self.vae, self.text_encoder):
            if frozen is not None:
                frozen.requires_grad_(False)
        if fmri_encoder_path:
            self.load_fmri_encoder(fmri_encoder_path)
        if unet_encoder_no_grad:
            for blk in [*self.unet.down_blocks, self.unet.mid_block]:
                blk.register_forward_pre_hook(_detach_context, with_kwargs=True)

    # ------------------------------------------------------------------------------------------ external weights
    @staticmethod
    def _text_tower(cfg: dict[str, Any]) -> nn.Module:
        from open_clip.transformer import TextTransformer

        return TextTransformer(**{**cfg, "output_dim": cfg.get("output_dim", cfg["width"])})

    def _load_sd21(self, folder: Path) -> None:
        from safetensors.torch import load_file

        for sub, module in (("unet", self.unet), ("vae", self.vae)):
            if module is None:
                continue
            files = sorted((folder / sub).glob("diffusion_pytorch_model*.safetensors"))
            if not files:
                raise FileNotFoundError(f"sd21_path: {folder / sub} holds no diffusion_pytorch_model.safetensors "
                                        "(expected a diffusers-format stabilityai/stable-diffusion-2-1-base folder)")
            module.load_state_dict(load_file(files[0]), strict=True)

    def _load_text_encoder(self, path: Path) -> None:
        from ._pretrained import load_state_dict_file

        sd = load_state_dict_file(path)
        keep = ("token_embedding.", "positional_embedding", "transformer.", "ln_final.", "text_projection")
        sd = {k: v for k, v in sd.items() if k.startswith(keep)}
        self.text_encoder.load_state_dict(sd, strict=False)
        missing = [k for k in self.text_encoder.state_dict() if k not in sd and k != "attn_mask"]
        if missing:
            raise KeyError(f"{path}: no OpenCLIP text weights for {missing[:5]}")

    def load_fmri_encoder(self, path: str | os.PathLike) -> None:
        """Load the official UKB fMRI autoencoder checkpoint (``{'model': state_dict}``); the decoder is dropped."""
        from ._pretrained import read_weight_file, unwrap_state_dict

        obj = read_weight_file(path)
        sd = obj["model"] if isinstance(obj, dict) and "model" in obj else unwrap_state_dict(obj, path)
        enc = {k[len("encoder."):]: v for k, v in convert_official_fmri_autoencoder(sd).items()
               if k.startswith("encoder.")}
        self.fmri_encoder.load_state_dict(enc, strict=True)

    # ------------------------------------------------------------------------------------------------ pieces
    def compile_regions(self) -> list[nn.Module]:
        """Blocks for ``compile='regional'``: the encoder blocks and the UNet / ControlNet down and up blocks."""
        return [*self.fmri_encoder.blocks, *self.unet.down_blocks, *self.unet.up_blocks,
                *self.controlnet.down_blocks]

    def trainable_parameters(self, freeze_shared: bool = False, subject: str | None = None) -> list[nn.Parameter]:
        """What the optimiser updates: the encoder, semantic network, ControlNet (with its fMRI mapper), adapters
        and category head (the UNet, VAE and text tower stay frozen). ``freeze_shared=True``: only the adapters
        (of ``subject`` when given) — a new subject is added by training its adapter alone."""
        if freeze_shared:
            mods = [self.adapters.adapters[subject]] if subject else [self.adapters.adapters]
            return [p for m in mods for p in m.parameters()]
        mods = [self.fmri_encoder, self.semantic, self.controlnet, self.adapters, self.category_head]
        return [p for m in mods if m is not None for p in m.parameters() if p.requires_grad]

    def encode_fmri(self, fmri: torch.Tensor, subject: str | None = None) -> torch.Tensor:
        """fMRI -> encoder tokens (B, N, D): a surface image (B, C, S, S), or voxels (B, V) with ``subject``."""
        if fmri.ndim == 2:
            if subject is None:
                raise ValueError("voxel input (B, V) needs subject= (the adapter to use)")
            fmri = self.adapters(fmri, subject)
        return self.fmri_encoder(fmri)

    def condition(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder tokens -> (context (B, L, Dc), clip_txt (B, L, Dc))."""
        return self.semantic(tokens)

    def classify(self, tokens: torch.Tensor) -> torch.Tensor | None:
        return self.category_head(tokens[:, 0]) if self.category_head is not None else None

    def denoise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor, tokens: torch.Tensor,
                control_scale: float = 1.0) -> torch.Tensor:
        """Noise prediction of the UNet under the fMRI ControlNet (its hint is computed from ``tokens``)."""
        down, mid = self.controlnet(noisy, timesteps, encoder_hidden_states=context, controlnet_cond=tokens,
                                    conditioning_scale=control_scale, return_dict=False)
        return self.unet(noisy, timesteps, encoder_hidden_states=context, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid, return_dict=False)[0]

    def forward(self, fmri: torch.Tensor, noisy_latents: torch.Tensor, timesteps: torch.Tensor,
                subject: str | None = None, uncond_mask: torch.Tensor | None = None) -> NeuroPictorOutput:
        """One training forward: fMRI + noisy latents at ``timesteps`` -> predicted noise.

        ``uncond_mask`` (B,) bool replaces those samples' context by the unconditional (empty-text) context, the
        5% masking of the CFG fine-tuning stage; the control hint is kept (as the official sampler's uncond branch).
        """
        if noisy_latents.shape[1:] != (self.latent_channels, self.latent_size, self.latent_size):
            raise ValueError(f"noisy latents must be (B, {self.latent_channels}, {self.latent_size}, "
                             f"{self.latent_size}), got {tuple(noisy_latents.shape)}")
        tokens = self.encode_fmri(fmri, subject)
        context, clip_txt = self.condition(tokens)
        if uncond_mask is not None and bool(uncond_mask.any()):
            context = torch.where(uncond_mask[:, None, None], self.uncond_context(context.shape[0]).to(context),
                                  context)
        eps = self.denoise(noisy_latents, timesteps, context, tokens)
        return NeuroPictorOutput(eps=eps, clip_txt=clip_txt, context=context, logits=self.classify(tokens))

    # --------------------------------------------------------------------------------------- text and latents
    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """OpenCLIP BPE tokens (B, context_length) for the text tower."""
        import open_clip

        ctx = self.text_encoder.context_length if self.text_encoder is not None else self.context_len
        return open_clip.tokenize(list(captions), context_length=ctx).to(self._device())

    def encode_text(self, captions: list[str] | torch.Tensor, layer: str | None = None) -> torch.Tensor:
        """OpenCLIP token features (B, L, Dc) after ln_final: 'penultimate' (SD 2.x's context) or 'final'."""
        if self.text_encoder is None:
            raise RuntimeError("this NeuroPictor has no text_encoder: the semantic target cannot be computed")
        tokens = captions if isinstance(captions, torch.Tensor) else self.tokenize(captions)
        te, layer = self.text_encoder, layer or self.sem_target_layer
        x = te.token_embedding(tokens) + te.positional_embedding[: tokens.shape[1]]
        blocks = te.transformer.resblocks
        mask = te.attn_mask[: tokens.shape[1], : tokens.shape[1]] if te.attn_mask is not None else None
        for blk in blocks[: len(blocks) - (1 if layer == "penultimate" else 0)]:
            x = blk(x, attn_mask=mask)
        return te.ln_final(x)

    def uncond_context(self, batch_size: int) -> torch.Tensor:
        """The unconditional context: the penultimate text features of the empty string (zeros without a text tower)."""
        if self.text_encoder is None:
            return torch.zeros(batch_size, self.context_len, self.context_dim, device=self._device())
        with torch.no_grad():
            return self.encode_text([""], layer="penultimate").expand(batch_size, -1, -1)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] (B, 3, H, W) -> scaled latents (the VAE posterior mean when ``sample`` is off)."""
        if self.vae is None:
            return images
        with torch.no_grad():
            return self.vae.encode(images).latent_dist.sample() * self.vae_scale

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> images in [-1, 1]."""
        if self.vae is None:
            return latents
        return self.vae.decode(latents / self.vae_scale).sample

    def _device(self) -> torch.device:
        return self.unet.conv_in.weight.device


def _detach_context(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Forward pre-hook: the block sees a detached context (the official pre-training's no_grad UNet encoder)."""
    if kwargs.get("encoder_hidden_states") is not None:
        kwargs = {**kwargs, "encoder_hidden_states": kwargs["encoder_hidden_states"].detach()}
    return args, kwargs


# --------------------------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def sample_images(model: NeuroPictor, fmri: torch.Tensor, subject: str | None = None, steps: int = 50,
                  guidance_scale: float = 5.0, eta: float = 0.0, generator: torch.Generator | None = None,
                  control_scale: float = 1.0) -> torch.Tensor:
    """DDIM sampling with classifier-free guidance (paper: 50 steps, eta 0, scale 5.0): fMRI -> images in [0, 1].

    The unconditional branch uses the empty-text context and keeps the fMRI control hint (the official sampler's
    ``uc_cat = c_cat``). ``guidance_scale`` 1 (or less) runs the conditional branch alone.
    """
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    tokens = model.encode_fmri(fmri, subject)
    context, _ = model.condition(tokens)
    b = tokens.shape[0]
    shape = (b, model.latent_channels, model.latent_size, model.latent_size)
    x = torch.randn(shape, generator=generator, device=generator.device if generator else "cpu").to(context)
    x = x * sched.init_noise_sigma
    cfg = guidance_scale > 1.0
    if cfg:
        context = torch.cat([context, model.uncond_context(b).to(context)])
        tokens = torch.cat([tokens, tokens])
    for t in sched.timesteps:
        inp = torch.cat([x, x]) if cfg else x
        eps = model.denoise(inp, t.expand(inp.shape[0]).to(x.device), context, tokens, control_scale)
        if cfg:
            eps_c, eps_u = eps.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        x = sched.step(eps, t, x, eta=eta, generator=generator).prev_sample
    return ((model.decode_latents(x).float() + 1) / 2).clamp(0, 1)


# ----------------------------------------------------------------------------------------- official checkpoint keys
# the official LatentDiffusion (cldm_fmri_*) module prefixes -> ours
_LDM_UNET, _LDM_CONTROL, _LDM_VAE, _LDM_TEXT = "model.diffusion_model.", "control_model.", "first_stage_model.", \
    "cond_stage_model.model."
#: official keys without a counterpart here: the diffusion buffers (recomputed from the schedule), ControlNet's
#: unused image hint block, the CLIP image tower / logit scale / attention mask, EMA bookkeeping
_OFFICIAL_DROPPED = re.compile(
    r"^(betas|alphas_cumprod|alphas_cumprod_prev|sqrt_.*|log_one_minus_alphas_cumprod|posterior_.*|logvar|"
    r"model_ema\..*|control_model\.input_hint_block\..*|cond_stage_model\.model\.(visual\..*|logit_scale|attn_mask))$"
)


def _unet_ldm_config(model_cfg: Any) -> dict[str, Any]:
    return {"layers_per_block": model_cfg.layers_per_block}


def convert_official_fmri_autoencoder(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The official UKB ``Neural_fMRI2fMRI`` state dict (``transformer.*``, optionally ``module.``) -> the keys of
    :class:`FMRIAutoencoder` (``encoder.*`` for the encoder half)."""
    enc_keys = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")
    out = {}
    for k, v in state_dict.items():
        k = k.removeprefix("module.").removeprefix("transformer.")
        out[("encoder." + k) if k.startswith(enc_keys) else k] = v
    return out


def convert_official_checkpoint(state_dict: dict[str, torch.Tensor], model: NeuroPictor) -> dict[str, torch.Tensor]:
    """An official NeuroPictor Lightning checkpoint (``cldm_fmri_surf`` / ``cldm_fmri_pret``, its ``state_dict``) ->
    this module's keys. The SD parts go through diffusers' own LDM converters; ControlNet's unused image hint
    block, the diffusion buffers and the CLIP image tower are dropped.

    Raises:
        KeyError: an official key this port does not know.
    """
    from diffusers.loaders.single_file_utils import (
        convert_controlnet_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    sd = {k: v for k, v in sd.items() if not _OFFICIAL_DROPPED.match(k)}
    out: dict[str, torch.Tensor] = {}
    taken: set[str] = set()

    def take(prefix: str) -> dict[str, torch.Tensor]:
        part = {k: v for k, v in sd.items() if k.startswith(prefix)}
        taken.update(part)
        return part

    lpb = model.unet.config.layers_per_block
    up_attn = ["CrossAttn" in t for t in model.unet.config.up_block_types]

    # diffusers' converters skip keys they do not know: a UNet / ControlNet key counts as taken only when a
    # converted key maps back to it (so an unknown one is reported below)
    unet_part = take(_LDM_UNET)
    if unet_part:
        conv = convert_ldm_unet_checkpoint(unet_part, _unet_ldm_config(model.unet.config))
        taken.difference_update(unet_part)
        taken.update(_LDM_UNET + _ldm_unet_key(k, lpb, up_attn) for k in conv)
        out |= {f"unet.{k}": v for k, v in conv.items()}
    ctrl = take(_LDM_CONTROL)
    mapper = {k[len(_LDM_CONTROL + "fmri_mapper."):]: v for k, v in ctrl.items()
              if k.startswith(_LDM_CONTROL + "fmri_mapper.")}
    rest = {k[len(_LDM_CONTROL):]: v for k, v in ctrl.items() if not k.startswith(_LDM_CONTROL + "fmri_mapper.")}
    if rest:
        conv = {k: v for k, v in convert_controlnet_checkpoint(rest, _unet_ldm_config(model.controlnet.config)).items()
                if v is not None and not k.startswith("controlnet_cond_embedding.")}
        taken.difference_update(_LDM_CONTROL + k for k in rest)
        taken.update(_LDM_CONTROL + _ldm_unet_key(k, lpb, up_attn) for k in conv)
        taken.update(_LDM_CONTROL + "fmri_mapper." + k for k in mapper)
        out |= {f"controlnet.{k}": v for k, v in conv.items()}
    out |= {f"controlnet.controlnet_cond_embedding.{k}": v for k, v in mapper.items()}
    vae_part = take(_LDM_VAE)
    if vae_part and model.vae is not None:
        out |= {f"vae.{k}": v for k, v in convert_ldm_vae_checkpoint(vae_part, dict(model.vae.config)).items()}
    for k, v in take(_LDM_TEXT).items():
        out[f"text_encoder.{k[len(_LDM_TEXT):]}"] = v
    for k, v in take("fmri_encoder.").items():
        out[f"fmri_encoder.{k[len('fmri_encoder.transformer.'):]}"] = v
    for k, v in take("cond_stage.").items():
        out[f"semantic.{k[len('cond_stage.'):]}"] = v
    unknown = [k for k in sd if k not in taken]
    if unknown:
        raise KeyError(f"official NeuroPictor keys without a counterpart: {unknown[:8]}")
    return out


def _ldm_resnet(rest: str) -> str:
    for ours, theirs in (("norm1.", "in_layers.0."), ("conv1.", "in_layers.2."), ("time_emb_proj.", "emb_layers.1."),
                         ("norm2.", "out_layers.0."), ("conv2.", "out_layers.3."), ("conv_shortcut.", "skip_connection.")):
        if rest.startswith(ours):
            return theirs + rest[len(ours):]
    raise KeyError(rest)


def _ldm_unet_key(k: str, lpb: int, up_has_attn: list[bool]) -> str:
    """A diffusers UNet / ControlNet key -> the LDM (openaimodel) key (the inverse of diffusers' converter)."""
    fixed = {"time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
             "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
             "controlnet_mid_block.": "middle_block_out.0."}
    for ours, theirs in fixed.items():
        if k.startswith(ours):
            return theirs + k[len(ours):]
    if m := re.match(r"controlnet_down_blocks\.(\d+)\.(.*)", k):
        return f"zero_convs.{m[1]}.0.{m[2]}"
    if m := re.match(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
        i = (lpb + 1) * int(m[1]) + int(m[3]) + 1
        return f"input_blocks.{i}.0.{_ldm_resnet(m[4])}" if m[2] == "resnets" else f"input_blocks.{i}.1.{m[4]}"
    if m := re.match(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", k):
        return f"input_blocks.{(lpb + 1) * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.match(r"mid_block\.(resnets|attentions)\.(\d+)\.(.*)", k):
        return f"middle_block.{2 * int(m[2])}.{_ldm_resnet(m[3])}" if m[1] == "resnets" else f"middle_block.1.{m[3]}"
    if m := re.match(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.*)", k):
        i = (lpb + 1) * int(m[1]) + int(m[3])
        return f"output_blocks.{i}.0.{_ldm_resnet(m[4])}" if m[2] == "resnets" else f"output_blocks.{i}.1.{m[4]}"
    if m := re.match(r"up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
        i = int(m[1])
        return f"output_blocks.{(lpb + 1) * i + lpb}.{2 if up_has_attn[i] else 1}.{m[2]}"
    raise KeyError(f"no LDM counterpart for {k!r}")


def _ldm_vae_key(k: str, num_up: int) -> str:
    """A diffusers ``AutoencoderKL`` key -> the LDM ``first_stage_model`` key (the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``; the decoder's up blocks run in reverse order there)."""
    def resnet(rest: str) -> str:
        return rest.replace("conv_shortcut.", "nin_shortcut.", 1) if rest.startswith("conv_shortcut.") else rest

    k = re.sub(r"^(encoder|decoder)\.conv_norm_out\.", r"\1.norm_out.", k)
    if m := re.match(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.*)", k):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{resnet(m[3])}"
    if m := re.match(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.*)", k):
        name = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
        return f"{m[1]}.mid.attn_1.{name}.{m[3]}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        return f"encoder.down.{m[1]}.block.{m[2]}.{resnet(m[3])}"
    if m := re.match(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.(.*)", k):
        return f"encoder.down.{m[1]}.downsample.{m[2]}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", k):
        return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{resnet(m[3])}"
    if m := re.match(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.(.*)", k):
        return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.{m[2]}"
    if re.match(r"(encoder|decoder)\.(conv_in|norm_out|conv_out)\.|(post_)?quant_conv\.", k):
        return k
    raise KeyError(f"no LDM VAE counterpart for {k!r}")


def vae_to_official(state_dict: dict[str, torch.Tensor], num_up_blocks: int) -> dict[str, torch.Tensor]:
    """A diffusers ``AutoencoderKL`` state dict -> LDM ``first_stage_model.*`` keys; the mid-block attention's
    linear q/k/v/proj weights become the 1x1 convolutions the LDM autoencoder holds."""
    out = {}
    for k, v in state_dict.items():
        key = _ldm_vae_key(k, num_up_blocks)
        if re.search(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$", key) and v.dim() == 2:
            v = v[:, :, None, None]
        out[_LDM_VAE + key] = v
    return out


def to_official_state_dict(model: NeuroPictor) -> dict[str, torch.Tensor]:
    """This model's weights in the official checkpoint's key layout (UNet, ControlNet, fMRI mapper, encoder,
    semantic network, text tower, VAE as ``first_stage_model``). The inverse of :func:`convert_official_checkpoint`
    (tested round trip), for running our weights in the official code."""
    lpb = model.unet.config.layers_per_block
    up_attn = ["CrossAttn" in t for t in model.unet.config.up_block_types]
    out: dict[str, torch.Tensor] = {}
    for k, v in model.state_dict().items():
        part, _, rest = k.partition(".")
        if part == "unet":
            out[_LDM_UNET + _ldm_unet_key(rest, lpb, up_attn)] = v
        elif part == "controlnet":
            if rest.startswith("controlnet_cond_embedding."):
                out[_LDM_CONTROL + "fmri_mapper." + rest[len("controlnet_cond_embedding."):]] = v
            else:
                out[_LDM_CONTROL + _ldm_unet_key(rest, lpb, up_attn)] = v
        elif part == "fmri_encoder":
            out["fmri_encoder.transformer." + rest] = v
        elif part == "semantic":
            out["cond_stage." + rest] = v
        elif part == "text_encoder" and rest != "attn_mask":
            out[_LDM_TEXT + rest] = v
        elif part in ("vae", "adapters", "category_head", "text_encoder"):
            continue
        else:
            raise KeyError(f"no official counterpart for {k!r}")
    if model.vae is not None:
        out |= vae_to_official(model.vae.state_dict(), len(model.vae.config.up_block_types))
    return out


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Used by ``load_checkpoint`` / ``create_model(pretrained=path)``: official keys are converted (our adapters,
    category head and any module the official file lacks keep the model's own tensors); ours pass through."""
    sd = state_dict.get("state_dict", state_dict) if isinstance(state_dict.get("state_dict"), dict) else state_dict
    if not any(k.removeprefix("module.").startswith(("control_model.", "model.diffusion_model.")) for k in sd):
        return state_dict
    if not isinstance(model, NeuroPictor):
        raise TypeError("converting an official NeuroPictor checkpoint needs the target model")
    out = convert_official_checkpoint(sd, model)
    own = model.state_dict()
    keep = ("adapters.", "category_head.", "vae.", "text_encoder.")
    return out | {k: v for k, v in own.items() if k.startswith(keep) and k not in out}


# ------------------------------------------------------------------------------------------------------ entrypoints
def _variant(name: str, pretrained: bool | str, defaults: dict[str, Any], **kwargs: Any) -> NeuroPictor:
    return build_model(NeuroPictor, name, pretrained, defaults, **kwargs)  # type: ignore[return-value]


@register_model
def neuropictor_sd21(pretrained: bool | str = False, **kwargs: Any) -> NeuroPictor:
    """NeuroPictor, paper size: 256x256 surface -> 257x1024-token fMRI ViT, 77x1024 context, SD 2.1-base UNet
    (frozen), ControlNet 320 [1,2,4,4] with the fMRI mapper at 64x64, SD VAE f=8, OpenCLIP ViT-H/14 text tower
    (frozen), 512 px. Fine-tuning model by default; pre-training: semantic_extra=False, unet_encoder_no_grad=True."""
    return _variant("neuropictor_sd21", pretrained, dict(vae=SD21_VAE, text_encoder=OPENCLIP_H14_TEXT), **kwargs)


#: the spec's minimal faithful config: surface 32, patch 8 -> 17 tokens, width 32; context 6x32; UNet 16 [1,2]
TINY_UNET: dict[str, Any] = dict(
    sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(16, 32),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=2, use_linear_projection=True, norm_num_groups=8,
)


@register_model
def neuropictor_tiny(pretrained: bool | str = False, **kwargs: Any) -> NeuroPictor:
    """Tiny NeuroPictor for CPU tests (the spec's minimal config): 32x32 surface, patch 8 (17 tokens), width 32,
    depth 2, 4 heads; context 6x32; UNet/ControlNet 16 [1,2], 1 res block; no VAE (4-channel 8x8 'latents');
    a 2-layer OpenCLIP-form text tower of width 32."""
    return _variant("neuropictor_tiny", pretrained, dict(
        surface_size=32, patch_size=8, encoder_dim=32, encoder_depth=2, encoder_heads=4, context_len=6,
        context_dim=32, unet=TINY_UNET, vae=None, image_size=8,
        text_encoder=dict(context_length=6, vocab_size=49408, width=32, heads=4, layers=2),
        adapter_dim=32, adapter_grid=8), **kwargs)
