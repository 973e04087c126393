"""A depth-bounded suffix tree over token sequences with occurrence counts (SuffixDecoding's draft source).

The tree holds every substring of length <= ``max_depth`` of the sequences inserted into it (a suffix trie cut at
depth D); each node counts how many times its path occurs. Appending a token to a sequence extends the (at most D)
suffixes that end at the previous token, so insertion is incremental and O(D) per token (spec, "Algorithm" step 6).
A sequence can be removed again (FIFO eviction of the global tree).

:meth:`SuffixTree.match` finds the longest suffix of a context that is a path (binary search: every suffix of a
matched path is itself a path); :meth:`SuffixTree.speculate` grows a draft from the matched node, a single chain or
a best-first speculation tree, scoring each token by the product along its path of ``count(child)`` over the summed
counts of the parent's children (the parent's occurrences that continue; spec steps 1-4). Plain Python; no torch.
"""
from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

__all__ = ["SuffixDraft", "SuffixTree"]


class _Node:
    """One path of the trie: ``count`` occurrences, children by token id."""

    __slots__ = ("children", "count", "depth")

    def __init__(self, depth: int) -> None:
        self.children: dict[int, _Node] = {}
        self.count = 0
        self.depth = depth


def _total(node: _Node) -> int:
    """Occurrences of ``node``'s path that continue (the denominator of a child's probability)."""
    return sum(c.count for c in node.children.values())


@dataclass
class SuffixDraft:
    """A speculation tree in topological order (a chain is the special case ``parents[i] == i - 1``).

    Attributes:
        token_ids: drafted token of each node.
        parents: index of each node's parent node, -1 for a child of the root (the last context token).
        probs: estimated probability of each node (product of count ratios along its path).
        score: sum of ``probs`` (~ expected number of accepted tokens).
        match_len: length of the matched context suffix the draft grew from.
    """

    token_ids: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    probs: list[float] = field(default_factory=list)
    score: float = 0.0
    match_len: int = 0

    def __len__(self) -> int:
        return len(self.token_ids)


class SuffixTree:
    """Suffix trie of depth <= ``max_depth`` over token sequences, with counts.

    Args:
        max_depth: the depth bound D (the spec's ``suffix_cache_max_depth``, default 64).
    """

    def __init__(self, max_depth: int = 64) -> None:
        self.max_depth = max_depth
        self.root = _Node(0)
        self._seqs: dict[object, list[int]] = {}
        self._active: dict[object, list[_Node]] = {}
        self.num_nodes = 1

    # ----------------------------------------------------------------------------------------------- updates
    def extend(self, seq_id: object, tokens: Iterable[int]) -> None:
        """Append ``tokens`` to sequence ``seq_id`` (created if new), inserting the new substrings."""
        seq = self._seqs.setdefault(seq_id, [])
        active = self._active.get(seq_id, [])
        for t in tokens:
            t = int(t)
            seq.append(t)
            nxt = []
            for node in [self.root, *active]:
                if node.depth >= self.max_depth:
                    continue
                child = node.children.get(t)
                if child is None:
                    child = node.children[t] = _Node(node.depth + 1)
                    self.num_nodes += 1
                child.count += 1
                nxt.append(child)
            active = nxt
        self._active[seq_id] = active

    def finish(self, seq_id: object) -> None:
        """Stop extending ``seq_id`` (its substrings stay in the tree until :meth:`remove`)."""
        self._active.pop(seq_id, None)

    def remove(self, seq_id: object) -> None:
        """Remove every substring occurrence of ``seq_id`` (nodes whose count drops to 0 are deleted)."""
        seq = self._seqs.pop(seq_id, None)
        self._active.pop(seq_id, None)
        if seq is None:
            return
        for start in range(len(seq)):
            node = self.root
            for t in seq[start:start + self.max_depth]:
                child = node.children[t]
                child.count -= 1
                if child.count == 0:
                    self.num_nodes -= self._size(child)
                    del node.children[t]
                    break
                node = child

    def _size(self, node: _Node) -> int:
        return 1 + sum(self._size(c) for c in node.children.values())

    def __contains__(self, seq_id: object) -> bool:
        return seq_id in self._seqs

    def sequence_ids(self) -> list[object]:
        """The ids of the stored sequences, oldest first."""
        return list(self._seqs)

    # ----------------------------------------------------------------------------------------------- lookup
    def _walk(self, tokens: Sequence[int]) -> _Node | None:
        node = self.root
        for t in tokens:
            node = node.children.get(int(t))
            if node is None:
                return None
        return node

    def match(self, context: Sequence[int]) -> tuple[int, _Node]:
        """The longest suffix of ``context`` (< ``max_depth`` tokens) that occurs with a continuation: ``(length,
        node)``.

        "With a continuation" (the node has children) excludes the trivial match of a sequence's own end in the
        per-request tree; the property is monotone in the suffix length, so a binary search finds the longest.
        """
        ctx = list(context[-(self.max_depth - 1):]) if self.max_depth > 1 else []
        lo, hi, best = 0, len(ctx), self.root  # invariant: the suffix of length lo matches
        while lo < hi:
            mid = (lo + hi + 1) // 2
            node = self._walk(ctx[len(ctx) - mid:])
            if node is None or not node.children:
                hi = mid - 1
            else:
                lo, best = mid, node
        return lo, best

    def speculate(self, context: Sequence[int], max_spec_tokens: int = 16, max_spec_factor: float = 1.0,
                  max_spec_offset: float = 0.0, min_token_prob: float = 0.1, use_tree: bool = True) -> SuffixDraft:
        """A draft continuing ``context`` (spec steps 1-4).

        Args:
            context: the sequence so far (prompt + output).
            max_spec_tokens: hard cap on drafted tokens.
            max_spec_factor: alpha of the adaptive budget ``min(max_spec_tokens, alpha * match_len + offset)``.
            max_spec_offset: the budget's offset.
            min_token_prob: nodes whose estimated probability falls below this are not drafted.
            use_tree: best-first speculation tree (the paper) instead of the greedy single chain (vLLM default).
        """
        p, node = self.match(context)
        budget = int(min(max_spec_tokens, max_spec_factor * p + max_spec_offset))
        draft = SuffixDraft(match_len=p)
        if p == 0 or budget <= 0:
            return draft
        if not use_tree:
            prob, parent = 1.0, -1
            while len(draft) < budget and node.children:
                tok, child = max(node.children.items(), key=lambda kv: (kv[1].count, -kv[0]))
                prob *= child.count / _total(node)
                if prob < min_token_prob:
                    break
                draft.token_ids.append(tok), draft.parents.append(parent), draft.probs.append(prob)
                parent, node = len(draft) - 1, child
        else:
            heap = []  # (-prob, tie, token, node, parent index, parent count)
            tie = 0

            def push(parent_node: _Node, parent_prob: float, parent_idx: int) -> None:
                nonlocal tie
                total = _total(parent_node)
                for tok, child in sorted(parent_node.children.items()):
                    pr = parent_prob * child.count / total
                    if pr >= min_token_prob:
                        heapq.heappush(heap, (-pr, tie, tok, child, parent_idx))
                        tie += 1

            push(node, 1.0, -1)
            while heap and len(draft) < budget:
                neg, _, tok, child, parent = heapq.heappop(heap)
                draft.token_ids.append(tok), draft.parents.append(parent), draft.probs.append(-neg)
                push(child, -neg, len(draft) - 1)
        draft.score = float(sum(draft.probs))
        return draft
