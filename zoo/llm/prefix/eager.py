"""Eager softmax attention that also returns the log-sum-exp (the exact reference every fused path is tested
against, and the fallback where a fused kernel cannot run)."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """``[b, Hkv, T, d]`` -> ``[b, Hkv * n_rep, T, d]`` (grouped-query attention)."""
    if n_rep == 1:
        return x
    b, h, t, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, t, d).reshape(b, h * n_rep, t, d)


def attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    scale: float | None,
    temperature: float = 1.0,
    softcap: float | None = None,
    dropout: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager softmax attention that also returns the log-sum-exp of the scores (differentiable).

    Args:
        q: ``[b, H, Tq, d]``.
        k: ``[b, Hkv, Tk, d]`` (GQA keys are repeated here).
        v: ``[b, Hkv, Tk, d]``.
        mask: boolean, broadcastable to ``[b, H, Tq, Tk]``, True = attend (a row without a True gives a zero output
            and ``lse = -inf``); or an additive float mask (HF's eager convention).
        scale: score scale (None: ``1/sqrt(d)``).
        temperature: divides the (capped) scores (APE's T; 1 = plain attention).
        softcap: Gemma-2's attention-logit soft-capping, ``scores = tanh(scores / c) * c`` before masking (as HF's
            eager attention); None = off.
        dropout: dropout on the probabilities (training only; the LSE is of the undropped scores).

    Returns:
        ``(out [b, H, Tq, d], lse [b, H, Tq])`` in float32 for the LSE, the input dtype for the output.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n_rep = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if temperature != 1.0:
        scores = scores / temperature
    if mask is not None:
        if mask.dtype == torch.bool:
            scores = scores.masked_fill(~mask, float("-inf"))
        else:
            scores = scores + mask.float()
    lse = torch.logsumexp(scores, dim=-1)
    # a row with no key (lse = -inf) gives a zero output and drops out of a merge (its weight exp(-inf) is 0)
    probs = torch.exp(scores - torch.where(torch.isfinite(lse), lse, torch.zeros_like(lse))[..., None])
    if dropout > 0:
        probs = F.dropout(probs, p=dropout, training=True)
    return torch.matmul(probs.to(v.dtype), v), lse
