"""The MAR half of Skywork UniPic: the masked-autoregressive encoder/decoder over VAE latents and its DiffLoss head.

MAR ("Autoregressive Image Generation without Vector Quantization", Li et al., NeurIPS 2024) as UniPic uses it
(``src/models/mar/`` of the official code): tokens are VAE latent patches; an MAE-style ViT encoder sees the visible
tokens after ``buffer_size`` learned "buffer" tokens (filled with the class embedding in MAR, with the learned
``fake_latent`` in UniPic: no class conditioning); the decoder re-inserts mask tokens (or, for editing, the source
image's encoder features ``x_con``) and gives a condition ``z`` per token; a small MLP diffusion model
(:class:`SimpleMLPAdaLN`) denoises each token given ``z`` (:class:`DiffLoss`). Position tables are learned for one
grid and bilinearly interpolated to others (UniPic trains them at 512 px and generates at 1024 px).

The diffusion is improved DDPM (Nichol & Dhariwal 2021): cosine schedule (diffusers' ``squaredcos_cap_v2``),
epsilon prediction plus a learned interpolation of the log variance (``learned_range``), trained with MSE + the
variational bound with the mean frozen; sampling on ``sampling_steps`` evenly respaced steps (the sampling step
equals diffusers' ``DDPMScheduler`` on the same timesteps at temperature 1: tested).

The frozen image tokenizer is MAR's KL-16 VAE, a diffusers ``AutoencoderKL`` (:data:`MAR_KL16_VAE`, LDM keys converted
by :func:`convert_mar_vae`); the tiny models use pixel latents instead (:class:`PixelLatents`).
"""
from __future__ import annotations

import math
import re
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = [
    "MAR", "DiffLoss", "SimpleMLPAdaLN", "TokenDiffusion", "PixelLatents", "MAR_KL16_VAE", "convert_mar_vae",
    "convert_mar_checkpoint", "mask_by_order", "next_mask_len", "truncated_normal_ratio", "interpolate_pos_table",
]

#: MAR's KL-16 VAE (``kl16.ckpt``) as a diffusers AutoencoderKL: ch 128, ch_mult (1, 1, 2, 2, 4), 2 res blocks,
#: attention in the encoder's lowest level (LDM ``attn_resolutions=(16,)`` at 256 px) and the mid blocks, 16 channels
MAR_KL16_VAE: dict[str, Any] = dict(
    in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
    block_out_channels=(128, 128, 256, 256, 512),
    down_block_types=("DownEncoderBlock2D",) * 4 + ("AttnDownEncoderBlock2D",),
    up_block_types=("UpDecoderBlock2D",) * 5, norm_num_groups=32, sample_size=256, scaling_factor=0.2325,
)


# --------------------------------------------------------------------------------------------------- helpers
def interpolate_pos_table(table: torch.Tensor, grid: tuple[int, int], to: tuple[int, int], buffer: int
                          ) -> torch.Tensor:
    """A learned (1, buffer + h*w, C) position table for another grid: the buffer rows unchanged, the image rows
    bilinearly interpolated (MAR's get_*_pos_embed; UniPic's 32x32 tables at 512 px -> 64x64 at 1024 px)."""
    if tuple(grid) == tuple(to):
        return table
    buf, img = table[:, :buffer], table[:, buffer:]
    c = img.shape[-1]
    img = img.reshape(1, grid[0], grid[1], c).permute(0, 3, 1, 2)
    img = F.interpolate(img.float(), size=to, mode="bilinear").to(table.dtype)
    return torch.cat([buf, img.permute(0, 2, 3, 1).reshape(1, to[0] * to[1], c)], dim=1)


