"""EPD disaggregation (Singh et al., arXiv 2501.05460): Encode, Prefill and Decode as separate worker processes.

Spec: ``shared/papers/llm/epd-disaggregation.md``. A multimodal model (:class:`TinyVLM`: a timm ViT encoder, a linear
projector, a decoder LM from :func:`zoo.llm.build_causal_lm`; image tokens precede the text) is served two ways:

* :func:`aggregated_generate` — one process encodes, prefills and decodes each request in turn (the baseline);
* :class:`EPDServer` — ``num_encoders`` encode workers, one prefill worker and one decode worker, each a
  ``torch.multiprocessing`` process with its own scheduler:

  1. the orchestrator (the calling process) splits each image into tiles and deals one request's tiles round-robin to
     the encode workers (intra-request parallel encoding); the request header goes to the prefill worker;
  2. an encode worker encodes a tile, writes the projected tokens into blocks of its **multimodal-token cache** (a
     block pool in shared memory, :class:`MMBlockManager` = free list + per-tile block tables) and sends only the block
     ids to the prefill worker — the transfer is asynchronous: the encoder goes on with the next tile, and frees the
     blocks when the prefill worker reports it has copied them;
  3. the prefill worker (FCFS over requests whose tiles have all arrived) assembles image + text embeddings, runs the
     prefill, emits the first token and ships the KV cache (per-layer tensors through a queue, i.e. shared memory) to
     the decode worker without waiting for it;
  4. the decode worker keeps up to ``max_decode_batch`` requests active and advances them round-robin, one token per
     request per iteration (iteration-level scheduling).

Every worker encodes one tile at a time and the KV arrives bit-exact, so the outputs equal the aggregated pipeline
(test). On GPUs each stage takes a device of its own (``devices``); the shared-memory / queue transfer stands in for the
paper's CUDA-IPC / NVLink block migration. Not implemented: the resource optimiser, role switching, batched decode
kernels across requests of different lengths, PD-only baseline.
"""
from __future__ import annotations

import queue as _queue
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

__all__ = ["EPDServer", "MMBlockManager", "Request", "TinyVLM", "aggregated_generate", "build_tiny_vlm", "tile_image"]


class TinyVLM(nn.Module):
    """Vision encoder (timm ViT, patch tokens + CLS) -> linear projector -> causal decoder LM.

    Args:
        encoder: a timm ViT created with ``num_classes=0``.
        decoder: a Hugging Face causal LM.
    """

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.projector = nn.Linear(encoder.embed_dim, decoder.config.hidden_size)

    @torch.no_grad()
    def encode_tile(self, tile: torch.Tensor) -> torch.Tensor:
        """Multimodal tokens of one tile ``[3, t, t]``: ``[N_tile, hidden]``."""
        return self.projector(self.encoder.forward_features(tile[None]))[0]

    @torch.no_grad()
    def prefill(self, mm_tokens: torch.Tensor, prompt: torch.Tensor):
        """Prefill ``[image tokens ; prompt]``: ``(first token, DynamicCache)``."""
        emb = torch.cat([mm_tokens, self.decoder.get_input_embeddings()(prompt)])[None]
        out = self.decoder(inputs_embeds=emb, use_cache=True)
        from tasks.llm.engines.generation import output_cache

        return int(out.logits[0, -1].argmax()), output_cache(out)

    @torch.no_grad()
    def decode_step(self, token: int, cache) -> tuple[int, object]:
        """One greedy step from ``token``: ``(next token, cache)``."""
        from tasks.llm.engines.generation import cache_kwarg, output_cache

        dev = next(self.decoder.parameters()).device
        out = self.decoder(input_ids=torch.tensor([[token]], device=dev), use_cache=True,
                           **{cache_kwarg(self.decoder): cache})
        return int(out.logits[0, -1].argmax()), output_cache(out)


def build_tiny_vlm(vocab_size: int = 128, tile: int = 32, patch: int = 8, seed: int = 0, **decoder_fields) -> TinyVLM:
    """A tiny random :class:`TinyVLM` (ViT: 2 blocks, width 64; Llama decoder: 2 layers, hidden 64)."""
    import timm

    from zoo.llm import build_causal_lm

    torch.manual_seed(seed)
    enc = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=tile, patch_size=patch, embed_dim=64,
                            depth=2, num_heads=2, num_classes=0)
    return TinyVLM(enc, build_causal_lm("llama", vocab_size=vocab_size, **decoder_fields)).eval()


