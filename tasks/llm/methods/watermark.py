"""Codable (multi-bit) text watermarks: Vanilla-/Balance-Marking and MajorMark / MajorMark+.

Specs: ``shared/papers/llm/codable-watermarking-balance-marking.md`` (Wang et al., ICLR 2024) and
``shared/papers/llm/majormark.md`` (Xu, Hu, Zhang, arXiv 2508.03829). Each scheme is a ``transformers``
``LogitsProcessor`` factory (:meth:`processor`) that biases generation towards a message-dependent favoured token set,
plus an extractor (:meth:`extract`) that reads the message back from the generated token ids alone (no prompt, no
logits of the generating model; Balance-Marking needs its proxy LM, which is part of its key).

Shared pieces: a 32-bit integer mixing hash on int64 tensors (:func:`hash32`, platform independent, no Python
``hash``), a per-position seed from the previous token and the global key (``hash_prefix_len = 1``), and per-token
pseudo-random keys ``hash32(seed ^ hash32(v))`` that order the vocabulary.

* **Vanilla-Marking**: the message value ``m`` of the current segment seeds the order; favoured = its first half.
* **Balance-Marking**: a proxy LM's next-token distribution over the last ``proxy_context`` tokens; in the
  ``m``-seeded order, the tokens before the point where the cumulative proxy mass reaches 0.5 are unfavoured, the
  rest (mass in ``(0.5, 0.5 + p_max]``) favoured (spec "Algorithm" step 3).
  Both: the message is cut into segments of ``segment_bits`` bits, segment ``k`` is carried by generated tokens
  ``[k E, (k + 1) E)``, ``E = segment_bits * encode_ratio``, cycling after the last segment; a segment is decoded by
  brute force over its ``2^segment_bits`` values (count of tokens in the favoured set, argmax; ties: smallest value).
* **MajorMark**: the vocabulary is split per position into ``b`` shards (one per message bit) by a PRF of the
  context, the key and the message's majority bit ``lambda``; the favoured (green) set is the union of the shards
  whose bit equals ``lambda`` (so it covers >= half the vocabulary). Decoding counts the text's tokens per shard for
  both candidate ``lambda`` and splits the variance-stabilised counts into a high and a low cluster (exact 1-D
  2-means constrained to a high cluster of >= b/2 shards); the candidate with the larger cluster separation wins;
  bit ``j`` = ``lambda`` if shard ``j`` is high.
* **MajorMark+**: the message is cut into blocks of ``block_bits``; each position is assigned to a block by a PRF of
  its context (message independent) and carries that block's MajorMark encoding; blocks decode independently.

Documented assumptions where the sources are silent (all configurable): Balance-Marking's segment of 20 bits is
decoded by brute force in the paper's code; here the default segment is 4 bits (16 candidates; a 20-bit message =
5 segments x 40 tokens = the paper's 200 tokens at ratio 10); ``proxy_context = 10`` tokens; positions whose proxy
window reaches before the text are skipped by the extractor; no ``top_k`` restriction (full vocabulary), no
"max-confidence" variant. MajorMark (paper body not available): the PRF inputs (previous token, key, lambda, block),
the tie rule (a balanced message has lambda = 1), the constrained 2-means decoder and the separation score are this
module's choices; messages whose block is constant (all 0 / all 1: green = whole vocabulary, no signal) are refused,
as the paper excludes them; ``delta`` is not stated: 2.0 by default.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["BalanceMarking", "MajorMark", "MajorMarkPlus", "VanillaMarking", "WatermarkProcessor", "hash32",
           "int_to_bits", "bits_to_int"]

_M32 = 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer mixing hash (multiply-xorshift) of int64 tensors, values in ``[0, 2^32)``; every product
    stays below 2^59, so int64 arithmetic is exact on every platform."""
    x = x.long() & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    x = ((x >> 16) ^ x) * 0x45D9F3B & _M32
    return (x >> 16) ^ x


def int_to_bits(value: int, n: int) -> list[int]:
    """``n`` bits of ``value``, most significant first."""
    return [(value >> (n - 1 - i)) & 1 for i in range(n)]


def bits_to_int(bits: Sequence[int]) -> int:
    """Inverse of :func:`int_to_bits`."""
    v = 0
    for b in bits:
        v = (v << 1) | int(b)
    return v


def _token_keys(seeds: torch.Tensor, vocab: int) -> torch.Tensor:
    """Pseudo-random key of every token for every seed: ``[..., V]``."""
    v = hash32(torch.arange(vocab, device=seeds.device) + 0x9E3779B9)
    return hash32(seeds[..., None] ^ v)


