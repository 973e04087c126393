"""KV-cache methods that really compress: transformers ``Cache`` subclasses holding only their compressed form.

One module per method (``gear``, ``xkv``, ``minicache``, ``kvmerger``, ``ems``, ``chelsea``, ``cachegen`` (+
``cachegen_stream``: streaming), ``eviction``), the shared layer contract and byte accounting in
:mod:`zoo.llm.cache.base`, packed low-bit storage in :mod:`zoo.llm.cache.quant`, the query hooks of attention-scored
methods in :mod:`zoo.llm.cache.scores`; ``docs/kv_cache.md``.
"""
