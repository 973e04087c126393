"""GRPO maths with an optional Prefix Grouper forward (one packed forward shares each prompt across its G completions).

The training loop around it is :class:`tasks.llm.grpo.GRPOTask`.

DeepSeekMath's GRPO objective (per completion ``i`` of a group, token ``t``)::

    A_i   = (r_i - mean(r_group)) / (std(r_group) + eps)                   group-normalised advantage
    rho   = exp(logp_t - logp_old_t)
    L_t   = min(rho * A_i, clip(rho, 1 - e, 1 + e) * A_i) - beta * KL_t     KL_t: k3 estimator to the reference
    loss  = - mean_i  mean_t L_t          (``loss_agg='sequence'``; ``'token'`` averages over all tokens)

``prefix_grouper=True`` changes only how ``logp`` is computed (packed layout, :mod:`zoo.llm.prefix`); the log-probs,
the loss and every gradient are the same as with the repeated-prefix forward (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from torch import nn

from zoo.llm.prefix import lm_logits, packed_suffix_logits, repeated_suffix_logits


@dataclass
class Rollout:
    """One generation round: ``B`` prompts with ``G`` completions each (row-major ``B*G`` order)."""

    prompts: list[torch.Tensor]
    completions: list[list[torch.Tensor]]
    rewards: torch.Tensor  # [B, G]
    advantages: torch.Tensor  # [B*G]
    old_logp: torch.Tensor | None = None  # [B*G, S_max]; None: on-policy (= current log-probs, detached)
    ref_logp: torch.Tensor | None = None


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """``[B, G]`` rewards -> ``[B*G]`` advantages normalised within each group (G = 1 gives zeros)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale and rewards.shape[1] > 1:
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def completion_logps(
    model: nn.Module,
    prompts: list[torch.Tensor],
    completions: list[list[torch.Tensor]],
    prefix_grouper: bool,
    mode: str = "auto",
    pad_id: int = 0,
    chunk_elements: int = 1 << 28,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of every completion token: ``(logp [B*G, S_max], valid, targets)``.

    The LM head and the fp32 log-softmax run in row chunks of at most ``chunk_elements`` logits, recomputed in backward
    (activation checkpointing), so the ``[B*G, S, V]`` fp32 logits never live at once; identical maths either way.
    """
    if prefix_grouper:
        hidden, valid, _ = packed_suffix_logits(model, prompts, completions, mode=mode, pad_id=pad_id,
                                                return_hidden=True)
    else:
        hidden, valid = repeated_suffix_logits(model, prompts, completions, pad_id=pad_id, return_hidden=True)
    flat = [c for group in completions for c in group]
    targets = torch.full(valid.shape, pad_id, dtype=torch.long, device=valid.device)
    for r, c in enumerate(flat):
        targets[r, : c.numel()] = c

    def token_logp(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = lm_logits(model, h).float()
        return logits.gather(-1, t[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)

    rows = max(1, chunk_elements // max(1, hidden.shape[1] * model.config.vocab_size))
    if rows >= hidden.shape[0]:
        logp = token_logp(hidden, targets)
    else:
        parts = []
        for i in range(0, hidden.shape[0], rows):
            h, t = hidden[i : i + rows], targets[i : i + rows]
            if torch.is_grad_enabled() and h.requires_grad:
                parts.append(torch.utils.checkpoint.checkpoint(token_logp, h, t, use_reentrant=False))
            else:
                parts.append(token_logp(h, t))
        logp = torch.cat(parts)
    return logp * valid, valid, targets


def grpo_loss(
    logp: torch.Tensor,
    valid: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    loss_agg: str = "sequence",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped GRPO objective (module docstring); returns ``(loss, stats)``."""
    old = logp.detach() if old_logp is None else old_logp.detach()
    ref_logp = None if ref_logp is None else ref_logp.detach()
    ratio = torch.exp(logp - old)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef > 0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1  # k3 estimator, >= 0
        per_token = per_token + kl_coef * kl
    v = valid.to(per_token.dtype)
    if loss_agg == "sequence":
        loss = ((per_token * v).sum(1) / v.sum(1).clamp(min=1)).mean()
    elif loss_agg == "token":
        loss = (per_token * v).sum() / v.sum().clamp(min=1)
    else:
        raise ValueError(f"unknown loss_agg {loss_agg!r}")
    clipped = ((ratio - 1).abs() > clip_eps) & valid
    stats = {
        "kl": (kl * v).sum() / v.sum().clamp(min=1),
        "clip_frac": clipped.float().sum() / v.sum().clamp(min=1),
    }
    return loss, stats


def cut_after_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    """``tokens`` up to and including the first ``eos_id`` (all of it when there is none)."""
    hits = (tokens == eos_id).nonzero()
    return tokens[: int(hits[0, 0]) + 1].clone() if hits.numel() else tokens
