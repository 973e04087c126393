"""PEPSI and Diet-PEPSI (PEPSI++): fast inpainting with one shared encoder and parallel decoding paths.

Sagong et al., "PEPSI: Fast Image Inpainting with Parallel Decoding Network", CVPR 2019, and Shin et al.,
"PEPSI++: Fast and Lightweight Network for Image Inpainting", IEEE TNNLS 32(1), 2021 (arXiv 1905.09010).

One encoder produces features ``F``; the same decoder runs twice (Sec. 3.1): on ``F`` (the coarse path, a training
aid only) and on ``CAM(F)`` (the inpainting path), where the contextual attention module fills the hole features
with known patches. Diet-PEPSI replaces the encoder's four distinct dilated convolutions by rate-adaptive dilated
convolutions: one weight tensor applied at every dilation rate, with a rate-specific scale and shift (PEPSI++).
The region ensemble discriminator (RED) scores every cell of a coarse grid separately with spectral norm.

Layer shapes, padding, initialisation and the CAM follow the official TensorFlow code (PEPSI only); see
``MODEL_CARD['deviations']`` for everything that does not.

Public API::

    g = zoo.create_model('pepsi')                 # or 'diet_pepsi', 'pepsi_tiny', 'diet_pepsi_tiny'
    out = g(image, mask)                          # image in [-1, 1] (B,3,H,W); mask (B,1,H,W), 1 = hole
    out.inpainted, out.coarse, out.composite      # see PEPSIOutput
    d = zoo.create_model('pepsi_red')             # region ensemble discriminator, (B,3,256,256) -> (B,1,4,4)
"""
from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from timm.layers import pad_same
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm

from ._builder import build_model
from ._registry import register_model
from .layers.contextual_attention import ContextualAttention

__all__ = [
    "MODEL_CARD",
    "PEPSI",
    "PEPSIContextualBlock",
    "PEPSIOutput",
    "RateAdaptiveDilatedConv",
    "RegionEnsembleDiscriminator",
    "checkpoint_filter_fn",
    "convert_official_checkpoint",
]

