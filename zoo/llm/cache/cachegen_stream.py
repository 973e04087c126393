"""CacheGen's bandwidth-adaptive streaming: a context's KV cache pre-encoded per token chunk at every quality level
(:mod:`zoo.llm.cache.cachegen`), a server that sends one chunk at a time over TCP at a throttled rate, and a client
whose controller picks, per chunk, a level — or the text fallback (the chunk's token ids, recomputed by the model) —
so the context is ready by a time-to-first-token target (spec ``papers/llm/cachegen.md``, ``run_adaptation.py``).

Controller (:class:`StreamingController`): before chunk ``i`` it estimates the time of each option,
``bytes / bandwidth + chunk_delay_s`` (+ ``recompute_s_per_token · n`` for text), with the bandwidth measured on the
previous chunk (``initial_bandwidth`` for the first), and takes the first option of ``levels best → worst, then
text`` whose time plus the *fastest* option of every later chunk fits the time left to the target; when none fits,
the fastest option. So when the bandwidth holds, a feasible plan never misses the target. Text is the fallback (last
in the order although exact): on a large model recomputation is the expensive path. Assumptions (not found in the
spec): the text fallback's recompute cost is a given per-token estimate; ``chunk_delay_s`` defaults to 0 (the
script's 0.2 s suits its GPU decoder, pass it for that setting).

Wire protocol (loopback in the tests): the client sends ``<ii`` (chunk, option: level ≥ 0, ``-1`` text, ``-2`` the
JSON manifest of every chunk's sizes); the server answers ``<Q`` length + payload, paced to ``bandwidth`` bytes/s
(a number, or a function of the request count — a trace).
"""
from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from .base import FullCache
from .cachegen import LEVELS, decode_kv, encode_kv, layer_bins, pack_chunk, unpack_chunk

__all__ = ["EncodedContext", "StreamingController", "ThrottledKVServer", "encode_context", "stream_context"]

TEXT = -1
_MANIFEST = -2


@dataclass
class EncodedContext:
    """A context pre-encoded for streaming: per chunk, one payload per level and the token ids (text fallback)."""

    levels: list[list[bytes]] = field(default_factory=list)  # [chunk][level]
    text: list[bytes] = field(default_factory=list)  # [chunk] int32 token ids
    tokens: list[int] = field(default_factory=list)  # [chunk] token count

    def manifest(self) -> list[dict]:
        return [{"n": n, "levels": [len(p) for p in lv], "text": len(t)}
                for n, lv, t in zip(self.tokens, self.levels, self.text)]


