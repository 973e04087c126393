"""LLM primitives the models and methods share (no Lightning): where each kind lives.

* :mod:`zoo.llm.causal_lm` — :func:`build_causal_lm`, THE one way to build a Hugging Face causal LM (family name +
  config fields, a transformers config, or a local folder, offline), :func:`causal_lm_config`, activation
  checkpointing;
* :mod:`zoo.llm.prefix` — the shared-prefix attention primitive (packed layout, LSE merge, HF attention registration,
  cached read-only KV segments);
* :mod:`zoo.llm.tokenizer` — the character tokenizer of the toy tasks;
* :mod:`zoo.llm.cache` — KV-cache methods: transformers ``Cache`` subclasses holding their compressed form;
* :mod:`zoo.llm.reference_lm` — the reference LM trained here on real text (built by :func:`build_causal_lm`).

Models built on these (rankers, encoders, adapters) are registered zoo families (``zoo/<paper>.py``); the methods,
engines and Lightning tasks live in :mod:`tasks.llm` (see ``tasks/llm/README.md``).
"""
from .causal_lm import (
    FAMILIES,
    build_causal_lm,
    causal_lm_config,
    decoder_layers,
    enable_activation_checkpointing,
    tiny_causal_lm,
)
from .cache.base import CompressedCache, FullCache
from .cache.cachegen import CacheGenCache
from .cache.chelsea import ChelseaCache
from .cache.ems import EMSCache
from .cache.eviction import StreamingLLMCache
from .cache.gear import GEARCache, GEARConfig
from .cache.kvmerger import KVMergerCache
from .cache.minicache import MiniCache
from .cache.scores import enable_query_observation
from .cache.xkv import XKVCache
from .prefix import (
    GroupedAttention,
    MaskedAttention,
    PrefixLayout,
    enable_prefix_attention,
    lm_logits,
    shared_prefix_logits,
)
from .suffix_tree import SuffixDraft, SuffixTree
from .reference_lm import REFERENCE_LM_SIZES, build_reference_lm, reference_lm_config
from .tokenizer import CharTokenizer

__all__ = [
    "REFERENCE_LM_SIZES", "CompressedCache", "FullCache", "GEARCache", "GEARConfig", "StreamingLLMCache", "XKVCache",
    "build_reference_lm", "reference_lm_config", "CacheGenCache", "ChelseaCache", "EMSCache", "KVMergerCache",
    "MiniCache", "enable_query_observation", "SuffixDraft", "SuffixTree",
    "FAMILIES", "CharTokenizer", "GroupedAttention", "MaskedAttention", "PrefixLayout", "build_causal_lm",
    "causal_lm_config", "decoder_layers", "enable_activation_checkpointing", "enable_prefix_attention", "lm_logits",
    "shared_prefix_logits", "tiny_causal_lm",
]
