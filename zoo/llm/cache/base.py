"""What every KV-cache method here shares: a transformers ``Cache`` whose layers hold only their compressed form, and
the one byte count, :meth:`CompressedCache.memory_bytes`, taken from the tensors the layers really hold.

The contract of a layer (:class:`CompressedLayer`):

* ``update(k, v)`` returns the keys/values the attention of this step uses: the *decompressed past* followed by the
  *new tokens exactly* (so a prefill attends to its own exact K/V, as in GEAR / KIVI / the eviction methods), then
  stores the new tokens in the method's form (compressed now, or kept in the method's full-precision window);
* ``get_seq_length()`` is the number of tokens *seen* (the position of the next token, for RoPE), while the attention
  mask spans the ``stored`` entries: ``get_mask_sizes`` returns ``(stored + q, seen - stored)``, so methods that
  drop or merge tokens (stored < seen) get a correct causal mask — every stored entry is in the past of every query;
* ``held()`` yields every tensor the layer keeps; a tensor shared by several layers (cross-layer methods) is counted
  once. Nothing decompressed is kept between steps.

Layers of sliding-window attention (Gemma-2's local layers, Mistral with a window) are treated as full layers: exact
while the context fits in the window (the tests' contexts do).
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

__all__ = ["CompressedCache", "CompressedLayer", "FullLayer", "FullCache", "tensor_bytes"]


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Bytes of the distinct storages behind ``tensors`` (a tensor seen twice, or two views of one storage, count
    once; each storage counts whole — a sliced view keeps its parent alive)."""
    seen: set[tuple[str, int]] = set()
    total = 0
    for t in tensors:
        if t is None or t.numel() == 0:
            continue
        storage = t.untyped_storage()
        key = (str(t.device), storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


class CompressedLayer(CacheLayerMixin):
    """One layer's cache in a method's compressed form (module docstring for the contract)."""

    is_sliding = False
    is_compileable = False
    is_croppable = False

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0  # tokens seen (positions), >= stored entries

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.device, self.dtype = key_states.device, key_states.dtype
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        past_k, past_v = self.restore()
        keys = key_states if past_k is None else torch.cat([past_k.to(key_states.dtype), key_states], dim=-2)
        values = value_states if past_v is None else torch.cat([past_v.to(value_states.dtype), value_states], dim=-2)
        self.append(key_states, value_states)
        self.seen += key_states.shape[-2]
        return keys, values

    # --- what a method implements -------------------------------------------------------------------------------
    def restore(self) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """The stored past as ``[b, h, stored, d]`` keys and values (decompressed), or ``(None, None)``."""
        raise NotImplementedError

    def append(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """Store new tokens (compressing whatever the method compresses now)."""
        raise NotImplementedError

    def stored_length(self) -> int:
        """Entries the attention sees from the past (``seen`` unless the method drops or merges tokens)."""
        return self.seen

    def held(self) -> Iterator[torch.Tensor]:
        """Every tensor this layer keeps."""
        raise NotImplementedError

    # --- transformers' layer interface -------------------------------------------------------------------------
    def get_seq_length(self) -> int:
        return self.seen

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        stored = self.stored_length()
        return stored + query_length, self.seen - stored

    def get_max_length(self) -> int:
        return -1

    def reset(self) -> None:
        self.__init__()

    def offload(self):  # the compressed form stays where it is
        pass

    def prefetch(self):
        pass


class FullLayer(CompressedLayer):
    """The uncompressed reference: keys and values kept whole (what ``DynamicCache`` holds), counted the same way."""

    def __init__(self) -> None:
        super().__init__()
        self.k: torch.Tensor | None = None
        self.v: torch.Tensor | None = None

    def restore(self):
        return self.k, self.v

    def append(self, key_states, value_states):
        self.k = key_states if self.k is None else torch.cat([self.k, key_states], dim=-2)
        self.v = value_states if self.v is None else torch.cat([self.v, value_states], dim=-2)

    def held(self):
        yield from (t for t in (self.k, self.v) if t is not None)


class CompressedCache(Cache):
    """A transformers ``Cache`` of :class:`CompressedLayer` s, created lazily one per layer by ``layer_factory``.

    Args:
        layer_factory: called with the layer index, returns that layer's cache object.
    """

    def __init__(self, layer_factory=None) -> None:
        super().__init__(layers=[])
        self.layer_factory = layer_factory

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args,
               **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.layers) <= layer_idx:
            self.layers.append(self.layer_factory(len(self.layers)))
        return self.layers[layer_idx].update(key_states, value_states, *args, **kwargs)

    def memory_bytes(self) -> int:
        """Bytes of every tensor the cache holds (shared tensors once): the real footprint of the compressed cache."""
        return tensor_bytes(t for layer in self.layers for t in layer.held())

    def stored_lengths(self) -> list[int]:
        """Per layer: the entries attention sees from the past."""
        return [layer.stored_length() for layer in self.layers]


class FullCache(CompressedCache):
    """The uncompressed cache under the same accounting (the harness's baseline)."""

    def __init__(self) -> None:
        super().__init__(lambda i: FullLayer())
