"""MiniCache (Liu et al., arXiv 2405.14366): from ``start_layer`` on, adjacent layers (l−1, l) share one SLERP
direction per token and head, plus each layer's per-token norm; tokens whose pair is too dissimilar keep their exact
vectors (spec ``papers/llm/minicache.md``).

Per pair, separately for K and V, token ``t`` of head ``h``: ``u = x / ‖x‖`` per layer, ``Ω = arccos(u⁰·u¹)``,
``e = sin((1−τ)Ω)/sin Ω · u⁰ + sin(τΩ)/sin Ω · u¹`` (normalised linear interpolation when ``sin Ω`` ≈ 0). Stored:
``e`` ``[b, h, n, d]`` once for the pair (model dtype, or ``bits``-bit per-token groups through :mod:`.quant` — the
"stack with quantisation" setting), ``‖x⁰‖``, ``‖x¹‖`` ``[b, h, n]``, the retained tokens' exact vectors of both
layers ``[r, d]`` with their int32 indices, and the retention threshold ``θ`` ``[b, h]`` (fp32). Layer ``j`` reads
``‖xʲ‖ · e`` with the retained entries written back exactly.

Retention (the paper's exact threshold form was not found; **assumption**): the normalised angular distance
``(Ω − Ω_min) / (Ω_max − Ω_min)`` over a head's prefill tokens; tokens above ``1 − gamma`` are retained (so
``gamma`` is the top share of the angle range kept exact; ``gamma ≥ 1`` retains every token — the lossless setting).
The absolute threshold ``θ`` found at prefill decides the decode tokens, which are merged as each pair's second
layer produces them (the paper merges "the growing cache during decoding"; the per-step rule is ours).
Defaults (assumptions where the paper's were not found): ``start_layer = L // 2`` (half depth, the paper's main
setting), ``interpolation = 0.5`` and ``gamma = 0.05`` (xKV's reimplementation values; its retention direction looks
inverted and is not followed). Layers before ``start_layer`` and an unpaired last layer stay uncompressed.
Between the two layers of a pair, the first layer's newest tokens are held exactly until the second layer's arrive.
"""
from __future__ import annotations

import math

import torch

from .base import CompressedCache, CompressedLayer, FullLayer
from .quant import GroupQuantized, quantize_groups

__all__ = ["MiniCache", "MiniCacheLayer", "slerp_merge"]


def slerp_merge(x0: torch.Tensor, x1: torch.Tensor, t: float = 0.5, eps: float = 1e-6):
    """SLERP-merge two ``[..., d]`` states: (unit direction ``e``, norms ``m0``, ``m1``, angle ``Ω``), in fp32."""
    x0, x1 = x0.float(), x1.float()
    m0, m1 = x0.norm(dim=-1), x1.norm(dim=-1)
    u0, u1 = x0 / m0.clamp_min(eps)[..., None], x1 / m1.clamp_min(eps)[..., None]
    cos = (u0 * u1).sum(-1).clamp(-1.0, 1.0)
    omega = torch.arccos(cos)
    sin = torch.sin(omega)
    ok = sin > eps
    safe = torch.where(ok, sin, torch.ones_like(sin))
    w0 = torch.where(ok, torch.sin((1 - t) * omega) / safe, torch.full_like(sin, 1 - t))
    w1 = torch.where(ok, torch.sin(t * omega) / safe, torch.full_like(sin, t))
    e = w0[..., None] * u0 + w1[..., None] * u1
    e = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)  # exact unit norm (the linear fallback needs it)
    return e, m0, m1, omega


def _cat_quant(a: GroupQuantized | None, b: GroupQuantized) -> GroupQuantized:
    if a is None:
        return b
    return GroupQuantized(torch.cat([a.packed, b.packed], 2), torch.cat([a.scale, b.scale], 2),
                          torch.cat([a.minimum, b.minimum], 2), a.bits, a.group, a.length)