MODEL_CARD: dict[str, Any] = {
    "paper": (
        "PEPSI++: Fast and Lightweight Network for Image Inpainting (Shin, Sagong, Yeo, Kim, Ko; IEEE TNNLS "
        "32(1):252-265, 2021); PEPSI: Fast Image Inpainting with Parallel Decoding Network (Sagong et al., CVPR 2019)"
    ),
    "url": "https://arxiv.org/abs/1905.09010",
    "code": (
        "https://github.com/Forty-lock/PEPSI-Fast_image_inpainting_with_parallel_decoding_network "
        "(TensorFlow 1, PEPSI only, MIT; no released weights)"
    ),
    "bench_config": "configs/pepsi/celebahq.yaml",
    "license": "MIT (official code); no weights are published",
    # 3.66M is computed from the layer shapes of the official code (generator = encoder + decoder + CAM 1x1), not
    # printed in the paper: the PEPSI++ tables (and a Diet-PEPSI count) could not be read, so diet_pepsi has none.
    "reported_params_m": {"pepsi": 3.66, "pepsi_red": 7.6},
    "deviations": [
        (
            "reported_params_m for pepsi (3.66M) and pepsi_red (7.6M) are computed from the official code's layer "
            "shapes, not paper figures; the paper's parameter tables were not available, so diet_pepsi has no "
            "reference count (ours: 1.89M generator, 0.52x PEPSI)."
        ),
        (
            "Diet-PEPSI's rate-adaptive dilated convolution (RADC) is an assumption: the official code has no "
            "Diet-PEPSI. We share ONE 3x3 weight tensor (no bias) across the four dilated layers (rates 2, 4, 8, 16) "
            "and give each rate its own per-channel scale and shift on the convolution output (y_r = gamma_r * (W *_r"
            " x) + beta_r, then ELU). Channel widths and the number of RADC layers are those of PEPSI."
        ),
        (
            "CAM similarity: the reusable zoo.layers.contextual_attention.ContextualAttention defaults to DeepFill's "
            "cosine similarity; PEPSI's CAM uses the official code's Euclidean variant (-tanh of the standardised "
            "squared distance, lambda = 50; model_kwargs cam_similarity='cosine' switches). Hole patches stay "
            "candidates, as upstream."
        ),
        (
            "API mask convention is 1 = hole (B,1,H,W); internally the official convention (1 = known, repeated to 3 "
            "channels, hole pixels of the input set to -1) is used so upstream weights keep their meaning."
        ),
        (
            "The coarse path is computed only when requested (default: in training mode), as in the paper's "
            "inference."
        ),
        (
            "CAM scores and softmax are computed in float32 under autocast; a 1e-8 floor is added to the variance of "
            "the Euclidean distances (the official code divides by the raw std). exp(x-3)/sum(exp(x-3)) is a plain "
            "softmax."
        ),
        (
            "RED head: the official per-cell bias is added to every channel before the channel sum (an effective bias"
            " of C*b); we keep one bias per cell (convert_official_checkpoint multiplies by C). Per-cell spectral "
            "norm of a 1xC row equals its L2 norm exactly, which is how it is parametrised here."
        ),
        (
            "Tiny variants (CPU tests) use dilations (1, 2, 2, 2) so reflect padding fits their 4x4 features at "
            "32x32."
        ),
        (
            "Training masks: each sample draws its own free-form stroke mask (the official code draws one per batch "
            "and rotates it per sample)."
        ),
        (
            "SSIM: two are logged. ssim is on RGB in [0, 1] (11x11 Gaussian window, sigma 1.5, as scikit-image); "
            "ssim_luma is the official code's SSIM, the one to compare with the paper: tf.image.ssim (11x11 Gaussian, "
            "sigma 1.5, k1 0.01, k2 0.03, valid window positions) on the BT.601 luma Y = 0.299 R + 0.587 G + 0.114 B "
            "(tf.image.rgb_to_yuv) truncated to 8-bit levels (tf.to_int32(255 Y)), of the composite and the ground "
            "truth. Where 255 Y is an exact integer (e.g. grey pixels) we take that level; the official float32 "
            "truncation may lose one level there."
        ),
        (
            "Precision: the PEPSI / Diet-PEPSI paper configs train in bf16-mixed autocast; the official code is "
            "float32. Parameters and optimiser states stay float32; the discriminator's spectral-norm power "
            "iteration and sigma run with autocast off (float32; torch's own parametrisation would run torch.mv in "
            "bf16 under CUDA autocast), as do the CAM scores and softmax; convolutions run in bf16. Set "
            "trainer.precision: 32-true for the official numerics."
        ),
        (
            "Evaluation masks: the paper configs validate/test on seeded random-offset 128x128 squares "
            "(eval_mask: square_random; the same square per image index on every pass), whereas the official code "
            "uses its fixed list of 128x128 squares (List/test_mask256.txt, first 800 test images). The official "
            "protocol is an option: eval_mask: square_list with mask_list: List/test_mask256.txt (read as is; its "
            "lines are '<mask png> x y', x the row and y the column of the hole's top-left corner, as main.py crops "
            "[:, x:x+128, y:y+128]; line i pairs with image i of the test list in its order, as upstream pairs it "
            "with test_fh256.txt; the list's 15,000 lines cover more than the 3,000 test images, the rest are "
            "unused), plus trainer.limit_test_batches 100 at batch 8 for the first 800. The mask PNGs themselves "
            "(test_mask256/, not in the repository) also work: eval_mask: folder, mask_dir: <root>/test_mask256 "
            "(0 = hole, paired by sorted index). Local PSNR = psnr_hole (PSNR over the hole pixels, equal to the "
            "PSNR of the 128x128 hole crop); metrics are on float images in [0, 1], the official code on float "
            "[0, 255] (the same PSNR)."
        ),
    ],
}


