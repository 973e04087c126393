"""Chelsea / CentroidKV (Hu et al., arXiv 2506.11418): the KV cache is clustered online, chunk by chunk, with
bipartite soft matching on an alternating partition, and each cluster's centroid replaces its tokens (spec
``papers/llm/chelsea.md``; the paper's constants were not found — those below are **assumptions**, configurable).

Per layer and KV head, on a chunk of ``c`` consecutive entries: even offsets form set A, odd offsets set B; the
cosine similarity of keys ``S = norm(K_A) norm(K_B)ᵀ`` gives every A entry its best B match; the ``r`` A entries with
the most similar matches merge into their B entry (several may merge into one); centroids are size-weighted means of
keys and of values (entries carry their cluster sizes while the chunk is being clustered). One round merges at most
``c/2``; further rounds (alternating partition again, over the surviving entries in position order) run until the
chunk keeps ``c − round(merge_ratio · c)`` entries — the ratio sets the memory saving (the paper's extreme is 80 %).

Online: the first ``sink`` tokens are kept exact (**assumption**, as eviction methods keep attention sinks); later
tokens wait exactly in a window, and whenever the window holds ``chunk_size + recent`` tokens its oldest
``chunk_size`` are clustered into the compressed store (prefill: every such chunk at once) — so the last ``recent``
to ``chunk_size + recent − 1`` tokens stay exact. No proportional-attention (log-size) bias is added: a ``Cache``
cannot change the attention logits. Assumptions: ``chunk_size = 32``, ``merge_ratio = 0.5``, ``sink = 4``,
``recent = 16``. Lossless setting: ``merge_ratio = 0``.
"""
from __future__ import annotations

import torch

from .base import CompressedCache, CompressedLayer

__all__ = ["ChelseaCache", "ChelseaLayer", "cluster_chunk", "soft_matching_round"]


def soft_matching_round(k, v, size, pos, r: int):
    """One bipartite soft-matching round on ``[b, h, n, d]`` keys/values (sizes, positions ``[b, h, n]``): the ``r``
    best-matched even-offset entries merge into their odd-offset matches; the survivors come back in position
    order."""
    b, h, n, d = k.shape
    ka, kb = k[..., 0::2, :], k[..., 1::2, :]
    nrm = torch.nn.functional.normalize
    best, match = (nrm(ka, dim=-1) @ nrm(kb, dim=-1).transpose(-1, -2)).max(-1)  # [b, h, |A|]
    order = best.argsort(-1, descending=True)
    merged, kept = order[..., :r], order[..., r:]

    def g(t, idx):
        return t.gather(-2, idx[..., None].expand(*idx.shape, t.shape[-1])) if t.dim() == 4 else t.gather(-1, idx)

    sa, sb = size[..., 0::2], size[..., 1::2]
    dst = g(match, merged)
    w = g(sa, merged)
    new_sb = sb.scatter_add(-1, dst, w)
    out = []
    for x in (k, v):
        xa, xb = x[..., 0::2, :], x[..., 1::2, :]
        acc = (xb * sb[..., None]).scatter_add(-2, dst[..., None].expand(b, h, r, d), g(xa, merged) * w[..., None])
        out.append(torch.cat([g(xa, kept), acc / new_sb[..., None]], -2))
    size_out = torch.cat([g(sa, kept), new_sb], -1)
    pos_out = torch.cat([g(pos[..., 0::2], kept), pos[..., 1::2]], -1)
    sort = pos_out.argsort(-1)
    return g(out[0], sort), g(out[1], sort), g(size_out, sort), g(pos_out, sort)


def cluster_chunk(k: torch.Tensor, v: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cluster a ``[b, h, c, d]`` chunk down to ``keep`` centroids per head by repeated soft-matching rounds."""
    b, h, n, _ = k.shape
    kf, vf = k.float(), v.float()
    size = torch.ones(b, h, n, device=k.device)
    pos = torch.arange(n, device=k.device).expand(b, h, n)
    while kf.shape[-2] > keep:
        cur = kf.shape[-2]
        kf, vf, size, pos = soft_matching_round(kf, vf, size, pos, min(cur - keep, cur // 2))
    return kf.to(k.dtype), vf.to(v.dtype)


class ChelseaLayer(CompressedLayer):
    """One layer: sink tokens + clustered chunks (one tensor) + the exact window."""

    def __init__(self, chunk_size: int, merge_ratio: float, sink: int, recent: int) -> None:
        super().__init__()
        self.chunk_size, self.sink, self.recent = chunk_size, sink, recent
        self.keep = chunk_size - round(merge_ratio * chunk_size)
        self.ck = self.cv = None  # sink + centroids
        self.wk = self.wv = None  # exact window

    def restore(self):
        parts = [(a, b) for a, b in ((self.ck, self.cv), (self.wk, self.wv)) if a is not None]
        if not parts:
            return None, None
        return torch.cat([p[0] for p in parts], -2), torch.cat([p[1] for p in parts], -2)

    def append(self, key_states, value_states):
        k = key_states if self.wk is None else torch.cat([self.wk, key_states], -2)
        v = value_states if self.wv is None else torch.cat([self.wv, value_states], -2)
        new_c: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.seen == 0 and self.sink:
            new_c.append((k[..., :self.sink, :], v[..., :self.sink, :]))
            k, v = k[..., self.sink:, :], v[..., self.sink:, :]
        while k.shape[-2] >= self.chunk_size + self.recent:
            c = self.chunk_size
            new_c.append(cluster_chunk(k[..., :c, :], v[..., :c, :], self.keep))
            k, v = k[..., c:, :], v[..., c:, :]
        if new_c:
            ks = ([self.ck] if self.ck is not None else []) + [p[0] for p in new_c]
            vs = ([self.cv] if self.cv is not None else []) + [p[1] for p in new_c]
            self.ck, self.cv = torch.cat(ks, -2), torch.cat(vs, -2)
        self.wk, self.wv = (k.clone(), v.clone()) if k.shape[-2] else (None, None)

    def stored_length(self) -> int:
        return sum(t.shape[-2] for t in (self.ck, self.wk) if t is not None)

    def held(self):
        yield from (t for t in (self.ck, self.cv, self.wk, self.wv) if t is not None)


class ChelseaCache(CompressedCache):
    """Chelsea online chunked soft-matching clustering (module docstring).

    Args:
        chunk_size: tokens per clustered chunk (even; assumption).
        merge_ratio: share of a chunk's tokens merged away (0: lossless; < 1).
        sink: first tokens kept exact (assumption).
        recent: most recent tokens always exact (assumption).
    """

    def __init__(self, chunk_size: int = 32, merge_ratio: float = 0.5, sink: int = 4, recent: int = 16) -> None:
        if chunk_size % 2 or not 0 <= merge_ratio < 1:
            raise ValueError("chunk_size must be even and merge_ratio in [0, 1)")
        self.chunk_size, self.merge_ratio = chunk_size, merge_ratio
        super().__init__(lambda i: ChelseaLayer(chunk_size, merge_ratio, sink, recent))
