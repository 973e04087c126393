"""1-D building blocks for physiological signals (tensors are (batch, channels, time)).

``SignalResBlock`` / ``SignalSelfAttentionBlock`` are the Stable-Diffusion-VAE style blocks PPGFlowECG uses in 1-D
(GroupNorm + SiLU + wide kernels); ``BasicBlock1d`` is the ResNet basic block for ECG classifiers.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SignalResBlock(nn.Module):
    """GroupNorm → SiLU → Conv → GroupNorm → SiLU → Conv, plus a (1x1-projected) skip.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        kernel_size: odd convolution kernel (15 in PPGFlowECG).
        groups: GroupNorm groups (32 in PPGFlowECG).
    """

    def __init__(self, in_chans: int, out_chans: int, kernel_size: int = 15, groups: int = 32) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.groupnorm_1 = nn.GroupNorm(groups, in_chans)
        self.conv_1 = nn.Conv1d(in_chans, out_chans, kernel_size, padding=pad)
        self.groupnorm_2 = nn.GroupNorm(groups, out_chans)
        self.conv_2 = nn.Conv1d(out_chans, out_chans, kernel_size, padding=pad)
        self.residual_layer = nn.Identity() if in_chans == out_chans else nn.Conv1d(in_chans, out_chans, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_1(F.silu(self.groupnorm_1(x)))
        h = self.conv_2(F.silu(self.groupnorm_2(h)))
        return h + self.residual_layer(x)


class SignalSelfAttentionBlock(nn.Module):
    """Single-head self-attention over time with a residual connection.

    The reference implementation builds a GroupNorm in this block but never applies it; we apply none and hold
    no such parameter (see the PPGFlowECG model card).

    Args:
        chans: channels (the attention width).
        num_heads: attention heads (1 in PPGFlowECG).
    """

    def __init__(self, chans: int, num_heads: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj = nn.Linear(chans, 3 * chans)
        self.out_proj = nn.Linear(chans, chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t = x.shape
        h = x.transpose(1, 2)
        q, k, v = self.in_proj(h).view(b, t, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        h = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, c)
        return self.out_proj(h).transpose(1, 2) + x


class Downsample1d(nn.Module):
    """Stride-2 convolution preceded by one sample of right padding (length L → L/2 for even L)."""

    def __init__(self, chans: int, kernel_size: int = 15) -> None:
        super().__init__()
        self.conv = nn.Conv1d(chans, chans, kernel_size, stride=2, padding=(kernel_size - 3) // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1)))


class BasicBlock1d(nn.Module):
    """ResNet basic block in 1-D: conv-BN-ReLU-conv-BN plus a (strided 1x1) shortcut.

    Args:
        in_chans: input channels.
        out_chans: output channels.
        stride: temporal stride of the first convolution.
        kernel_size: odd kernel size.
    """

    def __init__(self, in_chans: int, out_chans: int, stride: int = 1, kernel_size: int = 7) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.conv1 = nn.Conv1d(in_chans, out_chans, kernel_size, stride=stride, padding=pad, bias=False)
        self.bn1 = nn.BatchNorm1d(out_chans)
        self.conv2 = nn.Conv1d(out_chans, out_chans, kernel_size, padding=pad, bias=False)
        self.bn2 = nn.BatchNorm1d(out_chans)
        self.downsample = None
        if stride != 1 or in_chans != out_chans:
            self.downsample = nn.Sequential(
                nn.Conv1d(in_chans, out_chans, 1, stride=stride, bias=False), nn.BatchNorm1d(out_chans)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        h = self.bn2(self.conv2(h))
        return F.relu(h + (x if self.downsample is None else self.downsample(x)))