class _Merged:
    """K or V of one layer pair: the shared directions, both layers' norms, the retained exact tokens."""

    def __init__(self, t: float, gamma: float, bits: int | None, group: int | None) -> None:
        self.t, self.gamma, self.bits, self.group = t, gamma, bits, group
        self.dirs: torch.Tensor | GroupQuantized | None = None  # [b, h, n, d]
        self.norms: list[torch.Tensor | None] = [None, None]    # [b, h, n] per layer
        self.idx: torch.Tensor | None = None                     # int32 [r]: t * (b·h) + (b·h index)
        self.exact: list[torch.Tensor | None] = [None, None]    # [r, d] per layer
        self.theta: torch.Tensor | None = None                   # fp32 [b, h]
        self.n = 0

    def add(self, x0: torch.Tensor, x1: torch.Tensor) -> None:
        b, h, n, d = x0.shape
        e, m0, m1, omega = slerp_merge(x0, x1, self.t)
        if self.theta is None:  # prefill: the threshold from this head's angle range
            lo, hi = omega.amin(-1), omega.amax(-1)
            self.theta = (lo + (1 - self.gamma) * (hi - lo)) if self.gamma < 1 else torch.full_like(lo, -1.0)
        keep = omega > self.theta[..., None]  # [b, h, n]
        dtype = x0.dtype
        if self.bits:
            q = quantize_groups(e, self.bits, self.group or d)
            self.dirs = _cat_quant(self.dirs, q)
        else:
            self.dirs = e.to(dtype) if self.dirs is None else torch.cat([self.dirs, e.to(dtype)], 2)
        for i, m in enumerate((m0, m1)):
            self.norms[i] = m.to(dtype) if self.norms[i] is None else torch.cat([self.norms[i], m.to(dtype)], -1)
        bh, tt = keep.reshape(b * h, n).nonzero(as_tuple=True)
        flat = ((tt + self.n) * (b * h) + bh).to(torch.int32)
        rows = [x.reshape(b * h, n, d)[bh, tt] for x in (x0, x1)]
        if self.idx is None:
            self.idx, self.exact = flat, rows
        else:
            self.idx = torch.cat([self.idx, flat])
            self.exact = [torch.cat([a, r]) for a, r in zip(self.exact, rows)]
        self.n += n

    def read(self, j: int, dtype: torch.dtype) -> torch.Tensor:
        e = self.dirs.dequantize(torch.float32) if isinstance(self.dirs, GroupQuantized) else self.dirs.float()
        x = (self.norms[j].float()[..., None] * e).to(dtype)
        b, h, n, d = x.shape
        if self.idx.numel():
            flat = x.permute(2, 0, 1, 3).reshape(n * b * h, d)
            flat[self.idx.long()] = self.exact[j].to(dtype)
            x = flat.reshape(n, b, h, d).permute(1, 2, 0, 3)
        return x

    def tensors(self):
        dirs = self.dirs.tensors() if isinstance(self.dirs, GroupQuantized) else (self.dirs,)
        yield from (t for t in (*dirs, *self.norms, self.idx, *self.exact, self.theta) if t is not None)


class _Pair:
    def __init__(self, t: float, gamma: float, bits: int | None, group: int | None) -> None:
        self.k, self.v = _Merged(t, gamma, bits, group), _Merged(t, gamma, bits, group)
        self.pending: tuple[torch.Tensor, torch.Tensor] | None = None  # first layer's newest tokens


class MiniCacheLayer(CompressedLayer):
    """Layer ``j`` (0 or 1) of a MiniCache pair."""

    def __init__(self, pair: _Pair, j: int) -> None:
        super().__init__()
        self.pair, self.j = pair, j

    def append(self, key_states, value_states):
        p = self.pair
        if self.j == 0:
            p.pending = (key_states, value_states)
            return
        k0, v0 = p.pending
        p.k.add(k0, key_states)
        p.v.add(v0, value_states)
        p.pending = None

    def restore(self):
        if self.seen == 0:
            return None, None
        return self.pair.k.read(self.j, self.dtype), self.pair.v.read(self.j, self.dtype)

    def held(self):
        yield from self.pair.k.tensors()
        yield from self.pair.v.tensors()
        if self.j == 0 and self.pair.pending is not None:
            yield from self.pair.pending


class MiniCache(CompressedCache):
    """MiniCache cross-layer SLERP merging (module docstring).

    Args:
        config: the model's transformers config (its layer count).
        start_layer: first layer of the first merged pair (None: half depth, ``L // 2``).
        interpolation: SLERP parameter τ (0: the first layer's direction, 1: the second's).
        gamma: retention: the top share of a head's prefill angle range kept exact (≥ 1: every token, lossless).
        bits: quantise the shared directions to ``bits`` per entry (None: model dtype).
        group: channels per quantisation group (None: the head dim).
    """

    def __init__(self, config, start_layer: int | None = None, interpolation: float = 0.5, gamma: float = 0.05,
                 bits: int | None = None, group: int | None = None) -> None:
        n_layers = config.num_hidden_layers
        start = n_layers // 2 if start_layer is None else start_layer
        if not 0 <= interpolation <= 1 or math.isnan(interpolation):
            raise ValueError(f"interpolation must lie in [0, 1], got {interpolation}")
        self.start_layer, self.interpolation, self.gamma, self.bits = start, interpolation, gamma, bits
        layers: list[CompressedLayer] = [FullLayer() for _ in range(min(start, n_layers))]
        while len(layers) + 1 < n_layers:
            pair = _Pair(interpolation, gamma, bits, group)
            layers += [MiniCacheLayer(pair, 0), MiniCacheLayer(pair, 1)]
        layers += [FullLayer() for _ in range(n_layers - len(layers))]
        super().__init__(lambda i: FullLayer())
        self.layers = layers
