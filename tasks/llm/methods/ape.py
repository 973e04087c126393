"""APE — Adaptive Parallel Encoding (Yang, Chen, Chen, ICLR 2025) on the shared-prefix primitive.

Spec steps (``shared/papers/llm/ape.md``):

1. the shared prefix ``P`` is encoded once, causally, positions ``0..L_p-1`` (:meth:`APE.encode_prefix`);
2. the contexts ``C_1..C_m`` are encoded in parallel as one batch, each attending to the cached prefix and causally
   to itself, all at positions ``L_p..L_p+|C_i|-1`` (position reuse); their K/V (padding dropped) can be cached and
   reloaded (:meth:`APE.encode_contexts`, :class:`ContextKV`);
3. query tokens start at position ``L_p + max_i |C_i|``;
4. query (and generated) tokens attend to the concatenated context K/V with temperature ``T`` (non-causal), and to
   prefix + own tokens normally; the parts are merged by log-sum-exp with the context part's LSE multiplied by
   ``S * T`` (scaling factor ``S``). ``T = S = 1`` with one context is exactly sequential encoding (tested).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.llm.prefix.hf import enable_prefix_attention, lm_logits
from zoo.llm.prefix.segments import KVSegment, SegmentAttention, run_segment_forward


@dataclass
class ContextKV:
    """One encoded context: per-layer K/V ``[1, Hkv, |C|, d]`` (post-RoPE, positions ``L_p..L_p+|C|-1``)."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    prefix_len: int

    @property
    def length(self) -> int:
        return self.keys[0].shape[2]

    def state_dict(self) -> dict:
        return {"keys": self.keys, "values": self.values, "prefix_len": self.prefix_len}

    @classmethod
    def from_state_dict(cls, d: dict) -> ContextKV:
        return cls(list(d["keys"]), list(d["values"]), int(d["prefix_len"]))


