"""xKV (Chang et al., arXiv 2503.18893): groups of ``G`` adjacent layers share one token basis from one truncated SVD
of their concatenated keys (and, separately, values); spec ``papers/llm/xkv.md``.

At prefill, once the last layer of a group has produced its cache, ``X = [X_l1, ..., X_lG]`` ``[b, N, G·H·d]`` is
factored by a full fp32 SVD (as the official code) and only ``A = U_r Σ_r`` ``[b, N, r]`` (shared by the group) and
``B_l`` ``[b, r, H·d]`` (one per layer) are kept, in ``factor_dtype`` (fp16 by default); layer ``l`` reads
``A B_l``. Keys are factored **pre-RoPE** (the paper's choice): the post-RoPE keys the cache receives are rotated back
with the model's RoPE (``transformers``' Llama rotary embedding built from the model config, the default RoPE type),
and rotated again after reconstruction. Decode-time tokens are appended uncompressed per layer (paper: only the
prefill is compressed). Layers outside ``[start_layer, end_layer]`` and a trailing partial group stay uncompressed.

Bytes per group: ``N r_k + G r_k H d`` (+ same for values) elements, i.e. a ratio ``G N H d / (r (N + G H d))``.
Lossless setting: ``rank_k = rank_v = None`` (full rank) with ``factor_dtype=torch.float32`` — equal to the full cache
up to fp32 rounding of the SVD (greedy tokens identical; logits within 1e-4, tested).
Defaults: ``G = 4`` and the official Llama-3.1-8B example's average rank per layer scaled to the head layout —
``rank_k = G·H·d / 8``, ``rank_v = 3·G·H·d / 16`` when ``None`` is not asked for explicitly (≈8x / 5.3x).
"""
from __future__ import annotations

import torch

from .base import CompressedCache, CompressedLayer, FullLayer

__all__ = ["XKVCache", "XKVLayer"]


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


