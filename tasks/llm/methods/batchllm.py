"""BatchLLM planner: global prefix sharing + decode-heavy-first, memory-centric batching (the engine that runs a plan is
:class:`tasks.llm.engines.batchllm.BatchLLMEngine`).

Spec (``shared/papers/llm/batchllm.md``), steps as implemented here:

1. a compact prefix (radix) tree over all prompts of the batch (:func:`build_prefix_tree`; every prompt's last token is
   kept out of the tree so each request has a non-empty suffix);
2. flattened to one level of shared prefixes by a dynamic programme (:func:`plan_prefix_groups`): per child, keep its
   own (deeper) sharing or fork/merge its prompts into the group of this node, saving ``(members - 1) * depth`` per
   group; the programme is exact (equals the best partition, checked against brute force);
3. a group's prefix is prefilled once, its K/V lives only until the group's last member finishes (a finished
   request leaves the running batch before the next decode forward: its own K/V and query row are dropped, and the
   caches are trimmed to the longest prefix / suffix still running);
4. groups (and requests inside a group) are ordered by expected decode length / prompt length, decode-heavy first;
5. groups are packed into batches while the KV tokens the batch will hold stay under ``kv_budget_tokens``
   (memory-centric; :func:`batch_kv_tokens` is the exact peak the engine stores: at every forward, the running rows'
   prefixes padded to their longest, their suffixes padded to their longest plus the tokens decoded so far, plus the
   per-row prefix copies of the non-LSE path); a group that does not fit alone is split into sub-groups that do
   (each re-prefills the prefix), a single request that does not fit raises;
6. attention of every request over ``[shared prefix KV ; own KV]`` is the LSE merge of two partial attentions
   (:class:`zoo.llm.prefix.segments.SegmentAttention`); each group's prefix K/V is read in place by the group's
   rows (queries regrouped per group), never copied per row.

Greedy outputs equal generating each prompt alone (tested). Not implemented: chunked prefill mixed with decode tokens
inside one iteration, and a fused GPU kernel (this engine runs on HF modules with PyTorch ops).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch



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
    """One level of shared prefixes maximising the saved prefill tokens ``sum_g (|g| - 1) * prefix_len_g`` (step 2).

    Every prompt is in exactly one group; a group of one has ``prefix_len = 0``.

    An optimal partition can be written as every prompt choosing the tree node its group shares (an ancestor of its
    leaf; the root = no sharing) with one group per chosen node: saving ``sum_prompts depth(node) - sum_groups
    depth(node)``. The DP ``best(v, D)`` (``D``: depth of the deepest ancestor whose group is open) decides at every
    node, i.e. per child of the parent, whether the prompts below keep merging into the ancestor's group (``D``) or
    open a deeper group at ``v`` (paying its ``-depth`` once); the spec's "keep the multi-level sharing vs. fork/merge a
    child into its grandchildren" comparison, done for every child separately. It is exact (brute-force tested).
    """
    root = build_prefix_tree(prompts)
    memo: dict[tuple[int, int], tuple[int, bool]] = {}

    def best(node: TreeNode, d_open: int) -> int:
        key = (id(node), d_open)
        if key not in memo:
            closed = len(node.ids) * d_open + sum(best(c, d_open) for c in node.children)
            opened = None
            if node.depth > d_open:  # open a group here: its prompts save `depth` each, minus one depth per group
                d = node.depth
                opened = len(node.ids) * d - d + sum(best(c, d) for c in node.children)
            memo[key] = (opened, True) if opened is not None and opened > closed else (closed, False)
        return memo[key][0]

    best(root, 0)
    anchored: dict[int, list[int]] = {}  # group depth by anchor node -> members
    depth_of: dict[int, int] = {}

    def assign(node: TreeNode, d_open: int, anchor: int | None) -> None:
        if memo[(id(node), d_open)][1]:
            d_open, anchor = node.depth, id(node)
            depth_of[anchor] = node.depth
        for i in node.ids:
            anchored.setdefault(anchor if anchor is not None else -1 - i, []).append(i)
        for c in node.children:
            assign(c, d_open, anchor)

    assign(root, 0, None)
    groups = []
    for anchor, members in anchored.items():
        if anchor in depth_of and len(members) >= 2:
            groups.append(PrefixGroup(depth_of[anchor], sorted(members)))
        else:
            groups.extend(PrefixGroup(0, [i]) for i in members)
    return groups


def plan_saving(groups: Sequence[PrefixGroup]) -> int:
    """Prefill tokens saved by a plan: ``sum_g (|g| - 1) * prefix_len_g``."""
    return sum((len(g.members) - 1) * g.prefix_len for g in groups)


# ------------------------------------------------------------------------------------------------ scheduling
@dataclass
class ScheduledBatch:
    groups: list[PrefixGroup]
    kv_tokens: int


class _BatchShape:
    """Rows of a batch under construction; :meth:`kv_tokens` mirrors :meth:`BatchLLMEngine._run_batch`."""

    def __init__(self, prompts, max_new_tokens, lse_merge: bool) -> None:
        self.prompts, self.mnt, self.lse_merge = prompts, max_new_tokens, lse_merge
        self.n_groups = 0
        self.rows: list[tuple[int, int, int, int]] = []  # (group index, prefix length, suffix length, max_new_tokens)

    def with_group(self, g: PrefixGroup) -> _BatchShape:
        out = _BatchShape(self.prompts, self.mnt, self.lse_merge)
        out.n_groups = self.n_groups + 1
        out.rows = self.rows + [(self.n_groups, g.prefix_len, self.prompts[i].numel() - g.prefix_len,
                                 max(1, self.mnt[i])) for i in g.members]
        return out

    def kv_tokens(self) -> int:
        """Exact peak over the forwards of the batch (no EOS; an EOS only makes rows leave earlier).

        Forward ``k`` (0: the suffix prefill, ``k >= 1``: the k-th decode forward) runs the rows ``R_k`` with
        ``max_new_tokens > k`` and holds: the prefix segment of their groups ``G_k`` trimmed to their longest prefix
        ``P_k`` (``|G_k| * P_k``), their own K/V trimmed to their longest suffix ``S_k`` plus ``k`` decoded tokens
        (``|R_k| * (S_k + k)``), and without the LSE merge the per-row prefix copies (``|R_k| * P_k``). ``R_k`` only
        changes at ``k = m`` for the requests' ``m``, and the count grows with ``k`` in between, so the peak is at
        one of the ``k = m - 1``. The prefix prefill (``G * P``) is never above forward 0.
        """
        best = 0
        for m in {r[3] for r in self.rows}:
            alive = [r for r in self.rows if r[3] >= m]  # = rows with max_new_tokens > m - 1
            k = m - 1
            p = max(r[1] for r in alive)
            groups = len({r[0] for r in alive}) if p > 0 else 0
            s = max(r[2] for r in alive)
            own = len(alive) * (s + k)
            copies = 0 if self.lse_merge else len(alive) * p
            best = max(best, groups * p + own + copies)
        return best


def batch_kv_tokens(
    prompts: Sequence[torch.Tensor], groups: Sequence[PrefixGroup], max_new_tokens: Sequence[int],
    lse_merge: bool = True,
) -> int:
    """Peak K/V tokens (per layer; every layer holds as many) the engine stores to run ``groups`` as one batch.

    ``max_k |G_k| * P_k + |R_k| * (S_k + k)`` (+ ``|R_k| * P_k`` per-row prefix copies without the LSE merge) over
    the forwards ``k``: a finished request leaves the batch before the next decode forward (its own K/V is dropped,
    its group's prefix K/V once its last member has finished), so ``R_k`` are the rows with ``max_new_tokens > k``,
    ``G_k`` their groups, ``P_k`` / ``S_k`` their longest prefix / suffix (the caches are trimmed to them); see
    ``_BatchShape.kv_tokens``. At most the old ``G * P + n * (S + max(max_new_tokens) - 1)``, equal when every row
    runs to the end. Transient per-layer attention work buffers (GQA head repetition, scores) and the momentary copy
    made while compacting a cache are not K/V storage and are not counted.
    """
    shape = _BatchShape(prompts, max_new_tokens, lse_merge)
    for g in groups:
        shape = shape.with_group(g)
    return shape.kv_tokens()


def schedule(
    prompts: Sequence[torch.Tensor], groups: Sequence[PrefixGroup], max_new_tokens: Sequence[int],
    kv_budget_tokens: int, lse_merge: bool = True,
) -> list[ScheduledBatch]:
    """Decode-heavy first (ratio expected decode / prompt length), then batches under a KV-token budget.

    Every batch's :func:`batch_kv_tokens` (what the engine really stores) is at most ``kv_budget_tokens``: a group
    that does not fit alone is split, in its decode-heavy order, into sub-groups with the same prefix that do (each
    prefills the prefix again); a request that does not fit alone raises ``ValueError``.
    """

    def ratio(members):
        return sum(max_new_tokens[i] for i in members) / max(1, sum(prompts[i].numel() for i in members))

    empty = _BatchShape(prompts, max_new_tokens, lse_merge)
    ordered = []
    for g in sorted(groups, key=lambda g: -ratio(g.members)):
        members = sorted(g.members, key=lambda i: -max_new_tokens[i] / prompts[i].numel())
        chunk: list[int] = []
        for i in members:
            alone = empty.with_group(PrefixGroup(g.prefix_len, [i])).kv_tokens()
            if alone > kv_budget_tokens:
                raise ValueError(
                    f"request {i} needs {alone} KV tokens alone (prompt {prompts[i].numel()}, "
                    f"max_new_tokens {max_new_tokens[i]}); kv_budget_tokens is {kv_budget_tokens}"
                )
            if chunk and empty.with_group(PrefixGroup(g.prefix_len, chunk + [i])).kv_tokens() > kv_budget_tokens:
                ordered.append(PrefixGroup(g.prefix_len, chunk))
                chunk = []
            chunk.append(i)
        ordered.append(PrefixGroup(g.prefix_len, chunk))

    batches, cur, shape = [], [], empty
    for g in ordered:
        grown = shape.with_group(g)
        if cur and grown.kv_tokens() > kv_budget_tokens:
            batches.append(ScheduledBatch(cur, shape.kv_tokens()))
            cur, grown = [], empty.with_group(g)
        cur.append(g)
        shape = grown
    if cur:
        batches.append(ScheduledBatch(cur, shape.kv_tokens()))
    return batches
