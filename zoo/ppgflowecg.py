"""PPGFlowECG: CardioAlign VAE (shared PPG/ECG encoder) + latent rectified flow for PPG-guided ECG generation.

Fang et al., "Latent Rectified Flow with Cross-Modal Encoding for PPG-Guided ECG Generation and Cardiovascular
Disease Detection", arXiv 2509.19774. Code: github.com/PKUDigitalHealth/PPGFlowECG.

Stage 1 (CardioAlign): one 1-D VAE encoder for both modalities → scaled latent (4, L/32); an ECG and a PPG decoder,
each a residual convolutional decoder plus an interpretable level + trend + seasonal decomposition (TimeVAE-style).
Stage 2: a transformer velocity field v(x_t, t | PPG latent) trained with the rectified-flow objective; sampling
integrates dx/dt = v from noise (t=0) to the ECG latent (t=1) with Euler steps, then the ECG decoder.

Also here: ``ECGResNet1d``, the 1-D ResNet ECG classifier of the downstream CVD / arrhythmia detection experiment.
All tensors are (batch, channels, time).

Weights: a stage-2 task checkpoint loads the EMA flow by default (:func:`load_weights`, :func:`read_checkpoint`; the
reference samples with the EMA model).

Evaluation gap — FID is NOT implemented. The paper's headline fidelity metric is the FID on embeddings of the 1-lead
ECGFounder (HF ``PKUDigitalHealth/ECGFounder``, file ``1_lead_ECGFounder.pth``; the reference builds its ``Net1D``
backbone, drops the ``dense`` head and compares the pooled 1024-d features, ``evaluation/calculate_metric.py``):
MCMED 12.84, VitalDB 27.09, MIMIC-AFib 37.69, BIDMC 54.22. Those weights are not available offline here, and a FID on
any other feature extractor is not comparable, so none is reported. To add it: port ``Net1D`` /
``ft_1lead_ECGFounder`` as a zoo model with a manifest entry (sha256) for the converted ECGFounder weights, embed real
and generated windows (N, 1, 1280) and apply ``tasks.metrics.signal.frechet_distance`` with ``small_sample_below=0``
(the reference FID uses eps 1e-6 and no PCA). Heart-rate MAE uses our own R-peak detector, not biosppy's (see
``tasks.metrics.signal``).
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._builder import TASK_PREFIX, build_model, strip_task_prefix
from ._registry import register_model
from .layers.cuda_graph import CapturedCall
from .layers.signal_blocks import BasicBlock1d, Downsample1d, SignalResBlock, SignalSelfAttentionBlock

__all__ = [
    "CardioAlignDecoder",
    "CardioAlignEncoder",
    "CardioAlignOutput",
    "Conv1dAs2d",
    "ECGResNet1d",
    "LatentFlowTransformer",
    "PPGFlowECG",
    "StaticSampler",
    "cardioalign_forward",
    "checkpoint_filter_fn",
    "conv1d_as_conv2d",
    "convert_official_checkpoint",
    "load_weights",
    "read_checkpoint",
    "task_state_dict_to_model",
]

LATENT_SCALE = 0.18215  # the SD-VAE latent scale the paper keeps (spec "must-not-miss")

MODEL_CARD = {
    "paper": "Latent Rectified Flow with Cross-Modal Encoding for PPG-Guided ECG Generation and Cardiovascular "
             "Disease Detection (Fang et al., arXiv 2509.19774)",
    "url": "https://arxiv.org/abs/2509.19774",
    "code": "https://github.com/PKUDigitalHealth/PPGFlowECG",
    "license": "code: see upstream repository; our reimplementation: Apache-2.0",
    # The paper reports no parameter counts. The numbers below are a third-party count of the released
    # checkpoints (encoder 96,491,984 + ECG decoder 110,915,114 + flow 6,857,988 = 214.26M for the ECG
    # generation path; the PPG decoder, another 110.9M, is needed only for stage-1 training). Our
    # ppgflowecg_base additionally holds the PPG decoder, so compare ``count_params`` minus ppg_decoder.
    "reported_params_m": {},
    "bench_config": "configs/ppgflowecg/demo.yaml",  # `sharezoo bench`: stage-1 task; benchmarks/bench_ppgflowecg.py
    # measures stage 1, stage 2 and sampling side by side with the reference code
    "third_party_params": {"encoder": 96_491_984, "ecg_decoder": 110_915_114, "flow": 6_857_988},
    "deviations": [
        "The unused GroupNorm of the reference VAE attention block (built, never applied) is not built: -1,024 "
        "parameters in the encoder and in each decoder; outputs are identical. The converter drops those keys.",
        "The unused text cross-attention branch (cross_attn_2, ln_cross_2; use_text=False in every released "
        "config) is not built: -1,579,008 flow parameters (6,857,988 -> 5,278,980); outputs are identical.",
        "Attention uses F.scaled_dot_product_attention (same maths as the explicit softmax(QK^T/sqrt(d))V).",
        "Tensors are (batch, channels, time); the reference takes (batch, time, 1) signals.",
        "The per-token timestep the reference builds and then averages back to one scalar is a (batch,) tensor "
        "here (identical values).",
        "sample_ecg encodes the PPG with posterior sampling noise (as the reference does); pass "
        "sample_posterior=False for the deterministic posterior mean.",
        "One module holds encoder, both decoders and the flow; EMA weights are kept by the training task "
        "(tasks.signal.ECGFlowTask) and exported into `flow` for sampling; loading a stage-2 task .ckpt through "
        "load_weights/read_checkpoint (and ECGClassificationTask's generator) puts the EMA flow into `flow`.",
        "Where the spec's prose and the reference code differ we follow the code (what trained the release): the "
        "alignment KL is 0.5·(KL(ecg‖ppg) + KL(ppg‖ecg)) summed over time; InfoNCE pools the (B, 4, L) means over "
        "the channel dim (giving (B, L) vectors), not over time.",
        "Training batches are a fixed number of windows; the reference batches 4 visits (LMDB files) of a variable "
        "number of windows.",
        "ECG classifier (ecg_resnet1d*): the paper's classifier code is not released; ours is a plain 1-D ResNet.",
        "Missing metric: FID on 1-lead ECGFounder features (the paper's headline fidelity number: MCMED 12.84, VitalDB "
        "27.09, MIMIC-AFib 37.69, BIDMC 54.22) is not implemented: the ECGFounder weights (HF PKUDigitalHealth/"
        "ECGFounder, 1_lead_ECGFounder.pth) are not available offline and another feature extractor would not be "
        "comparable. Plug-in point: an ECGFounder Net1D zoo model + tasks.metrics.signal.frechet_distance "
        "(small_sample_below=0, eps 1e-6) on its pooled features.",
        "Heart-rate MAE: the reference uses biosppy (hamilton_segmenter + correct_rpeaks, then get_heart_rate with "
        "smoothing, mean over the window; the generated ECG is first cleaned with NeuroKit pantompkins1985). biosppy "
        "is not a dependency here; tasks.metrics.signal.heart_rate_mae uses its own 5-15 Hz energy R-peak detector "
        "and the mean R-R interval, on both signals alike, so values are close but not identical to the paper's.",
        "Fréchet distance follows the reference script's two regimes (N < 3000 windows: PCA to 32 dims, eps 1e-4, "
        "mean of 5 trials; otherwise raw windows, eps 1e-6).",
        "EMA: ema-pytorch 0.7.7's warm-up schedule (decay 1-(1+e)^(-2/3) capped at 0.995, e = steps past 100) is "
        "reproduced by tasks.signal.ModelEMA.",
    ],
}


# ---------------------------------------------------------------------------------------------------- stage 1
class CardioAlignEncoder(nn.Module):
    """The shared 1-D VAE encoder (spec "VAE_Encoder"): signal (B, C, L) → posterior mean/log-variance (B, z, L/2^n).

    Args:
        in_chans: input channels (1: one PPG or one ECG lead).
        widths: channels per stage; each stage has two residual blocks (the first changes the width).
        down_kernels: kernel of the stride-2 convolution after stage i (one per down-sample).
        latent_chans: latent channels (4).
        kernel_size: convolution kernel (15).
        groups: GroupNorm groups (32).
    """

    def __init__(
        self,
        in_chans: int = 1,
        widths: Sequence[int] = (128, 256, 512, 512, 512, 512),
        down_kernels: Sequence[int] = (15, 15, 15, 17, 17),
        latent_chans: int = 4,
        kernel_size: int = 15,
        groups: int = 32,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = [nn.Conv1d(in_chans, widths[0], kernel_size, padding=kernel_size // 2)]
        prev = widths[0]
        for i, w in enumerate(widths):
            blocks += [SignalResBlock(prev, w, kernel_size, groups), SignalResBlock(w, w, kernel_size, groups)]
            prev = w
            if i < len(down_kernels):
                blocks.append(Downsample1d(w, down_kernels[i]))
        blocks += [
            SignalResBlock(prev, prev, kernel_size, groups),
            SignalSelfAttentionBlock(prev),
            SignalResBlock(prev, prev, kernel_size, groups),
            nn.GroupNorm(groups, prev),
            nn.SiLU(),
            nn.Conv1d(prev, 2 * latent_chans, kernel_size, padding=kernel_size // 2),
            nn.Conv1d(2 * latent_chans, 2 * latent_chans, 1),
        ]
        self.blocks = nn.ModuleList(blocks)
        self.downsample_factor = 2 ** len(down_kernels)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        for block in self.blocks:
            x = block(x)
        mean, logvar = x.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)


class CardioAlignDecoder(nn.Module):
    """Modality decoder (spec "VAE_Decoder"): residual convolutional path + level/trend/seasonal decomposition.

    Args:
        seq_len: output length (1280 = 10 s at 128 Hz).
        out_chans: output channels (1).
        latent_chans: latent channels (4).
        top_width: channels right after the latent (512).
        up_widths: output channels of each up-sampling stage (3 residual blocks each).
        num_mid_res: residual blocks after the attention block (4).
        decomp_dim: width of the decomposition's latent vector ("latent_dim" 64).
        trend_poly: polynomial degree of the trend (2; 0 disables it).
        seasons: (number of seasons, samples per season) pairs ([(10, 128)]; empty disables it).
        kernel_size: convolution kernel (15).
        groups: GroupNorm groups (32).
    """

    def __init__(
        self,
        seq_len: int = 1280,
        out_chans: int = 1,
        latent_chans: int = 4,
        top_width: int = 512,
        up_widths: Sequence[int] = (512, 512, 256, 128, 128),
        num_mid_res: int = 4,
        decomp_dim: int = 64,
        trend_poly: int = 2,
        seasons: Sequence[Sequence[int]] = ((10, 128),),
        kernel_size: int = 15,
        groups: int = 32,
    ) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.seq_len, self.out_chans, self.trend_poly = seq_len, out_chans, trend_poly
        blocks: list[nn.Module] = [
            nn.Conv1d(latent_chans, latent_chans, 1),
            nn.Conv1d(latent_chans, top_width, kernel_size, padding=pad),
            SignalResBlock(top_width, top_width, kernel_size, groups),
            SignalSelfAttentionBlock(top_width),
        ]
        blocks += [SignalResBlock(top_width, top_width, kernel_size, groups) for _ in range(num_mid_res)]
        prev = top_width
        for w in up_widths:
            blocks += [nn.Upsample(scale_factor=2), nn.Conv1d(prev, prev, kernel_size, padding=pad)]
            blocks += [SignalResBlock(prev, w, kernel_size, groups)]
            blocks += [SignalResBlock(w, w, kernel_size, groups) for _ in range(2)]
            prev = w
        blocks += [nn.GroupNorm(groups, prev), nn.SiLU(), nn.Conv1d(prev, out_chans, kernel_size, padding=pad)]
        self.residual = nn.ModuleList(blocks)
        latent_len = seq_len // 2 ** len(up_widths)
        # decomposition path (TimeVAE): one vector from the flattened scaled latent
        self.to_latent = nn.Linear(latent_chans * latent_len, decomp_dim)
        self.level = nn.Sequential(nn.Linear(decomp_dim, out_chans), nn.ReLU(), nn.Linear(out_chans, out_chans))
        self.trend = None
        if trend_poly and trend_poly > 0:
            self.trend = nn.Sequential(
                nn.Linear(decomp_dim, out_chans * trend_poly), nn.ReLU(),
                nn.Linear(out_chans * trend_poly, out_chans * trend_poly),
            )
            lin = torch.arange(seq_len, dtype=torch.float32) / seq_len
            self.register_buffer("poly_space", torch.stack([lin ** (p + 1) for p in range(trend_poly)]), False)
        self.seasons = [tuple(int(v) for v in s) for s in (seasons or ())]
        self.seasonal = nn.ModuleList([nn.Linear(decomp_dim, out_chans * n) for n, _ in self.seasons])
        for i, (n, per) in enumerate(self.seasons):
            idx = torch.arange(n).repeat_interleave(per).repeat(seq_len // (n * per) + 1)[:seq_len]
            self.register_buffer(f"season_index_{i}", idx, False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, 4, L/32) → signal (B, out_chans, seq_len)."""
        x = z / LATENT_SCALE
        for block in self.residual:
            x = block(x)
        b = z.shape[0]
        v = self.to_latent(z.reshape(b, -1))
        out = x + self.level(v).view(b, self.out_chans, 1)
        if self.trend is not None:
            out = out + self.trend(v).view(b, self.out_chans, self.trend_poly) @ self.poly_space
        for i, (n, _) in enumerate(self.seasons):
            params = self.seasonal[i](v).view(b, self.out_chans, n)
            out = out + params[..., getattr(self, f"season_index_{i}")]
        return out