class WatermarkProcessor:
    """A ``transformers`` ``LogitsProcessor``: adds ``scheme.bias(...)`` to the scores of the generated positions.

    Args:
        scheme: a watermark scheme of this module.
        messages: the message bits of each batch row (one list per row, or one list for every row).
        prompt_len: the (left-padded) prompt length; generated position ``j`` = current length - ``prompt_len``.
    """

    def __init__(self, scheme, messages: Sequence[int] | Sequence[Sequence[int]], prompt_len: int) -> None:
        self.scheme, self.prompt_len = scheme, prompt_len
        self.messages = [list(messages)] if not isinstance(messages[0], Sequence) else [list(m) for m in messages]
        for m in self.messages:
            scheme.check_message(m)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        j = input_ids.shape[1] - self.prompt_len
        msgs = self.messages * input_ids.shape[0] if len(self.messages) == 1 else self.messages
        return scores + self.scheme.bias(input_ids, j, msgs, scores.shape[-1]).to(scores.dtype)


class _Segmented:
    """Vanilla-/Balance-Marking's message segmentation, seeds and brute-force decoding (see the module docstring)."""

    skip = 1

    def __init__(self, segment_bits: int = 4, encode_ratio: int = 10, delta: float = 1.5, key: int = 15485863) -> None:
        self.segment_bits, self.encode_ratio, self.delta, self.key = segment_bits, encode_ratio, delta, key

    @property
    def encode_len(self) -> int:
        """Tokens per segment."""
        return self.segment_bits * self.encode_ratio

    def check_message(self, bits: Sequence[int]) -> None:
        if len(bits) % self.segment_bits:
            raise ValueError(f"message of {len(bits)} bits is not a whole number of {self.segment_bits}-bit segments")

    def segment_value(self, bits: Sequence[int], j: int) -> int:
        """Value of the segment that generated position ``j`` carries."""
        n_seg = len(bits) // self.segment_bits
        k = (j // self.encode_len) % n_seg
        return bits_to_int(bits[k * self.segment_bits:(k + 1) * self.segment_bits])

    def seeds(self, prev: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """``s_m = H((s mod 2^(32-b)) 2^b + m)`` with ``s = H(prev ^ key)``: ``[N] x [M] -> [N, M]``."""
        b = self.segment_bits
        s = hash32(prev ^ self.key)
        return hash32(((s & ((1 << (32 - b)) - 1)) << b)[:, None] + values[None, :])

    def favoured(self, prev: torch.Tensor, values: torch.Tensor, vocab: int, probs: torch.Tensor | None):
        raise NotImplementedError

    def _proxy_probs(self, windows: torch.Tensor) -> torch.Tensor | None:
        return None

    def _before(self, prev, values, vocab, tok):
        """For each seed, which tokens precede ``tok`` in the seeded order (key, then token id): ``[N, M, V]``."""
        keys = _token_keys(self.seeds(prev, values), vocab)
        kx = keys.gather(-1, tok[:, None, None].expand(-1, keys.shape[1], 1))
        ids = torch.arange(vocab, device=keys.device)
        return (keys < kx) | ((keys == kx) & (ids < tok[:, None, None]))

    def favoured_token(self, prev, values, vocab, probs, tok) -> torch.Tensor:
        """Whether token ``tok[i]`` is in value ``m``'s favoured set at position ``i``: ``[N, M]`` (no sort)."""
        raise NotImplementedError

    def bias(self, input_ids: torch.Tensor, j: int, messages, vocab: int) -> torch.Tensor:
        values = torch.tensor([self.segment_value(m, j) for m in messages], device=input_ids.device)
        probs = self._proxy_probs(input_ids[:, -self.skip:])
        fav = torch.stack([self.favoured(input_ids[i, -1:], values[i:i + 1], vocab,
                                         None if probs is None else probs[i:i + 1])[0, 0]
                           for i in range(len(messages))])
        return fav.float() * self.delta

    def processor(self, messages, prompt_len: int) -> WatermarkProcessor:
        """The ``LogitsProcessor`` embedding ``messages`` (bits; one list, or one per batch row)."""
        return WatermarkProcessor(self, messages, prompt_len)

    @torch.no_grad()
    def scores(self, ids: torch.Tensor, n_bits: int, vocab: int) -> torch.Tensor:
        """``[segments, 2^b]``: how many of the text's tokens fall in each candidate value's favoured set."""
        n_seg, b = n_bits // self.segment_bits, self.segment_bits
        out = torch.zeros(n_seg, 2 ** b, device=ids.device)
        pos = torch.arange(self.skip, ids.numel(), device=ids.device)
        if pos.numel() == 0:
            return out
        values = torch.arange(2 ** b, device=ids.device)
        probs = self._proxy_probs(torch.stack([ids[p - self.skip:p] for p in pos.tolist()]))
        for c in range(0, pos.numel(), 64):
            pp = pos[c:c + 64]
            hit = self.favoured_token(ids[pp - 1], values, vocab, None if probs is None else probs[c:c + 64],
                                      ids[pp]).float()  # [n, M]
            out.index_add_(0, (pp // self.encode_len) % n_seg, hit)
        return out

    def extract(self, ids: torch.Tensor, n_bits: int, vocab: int) -> list[int]:
        """The message bits read from generated token ids ``[T]`` (position 0 = the first generated token)."""
        sc = self.scores(ids, n_bits, vocab)
        return [bit for row in sc for bit in int_to_bits(int(row.argmax()), self.segment_bits)]


class VanillaMarking(_Segmented):
    """Vanilla-Marking: favoured = the first half of the message-seeded vocabulary order.

    Args:
        segment_bits: bits per segment (decoded by brute force over ``2^segment_bits`` values).
        encode_ratio: tokens per bit of a segment.
        delta: logit bias of the favoured set.
        key: the global key.
    """

    def favoured(self, prev, values, vocab, probs=None):
        keys = _token_keys(self.seeds(prev, values), vocab)  # [N, M, V]
        ranks = keys.argsort(dim=-1, stable=True).argsort(-1)
        return ranks < vocab // 2

    def favoured_token(self, prev, values, vocab, probs, tok):
        return self._before(prev, values, vocab, tok).sum(-1) < vocab // 2


class BalanceMarking(_Segmented):
    """Balance-Marking: a proxy LM splits the message-seeded vocabulary order at half of its probability mass.

    Args:
        proxy: the proxy causal LM (same tokenizer as the generator; the paper uses GPT-2 for OPT/LLaMA).
        proxy_context: tokens of context the proxy sees (also the positions the extractor skips).
        segment_bits: bits per segment.
        encode_ratio: tokens per bit of a segment.
        delta: logit bias of the favoured set.
        key: the global key.
    """

    def __init__(self, proxy: nn.Module, proxy_context: int = 10, segment_bits: int = 4, encode_ratio: int = 10,
                 delta: float = 1.5, key: int = 15485863) -> None:
        super().__init__(segment_bits, encode_ratio, delta, key)
        self.proxy, self.skip = proxy.eval(), proxy_context

    @torch.no_grad()
    def _proxy_probs(self, windows: torch.Tensor) -> torch.Tensor:
        dev = next(self.proxy.parameters()).device
        out = []
        for c in range(0, windows.shape[0], 256):
            logits = self.proxy(input_ids=windows[c:c + 256].to(dev)).logits[:, -1].float()
            out.append(torch.softmax(logits, -1).to(windows.device))
        return torch.cat(out)

    def favoured(self, prev, values, vocab, probs):
        keys = _token_keys(self.seeds(prev, values), vocab)  # [N, M, V]
        order = keys.argsort(dim=-1, stable=True)
        p = probs[:, :vocab]
        p = p / p.sum(-1, keepdim=True)
        cum = p[:, None, :].expand(-1, values.numel(), -1).gather(-1, order).cumsum(-1)
        return torch.zeros_like(order, dtype=torch.bool).scatter(-1, order, cum >= 0.5)

    def favoured_token(self, prev, values, vocab, probs, tok):
        p = probs[:, :vocab]
        p = p / p.sum(-1, keepdim=True)
        before = (self._before(prev, values, vocab, tok).to(p.dtype) * p[:, None, :]).sum(-1)
        return before + p.gather(-1, tok[:, None]) >= 0.5


class MajorMarkPlus:
    """MajorMark+ (``block_bits`` < message length) and MajorMark (one block): majority-bit encoding, clustering
    decoding (see the module docstring).

    Args:
        block_bits: bits per block (None: the whole message is one block = MajorMark).
        delta: logit bias of the green set.
        key: the global key.
    """

    skip = 1

    def __init__(self, block_bits: int | None = 8, delta: float = 2.0, key: int = 15485863) -> None:
        self.block_bits, self.delta, self.key = block_bits, delta, key

    def _blocks(self, n_bits: int) -> int:
        r = self.block_bits or n_bits
        if n_bits % r:
            raise ValueError(f"message of {n_bits} bits is not a whole number of {r}-bit blocks")
        return n_bits // r

    @staticmethod
    def majority(bits: Sequence[int]) -> int:
        """The majority bit (a tie counts as 1)."""
        return int(2 * sum(bits) >= len(bits))

    def check_message(self, bits: Sequence[int]) -> None:
        r = self.block_bits or len(bits)
        for k in range(self._blocks(len(bits))):
            blk = bits[k * r:(k + 1) * r]
            if len(set(blk)) < 2:
                raise ValueError(f"block {k} of the message is constant ({blk}): its green list would be the whole "
                                 "vocabulary (no signal); such messages are excluded (MajorMark)")

    def block_of(self, prev: torch.Tensor, n_blocks: int) -> torch.Tensor:
        """The block each position carries (message independent): ``[N]``."""
        return hash32(hash32(prev ^ self.key) ^ 0x5BD1E995) % n_blocks

    def shards(self, prev: torch.Tensor, block: torch.Tensor, lam: torch.Tensor, r: int, vocab: int):
        """Shard (bit index within the block) of every token: ``[N, V]``."""
        s = hash32(hash32(prev ^ self.key) * 2 + lam)
        s = hash32(s ^ (block * 0x27D4EB2D & _M32))
        return _token_keys(s, vocab) % r

    def bias(self, input_ids: torch.Tensor, j: int, messages, vocab: int) -> torch.Tensor:
        dev = input_ids.device
        n = len(messages[0])
        r, nb = self.block_bits or n, self._blocks(n)
        prev = input_ids[:, -1]
        block = self.block_of(prev, nb)
        blk_bits = torch.tensor([m[int(k) * r:(int(k) + 1) * r] for m, k in zip(messages, block.tolist())],
                                device=dev)
        lam = torch.tensor([self.majority(b) for b in blk_bits.tolist()], device=dev)
        green = blk_bits.gather(1, self.shards(prev, block, lam, r, vocab)) == lam[:, None]
        return green.float() * self.delta

    def processor(self, messages, prompt_len: int) -> WatermarkProcessor:
        """The ``LogitsProcessor`` embedding ``messages`` (bits; one list, or one per batch row)."""
        return WatermarkProcessor(self, messages, prompt_len)

    @staticmethod
    def _split(counts: torch.Tensor) -> tuple[float, set[int]]:
        """Exact 1-D 2-means of the variance-stabilised counts ``sqrt(c + 3/8)`` (Anscombe: Poisson counts get unit
        variance, so a skewed message's many green shards do not swamp its few red ones) with a high cluster of >= half
        the shards: ``(separation in noise units, high shard indices)``."""
        r = counts.numel()
        order = counts.argsort(descending=True, stable=True).tolist()
        c = (counts[order].double() + 0.375).sqrt()
        best, best_k = None, None
        for k in range(-(-r // 2), r):  # k shards high
            hi, lo = c[:k], c[k:]
            sse = ((hi - hi.mean()) ** 2).sum() + ((lo - lo.mean()) ** 2).sum()
            if best is None or sse < best:
                best, best_k = sse, k
        hi, lo = c[:best_k], c[best_k:]
        sep = float(2 * (hi.mean() - lo.mean()))
        return sep, set(order[:best_k])

    @torch.no_grad()
    def extract_blocks(self, ids: torch.Tensor, n_bits: int, vocab: int) -> list[dict]:
        """Per block: the decoded bits, lambda, separation and the positions used."""
        r, nb = self.block_bits or n_bits, self._blocks(n_bits)
        pos = torch.arange(self.skip, ids.numel(), device=ids.device)
        prev, tok = ids[pos - 1], ids[pos]
        block = self.block_of(prev, nb)
        out = []
        for k in range(nb):
            sel = block == k
            p, t = prev[sel], tok[sel]
            cands = []
            for lam in (0, 1):
                if p.numel():
                    sh = self.shards(p, torch.full_like(p, k), torch.full_like(p, lam), r, vocab)
                    counts = torch.bincount(sh.gather(1, t[:, None])[:, 0], minlength=r)
                else:
                    counts = torch.zeros(r, dtype=torch.long)
                sep, high = self._split(counts)
                if lam == 0 and len(high) * 2 == r:  # a balanced block has lambda 1: lambda 0 needs a strict majority
                    sep = float("-inf")
                bits = [lam if i in high else 1 - lam for i in range(r)]
                cands.append(dict(bits=bits, lam=lam, separation=sep, counts=counts.tolist(), positions=int(sel.sum())))
            out.append(max(cands, key=lambda d: d["separation"]))
        return out

    def extract(self, ids: torch.Tensor, n_bits: int, vocab: int) -> list[int]:
        """The message bits read from generated token ids ``[T]`` (position 0 = the first generated token)."""
        return [b for blk in self.extract_blocks(ids, n_bits, vocab) for b in blk["bits"]]


class MajorMark(MajorMarkPlus):
    """MajorMark: the whole message is one majority-bit block (one shard per bit).

    Args:
        delta: logit bias of the green set.
        key: the global key.
    """

    def __init__(self, delta: float = 2.0, key: int = 15485863) -> None:
        super().__init__(None, delta, key)
