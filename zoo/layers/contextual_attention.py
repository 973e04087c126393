"""Contextual attention: fill holes in a feature map with a soft mix of the known patches that match best.

The layer of DeepFill v1 ("Generative Image Inpainting with Contextual Attention", Yu et al., CVPR 2018) and of
PEPSI's contextual attention module (CAM, Sagong et al., CVPR 2019, Sec. 3.2), batched (no per-sample loop):

1. every ``k x k`` patch of the background (the known features) becomes a candidate (``unfold``, stride ``stride``);
2. every foreground position is compared with every candidate: cosine similarity (DeepFill) or PEPSI's
   Euclidean variant ``-tanh(standardise(||f||^2 + ||b||^2 - 2<f, b>))``;
3. a softmax over candidates with the scale ``scale`` (lambda = 10 in DeepFill, 50 in PEPSI);
4. the raw candidate patches are pasted back weighted by the attention (a transposed convolution, here ``fold``)
   and divided by ``k^2`` (each output pixel is covered by ``k^2`` pasted patches).

Scores are computed in float32 even under autocast (the Euclidean form subtracts large squared norms).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ContextualAttention"]


class ContextualAttention(nn.Module):
    """Patch-matching attention from the foreground features to the known background patches (no parameters).

    Args:
        kernel_size: side ``k`` of the matched patches (odd).
        stride: stride between candidate background patches (1 = every valid patch).
        scale: softmax scale (inverse temperature) applied to the similarity scores.
        similarity: ``'cosine'`` (DeepFill) or ``'euclidean'`` (PEPSI: standardised squared distance through
            ``-tanh``).
        exclude_hole_patches: give zero attention to candidate patches that overlap the hole (DeepFill).
            PEPSI keeps them (they are zeros after masking), so its CAM sets this to False.
        eps: numerical floor for norms and standard deviations.
    """

    def __init__(
        self,
        kernel_size: int = 3,
        stride: int = 1,
        scale: float = 10.0,
        similarity: Literal["cosine", "euclidean"] = "cosine",
        exclude_hole_patches: bool = True,
        eps: float = 1e-8,
    ) -> None:
        super().__init__()
        if kernel_size % 2 != 1:
            raise ValueError(f"kernel_size must be odd, got {kernel_size}")
        if similarity not in ("cosine", "euclidean"):
            raise ValueError(f"similarity must be 'cosine' or 'euclidean', got {similarity!r}")
        self.kernel_size = kernel_size
        self.stride = stride
        self.scale = scale
        self.similarity = similarity
        self.exclude_hole_patches = exclude_hole_patches
        self.eps = eps

    def extra_repr(self) -> str:
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, scale={self.scale}, "
                f"similarity={self.similarity!r}, exclude_hole_patches={self.exclude_hole_patches}")

    def candidate_grid(self, height: int, width: int) -> tuple[int, int]:
        """Rows and columns of the candidate-patch grid for a ``height x width`` background."""
        k, s = self.kernel_size, self.stride
        return (height - k) // s + 1, (width - k) // s + 1

    def forward(
        self,
        foreground: torch.Tensor,
        background: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        return_attention: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Attend from every foreground position to the background patches.

        Args:
            foreground: (B, C, H, W) features whose patches query.
            background: (B, C, H, W) features whose patches are matched and pasted (default: ``foreground``).
            mask: (B, 1, h, w), 1 = hole; nearest-resized to (H, W). The background is zeroed in the hole.
            return_attention: also return the attention weights.

        Returns:
            (B, C, H, W) the pasted patches at every position (callers keep the known region themselves), and
            with ``return_attention`` the weights (B, H*W, L) over the ``L`` candidates, laid out row-major on
            :meth:`candidate_grid` (candidate ``l`` is the patch centred at row ``l // cols``, column
            ``l % cols`` of the grid, offset by ``k // 2``).
        """
        if background is None:
            background = foreground
        if foreground.shape != background.shape:
            raise ValueError(f"foreground {tuple(foreground.shape)} and background {tuple(background.shape)} differ")
        h, w = foreground.shape[-2:]
        k, pad = self.kernel_size, self.kernel_size // 2
        if h < k or w < k:
            raise ValueError(f"feature map {h}x{w} is smaller than the {k}x{k} patch")
        hole = None
        if mask is not None:
            hole = F.interpolate(mask.to(background.dtype), size=(h, w), mode="nearest")
            background = background * (1.0 - hole)
        # candidates: raw background patches (B, C*k*k, L)
        bg_patches = F.unfold(background, k, stride=self.stride)
        # queries: one patch per foreground position, zero padded ("SAME") (B, C*k*k, H*W)
        fg_patches = F.unfold(foreground, k, padding=pad)
        with torch.autocast(foreground.device.type, enabled=False):
            q, kk = fg_patches.float(), bg_patches.float()
            dots = torch.bmm(q.transpose(1, 2), kk)  # (B, HW, L)
            if self.similarity == "cosine":
                qn = q.pow(2).sum(1).clamp_min(self.eps).sqrt()  # (B, HW)
                kn = kk.pow(2).sum(1).clamp_min(self.eps).sqrt()  # (B, L)
                scores = dots / (qn[:, :, None] * kn[:, None, :])
            else:  # PEPSI: squared distance, standardised over the candidates, through -tanh
                dist = q.pow(2).sum(1)[:, :, None] + kk.pow(2).sum(1)[:, None, :] - 2.0 * dots
                mean = dist.mean(-1, keepdim=True)
                std = (dist - mean).pow(2).mean(-1, keepdim=True).add(self.eps).sqrt()
                scores = -torch.tanh((dist - mean) / std)
            logits = self.scale * scores
            if self.exclude_hole_patches and hole is not None:
                hole_frac = F.unfold(hole.float(), k, stride=self.stride).mean(1)  # (B, L)
                invalid = hole_frac > 0
                # a sample whose every candidate touches the hole falls back to attending to all of them
                invalid = invalid & ~invalid.all(-1, keepdim=True)
                logits = logits.masked_fill(invalid[:, None, :], float("-inf"))
            attn = torch.softmax(logits, dim=-1)
        attn = attn.to(background.dtype)
        # paste back: column j of (patches @ attn^T) is the mix of candidate patches for position j
        cols = torch.bmm(bg_patches, attn.transpose(1, 2))  # (B, C*k*k, HW)
        out = F.fold(cols, (h, w), k, padding=pad) / (k * k)
        if return_attention:
            return out, attn
        return out
