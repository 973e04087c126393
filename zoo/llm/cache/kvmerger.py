"""KVMerger (Wang et al., arXiv 2407.08454): per layer and KV head, the prefill is cut into *merging sets* of adjacent
tokens with similar keys, and each set becomes one K/V pair — a Gaussian-kernel weighted average around the set's
pivot, the member with the most accumulated attention — so the cache meets a fixed budget (spec
``papers/llm/kvmerger.md``; the paper body was not found, several details are secondary or ours, marked below).

At prefill (``n`` tokens, budget ``B = ceil(ratio · n)``), per head:

1. Cosine similarity of each pair of consecutive keys. Linking the ``n − B`` most similar consecutive pairs yields
   exactly ``B`` contiguous sets — the greedy threshold scan of the paper's Algorithm 1 with its threshold set where
   the budget is met (per head), so the budget holds exactly for every head (the secondary reimplementation
   binary-searches the threshold instead). Protected tokens are never linked: the ``protect_top`` tokens of most
   accumulated attention (reviewer's note: top-k tokens stay unmerged; k not found — **assumption** 4) and the last
   ``recent`` tokens (**assumption**, H2O-style window, 16).
2. Pivot ``p`` = the set's member with the most accumulated attention of the prefill queries (H2O importance; queries
   from :func:`zoo.llm.cache.scores.enable_query_observation`, else keys as queries).
3. Weights ``w_i = exp(−‖k_p − k_i‖² / (2σ²))``; σ² = the mean squared pivot distance of the set's other members
   (**assumption**: the secondary formula ``σ = Σ g / (√2 |S|)`` is circular and dimensionless; ``sigma`` sets a fixed
   σ instead). Merged key and value: ``Σ w_i x_i / Σ w_i`` (same weights for values — secondary).
4. The merged pair takes the set's place (sets stay in positional order; keys are post-RoPE, not re-rotated).

Decode tokens are appended unmerged (whether the paper merges during decoding was not found; **assumption**).
Lossless setting: ``ratio = 1`` (no links). Memory: ``B`` K/V entries per head instead of ``n``.
"""
from __future__ import annotations

import math

import torch

from .scores import ScoredCache, ScoredLayer, attention_probs

__all__ = ["KVMergerCache", "KVMergerLayer", "merge_sets"]


def merge_sets(k: torch.Tensor, v: torch.Tensor, importance: torch.Tensor, budget: int, protect_top: int = 4,
               recent: int = 16, sigma: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """KVMerger's set identification + Gaussian-kernel merge of ``[b, h, n, d]`` keys/values to ``budget`` entries
    per head (module docstring); ``importance`` ``[b, h, n]`` is the accumulated attention."""
    b, h, n, d = k.shape
    if budget >= n:
        return k, v
    kf, vf = k.float(), v.float()
    kn = torch.nn.functional.normalize(kf, dim=-1)
    sim = (kn[..., 1:, :] * kn[..., :-1, :]).sum(-1)  # edge i joins tokens i and i + 1
    protect = torch.zeros(b, h, n, dtype=torch.bool, device=k.device)
    if recent:
        protect[..., max(0, n - recent):] = True
    if protect_top:
        protect.scatter_(-1, importance.topk(min(protect_top, n), -1).indices, True)
    allowed = ~(protect[..., 1:] | protect[..., :-1])
    links = min(n - budget, int(allowed.sum(-1).min()))
    link = torch.zeros_like(allowed)
    if links > 0:
        link.scatter_(-1, sim.masked_fill(~allowed, float("-inf")).topk(links, -1).indices, True)
    seg = torch.cat([torch.zeros_like(link[..., :1], dtype=torch.long), (~link).long().cumsum(-1)], -1)
    m = n - links  # sets per head
    imp = importance.float()
    seg_max = torch.full((b, h, m), float("-inf"), device=k.device).scatter_reduce(-1, seg, imp, "amax")
    pos = torch.arange(n, device=k.device).expand(b, h, n)
    is_max = imp == seg_max.gather(-1, seg)
    pivot = torch.full((b, h, m), n, device=k.device).scatter_reduce(-1, seg, torch.where(is_max, pos, n), "amin")
    kp = kf.gather(-2, pivot.gather(-1, seg)[..., None].expand(b, h, n, d))
    dist2 = (kf - kp).pow(2).sum(-1)  # [b, h, n]; 0 at the pivot
    if sigma is None:
        members = torch.zeros(b, h, m, device=k.device).scatter_add(-1, seg, torch.ones_like(dist2)) - 1
        var = torch.zeros(b, h, m, device=k.device).scatter_add(-1, seg, dist2) / members.clamp_min(1)
        var = var.gather(-1, seg)
    else:
        var = torch.full_like(dist2, sigma ** 2)
    w = torch.where(var > 0, torch.exp(-dist2 / (2 * var.clamp_min(1e-30))), torch.ones_like(dist2))
    den = torch.zeros(b, h, m, device=k.device).scatter_add(-1, seg, w)[..., None]
    def pool(x: torch.Tensor) -> torch.Tensor:
        e = x.shape[-1]
        out = torch.zeros(b, h, m, e, device=k.device)
        return out.scatter_add(-2, seg[..., None].expand(b, h, n, e), w[..., None] * x) / den

    return pool(kf).to(k.dtype), pool(vf).to(v.dtype)


class KVMergerLayer(ScoredLayer):
    """One layer: the merged prefill, then exact decode tokens."""

    def __init__(self, ratio: float, protect_top: int, recent: int, sigma: float | None) -> None:
        super().__init__()
        self.ratio, self.protect_top, self.recent, self.sigma = ratio, protect_top, recent, sigma
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def restore(self):
        return self.k, self.v

    def append_scored(self, key_states, value_states, q, scaling, keys, values):
        if self.seen == 0:
            n = key_states.shape[-2]
            budget = math.ceil(self.ratio * n)
            if budget < n:
                importance = attention_probs(q, keys, scaling).sum(2)  # [b, h, n]
                key_states, value_states = merge_sets(key_states, value_states, importance, budget,
                                                      self.protect_top, self.recent, self.sigma)
        self.k = key_states if self.k is None else torch.cat([self.k, key_states], -2)
        self.v = value_states if self.v is None else torch.cat([self.v, value_states], -2)

    def stored_length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def held(self):
        yield from (t for t in (self.k, self.v) if t is not None)


class KVMergerCache(ScoredCache):
    """KVMerger adaptive merging at a fixed budget (module docstring).

    Args:
        ratio: the budget as a share of the prefill length (the paper's 50 % / 35 %); 1: lossless.
        protect_top: tokens of most accumulated attention never merged (assumption).
        recent: last prefill tokens never merged (assumption).
        sigma: a fixed kernel width (None: per set, the mean squared pivot distance — assumption).
        skip_layers: layers left unmerged (the secondary note: the first two and the last; -1 counts from the end,
            default none).
        config: the model config (only to resolve negative ``skip_layers``).
    """

    def __init__(self, ratio: float = 0.5, protect_top: int = 4, recent: int = 16, sigma: float | None = None,
                 skip_layers: tuple[int, ...] = (), config=None) -> None:
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must lie in (0, 1], got {ratio}")
        n_layers = getattr(config, "num_hidden_layers", None)
        skip = {s % n_layers if (s < 0 and n_layers) else s for s in skip_layers}
        self.ratio = ratio
        super().__init__(lambda i: KVMergerLayer(1.0 if i in skip else ratio, protect_top, recent, sigma))
