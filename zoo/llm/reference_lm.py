"""The reference LM: a Llama-shaped causal LM trained here on real text (CPython's stdlib + ``pydoc_data``, GPT-2 BPE).

No pretrained causal LM can be downloaded here, so every LLM-side evaluation that needs a *trained* decoder uses this
one (any Hugging Face causal LM folder works in its place). Two sizes, both built by :func:`build_reference_lm`
through :func:`zoo.llm.causal_lm.build_causal_lm`:

* ``base`` — 12 layers, hidden 768, 12 query / 4 KV heads (GQA), RoPE, 2048-token context, tied embeddings over
  GPT-2's 50257 ids padded to 50304: ~110M parameters, trained on one H200 in minutes
  (``benchmarks/reference_lm_h200.sh``);
* ``tiny`` — 4 layers, hidden 64, 4 / 2 heads, 512-token context, a compact 2048-id vocabulary (the most frequent
  training tokens + ``<unk>``): trained on a CPU in about a minute (250 steps of 8 x 256 tokens); the tests' trained LM.

Training and data: ``tasks/llm/reference_lm_train.py`` and ``datamodules/stdlib_text.py``. The trained model is a
``save_pretrained`` folder (``config.json`` + ``model.safetensors`` + ``sharezoo_tokenizer.json`` + the corpus manifest
``stdlib_manifest.json`` + ``train_log.json``), loaded with ``build_causal_lm(folder)``.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .causal_lm import build_causal_lm

__all__ = ["REFERENCE_LM_SIZES", "TRAINING_RECIPES", "build_reference_lm", "reference_lm_config"]

#: the model shape of each size (LlamaConfig fields); ``vocab_size`` comes from the tokenizer
REFERENCE_LM_SIZES: dict[str, dict[str, Any]] = {
    "tiny": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512, rope_theta=10000.0, tie_word_embeddings=True),
    "base": dict(hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
                 num_key_value_heads=4, max_position_embeddings=2048, rope_theta=10000.0, tie_word_embeddings=True),
}

#: the training recipe of each size (read by ``tasks/llm/reference_lm_train.py``; every field can be overridden there)
TRAINING_RECIPES: dict[str, dict[str, Any]] = {
    "tiny": dict(seq_len=256, batch_size=8, steps=250, lr=3e-3, warmup=25, weight_decay=0.1, vocab_limit=2048,
                 max_train_tokens=2_000_000, val_fraction=0.03, seed=0),
    "base": dict(seq_len=2048, batch_size=32, steps=1000, lr=1e-3, warmup=100, weight_decay=0.1, vocab_limit=None,
                 max_train_tokens=None, val_fraction=0.03, seed=0),
}


def reference_lm_config(size: str = "tiny", vocab_size: int = 50304, **overrides: Any) -> dict[str, Any]:
    """LlamaConfig fields of a reference-LM size (``tiny`` or ``base``), ``vocab_size`` and ``overrides`` applied.

    Args:
        size: ``tiny`` or ``base``.
        vocab_size: the tokenizer's vocabulary (padded up to a multiple of 64 for fast matmuls).
        overrides: any LlamaConfig field.
    """
    if size not in REFERENCE_LM_SIZES:
        raise ValueError(f"unknown reference-LM size {size!r}: one of {', '.join(REFERENCE_LM_SIZES)}")
    padded = -(-vocab_size // 64) * 64
    return {**REFERENCE_LM_SIZES[size], "vocab_size": padded, **overrides}


def build_reference_lm(size: str = "tiny", vocab_size: int = 50304, **overrides: Any) -> nn.Module:
    """A randomly initialised reference LM (``LlamaForCausalLM``) of ``size``.

    Args:
        size: ``tiny`` or ``base``.
        vocab_size: the tokenizer's vocabulary size.
        overrides: any LlamaConfig field.
    """
    return build_causal_lm("llama", **reference_lm_config(size, vocab_size, **overrides))
