"""CacheGen (Liu et al., arXiv 2310.07240, SIGCOMM 2024): KV tensors encoded into a real bitstream — layer-wise
per-token quantisation + arithmetic coding with per-(layer, channel) probability tables — at several quality levels,
per token chunk, and decoded back into a cache (spec ``papers/llm/cachegen.md``; streaming in
:mod:`zoo.llm.cache.cachegen_stream`).

Encoding one chunk of one layer (K and V separately; the batch rows are stacked as tokens): per token,
``max1 = max_c |x|`` over the layer's channels (``heads · head_dim``), stored in fp16; symbols
``round(x · (bins/2 − 1) / max1) + bins/2 − 1`` in ``[0, bins − 2]``; per channel, the symbol histogram of the chunk
is stored as a uint8 frequency table (scaled so the largest count is 255 — the CDF the decoder rebuilds exactly) and
drives ``constriction``'s range coder (an arithmetic coder; ``Categorical`` models, one per channel). The bytes of a
layer's chunk: ``max1`` of K and V, both tables, the coder's 32-bit words — nothing else is kept.

Bins per layer (the official configs, scaled to the depth): keys use three layer ranges split at 10/32 and 20/32 of
the depth, values two ranges split at 2/32 (boundaries rounded up); :data:`LEVELS` are the quality levels, best
first: ``32/32/32 | 32/32``, ``32/16/16 | 32/16`` (the default config), ``16/16/12 | 16/12``. The value bins of the
lighter and heavier presets were not found (**assumption**: they follow the key presets' first two ranges). The
paper's delta coding against anchor tokens is not done (the released LMCache encoder does not do it either).

:class:`CacheGenCache` is the codec as a transformers ``Cache``: a prefill is encoded at once in chunks of
``chunk_size`` tokens (the last one partial); decode tokens wait exactly in a window until ``chunk_size`` accumulate
and are then encoded (CacheGen itself encodes only the context — the decode-time rule is ours). By default each step
decodes the bitstream again (nothing decoded is kept: the cache holds only bytes); ``keep_decoded=True`` is CacheGen's
receiver instead — each chunk is decoded once, when it is first needed, and its tensors are kept beside the bytes
(the same numbers, so the same quality; ``memory_bytes()`` then counts both, ``encoded_bytes()`` the wire bytes). Lossless setting: ``encode_prefill=False`` with ``chunk_size`` beyond
the sequence (everything stays in the window). :func:`encode_kv` / :func:`decode_kv` are the codec on plain tensors,
:func:`pack_chunk` / :func:`unpack_chunk` one token chunk of every layer as one wire payload.
"""
from __future__ import annotations

import math
import struct

import numpy as np
import torch

from .base import CompressedCache, CompressedLayer

__all__ = ["LEVELS", "CacheGenCache", "CacheGenLayer", "decode_kv", "decode_symbols", "encode_kv", "encode_symbols",
           "layer_bins", "pack_chunk", "quantize_tokens", "unpack_chunk"]

LEVELS: tuple[tuple[tuple[int, ...], tuple[int, ...]], ...] = (
    ((32, 32, 32), (32, 32)),
    ((32, 16, 16), (32, 16)),
    ((16, 16, 12), (16, 12)),
)
KEY_SPLITS = (10 / 32, 20 / 32)
VALUE_SPLITS = (2 / 32,)


def layer_bins(level: int, layer: int, n_layers: int, levels=LEVELS) -> tuple[int, int]:
    """(key bins, value bins) of ``layer`` at quality ``level``."""
    kb, vb = levels[level]
    gk = sum(layer >= math.ceil(f * n_layers) for f in KEY_SPLITS)
    gv = sum(layer >= math.ceil(f * n_layers) for f in VALUE_SPLITS)
    return kb[min(gk, len(kb) - 1)], vb[min(gv, len(vb) - 1)]


