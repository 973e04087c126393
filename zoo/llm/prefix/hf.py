"""Plugging the shared-prefix attention into Hugging Face causal LMs without copying model files.

``enable_prefix_attention(model)`` switches the model's ``attn_implementation`` to ``"sharezoo_prefix"``, a function
registered in transformers' ``AttentionInterface`` (and its mask interface). The function looks for a
``prefix_attention`` keyword that HF forwards untouched from ``model(...)`` down to every attention call (also through
gradient-checkpoint recomputation); when it is absent it is plain SDPA, so ``generate`` and ordinary forwards behave as
before. The keyword carries an *attention spec*: any callable ``spec(module, q, k, v, scaling, softcap=None) ->
[b, T, H, d]`` (``softcap``: Gemma-2's attention-logit soft-capping, forwarded from the model; every spec here applies
it before masking). Attention kwargs the specs cannot honour (``s_aux``/``sinks`` attention sinks, ``position_bias``)
raise instead of being dropped.
:class:`GroupedAttention` (Prefix Grouper), :class:`MaskedAttention` (Uni-Encoder arrow masks), and the APE / BatchLLM
specs in their modules are such callables.

Models: every transformers model whose attention goes through ``ALL_ATTENTION_FUNCTIONS`` and takes ``position_ids``
(Llama, Qwen2, Mistral, Gemma, Phi3, ... in transformers >= 4.48; tested: Llama, Qwen2, Mistral, Gemma-2, Bert).
Sliding windows are not applied by the packed specs: a call whose largest position index reaches a layer's window
raises (up to ``W - 1`` every key is inside the window, as in HF).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attention import prefix_grouped_attention, resolve_mode
from .layout import PrefixLayout

ATTN_NAME = "sharezoo_prefix"
_DUMMY_4D = None


# attention kwargs that change the result and that the packed specs do not implement: refused, never dropped
_UNSUPPORTED_KWARGS = ("s_aux", "sinks", "position_bias")


def _sdpa_forward(module, query, key, value, attention_mask, **kwargs):
    """The plain (no spec) path: SDPA, or eager attention when the model soft-caps its attention logits."""
    softcap = kwargs.pop("softcap", None)
    if softcap is not None:
        return _eager_softcap_forward(module, query, key, value, attention_mask, softcap, **kwargs)
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


def _eager_softcap_forward(module, query, key, value, attention_mask, softcap, dropout=0.0, scaling=None,
                           is_causal=None, **kwargs):
    """HF's eager attention with logit soft-capping, for masks built by ``sdpa_mask`` (boolean, or None = causal)."""
    from .eager import attention_with_lse

    mask = attention_mask
    if mask is None:
        causal = is_causal if is_causal is not None else getattr(module, "is_causal", True)
        tq, tk = query.shape[2], key.shape[2]
        if causal and tq > 1:  # SDPA's is_causal (top-left; HF only skips the mask when that is right)
            mask = torch.ones(tq, tk, dtype=torch.bool, device=query.device).tril()
    out, _ = attention_with_lse(query, key, value, mask, scaling, softcap=softcap,
                                dropout=dropout if module.training else 0.0)
    return out.transpose(1, 2).contiguous(), None


