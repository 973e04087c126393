"""DPT dense-prediction head for ViT token sequences (Ranftl et al., "Vision Transformers for Dense Prediction").

Four token maps taken at ``hooks`` of a list of per-layer outputs are *reassembled* into a 4-level pyramid
(x4, x2, x1 and x1/2 of the token grid), *projected* to ``feature_dim``, *fused* coarse-to-fine by residual
conv units with x2 bilinear upsampling, and an *output* convolution stack upsamples x2 once more, so a
patch-16 token grid comes back at full pixel resolution. This is the head DUSt3R/MASt3R/Dens3R use
(hooks ``[0, L/2, 3L/4, L]`` over ``[encoder output, decoder layer 1..L]``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class ResidualConvUnit(nn.Module):
    """``x + conv(relu(conv(relu(x))))`` (3x3 convs, no normalisation)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Add the (refined) skip feature, refine, upsample x2 (bilinear, align_corners) and mix with a 1x1 conv."""

    def __init__(self, dim: int, with_skip: bool = True) -> None:
        super().__init__()
        self.res_skip = ResidualConvUnit(dim) if with_skip else None
        self.res_out = ResidualConvUnit(dim)
        self.out_conv = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if skip is not None:
            assert self.res_skip is not None
            x = x[..., : skip.shape[-2], : skip.shape[-1]] + self.res_skip(skip)
        x = self.res_out(x)
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT head: list of ``(B, N, C_i)`` token maps -> ``(B, out_channels, H, W)`` at pixel resolution.

    Args:
        in_dims: channel count of each hooked token map (4 values).
        out_channels: output channels.
        hooks: indices into the list of per-layer token maps passed to ``forward``.
        patch_size: token patch size in pixels (the pyramid is built for 16).
        layer_dims: channels of the four reassembled pyramid levels.
        feature_dim: channels of the fusion path.
        last_dim: channels before the final 1x1 output conv.
    """

    def __init__(
        self,
        in_dims: Sequence[int],
        out_channels: int,
        hooks: Sequence[int],
        patch_size: int = 16,
        layer_dims: Sequence[int] = (96, 192, 384, 768),
        feature_dim: int = 256,
        last_dim: int = 128,
    ) -> None:
        super().__init__()
        if len(in_dims) != 4 or len(hooks) != 4 or len(layer_dims) != 4:
            raise ValueError("DPTHead needs exactly 4 in_dims, hooks and layer_dims")
        if patch_size != 16:
            raise ValueError(f"DPTHead's x4/x2/x1/x0.5 pyramid + 4 x2 fusions + x2 output assume patch 16, got {patch_size}")
        self.hooks = list(hooks)
        self.patch_size = patch_size
        ld = list(layer_dims)
        # reassemble: 1x1 projection, then resample the token grid to x4, x2, x1, x1/2 (DPT Sec. 3)
        self.reassemble = nn.ModuleList([
            nn.Sequential(nn.Conv2d(in_dims[0], ld[0], 1), nn.ConvTranspose2d(ld[0], ld[0], 4, stride=4)),
            nn.Sequential(nn.Conv2d(in_dims[1], ld[1], 1), nn.ConvTranspose2d(ld[1], ld[1], 2, stride=2)),
            nn.Sequential(nn.Conv2d(in_dims[2], ld[2], 1)),
            nn.Sequential(nn.Conv2d(in_dims[3], ld[3], 1), nn.Conv2d(ld[3], ld[3], 3, stride=2, padding=1)),
        ])
        self.project = nn.ModuleList([nn.Conv2d(d, feature_dim, 3, padding=1, bias=False) for d in ld])
        # fusion[i] consumes level i; the coarsest has no skip input (so no skip unit: no unused parameters)
        self.fusion = nn.ModuleList([FusionBlock(feature_dim, with_skip=i < 3) for i in range(4)])
        self.output = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(last_dim, out_channels, 1),
        )

    def forward(self, tokens: Sequence[torch.Tensor], image_size: tuple[int, int]) -> torch.Tensor:
        """Args:
            tokens: per-layer token maps ``(B, N, C)``; ``tokens[hooks[i]]`` feeds level ``i``.
            image_size: ``(H, W)`` in pixels (multiples of the patch size).
        """
        h, w = image_size[0] // self.patch_size, image_size[1] // self.patch_size
        feats = []
        for i, hook in enumerate(self.hooks):
            t = tokens[hook]
            b, n, c = t.shape
            if n != h * w:
                raise ValueError(f"DPTHead: {n} tokens at hook {hook} do not form the {h}x{w} grid of {image_size}")
            x = t.transpose(1, 2).reshape(b, c, h, w)
            feats.append(self.project[i](self.reassemble[i](x)))
        # coarse to fine; the x1/2 level is upsampled back to the token grid and cropped for odd sizes
        path = self.fusion[3](feats[3])
        path = path[..., : feats[2].shape[-2], : feats[2].shape[-1]]
        path = self.fusion[2](path, feats[2])
        path = self.fusion[1](path, feats[1])
        path = self.fusion[0](path, feats[0])
        return self.output(path)
