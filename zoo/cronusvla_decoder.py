"""CronusVLA's cross-frame action decoder and its diffusion sampler (the released ``vla/decoder``, "DiT-B").

The decoder denoises a chunk of ``T`` actions conditioned on a *feature chunk* of ``M`` per-frame VLM features:

- input sequence: one timestep token (sinusoidal embedding -> MLP, diffusers' ``Timesteps`` + ``TimestepEmbedding``)
  prepended to the ``T`` noisy actions (each ``Linear(action_dim -> hidden)``), plus a learned ``T + 1``-row
  positional table;
- condition tokens (cross-attention keys / values): every *past* feature through ``Linear(d -> hidden)``; the
  *current* feature expanded to ``extend_num = 6`` tokens (``Linear(d -> 6 * (d // 6))`` + GELU, reshaped, then
  ``Linear(d // 6 -> hidden)``), so ``(M - 1) + 6`` tokens, plus a learned condition positional table;
- blocks: pre-LN (no affine) self-attention, pre-LN cross-attention to the condition tokens, pre-LN tanh-GELU MLP,
  each with a residual. No adaLN modulation (despite the DiT name), no masks;
- final LN + a zero-initialised ``Linear(hidden -> action_dim)``; the timestep token is dropped from the output.

Classifier-free guidance: in training a sample's whole ``[M, d]`` chunk is replaced by a learned null chunk with
probability ``cfg_dropout_prob``; :func:`sample_action_chunk` runs DDIM (diffusers) with guidance, optionally with
the released code's time-axis quirk (only the first ``action_dim`` *time steps* of the chunk are guided).

The optional feature–action retrieval prior (paper v1, not in the released code) adds ``T`` prior-action tokens to
the self-attention sequence when ``retrieval_prior=True`` (see :class:`FeatureActionBank`).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["CrossFrameDiT", "CrossAttention", "CrossFrameBlock", "FeatureChunkEmbedder", "FeatureActionBank",
           "sample_action_chunk", "DIT_SIZES", "DDPM_CONFIG", "ddim_scheduler", "ddpm_scheduler"]

#: decoder sizes of the released code: depth, hidden, heads (DiT-S / DiT-B / DiT-L)
DIT_SIZES: dict[str, tuple[int, int, int]] = {"S": (6, 384, 4), "B": (12, 768, 12), "L": (24, 1024, 16)}
#: the training diffusion: 100 DDPM steps, the cosine ("squaredcos_cap_v2") schedule, epsilon prediction, fixed small
#: variance (the released gaussian_diffusion with learn_sigma=False)
DDPM_CONFIG: dict[str, Any] = dict(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2",
                                   prediction_type="epsilon", variance_type="fixed_small", clip_sample=False)


def ddpm_scheduler(num_train_timesteps: int = 100) -> Any:
    """diffusers ``DDPMScheduler`` of the training diffusion (:data:`DDPM_CONFIG`)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**{**DDPM_CONFIG, "num_train_timesteps": num_train_timesteps})


