"""A simple eviction baseline: StreamingLLM's attention sinks + recent window (Xiao et al., arXiv 2309.17453).

Each layer keeps the first ``sink`` tokens and the last ``window`` tokens it has seen, exactly; everything between is
dropped for good. Keys keep the positions they were rotated with (the cache stores post-RoPE keys; StreamingLLM's
re-rotation to in-cache positions is not done — the common H2O/SnapKV-style simplification), and the mask spans only
the kept entries (``CompressedLayer`` contract). Lossless setting: ``sink + window`` ≥ the sequence length.
"""
from __future__ import annotations

import torch

from .base import CompressedCache, CompressedLayer

__all__ = ["StreamingLLMCache", "SinkWindowLayer"]


class SinkWindowLayer(CompressedLayer):
    """One layer: ``sink`` first tokens + ``window`` most recent tokens."""

    def __init__(self, sink: int, window: int) -> None:
        super().__init__()
        self.sink, self.window = sink, window
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def restore(self):
        return self.k, self.v

    def append(self, key_states, value_states):
        k = key_states if self.k is None else torch.cat([self.k, key_states], -2)
        v = value_states if self.v is None else torch.cat([self.v, value_states], -2)
        if k.shape[-2] > self.sink + self.window:
            keep = torch.cat([torch.arange(self.sink), torch.arange(k.shape[-2] - self.window, k.shape[-2])])
            keep = keep.to(k.device)
            k, v = k.index_select(-2, keep), v.index_select(-2, keep)
        self.k, self.v = k, v

    def stored_length(self) -> int:
        return 0 if self.k is None else self.k.shape[-2]

    def held(self):
        yield from (t for t in (self.k, self.v) if t is not None)


class StreamingLLMCache(CompressedCache):
    """Sink + recent-window eviction (module docstring).

    Args:
        sink: first tokens always kept (attention sinks; the paper uses 4).
        window: most recent tokens kept.
    """

    def __init__(self, sink: int = 4, window: int = 124) -> None:
        self.sink, self.window = sink, window
        super().__init__(lambda i: SinkWindowLayer(sink, window))
