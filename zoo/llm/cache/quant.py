"""Real low-bit storage: asymmetric min/max group quantisation with codes packed into bytes, and its inverse.

``bits`` in {1, 2, 4, 8}: ``8 // bits`` codes share a byte (the packed tensor is what is stored). Groups run along
the last axis (callers transpose to pick the axis: KIVI quantises keys per channel — groups of tokens — and values per
token — groups of channels). Scale and minimum are stored in fp16 per group:
``scale = (max − min) / (2^b − 1)``, ``q = round((x − min) / scale)`` (GEAR's formula with 2^b − 1 levels, not the
official code's ``b**2 − 1``).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["GroupQuantized", "pack_bits", "quantize_groups", "unpack_bits"]

_BITS = (1, 2, 4, 8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in ``[0, 2^bits)`` along the last axis, ``8 // bits`` per uint8 (last axis padded)."""
    if bits not in _BITS:
        raise ValueError(f"bits must be one of {_BITS}, got {bits}")
    per = 8 // bits
    codes = codes.to(torch.uint8)
    pad = (-codes.shape[-1]) % per
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    codes = codes.reshape(*codes.shape[:-1], -1, per)
    shifts = torch.arange(per, device=codes.device, dtype=torch.uint8) * bits
    return (codes << shifts).sum(-1, dtype=torch.uint8) if per > 1 else codes[..., 0]


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: the first ``n`` codes of the last axis, as uint8."""
    per = 8 // bits
    if per == 1:
        return packed[..., :n]
    shifts = torch.arange(per, device=packed.device, dtype=torch.uint8) * bits
    codes = (packed.unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*packed.shape[:-1], -1)[..., :n]


@dataclass
class GroupQuantized:
    """A tensor quantised in groups along its last axis: packed codes + fp16 scale and minimum per group."""

    packed: torch.Tensor  # uint8 [..., n_groups, ceil(g * bits / 8)]
    scale: torch.Tensor   # fp16 [..., n_groups, 1]
    minimum: torch.Tensor  # fp16 [..., n_groups, 1]
    bits: int
    group: int
    length: int  # the last axis' length before grouping

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        codes = unpack_bits(self.packed, self.bits, self.group).to(dtype)
        x = codes * self.scale.to(dtype) + self.minimum.to(dtype)
        return x.reshape(*x.shape[:-2], self.length)

    def tensors(self) -> tuple[torch.Tensor, ...]:
        return self.packed, self.scale, self.minimum


def quantize_groups(x: torch.Tensor, bits: int, group: int) -> GroupQuantized:
    """Quantise ``x`` in groups of ``group`` along its last axis (which ``group`` must divide)."""
    n = x.shape[-1]
    if n % group:
        raise ValueError(f"group size {group} does not divide the last axis ({n})")
    xg = x.reshape(*x.shape[:-1], n // group, group).float()
    lo, hi = xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True)
    lo16, scale16 = lo.half(), ((hi - lo) / (2 ** bits - 1)).half()
    # codes from the fp16 scale/min actually stored, so dequantisation error stays within scale / 2
    scale = scale16.float().clamp_min(torch.finfo(torch.float16).tiny)
    codes = ((xg - lo16.float()) / scale).round_().clamp_(0, 2 ** bits - 1)
    return GroupQuantized(pack_bits(codes, bits), scale16, lo16, bits, group, n)