def ddim_scheduler(num_train_timesteps: int = 100) -> Any:
    """diffusers ``DDIMScheduler`` equal to the released respaced DDIM (eta 0, timesteps 0, s, 2s, ..., no clipping,
    alpha_prev = 1 at the last step)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=num_train_timesteps, beta_schedule="squaredcos_cap_v2",
                         prediction_type="epsilon", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
                         timestep_spacing="leading")


class FeatureChunkEmbedder(nn.Module):
    """The feature chunk ``[B, M, d]`` -> ``(M - 1) + extend_num`` condition tokens, with the learned null chunk of
    classifier-free guidance (the released ``LabelEmbedder``: the "modulator" treating current and past apart).

    Args:
        feature_dim: VLM feature width d.
        hidden: decoder width.
        num_frames: M (feature chunk length).
        extend_num: tokens the current feature expands to (6 in the released code).
        cfg_dropout_prob: probability of replacing a sample's chunk by the null chunk in training (0: no null).
    """

    def __init__(self, feature_dim: int, hidden: int, num_frames: int, extend_num: int = 6,
                 cfg_dropout_prob: float = 0.1) -> None:
        super().__init__()
        self.extend_num, self.extend_dim = extend_num, feature_dim // extend_num
        self.cfg_dropout_prob = cfg_dropout_prob
        self.past = nn.Linear(feature_dim, hidden)
        self.expand = nn.Linear(feature_dim, extend_num * self.extend_dim)
        self.current = nn.Linear(self.extend_dim, hidden)
        self.null_chunk = nn.Parameter(torch.zeros(num_frames, feature_dim)) if cfg_dropout_prob > 0 else None

    def drop(self, chunk: torch.Tensor, drop_ids: torch.Tensor | None = None) -> torch.Tensor:
        """Replace the chunks where ``drop_ids`` is true (drawn with ``cfg_dropout_prob`` when None) by the null."""
        if self.null_chunk is None:
            return chunk
        if drop_ids is None:
            drop_ids = torch.rand(chunk.shape[0], device=chunk.device) < self.cfg_dropout_prob
        return torch.where(drop_ids.view(-1, 1, 1), self.null_chunk.to(chunk.dtype), chunk)

    def forward(self, chunk: torch.Tensor) -> torch.Tensor:
        b = chunk.shape[0]
        past = self.past(chunk[:, :-1])
        cur = F.gelu(self.expand(chunk[:, -1])).view(b, self.extend_num, self.extend_dim)
        return torch.cat([past, self.current(cur)], dim=1)


class CrossAttention(nn.Module):
    """Multi-head attention of ``x`` (queries) to ``c`` (keys / values), SDPA.

    Args:
        dim: width.
        num_heads: heads.
    """

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        b, n, dim = x.shape
        h = self.num_heads
        q = self.q(x).view(b, n, h, -1).transpose(1, 2)
        k, v = self.kv(c).view(b, c.shape[1], 2, h, -1).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, dim))


class CrossFrameBlock(nn.Module):
    """Pre-LN (no affine) self-attention -> cross-attention to the condition tokens -> tanh-GELU MLP, residuals.

    Args:
        dim: width.
        num_heads: heads.
        mlp_ratio: MLP hidden / width.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        from timm.layers import Mlp
        from timm.models.vision_transformer import Attention

        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm3 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=lambda: nn.GELU(approximate="tanh"))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        x = x + self.cross_attn(self.norm2(x), c)
        return x + self.mlp(self.norm3(x))