def prefix_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The function registered as ``"sharezoo_prefix"`` (HF signature: q ``[b, H, T, d]``, k/v ``[b, Hkv, T, d]``)."""
    spec = kwargs.pop("prefix_attention", None)
    bad = [name for name in _UNSUPPORTED_KWARGS if kwargs.get(name) is not None]
    if bad:
        raise ValueError(f"attention argument(s) {bad} are not supported by the sharezoo_prefix attention")
    if spec is None:
        return _sdpa_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    if module.training and dropout > 0:
        raise ValueError("attention dropout is not supported by the shared-prefix attention")
    window = kwargs.get("sliding_window")
    # HF's sliding window keeps key j for query i when j > i - W: with position indices <= W - 1 nothing is cut
    if window and int(spec.max_position) >= int(window):
        raise ValueError(
            f"position index {int(spec.max_position)} reaches the sliding window {int(window)}; "
            "the shared-prefix attention has no sliding window"
        )
    softcap = kwargs.get("softcap")
    if softcap is not None:
        return spec(module, query, key, value, scaling, softcap=float(softcap)), None
    return spec(module, query, key, value, scaling), None


def register_prefix_attention() -> None:
    """Register ``"sharezoo_prefix"`` with the installed transformers (idempotent)."""
    try:
        from transformers import AttentionInterface

        AttentionInterface.register(ATTN_NAME, prefix_attention_forward)
    except ImportError:  # transformers 4.48-4.49: a plain dict
        from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

        ALL_ATTENTION_FUNCTIONS[ATTN_NAME] = prefix_attention_forward
    try:  # masks for ordinary (non-packed) forwards behave as SDPA's
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionMaskInterface.register(ATTN_NAME, sdpa_mask)
    except ImportError:
        pass


def enable_prefix_attention(model: nn.Module) -> nn.Module:
    """Switch ``model`` (in place) to the ``sharezoo_prefix`` attention; ordinary calls stay SDPA."""
    register_prefix_attention()
    config = model.config
    if getattr(config, "_attn_implementation", None) != ATTN_NAME:
        config._attn_implementation = ATTN_NAME
    for m in model.modules():  # models whose sub-modules hold their own config objects
        c = getattr(m, "config", None)
        if c is not None and c is not config and hasattr(c, "_attn_implementation"):
            c._attn_implementation = ATTN_NAME
    return model


def is_prefix_attention_enabled(model: nn.Module) -> bool:
    return getattr(model.config, "_attn_implementation", None) == ATTN_NAME


def placeholder_mask(device: torch.device) -> torch.Tensor:
    """A 4-D mask HF passes through untouched (so it builds no ``[L, L]`` mask of its own for packed rows)."""
    return torch.ones(1, 1, 1, 1, dtype=torch.bool, device=device)


# --------------------------------------------------------------------------------------------------- specs
@dataclass
class GroupedAttention:
    """Attention spec of a packed Prefix Grouper batch (see :func:`prefix_grouped_attention`).

    ``mode="auto"`` is resolved here from the layout's device (``flex`` on CUDA, ``split`` elsewhere); the ``flex``
    block mask is built here, once per batch, outside any compiled region, and shared by every layer.
    """

    layout: PrefixLayout
    mode: str = "auto"
    fast_masks: bool | None = None

    def __post_init__(self) -> None:
        self.mode = resolve_mode(self.mode, self.layout.device)
        if self.mode == "flex":
            self.layout.block_mask("causal")

    @property
    def max_position(self) -> int:
        """The largest position index of the batch (``P_i + S_ij - 1``)."""
        return self.layout.max_position

    def __call__(self, module, q, k, v, scaling, softcap=None):
        return prefix_grouped_attention(q, k, v, self.layout, scaling, self.mode, self.fast_masks, softcap=softcap)


@dataclass
class MaskedAttention:
    """Attention with an explicit ``[b, 1, L, L]`` boolean mask (e.g. Uni-Encoder's arrow mask).

    ``max_position``: the largest position index of the batch (checked against sliding windows). ``block_mask``: the
    FlexAttention block mask of the same mask (then one fused kernel runs; :meth:`for_layout` builds both).
    """

    mask: torch.Tensor
    max_position: int = 0
    block_mask: Any = None

    @classmethod
    def for_layout(cls, layout: PrefixLayout, kind: str, mode: str = "auto") -> MaskedAttention:
        """The spec of ``layout.dense_mask(kind)``; with ``mode`` ``flex`` (``auto``: on CUDA) also its block mask."""
        flex = resolve_mode(mode, layout.device) == "flex"
        return cls(layout.dense_mask(kind), layout.max_position, layout.block_mask(kind) if flex else None)

    def __call__(self, module, q, k, v, scaling, softcap=None):
        if self.block_mask is not None and softcap is None:  # soft-capped: see prefix_grouped_attention's `auto`
            from .flex import flex_attention_call

            out = flex_attention_call(q, k, v, self.block_mask, scaling, softcap, dense_mask=lambda: self.mask)
            return out.transpose(1, 2).contiguous()
        from .attention import masked_attention

        return masked_attention(q, k, v, self.mask, scaling, softcap).transpose(1, 2).contiguous()


# --------------------------------------------------------------------------------------------------- model calls
def decoder_and_head(model: nn.Module) -> tuple[nn.Module, nn.Module]:
    """``(base transformer, lm head)`` of an HF causal LM."""
    base = getattr(model, model.base_model_prefix, None) or model.get_decoder()
    return base, model.get_output_embeddings()


def lm_logits(model: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
    """The LM head (with Gemma-style final soft-capping when the config has it)."""
    logits = model.get_output_embeddings()(hidden)
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits


def run_with_spec(
    model: nn.Module,
    spec: Callable,
    position_ids: torch.Tensor,
    input_ids: torch.Tensor | None = None,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Last hidden states ``[b, L, D]`` of the base transformer with ``spec`` as every layer's attention."""
    if not is_prefix_attention_enabled(model):
        enable_prefix_attention(model)
    base, _ = decoder_and_head(model)
    device = (input_ids if input_ids is not None else inputs_embeds).device
    out = base(
        input_ids=input_ids,
        inputs_embeds=inputs_embeds,
        position_ids=position_ids,
        attention_mask=placeholder_mask(device),
        use_cache=False,
        prefix_attention=spec,
    )
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def packed_suffix_logits(
    model: nn.Module,
    prefixes: Sequence[torch.Tensor],
    suffix_groups: Sequence[Sequence[torch.Tensor]],
    mode: str = "auto",
    pad_id: int = 0,
    return_hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, PrefixLayout]:
    """One packed forward of ``b`` prefixes with their suffix groups (Prefix Grouper).

    Args:
        model: an HF causal LM.
        prefixes: ``b`` LongTensors ``[P_i]``.
        suffix_groups: for each prefix, its suffixes (LongTensors ``[S_ij]``).
        mode: attention path, ``auto`` (``flex`` on CUDA, else ``split``) / ``flex`` / ``split`` / ``merge`` /
            ``dense`` (all exact).
        pad_id: id written into padding slots.
        return_hidden: return the final hidden states ``[B2, S_max, D]`` at those positions instead of logits.

    Returns:
        ``(logits [B2, S_max, V], valid [B2, S_max], layout)``; row ``k`` holds suffix ``k`` (row-major order of
        ``suffix_groups``), position ``t`` the logits predicting its token ``t`` (positions ``P-1 .. P+S-2`` of the
        sequential layout). Only these positions go through the LM head.
    """
    device = prefixes[0].device
    layout = PrefixLayout.build([p.numel() for p in prefixes], [[s.numel() for s in g] for g in suffix_groups], device)
    input_ids = layout.pack(list(prefixes), [list(g) for g in suffix_groups], pad=pad_id)
    hidden = run_with_spec(model, GroupedAttention(layout, mode), layout.position_ids, input_ids=input_ids)
    b, length, d = hidden.shape
    picked = hidden.reshape(b * length, d)[layout.suffix_targets_index().reshape(-1)]
    picked = picked.view(layout.num_suffixes, layout.suffix_max, d)
    return (picked if return_hidden else lm_logits(model, picked)), layout.suffix_valid, layout


def repeated_suffix_logits(
    model: nn.Module,
    prefixes: Sequence[torch.Tensor],
    suffix_groups: Sequence[Sequence[torch.Tensor]],
    pad_id: int = 0,
    return_hidden: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The baseline: every (prefix, suffix) pair as its own right-padded sequence, the model's own attention.

    Returns ``(logits [B2, S_max, V], valid [B2, S_max])`` in the same format as :func:`packed_suffix_logits`
    (hidden states ``[B2, S_max, D]`` instead of logits with ``return_hidden``).
    """
    seqs, plens, slens = [], [], []
    for p, group in zip(prefixes, suffix_groups):
        for s in group:
            seqs.append(torch.cat([p, s]))
            plens.append(p.numel())
            slens.append(s.numel())
    device = seqs[0].device
    n, t_max, s_max = len(seqs), max(x.numel() for x in seqs), max(slens)
    ids = torch.full((n, t_max), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros(n, t_max, dtype=torch.long, device=device)
    for r, x in enumerate(seqs):
        ids[r, : x.numel()] = x
        mask[r, : x.numel()] = 1
    base, _ = decoder_and_head(model)
    hidden = base(input_ids=ids, attention_mask=mask, use_cache=False)
    hidden = hidden.last_hidden_state if hasattr(hidden, "last_hidden_state") else hidden[0]
    plen = torch.tensor(plens, device=device)
    slen = torch.tensor(slens, device=device)
    t = torch.arange(s_max, device=device)
    valid = t[None, :] < slen[:, None]
    pos = torch.where(valid, plen[:, None] - 1 + t[None, :], plen[:, None] - 1)
    picked = hidden.gather(1, pos[..., None].expand(-1, -1, hidden.shape[-1]))
    return (picked if return_hidden else lm_logits(model, picked)), valid


def shared_prefix_logits(
    model: nn.Module, prefix_ids: torch.Tensor, suffixes: Sequence[torch.Tensor], mode: str = "auto"
) -> list[torch.Tensor]:
    """Logits of every suffix token after a shared prefix, from one packed forward.

    Args:
        model: an HF causal LM (Llama, Qwen2, Mistral, ...); switched to the ``sharezoo_prefix`` attention.
        prefix_ids: LongTensor ``[P]``.
        suffixes: G LongTensors ``[S_j]``.
        mode: attention path (``auto``, ``flex``, ``split``, ``merge`` or ``dense``; all exact).

    Returns:
        For each suffix, ``[S_j, V]`` logits at positions ``P-1 .. P+S_j-2`` (the predictions of its tokens),
        differentiable; equal to running ``cat([prefix, suffix_j])`` alone.
    """
    logits, _, layout = packed_suffix_logits(model, [prefix_ids], [list(suffixes)], mode=mode)
    return [logits[j, : s.numel()] for j, s in enumerate(suffixes)]
