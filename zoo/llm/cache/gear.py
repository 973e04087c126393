"""GEAR (Kang et al., arXiv 2403.05527): each KV chunk stored as a packed low-bit backbone D̂ + a low-rank residual
L = A Bᵀ + sparse fp16 outliers S, with a streaming fp16 buffer of recent tokens (spec ``papers/llm/gear.md``).

Storage per chunk of ``n`` tokens and one head (``d`` channels) — all of it is what :meth:`GEARLayer.held` yields:

* backbone: KIVI-style group quantisation (keys per channel in groups of ``group_size`` tokens, values per token in
  groups of ``min(group_size, d)`` channels), ``bits``-bit codes packed into bytes + fp16 scale/min per group;
* outliers (GEAR's S): in every quantisation group, the ``k = round(outlier_fraction / 2 · g)`` largest and ``k``
  smallest entries (at least one each when ``outlier_fraction > 0``) kept as fp16 values + uint8 in-group positions;
  they are replaced by the group mean before quantising (as the official code does) and written back exactly;
* low-rank residual (GEAR's L): rank-``r`` factors A ``[n, r]``, B ``[d, r]`` in fp16 of R = X − D̂ (zero at outlier
  positions), from ``power_iters`` power iterations (orthonormalised every iteration — the official code only in the
  last; ours is the stabler variant of the same estimate) with a fixed-seed start, rank ``rank_prefill`` for the
  prefill chunk and ``rank_decode`` for streamed chunks;
* streaming buffer: new tokens stay in the model's dtype until ``buffer_size`` accumulate, then that chunk is
  compressed (the prefill is compressed at once, all but its last ``len mod group_size`` tokens, which start the
  buffer — keys' token groups need whole groups).

Presets: GEAR (the defaults: 2-bit KIVI backbone, g 64, ranks 4/2, s 2 %, buffer 64 — the official Llama-3 script),
GEAR-L (``outlier_fraction=0``), KIVI (``rank_prefill=rank_decode=0, outlier_fraction=0``). Lossless setting:
``compress_prefill=False`` with ``buffer_size`` beyond the sequence (everything stays in the buffer).

Attention of the step that adds tokens uses them exactly (the prefill attends to its exact K/V); later steps see
D̂ + L + S. Nothing decompressed is kept between steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .base import CompressedCache, CompressedLayer
from .quant import GroupQuantized, quantize_groups

__all__ = ["GEARCache", "GEARConfig", "GEARLayer", "gear_compress", "low_rank_power"]


@dataclass
class GEARConfig:
    """GEAR's knobs (defaults: the official ``run_template_llama-3-8b.sh`` GEAR-KIVI setting).

    Args:
        bits: backbone bits (1, 2, 4, 8), codes packed into bytes.
        group_size: quantisation group (tokens for keys, channels for values — capped at the head dim).
        rank_prefill: low-rank residual rank of the prefill chunk (0: none).
        rank_decode: rank of each streamed chunk (0: none).
        outlier_fraction: GEAR's s: share of entries kept exactly (half largest, half smallest per group;
            0: GEAR-L).
        power_iters: power iterations of the low-rank step (the official ``loop``).
        buffer_size: tokens of the streaming fp buffer (a multiple of ``group_size``).
        compress_prefill: compress the prefill at once (False: prefill tokens enter the buffer too).
        seed: seed of the power iteration's start matrix.
    """

    bits: int = 2
    group_size: int = 64
    rank_prefill: int = 4
    rank_decode: int = 2
    outlier_fraction: float = 0.02
    power_iters: int = 3
    buffer_size: int = 64
    compress_prefill: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if self.buffer_size % self.group_size:
            raise ValueError(f"buffer_size ({self.buffer_size}) must be a multiple of group_size ({self.group_size})")


def low_rank_power(r: torch.Tensor, rank: int, iters: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank-``rank`` factors (A ``[..., n, r]`` orthonormal, B ``[..., d, r]``) with ``A Bᵀ ≈ r`` by power iteration."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    p = torch.randn(r.shape[-1], rank, generator=g).to(r).expand(*r.shape[:-2], -1, -1)
    q = r
    for _ in range(max(1, iters)):
        q = torch.linalg.qr(r @ p).Q
        p = r.transpose(-1, -2) @ q
    return q, p


@dataclass
class GEARMatrix:
    """One compressed ``[b, h, n, d]`` matrix (module docstring)."""

    backbone: GroupQuantized
    per_channel: bool  # groups run along tokens (keys) instead of channels
    a: torch.Tensor | None = None
    b: torch.Tensor | None = None
    outlier_values: torch.Tensor | None = None
    outlier_pos: torch.Tensor | None = None
    shape: tuple[int, ...] = field(default=())

    def grouped(self, x: torch.Tensor) -> torch.Tensor:
        """``[b, h, n, d]`` -> ``[b, h, axis_major, n_groups, g]`` in the backbone's group layout."""
        x = x.transpose(-1, -2) if self.per_channel else x
        return x.reshape(*x.shape[:-1], -1, self.backbone.group)

    def ungrouped(self, xg: torch.Tensor) -> torch.Tensor:
        x = xg.reshape(*xg.shape[:-2], -1)
        return x.transpose(-1, -2) if self.per_channel else x

    def decompress(self, dtype: torch.dtype) -> torch.Tensor:
        x = self.backbone.dequantize(torch.float32)
        x = x.transpose(-1, -2) if self.per_channel else x
        if self.a is not None:
            x = x + self.a.float() @ self.b.float().transpose(-1, -2)
        if self.outlier_values is not None:
            xg = self.grouped(x)
            xg = xg.scatter(-1, self.outlier_pos.long(), self.outlier_values.float())
            x = self.ungrouped(xg)
        return x.to(dtype)

    def tensors(self):
        yield from self.backbone.tensors()
        yield from (t for t in (self.a, self.b, self.outlier_values, self.outlier_pos) if t is not None)


