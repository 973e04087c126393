"""Companion module for the LLM-side papers (shared prefixes, KV caches, shared weights).

Submodules (imported on demand, they need ``transformers``):

* :mod:`tasks.llm.prefix` — the shared-prefix attention primitive (packed layout, LSE merge, HF registration);
  ``shared_prefix_logits``;
* :mod:`tasks.llm.grpo` — ``GRPOTask`` with the Prefix Grouper switch;
* :mod:`tasks.llm.ape` — APE adaptive parallel encoding;
* :mod:`tasks.llm.uni_encoder` — Uni-Encoder response selection (``UniEncoderTask``);
* :mod:`tasks.llm.batchllm` — BatchLLM-style prefix-shared offline generation.
"""