class CrossFrameDiT(nn.Module):
    """The cross-frame diffusion decoder: noisy action chunk + timestep + feature chunk -> predicted noise.

    Args:
        action_dim: action width (7: delta xyz, delta rpy, gripper).
        feature_dim: VLM feature width d (4096 Llama-2-7B, 896 Qwen2.5-0.5B).
        num_frames: M, the feature chunk length (past frames + 1).
        chunk_len: T, actions per chunk (future window + 1; 16 post-training, 8 LIBERO).
        hidden: decoder width (768 DiT-B).
        depth: blocks (12 DiT-B).
        num_heads: heads (12 DiT-B).
        mlp_ratio: MLP hidden / width.
        extend_num: tokens of the current feature (6).
        cfg_dropout_prob: null-chunk probability in training (0.1).
        retrieval_prior: add ``T`` retrieved prior-action tokens to the sequence (v1's action adaptation; off).
    """

    def __init__(self, action_dim: int = 7, feature_dim: int = 4096, num_frames: int = 7, chunk_len: int = 16,
                 hidden: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, extend_num: int = 6,
                 cfg_dropout_prob: float = 0.1, retrieval_prior: bool = False) -> None:
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps

        self.action_dim, self.chunk_len, self.num_frames = action_dim, chunk_len, num_frames
        self.action_embed = nn.Linear(action_dim, hidden)
        self.time_proj = Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)  # DiT's [cos, sin] order
        self.time_embedding = TimestepEmbedding(256, hidden)
        self.condition = FeatureChunkEmbedder(feature_dim, hidden, num_frames, extend_num, cfg_dropout_prob)
        self.pos_embed = nn.Parameter(torch.randn(chunk_len + 1, hidden) * hidden ** -0.5)
        self.cond_pos_embed = nn.Parameter(torch.randn(num_frames - 1 + extend_num, hidden) * hidden ** -0.5)
        self.prior_embed = nn.Linear(action_dim, hidden) if retrieval_prior else None
        self.prior_pos_embed = nn.Parameter(torch.zeros(chunk_len, hidden)) if retrieval_prior else None
        self.blocks = nn.ModuleList([CrossFrameBlock(hidden, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm_out = nn.LayerNorm(hidden, elementwise_affine=False, eps=1e-6)
        self.head = nn.Linear(hidden, action_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        small = [self.action_embed, self.condition.past, self.condition.expand, self.condition.current,
                 self.time_embedding.linear_1, self.time_embedding.linear_2]
        for m in small + ([self.prior_embed] if self.prior_embed is not None else []):
            nn.init.normal_(m.weight, std=0.02)
        if self.condition.null_chunk is not None:
            nn.init.normal_(self.condition.null_chunk, std=0.02)
        nn.init.zeros_(self.head.weight)  # zero-initialised output: the untrained decoder predicts zero noise
        nn.init.zeros_(self.head.bias)

    @property
    def num_condition_tokens(self) -> int:
        return self.num_frames - 1 + self.condition.extend_num

    def forward(self, noisy_actions: torch.Tensor, timesteps: torch.Tensor, feature_chunk: torch.Tensor,
                drop_ids: torch.Tensor | None = None, prior_actions: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise ``[B, T, action_dim]``.

        Args:
            noisy_actions: ``[B, T, action_dim]``.
            timesteps: ``[B]`` diffusion timesteps.
            feature_chunk: ``[B, M, d]``, oldest first, current last.
            drop_ids: ``[B]`` bool, chunks replaced by the null chunk; None: drawn with ``cfg_dropout_prob`` in
                training mode, none in eval mode.
            prior_actions: ``[B, T, action_dim]`` retrieved prior chunk (``retrieval_prior`` models only).
        """
        if drop_ids is not None or self.training:
            feature_chunk = self.condition.drop(feature_chunk, drop_ids)
        t = self.time_embedding(self.time_proj(timesteps).to(noisy_actions.dtype)).unsqueeze(1)
        x = torch.cat([t, self.action_embed(noisy_actions)], dim=1) + self.pos_embed
        if self.prior_embed is not None:
            if prior_actions is None:
                raise ValueError("this decoder was built with retrieval_prior=True: pass prior_actions")
            x = torch.cat([x, self.prior_embed(prior_actions) + self.prior_pos_embed], dim=1)
        c = self.condition(feature_chunk) + self.cond_pos_embed
        for block in self.blocks:
            x = block(x, c)
        return self.head(self.norm_out(x))[:, 1:1 + self.chunk_len]


class FeatureActionBank:
    """Feature–action retrieval (paper v1's "action adaptation"; NOT in the released code): a bank of
    (feature, action chunk) pairs from the fine-tuning demonstrations, queried with the current feature chunk; the
    retrieved chunk is the decoder's prior (``CrossFrameDiT(retrieval_prior=True)``).

    Every choice below is an ASSUMPTION (the paper's values were not retrievable), configurable:

    Args:
        key: what is stored and queried: 'current' (the current frame's feature) or 'chunk' (the flattened chunk).
        k: neighbours retrieved.
        weighting: 'mean' of the k chunks, or 'softmax' over their cosine similarities (temperature ``tau``).
        tau: softmax temperature.
    """

    def __init__(self, key: str = "current", k: int = 1, weighting: str = "mean", tau: float = 0.1) -> None:
        if key not in ("current", "chunk") or weighting not in ("mean", "softmax"):
            raise ValueError(f"key in (current, chunk), weighting in (mean, softmax); got {key!r}, {weighting!r}")
        self.key, self.k, self.weighting, self.tau = key, k, weighting, tau
        self.keys: torch.Tensor | None = None
        self.actions: torch.Tensor | None = None

    def _key(self, chunk: torch.Tensor) -> torch.Tensor:
        k = chunk[:, -1] if self.key == "current" else chunk.flatten(1)
        return F.normalize(k.float(), dim=-1)

    def add(self, feature_chunk: torch.Tensor, actions: torch.Tensor) -> None:
        """Store ``[N, M, d]`` chunks with their ``[N, T, A]`` (normalised) action chunks."""
        k, a = self._key(feature_chunk.detach()).cpu(), actions.detach().float().cpu()
        self.keys = k if self.keys is None else torch.cat([self.keys, k])
        self.actions = a if self.actions is None else torch.cat([self.actions, a])

    def __len__(self) -> int:
        return 0 if self.keys is None else len(self.keys)

    def query(self, feature_chunk: torch.Tensor) -> torch.Tensor:
        """The prior chunk ``[B, T, A]`` for each query; zeros (the normalised mid-range) for an empty bank."""
        if self.keys is None:
            raise ValueError("the feature-action bank is empty: add() demonstrations first")
        sim = self._key(feature_chunk).cpu() @ self.keys.T
        top, idx = sim.topk(min(self.k, len(self)), dim=-1)
        w = torch.full_like(top, 1.0 / top.shape[-1]) if self.weighting == "mean" else (top / self.tau).softmax(-1)
        return (w[..., None, None] * self.actions[idx]).sum(1).to(feature_chunk)


@torch.no_grad()
def sample_action_chunk(decoder: CrossFrameDiT, feature_chunk: torch.Tensor, num_steps: int = 10,
                        cfg_scale: float = 1.5, time_axis_cfg_quirk: bool = True,
                        generator: torch.Generator | None = None, prior_actions: torch.Tensor | None = None,
                        num_train_timesteps: int = 100) -> torch.Tensor:
    """DDIM (eta 0) sampling of a normalised action chunk ``[B, T, action_dim]`` with classifier-free guidance.

    Args:
        decoder: the cross-frame decoder.
        feature_chunk: ``[B, M, d]``.
        num_steps: DDIM steps (10).
        cfg_scale: guidance scale (1.5; 1 or a decoder without a null chunk: no guidance).
        time_axis_cfg_quirk: as released (inherited from CogACT's ``forward_with_cfg``): the guided/unguided split
            is taken on the chunk's *time* axis at ``action_dim``, so only the first ``action_dim`` (7) actions of
            the chunk are guided and the rest come from the conditional branch. False: guide every action.
        generator: noise generator.
        prior_actions: the retrieved prior chunk (``retrieval_prior`` decoders).
        num_train_timesteps: the training diffusion's length (100).
    """
    sched = ddim_scheduler(num_train_timesteps)
    sched.set_timesteps(num_steps)
    b, dev = feature_chunk.shape[0], feature_chunk.device
    x = torch.randn(b, decoder.chunk_len, decoder.action_dim, generator=generator, device=dev if generator is None
                    else generator.device).to(device=dev, dtype=feature_chunk.dtype)
    guided = cfg_scale != 1.0 and decoder.condition.null_chunk is not None
    for t in sched.timesteps:
        tt = torch.full((b,), int(t), device=dev, dtype=torch.long)
        if guided:
            both = decoder(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([feature_chunk, feature_chunk]),
                           drop_ids=torch.arange(2 * b, device=dev) >= b,
                           prior_actions=None if prior_actions is None else torch.cat([prior_actions] * 2))
            cond, uncond = both.chunk(2)
            eps = uncond + cfg_scale * (cond - uncond)
            if time_axis_cfg_quirk:
                n = decoder.action_dim
                eps = torch.cat([eps[:, :n], cond[:, n:]], dim=1)
        else:
            eps = decoder(x, tt, feature_chunk, drop_ids=torch.zeros(b, dtype=torch.bool, device=dev),
                          prior_actions=prior_actions)
        x = sched.step(eps, t, x).prev_sample
    return x