def gear_compress(x: torch.Tensor, bits: int, group: int, rank: int, outlier_fraction: float, per_channel: bool,
                  power_iters: int = 3, seed: int = 0) -> GEARMatrix:
    """GEAR-compress ``x`` ``[b, h, n, d]``: outliers, quantised backbone, low-rank residual (module docstring).

    Args:
        x: the keys or values of one chunk.
        bits: backbone bits.
        group: group length (must divide ``n`` when ``per_channel``, else ``d``).
        rank: residual rank (0: none).
        outlier_fraction: share of entries kept exactly (0: none).
        per_channel: KIVI keys (groups of tokens per channel) instead of per-token groups of channels.
        power_iters: power iterations.
        seed: the power iteration's seed.
    """
    xf = x.float()
    xt = xf.transpose(-1, -2) if per_channel else xf
    xg = xt.reshape(*xt.shape[:-1], -1, group)
    values = pos = None
    k = max(1, round(outlier_fraction / 2 * group)) if outlier_fraction > 0 else 0
    if k:
        top = xg.topk(k, dim=-1).indices
        bottom = (-xg).topk(k, dim=-1).indices
        pos = torch.cat([top, bottom], -1)
        values = xg.gather(-1, pos)
        xg = xg.scatter(-1, pos, xg.mean(-1, keepdim=True).expand_as(pos))
    backbone = quantize_groups(xg.reshape(xt.shape), bits, group)
    m = GEARMatrix(backbone, per_channel, shape=tuple(x.shape))
    if rank:
        dq = backbone.dequantize(torch.float32)
        residual = xt - dq  # in the grouped axis' layout
        if k:  # outlier entries are restored exactly: no residual there
            rg = residual.reshape(*residual.shape[:-1], -1, group).scatter(-1, pos, 0.0)
            residual = rg.reshape(residual.shape)
        residual = residual.transpose(-1, -2) if per_channel else residual
        a, b = low_rank_power(residual, min(rank, *residual.shape[-2:]), power_iters, seed)
        m.a, m.b = a.half(), b.half()
    if k:
        m.outlier_values, m.outlier_pos = values.half(), pos.to(torch.uint8)
    return m


class GEARLayer(CompressedLayer):
    """One layer's GEAR cache: compressed chunks + the streaming buffer."""

    def __init__(self, config: GEARConfig) -> None:
        super().__init__()
        self.config = config
        self.chunks: list[tuple[GEARMatrix, GEARMatrix]] = []
        self.buf_k: torch.Tensor | None = None
        self.buf_v: torch.Tensor | None = None

    def _compress(self, k: torch.Tensor, v: torch.Tensor, rank: int) -> None:
        c = self.config
        gv = min(c.group_size, k.shape[-1])
        if k.shape[-1] % gv:
            raise ValueError(f"head dim {k.shape[-1]} is not a multiple of the value group {gv}")
        self.chunks.append((
            gear_compress(k, c.bits, c.group_size, rank, c.outlier_fraction, True, c.power_iters, c.seed),
            gear_compress(v, c.bits, gv, rank, c.outlier_fraction, False, c.power_iters, c.seed),
        ))

    def append(self, key_states, value_states):
        c = self.config
        first = self.seen == 0
        k = key_states if self.buf_k is None else torch.cat([self.buf_k, key_states], -2)
        v = value_states if self.buf_v is None else torch.cat([self.buf_v, value_states], -2)
        if first and c.compress_prefill:
            m = k.shape[-2] // c.group_size * c.group_size
            if m:
                self._compress(k[..., :m, :], v[..., :m, :], c.rank_prefill)
                k, v = k[..., m:, :], v[..., m:, :]
        while k.shape[-2] >= c.buffer_size:
            self._compress(k[..., :c.buffer_size, :], v[..., :c.buffer_size, :], c.rank_decode)
            k, v = k[..., c.buffer_size:, :], v[..., c.buffer_size:, :]
        # own storage for the buffer, so no slice keeps a larger tensor alive
        self.buf_k, self.buf_v = (k.clone(), v.clone()) if k.shape[-2] else (None, None)

    def restore(self):
        if not self.chunks and self.buf_k is None:
            return None, None
        ks = [ck.decompress(self.dtype) for ck, _ in self.chunks] + ([self.buf_k] if self.buf_k is not None else [])
        vs = [cv.decompress(self.dtype) for _, cv in self.chunks] + ([self.buf_v] if self.buf_v is not None else [])
        return torch.cat(ks, -2), torch.cat(vs, -2)

    def held(self):
        for ck, cv in self.chunks:
            yield from ck.tensors()
            yield from cv.tensors()
        yield from (t for t in (self.buf_k, self.buf_v) if t is not None)


class GEARCache(CompressedCache):
    """GEAR KV cache (module docstring); ``GEARCache(bits=4)`` etc. take :class:`GEARConfig` fields.

    Args:
        settings: a :class:`GEARConfig` (or its fields as keyword arguments).
    """

    def __init__(self, settings: GEARConfig | None = None, **kwargs) -> None:
        self.settings = settings or GEARConfig(**kwargs)
        super().__init__(lambda i: GEARLayer(self.settings))