class Conv1dAs2d(nn.Conv1d):
    """An ``nn.Conv1d`` computed as a height-1 2-D convolution (same parameters, same state-dict keys, same sums)."""

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        pad = self.padding if isinstance(self.padding, str) else (0, self.padding[0])
        y = F.conv2d(x.unsqueeze(-2), weight.unsqueeze(-2), bias, (1, self.stride[0]), pad, (1, self.dilation[0]),
                     self.groups)
        return y.squeeze(-2)


def conv1d_as_conv2d(module: nn.Module, enable: bool = True) -> nn.Module:
    """Run every zero-padded ``nn.Conv1d`` inside ``module`` as a (N, C, 1, L) 2-D convolution (``Conv1dAs2d``), or
    back with ``enable=False``; parameters and state-dict keys are unchanged. In place; returns ``module``.

    Why: under ``torch.compile`` inductor lays 2-D convolutions out channels-last (NHWC) on CUDA but leaves 1-D ones
    in (N, C, L) (its layout optimisation handles 2-D only), and cuDNN's channels-last kernels for PPGFlowECG's
    kernel-15 convolutions are 1.2-1.6x faster in bf16 on an H200 (``benchmarks/conv1d_layout.py``). Useful with
    compilation on a GPU; eager, it changes only the call path.
    """
    src, dst = (nn.Conv1d, Conv1dAs2d) if enable else (Conv1dAs2d, nn.Conv1d)
    for m in module.modules():
        if type(m) is src and m.padding_mode == "zeros":
            m.__class__ = dst
    return module


