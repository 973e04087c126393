"""Shared by the KV-cache tests: the tiny decoder of each family and greedy generation through a given cache."""
import warnings

import torch

from tasks.llm.engines.generation import cache_kwarg
from zoo.llm import tiny_causal_lm

FAMILIES = ("llama", "qwen2", "mistral", "gemma2")


def tiny_decoder(family: str):
    """A 4-layer decoder of ``family`` (head dim 16 except Gemma-2's own) with a 128-token vocabulary."""
    return tiny_causal_lm(family, vocab_size=128, num_hidden_layers=4, **({} if family == "gemma2" else
                                                                           {"head_dim": 16}))


def generate(model, x, cache, n=12):
    """Greedy ``n`` new tokens after ``x`` with ``cache`` as the model's cache."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False,
                              pad_token_id=0, **{cache_kwarg(model): cache})
