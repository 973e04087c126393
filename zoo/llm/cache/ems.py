"""EMS (Li et al., arXiv 2412.08521): head-wise Evict-then-Merge under a Global-Local importance score, with a
zero class so every head compresses in one batched op (spec ``papers/llm/ems.md``; the paper's formulas were not
found — every rule below that the spec leaves open is an **assumption** of ours, configurable).

Per layer and KV head, whenever the stored entries exceed ``budget`` (at prefill; during decoding once they exceed
``budget + interval``):

1. Global-Local score. Global: the attention an entry has accumulated from every query so far divided by the number
   of queries that could see it (``seen − position``) — this removes the causal-mask bias toward early tokens;
   local: the attention of the last ``window`` queries. Each is normalised to sum 1 over the head's entries, then
   ``score = alpha · global + (1 − alpha) · local`` (**assumption**: ``alpha = 0.5``, ``window = 32``).
2. The ``budget`` entries of highest score are kept as class centres (the last ``window`` positions always: the local
   window); the rest are candidates.
3. Evict-then-merge: a candidate whose key's cosine similarity to its most similar centre is ≥ ``tau`` joins that
   class; the others join the **zero class** (evicted). One batched ``scatter_add`` over ``budget + 1`` classes
   merges every head at once, then the zero class is dropped — so heads with more redundancy merge more and sparse
   heads evict more, with one fixed output shape. Merge weights: the entries' scores (secondary hint: "attention-
   score weights"); merged keys are rescaled to the centre's norm (secondary hint), values are the plain weighted
   mean (**assumption**: ``tau = 0.5``, ``interval = 32``).

Held per layer: K, V ``[b, h, S, d]``, the accumulated attention (fp32) and position (int32) of every entry
``[b, h, S]``, and the last ``window`` queries ``[b, Hq, window, d]`` (the local score needs them) — all counted.
Queries come from :func:`zoo.llm.cache.scores.enable_query_observation` (else keys as queries).
Lossless setting: ``budget`` ≥ the sequence length (nothing is ever compressed).
"""
from __future__ import annotations

import torch

from .scores import ScoredCache, ScoredLayer, attention_probs

__all__ = ["EMSCache", "EMSLayer", "evict_then_merge", "global_local_score"]


def global_local_score(acc: torch.Tensor, pos: torch.Tensor, seen: int, local: torch.Tensor,
                       alpha: float = 0.5) -> torch.Tensor:
    """``alpha`` · (causal-normalised accumulated attention) + (1 − ``alpha``) · (local-window attention), each
    normalised per head over the entries; ``acc``, ``pos``, ``local`` are ``[b, h, S]``."""
    g = acc / (seen - pos).clamp_min(1).float()
    g = g / g.sum(-1, keepdim=True).clamp_min(1e-30)
    loc = local / local.sum(-1, keepdim=True).clamp_min(1e-30)
    return alpha * g + (1 - alpha) * loc


def evict_then_merge(k: torch.Tensor, v: torch.Tensor, score: torch.Tensor, keep: torch.Tensor, budget: int,
                     tau: float, extra: tuple[torch.Tensor, ...] = ()):
    """Keep ``budget`` centres per head (``keep`` ``[b, h, S]`` bool marks them), merge candidates with cosine ≥ ``tau``
    into their nearest centre, evict the rest through the zero class. Returns ``(k, v, class_of_candidate, extra)``
    where ``extra`` tensors ``[b, h, S]`` are gathered for the centres (the first, accumulated attention, also summed
    over merged members)."""
    b, h, s, d = k.shape
    order = torch.argsort(keep.to(torch.int8), dim=-1, descending=True, stable=True)  # centres first, in position order
    ci, xi = order[..., :budget], order[..., budget:]

    def take(t, idx):
        return t.gather(-2, idx[..., None].expand(*idx.shape, t.shape[-1])) if t.dim() == 4 else t.gather(-1, idx)

    kc, vc, kx, vx = take(k, ci).float(), take(v, ci).float(), take(k, xi).float(), take(v, xi).float()
    sc, sx = take(score, ci).float().clamp_min(1e-12), take(score, xi).float().clamp_min(1e-12)
    nrm = torch.nn.functional.normalize
    best, cls = (nrm(kx, dim=-1) @ nrm(kc, dim=-1).transpose(-1, -2)).max(-1)  # [b, h, S - B]
    assign = torch.where(best >= tau, cls + 1, torch.zeros_like(cls))  # 0: the zero class (evicted)

    def pool(xc, xx, wc, wx):
        out = torch.zeros(b, h, budget + 1, xc.shape[-1], device=k.device)
        out[..., 1:, :] = wc[..., None] * xc
        return out.scatter_add(-2, assign[..., None].expand_as(xx), wx[..., None] * xx)[..., 1:, :]

    den = pool(torch.ones_like(sc)[..., None], torch.ones_like(sx)[..., None], sc, sx)
    mk = pool(kc, kx, sc, sx) / den
    mv = pool(vc, vx, sc, sx) / den
    mk = mk * (kc.norm(dim=-1, keepdim=True) / mk.norm(dim=-1, keepdim=True).clamp_min(1e-30))
    out_extra = []
    for i, t in enumerate(extra):
        tc = take(t, ci)
        if i == 0:
            merged = torch.zeros(b, h, budget + 1, device=k.device, dtype=t.dtype)
            tc = tc + merged.scatter_add(-1, assign, take(t, xi))[..., 1:]
        out_extra.append(tc)
    return mk.to(k.dtype), mv.to(v.dtype), assign, tuple(out_extra)


