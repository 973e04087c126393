"""Sampling with the model's own KV cache (left-padded prompt batch, one forward per new token)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument: ``cache`` (transformers >= 5.2x) or ``past_key_values`` (earlier)."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def output_cache(out):
    """The KV cache of a model output under either name."""
    if "cache" in getattr(out, "__dataclass_fields__", {}):
        return out.cache
    return out.past_key_values


@torch.no_grad()
def sample_completions(
    model: nn.Module,
    prompts: Sequence[torch.Tensor],
    num_samples: int = 1,
    max_new_tokens: int = 16,
    temperature: float = 1.0,
    eos_id: int | None = None,
    pad_id: int = 0,
    greedy: bool = False,
    top_k: int | None = None,
) -> list[list[torch.Tensor]]:
    """``num_samples`` completions for each prompt, each ending at (and including) ``<eos>`` or at the length cap.

    Args:
        model: an HF causal LM (its ``past_key_values`` cache is used between steps).
        prompts: LongTensors ``[P_i]`` (ragged; left-padded internally with a 2-D attention mask).
        num_samples: completions per prompt (GRPO's group size G).
        max_new_tokens: length cap.
        temperature: softmax temperature of the sampling.
        eos_id: end-of-sequence id (None: always ``max_new_tokens`` tokens).
        pad_id: id written into left padding.
        greedy: argmax instead of sampling.
        top_k: optional top-k truncation of the sampling distribution.

    Returns:
        ``out[i][g]``: LongTensor ``[S]`` with ``1 <= S <= max_new_tokens``.
    """
    was_training = model.training
    model.eval()
    device = prompts[0].device
    rep = [p for p in prompts for _ in range(num_samples)]
    n, t = len(rep), max(p.numel() for p in rep)
    ids = torch.full((n, t), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(n, t, dtype=torch.long, device=device)
    for r, p in enumerate(rep):
        ids[r, t - p.numel() :] = p
        mask[r, t - p.numel() :] = 1
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    past, logits = output_cache(out), out.logits[:, -1]
    ckw = cache_kwarg(model)
    next_pos = pos[:, -1:] + 1
    tokens = torch.empty(n, 0, dtype=torch.long, device=device)
    done = torch.zeros(n, dtype=torch.bool, device=device)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)
    for step in range(max_new_tokens):
        logits = logits.float()
        if greedy:
            nxt = logits.argmax(-1)
        else:
            logits = logits / max(temperature, 1e-6)
            if top_k:
                kth = logits.topk(top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0]
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        tokens = torch.cat([tokens, nxt[:, None]], dim=1)
        if eos_id is not None:
            newly = (nxt == eos_id) & ~done
            lengths = torch.where(newly, torch.full_like(lengths, step + 1), lengths)
            done |= newly
        if bool(done.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones(n, 1, dtype=mask.dtype, device=device)], dim=1)
        out = model(input_ids=nxt[:, None], attention_mask=mask, position_ids=next_pos, use_cache=True, **{ckw: past})
        past, logits, next_pos = output_cache(out), out.logits[:, -1], next_pos + 1
    model.train(was_training)
    res = [tokens[r, : int(lengths[r])].clone() for r in range(n)]
    return [res[i * num_samples : (i + 1) * num_samples] for i in range(len(prompts))]