def _forward_into(model, ids: torch.Tensor, cache) -> torch.Tensor:
    """Run ``model`` on ``ids`` ``[1, n]`` through ``cache`` (the cache keyword of the installed transformers)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return model(input_ids=ids, use_cache=True, **{name: cache}).logits


@torch.no_grad()
def encode_context(model, ids: torch.Tensor, chunk_size: int, levels=LEVELS) -> EncodedContext:
    """Prefill ``ids`` ``[N]`` once and encode its KV cache per chunk of ``chunk_size`` tokens at every level."""
    dev = next(model.parameters()).device
    cache = FullCache()
    _forward_into(model, ids[None].to(dev), cache)
    n_layers = len(cache.layers)
    out = EncodedContext()
    for s in range(0, ids.numel(), chunk_size):
        e = min(s + chunk_size, ids.numel())
        payloads = []
        for level in range(len(levels)):
            blobs = [encode_kv(layer.k[..., s:e, :], layer.v[..., s:e, :], *layer_bins(level, i, n_layers, levels))
                     for i, layer in enumerate(cache.layers)]
            payloads.append(pack_chunk(blobs, tuple(cache.layers[0].k[..., s:e, :].shape)))
        out.levels.append(payloads)
        out.text.append(ids[s:e].to(torch.int32).cpu().numpy().astype("<i4").tobytes())
        out.tokens.append(e - s)
    return out


class StreamingController:
    """Per-chunk choice of a quality level or the text fallback to meet a TTFT target (module docstring).

    Args:
        slo_s: the time-to-first-token target (the script's default: 2 s).
        initial_bandwidth: bytes/s assumed before the first chunk is measured.
        chunk_delay_s: fixed cost per chunk (request, decode) added to every estimate.
        recompute_s_per_token: estimated recompute cost of the text fallback per token.
    """

    def __init__(self, slo_s: float = 2.0, initial_bandwidth: float = 1e6, chunk_delay_s: float = 0.0,
                 recompute_s_per_token: float = 1e-3) -> None:
        self.slo_s, self.initial_bandwidth = slo_s, initial_bandwidth
        self.chunk_delay_s, self.recompute_s_per_token = chunk_delay_s, recompute_s_per_token

    def options(self, offer: dict) -> list[int]:
        return [*range(len(offer["levels"])), TEXT]

    def estimate(self, offer: dict, option: int, bandwidth: float) -> float:
        """Seconds to get one chunk ready with ``option`` at ``bandwidth`` bytes/s."""
        if option == TEXT:
            return offer["text"] / bandwidth + self.chunk_delay_s + self.recompute_s_per_token * offer["n"]
        return offer["levels"][option] / bandwidth + self.chunk_delay_s

    def choose(self, offers: list[dict], i: int, elapsed: float, bandwidth: float) -> int:
        """The option for chunk ``i`` given the time ``elapsed`` so far and the bandwidth estimate."""
        rest = sum(min(self.estimate(o, p, bandwidth) for p in self.options(o)) for o in offers[i + 1:])
        left = self.slo_s - elapsed
        for option in self.options(offers[i]):
            if self.estimate(offers[i], option, bandwidth) + rest <= left:
                return option
        return min(self.options(offers[i]), key=lambda p: self.estimate(offers[i], p, bandwidth))


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        part = sock.recv(min(1 << 16, n - len(buf)))
        if not part:
            raise ConnectionError("connection closed mid-message")
        buf += part
    return bytes(buf)


class ThrottledKVServer:
    """Serves an :class:`EncodedContext` over TCP, paced to a bandwidth (module docstring); a context manager.

    Args:
        context: the pre-encoded context.
        bandwidth: bytes/s, or a function of the request index (a bandwidth trace).
        host: interface to listen on (loopback by default).
        slice_bytes: bytes sent between pacing sleeps.
    """

    def __init__(self, context: EncodedContext, bandwidth: float | Callable[[int], float], host: str = "127.0.0.1",
                 slice_bytes: int = 2048) -> None:
        self.context, self.bandwidth, self.slice_bytes = context, bandwidth, slice_bytes
        self.sock = socket.create_server((host, 0))
        self.address = self.sock.getsockname()
        self.requests = 0
        self.thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> ThrottledKVServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()
        self.thread.join(timeout=5)

    def _rate(self) -> float:
        return self.bandwidth(self.requests) if callable(self.bandwidth) else self.bandwidth

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        with conn:
            while True:
                try:
                    chunk, option = struct.unpack("<ii", _recv_exact(conn, 8))
                except (ConnectionError, OSError):
                    return
                if option == _MANIFEST:
                    payload = json.dumps(self.context.manifest()).encode()
                else:
                    payload = self.context.text[chunk] if option == TEXT else self.context.levels[chunk][option]
                rate = self._rate()
                self.requests += 1
                data = struct.pack("<Q", len(payload)) + payload
                t0 = time.perf_counter()
                for s in range(0, len(data), self.slice_bytes):
                    conn.sendall(data[s:s + self.slice_bytes])
                    wait = t0 + min(s + self.slice_bytes, len(data)) / rate - time.perf_counter()
                    if wait > 0:
                        time.sleep(wait)


@torch.no_grad()
def stream_context(address: tuple[str, int], model, controller: StreamingController,
                   levels=LEVELS) -> tuple[FullCache, list[dict], float]:
    """Fetch a context's KV cache chunk by chunk from a :class:`ThrottledKVServer`, each chunk at the controller's
    option, decoding (or recomputing from text) into a :class:`FullCache`. Returns the cache, a per-chunk log
    (option, bytes, seconds, bandwidth estimate used) and the seconds until the cache was ready."""
    dev = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    t0 = time.perf_counter()
    cache, log = FullCache(), []
    with socket.create_connection(address) as sock:
        def fetch(chunk: int, option: int) -> tuple[bytes, float]:
            t = time.perf_counter()
            sock.sendall(struct.pack("<ii", chunk, option))
            n = struct.unpack("<Q", _recv_exact(sock, 8))[0]
            return _recv_exact(sock, n), time.perf_counter() - t

        raw, _ = fetch(0, _MANIFEST)
        offers = json.loads(raw)
        bandwidth = controller.initial_bandwidth
        n_layers = None
        for i in range(len(offers)):
            option = controller.choose(offers, i, time.perf_counter() - t0, bandwidth)
            payload, seconds = fetch(i, option)
            log.append({"chunk": i, "option": option, "bytes": len(payload), "seconds": seconds,
                        "bandwidth_estimate": bandwidth})
            bandwidth = len(payload) / max(seconds, 1e-6)
            if option == TEXT:
                ids = torch.from_numpy(np.frombuffer(payload, "<i4").astype(np.int64))[None].to(dev)
                _forward_into(model, ids, cache)
                continue
            blobs, shape = unpack_chunk(payload)
            n_layers = n_layers or len(blobs)
            for layer, blob in enumerate(blobs):
                k, v = decode_kv(blob, shape, *layer_bins(option, layer, n_layers, levels), dtype, dev)
                cache.update(k, v, layer)
    return cache, log, time.perf_counter() - t0
