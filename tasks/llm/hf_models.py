"""Hugging Face causal LMs built from config (random init, offline): the tiny test models and benchmark shapes."""
from __future__ import annotations

import torch
from torch import nn


def causal_lm_config(family: str = "llama", vocab_size: int = 128, **overrides):
    """A transformers config of ``family`` (``llama``, ``qwen2`` or ``mistral``); tiny defaults: RoPE + GQA.

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
    base.update(overrides)
    cls = {"llama": "LlamaConfig", "qwen2": "Qwen2Config", "mistral": "MistralConfig"}[family]
    cfg = getattr(transformers, cls)(**base)
    cfg._attn_implementation = overrides.get("attn_implementation", "sdpa")
    return cfg


def build_causal_lm(config) -> nn.Module:
    """``AutoModelForCausalLM.from_config`` with SDPA attention (random weights)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(config, attn_implementation="sdpa")


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