# ---------------------------------------------------------------------------------------------------- stage 2
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding of the raw flow time t ∈ [0, 1] (no ×1000, as in the reference)."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half, device=t.device, dtype=torch.float32) * -(math.log(10000) / (half - 1)))
    arg = t.float()[:, None] * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


class AdaLayerNorm(nn.Module):
    """LayerNorm without affine, modulated by scale/shift = Linear(SiLU(sinusoidal(t)))."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        emb = self.linear(F.silu(timestep_embedding(t, self.dim).to(x.dtype)))
        scale, shift = emb[:, None].chunk(2, dim=-1)
        return F.layer_norm(x, (self.dim,)) * (1 + scale) + shift


class MultiHeadAttention(nn.Module):
    """Self- (context None) or cross-attention with separate query/key/value projections."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        b, n, d = x.shape
        h = self.num_heads

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, -1, h, d // h).transpose(1, 2)

        y = F.scaled_dot_product_attention(heads(self.query(x)), heads(self.key(context)), heads(self.value(context)))
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class FlowBlock(nn.Module):
    """x += SelfAttn(AdaLN(x, t)); x += CrossAttn(AdaLN(x, t), cond); x += MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int = 4) -> None:
        super().__init__()
        self.norm_self = AdaLayerNorm(dim)
        self.self_attn = MultiHeadAttention(dim, num_heads)
        self.norm_cross = AdaLayerNorm(dim)
        self.cross_attn = MultiHeadAttention(dim, num_heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.norm_self(x, t))
        x = x + self.cross_attn(self.norm_cross(x, t), cond)
        return x + self.mlp(self.norm_mlp(x))


class LatentFlowTransformer(nn.Module):
    """Velocity field v(x_t, t | c) on latents (B, 4, L): tokens are latent time steps.

    The PPG condition latent goes through the same embedding and positional encoding as x_t (spec §Architecture).

    Args:
        latent_chans: latent channels (4).
        latent_len: latent length = number of tokens (40).
        dim: model width (256).
        depth: blocks (4).
        num_heads: heads (4).
        mlp_ratio: MLP expansion (4).
        pos_init_std: initialise the positional encoding N(0, pos_init_std²) instead of the reference's
            U(-0.02, 0.02) (None). Why: the condition reaches the velocity only through cross-attention, which must
            match latent position i to PPG position i; from the reference's tiny init a small run never learns that
            (on a103l the flow ignored the PPG after 1,000 steps: Pearson r 0.0 of generated vs real ECG, and it could
            not even learn z = c), while std 1 learns it in ~150 steps (results recipes, issue 16).
    """

    def __init__(
        self, latent_chans: int = 4, latent_len: int = 40, dim: int = 256, depth: int = 4, num_heads: int = 4,
        mlp_ratio: int = 4, pos_init_std: float | None = None,
    ) -> None:
        super().__init__()
        self.embed = nn.Conv1d(latent_chans, dim, 3, padding=1)
        pos = torch.empty(1, latent_len, dim)
        pos = pos.uniform_(-0.02, 0.02) if pos_init_std is None else pos.normal_(0.0, pos_init_std)
        self.pos_embed = nn.Parameter(pos)
        self.blocks = nn.ModuleList([FlowBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.head = nn.Conv1d(dim, latent_chans, 3, padding=1)

    def tokens(self, z: torch.Tensor) -> torch.Tensor:
        return self.embed(z).transpose(1, 2) + self.pos_embed

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """x_t (B, 4, L), t (B,) in [0, 1], PPG latent (B, 4, L) → velocity (B, 4, L)."""
        h, c = self.tokens(x), self.tokens(cond)
        for block in self.blocks:
            h = block(h, t, c)
        return self.head(h.transpose(1, 2))


@torch.no_grad()
def euler_sample(
    velocity: nn.Module, cond: torch.Tensor, steps: int = 10, generator: torch.Generator | None = None,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Integrate dx/dt = v(x, t | cond) from x(0) ~ N(0, I) to x(1) with ``steps`` Euler steps.

    The state is kept in float32 even under bf16 autocast (only the velocity network runs in low precision).
    """
    x = noise.float() if noise is not None else torch.randn(
        cond.shape, generator=generator, device=cond.device, dtype=torch.float32)
    dt = 1.0 / steps
    for i in range(steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device, dtype=torch.float32)
        x = x + dt * velocity(x, t, cond).float()
    return x