class APE:
    """Adaptive parallel encoding for an HF causal LM (Llama, Qwen2, Mistral, ...).

    Args:
        model: the causal LM (switched to the ``sharezoo_prefix`` attention; ordinary calls are unchanged).
        temperature: attention temperature ``T`` on the context keys (paper demo default 0.9).
        scale: scaling factor ``S`` of the context block's attention mass (paper demo default 0.9).
        backend: kernel of the query-time attention: ``flex`` (one fused FlexAttention call per segment returning its
            log-sum-exp, ``T`` and soft-cap as score modifiers; compiled on CUDA), ``eager`` (materialised scores) or
            ``auto`` (``flex`` on CUDA, else ``eager``). The segments are merged by log-sum-exp either way (``S``
            weights the context block's LSE: no single-call score modifier expresses it unless ``S * T = 1``).
        cuda_graphs: :meth:`query_logits` and :meth:`generate` run with fixed shapes (the query's own K/V in a
            fixed-size buffer, its length a device tensor; :mod:`tasks.llm.methods.ape_graphs`), the prefill and the
            decode step each captured once per shape as a CUDA graph and replayed (on CUDA; elsewhere the same
            static-buffer code runs eagerly). Same tokens as the eager path; ``backend`` is not used then.
    """

    def __init__(self, model: nn.Module, temperature: float = 0.9, scale: float = 0.9, backend: str = "auto",
                 cuda_graphs: bool = False) -> None:
        self.model = enable_prefix_attention(model)
        self.temperature = temperature
        self.scale = scale
        self.backend = backend
        self.cuda_graphs = cuda_graphs
        self._static: dict[tuple, object] = {}  # static decoders (and their graphs) per (prefix, contexts, shape)

    def static_decoder(self, prefix: KVSegment, contexts: list[ContextKV], query_len: int, max_new_tokens: int = 1):
        """The fixed-shape decoder of this (prefix, contexts, |Q|, max_new_tokens), built (and captured) once and kept
        (the last four; it holds the concatenated context K/V and, on CUDA, its graphs)."""
        from .ape_graphs import APEStaticDecoder

        key = (id(prefix), tuple(id(c) for c in contexts), query_len, max_new_tokens)
        if key not in self._static:
            if len(self._static) >= 4:
                self._static.pop(next(iter(self._static)))
            self._static[key] = (APEStaticDecoder(self, prefix, contexts, query_len, max_new_tokens),
                                 prefix, contexts)  # the segments stay alive while their ids are keys
        return self._static[key][0]

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def encode_prefix(self, prefix_ids: torch.Tensor) -> KVSegment:
        """Step 1: the shared prefix ``[L_p]`` (may be empty: naive parallel encoding) -> a cached segment."""
        if prefix_ids.numel() == 0:
            return KVSegment()
        spec = SegmentAttention()
        pos = torch.arange(prefix_ids.numel(), device=self.device)[None]
        run_segment_forward(self.model, spec, prefix_ids[None], pos)
        return spec.as_segment()

    @torch.no_grad()
    def encode_contexts(self, contexts: list[torch.Tensor], prefix: KVSegment) -> list[ContextKV]:
        """Step 2: all contexts in one batch (right-padded), each after the cached prefix, positions reused."""
        lp = prefix.length
        m, lc = len(contexts), max(c.numel() for c in contexts)
        ids = torch.zeros(m, lc, dtype=torch.long, device=self.device)
        valid = torch.zeros(m, lc, dtype=torch.bool, device=self.device)
        for i, c in enumerate(contexts):
            ids[i, : c.numel()] = c
            valid[i, : c.numel()] = True
        pos = lp + torch.arange(lc, device=self.device)[None].expand(m, -1)
        spec = SegmentAttention([prefix] if lp else [])
        run_segment_forward(self.model, spec, ids, pos, valid)
        n_layers = len(spec.own_keys)
        return [
            ContextKV(
                [spec.own_keys[li][i : i + 1, :, : c.numel()] for li in range(n_layers)],
                [spec.own_values[li][i : i + 1, :, : c.numel()] for li in range(n_layers)],
                lp,
            )
            for i, c in enumerate(contexts)
        ]

    def context_segment(self, contexts: list[ContextKV]) -> KVSegment:
        """The cached contexts concatenated (padding already dropped) as one segment with APE's ``T`` and ``S*T``."""
        n_layers = len(contexts[0].keys)
        keys = [torch.cat([c.keys[li] for c in contexts], dim=2) for li in range(n_layers)]
        values = [torch.cat([c.values[li] for c in contexts], dim=2) for li in range(n_layers)]
        return KVSegment(keys, values, None, self.temperature, self.scale * self.temperature)

    def query_start(self, prefix: KVSegment, contexts: list[ContextKV]) -> int:
        """Step 3: the first query position, ``L_p + max_i |C_i|``."""
        return prefix.length + max(c.length for c in contexts)

    def _query_spec(self, prefix: KVSegment, contexts: list[ContextKV]) -> SegmentAttention:
        segs = [self.context_segment(contexts)] + ([prefix] if prefix.length else [])
        return SegmentAttention(segs, merge=True, backend=self.backend)  # step 4: the LSE combine

    @torch.no_grad()
    def query_logits(self, query_ids: torch.Tensor, prefix: KVSegment, contexts: list[ContextKV]) -> torch.Tensor:
        """Step 4: logits ``[Q, V]`` of the query tokens (each predicting the next token)."""
        if self.cuda_graphs:
            return self.static_decoder(prefix, contexts, query_ids.numel()).query_logits(query_ids)
        spec = self._query_spec(prefix, contexts)
        start = self.query_start(prefix, contexts)
        pos = start + torch.arange(query_ids.numel(), device=self.device)[None]
        hidden = run_segment_forward(self.model, spec, query_ids[None], pos)
        return lm_logits(self.model, hidden)[0]

    @torch.no_grad()
    def generate(
        self,
        query_ids: torch.Tensor,
        prefix: KVSegment,
        contexts: list[ContextKV],
        max_new_tokens: int = 32,
        eos_id: int | None = None,
    ) -> torch.Tensor:
        """Greedy answer to ``query_ids`` over the cached prefix and contexts (own tokens KV-cached in the spec)."""
        if self.cuda_graphs:
            return self.static_decoder(prefix, contexts, query_ids.numel(), max_new_tokens).generate(query_ids, eos_id)
        spec = self._query_spec(prefix, contexts)
        pos = self.query_start(prefix, contexts) + torch.arange(query_ids.numel(), device=self.device)
        hidden = run_segment_forward(self.model, spec, query_ids[None], pos[None])
        out = []
        nxt_pos = int(pos[-1]) + 1
        for _ in range(max_new_tokens):
            tok = lm_logits(self.model, hidden[:, -1]).argmax(-1)
            out.append(int(tok))
            if eos_id is not None and out[-1] == eos_id:
                break
            hidden = run_segment_forward(self.model, spec, tok[None], torch.tensor([[nxt_pos]], device=self.device))
            nxt_pos += 1
        return torch.tensor(out, dtype=torch.long)


def sequential_logits(model: nn.Module, prefix: torch.Tensor, contexts: list[torch.Tensor], query: torch.Tensor):
    """The baseline: one causal forward over ``[P ; C_1 ; ... ; C_m ; Q]``; logits ``[Q, V]`` of the query tokens."""
    ids = torch.cat([prefix, *contexts, query])[None]
    return model(input_ids=ids, use_cache=False).logits[0, -query.numel() :]
