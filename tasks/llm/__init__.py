"""The LLM-side papers: methods, engines and Lightning tasks (``tasks/llm/README.md`` is the guide).

* primitives (attention, caches) and the causal-LM builder: :mod:`zoo.llm`; models (rankers, encoders):
  ``zoo/<paper>.py``;
* :mod:`tasks.llm.methods` — one module per paper (plain torch);
* :mod:`tasks.llm.engines` — generation and serving loops;
* tasks (LightningModules on :class:`tasks.llm._base.LLMTask`): :mod:`tasks.llm.grpo` (``GRPOTask``, Prefix Grouper
  switch), :mod:`tasks.llm.uni_encoder` (``UniEncoderTask``);
* :mod:`tasks.llm.rewards` (verifiable rewards), :mod:`tasks.llm.sharding` (FSDP units of the LLM tasks).
"""