# ---------------------------------------------------------------------------------------------------- model
@dataclass
class CardioAlignOutput:
    """Stage-1 forward: scaled latents, posterior parameters and reconstructions of both modalities."""

    z_ecg: torch.Tensor
    mean_ecg: torch.Tensor
    logvar_ecg: torch.Tensor
    z_ppg: torch.Tensor
    mean_ppg: torch.Tensor
    logvar_ppg: torch.Tensor
    recon_ecg: torch.Tensor
    recon_ppg: torch.Tensor
    cross_ecg: torch.Tensor | None = None  # decode_ecg(z_ppg.detach()), with ``cross``
    cross_ppg: torch.Tensor | None = None  # decode_ppg(z_ecg.detach())


def cardioalign_forward(
    m: Any, ecg: torch.Tensor, ppg: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
    cross: bool = False,
) -> CardioAlignOutput:
    """The stage-1 forward on anything with ``encode_dist``/``decode_ecg``/``decode_ppg`` (a PPGFlowECG or its
    compiled stage-1 modules). ECG and PPG go through the shared encoder in ONE call (ECG then PPG along the batch);
    with ``cross`` each decoder also decodes the other modality's detached latent in the same call as its own. Every
    layer acts per sample (GroupNorm, attention over time, the decomposition), so this equals separate calls; it
    halves the calls and doubles each call's batch. Posterior noise is drawn ECG first, then PPG."""
    b = ecg.shape[0]
    mean, logvar = m.encode_dist(torch.cat([ecg, ppg]))
    mean_e, mean_p, logvar_e, logvar_p = mean[:b], mean[b:], logvar[:b], logvar[b:]
    ne, np_ = noise if noise is not None else (None, None)
    z_e = PPGFlowECG.reparameterize(mean_e, logvar_e, noise=ne)
    z_p = PPGFlowECG.reparameterize(mean_p, logvar_p, noise=np_)
    if not cross:
        return CardioAlignOutput(z_e, mean_e, logvar_e, z_p, mean_p, logvar_p, m.decode_ecg(z_e), m.decode_ppg(z_p))
    ecgs = m.decode_ecg(torch.cat([z_e, z_p.detach()]))
    ppgs = m.decode_ppg(torch.cat([z_p, z_e.detach()]))
    return CardioAlignOutput(z_e, mean_e, logvar_e, z_p, mean_p, logvar_p, ecgs[:b], ppgs[:b], ecgs[b:], ppgs[b:])


