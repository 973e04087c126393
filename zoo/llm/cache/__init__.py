"""KV-cache methods that really compress: transformers ``Cache`` subclasses holding only their compressed form.

One module per method (``gear``, ``xkv``, ``minicache``, ``eviction``, ...), the shared layer contract and byte
accounting in :mod:`zoo.llm.cache.base`, packed low-bit storage in :mod:`zoo.llm.cache.quant`; ``docs/kv_cache.md``.
"""
