"""APE's query prefill and greedy decode with fixed shapes: static buffers, then (on CUDA) one CUDA graph per shape.

The eager :meth:`APE.generate <tasks.llm.methods.ape.APE.generate>` grows the query's own K/V by concatenation and
launches thousands of small kernels per token (per layer: three partial attentions and a log-sum-exp merge). Here

- the query's own K/V live in a fixed-size buffer per layer (``capacity = |Q| + max_new_tokens``), written in place
  at ``length`` — a 0-d tensor on the device, so no step reads anything back to the host;
- the own-key mask is ``key index <= length + i`` (the unused tail of the buffer is masked out, which leaves the
  softmax and its log-sum-exp unchanged);
- the read-only segments (the contexts with APE's ``T`` and ``S * T``, and the prefix) are attended with grouped
  queries (``[1, Hkv, rep * T, d]``: the keys are read in place, never repeated per head) and merged by log-sum-exp
  exactly as the eager path merges them;
- the prefill forward (fixed ``|Q|``) and one decode step (one token; argmax, position and length advanced on the
  device) are each captured once as a CUDA graph and replayed (``cuda_graphs=True`` on CUDA; elsewhere the same
  static-buffer code runs eagerly, which is what the CPU tests compare with the eager path token for token).

Greedy tokens are produced for all ``max_new_tokens`` steps without host synchronisation and cut after the first
``eos_id`` afterwards (the eager path stops there; the returned tokens are the same).
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from zoo.layers import CapturedCall
from zoo.llm.prefix import attention_with_lse, lm_logits, merge_partials, run_with_spec
from zoo.llm.prefix.segments import KVSegment


def grouped_attention_with_lse(q, k, v, mask, scale, temperature: float = 1.0, softcap: float | None = None):
    """:func:`attention_with_lse` for GQA without repeating the keys: queries ``[b, H, T, d]`` regrouped as
    ``[b, Hkv, rep * T, d]``; ``mask`` broadcastable to ``[T, Tk]`` (or None). Returns ``([b, H, T, d], [b, H, T])``."""
    b, h, t, d = q.shape
    hkv, tk = k.shape[1], k.shape[2]
    rep = h // hkv
    qg = q.reshape(b, hkv, rep * t, d)
    mg = None if mask is None else mask.expand(t, tk).repeat(rep, 1)
    o, lse = attention_with_lse(qg, k, v, mg, scale, temperature=temperature, softcap=softcap)
    return o.view(b, h, t, d), lse.view(b, h, t)


class StaticOwnAttention:
    """Attention spec with fixed shapes: shared read-only segments + the row's own K/V in a fixed-size buffer.

    Args:
        segments: shared segments (one entry, every key valid, no row index), attended in full.
        capacity: own tokens the buffer holds (query + generated).
        max_position: largest position index a call will use (the sliding-window check of the attention hook).
    """

    def __init__(self, segments: list[KVSegment], capacity: int, max_position: int) -> None:
        for seg in segments:
            padded = seg.valid is not None and not bool(seg.valid.all())
            if seg.entries != 1 or padded or seg.row_index is not None:
                raise ValueError("static APE attention takes shared segments without padding")
        self.segments = segments  # (a validity mask that is all True is not read)
        self.capacity = capacity
        self.max_position = max_position
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        self.length: torch.Tensor | None = None  # own tokens written so far (0-d long, on the device)
        self._key_index: torch.Tensor | None = None

    def reset(self, device: torch.device) -> None:
        """Start a new query: own length 0 (the buffers keep stale values; they are masked out)."""
        if self.length is None:
            self.length = torch.zeros((), dtype=torch.long, device=device)
            self._key_index = torch.arange(self.capacity, device=device)
        self.length.zero_()

    def __call__(self, module, q, k, v, scaling, softcap=None):
        li = module.layer_idx
        t_new = q.shape[2]
        if li not in self.keys:
            shape = (1, k.shape[1], self.capacity, k.shape[3])
            self.keys[li] = k.new_zeros(shape)
            self.values[li] = v.new_zeros(shape)
        at = self.length + self._key_index[:t_new]  # positions of the new tokens in the buffer
        self.keys[li].index_copy_(2, at, k)
        self.values[li].index_copy_(2, at, v)
        mask = self._key_index[None, :] <= at[:, None]  # [t_new, capacity]: causal, and the unused tail masked out
        outs, lses, weights = [], [], []
        for seg in self.segments:
            o, lse = grouped_attention_with_lse(q, seg.keys[li], seg.values[li], None, scaling, seg.temperature,
                                                softcap)
            outs.append(o)
            lses.append(lse)
            weights.append(seg.weight)
        o, lse = grouped_attention_with_lse(q, self.keys[li], self.values[li], mask, scaling, softcap=softcap)
        outs.append(o)
        lses.append(lse)
        weights.append(1.0)
        out, _ = merge_partials(outs, lses, weights if any(w != 1.0 for w in weights) else None)
        return out.transpose(1, 2).contiguous()


class APEStaticDecoder:
    """Query logits and greedy decoding over one fixed (prefix, contexts) pair with fixed shapes.

    Args:
        ape: the :class:`~tasks.llm.methods.ape.APE` instance (model, ``T``, ``S``).
        prefix: the cached prefix segment.
        contexts: the cached contexts (:class:`~tasks.llm.methods.ape.ContextKV`).
        query_len: query tokens ``|Q|`` (the prefill graph's shape).
        max_new_tokens: decode steps (the own-K/V buffer holds ``|Q| + max_new_tokens``).
        cuda_graphs: capture the prefill and the decode step as CUDA graphs on CUDA (elsewhere: eager, same code).
        warmup: eager calls (on a side stream) before each capture.
    """

    def __init__(self, ape, prefix: KVSegment, contexts: list, query_len: int, max_new_tokens: int,
                 cuda_graphs: bool = True, warmup: int = 2) -> None:
        self.model = ape.model
        self.device = ape.device
        self.query_len, self.max_new_tokens = query_len, max_new_tokens
        segs = [ape.context_segment(contexts)] + ([prefix] if prefix.length else [])
        self.start = ape.query_start(prefix, contexts)
        capacity = query_len + max_new_tokens
        self.spec = StaticOwnAttention(segs, capacity, self.start + capacity)
        dev = self.device
        self.query_ids = torch.zeros(1, query_len, dtype=torch.long, device=dev)
        self.query_pos = (self.start + torch.arange(query_len, device=dev))[None]
        self.token = torch.zeros(1, 1, dtype=torch.long, device=dev)  # the token the next decode step reads
        self.position = torch.zeros(1, 1, dtype=torch.long, device=dev)  # its position
        self.tokens = torch.zeros(max(max_new_tokens, 1), dtype=torch.long, device=dev)  # greedy output
        self.step = torch.zeros(1, dtype=torch.long, device=dev)  # index in ``tokens`` of the next token
        self.graphed = cuda_graphs and dev.type == "cuda"
        self._warmup = warmup
        self._prefill: Callable | None = None
        self._decode: Callable | None = None
        self.spec.reset(dev)

    def _forward(self, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return run_with_spec(self.model, self.spec, pos, input_ids=ids)

    def _prefill_eager(self) -> torch.Tensor:
        hidden = self._forward(self.query_ids, self.query_pos)
        logits = lm_logits(self.model, hidden)[0]  # [Q, V]
        nxt = logits[-1:].argmax(-1)
        self.spec.length += self.query_len
        self.position.copy_(self.query_pos[:, -1:] + 1)
        self.token.copy_(nxt[None])
        self.tokens[:1].copy_(nxt)
        self.step.fill_(1)
        return logits

    def _decode_eager(self) -> None:
        hidden = self._forward(self.token, self.position)
        nxt = lm_logits(self.model, hidden[:, -1]).argmax(-1)  # [1]
        self.spec.length += 1
        self.position += 1
        self.token.copy_(nxt[None])
        self.tokens.index_copy_(0, self.step.clamp(max=self.tokens.numel() - 1), nxt)
        self.step += 1

    def _reset(self) -> None:
        self.spec.reset(self.device)

    def prefill(self, query_ids: torch.Tensor) -> torch.Tensor:
        """Run the query ``[|Q|]``; returns its logits ``[|Q|, V]`` (a view of a static buffer when graphed)."""
        if query_ids.numel() != self.query_len:
            raise ValueError(f"this decoder was built for {self.query_len} query tokens, got {query_ids.numel()}")
        self.query_ids.copy_(query_ids.view(1, -1))
        if self.graphed and self._prefill is None:
            self._prefill = CapturedCall(self._prefill_eager, self.device, self._warmup, reset=self._reset)
        self._reset()
        return self._prefill() if self.graphed else self._prefill_eager()

    @torch.no_grad()
    def query_logits(self, query_ids: torch.Tensor) -> torch.Tensor:
        """Logits ``[|Q|, V]`` of the query tokens (a copy)."""
        return self.prefill(query_ids).clone()

    @torch.no_grad()
    def generate(self, query_ids: torch.Tensor, eos_id: int | None = None) -> torch.Tensor:
        """Greedy answer (``max_new_tokens`` tokens, cut after the first ``eos_id``), on the CPU as ``APE.generate``."""
        self.prefill(query_ids)
        if self.graphed and self._decode is None and self.max_new_tokens > 1:
            saved = (self.spec.length.clone(), self.position.clone(), self.token.clone(), self.tokens.clone(),
                     self.step.clone())

            def reset():  # warm-up steps advance the state: restore it after the prefill
                for dst, src in zip((self.spec.length, self.position, self.token, self.tokens, self.step), saved):
                    dst.copy_(src)

            self._decode = CapturedCall(self._decode_eager, self.device, self._warmup, reset=reset)
            reset()
        step = self._decode if self.graphed else self._decode_eager
        for _ in range(self.max_new_tokens - 1):
            step()
        out = self.tokens[: self.max_new_tokens].cpu()
        if eos_id is not None:
            hit = (out == eos_id).nonzero()
            if hit.numel():
                out = out[: int(hit[0]) + 1]
        return out
