"""Hugging Face causal LMs built from config (random init, offline): the tiny test models and benchmark shapes."""
from __future__ import annotations

import torch
from torch import nn


def causal_lm_config(family: str = "llama", vocab_size: int = 128, **overrides):
    """A transformers config of ``family`` (``llama``, ``qwen2``, ``mistral`` or ``gemma2``); tiny defaults: RoPE + GQA.

    ``gemma2`` keeps its attention-logit and final-logit soft-capping (defaults 50 / 30; override
    ``attn_logit_softcapping`` to make it bite in tiny random models) and its alternating sliding-window layers; it is
    built with ``eager`` attention (HF's SDPA path has no soft-capping).

    Args:
        family: model family.
        vocab_size: vocabulary size.
        overrides: any config field (``hidden_size``, ``num_hidden_layers``, ...).
    """
    import transformers

    base = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rope_theta=10000.0,
        tie_word_embeddings=False,
    )
    if family == "mistral":
        base["sliding_window"] = None
    if family == "qwen2":
        base["use_sliding_window"] = False
    if family == "gemma2":
        base.update(head_dim=16, query_pre_attn_scalar=16)
    base.update(overrides)
    base.pop("attn_implementation", None)
    cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig", "gemma2": "Gemma2Config"}[family]
    cfg = getattr(transformers, cls)(**base)
    cfg._attn_implementation = overrides.get("attn_implementation", _default_attn(family))
    return cfg


def _default_attn(family: str) -> str:
    """SDPA, except for models whose attention SDPA cannot compute (Gemma-2's logit soft-capping: eager)."""
    return "eager" if family == "gemma2" else "sdpa"


def build_causal_lm(config) -> nn.Module:
    """``AutoModelForCausalLM.from_config`` with SDPA attention (eager for soft-capped models; random weights)."""
    from transformers import AutoModelForCausalLM

    attn = "eager" if getattr(config, "attn_logit_softcapping", None) else "sdpa"
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn)


def tiny_causal_lm(family: str = "llama", vocab_size: int = 128, seed: int = 0, **overrides) -> nn.Module:
    """A 2-layer fp32 causal LM of ``family`` with random weights (deterministic for a seed)."""
    torch.manual_seed(seed)
    model = build_causal_lm(causal_lm_config(family, vocab_size, **overrides)).float()
    return model.eval()


def enable_activation_checkpointing(model: nn.Module) -> None:
    """HF activation (gradient) checkpointing, non-reentrant, under the name of the installed transformers."""
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
