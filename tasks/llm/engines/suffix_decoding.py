"""SuffixDecoding engine: greedy speculative decoding with suffix-tree drafts, verified as a tree in one forward.

Spec: ``shared/papers/llm/suffixdecoding.md`` ("Algorithm" step 5-6). Each step the drafter
(:class:`tasks.llm.methods.suffix_decoding.SuffixDecodingCache`) proposes a speculation tree; the target model scores
the pending token and every draft node in ONE forward, each node attending to the cached sequence and its own
ancestors only (a 4-D attention mask, position ids = sequence length + tree depth). Greedy verification accepts the
longest root path whose every token equals the model's argmax at its parent, then appends the bonus token (the argmax
after the last accepted node). The KV entries of the accepted path are kept, those of rejected branches dropped, so
the next step feeds only the bonus token. The output is the plain greedy decode of the same model (test), up to float
rounding in exact argmax ties (the tree forward reduces over the same keys in another order).

Batch size 1 (the paper's latency setting); sampling (rejection sampling) is not implemented.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from tasks.llm.engines.generation import cache_kwarg, output_cache
from tasks.llm.methods.suffix_decoding import SuffixConfig, SuffixDecodingCache
from zoo.llm.suffix_tree import SuffixDraft

__all__ = ["DecodeStats", "SuffixDecodingEngine", "greedy_decode", "tree_attention_mask"]


@dataclass
class DecodeStats:
    """Counters of one or more decodes.

    Attributes:
        tokens: generated tokens.
        forwards: target-model forwards after the prefill (one per step).
        drafted: drafted tokens verified.
        accepted: drafted tokens accepted.
        seconds: wall time (prefill included).
        draft_seconds: time spent in the drafter (lookup + tree updates).
    """

    tokens: int = 0
    forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    draft_seconds: float = 0.0
    per_step_accepted: list[int] = field(default_factory=list)

    def __iadd__(self, other: DecodeStats) -> DecodeStats:
        for k in ("tokens", "forwards", "drafted", "accepted", "seconds", "draft_seconds"):
            setattr(self, k, getattr(self, k) + getattr(other, k))
        self.per_step_accepted += other.per_step_accepted
        return self

    @property
    def tokens_per_forward(self) -> float:
        """Mean tokens produced per decoding forward (the acceptance length incl. the bonus token)."""
        return self.tokens / max(self.forwards, 1)

    def as_dict(self) -> dict[str, float]:
        return dict(tokens=self.tokens, forwards=self.forwards, drafted=self.drafted, accepted=self.accepted,
                    seconds=round(self.seconds, 4), draft_seconds=round(self.draft_seconds, 4),
                    tokens_per_forward=round(self.tokens_per_forward, 3),
                    acceptance_rate=round(self.accepted / max(self.drafted, 1), 3))


def tree_attention_mask(parents: Sequence[int], past: int, dtype: torch.dtype, device: torch.device):
    """Additive 4-D mask ``[1, 1, 1 + n, past + 1 + n]`` and position offsets for a root + ``n``-node tree.

    Row 0 is the root (the pending token), row ``i + 1`` draft node ``i``; every row sees the ``past`` cached tokens,
    itself and its ancestors. Returns ``(mask, depth)`` with ``depth[j]`` the tree depth of row ``j`` (root 0).
    """
    n = len(parents) + 1
    allow = torch.zeros(n, n, dtype=torch.bool)
    depth = [0] * n
    allow[0, 0] = True
    for i, p in enumerate(parents):
        j, pj = i + 1, p + 1
        allow[j] = allow[pj]
        allow[j, j] = True
        depth[j] = depth[pj] + 1
    full = torch.cat([torch.ones(n, past, dtype=torch.bool), allow], dim=1)
    mask = torch.zeros(full.shape, dtype=dtype).masked_fill(~full, torch.finfo(dtype).min)
    return mask[None, None].to(device), torch.tensor(depth, device=device)


def _keep_kv(cache, past: int, keep: torch.Tensor) -> None:
    """Keep the first ``past`` cached positions plus the new positions ``past + keep`` (in this order)."""
    idx = torch.cat([torch.arange(past, device=keep.device), past + keep])
    layers = getattr(cache, "layers", None)
    if layers is not None:
        for layer in layers:
            layer.keys = layer.keys.index_select(-2, idx)
            layer.values = layer.values.index_select(-2, idx)
    else:  # transformers < 4.56: key_cache / value_cache lists
        for i in range(len(cache.key_cache)):
            cache.key_cache[i] = cache.key_cache[i].index_select(-2, idx)
            cache.value_cache[i] = cache.value_cache[i].index_select(-2, idx)


def _truncate(tokens: list[int], room: int, eos_id: int | None) -> tuple[list[int], bool]:
    """``tokens`` cut at the length budget ``room`` and after the first EOS; also whether decoding is done."""
    done = False
    if eos_id is not None and eos_id in tokens:
        tokens, done = tokens[:tokens.index(eos_id) + 1], True
    if len(tokens) >= room:
        tokens, done = tokens[:room], True
    return tokens, done


@torch.no_grad()
def greedy_decode(model: nn.Module, prompt: torch.Tensor, max_new_tokens: int, eos_id: int | None = None,
                  stats: DecodeStats | None = None) -> torch.Tensor:
    """Plain KV-cached greedy decoding, one forward per token (the baseline and the reference output).

    Args:
        model: an HF causal LM.
        prompt: LongTensor ``[P]``.
        max_new_tokens: length cap.
        eos_id: stop after this token (None: never).
        stats: counters to update.
    """
    t0 = time.perf_counter()
    ckw = cache_kwarg(model)
    out = model(input_ids=prompt[None], use_cache=True)
    cache, nxt = output_cache(out), int(out.logits[0, -1].argmax())
    toks = [nxt]
    forwards = 0
    while len(toks) < max_new_tokens and nxt != eos_id:
        out = model(input_ids=torch.tensor([[nxt]], device=prompt.device), use_cache=True, **{ckw: cache})
        cache, nxt = output_cache(out), int(out.logits[0, -1].argmax())
        toks.append(nxt)
        forwards += 1
    if stats is not None:
        stats += DecodeStats(tokens=len(toks), forwards=forwards, seconds=time.perf_counter() - t0)
    return torch.tensor(toks, dtype=torch.long, device=prompt.device)


class SuffixDecodingEngine:
    """Greedy SuffixDecoding over a stream of requests (the global tree persists across :meth:`generate` calls).

    Args:
        model: an HF causal LM built by ``zoo.llm.build_causal_lm`` (full-attention layers; DynamicCache).
        config: the drafter's knobs (:class:`SuffixConfig`).
        eos_id: end-of-sequence id (None: always ``max_new_tokens`` tokens).
    """

    def __init__(self, model: nn.Module, config: SuffixConfig | None = None, eos_id: int | None = None) -> None:
        self.model = model.eval()
        self.drafter = SuffixDecodingCache(config)
        self.eos_id = eos_id
        self.stats = DecodeStats()
        self._ckw = cache_kwarg(model)
        self._n = 0

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
        """Greedy continuation of ``prompt`` (LongTensor ``[P]``): LongTensor ``[S]``, ``S <= max_new_tokens``."""
        t0, st = time.perf_counter(), DecodeStats()
        model, dev, req = self.model, prompt.device, self._n
        self._n += 1
        p_list = prompt.tolist()
        out = model(input_ids=prompt[None], use_cache=True)
        cache, pending = output_cache(out), int(out.logits[0, -1].argmax())
        toks = [pending]
        td = time.perf_counter()
        self.drafter.start_request(req, p_list)
        self.drafter.add_tokens(req, toks)
        st.draft_seconds += time.perf_counter() - td
        done = len(toks) >= max_new_tokens or pending == self.eos_id
        while not done:
            past = len(p_list) + len(toks) - 1
            td = time.perf_counter()
            draft: SuffixDraft = self.drafter.speculate(req, p_list + toks)
            st.draft_seconds += time.perf_counter() - td
            room = max_new_tokens - len(toks)
            ids = torch.tensor([[pending, *draft.token_ids]], device=dev)
            mask, depth = tree_attention_mask(draft.parents, past, model.dtype, dev)
            out = model(input_ids=ids, attention_mask=mask, position_ids=(past + depth)[None], use_cache=True,
                        **{self._ckw: cache})
            cache, best = output_cache(out), out.logits[0].argmax(-1).tolist()
            children: dict[int, dict[int, int]] = {}
            for i, (t, p) in enumerate(zip(draft.token_ids, draft.parents)):
                children.setdefault(p + 1, {}).setdefault(t, i + 1)
            row, path = 0, []
            while best[row] in children.get(row, {}):
                row = children[row][best[row]]
                path.append(row)
            new = [int(ids[0, r]) for r in path] + [best[row]]
            _keep_kv(cache, past, torch.tensor([0, *path], device=dev))
            new, done = _truncate(new, room, self.eos_id)
            toks += new
            pending = new[-1]
            st.forwards += 1
            st.drafted += len(draft)
            st.accepted += len(path)
            st.per_step_accepted.append(len(path))
            td = time.perf_counter()
            self.drafter.add_tokens(req, new)
            st.draft_seconds += time.perf_counter() - td
        td = time.perf_counter()
        self.drafter.stop_request(req)
        st.draft_seconds += time.perf_counter() - td
        st.tokens = len(toks)
        st.seconds = time.perf_counter() - t0
        self.stats += st
        self.last_stats = st
        return torch.tensor(toks, dtype=torch.long, device=dev)
