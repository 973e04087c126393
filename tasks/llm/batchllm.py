"""BatchLLM-style offline batch generation: global prefix sharing + decode-heavy-first, memory-centric batching.

Spec (``shared/papers/llm/batchllm.md``), steps as implemented here:

1. a compact prefix (radix) tree over all prompts of the batch (:func:`build_prefix_tree`; every prompt's last token is
   kept out of the tree so each request has a non-empty suffix);
2. flattened to one level of shared prefixes by a dynamic programme (:func:`plan_prefix_groups`): at each node keep
   the sharing there (saving ``(leaves - 1) * depth``) or the children's best plan, whose left-over single prompts
   may still share this node;
3. a group's prefix is prefilled once, its K/V lives only while the group's batch runs;
4. groups (and requests inside a group) are ordered by expected decode length / prompt length, decode-heavy first;
5. groups are packed into batches while the projected KV tokens stay under ``kv_budget_tokens`` (memory-centric);
6. attention of every request over ``[shared prefix KV ; own KV]`` is the LSE merge of two partial attentions
   (:class:`tasks.llm.prefix.segments.SegmentAttention`), the prefix K/V read per request row.

Greedy outputs equal generating each prompt alone (tested). Not implemented: chunked prefill mixed with decode tokens
inside one iteration, and a fused GPU kernel (this engine runs on HF modules with PyTorch ops).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from tasks.llm.prefix.hf import enable_prefix_attention, lm_logits
from tasks.llm.prefix.segments import SegmentAttention, run_segment_forward


# ------------------------------------------------------------------------------------------------ prefix tree
@dataclass
class TreeNode:
    """A radix-tree node: ``depth`` tokens from the root; ``ids`` prompts ending here; ``children``."""

    depth: int
    ids: list[int] = field(default_factory=list)
    children: list[TreeNode] = field(default_factory=list)

    def leaves(self) -> list[int]:
        out = list(self.ids)
        for c in self.children:
            out.extend(c.leaves())
        return out


def _lcp(a: torch.Tensor, b: torch.Tensor) -> int:
    n = min(a.numel(), b.numel())
    diff = (a[:n] != b[:n]).nonzero()
    return int(diff[0]) if diff.numel() else n


def build_prefix_tree(prompts: Sequence[torch.Tensor]) -> TreeNode:
    """Compacted prefix tree of ``prompt[:-1]`` for every prompt (sorted + LCP stack construction)."""
    keys = [p[:-1].cpu() for p in prompts]
    order = sorted(range(len(keys)), key=lambda i: keys[i].tolist())
    root = TreeNode(0)
    stack = [root]
    prev = None
    for i in order:
        s = keys[i]
        l_common = 0 if prev is None else _lcp(prev, s)
        popped = None
        while stack[-1].depth > l_common:
            popped = stack.pop()
        if stack[-1].depth < l_common:  # split the edge to ``popped`` at depth l_common
            node = TreeNode(l_common)
            parent = stack[-1]
            parent.children.remove(popped)
            parent.children.append(node)
            node.children.append(popped)
            stack.append(node)
        if s.numel() == stack[-1].depth:
            stack[-1].ids.append(i)
        else:
            leaf = TreeNode(s.numel(), [i])
            stack[-1].children.append(leaf)
            stack.append(leaf)
        prev = s
    return root


@dataclass
class PrefixGroup:
    """Requests ``members`` sharing their first ``prefix_len`` tokens."""

    prefix_len: int
    members: list[int]


def plan_prefix_groups(prompts: Sequence[torch.Tensor]) -> list[PrefixGroup]:
    """One level of shared prefixes maximising the saved prefill tokens (spec step 2).

    Every prompt is in exactly one group; a group of one has ``prefix_len = 0``.
    """

    def solve(node: TreeNode) -> tuple[int, list[PrefixGroup], list[int]]:
        # returns (saving, groups formed in the subtree, prompts left single and free to share higher up)
        saving, groups, free = 0, [], list(node.ids)
        for c in node.children:
            s, g, f = solve(c)
            saving, groups, free = saving + s, groups + g, free + f
        if len(free) >= 2 and node.depth > 0:  # left-overs share this node
            saving += (len(free) - 1) * node.depth
            groups, free = groups + [PrefixGroup(node.depth, free)], []
        everything = node.leaves()
        whole = (len(everything) - 1) * node.depth
        if node.depth > 0 and whole > saving:  # keeping the sharing at this node beats the children's plan
            return whole, [PrefixGroup(node.depth, everything)], []
        return saving, groups, free

    _, groups, free = solve(build_prefix_tree(prompts))
    return groups + [PrefixGroup(0, [i]) for i in free]


def plan_saving(groups: Sequence[PrefixGroup]) -> int:
    """Prefill tokens saved by a plan: ``sum_g (|g| - 1) * prefix_len_g``."""
    return sum((len(g.members) - 1) * g.prefix_len for g in groups)


# ------------------------------------------------------------------------------------------------ scheduling
@dataclass
class ScheduledBatch:
    groups: list[PrefixGroup]
    kv_tokens: int


def schedule(
    prompts: Sequence[torch.Tensor], groups: Sequence[PrefixGroup], max_new_tokens: Sequence[int],
    kv_budget_tokens: int,
) -> list[ScheduledBatch]:
    """Decode-heavy first (ratio expected decode / prompt length), then batches under a KV-token budget.

    A group's projected KV is its prefix once plus every member's suffix and decode tokens; a group larger than the
    budget runs alone.
    """

    def ratio(members):
        return sum(max_new_tokens[i] for i in members) / max(1, sum(prompts[i].numel() for i in members))

    ordered = []
    for g in sorted(groups, key=lambda g: -ratio(g.members)):
        members = sorted(g.members, key=lambda i: -max_new_tokens[i] / prompts[i].numel())
        ordered.append(PrefixGroup(g.prefix_len, members))

    def kv(g):
        return g.prefix_len + sum(prompts[i].numel() - g.prefix_len + max_new_tokens[i] for i in g.members)

    batches, cur, used = [], [], 0
    for g in ordered:
        need = kv(g)
        if cur and used + need > kv_budget_tokens:
            batches.append(ScheduledBatch(cur, used))
            cur, used = [], 0
        cur.append(g)
        used += need
    if cur:
        batches.append(ScheduledBatch(cur, used))
    return batches


# ------------------------------------------------------------------------------------------------ the engine
class BatchLLMEngine:
    """Offline greedy batch generation with global prefix sharing on an HF causal LM.

    Args:
        model: the causal LM (switched to the ``sharezoo_prefix`` attention; ordinary calls unchanged).
        kv_budget_tokens: projected KV tokens per batch (memory-centric batching).
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
        batches = schedule(prompts, groups, mnt, self.kv_budget_tokens)
        self.stats = {
            "prompt_tokens": sum(p.numel() for p in prompts),
            "prefill_tokens": sum(p.numel() for p in prompts) - plan_saving(groups),
            "groups": len(groups),
            "batches": len(batches),
            "max_batch_kv_tokens": max(b.kv_tokens for b in batches),
        }
        out: list[torch.Tensor | None] = [None] * n
        for b in batches:
            for i, toks in self._run_batch(prompts, b.groups, mnt).items():
                out[i] = toks
        return out  # type: ignore[return-value]

    def _run_batch(self, prompts, groups: list[PrefixGroup], mnt) -> dict[int, torch.Tensor]:
        dev = self.device
        model = self.model
        # (3) every group's shared prefix, prefilled once (right-padded batch of prefixes, causal)
        p_lens = [g.prefix_len for g in groups]
        segments = []
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
        done = torch.zeros(len(rows), dtype=torch.bool, device=dev)
        generated = []
        for step in range(int(limits.max())):
            tok = lm_logits(model, last).argmax(-1)
            generated.append(torch.where(done, torch.full_like(tok, -1), tok))
            done |= limits <= step + 1
            if self.eos_id is not None:
                done |= tok == self.eos_id
            if bool(done.all()):
                break
            hidden = run_segment_forward(model, spec, tok[:, None], next_pos[:, None])
            last = hidden[:, -1]
            next_pos = next_pos + 1
        gen = torch.stack(generated, dim=1).cpu()
        return {i: gen[r][gen[r] >= 0] for r, (_, i) in enumerate(rows)}
