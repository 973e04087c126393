"""LLM-side engines: loops that run a model to produce tokens (generation, offline batch serving), no Lightning.

* :mod:`tasks.llm.engines.generation` — KV-cached sampling / greedy decoding of several completions per prompt;
* :mod:`tasks.llm.engines.batchllm` — the BatchLLM engine running the planner's groups and batches.
"""
