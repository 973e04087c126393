"""Shared-prefix attention kernels in plain PyTorch (SDPA with explicit masks, and an exact LSE merge).

Exact ways to compute the packed layout's attention (Prefix Grouper, spec steps 4-7); besides these two, ``flex``
(:mod:`.flex`, one fused FlexAttention kernel with a block mask) and ``dense`` (one masked SDPA call):

* ``split`` (the paper's): prefix queries attend causally to the prefix; suffix queries attend to
  ``[prefix K/V of their row ; own suffix K/V]`` with a bottom-right-aligned causal mask. The prefix K/V is read by an
  index gather per suffix (backward sums the G contributions).
* ``merge``: every packed query attends to its row's prefix keys (one call, no repetition of the prefix K/V) and every
  suffix query to its own suffix keys (a second call); the two partial softmaxes are combined with their
  log-sum-exps, :func:`merge_partials`. This is also the primitive under APE and BatchLLM decoding.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .eager import attention_with_lse, repeat_kv
from .layout import PrefixLayout


def merge_partials(
    outs: list[torch.Tensor], lses: list[torch.Tensor], weights: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Combine partial attentions over disjoint key sets into the attention over their union.

    ``out = sum_i exp(w_i * lse_i - LSE) * out_i`` with ``LSE = logsumexp_i(w_i * lse_i)``; with all ``w_i = 1`` this is
    exactly softmax attention over all keys. A part with ``lse = -inf`` (no keys) contributes nothing. APE's
    scaling factor enters as ``w_c = S * T`` on the context part (spec step 4).

    Args:
        outs: partial outputs ``[..., Tq, d]``.
        lses: their log-sum-exps ``[..., Tq]``.
        weights: optional multipliers of each part's log-sum-exp.

    Returns:
        ``(out, lse)`` of the union.
    """
    if weights is not None:
        lses = [lse * w for lse, w in zip(lses, weights)]
    stacked = torch.stack(lses)  # [n, ..., Tq]
    total = torch.logsumexp(stacked, dim=0)
    safe_total = torch.where(torch.isfinite(total), total, torch.zeros_like(total))
    out = 0
    for o, lse in zip(outs, lses):
        w = torch.exp(lse - safe_total)
        out = out + w[..., None].to(o.dtype) * o
    return out, total


def masked_attention(q, k, v, mask, scale, softcap: float | None = None) -> torch.Tensor:
    """``[b, H, Tq, d]`` attention with a boolean mask: SDPA, or the eager path when ``softcap`` is set."""
    if softcap is not None:
        return attention_with_lse(q, k, v, mask, scale, softcap=softcap)[0]
    n_rep = q.shape[1] // k.shape[1]
    return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask, scale=scale)


def _sdpa(q, k, v, mask, scale, causal_lower_right: bool = False, softcap: float | None = None):
    """SDPA with an explicit mask (GQA heads repeated), or the flash-eligible bottom-right causal bias.

    ``mask=None`` means causal (square); with ``softcap`` (no SDPA kernel caps the logits) the causal patterns are
    written out and the eager :func:`attention_with_lse` computes the attention.
    """
    if softcap is not None:
        if causal_lower_right or mask is None:
            tq, tk = q.shape[2], k.shape[2]
            mask = torch.ones(tq, tk, dtype=torch.bool, device=q.device).tril(diagonal=tk - tq)
        return masked_attention(q, k, v, mask, scale, softcap)
    n_rep = q.shape[1] // k.shape[1]
    if causal_lower_right:
        from torch.nn.attention.bias import causal_lower_right as lower_right

        # GQA heads are repeated explicitly: the bias's flash/efficient dispatch does not take enable_gqa everywhere
        bias = lower_right(q.shape[2], k.shape[2])
        return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=bias, scale=scale)
    if mask is None:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=n_rep > 1)
    return F.scaled_dot_product_attention(q, repeat_kv(k, n_rep), repeat_kv(v, n_rep), attn_mask=mask, scale=scale)


PREFIX_MODES = ("auto", "flex", "split", "merge", "dense")


def resolve_mode(mode: str | None, device: torch.device | str) -> str:
    """``auto`` / None: ``flex`` (one fused FlexAttention kernel per layer) on CUDA, ``split`` elsewhere."""
    if mode in (None, "auto"):
        from .flex import flex_supported

        return "flex" if torch.device(device).type == "cuda" and flex_supported() else "split"
    if mode not in PREFIX_MODES:
        raise ValueError(f"unknown mode {mode!r} (one of {PREFIX_MODES})")
    return mode