@dataclass
class PEPSIOutput:
    """What the generator returns.

    Attributes:
        inpainted: (B,3,H,W) raw output of the inpainting path (decoder on CAM features), clipped to [-1, 1].
        composite: (B,3,H,W) ``inpainted`` in the hole, the input image elsewhere (the final result).
        coarse: (B,3,H,W) output of the coarse path (decoder on the encoder features), or None when not computed.
        attention: (B, h*w, L) CAM weights at feature resolution when ``return_attention=True``, else None.
    """

    inpainted: torch.Tensor
    composite: torch.Tensor
    coarse: torch.Tensor | None = None
    attention: torch.Tensor | None = None


def _conv(cin: int, cout: int, k: int, stride: int = 1, dilation: int = 1, padding_mode: str = "reflect") -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=dilation * (k // 2), dilation=dilation,
                     padding_mode=padding_mode)


class RateAdaptiveDilatedConv(nn.Module):
    """A stack of dilated 3x3 convolutions that share ONE weight tensor, with a scale and shift per rate (PEPSI++).

    Layer ``i`` computes ``elu(scale[i] * conv(x, weight, dilation=rates[i]) + shift[i])``: the weights are shared,
    the rate-specific affine modulation (and the rate itself) makes each layer's features different.

    Args:
        channels: input and output channels.
        rates: dilation rate of each layer, applied in order.
        kernel_size: kernel side (odd).
        padding_mode: padding of every layer (the official code reflects; padding = rate).
    """

    def __init__(self, channels: int, rates: Sequence[int] = (2, 4, 8, 16), kernel_size: int = 3,
                 padding_mode: str = "reflect") -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.kernel_size = kernel_size
        self.padding_mode = padding_mode
        self.weight = nn.Parameter(torch.empty(channels, channels, kernel_size, kernel_size))
        self.scale = nn.Parameter(torch.ones(len(self.rates), channels))
        self.shift = nn.Parameter(torch.zeros(len(self.rates), channels))
        nn.init.xavier_uniform_(self.weight)

    def extra_repr(self) -> str:
        return f"channels={self.weight.shape[0]}, rates={self.rates}, padding_mode={self.padding_mode!r}"

    def forward_rate(self, x: torch.Tensor, index: int) -> torch.Tensor:
        """Layer ``index`` alone (rate ``rates[index]``), before the activation."""
        r = self.rates[index]
        p = r * (self.kernel_size // 2)
        x = F.pad(x, (p, p, p, p), mode=self.padding_mode) if self.padding_mode != "zeros" else F.pad(x, (p,) * 4)
        y = F.conv2d(x, self.weight, dilation=r)
        return y * self.scale[index].view(1, -1, 1, 1) + self.shift[index].view(1, -1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(len(self.rates)):
            x = F.elu(self.forward_rate(x, i))
        return x


class DilatedConvStack(nn.Module):
    """PEPSI's four distinct dilated 3x3 convolutions, each followed by ELU.

    Args:
        channels: input and output channels.
        rates: dilation rate of each layer.
        padding_mode: padding mode (padding = rate).
    """

    def __init__(self, channels: int, rates: Sequence[int] = (2, 4, 8, 16), padding_mode: str = "reflect") -> None:
        super().__init__()
        self.rates = tuple(int(r) for r in rates)
        self.convs = nn.ModuleList(_conv(channels, channels, 3, dilation=r, padding_mode=padding_mode)
                                   for r in self.rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.elu(conv(x))
        return x


class PEPSIEncoder(nn.Module):
    """Shared encoder: 5x5 conv, three stride-2 downsamplings, then the dilated stack (output at 1/8 resolution).

    Args:
        in_chans: input channels (masked image + mask channels).
        widths: output channels of the six plain convolutions (the last is the feature width).
        dilations: dilation rates of the dilated stack.
        rate_adaptive: use one shared weight for all rates (Diet-PEPSI) instead of distinct convolutions.
        padding_mode: padding of every convolution.
    """

    def __init__(self, in_chans: int, widths: Sequence[int], dilations: Sequence[int], rate_adaptive: bool,
                 padding_mode: str = "reflect") -> None:
        super().__init__()
        if len(widths) != 6:
            raise ValueError(f"encoder_widths needs 6 entries, got {len(widths)}")
        strides = (1, 2, 1, 2, 1, 2)
        kernels = (5, 3, 3, 3, 3, 3)
        chans = (in_chans, *widths)
        self.convs = nn.ModuleList(_conv(chans[i], chans[i + 1], kernels[i], stride=strides[i],
                                         padding_mode=padding_mode) for i in range(6))
        self.dilated: nn.Module
        if rate_adaptive:
            self.dilated = RateAdaptiveDilatedConv(widths[-1], dilations, padding_mode=padding_mode)
        else:
            self.dilated = DilatedConvStack(widths[-1], dilations, padding_mode=padding_mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = F.elu(conv(x))
        return self.dilated(x)


class PEPSIDecoder(nn.Module):
    """The decoder both paths share: four [conv3x3-ELU-conv3x3-ELU-nearest resize] stages, then conv3x3 to RGB.

    Stages resize to 1/4, 1/2, 1 and 1 of the image size; the output is clipped to [-1, 1].

    Args:
        in_chans: feature channels.
        widths: channels of the four stages.
        out_chans: output image channels.
        padding_mode: padding of the stage convolutions (the RGB conv pads with zeros, as upstream).
    """

    scales = (4, 2, 1, 1)

    def __init__(self, in_chans: int, widths: Sequence[int], out_chans: int = 3, padding_mode: str = "reflect") -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"decoder_widths needs 4 entries, got {len(widths)}")
        chans = (in_chans, *widths)
        self.stages = nn.ModuleList(
            nn.ModuleList([_conv(chans[i], chans[i + 1], 3, padding_mode=padding_mode),
                           _conv(chans[i + 1], chans[i + 1], 3, padding_mode=padding_mode)])
            for i in range(4)
        )
        self.to_rgb = nn.Conv2d(widths[-1], out_chans, 3, padding=1)

    def forward(self, x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        for (c1, c2), s in zip(self.stages, self.scales):
            x = F.elu(c2(F.elu(c1(x))))
            x = F.interpolate(x, size=(size[0] // s, size[1] // s), mode="nearest")
        return self.to_rgb(x).clamp(-1.0, 1.0)


class PEPSIContextualBlock(nn.Module):
    """PEPSI's CAM block (``CB1``): contextual attention fills the hole, then [F, filled] -> 1x1 conv -> ELU.

    Args:
        channels: feature channels.
        kernel_size: CAM patch size.
        scale: CAM softmax scale (lambda = 50).
        similarity: 'euclidean' (PEPSI) or 'cosine' (DeepFill).
    """

    def __init__(self, channels: int, kernel_size: int = 3, scale: float = 50.0, similarity: str = "euclidean") -> None:
        super().__init__()
        self.attention = ContextualAttention(kernel_size, 1, scale, similarity,  # type: ignore[arg-type]
                                             exclude_hole_patches=False)
        self.fuse = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, feats: torch.Tensor, hole: torch.Tensor, return_attention: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor | None]:
        hole = F.interpolate(hole, size=feats.shape[-2:], mode="nearest")
        pasted, attn = self.attention(feats, mask=hole, return_attention=True)
        filled = feats * (1.0 - hole) + pasted * hole  # known cells keep F, hole cells get the attention output
        out = F.elu(self.fuse(torch.cat([feats, filled], 1)))
        return out, (attn if return_attention else None)


class PEPSI(nn.Module):
    """PEPSI / Diet-PEPSI generator.

    Args:
        in_chans: image channels.
        encoder_widths: channels of the encoder's six plain convolutions.
        dilations: rates of the encoder's dilated convolutions.
        decoder_widths: channels of the decoder's four stages.
        rate_adaptive: Diet-PEPSI: rate-adaptive dilated convolutions (one shared weight set).
        cam_kernel: CAM patch size.
        cam_scale: CAM softmax scale.
        cam_similarity: 'euclidean' (PEPSI) or 'cosine'.
        padding_mode: padding of the convolutions ('reflect' upstream).
        hole_fill: value written into the hole of the input image (-1 upstream: black after [0,255] masking).
    """

    def __init__(
        self,
        in_chans: int = 3,
        encoder_widths: Sequence[int] = (32, 64, 64, 128, 128, 256),
        dilations: Sequence[int] = (2, 4, 8, 16),
        decoder_widths: Sequence[int] = (128, 64, 32, 16),
        rate_adaptive: bool = False,
        cam_kernel: int = 3,
        cam_scale: float = 50.0,
        cam_similarity: str = "euclidean",
        padding_mode: str = "reflect",
        hole_fill: float = -1.0,
    ) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.hole_fill = hole_fill
        self.encoder = PEPSIEncoder(2 * in_chans, encoder_widths, dilations, rate_adaptive, padding_mode)
        self.cam = PEPSIContextualBlock(encoder_widths[-1], cam_kernel, cam_scale, cam_similarity)
        self.decoder = PEPSIDecoder(encoder_widths[-1], decoder_widths, in_chans, padding_mode)
        for m in self.modules():  # tf.contrib.layers.conv2d defaults: Xavier-uniform weights, zero biases
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def encode(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Encoder features F at 1/8 resolution for ``image`` in [-1, 1] and ``mask`` (1 = hole)."""
        hole = mask.to(image.dtype)
        known = 1.0 - hole
        x = image * known + self.hole_fill * hole
        return self.encoder(torch.cat([x, known.expand(-1, self.in_chans, -1, -1)], 1))

    def forward(
        self,
        image: torch.Tensor,
        mask: torch.Tensor,
        with_coarse: bool | None = None,
        return_attention: bool = False,
    ) -> PEPSIOutput:
        """Inpaint.

        Args:
            image: (B, C, H, W) in [-1, 1]; H and W divisible by 8. Pixels in the hole are ignored.
            mask: (B, 1, H, W), 1 = hole, 0 = known.
            with_coarse: also run the coarse path (default: only in training mode).
            return_attention: also return the CAM weights.
        """
        if mask.dim() != 4 or mask.shape[1] != 1 or mask.shape[-2:] != image.shape[-2:]:
            raise ValueError(f"mask must be (B,1,H,W) matching the image {tuple(image.shape)}, got {tuple(mask.shape)}")
        if image.shape[-1] % 8 or image.shape[-2] % 8:
            raise ValueError(f"image height and width must be divisible by 8, got {tuple(image.shape[-2:])}")
        if with_coarse is None:
            with_coarse = self.training
        size = (image.shape[-2], image.shape[-1])
        hole = mask.to(image.dtype)
        feats = self.encode(image, hole)
        refined, attn = self.cam(feats, hole, return_attention)
        inpainted = self.decoder(refined, size)
        coarse = self.decoder(feats, size) if with_coarse else None
        composite = inpainted * hole + image * (1.0 - hole)
        return PEPSIOutput(inpainted=inpainted, composite=composite, coarse=coarse, attention=attn)


class _SpectralNormFP32(_SpectralNorm):
    """torch's spectral-norm parametrisation (one power iteration per training forward) run with autocast off.

    Under CUDA autocast ``torch.mv`` is a lower-precision op, so torch's own parametrisation would run the power
    iteration and ``sigma = u^T W v`` on a bf16/fp16 copy of the weight (about 3 significant digits, and the stored
    ``u``/``v`` would drift at that precision). Here they run in the weight's own dtype (float32 under
    ``*-mixed`` precision), as the official float32 code does; the normalised weight then enters the autocast
    convolution as usual. Same buffers and state-dict keys as :func:`torch.nn.utils.parametrizations.spectral_norm`.
    """

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        dev = weight.device.type
        if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
            with torch.autocast(dev, enabled=False):
                return super().forward(weight)
        return super().forward(weight)


def spectral_norm_fp32(module: nn.Module, name: str = "weight", n_power_iterations: int = 1, eps: float = 1e-12,
                       dim: int = 0) -> nn.Module:
    """``torch.nn.utils.parametrizations.spectral_norm`` whose power iteration ignores autocast (see
    :class:`_SpectralNormFP32`)."""
    weight = getattr(module, name)
    parametrize.register_parametrization(module, name, _SpectralNormFP32(weight, n_power_iterations, dim, eps))
    return module


class _RowL2Normalize(nn.Module):
    """Spectral norm of each 1 x C row: for a rank-1 matrix it is the row's L2 norm (exact, no power iteration)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return w / w.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class RegionEnsembleDiscriminator(nn.Module):
    """RED: strided 5x5 spectral-norm convolutions, then an independent spectral-norm linear score per grid cell.

    Args:
        in_chans: image channels (RED sees the composited image only).
        widths: channels of the stride-2 convolutions (six for 256x256 -> 4x4 cells).
        input_size: image side the per-cell head is built for (cells = input_size / 2**len(widths)).
        kernel_size: kernel of the convolutions.
        negative_slope: leaky-ReLU slope.
    """

    def __init__(self, in_chans: int = 3, widths: Sequence[int] = (64, 128, 256, 256, 256, 512),
                 input_size: int = 256, kernel_size: int = 5, negative_slope: float = 0.2) -> None:
        super().__init__()
        self.input_size = input_size
        self.kernel_size = kernel_size
        self.negative_slope = negative_slope
        self.grid = input_size // 2 ** len(widths)
        if self.grid < 1 or input_size % 2 ** len(widths):
            raise ValueError(f"input_size {input_size} must be divisible by 2**{len(widths)}")
        chans = (in_chans, *widths)
        self.convs = nn.ModuleList()
        for i in range(len(widths)):
            conv = nn.Conv2d(chans[i], chans[i + 1], kernel_size, stride=2)
            nn.init.xavier_uniform_(conv.weight)
            nn.init.zeros_(conv.bias)
            self.convs.append(spectral_norm_fp32(conv))
        cells = self.grid * self.grid
        self.region_weight = nn.Parameter(torch.empty(cells, widths[-1]))
        self.region_bias = nn.Parameter(torch.zeros(cells))
        # TF xavier_initializer (glorot uniform, fan_avg) on the upstream [cells, 1, C, 1] kernel read as
        # [kh, kw, in, out]: receptive field = cells * 1, fan_in = C * cells, fan_out = 1 * cells, so
        # bound = sqrt(6 / (fan_in + fan_out)) = sqrt(6 / (cells * (C + 1))) (std = bound / sqrt(3))
        bound = (6.0 / (cells * (widths[-1] + 1))) ** 0.5
        nn.init.uniform_(self.region_weight, -bound, bound)
        parametrize.register_parametrization(self, "region_weight", _RowL2Normalize())

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, C, input_size, input_size) in [-1, 1] -> (B, 1, g, g) per-region realness scores."""
        if image.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"RED was built for {self.input_size}x{self.input_size} images (its per-region head has "
                             f"{self.grid}x{self.grid} cells), got {tuple(image.shape[-2:])}; set input_size")
        x = image
        for conv in self.convs:
            # TensorFlow "SAME" zero padding (the extra pixel bottom/right), as the official discriminator
            x = F.leaky_relu(conv(pad_same(x, (self.kernel_size,) * 2, (2, 2))), self.negative_slope)
        _, c, g, _ = x.shape
        w = self.region_weight.t().reshape(1, c, g, g)
        return (x * w).sum(1, keepdim=True) + self.region_bias.view(1, 1, g, g)


# ------------------------------------------------------------------------------------------------ checkpoints
def _tf_conv_names(scope: str, n: int) -> list[str]:
    return [f"{scope}/Conv{'' if i == 0 else f'_{i}'}" for i in range(n)]


def _sn_vectors(w_mat: torch.Tensor, u_tf: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch spectral-norm (u, v) that reproduce TF's one power iteration from its stored ``u``."""
    if u_tf is None:
        u_tf = torch.randn(w_mat.shape[0])
    v = F.normalize(w_mat.t() @ u_tf.reshape(-1), dim=0, eps=1e-12)
    u = F.normalize(w_mat @ v, dim=0, eps=1e-12)
    return u, v


def convert_official_checkpoint(
    source: Mapping[str, Any] | str | os.PathLike,
    rate_adaptive: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """Convert the official TensorFlow PEPSI variables to our state dicts.

    No official weights are published; this maps the variable layout of the official code (``G_en/Conv*``,
    ``G_de/Conv*``, ``CB1/ML``, ``disc_red/l*``), e.g. from a checkpoint you trained with it. Export one with::

        r = tf.train.load_checkpoint(prefix); np.savez('pepsi_tf.npz', **{k.replace('/', '|'): r.get_tensor(k)
            for k in r.get_variable_to_shape_map() if 'Adam' not in k})

    Args:
        source: a mapping ``tf variable name -> array``, an ``.npz`` written as above, or a TF checkpoint prefix
            (needs tensorflow).
        rate_adaptive: the official code is PEPSI only; must be False.

    Returns:
        ``{'generator': state_dict for pepsi, 'discriminator': state_dict for pepsi_red}`` (the latter empty when
        the checkpoint has no ``disc_red`` variables).
    """
    if rate_adaptive:
        raise ValueError("the official code has no Diet-PEPSI; there is no upstream layout to convert")
    tf_vars = _read_tf_vars(source)

    def t(name: str) -> torch.Tensor:
        if name not in tf_vars:
            raise KeyError(f"official checkpoint has no variable {name!r}")
        return torch.as_tensor(tf_vars[name]).float()

    gen: dict[str, torch.Tensor] = {}
    ours_enc = [f"encoder.convs.{i}" for i in range(6)] + [f"encoder.dilated.convs.{i}" for i in range(4)]
    ours_dec = [f"decoder.stages.{i}.{j}" for i in range(4) for j in range(2)] + ["decoder.to_rgb"]
    for ours, theirs in [*zip(ours_enc, _tf_conv_names("G_en", 10)), *zip(ours_dec, _tf_conv_names("G_de", 9)),
                         ("cam.fuse", "CB1/ML")]:
        gen[f"{ours}.weight"] = t(f"{theirs}/weights").permute(3, 2, 0, 1).contiguous()  # HWIO -> OIHW
        gen[f"{ours}.bias"] = t(f"{theirs}/biases")
    disc: dict[str, torch.Tensor] = {}
    n_disc = sum(1 for k in tf_vars if k.startswith("disc_red/l") and k.endswith("w") and k[10:-1].isdigit())
    for i in range(n_disc):
        w = t(f"disc_red/l{i + 1}w").permute(3, 2, 0, 1).contiguous()
        u_tf = t(f"disc_red/l{i + 1}wu") if f"disc_red/l{i + 1}wu" in tf_vars else None
        u, v = _sn_vectors(w.reshape(w.shape[0], -1), u_tf)
        disc[f"convs.{i}.parametrizations.weight.original"] = w
        disc[f"convs.{i}.parametrizations.weight.0._u"] = u
        disc[f"convs.{i}.parametrizations.weight.0._v"] = v
        disc[f"convs.{i}.bias"] = t(f"disc_red/l{i + 1}b")
    if n_disc:
        head = f"disc_red/l{n_disc + 1}"
        w = t(f"{head}_w")  # (cells, 1, C, 1)
        b = t(f"{head}_b")  # (1, g, g, 1), added to every channel before the channel sum
        disc["parametrizations.region_weight.original"] = w.reshape(w.shape[0], w.shape[2])
        disc["region_bias"] = b.reshape(-1) * w.shape[2]
    return {"generator": gen, "discriminator": disc}


def _read_tf_vars(source: Mapping[str, Any] | str | os.PathLike) -> dict[str, Any]:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source)
    if path.suffix == ".npz":
        import numpy as np

        with np.load(path, allow_pickle=False) as z:
            return {k.replace("|", "/"): z[k] for k in z.files}
    try:
        import tensorflow as tf  # pragma: no cover - not a dependency
    except ImportError as e:
        raise ImportError(f"{path}: reading a TF checkpoint needs tensorflow; export it to .npz instead "
                          f"(see convert_official_checkpoint's docstring)") from e
    reader = tf.train.load_checkpoint(str(path))  # pragma: no cover
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map() if "Adam" not in k}


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
    """Remap an upstream (TF variable-name) state dict for ``create_model(..., checkpoint_path=...)``.

    Our own keys pass through; TF names (``G_en/Conv/weights``...) go through :func:`convert_official_checkpoint`.
    """
    if not any("/" in k for k in state_dict):
        return state_dict
    conv = convert_official_checkpoint(state_dict)
    return conv["discriminator"] if isinstance(model, RegionEnsembleDiscriminator) else conv["generator"]


# ------------------------------------------------------------------------------------------------ entrypoints
_PEPSI = {"encoder_widths": (32, 64, 64, 128, 128, 256), "dilations": (2, 4, 8, 16),
          "decoder_widths": (128, 64, 32, 16)}
_TINY = {"encoder_widths": (8, 16, 16, 32, 32, 64), "dilations": (1, 2, 2, 2), "decoder_widths": (32, 16, 8, 4)}


def _generator(name: str, pretrained: bool | str, defaults: dict[str, Any], kwargs: dict[str, Any]) -> PEPSI:
    return cast(PEPSI, build_model(PEPSI, name, pretrained, defaults, **kwargs))


@register_model
def pepsi(pretrained: bool | str = False, **kwargs: Any) -> PEPSI:
    """PEPSI generator (CVPR 2019): shared encoder, CAM, one decoder on two parallel paths; 256x256, 3.66M params."""
    return _generator("pepsi", pretrained, {**_PEPSI, "rate_adaptive": False}, kwargs)


@register_model
def diet_pepsi(pretrained: bool | str = False, **kwargs: Any) -> PEPSI:
    """Diet-PEPSI generator (PEPSI++): PEPSI with rate-adaptive dilated convolutions sharing one weight set."""
    return _generator("diet_pepsi", pretrained, {**_PEPSI, "rate_adaptive": True}, kwargs)


@register_model
def pepsi_tiny(pretrained: bool | str = False, **kwargs: Any) -> PEPSI:
    """Tiny PEPSI for CPU tests (widths /4 to /8, dilations 1-2-2-2; any side >= 32 divisible by 8)."""
    return _generator("pepsi_tiny", pretrained, {**_TINY, "rate_adaptive": False}, kwargs)


@register_model
def diet_pepsi_tiny(pretrained: bool | str = False, **kwargs: Any) -> PEPSI:
    """Tiny Diet-PEPSI for CPU tests."""
    return _generator("diet_pepsi_tiny", pretrained, {**_TINY, "rate_adaptive": True}, kwargs)


@register_model
def pepsi_red(pretrained: bool | str = False, **kwargs: Any) -> RegionEnsembleDiscriminator:
    """Region ensemble discriminator with spectral norm (PEPSI): 256x256 -> 4x4 region scores."""
    return build_model(RegionEnsembleDiscriminator, "pepsi_red", pretrained,  # type: ignore[return-value]
                       {"widths": (64, 128, 256, 256, 256, 512), "input_size": 256}, **kwargs)


@register_model
def pepsi_red_tiny(pretrained: bool | str = False, **kwargs: Any) -> RegionEnsembleDiscriminator:
    """Tiny RED for CPU tests: 32x32 -> 4x4 region scores (set input_size for other sizes)."""
    return build_model(RegionEnsembleDiscriminator, "pepsi_red_tiny", pretrained,  # type: ignore[return-value]
                       {"widths": (8, 16, 32), "input_size": 32}, **kwargs)