class _Rope:
    """cos/sin of the model's (default-type) RoPE at given positions, to undo and redo the key rotation."""

    def __init__(self, config) -> None:
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

        self.rotary = LlamaRotaryEmbedding(config)

    def cos_sin(self, like: torch.Tensor, start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(start, start + n, device=like.device)[None]
        self.rotary.to(like.device)
        cos, sin = self.rotary(like.float(), pos)
        return cos[:, None].float(), sin[:, None].float()  # [1, 1, n, d]

    def unrotate(self, k: torch.Tensor, start: int) -> torch.Tensor:
        cos, sin = self.cos_sin(k, start, k.shape[-2])
        kf = k.float()
        return kf * cos - _rotate_half(kf) * sin

    def rotate(self, k: torch.Tensor, start: int) -> torch.Tensor:
        cos, sin = self.cos_sin(k, start, k.shape[-2])
        return k * cos + _rotate_half(k) * sin


class _Group:
    """The shared state of one layer group: pending prefill K/V, then A (shared) and per-layer B."""

    def __init__(self, size: int, rank_k: int | None, rank_v: int | None, factor_dtype: torch.dtype) -> None:
        self.size, self.rank_k, self.rank_v, self.factor_dtype = size, rank_k, rank_v, factor_dtype
        self.pending: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.members: list[XKVLayer] = []
        self.a_k = self.a_v = None
        self.b_k: list[torch.Tensor] = []
        self.b_v: list[torch.Tensor] = []

    def _factor(self, xs: list[torch.Tensor], rank: int | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        b, h, n, d = xs[0].shape
        x = torch.cat([t.float().transpose(1, 2).reshape(b, n, h * d) for t in xs], -1)  # [b, N, G·H·d]
        u, s, vh = torch.linalg.svd(x, full_matrices=False)
        r = min(rank or s.shape[-1], s.shape[-1])
        a = (u[..., :r] * s[..., None, :r]).to(self.factor_dtype)
        bs = [vh[:, :r, i * h * d:(i + 1) * h * d].to(self.factor_dtype).contiguous() for i in range(len(xs))]
        return a.contiguous(), bs

    def add(self, k_pre: torch.Tensor, v: torch.Tensor) -> None:
        self.pending.append((k_pre, v))
        if len(self.pending) == self.size:
            self.a_k, self.b_k = self._factor([p[0] for p in self.pending], self.rank_k)
            self.a_v, self.b_v = self._factor([p[1] for p in self.pending], self.rank_v)
            self.shape = self.pending[0][1].shape
            self.pending = []
            for m in self.members:  # the exact prefill copies go as soon as the factors exist
                m.pending_exact = None

    def read(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        b, h, n, d = self.shape

        def one(a, bl):
            return (a.float() @ bl.float()).reshape(b, n, h, d).transpose(1, 2)

        return one(self.a_k, self.b_k[i]), one(self.a_v, self.b_v[i])


class XKVLayer(CompressedLayer):
    """A layer of an xKV group: its prefill lives in the group's factors, decode tokens in its own tail."""

    def __init__(self, group: _Group, index: int, rope: _Rope | None) -> None:
        super().__init__()
        self.group, self.index, self.rope = group, index, rope
        self.n_prefill = 0
        self.pending_exact: tuple[torch.Tensor, torch.Tensor] | None = None  # until the group's SVD runs
        self.tail_k = self.tail_v = None
        group.members.append(self)

    def append(self, key_states, value_states):
        if self.seen == 0:
            k_pre = self.rope.unrotate(key_states, 0) if self.rope is not None else key_states
            self.n_prefill = key_states.shape[-2]
            self.pending_exact = (key_states, value_states)
            self.group.add(k_pre, value_states)
            return
        self.tail_k = key_states if self.tail_k is None else torch.cat([self.tail_k, key_states], -2)
        self.tail_v = value_states if self.tail_v is None else torch.cat([self.tail_v, value_states], -2)

    def restore(self):
        if self.seen == 0:
            return None, None
        if self.group.a_k is None:  # the group is not complete (an odd trailing layer set): exact
            k, v = self.pending_exact
        else:
            k, v = self.group.read(self.index)
            k = self.rope.rotate(k, 0) if self.rope is not None else k
        k, v = k.to(self.dtype), v.to(self.dtype)
        if self.tail_k is not None:
            k, v = torch.cat([k, self.tail_k], -2), torch.cat([v, self.tail_v], -2)
        return k, v

    def held(self):
        g = self.group
        if g.a_k is not None:
            yield from (g.a_k, g.a_v, g.b_k[self.index], g.b_v[self.index])
        elif self.pending_exact is not None:
            yield from self.pending_exact
        yield from (t for t in (self.tail_k, self.tail_v) if t is not None)


class XKVCache(CompressedCache):
    """xKV cache (module docstring).

    Args:
        config: the model's transformers config (layer count; RoPE for the pre-RoPE keys).
        group_size: adjacent layers per group (G; 1 = the per-layer "single SVD" baseline).
        rank_k: key rank per group (None: full rank; ``"default"``: ``G·H·d / 8``).
        rank_v: value rank per group (None: full rank; ``"default"``: ``3·G·H·d / 16``).
        start_layer: first compressed layer.
        end_layer: last compressed layer (-1: the last layer).
        pre_rope: factor the keys before RoPE (the paper); False: the post-RoPE keys as received.
        factor_dtype: storage dtype of A and B (``float16``, ``bfloat16`` or ``float32``).
    """

    def __init__(self, config, group_size: int = 4, rank_k: int | str | None = "default",
                 rank_v: int | str | None = "default", start_layer: int = 0, end_layer: int = -1,
                 pre_rope: bool = True, factor_dtype: str | torch.dtype = "float16") -> None:
        n_layers = config.num_hidden_layers
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        width = group_size * config.num_key_value_heads * head_dim
        rank_k = width // 8 if rank_k == "default" else rank_k
        rank_v = 3 * width // 16 if rank_v == "default" else rank_v
        dtype = getattr(torch, factor_dtype) if isinstance(factor_dtype, str) else factor_dtype
        end = n_layers - 1 if end_layer < 0 else end_layer
        rope = _Rope(config) if pre_rope else None
        self.group_size, self.rank_k, self.rank_v = group_size, rank_k, rank_v
        layers: list[CompressedLayer] = []
        i = 0
        while i < n_layers:
            if start_layer <= i and i + group_size - 1 <= end:
                group = _Group(group_size, rank_k, rank_v, dtype)
                layers += [XKVLayer(group, j, rope) for j in range(group_size)]
                i += group_size
            else:
                layers.append(FullLayer())
                i += 1
        super().__init__(lambda i: FullLayer())
        self.layers = layers
