"""LLM-side methods: one module per paper (or tight group), plain torch on Hugging Face models, no Lightning.

* :mod:`tasks.llm.methods.grpo` — GRPO advantages, per-token log-probs (Prefix Grouper switch), the clipped objective;
* :mod:`tasks.llm.methods.ape` — APE adaptive parallel encoding;
* :mod:`tasks.llm.methods.batchllm` — the BatchLLM planner (prefix tree, grouping DP, memory-centric schedule).
"""
