"""The shared-prefix attention primitive (Prefix Grouper's packed layout, LSE merge, HF integration).

Public API: :func:`shared_prefix_logits`, :class:`PrefixLayout`, :func:`prefix_grouped_attention`,
:func:`attention_with_lse`, :func:`merge_partials`, :func:`enable_prefix_attention`.
"""
from .attention import merge_partials, prefix_grouped_attention
from .eager import attention_with_lse, repeat_kv
from .hf import (
    ATTN_NAME,
    GroupedAttention,
    MaskedAttention,
    decoder_and_head,
    enable_prefix_attention,
    lm_logits,
    packed_suffix_logits,
    register_prefix_attention,
    repeated_suffix_logits,
    run_with_spec,
    shared_prefix_logits,
)
from .layout import PrefixLayout

__all__ = [
    "ATTN_NAME",
    "GroupedAttention",
    "MaskedAttention",
    "PrefixLayout",
    "attention_with_lse",
    "decoder_and_head",
    "enable_prefix_attention",
    "lm_logits",
    "merge_partials",
    "packed_suffix_logits",
    "prefix_grouped_attention",
    "register_prefix_attention",
    "repeat_kv",
    "repeated_suffix_logits",
    "run_with_spec",
    "shared_prefix_logits",
]