class PPGFlowECG(nn.Module):
    """CardioAlign (shared encoder, ECG + PPG decoders) and the latent rectified-flow transformer.

    Args:
        seq_len: window length in samples (1280 = 10 s at 128 Hz).
        in_chans: channels of each modality (1).
        latent_chans: latent channels (4).
        enc_widths: encoder stage widths.
        down_kernels: encoder down-sampling kernels (their count sets the latent length seq_len / 2^n).
        dec_top_width: decoder width after the latent.
        dec_up_widths: decoder up-sampling stage widths (same count as down_kernels).
        dec_mid_res: decoder residual blocks after its attention block.
        decomp_dim: decomposition latent vector width.
        trend_poly: trend polynomial degree.
        seasons: (seasons, samples per season) pairs.
        kernel_size: convolution kernel.
        groups: GroupNorm groups.
        flow_dim: flow transformer width.
        flow_depth: flow transformer blocks.
        flow_heads: flow transformer heads.
        flow_mlp_ratio: flow MLP expansion.
        flow_pos_init_std: std of a Gaussian init of the flow's positional encoding (None: the reference's
            U(-0.02, 0.02); see :class:`LatentFlowTransformer`; init only, weights load the same).
        sample_steps: default Euler steps of ``sample_ecg``.
    """

    def __init__(
        self,
        seq_len: int = 1280,
        in_chans: int = 1,
        latent_chans: int = 4,
        enc_widths: Sequence[int] = (128, 256, 512, 512, 512, 512),
        down_kernels: Sequence[int] = (15, 15, 15, 17, 17),
        dec_top_width: int = 512,
        dec_up_widths: Sequence[int] = (512, 512, 256, 128, 128),
        dec_mid_res: int = 4,
        decomp_dim: int = 64,
        trend_poly: int = 2,
        seasons: Sequence[Sequence[int]] = ((10, 128),),
        kernel_size: int = 15,
        groups: int = 32,
        flow_dim: int = 256,
        flow_depth: int = 4,
        flow_heads: int = 4,
        flow_mlp_ratio: int = 4,
        sample_steps: int = 10,
        flow_pos_init_std: float | None = None,
    ) -> None:
        super().__init__()
        if len(dec_up_widths) != len(down_kernels):
            raise ValueError("dec_up_widths and down_kernels must have the same length (up- = down-samplings)")
        if seq_len % 2 ** len(down_kernels):
            raise ValueError(f"seq_len {seq_len} is not divisible by 2^{len(down_kernels)}")
        self.seq_len, self.in_chans, self.sample_steps = seq_len, in_chans, sample_steps
        self.latent_shape = (latent_chans, seq_len // 2 ** len(down_kernels))
        self.encoder = CardioAlignEncoder(in_chans, enc_widths, down_kernels, latent_chans, kernel_size, groups)
        dec = dict(seq_len=seq_len, out_chans=in_chans, latent_chans=latent_chans, top_width=dec_top_width,
                   up_widths=dec_up_widths, num_mid_res=dec_mid_res, decomp_dim=decomp_dim, trend_poly=trend_poly,
                   seasons=seasons, kernel_size=kernel_size, groups=groups)
        self.ecg_decoder = CardioAlignDecoder(**dec)
        self.ppg_decoder = CardioAlignDecoder(**dec)
        self.flow = LatentFlowTransformer(latent_chans, self.latent_shape[1], flow_dim, flow_depth, flow_heads,
                                          flow_mlp_ratio, flow_pos_init_std)

    # -- stage 1 ------------------------------------------------------------------------------------------------
    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Signal (B, C, L) → posterior (mean, logvar), each (B, 4, L/32), unscaled."""
        self._check_input(x)
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mean: torch.Tensor, logvar: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled latent (mean + σ·ε)·0.18215 (ε = 0 when ``sample`` is False; ``noise`` gives ε, else it is drawn)."""
        if not sample:
            return mean * LATENT_SCALE
        eps = noise if noise is not None else torch.randn(mean.shape, generator=generator, device=mean.device,
                                                          dtype=mean.dtype)
        return (mean + (0.5 * logvar).exp() * eps) * LATENT_SCALE

    def encode(self, x: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
        """Signal (B, C, L) → scaled latent (B, 4, L/32) (posterior sample by default, as in the reference)."""
        return self.reparameterize(*self.encode_dist(x), sample=sample, generator=generator)

    def decode_ecg(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, 4, L/32) → ECG (B, C, L)."""
        return self.ecg_decoder(latent)

    def decode_ppg(self, latent: torch.Tensor) -> torch.Tensor:
        """Scaled latent (B, 4, L/32) → PPG (B, C, L)."""
        return self.ppg_decoder(latent)

    def cardioalign(
        self, ecg: torch.Tensor, ppg: torch.Tensor, noise: tuple[torch.Tensor, torch.Tensor] | None = None,
        cross: bool = False,
    ) -> CardioAlignOutput:
        """Encode both modalities with the shared encoder and reconstruct each with its decoder (``noise``: the
        posterior ε of ECG and PPG, drawn when None; ``cross``: also each decoder on the other modality's detached
        latent). See :func:`cardioalign_forward`."""
        return cardioalign_forward(self, ecg, ppg, noise, cross)

    # -- stage 2 ------------------------------------------------------------------------------------------------
    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """Flow velocity for noisy ECG latent ``x_t`` at times ``t`` (B,) given the PPG latent ``cond``."""
        return self.flow(x_t, t, cond)

    @torch.no_grad()
    def sample_latent(
        self, cond: torch.Tensor, steps: int | None = None, generator: torch.Generator | None = None,
        flow: nn.Module | None = None,
    ) -> torch.Tensor:
        """ECG latent from the PPG latent by Euler integration of the flow (``flow`` overrides, e.g. EMA)."""
        return euler_sample(flow or self.flow, cond, steps or self.sample_steps, generator)

    @torch.no_grad()
    def sample_ecg(
        self, ppg: torch.Tensor, steps: int = 10, generator: torch.Generator | None = None,
        flow: nn.Module | None = None, sample_posterior: bool = True,
    ) -> torch.Tensor:
        """PPG (B, C, L) → generated ECG (B, C, L): encode PPG → ``steps`` Euler steps → ECG decoder."""
        cond = self.encode(ppg, sample=sample_posterior, generator=generator)
        return self.decode_ecg(self.sample_latent(cond, steps, generator, flow))

    def static_sampler(self, batch: int, **kwargs: Any) -> StaticSampler:
        """A :class:`StaticSampler` of this model (fixed batch, static buffers, one CUDA graph on CUDA); ``kwargs``
        are its other arguments (``steps``, ``flow``, ``dtype``, ``compile``, ...)."""
        return StaticSampler(self, batch, **kwargs)

    def forward(self, ppg: torch.Tensor, steps: int | None = None) -> torch.Tensor:
        return self.sample_ecg(ppg, steps or self.sample_steps)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 3 or x.shape[1] != self.in_chans or x.shape[2] != self.seq_len:
            raise ValueError(f"PPGFlowECG expects (batch, {self.in_chans}, {self.seq_len}) signals, "
                             f"got {tuple(x.shape)}")


class StaticSampler:
    """:meth:`PPGFlowECG.sample_ecg` at a fixed batch through static buffers; on CUDA the whole call (encoder,
    posterior noise, every Euler step of the flow, ECG decoder) is captured once as one CUDA graph and replayed.

    The random draws (posterior ε, then the initial noise, each ``(N, 4, L/32)``) are made on the host side in the
    order ``sample_ecg`` makes them and copied into the graph's input buffers, so in fp32 (``dtype=None``) the output
    equals ``sample_ecg`` with the same generator (bit for bit when ``N == batch`` on the CPU; a graph replays the same
    kernels). With ``dtype=torch.bfloat16`` the networks run under autocast (the Euler state stays fp32) and the
    waveform differs from fp32 as eager bf16 does (``tests/test_ppgflowecg_speed.py`` bounds it).

    Args:
        model: the PPGFlowECG whose encoder and ECG decoder are used (``conv2d`` converts its convolutions in place).
        batch: windows per captured call; other sizes are split into chunks of ``batch`` (the last one padded).
        steps: Euler steps (None: the model's ``sample_steps``).
        flow: velocity network to sample with (e.g. the EMA copy; None: ``model.flow``).
        sample_posterior: encode the PPG with posterior noise (``sample_ecg``'s default) or take the posterior mean.
        dtype: autocast dtype of the networks (``torch.bfloat16``) or None (fp32).
        cuda_graph: capture the call as a CUDA graph on CUDA (elsewhere the same code runs eagerly).
        compile: ``torch.compile`` the encoder, flow and decoder (inductor without CUDA graphs of its own).
        conv2d: run the 1-D convolutions as channels-last 2-D ones under compile (:func:`conv1d_as_conv2d`).
        warmup: eager calls (on a side stream) before the capture: cuDNN autotuning, compilation.
    """

    def __init__(
        self, model: PPGFlowECG, batch: int, steps: int | None = None, flow: nn.Module | None = None,
        sample_posterior: bool = True, dtype: torch.dtype | None = None, cuda_graph: bool = True,
        compile: bool = False, conv2d: bool = False, warmup: int = 3,
    ) -> None:
        self.model, self.batch = model, batch
        self.steps = steps or model.sample_steps
        self.sample_posterior, self.dtype, self.warmup = sample_posterior, dtype, warmup
        if conv2d:
            conv1d_as_conv2d(model)
        flow = flow or model.flow
        comp = torch.compile if compile else (lambda f: f)
        self._encoder, self._flow, self._decoder = comp(model.encoder), comp(flow), comp(model.ecg_decoder)
        dev = next(model.parameters()).device
        self.device = dev
        lat = (batch, *model.latent_shape)
        self.ppg = torch.zeros(batch, model.in_chans, model.seq_len, device=dev)
        self.eps = torch.zeros(lat, device=dev)
        self.x0 = torch.zeros(lat, device=dev)
        self.graphed = cuda_graph and dev.type == "cuda"
        self._graph: CapturedCall | None = None

    def _run(self) -> torch.Tensor:
        # autocast's weight-cast cache off: a captured graph must cast the live weights on every replay
        ac = torch.autocast(self.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None,
                            cache_enabled=False)
        with torch.no_grad(), ac:
            cond = PPGFlowECG.reparameterize(*self._encoder(self.ppg), sample=self.sample_posterior, noise=self.eps)
            return self._decoder(euler_sample(self._flow, cond, self.steps, noise=self.x0))

    def _chunk(self) -> torch.Tensor:
        if not self.graphed:
            return self._run()
        if self._graph is None:
            self._graph = CapturedCall(self._run, self.device, self.warmup)
        return self._graph()

    @torch.no_grad()
    def __call__(
        self, ppg: torch.Tensor, generator: torch.Generator | None = None,
        noise: tuple[torch.Tensor | None, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """PPG ``(N, C, L)`` → generated ECG ``(N, C, L)`` in float32 (``noise``: the posterior ε and the initial
        noise, each ``(N, 4, L/32)``, instead of drawing them from ``generator``)."""
        self.model._check_input(ppg)
        n, lat = ppg.shape[0], (ppg.shape[0], *self.model.latent_shape)
        draw = lambda: torch.randn(lat, generator=generator, device=self.device, dtype=torch.float32)  # noqa: E731
        if noise is not None:
            eps, x0 = noise
        else:
            eps = draw() if self.sample_posterior else None  # sample_ecg's order: posterior ε, then initial noise
            x0 = draw()
        outs = []
        for i in range(0, n, self.batch):
            k = min(self.batch, n - i)
            self.ppg[:k].copy_(ppg[i : i + k])
            self.x0[:k].copy_(x0[i : i + k])
            if eps is not None:
                self.eps[:k].copy_(eps[i : i + k])
            if k < self.batch:  # padding rows: their outputs are dropped (every layer acts per window)
                self.ppg[k:].zero_()
            outs.append(self._chunk()[:k].float().clone())
        return torch.cat(outs)


# ---------------------------------------------------------------------------------------------------- classifier
class ECGResNet1d(nn.Module):
    """1-D ResNet for multi-label CVD / arrhythmia detection on ECG (the downstream experiment's classifier).

    Args:
        in_chans: ECG leads.
        num_classes: labels (multi-label logits).
        layers: basic blocks per stage.
        widths: channels per stage.
        stem_width: stem channels.
        kernel_size: block kernel.
        drop_rate: dropout before the classifier.
    """

    def __init__(
        self, in_chans: int = 1, num_classes: int = 5, layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64, kernel_size: int = 7,
        drop_rate: float = 0.0,
    ) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.stem = nn.Sequential(
            nn.Conv1d(in_chans, stem_width, 15, stride=2, padding=7, bias=False), nn.BatchNorm1d(stem_width),
            nn.ReLU(), nn.MaxPool1d(3, stride=2, padding=1),
        )
        stages, prev = [], stem_width
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = [BasicBlock1d(prev if j == 0 else w, w, 2 if (j == 0 and i > 0) else 1, kernel_size)
                      for j in range(n)]
            stages.append(nn.Sequential(*blocks))
            prev = w
        self.stages = nn.Sequential(*stages)
        self.num_features = prev
        self.drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(self.stem(x)).mean(-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.in_chans:
            raise ValueError(f"ECGResNet1d expects (batch, {self.in_chans}, time), got {tuple(x.shape)}")
        return self.fc(self.drop(self.forward_features(x)))


# ---------------------------------------------------------------------------------------------------- conversion
_FLOW_RENAMES = [
    (r"^model\.ecg_emb\.sequential\.1\.", "embed."),
    (r"^model\.inverse\.sequential\.1\.", "head."),
    (r"^model\.pos_enc\.pe$", "pos_embed"),
    (r"^model\.temporal_encoder\.blocks\.(\d+)\.ln1\.linear\.", r"blocks.\1.norm_self.linear."),
    (r"^model\.temporal_encoder\.blocks\.(\d+)\.ln_cross_1\.linear\.", r"blocks.\1.norm_cross.linear."),
    (r"^model\.temporal_encoder\.blocks\.(\d+)\.ln2\.", r"blocks.\1.norm_mlp."),
    (r"^model\.temporal_encoder\.blocks\.(\d+)\.attn\.", r"blocks.\1.self_attn."),
    (r"^model\.temporal_encoder\.blocks\.(\d+)\.cross_attn_1\.", r"blocks.\1.cross_attn."),
    (r"^model\.temporal_encoder\.blocks\.(\d+)\.mlp\.", r"blocks.\1.mlp."),
]
_FLOW_UNUSED = re.compile(r"\.(cross_attn_2|ln_cross_2)\.|^text_proj\.")


def _convert_blocks(sd: dict[str, torch.Tensor], blocks: nn.ModuleList, src: str, dst: str) -> dict:
    """Map ``src.<i>.<rest>`` of a reference ModuleList onto our ``dst.<i>...`` (same block order)."""
    out = {}
    for k, v in sd.items():
        m = re.match(rf"^{re.escape(src)}\.(\d+)\.(.+)$", k)
        if not m:
            continue
        i, rest = int(m.group(1)), m.group(2)
        block = blocks[i]
        if isinstance(block, SignalSelfAttentionBlock):
            if rest.startswith("groupnorm."):
                continue  # built but never applied upstream
            rest = rest.removeprefix("attention.")
        elif isinstance(block, Downsample1d):
            rest = f"conv.{rest}"
        out[f"{dst}.{i}.{rest}"] = v
    return out


def _convert_decoder(sd: dict[str, torch.Tensor], dec: CardioAlignDecoder, prefix: str) -> dict:
    out = _convert_blocks(sd, dec.residual, "residual_decoder.blocks", f"{prefix}.residual")
    ren = {"to_latent.": "to_latent.", "level_model.level_dense1.": "level.0.", "level_model.level_dense2.": "level.2.",
           "trend_layer.trend_dense1.": "trend.0.", "trend_layer.trend_dense2.": "trend.2.",
           "seasonal_layer.dense_layers.": "seasonal."}
    for k, v in sd.items():
        for a, b in ren.items():
            if k.startswith(a):
                out[f"{prefix}.{b}{k[len(a):]}"] = v
    return out


def convert_stage1_state_dict(ckpt: dict[str, Any], model: PPGFlowECG) -> dict[str, torch.Tensor]:
    """Reference CardioAlign checkpoint ``{'encoder_ecg', 'decoder_ecg', 'decoder_ppg', ...}`` → our keys.

    The shared encoder is ``encoder_ecg`` (the reference also loads it for PPG; ``encoder_ppg`` is a copy).
    """
    out = _convert_blocks(ckpt["encoder_ecg"], model.encoder.blocks, "blocks", "encoder.blocks")
    out.update(_convert_decoder(ckpt["decoder_ecg"], model.ecg_decoder, "ecg_decoder"))
    if "decoder_ppg" in ckpt:
        out.update(_convert_decoder(ckpt["decoder_ppg"], model.ppg_decoder, "ppg_decoder"))
    return out


def convert_stage2_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference ``RectifiedFlow`` state dict (``model.*``; EMA ``ema_model.model.*`` accepted) → ``flow.*``."""
    out = {}
    for k, v in sd.items():
        k = k.removeprefix("ema_model.")
        if not k.startswith("model.") or _FLOW_UNUSED.search(k):
            continue
        for pat, rep in _FLOW_RENAMES:
            new, n = re.subn(pat, rep, k)
            if n:
                out[f"flow.{new}"] = v
                break
    return out


_EMA_PREFIX = "flow_ema.module."  # where tasks.signal.ECGFlowTask keeps the EMA flow in its state dict


def task_state_dict_to_model(state_dict: dict[str, Any], use_ema: bool = True) -> dict[str, Any]:
    """A stage-2 task state dict (``net.*`` + the EMA copy ``flow_ema.module.*``) → model keys.

    With ``use_ema`` (default) and EMA keys present, ``flow.*`` is taken from the EMA copy (what the reference samples
    with, spec §Losses "Sampling ... using the EMA model"); otherwise the online flow. Accepts the dict with or without
    the ``net.`` prefix; other task keys (``flow_ema.num_steps``) are dropped.
    """
    ema = {k[len(_EMA_PREFIX):]: v for k, v in state_dict.items() if k.startswith(_EMA_PREFIX)}
    sd = {k: v for k, v in strip_task_prefix(state_dict).items() if not k.startswith("flow_ema.")}
    if use_ema and ema:
        sd = {k: v for k, v in sd.items() if not k.startswith("flow.")} | {f"flow.{k}": v for k, v in ema.items()}
    return sd


def read_checkpoint(
    path: str | os.PathLike, model: nn.Module | None = None, use_ema: bool = True,
) -> dict[str, Any]:
    """Read a PPGFlowECG weight file keeping its EMA flow: the family's reader for ``zoo.load_checkpoint``.

    Handles our safetensors (file or folder), a Lightning ``.ckpt`` of :class:`tasks.signal.ECGFlowTask` (EMA flow
    ``flow_ema.module.*`` → ``flow.*``, see :func:`task_state_dict_to_model`), the reference stage-2 ``checkpoint-*.pt``
    (``{'model', 'ema', ...}``: the ``ema`` entry is returned, not ``model``) and the reference stage-1 ``.pth``.
    ``use_ema=False`` takes the online flow instead. The result still goes through :func:`checkpoint_filter_fn`
    (reference keys → ours). ``model`` is unused (the signature of a family reader).
    """
    from ._pretrained import read_weight_file, unwrap_state_dict

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    raw = read_weight_file(p)  # raises the clear "not found" / "cannot read" errors
    if isinstance(raw, dict) and isinstance(raw.get("model"), dict) and isinstance(raw.get("ema"), dict):
        # the reference stage-2 checkpoint {model, ema, ...}
        return dict(raw["ema"] if use_ema else raw["model"])
    raw = unwrap_state_dict(raw, p)
    return task_state_dict_to_model(raw, use_ema) if any(k.startswith("flow_ema.") for k in raw) else raw


def load_weights(model: PPGFlowECG, path: str | os.PathLike, use_ema: bool = True, strict: bool = True) -> PPGFlowECG:
    """Load any PPGFlowECG weight file into ``model`` (see :func:`read_checkpoint`), the EMA flow by default."""
    from ._pretrained import load_into

    sd = checkpoint_filter_fn(read_checkpoint(path, model, use_ema), model, use_ema)
    load_into(model, sd, str(path), strict=strict)
    return model


def checkpoint_filter_fn(state_dict: dict[str, Any], model: nn.Module, use_ema: bool = True) -> dict[str, Any]:
    """Remap a reference checkpoint (stage 1 dict of modules, or stage 2 ``model``/``ema``) onto our keys.

    A stage-2 task state dict that still holds the EMA copy (``flow_ema.module.*``) loads the EMA flow as ``flow.*``
    (``use_ema``, default), as does a reference stage-2 checkpoint holding ``ema``. NOTE: ``zoo.load_checkpoint``
    strips a task checkpoint to its ``net.*`` keys before calling this, which drops the EMA copy; it keeps it only
    when it reads the file with this family's :func:`read_checkpoint` (see :func:`load_weights`).
    """
    if not isinstance(model, PPGFlowECG):
        return state_dict
    if any(k.startswith(("flow_ema.", TASK_PREFIX)) for k in state_dict):
        state_dict = task_state_dict_to_model(state_dict, use_ema)
    if "encoder_ecg" in state_dict:
        return convert_stage1_state_dict(state_dict, model)
    if isinstance(state_dict.get("ema"), dict) and (use_ema or not isinstance(state_dict.get("model"), dict)):
        state_dict = state_dict["ema"]
    elif isinstance(state_dict.get("ema"), dict):
        state_dict = state_dict["model"]
    if any(k.startswith(("model.temporal_encoder.", "ema_model.model.")) for k in state_dict):
        return convert_stage2_state_dict(state_dict)
    return state_dict


def convert_official_checkpoint(
    stage1: str | os.PathLike | None = None,
    stage2: str | os.PathLike | None = None,
    model: PPGFlowECG | None = None,
    use_ema: bool = True,
    output: str | os.PathLike | None = None,
) -> PPGFlowECG:
    """Load the reference release into a ``ppgflowecg_base`` model (and optionally save it).

    Args:
        stage1: CardioAlign checkpoint (``VAE-iter-*.pth``: encoder_ecg / decoder_ecg / decoder_ppg).
        stage2: rectified-flow checkpoint (``checkpoint-*.pt``: step / model / ema / opt).
        model: target model (default: a new ``ppgflowecg_base``).
        use_ema: take the stage-2 EMA weights (what the reference samples with) instead of the online ones.
        output: folder for ``zoo.save_pretrained`` (model.safetensors + config.json).
    """
    if model is None:
        model = ppgflowecg_base()
    sd: dict[str, torch.Tensor] = {}
    if stage1 is not None:
        ck = torch.load(stage1, map_location="cpu", weights_only=True)
        sd.update(convert_stage1_state_dict(ck, model))
    if stage2 is not None:
        ck = torch.load(stage2, map_location="cpu", weights_only=True)
        src = ck["ema"] if use_ema and "ema" in ck else ck.get("model", ck)
        sd.update(convert_stage2_state_dict(src))
    own = model.state_dict()
    bad = [k for k in sd if k not in own or own[k].shape != sd[k].shape]
    if bad:
        raise ValueError(f"converted keys that do not fit the model: {bad[:8]}")
    parts = [p for p, given in (("encoder.", stage1), ("ecg_decoder.", stage1), ("ppg_decoder.", stage1),
                                ("flow.", stage2)) if given is not None]
    missing = [k for k in own if k.startswith(tuple(parts)) and k not in sd]
    if missing:
        raise ValueError(f"the reference checkpoint lacks weights for {missing[:8]}")
    model.load_state_dict(sd, strict=False)
    if output is not None:
        from ._factory import save_pretrained

        save_pretrained(model, output)
    return model


# ---------------------------------------------------------------------------------------------------- registry
_BASE: dict[str, Any] = {}
_TINY: dict[str, Any] = dict(
    seq_len=256, enc_widths=(16, 32, 32, 32), down_kernels=(15, 15, 15), dec_top_width=32, dec_up_widths=(32, 32, 16),
    dec_mid_res=1, decomp_dim=8, trend_poly=2, seasons=((2, 128),), groups=8, flow_dim=32, flow_depth=2, flow_heads=2,
    sample_steps=3,
)


@register_model
def ppgflowecg_base(pretrained: bool | str = False, **kwargs: Any) -> PPGFlowECG:
    """PPGFlowECG at paper size: 10-s / 128-Hz windows → 4x40 latent; flow transformer 4 blocks, d 256, 4 heads."""
    return build_model(PPGFlowECG, "ppgflowecg_base", pretrained, dict(_BASE), **kwargs)


@register_model
def ppgflowecg_tiny(pretrained: bool | str = False, **kwargs: Any) -> PPGFlowECG:
    """PPGFlowECG for CPU tests and the demo: 2-s windows (256 samples) → 4x32 latent, widths 16-32, flow d 32."""
    return build_model(PPGFlowECG, "ppgflowecg_tiny", pretrained, dict(_TINY), **kwargs)


@register_model
def ecg_resnet1d18(pretrained: bool | str = False, **kwargs: Any) -> ECGResNet1d:
    """1-D ResNet-18 ECG classifier (multi-label CVD / arrhythmia logits)."""
    return build_model(ECGResNet1d, "ecg_resnet1d18", pretrained, dict(layers=(2, 2, 2, 2)), **kwargs)


@register_model
def ecg_resnet1d_tiny(pretrained: bool | str = False, **kwargs: Any) -> ECGResNet1d:
    """Tiny 1-D ResNet ECG classifier for CPU tests."""
    return build_model(ECGResNet1d, "ecg_resnet1d_tiny", pretrained,
                       dict(layers=(1, 1), widths=(16, 32), stem_width=16), **kwargs)