def quantize_tokens(x: torch.Tensor, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """``[T, C]`` -> (int32 symbols ``[T, C]`` in ``[0, bins − 2]``, fp16 per-token ``max1`` ``[T]``)."""
    half = bins // 2 - 1
    x = x.detach()
    max1 = x.float().abs().amax(-1).half().float().clamp_min(torch.finfo(torch.float16).tiny)
    q = torch.round(x.float() / max1[:, None] * half).clamp_(-half, half) + half
    return q.to(torch.int32).cpu().numpy(), max1.half().cpu().numpy()


def _tables(symbols: np.ndarray, alphabet: int) -> np.ndarray:
    counts = np.zeros((symbols.shape[1], alphabet), np.int64)
    np.add.at(counts, (np.broadcast_to(np.arange(symbols.shape[1]), symbols.shape), symbols), 1)
    return np.ceil(counts * 255 / counts.max(1, keepdims=True).clip(1)).astype(np.uint8)


def _model(table: np.ndarray):
    import constriction  # imported where used: zoo.llm imports this module, CacheGen alone needs the coder

    return constriction.stream.model.Categorical(table.astype(np.float32), perfect=False)


def encode_symbols(symbols: np.ndarray, tables: np.ndarray, encoder) -> None:
    """Range-code ``[T, C]`` symbols channel by channel, each channel with its frequency table as the model."""
    for c in range(symbols.shape[1]):
        encoder.encode(np.ascontiguousarray(symbols[:, c]), _model(tables[c]))


def decode_symbols(decoder, tables: np.ndarray, t: int) -> np.ndarray:
    """Inverse of :func:`encode_symbols`: ``[T, C]`` int32."""
    return np.stack([decoder.decode(_model(table), t) for table in tables], 1)


def encode_kv(k: torch.Tensor, v: torch.Tensor, bins_k: int, bins_v: int) -> bytes:
    """One layer's ``[b, h, n, d]`` keys and values -> CacheGen bytes (module docstring for the layout)."""
    import constriction

    enc = constriction.stream.queue.RangeEncoder()
    parts = []
    for x, bins in ((k, bins_k), (v, bins_v)):
        b, h, n, d = x.shape
        sym, max1 = quantize_tokens(x.permute(0, 2, 1, 3).reshape(b * n, h * d), bins)
        tables = _tables(sym, bins - 1)
        encode_symbols(sym, tables, enc)
        parts += [max1.tobytes(), tables.tobytes()]
    return b"".join(parts) + enc.get_compressed().astype("<u4").tobytes()


def decode_kv(data: bytes, shape: tuple[int, int, int, int], bins_k: int, bins_v: int,
              dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
    """Inverse of :func:`encode_kv` for ``shape = (b, h, n, d)``: ``(k, v)``."""
    b, h, n, d = shape
    t, c = b * n, h * d
    off, meta = 0, []
    for bins in (bins_k, bins_v):
        max1 = np.frombuffer(data, np.float16, t, off)
        off += 2 * t
        tables = np.frombuffer(data, np.uint8, c * (bins - 1), off).reshape(c, bins - 1)
        off += c * (bins - 1)
        meta.append((max1, tables, bins))
    import constriction

    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, "<u4", offset=off).astype(np.uint32))
    out = []
    for max1, tables, bins in meta:
        half = bins // 2 - 1
        sym = torch.from_numpy(decode_symbols(dec, tables, t).astype(np.float32))
        x = (sym - half) * torch.from_numpy(max1.astype(np.float32))[:, None] / half
        out.append(x.reshape(b, n, h, d).permute(0, 2, 1, 3).to(device=device, dtype=dtype))
    return out[0], out[1]