def tile_image(image: torch.Tensor, tile: int) -> torch.Tensor:
    """``[3, H, W]`` (H, W multiples of ``tile``) -> ``[n_tiles, 3, tile, tile]`` in row-major order."""
    c, h, w = image.shape
    return image.reshape(c, h // tile, tile, w // tile, tile).permute(1, 3, 0, 2, 4).reshape(-1, c, tile, tile)


@dataclass
class Request:
    """One multimodal request.

    Attributes:
        rid: request id.
        prompt: text token ids ``[P]``.
        image: ``[3, H, W]``.
        max_new_tokens: generated tokens (greedy; no EOS).
        arrival: arrival offset in seconds from the stream start (request streams).
    """

    rid: int
    prompt: torch.Tensor
    image: torch.Tensor
    max_new_tokens: int = 16
    arrival: float = 0.0


@dataclass
class Result:
    """Generated tokens and timestamps (``time.monotonic``, system-wide) of one request."""

    rid: int
    tokens: list[int] = field(default_factory=list)
    arrival: float = 0.0
    first_token: float = 0.0
    done: float = 0.0

    @property
    def ttft(self) -> float:
        return self.first_token - self.arrival


class MMBlockManager:
    """Block-managed multimodal-token cache: a pool ``[num_blocks, block_size, hidden]`` and a free list.

    Args:
        pool: the block pool (shared memory / a device tensor shared with the reader).
    """

    def __init__(self, pool: torch.Tensor) -> None:
        self.pool, self.block_size = pool, pool.shape[1]
        self.free = list(range(pool.shape[0]))

    def write(self, tokens: torch.Tensor) -> list[int]:
        """Store ``tokens [N, hidden]`` in fresh blocks; returns the block table (raises when the pool is full)."""
        n = -(-tokens.shape[0] // self.block_size)
        if n > len(self.free):
            raise MemoryError(f"MM cache full: {n} blocks wanted, {len(self.free)} free")
        table, self.free = self.free[:n], self.free[n:]
        for i, b in enumerate(table):
            chunk = tokens[i * self.block_size:(i + 1) * self.block_size]
            self.pool[b, :chunk.shape[0]] = chunk
        return table

    @staticmethod
    def read(pool: torch.Tensor, table: Sequence[int], n_tokens: int) -> torch.Tensor:
        """The ``n_tokens`` stored under ``table``."""
        return pool[list(table)].reshape(-1, pool.shape[-1])[:n_tokens].clone()

    def release(self, table: Sequence[int]) -> None:
        self.free.extend(table)


# ------------------------------------------------------------------------------------------------ the aggregated way
@torch.no_grad()
def aggregated_generate(model: TinyVLM, requests: Sequence[Request], tile: int, realtime: bool = False) -> list[Result]:
    """Encode, prefill and decode each request in one process, FCFS (the baseline).

    Args:
        model: the VLM.
        requests: the request stream.
        tile: tile size.
        realtime: wait for each request's arrival offset (request-stream timing) instead of running back to back.
    """
    dev = next(model.parameters()).device
    start, results = time.monotonic(), []
    for r in sorted(requests, key=lambda r: r.arrival):
        if realtime:
            time.sleep(max(0.0, start + r.arrival - time.monotonic()))
        res = Result(r.rid, arrival=start + r.arrival if realtime else time.monotonic())
        mm = torch.cat([model.encode_tile(t) for t in tile_image(r.image.to(dev), tile)])
        tok, cache = model.prefill(mm, r.prompt.to(dev))
        _sync(dev)
        res.first_token, res.tokens = time.monotonic(), [tok]
        while len(res.tokens) < r.max_new_tokens:
            tok, cache = model.decode_step(tok, cache)
            res.tokens.append(tok)
        _sync(dev)
        res.done = time.monotonic()
        results.append(res)
    return results


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


# ------------------------------------------------------------------------------------------------ workers
def _encode_worker(model: TinyVLM, pool: torch.Tensor, inbox, prefill_q, device: str) -> None:
    """Encode scheduler: FCFS over tiles; frees blocks when the prefill worker acknowledges the copy (a full pool
    waits for acknowledgements, deferring other messages)."""
    from collections import deque

    torch.set_num_threads(1)
    model = model.to(device)
    mgr = MMBlockManager(pool)
    deferred: deque = deque()
    while True:
        msg = deferred.popleft() if deferred else inbox.get()
        if msg[0] == "stop":
            return
        if msg[0] == "free":
            mgr.release(msg[1])
            continue
        _, rid, idx, tile, enc_id = msg
        toks = model.encode_tile(tile.to(device))
        _sync(torch.device(device))
        while len(mgr.free) < -(-toks.shape[0] // mgr.block_size):
            m = inbox.get()
            mgr.release(m[1]) if m[0] == "free" else deferred.append(m)
        prefill_q.put(("mm", rid, idx, enc_id, mgr.write(toks), toks.shape[0]))


def _prefill_worker(model: TinyVLM, pools: list, inbox, enc_inboxes: list, decode_q, result_q, device: str) -> None:
    """Prefill scheduler: FCFS over requests whose tiles have all arrived; ships KV to decode asynchronously."""
    torch.set_num_threads(1)
    model = model.to(device)
    heads: dict[int, tuple] = {}
    tiles: dict[int, dict[int, torch.Tensor]] = {}
    order: list[int] = []
    while True:
        msg = inbox.get()
        if msg[0] == "stop":
            decode_q.put(("stop",))
            return
        if msg[0] == "req":
            _, rid, prompt, n_tiles, max_new = msg
            heads[rid] = (prompt, n_tiles, max_new)
            order.append(rid)
            tiles.setdefault(rid, {})
        elif msg[0] == "mm":
            _, rid, idx, enc_id, table, n = msg
            tiles.setdefault(rid, {})[idx] = MMBlockManager.read(pools[enc_id], table, n).to(device)
            enc_inboxes[enc_id].put(("free", table))
        while order and order[0] in heads and len(tiles.get(order[0], {})) == heads[order[0]][1]:
            rid = order.pop(0)
            prompt, n_tiles, max_new = heads.pop(rid)
            got = tiles.pop(rid)
            mm = torch.cat([got[i] for i in range(n_tiles)])
            tok, cache = model.prefill(mm, prompt.to(device))
            _sync(torch.device(device))
            result_q.put(("first", rid, tok, time.monotonic()))
            kv = [(layer.keys, layer.values) for layer in cache.layers] if hasattr(cache, "layers") else \
                list(zip(cache.key_cache, cache.value_cache))
            decode_q.put(("kv", rid, tok, max_new, kv))


def _decode_worker(model: TinyVLM, inbox, result_q, device: str, max_batch: int) -> None:
    """Decode scheduler: admits up to ``max_batch`` requests, advances them round-robin (one token each per round)."""
    from transformers import DynamicCache

    torch.set_num_threads(1)
    model = model.to(device)
    active: dict[int, list] = {}
    waiting: list = []
    stopping = False
    while True:
        while True:
            try:
                msg = inbox.get(timeout=0.5) if not active and not waiting and not stopping else inbox.get_nowait()
            except _queue.Empty:
                break
            if msg[0] == "stop":
                stopping = True
            else:
                waiting.append(msg)
        while waiting and len(active) < max_batch:
            _, rid, tok, max_new, kv = waiting.pop(0)
            cache = DynamicCache()
            for i, (k, v) in enumerate(kv):
                cache.update(k.to(device).clone(), v.to(device).clone(), i)
            active[rid] = [tok, cache, [tok], max_new]
        if stopping and not active and not waiting:
            result_q.put(("stop",))
            return
        for rid in list(active):
            st = active[rid]
            if len(st[2]) < st[3]:
                st[0], st[1] = model.decode_step(st[0], st[1])
                st[2].append(st[0])
            if len(st[2]) >= st[3]:
                _sync(torch.device(device))
                result_q.put(("done", rid, st[2], time.monotonic()))
                del active[rid]


class EPDServer:
    """Encode / prefill / decode worker processes around one :class:`TinyVLM`.

    Args:
        model: the VLM (its weights are shared with the workers).
        tile: tile size of the images.
        num_encoders: encode workers (a request's tiles are spread over them).
        block_size: tokens per multimodal-cache block.
        num_blocks: blocks in each encode worker's pool.
        max_decode_batch: requests the decode worker keeps active.
        devices: ``{"encode": [...], "prefill": ..., "decode": ...}`` device strings (default all ``cpu``).
        start_method: ``spawn`` (needed for CUDA workers) or ``fork`` (CPU only: workers start without re-importing).
    """

    def __init__(self, model: TinyVLM, tile: int, num_encoders: int = 2, block_size: int = 16, num_blocks: int = 256,
                 max_decode_batch: int = 8, devices: dict | None = None,
                 start_method: str = "spawn") -> None:
        import torch.multiprocessing as mp

        self.tile, self.num_encoders = tile, num_encoders
        dev = devices or {}
        enc_dev = dev.get("encode", ["cpu"] * num_encoders)
        ctx = mp.get_context(start_method)
        model = model.cpu().eval()
        for p in model.parameters():
            p.requires_grad_(False)
        model.share_memory()
        hidden = model.decoder.config.hidden_size
        dtype = model.projector.weight.dtype
        self.pools = [torch.zeros(num_blocks, block_size, hidden, dtype=dtype, device=enc_dev[i])
                      for i in range(num_encoders)]
        for p in self.pools:
            if p.device.type == "cpu":
                p.share_memory_()
        self.enc_q = [ctx.Queue() for _ in range(num_encoders)]
        self.prefill_q, self.decode_q, self.result_q = ctx.Queue(), ctx.Queue(), ctx.Queue()
        self.procs = [ctx.Process(target=_encode_worker, args=(model, self.pools[i], self.enc_q[i], self.prefill_q,
                                                                enc_dev[i]), daemon=True) for i in range(num_encoders)]
        self.procs.append(ctx.Process(target=_prefill_worker, args=(model, self.pools, self.prefill_q, self.enc_q,
                                                                    self.decode_q, self.result_q,
                                                                    dev.get("prefill", "cpu")), daemon=True))
        self.procs.append(ctx.Process(target=_decode_worker, args=(model, self.decode_q, self.result_q,
                                                                   dev.get("decode", "cpu"), max_decode_batch),
                                      daemon=True))
        for p in self.procs:
            p.start()
        self._next_enc = 0

    def submit(self, r: Request) -> None:
        """Send a request into the pipeline (header to prefill, tiles dealt round-robin to the encoders)."""
        tiles = tile_image(r.image, self.tile)
        self.prefill_q.put(("req", r.rid, r.prompt, tiles.shape[0], r.max_new_tokens))
        for i, t in enumerate(tiles):
            e = self._next_enc
            self._next_enc = (e + 1) % self.num_encoders
            self.enc_q[e].put(("tile", r.rid, i, t.clone(), e))

    def run(self, requests: Sequence[Request], realtime: bool = False, timeout: float = 600.0) -> list[Result]:
        """Serve a request stream (arrival offsets honoured when ``realtime``); returns results by request order."""
        start = time.monotonic()
        res = {r.rid: Result(r.rid) for r in requests}
        for r in sorted(requests, key=lambda r: r.arrival):
            if realtime:
                time.sleep(max(0.0, start + r.arrival - time.monotonic()))
            res[r.rid].arrival = time.monotonic()
            self.submit(r)
        left = len(requests)
        while left:
            msg = self.result_q.get(timeout=timeout)
            if msg[0] == "first":
                res[msg[1]].first_token = msg[3]
            elif msg[0] == "done":
                res[msg[1]].tokens, res[msg[1]].done = list(msg[2]), msg[3]
                left -= 1
        return [res[r.rid] for r in requests]

    def close(self) -> None:
        """Stop the workers (by id; each joins)."""
        for q in self.enc_q:
            q.put(("stop",))
        self.prefill_q.put(("stop",))
        for p in self.procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()

    def __enter__(self) -> EPDServer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
