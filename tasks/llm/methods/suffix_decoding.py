"""SuffixDecoding's drafter (Oliaro et al., arXiv 2411.04975): model-free drafts from suffix trees.

Spec: ``shared/papers/llm/suffixdecoding.md``. Two trees (:class:`zoo.llm.suffix_tree.SuffixTree`):

* the **global** tree over the outputs of previous requests (at most ``max_cached_requests``, FIFO eviction);
* a **per-request** tree over the active request's prompt and the tokens generated so far.

Each step both trees propose a draft from the longest match of the sequence's last tokens (adaptive budget
``min(max_spec_tokens, alpha * match_len + offset)``, frequency-scored, ``min_token_prob`` cut-off); the draft with the
higher score (sum of estimated token probabilities) is verified (spec, "Algorithm" steps 1-4). The verification loop
is :mod:`tasks.llm.engines.suffix_decoding`.

Deviations / choices (configurable): the paper's speculation tree is the default (``use_tree=True``; the vLLM path's
single chain is ``use_tree=False``); the maintainers' aggressive alpha 2-4 is not the default (alpha 1.0, as shipped);
ties between equally frequent children go to the smaller token id (not stated in the sources).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from zoo.llm.suffix_tree import SuffixDraft, SuffixTree

__all__ = ["SuffixConfig", "SuffixDecodingCache"]


@dataclass
class SuffixConfig:
    """SuffixDecoding's knobs (defaults: ArcticInference's documented defaults, spec "Hyperparameters").

    Attributes:
        max_depth: suffix-tree depth bound D.
        max_spec_tokens: hard cap on drafted tokens per step.
        max_spec_factor: alpha of the adaptive budget.
        max_spec_offset: offset of the adaptive budget.
        min_token_prob: estimated-probability cut-off of a drafted token.
        max_cached_requests: outputs kept in the global tree (FIFO); 0 disables the global tree.
        use_tree: verify a speculation tree (True) or a single chain (False).
    """

    max_depth: int = 64
    max_spec_tokens: int = 32
    max_spec_factor: float = 1.0
    max_spec_offset: float = 0.0
    min_token_prob: float = 0.1
    max_cached_requests: int = 100_000
    use_tree: bool = True


class SuffixDecodingCache:
    """Global + per-request suffix trees and the per-step draft choice.

    Args:
        config: the knobs (:class:`SuffixConfig`).
    """

    def __init__(self, config: SuffixConfig | None = None) -> None:
        self.config = config or SuffixConfig()
        self.global_tree = SuffixTree(self.config.max_depth)
        self._local: dict[object, SuffixTree] = {}
        self._outputs: dict[object, list[int]] = {}

    def start_request(self, req_id: object, prompt: Sequence[int]) -> None:
        """Open a request: its per-request tree holds the prompt."""
        tree = SuffixTree(self.config.max_depth)
        tree.extend(req_id, prompt)
        self._local[req_id] = tree
        self._outputs[req_id] = []

    def add_tokens(self, req_id: object, tokens: Sequence[int]) -> None:
        """Tokens the request just generated (accepted drafts + the bonus token)."""
        self._local[req_id].extend(req_id, tokens)
        self._outputs[req_id].extend(int(t) for t in tokens)

    def stop_request(self, req_id: object) -> None:
        """Close a request: its output enters the global tree (oldest outputs evicted beyond the cap)."""
        self._local.pop(req_id, None)
        out = self._outputs.pop(req_id, [])
        cap = self.config.max_cached_requests
        if cap == 0 or not out:
            return
        key = (req_id, len(self.global_tree.sequence_ids()), id(out))
        self.global_tree.extend(key, out)
        self.global_tree.finish(key)
        ids = self.global_tree.sequence_ids()
        for old in ids[:max(0, len(ids) - cap)]:
            self.global_tree.remove(old)

    def warm(self, outputs: Sequence[Sequence[int]]) -> None:
        """Pre-fill the global tree with earlier outputs (the maintainers' "training" of the tree)."""
        for i, out in enumerate(outputs):
            self.start_request(("warm", i), [])
            self.add_tokens(("warm", i), out)
            self.stop_request(("warm", i))

    def speculate(self, req_id: object, context: Sequence[int]) -> SuffixDraft:
        """The better-scoring draft of the per-request and the global tree for ``context`` (prompt + output)."""
        c = self.config
        kw = dict(max_spec_tokens=c.max_spec_tokens, max_spec_factor=c.max_spec_factor,
                  max_spec_offset=c.max_spec_offset, min_token_prob=c.min_token_prob, use_tree=c.use_tree)
        best = self._local[req_id].speculate(context, **kw) if req_id in self._local else SuffixDraft()
        if c.max_cached_requests:
            other = self.global_tree.speculate(context, **kw)
            if other.score > best.score:
                best = other
        return best
