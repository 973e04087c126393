"""2-D rotary position embedding (RoPE) with optional position interpolation.

Half of each head's channels rotate with the token's row (y) coordinate, the other half with its column (x)
coordinate; inside each half the channels pair as (i, i + d/2) (the "rotate-half" layout that the CroCo /
DUSt3R / MASt3R / Dens3R checkpoints use).

Position interpolation (Dens3R Eq. 2, R'(x, m) = R(x, m * L / L')): integer token coordinates are rescaled to
a fixed range, ``t = m * ref_len / L`` with ``L`` = the longer side of the token grid, so a 1024-px image
(64 tokens a side) spans the same 0-32 position range as the 512-px training resolution (32 tokens).
"""
from __future__ import annotations

import torch
from torch import nn


def grid_positions(batch: int, h: int, w: int, device: torch.device | str | None = None) -> torch.Tensor:
    """Integer (y, x) coordinates of an ``h x w`` token grid in row-major order: ``(batch, h * w, 2)``."""
    ys, xs = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.stack([ys.flatten(), xs.flatten()], dim=-1).unsqueeze(0).expand(batch, -1, -1)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


class RoPE2D(nn.Module):
    """Rotary embedding over (y, x) token coordinates.

    Args:
        freq: frequency base (100 in DUSt3R/MASt3R/Dens3R's ``RoPE100``).
        interpolate: rescale coordinates so the longer grid side spans ``[0, ref_len)`` (Dens3R position
            interpolation); False gives plain RoPE on integer coordinates.
        ref_len: the position range of the interpolation (32 = tokens per side at 512 px with patch 16).
        jitter: in training mode, add uniform noise of +-half an interpolated step to each coordinate value
            (the code's optional "fuzzy" ``t_rand`` positions; off by default).
        f0: scale applied to all frequencies (1.0 in the released code).
    """

    def __init__(
        self, freq: float = 100.0, interpolate: bool = True, ref_len: float = 32.0, jitter: bool = False, f0: float = 1.0
    ) -> None:
        super().__init__()
        self.freq = float(freq)
        self.interpolate = interpolate
        self.ref_len = float(ref_len)
        self.jitter = jitter
        self.f0 = float(f0)

    def extra_repr(self) -> str:
        return f"freq={self.freq}, interpolate={self.interpolate}, ref_len={self.ref_len}, jitter={self.jitter}"

    def scaled_positions(self, positions: torch.Tensor) -> torch.Tensor:
        """Map integer (y, x) coordinates ``(B, N, 2)`` to the (possibly interpolated) float positions."""
        pos = positions.float()
        if not self.interpolate:
            return pos
        # L = longest side in tokens (max coordinate + 1), as in the released code; one value per call
        length = positions.max().clamp(min=0).float() + 1.0
        step = self.ref_len / length
        pos = pos * step
        if self.jitter and self.training:
            # one offset per distinct coordinate value (like a jittered position table), +-half a step
            n = int(positions.max().item()) + 1
            table = (torch.rand(n, device=pos.device) - 0.5) * step
            pos = pos + table[positions.long().clamp(min=0)]
        return pos

    def cos_sin(self, positions: torch.Tensor, head_dim: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """``cos``/``sin`` of shape ``(B, 1, N, head_dim)`` for :meth:`rotate`."""
        if head_dim % 4:
            raise ValueError(f"RoPE2D needs a head dim divisible by 4, got {head_dim}")
        d = head_dim // 2  # channels per axis
        inv_freq = self.f0 / (self.freq ** (torch.arange(0, d, 2, device=positions.device).float() / d))
        pos = self.scaled_positions(positions)  # B, N, 2
        ang = pos[..., None] * inv_freq  # B, N, 2, d/2
        ang = torch.cat((ang, ang), dim=-1)  # B, N, 2, d (rotate-half layout)
        ang = torch.cat((ang[:, :, 0], ang[:, :, 1]), dim=-1)  # B, N, head_dim: [y-half | x-half]
        return ang.cos().to(dtype)[:, None], ang.sin().to(dtype)[:, None]

    @staticmethod
    def rotate(tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """Rotate ``tokens`` ``(B, heads, N, head_dim)`` with precomputed ``cos``/``sin``."""
        y, x = tokens.chunk(2, dim=-1)
        cy, cx = cos.chunk(2, dim=-1)
        sy, sx = sin.chunk(2, dim=-1)
        return torch.cat((y * cy + _rotate_half(y) * sy, x * cx + _rotate_half(x) * sx), dim=-1)

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate ``tokens`` ``(B, heads, N, head_dim)`` by their (y, x) ``positions`` ``(B, N, 2)``."""
        cos, sin = self.cos_sin(positions, tokens.shape[-1], tokens.dtype)
        return self.rotate(tokens, cos, sin)