def truncated_normal_ratio(n: int, low: float = 0.7, generator: torch.Generator | None = None) -> torch.Tensor:
    """``n`` mask ratios from the normal N(1, 0.25^2) truncated to [low, 1] (MAR's left-half truncated Gaussian), by
    inverse-CDF sampling (checked against scipy.stats.truncnorm in the tests)."""
    a = torch.special.ndtr(torch.tensor((low - 1.0) / 0.25, dtype=torch.float64))
    u = a + (0.5 - a) * torch.rand(n, generator=generator, dtype=torch.float64)
    return (1.0 + 0.25 * torch.special.ndtri(u)).clamp(low, 1.0).float()


def mask_by_order(mask_len: int, orders: torch.Tensor) -> torch.Tensor:
    """A boolean (B, L) mask that is True on the first ``mask_len`` positions of each row's order."""
    mask = torch.zeros(orders.shape, dtype=torch.bool, device=orders.device)
    return mask.scatter(1, orders[:, :mask_len], True)


def next_mask_len(step: int, num_iter: int, seq_len: int, masked_now: int) -> int:
    """MaskGIT cosine schedule: tokens still masked after ``step`` (0-based) of ``num_iter``, at least one token
    revealed per step and at least one left masked until the last step."""
    planned = math.floor(seq_len * math.cos(math.pi / 2.0 * (step + 1) / num_iter))
    return max(1, min(masked_now - 1, planned))


class PixelLatents(nn.Module):
    """Pixel "latents" for the tiny CPU models: the image average-pooled by ``stride`` (C = 3), decoded by nearest
    upsampling. Stands where the frozen VAE stands (``encode`` / ``decode``), with no parameters.

    Args:
        stride: pooling factor (the VAE stride's stand-in).
    """

    def __init__(self, stride: int = 2) -> None:
        super().__init__()
        self.stride = stride
        self.latent_channels = 3

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.stride) if self.stride > 1 else x

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return F.interpolate(z, scale_factor=self.stride, mode="nearest") if self.stride > 1 else z


# ------------------------------------------------------------------------------------------- the diffusion head
class ResBlock(nn.Module):
    """An adaLN-modulated residual MLP block (shift, scale, gate from the condition).

    Args:
        width: channels.
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.in_ln = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(self.in_ln(x) * (1 + scale) + shift)


class FinalLayer(nn.Module):
    """DiT's final layer: adaLN-modulated LayerNorm (no affine) and a linear output.

    Args:
        width: channels.
        out_channels: output channels.
    """

    def __init__(self, width: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(self.norm_final(x) * (1 + scale) + shift)


class SimpleMLPAdaLN(nn.Module):
    """MAR's per-token denoiser: input projection, ``depth`` adaLN residual blocks conditioned on time + ``z``, and a
    final layer giving epsilon and the variance interpolation (2 x ``channels``).

    Args:
        channels: token channels (VAE latent channels x patch^2).
        width: hidden width (1536 in UniPic).
        z_channels: condition channels (the MAR decoder width).
        depth: residual blocks (12 in UniPic).
        grad_checkpointing: recompute the blocks in backward.
    """

    def __init__(self, channels: int, width: int, z_channels: int, depth: int, grad_checkpointing: bool = False
                 ) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding

        self.channels = channels
        self.time_embed = TimestepEmbedding(256, width)
        self.cond_embed = nn.Linear(z_channels, width)
        self.input_proj = nn.Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * channels)
        self.grad_checkpointing = grad_checkpointing
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.linear_1.weight, std=0.02)
        nn.init.normal_(self.time_embed.linear_2.weight, std=0.02)
        for block in self.res_blocks:  # adaLN-zero: every block starts as the identity, the output as zero
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for lin in (self.final_layer.adaLN_modulation[-1], self.final_layer.linear):
            nn.init.zeros_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        from diffusers.models.embeddings import get_timestep_embedding

        tf = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=0)
        y = self.time_embed(tf.to(self.input_proj.weight.dtype)) + self.cond_embed(c.to(self.input_proj.weight.dtype))
        h = self.input_proj(x.to(self.input_proj.weight.dtype))
        for block in self.res_blocks:
            h = checkpoint(block, h, y, use_reentrant=False) if self.grad_checkpointing and self.training else \
                block(h, y)
        return self.final_layer(h, y)


def _normal_kl(m1: torch.Tensor, lv1: torch.Tensor, m2: torch.Tensor, lv2: torch.Tensor) -> torch.Tensor:
    return 0.5 * (-1.0 + lv2 - lv1 + torch.exp(lv1 - lv2) + (m1 - m2) ** 2 * torch.exp(-lv2))


def _discretized_gaussian_nll(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """-log p(x) of a Gaussian discretised to 255 bins on [-1, 1] (the VLB's t = 0 term, as in improved DDPM)."""
    def cdf(v: torch.Tensor) -> torch.Tensor:
        return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (v + 0.044715 * v ** 3)))
    inv = torch.exp(-log_scale)
    cdf_plus, cdf_min = cdf(inv * (x - mean + 1 / 255)), cdf(inv * (x - mean - 1 / 255))
    log_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus = torch.log((1 - cdf_min).clamp(min=1e-12))
    mid = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return -torch.where(x < -0.999, log_plus, torch.where(x > 0.999, log_one_minus, mid))


