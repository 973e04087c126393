"""Attention statistics for the cache methods that rank tokens by the attention they receive (KVMerger's pivots, EMS's
Global-Local score): a transformers ``Cache`` never sees the queries, so :func:`enable_query_observation` puts one
forward pre-hook on every attention module that computes the step's post-RoPE queries (``q_proj`` → ``q_norm`` when
the family has one → the family's own ``apply_rotary_pos_emb``) and hands them to the cache passed to that module, if
the cache asks for them (``observe_query``). The hooks are installed once per model and feed whichever cache is used.

Without the hooks (a model not prepared), :class:`ScoredLayer` falls back to **keys as queries** (each new token's key
attends over the cache with the head-dim scaling) — an assumption of ours, documented in ``docs/kv_cache.md``.
Gemma-2's logit soft-capping is not applied to these scores (its attention uses it; the ranking barely changes).
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from .base import CompressedCache, CompressedLayer

__all__ = ["ScoredCache", "ScoredLayer", "attention_probs", "enable_query_observation"]

_HOOKED = "_sharezoo_query_hook"


def _query_hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
    cache = kwargs.get("cache", kwargs.get("past_key_values"))
    if cache is None or not hasattr(cache, "observe_query"):
        return
    hidden = kwargs.get("hidden_states", args[0] if args else None)
    cos, sin = kwargs["position_embeddings"]
    q = module.q_proj(hidden).view(*hidden.shape[:-1], -1, module.head_dim)
    if getattr(module, "q_norm", None) is not None:
        q = module.q_norm(q)
    q = q.transpose(1, 2)
    rotate = sys.modules[type(module).__module__].apply_rotary_pos_emb
    q, _ = rotate(q, q, cos, sin)
    cache.observe_query(module.layer_idx, q.detach(), float(getattr(module, "scaling", module.head_dim ** -0.5)))


def enable_query_observation(model: nn.Module) -> nn.Module:
    """Hook every attention module (one with ``q_proj`` and ``layer_idx``) so caches with ``observe_query`` receive
    the step's post-RoPE queries; idempotent; returns the model."""
    for m in model.modules():
        if hasattr(m, "q_proj") and hasattr(m, "layer_idx") and not getattr(m, _HOOKED, False):
            m.register_forward_pre_hook(_query_hook, with_kwargs=True)
            setattr(m, _HOOKED, True)
    return model


def attention_probs(q: torch.Tensor, keys: torch.Tensor, scaling: float, key_pos: torch.Tensor | None = None,
                    q_pos: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention of ``q`` ``[b, Hq, nq, d]`` over ``keys`` ``[b, h, N, d]``, summed over the query heads of each
    KV head: ``[b, h, nq, N]`` (fp32). Causal by positions: key ``j`` is visible to query ``i`` iff
    ``key_pos[..., j] ≤ q_pos[i]``; by default the queries are the last ``nq`` of ``N`` consecutive positions."""
    b, hq, nq, _ = q.shape
    h, n = keys.shape[1], keys.shape[-2]
    g = hq // h
    kk = keys.float().repeat_interleave(g, 1) if g > 1 else keys.float()
    logits = (q.float() @ kk.transpose(-1, -2)) * scaling  # [b, Hq, nq, N]
    if q_pos is None:
        q_pos = torch.arange(n - nq, n, device=q.device)
    if key_pos is None:
        key_pos = torch.arange(n, device=q.device)
    if key_pos.dim() == 1:
        hidden = key_pos[None, None, None, :] > q_pos[None, None, :, None]
    else:  # per-head positions [b, h, N]
        kp = key_pos.repeat_interleave(g, 1) if g > 1 else key_pos
        hidden = kp[:, :, None, :] > q_pos[None, None, :, None]
    p = logits.masked_fill(hidden, float("-inf")).softmax(-1)
    return p.view(b, h, g, nq, n).sum(2)


class ScoredLayer(CompressedLayer):
    """A layer whose store step (``append_scored``) also gets the new tokens' queries (observed, else their keys) and
    the keys/values of the step (stored past + new), to score with :func:`attention_probs`."""

    def __init__(self) -> None:
        super().__init__()
        self.query: tuple[torch.Tensor, float] | None = None  # set by the cache for this step only

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past_k, past_v = self.restore()
        keys = key_states if past_k is None else torch.cat([past_k.to(key_states.dtype), key_states], dim=-2)
        values = value_states if past_v is None else torch.cat([past_v.to(value_states.dtype), value_states], dim=-2)
        q, scaling = self.query if self.query is not None else (key_states, key_states.shape[-1] ** -0.5)
        self.query = None
        self.append_scored(key_states, value_states, q, scaling, keys, values)
        self.seen += key_states.shape[-2]
        return keys, values

    def append(self, key_states, value_states):  # pragma: no cover - ScoredLayer stores through append_scored
        raise RuntimeError("ScoredLayer stores through append_scored")

    def append_scored(self, key_states: torch.Tensor, value_states: torch.Tensor, q: torch.Tensor, scaling: float,
                      keys: torch.Tensor, values: torch.Tensor) -> None:
        """Store the new tokens given their queries ``q`` and all keys/values of this step (stored past + new)."""
        raise NotImplementedError


class ScoredCache(CompressedCache):
    """A :class:`CompressedCache` that accepts the queries of :func:`enable_query_observation`'s hooks."""

    def observe_query(self, layer_idx: int, q: torch.Tensor, scaling: float) -> None:
        while len(self.layers) <= layer_idx:
            self.layers.append(self.layer_factory(len(self.layers)))
        layer = self.layers[layer_idx]
        if isinstance(layer, ScoredLayer):
            layer.query = (q, scaling)