class CacheGenLayer(CompressedLayer):
    """One layer: encoded chunks (uint8 tensors holding the bytes) + the exact window of recent decode tokens."""

    def __init__(self, bins_k: int, bins_v: int, chunk_size: int, encode_prefill: bool = True,
                 keep_decoded: bool = False) -> None:
        super().__init__()
        self.bins_k, self.bins_v, self.chunk_size, self.encode_prefill = bins_k, bins_v, chunk_size, encode_prefill
        self.keep_decoded = keep_decoded
        self.chunks: list[tuple[torch.Tensor, tuple[int, int, int, int]]] = []
        self.decoded: list[tuple[torch.Tensor, torch.Tensor]] = []  # keep_decoded: chunk i's (k, v), decoded once
        self.wk = self.wv = None

    def _encode(self, k: torch.Tensor, v: torch.Tensor) -> None:
        data = encode_kv(k, v, self.bins_k, self.bins_v)
        self.chunks.append((torch.frombuffer(bytearray(data), dtype=torch.uint8), tuple(k.shape)))

    def append(self, key_states, value_states):
        k = key_states if self.wk is None else torch.cat([self.wk, key_states], -2)
        v = value_states if self.wv is None else torch.cat([self.wv, value_states], -2)
        c = self.chunk_size
        while k.shape[-2] >= c or (self.seen == 0 and self.encode_prefill and k.shape[-2]):
            self._encode(k[..., :c, :], v[..., :c, :])
            k, v = k[..., c:, :], v[..., c:, :]
        self.wk, self.wv = (k.clone(), v.clone()) if k.shape[-2] else (None, None)

    def restore(self):
        ks, vs = [], []
        for i, (data, shape) in enumerate(self.chunks):
            if i < len(self.decoded):
                k, v = self.decoded[i]
            else:
                k, v = decode_kv(data.numpy().tobytes(), shape, self.bins_k, self.bins_v, self.dtype, self.device)
                if self.keep_decoded:
                    self.decoded.append((k, v))
            ks.append(k)
            vs.append(v)
        if self.wk is not None:
            ks.append(self.wk)
            vs.append(self.wv)
        return (torch.cat(ks, -2), torch.cat(vs, -2)) if ks else (None, None)

    def held(self):
        yield from (data for data, _ in self.chunks)
        yield from (t for kv in self.decoded for t in kv)
        yield from (t for t in (self.wk, self.wv) if t is not None)

    def encoded_bytes(self) -> int:
        return sum(data.numel() for data, _ in self.chunks)


class CacheGenCache(CompressedCache):
    """The CacheGen codec as a cache holding only bitstreams + the exact decode window (module docstring).

    Args:
        config: the model's transformers config (its depth sets the layer-wise bins).
        level: quality level, an index into ``levels`` (0: best).
        chunk_size: tokens per encoded chunk (the official streaming chunk: 1000).
        levels: the quality levels (key bins per range, value bins per range), best first.
        encode_prefill: encode the prefill at once (False, with ``chunk_size`` beyond the sequence: nothing is ever
            encoded — the lossless setting).
        keep_decoded: decode each chunk once and keep its tensors (CacheGen's receiver; same outputs, more memory)
            instead of decoding every chunk again at every step (the bytes-only cache).
    """

    def __init__(self, config, level: int = 1, chunk_size: int = 1000, levels=LEVELS,
                 encode_prefill: bool = True, keep_decoded: bool = False) -> None:
        n_layers = config.num_hidden_layers
        self.level, self.chunk_size, self.keep_decoded = level, chunk_size, keep_decoded
        super().__init__(lambda i: CacheGenLayer(*layer_bins(level, i, n_layers, levels), chunk_size,
                                                 encode_prefill, keep_decoded))

    def encoded_bytes(self) -> int:
        """Bytes of the bitstreams alone (without the exact window)."""
        return sum(layer.encoded_bytes() for layer in self.layers)


def pack_chunk(blobs: list[bytes], shape: tuple[int, int, int, int]) -> bytes:
    """One token chunk of every layer as one wire payload: ``<b h n d L>`` + L lengths + the layers' bytes."""
    return struct.pack(f"<5I{len(blobs)}I", *shape, len(blobs), *map(len, blobs)) + b"".join(blobs)


def unpack_chunk(payload: bytes) -> tuple[list[bytes], tuple[int, int, int, int]]:
    """Inverse of :func:`pack_chunk`."""
    b, h, n, d, n_layers = struct.unpack_from("<5I", payload)
    lengths = struct.unpack_from(f"<{n_layers}I", payload, 20)
    off, blobs = 20 + 4 * n_layers, []
    for ln in lengths:
        blobs.append(payload[off:off + ln])
        off += ln
    return blobs, (b, h, n, d)
