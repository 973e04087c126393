"""The packed shared-prefix layout: one prefix and G ragged suffixes per row (Prefix Grouper, spec steps 1-2, 4, 7).

Row ``i`` of a packed batch is ``[prefix_i, suffix_i1, ..., suffix_iG_i, pad...]`` (right padding). The layout holds
every index map the attention needs, computed once per batch and shared by all layers:

* ``position_ids`` ``[b, L]``: prefix tokens ``0..P_i-1``; every suffix restarts at ``P_i`` (spec step 2);
* ``prefix_index`` ``[b, P_max]`` and ``suffix_index`` ``[B2, S_max]``: flat packed positions (``row * L + t``) of
  the prefix tokens and of each suffix's tokens (padding slots point at a valid token and are masked);
* ``group_index`` ``[b * L]``: for every packed slot, the row of ``cat([prefix rows, suffix rows, zero])`` holding its
  attention output (the "group" scatter written as a gather, so autograd sums gradients correctly);
* explicit boolean masks (True = attend): never SDPA ``is_causal`` with ``q_len != k_len`` (it aligns top-left).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class PrefixLayout:
    """Index maps and masks of a packed ``[prefix ; suffix_1 ; ... ; suffix_G]`` batch.

    Build it with :meth:`PrefixLayout.build`; all tensors live on ``device``.
    """

    prefix_lens: list[int]
    suffix_lens: list[list[int]]
    length: int
    position_ids: torch.Tensor
    valid: torch.Tensor
    prefix_index: torch.Tensor
    suffix_index: torch.Tensor
    suffix_row: torch.Tensor
    group_index: torch.Tensor
    suffix_valid: torch.Tensor
    prefix_valid: torch.Tensor
    cache: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------------------------------------ build
    @classmethod
    def build(
        cls, prefix_lens: Sequence[int], suffix_lens: Sequence[Sequence[int]], device: torch.device | str = "cpu"
    ) -> PrefixLayout:
        """Layout for ``b`` rows with prefix lengths ``prefix_lens[i]`` and suffix lengths ``suffix_lens[i][j]``."""
        prefix_lens = [int(p) for p in prefix_lens]
        suffix_lens = [[int(s) for s in row] for row in suffix_lens]
        if len(prefix_lens) != len(suffix_lens):
            raise ValueError("prefix_lens and suffix_lens need one entry per row")
        if any(p < 1 for p in prefix_lens) or any(len(r) < 1 or min(r) < 1 for r in suffix_lens):
            raise ValueError("every prefix and every suffix needs at least one token, and every row one suffix")
        b = len(prefix_lens)
        length = max(p + sum(r) for p, r in zip(prefix_lens, suffix_lens))
        p_max = max(prefix_lens)
        s_max = max(max(r) for r in suffix_lens)
        n_suffix = sum(len(r) for r in suffix_lens)

        position_ids = torch.zeros(b, length, dtype=torch.long)
        valid = torch.zeros(b, length, dtype=torch.bool)
        prefix_index = torch.zeros(b, p_max, dtype=torch.long)
        prefix_valid = torch.zeros(b, p_max, dtype=torch.bool)
        suffix_index = torch.zeros(n_suffix, s_max, dtype=torch.long)
        suffix_valid = torch.zeros(n_suffix, s_max, dtype=torch.bool)
        suffix_row = torch.zeros(n_suffix, dtype=torch.long)
        zero_row = b * p_max + n_suffix * s_max  # index of the all-zero row appended for padding slots
        group_index = torch.full((b, length), zero_row, dtype=torch.long)
        k = 0
        for i, (p, row) in enumerate(zip(prefix_lens, suffix_lens)):
            position_ids[i, :p] = torch.arange(p)
            valid[i, :p] = True
            prefix_index[i, :p] = i * length + torch.arange(p)
            prefix_index[i, p:] = i * length  # padding slots read token 0 of the row (masked)
            prefix_valid[i, :p] = True
            group_index[i, :p] = i * p_max + torch.arange(p)
            start = p
            for s in row:
                position_ids[i, start : start + s] = p + torch.arange(s)  # every suffix restarts at P_i
                valid[i, start : start + s] = True
                suffix_index[k, :s] = i * length + start + torch.arange(s)
                suffix_index[k, s:] = i * length + start
                suffix_valid[k, :s] = True
                suffix_row[k] = i
                group_index[i, start : start + s] = b * p_max + k * s_max + torch.arange(s)
                start += s
                k += 1
        to = dict(device=device)
        return cls(
            prefix_lens=prefix_lens,
            suffix_lens=suffix_lens,
            length=length,
            position_ids=position_ids.to(**to),
            valid=valid.to(**to),
            prefix_index=prefix_index.to(**to),
            suffix_index=suffix_index.to(**to),
            suffix_row=suffix_row.to(**to),
            group_index=group_index.reshape(-1).to(**to),
            suffix_valid=suffix_valid.to(**to),
            prefix_valid=prefix_valid.to(**to),
        )

    # ------------------------------------------------------------------------------------------ properties
    @property
    def batch_size(self) -> int:
        return len(self.prefix_lens)

    @property
    def num_suffixes(self) -> int:
        return self.suffix_index.shape[0]

    @property
    def prefix_max(self) -> int:
        return self.prefix_index.shape[1]

    @property
    def suffix_max(self) -> int:
        return self.suffix_index.shape[1]

    @property
    def device(self) -> torch.device:
        return self.position_ids.device

    @property
    def max_position(self) -> int:
        """The largest position id of the batch, ``max_ij(P_i + S_ij) - 1`` (suffixes restart at ``P_i``)."""
        return max(p + max(r) for p, r in zip(self.prefix_lens, self.suffix_lens)) - 1

    @property
    def uniform_prefix(self) -> bool:
        """All rows share one prefix length: the suffix attention is then a plain bottom-right causal pattern."""
        return min(self.prefix_lens) == max(self.prefix_lens)

    # ------------------------------------------------------------------------------------------------ masks
    def prefix_mask(self) -> torch.Tensor:
        """``[b, 1, P_max, P_max]``: causal among the valid prefix keys of the row."""
        if "prefix_mask" not in self.cache:
            t = torch.arange(self.prefix_max, device=self.device)
            causal = t[None, :] <= t[:, None]
            self.cache["prefix_mask"] = (causal[None] & self.prefix_valid[:, None, :])[:, None]
        return self.cache["prefix_mask"]

    def suffix_mask(self) -> torch.Tensor:
        """``[B2, 1, S_max, P_max + S_max]``: all valid prefix keys, then own suffix keys ``0..t`` (bottom-right)."""
        if "suffix_mask" not in self.cache:
            t = torch.arange(self.suffix_max, device=self.device)
            causal = (t[None, :] <= t[:, None])[None] & self.suffix_valid[:, None, :]
            pre = self.prefix_valid[self.suffix_row][:, None, :].expand(-1, self.suffix_max, -1)
            self.cache["suffix_mask"] = torch.cat([pre, causal], dim=-1)[:, None]
        return self.cache["suffix_mask"]

    def suffix_self_mask(self) -> torch.Tensor:
        """``[B2, 1, S_max, S_max]``: own suffix keys ``0..t`` only (the second half of the LSE-merge path)."""
        if "suffix_self_mask" not in self.cache:
            t = torch.arange(self.suffix_max, device=self.device)
            self.cache["suffix_self_mask"] = ((t[None, :] <= t[:, None])[None] & self.suffix_valid[:, None, :])[:, None]
        return self.cache["suffix_self_mask"]

    def packed_prefix_mask(self) -> torch.Tensor:
        """``[b, 1, L, P_max]``: every packed query against the row's prefix keys (first half of the LSE merge).

        Prefix queries are causal; suffix (and padding) queries see every valid prefix key.
        """
        if "packed_prefix_mask" not in self.cache:
            t = torch.arange(self.length, device=self.device)
            k = torch.arange(self.prefix_max, device=self.device)
            p = torch.tensor(self.prefix_lens, device=self.device)
            in_prefix = t[None, :] < p[:, None]  # [b, L]
            causal = k[None, None, :] <= t[None, :, None]  # [1, L, P]
            m = torch.where(in_prefix[:, :, None], causal, torch.ones_like(causal)) & self.prefix_valid[:, None, :]
            self.cache["packed_prefix_mask"] = m[:, None]
        return self.cache["packed_prefix_mask"]

    def dense_mask(self, kind: str = "causal") -> torch.Tensor:
        """``[b, 1, L, L]`` mask over the packed row.

        Args:
            kind: ``causal`` (decoder: prefix causal, suffix sees prefix + own past), ``arrow`` (Uni-Encoder as
                released: the prefix/context sees every valid token, candidates see the context and themselves,
                bidirectionally) or ``arrow_context_masked`` (context sees only the context; candidates as in arrow).
        """
        key = f"dense_{kind}"
        if key not in self.cache:
            seg = self.segments()  # [b, L]: -1 pad, 0 prefix, j+1 suffix j
            q, k = seg[:, :, None], seg[:, None, :]
            t = torch.arange(self.length, device=self.device)
            causal = (t[None, :] <= t[:, None])[None]
            same_or_prefix = (k == 0) | (q == k)
            valid_k = k >= 0
            if kind == "causal":
                m = same_or_prefix & causal & valid_k
            elif kind == "arrow":
                m = torch.where(q == 0, valid_k, same_or_prefix & valid_k)
            elif kind == "arrow_context_masked":
                m = torch.where(q == 0, k == 0, same_or_prefix & valid_k)
            else:
                raise ValueError(f"unknown mask kind {kind!r}")
            m = m | ((q < 0) & (t[None, None, :] == 0))  # padding queries see token 0 (no empty softmax rows)
            self.cache[key] = m[:, None]
        return self.cache[key]

    def mask_fn(self, kind: str = "causal"):
        """The mask of :meth:`dense_mask` as an elementwise function ``allowed(b, q, k) -> bool`` of broadcastable
        index tensors (FlexAttention's ``mask_mod`` without the head argument); defined for indices up to the length
        rounded up to FlexAttention's block size (the padded tail is padding)."""
        from .flex import BLOCK

        if kind not in ("causal", "arrow", "arrow_context_masked"):
            raise ValueError(f"unknown mask kind {kind!r}")
        key = "segments_padded"
        if key not in self.cache:
            seg = self.segments()
            tail = -self.length % BLOCK
            self.cache[key] = torch.cat([seg, seg.new_full((self.batch_size, tail), -1)], 1) if tail else seg
        segp = self.cache[key]

        def allowed(b, q, k):
            sq, sk = segp[b, q], segp[b, k]
            valid_k = sk >= 0
            same_or_prefix = (sk == 0) | (sq == sk)
            if kind == "causal":
                m = same_or_prefix & (k <= q) & valid_k
            elif kind == "arrow":
                m = torch.where(sq == 0, valid_k, same_or_prefix & valid_k)
            else:
                m = torch.where(sq == 0, sk == 0, same_or_prefix & valid_k)
            return m | ((sq < 0) & (k == 0))  # padding queries see token 0 (no empty softmax rows)

        return allowed

    def block_mask(self, kind: str = "causal"):
        """FlexAttention ``BlockMask`` ``[b, 1, L, L]`` of :meth:`mask_fn` (built once, shared by every layer)."""
        key = f"block_{kind}"
        if key not in self.cache:
            from .flex import block_mask_from_fn

            self.cache[key] = block_mask_from_fn(self.mask_fn(kind), self.batch_size, self.length, self.length,
                                                 self.device)
        return self.cache[key]

    def segments(self) -> torch.Tensor:
        """``[b, L]`` segment ids: -1 padding, 0 prefix, ``j + 1`` for suffix ``j`` of the row."""
        if "segments" not in self.cache:
            seg = torch.full((self.batch_size, self.length), -1, dtype=torch.long)
            for i, (p, row) in enumerate(zip(self.prefix_lens, self.suffix_lens)):
                seg[i, :p] = 0
                start = p
                for j, s in enumerate(row):
                    seg[i, start : start + s] = j + 1
                    start += s
            self.cache["segments"] = seg.to(self.device)
        return self.cache["segments"]

    # ----------------------------------------------------------------------------------------- gather/scatter
    def ungroup(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a packed ``[b, H, L, d]`` tensor into prefix ``[b, H, P_max, d]`` and suffix ``[B2, H, S_max, d]``.

        Pure index gathers: autograd's backward is a scatter-add, so a prefix token read by several suffix rows
        receives the sum of their gradients.
        """
        b, h, length, d = x.shape
        flat = x.transpose(1, 2).reshape(b * length, h, d)
        pre = flat[self.prefix_index.reshape(-1)].view(b, self.prefix_max, h, d).transpose(1, 2)
        suf = flat[self.suffix_index.reshape(-1)].view(self.num_suffixes, self.suffix_max, h, d).transpose(1, 2)
        return pre, suf

    def group(self, prefix_out: torch.Tensor, suffix_out: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`ungroup` for outputs: ``[b, H, P_max, d]`` + ``[B2, H, S_max, d]`` -> ``[b, L, H, d]``."""
        h, d = prefix_out.shape[1], prefix_out.shape[-1]
        rows = torch.cat(
            [
                prefix_out.transpose(1, 2).reshape(-1, h, d),
                suffix_out.transpose(1, 2).reshape(-1, h, d),
                prefix_out.new_zeros(1, h, d),
            ]
        )
        return rows[self.group_index].view(self.batch_size, self.length, h, d)

    def scatter_suffix(self, suffix_x: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """``[B2, H, S_max, ...]`` -> packed ``[b, H, L, ...]``; non-suffix slots get ``fill``."""
        b2, h = suffix_x.shape[:2]
        rest = suffix_x.shape[3:]
        n_pre = self.batch_size * self.prefix_max
        flat = suffix_x.transpose(1, 2).reshape(b2 * self.suffix_max, h, *rest)
        filler = flat.new_full((1, h, *rest), fill)
        idx = (self.group_index - n_pre).clamp(min=-1)
        idx = torch.where((idx >= 0) & (idx < flat.shape[0]), idx, torch.full_like(idx, flat.shape[0]))
        rows = torch.cat([flat, filler])[idx]
        return rows.view(self.batch_size, self.length, h, *rest).transpose(1, 2)

    # ------------------------------------------------------------------------------------------- packing
    def pack(self, prefixes: Sequence[torch.Tensor], suffixes: Sequence[Sequence[torch.Tensor]], pad: int = 0):
        """Pack token ids (or ``[n, D]`` embeddings) into ``[b, L]`` (``[b, L, D]``) right-padded rows."""
        first = prefixes[0]
        out = first.new_full((self.batch_size, self.length, *first.shape[1:]), pad)
        for i, (p, row) in enumerate(zip(prefixes, suffixes)):
            out[i, : p.shape[0]] = p
            start = p.shape[0]
            for s in row:
                out[i, start : start + s.shape[0]] = s
                start += s.shape[0]
        return out

    def suffix_targets_index(self) -> torch.Tensor:
        """``[B2, S_max]`` flat packed positions whose outputs predict suffix tokens ``0..S_j-1``.

        The first suffix token is predicted by the last prefix token (``include_prefix_last``), token ``t > 0``
        by suffix token ``t - 1``.
        """
        if "targets_index" not in self.cache:
            p = torch.tensor(self.prefix_lens, device=self.device)[self.suffix_row]
            row_start = self.suffix_row * self.length
            prev = self.suffix_index - 1
            first = row_start + p - 1
            idx = torch.cat([first[:, None], prev[:, 1:]], dim=1)
            self.cache["targets_index"] = torch.where(self.suffix_valid, idx, first[:, None].expand_as(idx))
        return self.cache["targets_index"]