class TokenDiffusion:
    """Improved-DDPM Gaussian diffusion on tokens over diffusers' cosine schedule, learned-range variance.

    Args:
        steps: training timesteps (1000).
        sampling_steps: evenly respaced sampling steps (100); the model is called with the original timesteps.
    """

    def __init__(self, steps: int = 1000, sampling_steps: int = 100) -> None:
        from diffusers import DDPMScheduler

        self.scheduler = DDPMScheduler(num_train_timesteps=steps, beta_schedule="squaredcos_cap_v2",
                                       variance_type="learned_range", clip_sample=False, prediction_type="epsilon")
        self.steps = steps
        self.train = self._process(self.scheduler.alphas_cumprod.double())
        # respacing: diffusers' "linspace" spacing equals improved DDPM's space_timesteps(steps, str(n))
        self.timesteps = torch.linspace(0, steps - 1, sampling_steps).round().long()
        self.sample_process = self._process(self.scheduler.alphas_cumprod.double()[self.timesteps])

    @staticmethod
    def _process(ab: torch.Tensor) -> dict[str, torch.Tensor]:
        ab_prev = torch.cat([ab.new_ones(1), ab[:-1]])
        betas = 1 - ab / ab_prev
        post_var = betas * (1 - ab_prev) / (1 - ab)
        post_logvar = torch.log(torch.cat([post_var[1:2], post_var[1:]]))
        return dict(ab=ab, betas=betas, post_logvar=post_logvar, log_betas=torch.log(betas),
                    coef_x0=betas * ab_prev.sqrt() / (1 - ab), coef_xt=(1 - ab_prev) * (1 - betas).sqrt() / (1 - ab))

    @staticmethod
    def _at(p: dict[str, torch.Tensor], key: str, i: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return p[key].to(like.device)[i].to(like.dtype)[:, None]

    def p_mean_logvar(self, p: dict[str, torch.Tensor], out: torch.Tensor, x: torch.Tensor, i: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log variance of the model's output ``out`` (eps, v) at process index ``i``."""
        eps, v = out.chunk(2, dim=-1)
        ab = self._at(p, "ab", i, x)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        mean = self._at(p, "coef_x0", i, x) * x0 + self._at(p, "coef_xt", i, x) * x
        frac = (v + 1) / 2
        logvar = frac * self._at(p, "log_betas", i, x) + (1 - frac) * self._at(p, "post_logvar", i, x)
        return mean, logvar

    def training_losses(self, net: nn.Module, x0: torch.Tensor, c: torch.Tensor,
                        t: torch.Tensor | None = None, noise: torch.Tensor | None = None) -> torch.Tensor:
        """Per-token loss: epsilon MSE + the VLB term (mean frozen) in bits, both averaged over channels."""
        x0 = x0.float()
        if t is None:
            t = torch.randint(0, self.steps, (x0.shape[0],), device=x0.device)
        noise = torch.randn_like(x0) if noise is None else noise
        ab = self._at(self.train, "ab", t, x0)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        out = net(xt, t, c).float()
        eps, v = out.chunk(2, dim=-1)
        mse = ((noise - eps) ** 2).mean(-1)
        mean, logvar = self.p_mean_logvar(self.train, torch.cat([eps.detach(), v], -1), xt, t)
        true_mean = self._at(self.train, "coef_x0", t, x0) * x0 + self._at(self.train, "coef_xt", t, x0) * xt
        true_logvar = self._at(self.train, "post_logvar", t, x0)
        kl = _normal_kl(true_mean, true_logvar, mean, logvar).mean(-1) / math.log(2.0)
        nll = _discretized_gaussian_nll(x0, mean, 0.5 * logvar).mean(-1) / math.log(2.0)
        return mse + torch.where(t == 0, nll, kl)

    @torch.no_grad()
    def sample(self, net: nn.Module, c: torch.Tensor, channels: int, cfg: float = 1.0, temperature: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Denoise one token per row of ``c``. With ``cfg != 1`` ``c`` is [cond; uncond] and the result has half the
        rows: eps = uncond + cfg (cond - uncond), the variance from the conditional output, one noise for both."""
        n = c.shape[0] // 2 if cfg != 1.0 else c.shape[0]
        x = torch.randn(n, channels, generator=generator, dtype=torch.float32).to(c.device)
        for i in reversed(range(len(self.timesteps))):
            ii = torch.full((n,), i, dtype=torch.long, device=c.device)
            t = self.timesteps.to(c.device)[ii]
            out = self.model_output(net, x, t, c, cfg)
            noise = torch.randn(x.shape, generator=generator, dtype=torch.float32).to(c.device)
            x = self.step(out, x, ii, noise, temperature)
        return x

    @staticmethod
    def model_output(net: nn.Module, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor, cfg: float) -> torch.Tensor:
        if cfg == 1.0:
            return net(x, t, c).float()
        out = net(torch.cat([x, x]), torch.cat([t, t]), c).float()
        cond, uncond = out.chunk(2)
        (ce, cv), (ue, _) = cond.chunk(2, -1), uncond.chunk(2, -1)
        return torch.cat([ue + cfg * (ce - ue), cv], -1)

    def step(self, out: torch.Tensor, x: torch.Tensor, i: torch.Tensor, noise: torch.Tensor,
             temperature: float = 1.0) -> torch.Tensor:
        """One respaced reverse step from process index ``i`` (no noise at index 0)."""
        mean, logvar = self.p_mean_logvar(self.sample_process, out, x, i)
        return mean + (i > 0).float()[:, None] * torch.exp(0.5 * logvar) * noise * temperature


class DiffLoss(nn.Module):
    """MAR's diffusion loss: :class:`SimpleMLPAdaLN` + :class:`TokenDiffusion`; the loss is averaged over the masked
    tokens only (``mask`` 1 = masked = predicted).

    Args:
        channels: token channels.
        z_channels: condition channels.
        width: MLP width.
        depth: residual blocks.
        steps: training timesteps.
        sampling_steps: respaced sampling steps.
        grad_checkpointing: recompute blocks in backward.
    """

    def __init__(self, channels: int, z_channels: int, width: int, depth: int, steps: int = 1000,
                 sampling_steps: int = 100, grad_checkpointing: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.net = SimpleMLPAdaLN(channels, width, z_channels, depth, grad_checkpointing)
        self.steps, self.sampling_steps = steps, sampling_steps
        self._diffusion: TokenDiffusion | None = None

    @property
    def diffusion(self) -> TokenDiffusion:
        """The schedule, built on first use on the CPU (so a model built on the meta device stays buildable)."""
        if self._diffusion is None:
            with torch.device("cpu"):
                self._diffusion = TokenDiffusion(self.steps, self.sampling_steps)
        return self._diffusion

    def forward(self, target: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        loss = self.diffusion.training_losses(self.net, target, z)
        if mask is None:
            return loss.mean()
        mask = mask.to(loss.dtype)
        return (loss * mask).sum() / mask.sum().clamp(min=1)

    def sample(self, z: torch.Tensor, temperature: float = 1.0, cfg: float = 1.0,
               generator: torch.Generator | None = None) -> torch.Tensor:
        return self.diffusion.sample(self.net, z, self.channels, cfg, temperature, generator)


# ----------------------------------------------------------------------------------------------------- MAR
class MAR(nn.Module):
    """MAR encoder/decoder with buffer tokens and the DiffLoss head (no class embedding: UniPic's ``fake_latent``).

    Args:
        img_size: image size the position tables are learned for (512 in UniPic).
        vae_stride: pixels per latent cell (16 for KL-16).
        patch_size: latent cells per token side (1 in UniPic).
        latent_channels: VAE latent channels (16).
        encoder_dim: encoder width (1280 for MAR-H).
        encoder_depth: encoder blocks (20).
        encoder_heads: encoder heads (16).
        decoder_dim: decoder width (1280).
        decoder_depth: decoder blocks (20).
        decoder_heads: decoder heads (16).
        mlp_ratio: block MLP ratio (4).
        buffer_size: buffer tokens before the image tokens (64).
        attn_drop: attention dropout (0.1).
        proj_drop: projection dropout (0.1).
        mask_ratio_min: lower end of the truncated-normal mask ratio (0.7).
        diffloss_width: DiffLoss MLP width (1536).
        diffloss_depth: DiffLoss blocks (12).
        diffusion_steps: DiffLoss training timesteps (1000).
        sampling_steps: DiffLoss respaced sampling steps (100).
        diffusion_batch_mul: each token's diffusion loss drawn this many times per step (4).
        grad_checkpointing: recompute blocks in backward.
    """

    def __init__(self, img_size: int = 512, vae_stride: int = 16, patch_size: int = 1, latent_channels: int = 16,
                 encoder_dim: int = 1280, encoder_depth: int = 20, encoder_heads: int = 16, decoder_dim: int = 1280,
                 decoder_depth: int = 20, decoder_heads: int = 16, mlp_ratio: float = 4.0, buffer_size: int = 64,
                 attn_drop: float = 0.1, proj_drop: float = 0.1, mask_ratio_min: float = 0.7,
                 diffloss_width: int = 1536, diffloss_depth: int = 12, diffusion_steps: int = 1000,
                 sampling_steps: int = 100, diffusion_batch_mul: int = 4, grad_checkpointing: bool = False) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.img_size, self.vae_stride, self.patch_size = img_size, vae_stride, patch_size
        self.seq_h = self.seq_w = img_size // vae_stride // patch_size
        self.seq_len = self.seq_h * self.seq_w
        self.latent_channels = latent_channels
        self.token_dim = latent_channels * patch_size ** 2
        self.buffer_size = buffer_size
        self.encoder_dim, self.decoder_dim = encoder_dim, decoder_dim
        self.mask_ratio_min = mask_ratio_min
        self.diffusion_batch_mul = diffusion_batch_mul
        self.grad_checkpointing = grad_checkpointing

        def blocks(dim: int, depth: int, heads: int) -> nn.ModuleList:
            return nn.ModuleList(Block(dim, heads, mlp_ratio, qkv_bias=True, proj_drop=proj_drop, attn_drop=attn_drop,
                                       norm_layer=partial(nn.LayerNorm, eps=1e-6)) for _ in range(depth))

        self.fake_latent = nn.Parameter(torch.zeros(1, encoder_dim))
        self.z_proj = nn.Linear(self.token_dim, encoder_dim)
        self.z_proj_ln = nn.LayerNorm(encoder_dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buffer_size, encoder_dim))
        self.encoder_blocks = blocks(encoder_dim, encoder_depth, encoder_heads)
        self.encoder_norm = nn.LayerNorm(encoder_dim, eps=1e-6)
        self.decoder_embed = nn.Linear(encoder_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.decoder_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len + buffer_size, decoder_dim))
        self.decoder_blocks = blocks(decoder_dim, decoder_depth, decoder_heads)
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.diffusion_pos_embed_learned = nn.Parameter(torch.zeros(1, self.seq_len, decoder_dim))
        self._init_weights()
        self.diffloss = DiffLoss(self.token_dim, decoder_dim, diffloss_width, diffloss_depth, diffusion_steps,
                                 sampling_steps, grad_checkpointing)

    def _init_weights(self) -> None:
        for p in (self.fake_latent, self.mask_token, self.encoder_pos_embed_learned, self.decoder_pos_embed_learned,
                  self.diffusion_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    # ------------------------------------------------------------------------------------------ tokens
    def patchify(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) latents -> (B, H/p * W/p, C p p) tokens."""
        b, c, h, w = latents.shape
        p = self.patch_size
        x = latents.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def unpatchify(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, p, c = tokens.shape[0], self.patch_size, self.latent_channels
        x = tokens.reshape(b, grid[0], grid[1], c, p, p).permute(0, 3, 1, 4, 2, 5)
        return x.reshape(b, c, grid[0] * p, grid[1] * p)

    def sample_orders(self, bsz: int, seq_len: int | None = None, generator: torch.Generator | None = None
                      ) -> torch.Tensor:
        """A random generation order (a permutation of the token indices) per sample."""
        n = self.seq_len if seq_len is None else seq_len
        return torch.rand(bsz, n, generator=generator).argsort(dim=1).to(self.fake_latent.device)

    def random_masking(self, orders: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """MAE-style training mask (1 = masked): the first ceil(L * r) tokens of each order, r ~ the truncated normal
        (one ratio per batch, so every sample keeps the same number of visible tokens)."""
        ratio = float(truncated_normal_ratio(1, self.mask_ratio_min, generator)[0])
        n = int(math.ceil(orders.shape[1] * ratio))
        return mask_by_order(n, orders).to(self.fake_latent.dtype)

    def pos_tables(self, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g0 = (self.seq_h, self.seq_w)
        return (interpolate_pos_table(self.encoder_pos_embed_learned, g0, grid, self.buffer_size),
                interpolate_pos_table(self.decoder_pos_embed_learned, g0, grid, self.buffer_size),
                interpolate_pos_table(self.diffusion_pos_embed_learned, g0, grid, 0))

    def _run(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            x = checkpoint(block, x, use_reentrant=False) if self.grad_checkpointing and self.training else block(x)
        return x

    # ----------------------------------------------------------------------------------- encoder / decoder
    def forward_encoder(self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                        buffer: torch.Tensor | None = None) -> torch.Tensor:
        """(B, L, C) tokens + (B, L) mask (1 = masked, the same count per row) -> (B, buffer + visible, D): buffer
        tokens filled with ``buffer`` (B, D) or (B, buffer, D) (default ``fake_latent``), position table added,
        masked tokens removed before the blocks."""
        b, n, _ = tokens.shape
        x = self.z_proj(tokens.to(self.z_proj.weight.dtype))
        if buffer is None:
            buffer = self.fake_latent.expand(b, -1)
        buffer = buffer.to(x.dtype)
        buf = buffer[:, None].expand(b, self.buffer_size, -1) if buffer.ndim == 2 else buffer
        x = torch.cat([buf, x], dim=1) + self.pos_tables(grid)[0]
        x = self.z_proj_ln(x)
        keep = torch.cat([mask.new_zeros(b, self.buffer_size), mask], dim=1) == 0
        x = x[keep].reshape(b, -1, x.shape[-1])
        return self.encoder_norm(self._run(self.encoder_blocks, x))

    def forward_decoder(self, x: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int],
                        x_con: torch.Tensor | None = None) -> torch.Tensor:
        """Encoder output (B, buffer + visible, D) -> per-token conditions z (B, L, D_dec). Masked slots hold the mask
        token, or for editing ``decoder_embed(x_con)`` (x_con: the source image's unmasked encoder output)."""
        b = mask.shape[0]
        x = self.decoder_embed(x)
        keep = torch.cat([mask.new_zeros(b, self.buffer_size), mask], dim=1) == 0
        if x_con is not None:
            full = self.decoder_embed(x_con.to(x.dtype))
        else:
            full = self.mask_token.to(x.dtype).expand(b, keep.shape[1], -1)
        full = full.masked_scatter(keep[..., None], x) if x.numel() else full
        full = full + self.pos_tables(grid)[1]
        z = self.decoder_norm(self._run(self.decoder_blocks, full))[:, self.buffer_size:]
        return z + self.pos_tables(grid)[2]

    def forward_loss(self, z: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """DiffLoss on (B, L) tokens, each drawn ``diffusion_batch_mul`` times, averaged over masked tokens only."""
        k = self.diffusion_batch_mul
        return self.diffloss(target.reshape(-1, target.shape[-1]).repeat(k, 1),
                             z.reshape(-1, z.shape[-1]).repeat(k, 1), mask.reshape(-1).repeat(k))

    def forward(self, tokens: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Unconditional MAR (buffer = ``fake_latent``): the diffusion loss of ``tokens`` under ``mask``."""
        z = self.forward_decoder(self.forward_encoder(tokens, mask, grid), mask, grid)
        return self.forward_loss(z, tokens, mask)


# -------------------------------------------------------------------------------------- official checkpoints
def convert_mar_vae(state_dict: dict[str, torch.Tensor], config: dict[str, Any] | None = None
                    ) -> dict[str, torch.Tensor]:
    """MAR's ``kl16.ckpt`` (LDM AutoencoderKL keys, under ``model``) -> diffusers ``AutoencoderKL`` keys: diffusers'
    own LDM converter plus the encoder's down-block attention (which that converter leaves out)."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint, update_vae_attentions_ldm_to_diffusers

    sd = state_dict.get("model", state_dict)
    sd = {k: v for k, v in sd.items() if not k.startswith("loss.")}
    cfg = dict(config or MAR_KL16_VAE)
    down_attn = [k for k in sd if re.match(r"encoder\.down\.\d+\.attn\.", k)]
    out = convert_ldm_vae_checkpoint({k: v for k, v in sd.items() if k not in down_attn}, cfg)
    for prefix in sorted({re.match(r"(encoder\.down\.\d+\.attn\.\d+)\.", k)[1] for k in down_attn}):
        i, j = re.findall(r"\d+", prefix)
        update_vae_attentions_ldm_to_diffusers([k for k in down_attn if k.startswith(prefix + ".")], out, sd,
                                               {"old": f"down.{i}.attn.{j}", "new": f"down_blocks.{i}.attentions.{j}"})
    return out


def convert_mar_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official MAR / UniPic ``mar.*`` state dict -> :class:`MAR` keys: the DiffLoss time MLP's ``mlp.0/2`` become
    diffusers' ``linear_1/2``; MAR's ``class_emb`` (ImageNet classes; UniPic conditions through the buffer tokens)
    is dropped."""
    out = {}
    for k, v in state_dict.items():
        if k.startswith("class_emb."):
            continue
        k = k.replace("time_embed.mlp.0.", "time_embed.linear_1.").replace("time_embed.mlp.2.", "time_embed.linear_2.")
        out[k] = v
    return out
