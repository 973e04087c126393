"""The BatchLLM engine: runs the plan of :mod:`tasks.llm.methods.batchllm` on a Hugging Face causal LM.

Each group's shared prefix is prefilled once; every request attends to ``[shared prefix K/V ; own K/V]`` through
:class:`zoo.llm.prefix.segments.SegmentAttention` (LSE merge, the prefix K/V read in place); greedy decoding; finished
requests leave the running batch before the next forward. Greedy outputs equal generating each prompt alone (tested).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from tasks.llm.methods.batchllm import PrefixGroup, plan_prefix_groups, plan_saving, schedule
from zoo.llm.prefix import enable_prefix_attention, lm_logits
from zoo.llm.prefix.segments import SegmentAttention, run_segment_forward


class BatchLLMEngine:
    """Offline greedy batch generation with global prefix sharing on an HF causal LM.

    Args:
        model: the causal LM (switched to the ``sharezoo_prefix`` attention; ordinary calls unchanged).
        kv_budget_tokens: K/V tokens (per layer) a batch may store, see :func:`batch_kv_tokens` (memory-centric
            batching; ``stats['measured_peak_kv_tokens']`` reports what the attention actually held).
        eos_id: stop token (None: always ``max_new_tokens``).
        lse_merge: request attention as two partials (prefix KV, own KV) merged by log-sum-exp; False: one SDPA call
            over the concatenated keys. Both exact.
    """

    def __init__(self, model: nn.Module, kv_budget_tokens: int = 1 << 16, eos_id: int | None = None,
                 lse_merge: bool = True) -> None:
        self.model = enable_prefix_attention(model)
        self.lse_merge = lse_merge
        self.kv_budget_tokens = kv_budget_tokens
        self.eos_id = eos_id
        self.stats: dict[str, int] = {}

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def generate(self, prompts: Sequence[torch.Tensor], max_new_tokens: int | Sequence[int] = 32) -> list[torch.Tensor]:
        """Greedy completions (without the prompt) for every prompt, in input order."""
        n = len(prompts)
        mnt = [max_new_tokens] * n if isinstance(max_new_tokens, int) else list(max_new_tokens)
        groups = plan_prefix_groups(prompts)
        batches = schedule(prompts, groups, mnt, self.kv_budget_tokens, self.lse_merge)
        run_groups = [g for b in batches for g in b.groups]  # after any split of groups over the budget
        self.stats = {
            "prompt_tokens": sum(p.numel() for p in prompts),
            "prefill_tokens": sum(p.numel() for p in prompts) - plan_saving(run_groups),
            "groups": len(run_groups),
            "batches": len(batches),
            "max_batch_kv_tokens": max(b.kv_tokens for b in batches),
            "measured_peak_kv_tokens": 0,
        }
        self.batch_peak_kv_tokens: list[int] = []
        out: list[torch.Tensor | None] = [None] * n
        for b in batches:
            for i, toks in self._run_batch(prompts, b.groups, mnt).items():
                out[i] = toks
        self.stats["measured_peak_kv_tokens"] = max(self.batch_peak_kv_tokens)
        return out  # type: ignore[return-value]

    def _run_batch(self, prompts, groups: list[PrefixGroup], mnt) -> dict[int, torch.Tensor]:
        dev = self.device
        model = self.model
        # (3) every group's shared prefix, prefilled once (right-padded batch of prefixes, causal)
        p_lens = [g.prefix_len for g in groups]
        segments = []
        peak = 0
        if max(p_lens) > 0:
            ids = torch.zeros(len(groups), max(p_lens), dtype=torch.long, device=dev)
            valid = torch.zeros_like(ids, dtype=torch.bool)
            for gi, g in enumerate(groups):
                ids[gi, : g.prefix_len] = prompts[g.members[0]][: g.prefix_len].to(dev)
                valid[gi, : g.prefix_len] = True
            pre = SegmentAttention()
            pos = torch.arange(ids.shape[1], device=dev)[None].expand_as(ids)
            run_segment_forward(model, pre, ids, pos, valid)
            prefix_seg = pre.as_segment()
            peak = pre.peak_kv_tokens
        rows = [(gi, i) for gi, g in enumerate(groups) for i in g.members]
        row_group = torch.tensor([gi for gi, _ in rows], device=dev)
        if max(p_lens) > 0:
            segments = [prefix_seg.select(row_group)]
        # (6) every request's suffix after its group's prefix: [prefix KV ; own KV] merged by LSE
        suffixes = [prompts[i][p_lens[gi] :].to(dev) for gi, i in rows]
        s_max = max(s.numel() for s in suffixes)
        ids = torch.zeros(len(rows), s_max, dtype=torch.long, device=dev)
        valid = torch.zeros_like(ids, dtype=torch.bool)
        for r, s in enumerate(suffixes):
            ids[r, : s.numel()] = s
            valid[r, : s.numel()] = True
        start = torch.tensor([p_lens[gi] for gi, _ in rows], device=dev)
        pos = start[:, None] + torch.arange(s_max, device=dev)[None]
        spec = SegmentAttention(segments, merge=self.lse_merge)
        hidden = run_segment_forward(model, spec, ids, pos, valid)
        s_len = valid.sum(1)
        last = hidden[torch.arange(len(rows), device=dev), s_len - 1]
        next_pos = start + s_len
        limits = torch.tensor([mnt[i] for _, i in rows], device=dev)
        alive = torch.arange(len(rows), device=dev)  # batch rows still decoding
        gen = torch.full((len(rows), max(1, int(limits.max()))), -1, dtype=torch.long, device=dev)
        for step in range(int(limits.max())):
            tok = lm_logits(model, last).argmax(-1)
            gen[alive, step] = tok
            done = limits[alive] <= step + 1
            if self.eos_id is not None:
                done |= tok == self.eos_id
            if bool(done.all()):
                break
            if bool(done.any()):  # finished rows leave: own K/V dropped, a group's prefix freed with its last row
                keep = ~done
                spec.keep_rows(keep)
                alive, tok, next_pos = alive[keep], tok[keep], next_pos[keep]
            hidden = run_segment_forward(model, spec, tok[:, None], next_pos[:, None])
            last = hidden[:, -1]
            next_pos = next_pos + 1
        self.batch_peak_kv_tokens.append(max(peak, spec.peak_kv_tokens))
        gen = gen.cpu()
        return {i: gen[r][gen[r] >= 0] for r, (_, i) in enumerate(rows)}