def prefix_grouped_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    layout: PrefixLayout,
    scale: float | None = None,
    mode: str = "auto",
    fast_masks: bool | None = None,
    softcap: float | None = None,
) -> torch.Tensor:
    """Attention of a packed ``[prefix ; suffix_1 ; ... ; suffix_G]`` batch, exactly equal to the repeated layout.

    Args:
        q: ``[b, H, L, d]`` packed queries (RoPE applied with the layout's position ids).
        k: ``[b, Hkv, L, d]`` packed keys.
        v: ``[b, Hkv, L, d]`` packed values.
        layout: the :class:`PrefixLayout` of the batch.
        scale: score scale, default ``1/sqrt(d)``.
        mode: ``flex`` (one FlexAttention call per layer with the layout's block mask: prefix causal, each suffix
            sees its row's prefix and itself causally; compiled on CUDA; on CPU with gradients the same mask runs
            densely, FlexAttention having no CPU backward), ``split`` (prefix call + suffix call on
            ``[prefix K/V ; suffix K/V]``), ``merge`` (two partial calls combined by log-sum-exp, no repeated prefix
            K/V), ``dense`` (one call with the full ``[L, L]`` mask) or ``auto`` (``flex`` on CUDA, else ``split``).
        fast_masks: for ``split``, use SDPA's ``is_causal`` for the square prefix block and the bottom-right causal
            bias for the suffix block when every row has the same prefix length (flash-eligible on GPU). Default: on
            for CUDA tensors. Both are exact for the valid (non-padding) queries.
        softcap: attention-logit soft-capping (Gemma-2), applied before masking in every mode; the kernels then run
            the eager :func:`attention_with_lse` (SDPA cannot cap).

    Returns:
        ``[b, L, H, d]`` (HF's attention-output layout); padding slots are zero.
    """
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    auto = mode in (None, "auto")
    mode = resolve_mode(mode, q.device)
    if mode == "flex" and auto and softcap is not None:
        # the compiled FlexAttention backward with a soft-capping score_mod failed on the H200 image (torch 2.11:
        # "all unwrapped values must be FakeTensor"; docs/testing.md): `auto` keeps soft-capped models on `split`
        mode = "split"
    if mode == "flex":
        from .flex import flex_attention_call

        out = flex_attention_call(q, k, v, layout.block_mask("causal"), scale, softcap,
                                  dense_mask=lambda: layout.dense_mask("causal"))
        return out.transpose(1, 2) * layout.valid[:, :, None, None]
    if mode == "dense":
        out = masked_attention(q, k, v, layout.dense_mask("causal"), scale, softcap)
        return out.transpose(1, 2) * layout.valid[:, :, None, None]
    if mode == "merge":
        k_p, _ = layout.ungroup(k)
        v_p, _ = layout.ungroup(v)
        q_s, k_s, v_s = layout.ungroup(q)[1], layout.ungroup(k)[1], layout.ungroup(v)[1]
        o_a, lse_a = attention_with_lse(q, k_p, v_p, layout.packed_prefix_mask(), scale, softcap=softcap)
        o_b, lse_b = attention_with_lse(q_s, k_s, v_s, layout.suffix_self_mask(), scale, softcap=softcap)
        o_b = layout.scatter_suffix(o_b)
        lse_b = layout.scatter_suffix(lse_b[..., None], fill=float("-inf"))[..., 0]
        out, _ = merge_partials([o_a, o_b], [lse_a, lse_b])
        return out.transpose(1, 2) * layout.valid[:, :, None, None]
    if mode != "split":
        raise ValueError(f"unknown mode {mode!r}")
    fast = q.is_cuda if fast_masks is None else fast_masks
    q_p, q_s = layout.ungroup(q)
    k_p, k_s = layout.ungroup(k)
    v_p, v_s = layout.ungroup(v)
    # (a) prefix-only causal attention; with right padding, the square causal pattern is exact for valid queries
    o_p = _sdpa(q_p, k_p, v_p, None if fast else layout.prefix_mask(), scale, softcap=softcap)
    # (b) suffix queries over [prefix K/V of their row ; own suffix K/V] (expand+index: backward sums over G)
    k_cat = torch.cat([k_p[layout.suffix_row], k_s], dim=2)
    v_cat = torch.cat([v_p[layout.suffix_row], v_s], dim=2)
    lower_right = fast and layout.uniform_prefix
    o_s = _sdpa(q_s, k_cat, v_cat, None if lower_right else layout.suffix_mask(), scale,
                causal_lower_right=lower_right, softcap=softcap)
    return layout.group(o_p, o_s)