class EMSLayer(ScoredLayer):
    """One layer's EMS cache (module docstring)."""

    def __init__(self, budget: int, window: int, alpha: float, tau: float, interval: int) -> None:
        super().__init__()
        self.budget, self.window, self.alpha, self.tau, self.interval = budget, window, alpha, tau, interval
        self.k = self.v = self.acc = self.pos = self.queries = None
        self.scaling = 1.0

    def restore(self):
        return self.k, self.v

    def append_scored(self, key_states, value_states, q, scaling, keys, values):
        b, h, nq, _ = key_states.shape
        probs = attention_probs(q, keys, scaling)  # past entries all precede the new queries
        new_pos = torch.arange(self.seen, self.seen + nq, device=keys.device, dtype=torch.int32).expand(b, h, nq)
        acc = probs.sum(2)
        if self.acc is not None:
            acc = acc + torch.nn.functional.pad(self.acc, (0, nq))
        pos = new_pos if self.pos is None else torch.cat([self.pos, new_pos], -1)
        queries = q if self.queries is None else torch.cat([self.queries, q.to(self.queries.dtype)], -2)
        self.queries = queries[..., -self.window:, :].clone()
        self.scaling = scaling
        k, v = keys, values
        limit = self.budget if self.seen == 0 else self.budget + self.interval
        if k.shape[-2] > limit:
            k, v, acc, pos = self._compress(k, v, acc, pos, self.seen + nq)
        self.k, self.v, self.acc, self.pos = k.contiguous(), v.contiguous(), acc.contiguous(), pos.contiguous()

    def _compress(self, k, v, acc, pos, seen):
        nq = self.queries.shape[-2]
        q_pos = torch.arange(seen - nq, seen, device=k.device)
        local = attention_probs(self.queries, k, self.scaling, key_pos=pos, q_pos=q_pos).sum(2)
        score = global_local_score(acc, pos, seen, local, self.alpha)
        protected = pos >= seen - self.window
        rank = score + protected.float() * 2.0  # scores sum to 1: +2 puts the window first
        keep = torch.zeros_like(protected).scatter_(-1, rank.topk(self.budget, -1).indices, True)
        k, v, _, (acc, pos) = evict_then_merge(k, v, score, keep, self.budget, self.tau, (acc, pos))
        return k, v, acc, pos

    def stored_length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def held(self):
        yield from (t for t in (self.k, self.v, self.acc, self.pos, self.queries) if t is not None)


class EMSCache(ScoredCache):
    """EMS head-wise evict-then-merge (module docstring).

    Args:
        budget: entries kept per head after a compression (the paper's headline: 256).
        window: local-score queries and always-kept recent positions (assumption).
        alpha: weight of the global score against the local one (assumption).
        tau: cosine similarity for a candidate to merge instead of being evicted (assumption).
        interval: decode tokens gathered beyond the budget before compressing again (assumption).
    """

    def __init__(self, budget: int = 256, window: int = 32, alpha: float = 0.5, tau: float = 0.5,
                 interval: int = 32) -> None:
        if window > budget:
            raise ValueError(f"window ({window}) must not exceed the budget ({budget})")
        self.budget = budget
        super().__init__(lambda i: EMSLayer(budget, window, alpha, tau, interval))
