"""Attention over cached, read-only KV segments plus each row's own growing KV, merged by log-sum-exp.

This is the inference side of the primitive: a shared prefix (or APE's parallel-encoded contexts) is encoded once and
kept as a :class:`KVSegment`; the rows that use it (BatchLLM requests, APE queries, contexts encoded after a shared
prefix) attend to the segment without any causal mask, to their own keys causally, and the partial softmaxes are merged
exactly with :func:`merge_partials` (BatchLLM's horizontally fused prefix-shared attention, APE's combine step).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attention import merge_partials
from .eager import attention_with_lse, repeat_kv


@dataclass
class KVSegment:
    """Per-layer cached keys/values ``[nb, Hkv, T, d]`` (post-RoPE) with key validity ``[nb, T]``.

    ``nb`` is 1 (shared by every row) or one entry per group, read through ``row_index`` by :class:`SegmentAttention`.
    ``temperature`` divides the scores against this segment; ``weight`` multiplies its log-sum-exp in the merge (APE:
    ``T`` and ``S * T``; both 1 for exact attention).
    """

    keys: list[torch.Tensor] = field(default_factory=list)
    values: list[torch.Tensor] = field(default_factory=list)
    valid: torch.Tensor | None = None
    temperature: float = 1.0
    weight: float = 1.0
    row_index: torch.Tensor | None = None
    _slots: tuple | None = field(default=None, repr=False)

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0

    @property
    def entries(self) -> int:
        """Number of stored entries ``nb`` (1 for a shared segment)."""
        return self.keys[0].shape[0] if self.keys else 0

    def select(self, rows: torch.Tensor) -> KVSegment:
        """The segment seen by ``rows``: row ``r`` reads entry ``rows[r]`` (nothing is copied)."""
        return KVSegment(self.keys, self.values, self.valid, self.temperature, self.weight, rows)

    def keep_rows(self, keep: torch.Tensor, n: int) -> KVSegment | None:
        """The segment seen by the rows ``keep`` (indices into the ``n`` current rows) once the others have left.

        Entries no row reads any more are freed, and the keys are trimmed to the longest still-valid position (the
        kept entries are copied into new tensors, so the old storage is released once nothing else holds it).
        Returns None when no kept row sees any valid key (the segment contributes nothing: dropping it is exact).
        """
        if self.row_index is None:
            entry = keep if self.entries == n else torch.zeros_like(keep)
        else:
            entry = self.row_index[keep]
        used, row_index = torch.unique(entry, sorted=True, return_inverse=True)
        length = self.length
        if self.valid is not None:
            valid = self.valid[used]
            cols = valid.any(0).nonzero()
            length = int(cols[-1]) + 1 if cols.numel() else 0
            valid = valid[:, :length]
        else:
            valid = None
        if length == 0 or used.numel() == 0:
            return None
        if used.numel() == self.entries and length == self.length:  # nothing to free: keep the storage
            keys, values, valid = self.keys, self.values, self.valid
        else:
            keys = [k[used, :, :length] for k in self.keys]
            values = [v[used, :, :length] for v in self.values]
        shared = self.row_index is None and self.entries == 1
        return KVSegment(keys, values, valid, self.temperature, self.weight, None if shared else row_index)

    def query_slots(self, n: int) -> tuple[torch.Tensor, int]:
        """``(flat slot [n], m)``: row ``r`` goes to slot ``entry * m + rank of r within its entry``.

        Queries are regrouped per entry (``[nb, H, m * T, d]``) so that every entry's K/V is read in place, never
        copied per row.
        """
        if self._slots is None or self._slots[2] != n:
            dev = self.keys[0].device
            if self.row_index is None:
                entry = [0] * n if self.entries == 1 else list(range(n))
            else:
                entry = self.row_index.tolist()
            count: dict[int, int] = {}
            flat = []
            for e in entry:
                flat.append((e, count.get(e, 0)))
                count[e] = count.get(e, 0) + 1
            m = max(count.values())
            self._slots = (torch.tensor([e * m + j for e, j in flat], device=dev), m, n)
        return self._slots[0], self._slots[1]


def _valid_block_mask(valid: torch.Tensor, tq: int, offset: int | None = None):
    """FlexAttention block mask of key validity ``[nb, Tk]`` (and, with ``offset``, causality ``k <= q + offset``)."""
    from .flex import BLOCK, block_mask_from_fn

    nb, tk = valid.shape
    tail = -tk % BLOCK
    vp = torch.cat([valid, valid.new_zeros(nb, tail)], 1) if tail else valid

    def allowed(b, q, k):
        m = vp[b, k]
        return m if offset is None else m & (k <= q + offset)

    return block_mask_from_fn(allowed, nb, tq, tk, valid.device)


def _segment_partial(q, seg: KVSegment, li: int, scaling, softcap, flex_masks: dict | None = None):
    """Partial attention of queries ``[n, H, T, d]`` over one segment, the segment's K/V read without row copies.

    Rows are regrouped per segment entry into ``[nb, H, m * T, d]`` query blocks (a copy of the queries, not of the
    K/V), so ``matmul`` never broadcasts (= materialises) the keys per row.
    """
    ks, vs, sv = seg.keys[li], seg.values[li], seg.valid
    n, h, t, d = q.shape
    nb = ks.shape[0]
    smask = None if sv is None else sv[:, None, None, :]

    def attend(qq):
        if flex_masks is None:
            return attention_with_lse(qq, ks, vs, smask, scaling, temperature=seg.temperature, softcap=softcap)
        from .flex import flex_attention_call

        bm = None
        if sv is not None:
            key = (id(seg), qq.shape[2])
            if key not in flex_masks:  # None: every key valid (no mask; checked once per forward, not per layer)
                flex_masks[key] = None if bool(sv.all()) else _valid_block_mask(sv, qq.shape[2])
            bm = flex_masks[key]
        return flex_attention_call(qq, ks, vs, bm, scaling, softcap, seg.temperature, return_lse=True,
                                   dense_mask=lambda: smask)

    if seg.row_index is None and nb == n:
        return attend(q)
    slot, m = seg.query_slots(n)
    buf = q.new_zeros(nb * m, h, t, d).index_copy(0, slot, q)
    qg = buf.view(nb, m, h, t, d).transpose(1, 2).reshape(nb, h, m * t, d)
    o, lse = attend(qg)
    o = o.view(nb, h, m, t, d).transpose(1, 2).reshape(nb * m, h, t, d)[slot]
    lse = lse.view(nb, h, m, t).transpose(1, 2).reshape(nb * m, h, t)[slot]
    return o, lse


class SegmentAttention:
    """Attention spec: rows attend to read-only segments + their own KV (appended at every call, causal).

    Args:
        segments: cached segments every row sees in full (no causal mask; their positions precede the row's).
        record: keep the own K/V per layer (they become a segment / a cache for later calls).
        merge: True: partial attentions per segment merged by log-sum-exp (always exact; needed for APE's T and S);
            False/None: one SDPA call over ``[segments ; own]`` when every segment has T = S = 1 (None: automatic).
        backend: kernel of the LSE path's partial attentions: ``flex`` (one fused FlexAttention call per segment
            returning its log-sum-exp; temperature and soft-cap as ``score_mod``; compiled on CUDA), ``eager`` (the
            materialised-score :func:`attention_with_lse`) or ``auto`` (``flex`` on CUDA, else ``eager``).
    """

    def __init__(self, segments: list[KVSegment] | None = None, record: bool = True, merge: bool | None = None,
                 backend: str = "auto") -> None:
        if backend not in ("auto", "flex", "eager"):
            raise ValueError(f"unknown backend {backend!r} (auto, flex or eager)")
        self.segments = list(segments or [])
        self.record = record
        self.merge = merge
        self.backend = backend
        self._flex_masks: dict = {}  # block masks of the current forward, shared by every layer
        self.own_keys: dict[int, torch.Tensor] = {}
        self.own_values: dict[int, torch.Tensor] = {}
        self.own_valid: torch.Tensor | None = None  # [n, T_own]
        self._valid: torch.Tensor | None = None
        self.max_position = 0
        # K/V accounting in tokens (one token = its K and V in one layer; every layer holds the same count):
        # segments as stored + own K/V + per-row copies of segment K/V materialised by the call (the joint path)
        self.peak_kv_tokens = 0

    def begin(self, new_valid: torch.Tensor, max_position: int = 0) -> None:
        """Declare the validity ``[n, T_new]`` of the tokens of the next forward (padding = False)."""
        self._valid = new_valid if self.own_valid is None else torch.cat([self.own_valid, new_valid], dim=1)
        self.max_position = max_position
        self._flex_masks = {key: bm for key, bm in self._flex_masks.items() if key[0] != "own"}

    def use_flex(self, device: torch.device) -> bool:
        """Whether the LSE path runs FlexAttention on ``device`` (``backend``; ``auto``: CUDA)."""
        return self.backend == "flex" or (self.backend == "auto" and device.type == "cuda")

    def __call__(self, module, q, k, v, scaling, softcap=None):
        li = module.layer_idx
        if self._valid is None:
            raise RuntimeError("call begin(new_valid) before each forward")
        t_new = q.shape[2]
        old = self.own_keys.get(li)
        t_old = 0 if old is None else old.shape[2]
        if old is not None:
            k = torch.cat([old, k], dim=2)
            v = torch.cat([self.own_values[li], v], dim=2)
        if self.record:
            self.own_keys[li], self.own_values[li] = k, v
        valid = self._valid
        qi = torch.arange(t_new, device=q.device)[:, None] + t_old
        ki = torch.arange(t_old + t_new, device=q.device)[None, :]
        mask = (ki <= qi)[None, None] & valid[:, None, None, :]
        plain = all(seg.temperature == 1.0 and seg.weight == 1.0 for seg in self.segments)
        joint = plain and not self.merge and softcap is None  # SDPA cannot soft-cap: capped models take the LSE path
        stored = sum(seg.entries * seg.length for seg in self.segments) + k.shape[0] * k.shape[2]
        copies = sum(q.shape[0] * seg.length for seg in self.segments) if joint else 0
        self.peak_kv_tokens = max(self.peak_kv_tokens, stored + copies)
        if joint:
            return self._joint(q, k, v, mask, li, scaling)
        outs, lses, weights = [], [], []
        flex = self.use_flex(q.device)
        masks = self._flex_masks if flex else None
        for seg in self.segments:  # every segment's K/V read in place (queries regrouped per entry)
            o, lse = _segment_partial(q, seg, li, scaling, softcap, masks)
            outs.append(o)
            lses.append(lse)
            weights.append(seg.weight)
        if flex:
            from .flex import flex_attention_call

            key = ("own", t_new, t_old)
            if key not in self._flex_masks:
                self._flex_masks[key] = _valid_block_mask(valid, t_new, offset=t_old)
            o, lse = flex_attention_call(q, k, v, self._flex_masks[key], scaling, softcap, return_lse=True,
                                         dense_mask=lambda: mask)
        else:
            o, lse = attention_with_lse(q, k, v, mask, scaling, softcap=softcap)
        outs.append(o)
        lses.append(lse)
        weights.append(1.0)
        out, _ = merge_partials(outs, lses, weights if any(w != 1.0 for w in weights) else None)
        return out.transpose(1, 2).contiguous()

    def _joint(self, q, k, v, own_mask, li, scaling):
        """Exact attention over ``[segments ; own]`` in one SDPA call (plain-temperature segments: no LSE needed).

        The concatenation materialises every row's copy of the segment K/V for this layer (counted in
        ``peak_kv_tokens``); the LSE path does not.
        """
        n, tq = q.shape[0], q.shape[2]
        keys, values, masks = [], [], []
        for seg in self.segments:
            ks, vs, sv = seg.keys[li], seg.values[li], seg.valid
            if seg.row_index is not None:
                ks, vs = ks[seg.row_index], vs[seg.row_index]
                sv = None if sv is None else sv[seg.row_index]
            keys.append(ks.expand(n, -1, -1, -1))
            values.append(vs.expand(n, -1, -1, -1))
            sm = torch.ones(n, ks.shape[2], dtype=torch.bool, device=q.device) if sv is None else sv.expand(n, -1)
            masks.append(sm[:, None, None, :].expand(n, 1, tq, -1))
        keys.append(k)
        values.append(v)
        masks.append(own_mask.expand(n, 1, tq, -1))
        mask = torch.cat(masks, dim=-1)
        # a query with no visible key (padding of an empty row) reads key 0 instead of producing NaN
        empty = ~mask.any(-1, keepdim=True)
        first = torch.zeros_like(mask)
        first[..., 0] = True
        mask = mask | (empty & first)
        n_rep = q.shape[1] // k.shape[1]
        kk, vv = repeat_kv(torch.cat(keys, dim=2), n_rep), repeat_kv(torch.cat(values, dim=2), n_rep)
        out = torch.nn.functional.scaled_dot_product_attention(q, kk, vv, attn_mask=mask, scale=scaling)
        return out.transpose(1, 2).contiguous()

    def keep_rows(self, keep: torch.Tensor) -> None:
        """Drop every row not in ``keep`` (bool ``[n]``) before the next forward: its own K/V and validity go, own
        key columns no kept row sees (padding) are removed, and segment entries no kept row reads are freed
        (:meth:`KVSegment.keep_rows`). Exact for the kept rows: only keys they mask out are removed."""
        n = keep.numel()
        idx = keep.nonzero().squeeze(1)
        cols = None
        if self.own_valid is not None:
            valid = self.own_valid[idx]
            col_ok = valid.any(0)
            if not bool(col_ok.all()):
                cols = col_ok.nonzero().squeeze(1)
                valid = valid[:, cols]
            self.own_valid = valid
        for store in (self.own_keys, self.own_values):
            for li, t in store.items():
                t = t[idx]
                store[li] = t if cols is None else t[:, :, cols]
        self._flex_masks = {}
        segs = [seg.keep_rows(idx, n) for seg in self.segments]
        self.segments = [seg for seg in segs if seg is not None]

    def end(self) -> None:
        """Commit the validity of the tokens just processed (call after each forward)."""
        self.own_valid = self._valid
        self._valid = None

    def as_segment(self, temperature: float = 1.0, weight: float = 1.0) -> KVSegment:
        """The recorded own K/V as a read-only segment."""
        n = len(self.own_keys)
        return KVSegment(
            [self.own_keys[i] for i in range(n)], [self.own_values[i] for i in range(n)], self.own_valid,
            temperature, weight,
        )


def run_segment_forward(model, spec: SegmentAttention, input_ids: torch.Tensor, position_ids: torch.Tensor,
                        new_valid: torch.Tensor | None = None) -> torch.Tensor:
    """One forward of ``input_ids [n, T]`` through ``spec``; returns the last hidden states ``[n, T, D]``."""
    from .hf import run_with_spec

    spec.begin(torch.ones_like(input_ids, dtype=torch.bool) if new_valid is None else new_valid,
               int(position_ids.max()))
    hidden = run_with_spec(model, spec, position_ids, input_ids=input_ids)
    spec.end()
    return hidden
