"""FusionReID: a CNN and a ViT side by side, fused by Heterogenous Transmission Modules (Wang et al., T-ITS 2025).

"Unity is Strength: Unifying Convolutional and Transformeral Features for Better Person Re-Identification",
arXiv 2412.17239. Structure (paper Fig. 2 / the official code's defaults):

- Dual-branch Feature Extraction: a ResNet whose stem pool is a 2x2 max-pool and whose last stage has stride 1
  (timm ResNet blocks, torchvision key names) and a TransReID-style ViT (timm blocks) with overlapping
  stride-12 patches and the SIE camera embedding.
- Local Refinement Units (depthwise 1x1 conv -> BN -> PReLU -> pointwise conv -> BN -> PReLU) bring both maps to
  ``mix_dim`` channels; GeM pools them.
- Dual-attention Mutual Fusion: ``htm_depth`` HTM layers. Each layer runs a Shared Encoding Unit (pre-norm
  transformer block + LayerNorm) per branch on ``[cls ; original LRU tokens]`` and a Mutual Fusion Unit per
  direction, where one branch's cls token alone queries the other branch's tokens. Only the cls tokens are carried
  from layer to layer.
- Six BNNeck heads (backbone CNN, backbone ViT, LRU CNN, LRU ViT, HTM CNN, HTM ViT).

In training mode the forward returns :class:`FusionReIDOutput` (six pre-BN features, six logits); in eval mode the
test-time embedding: the six pre-BN features concatenated and L2-normalised (5888-d at paper size).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._builder import build_model
from ._pretrained import try_pretrained_backbone
from ._registry import register_model

__all__ = [
    "FusionReID", "FusionReIDOutput", "GeM", "LocalRefinementUnit", "SharedEncodingUnit", "MutualFusionUnit",
    "HeterogenousTransmissionLayer", "HeterogenousTransmissionModule", "OverlapPatchViT", "ReIDResNet",
    "checkpoint_filter_fn", "convert_official_checkpoint", "FEATURE_NAMES",
]

#: the six heads, in the order of the features/logits (and of the official code's outputs)
FEATURE_NAMES = ("cnn", "vit", "lru_cnn", "lru_vit", "htm_cnn", "htm_vit")

MODEL_CARD: dict[str, Any] = {
    "paper": "Wang, Zhang, Liu, Tu, Lu. Unity is Strength: Unifying Convolutional and Transformeral Features for "
             "Better Person Re-Identification. IEEE T-ITS 2025 (arXiv 2412.17239)",
    "url": "https://arxiv.org/abs/2412.17239",
    "code": "https://github.com/924973292/FusionReID",
    "license": "architecture: paper; this implementation: Apache-2.0 (no code copied from the official repository)",
    "reported_params_m": {
        "fusionreid_vitb16_r50": 153.8,
        "fusionreid_vitb16_r101": 172.8,
        "fusionreid_vitb16_r152": 188.5,
    },
    "deviations": [
        "Parameter count: ours is 172.63M (751 classes; 168.21M without the six classifiers) vs the README's "
        "153.8M; R101 191.62M vs 172.8M, R152 207.27M vs 188.5M. The gap (18.8M) is the same for all three "
        "and is not explained by the port: the official model as its code builds it has 173.40M (ours + its unused "
        "0.77M ViT ImageNet head), module shapes per our reading of make_model.py / fusion.py, and the HTM alone is "
        "56.7M (2 x 28.35M). The README figure was evidently counted differently (e.g. by a profiler that skips "
        "modules); the CNN-size differences between the variants match the paper exactly.",
        "The official ViT keeps an unused 1000-way ImageNet head (transformer.base.fc, 0.77M params); we drop it "
        "(convert_official_checkpoint discards those keys).",
        "Test embedding: the concatenation of the six pre-BN features is L2-normalised as a whole (the official "
        "evaluator's FEAT_NORM), not each feature separately; set normalize_each=True for per-feature norms.",
        "camids=None skips the SIE camera embedding (the official code indexes camera 0 by default); pass camids "
        "at train and test time for the paper's behaviour.",
        "zero_init_last_bn=True (default) zero-initialises the last BN of every ResNet bottleneck when the CNN is "
        "randomly initialised (the official code uses PyTorch defaults; with random init its soft-margin triplet "
        "overflows). Irrelevant with ImageNet weights, which overwrite it.",
        "Random init uses timm's initialisers (kaiming fan_out for the ResNet, trunc-normal 0.02 for the ViT); "
        "the official ImageNet-initialised recipe is pretrained_backbone=True.",
        "As in the official code the CNN stem has no ReLU between bn1 and the max-pool (stem_relu=False); "
        "stem_relu=True restores torchvision's stem.",
        "ImageNet backbones come from timm: resnet{50,101,152}.tv_in1k (torchvision weights), "
        "vit_base_patch16_224.orig_in21k_ft_in1k (the jx_vit_base_p16_224 file TransReID uses), "
        "deit_base_patch16_224.fb_in1k; the ViT pos-embed is resized 14x14 -> 21x10 bilinearly as upstream.",
        "T2T-ViT combinations are not provided.",
        "Precision: the paper configs train in bf16-mixed autocast (no loss scaling); the official code (and the "
        "paper's AMP) uses fp16 autocast with a GradScaler (torch.cuda.amp). trainer.precision: 16-mixed reproduces "
        "it (Lightning adds the GradScaler; cuda_graphs: auto then runs eagerly).",
    ],
}


# --------------------------------------------------------------------------------------------------- building blocks
class GeM(nn.Module):
    """Generalised-mean pooling over H, W with a learnable exponent (p initialised to 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class LocalRefinementUnit(nn.Module):
    """LRU (paper Sec. III-B): depthwise conv -> BN -> PReLU -> pointwise conv to ``out_dim`` -> BN -> PReLU.

    The kernel is 1 in the official code (the paper text says depth-separable convolution).
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(in_dim, in_dim, kernel_size, padding=kernel_size // 2, groups=in_dim)
        self.bn1 = nn.BatchNorm2d(in_dim)
        self.act1 = nn.PReLU()
        self.ptconv = nn.Conv2d(in_dim, out_dim, 1)
        self.bn2 = nn.BatchNorm2d(out_dim)
        self.act2 = nn.PReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.dwconv(x)))
        return self.act2(self.bn2(self.ptconv(x)))


class SharedEncodingUnit(nn.Module):
    """SEU: one pre-norm transformer block (timm ``Block``, fused SDPA attention, no qkv bias) + a final LayerNorm."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import Block

        self.block = Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=False, norm_layer=nn.LayerNorm)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block(x))


class ClsCrossAttention(nn.Module):
    """One query token attends over another branch's tokens: K from LayerNorm(kv), V from the raw kv (Sec. III-C)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.kv_norm = nn.LayerNorm(dim)
        self.q = nn.Linear(dim, dim, bias=False)
        self.k = nn.Linear(dim, dim, bias=False)
        self.v = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, cls: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        B, N, C = kv.shape
        h, d = self.num_heads, C // self.num_heads
        q = self.q(cls).view(B, 1, h, d).transpose(1, 2)
        k = self.k(self.kv_norm(kv)).view(B, N, h, d).transpose(1, 2)
        v = self.v(kv).view(B, N, h, d).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)  # scale d^-0.5
        return self.proj(x.transpose(1, 2).reshape(B, 1, C))


class MutualFusionUnit(nn.Module):
    """MFU: pre-norm cross-attention block whose query is a single cls token; then a pre-norm MLP."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0) -> None:
        super().__init__()
        from timm.layers import Mlp

        self.norm1 = nn.LayerNorm(dim)
        self.attn = ClsCrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, cls: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """``cls`` (B, 1, C), ``kv`` (B, N, C) -> (B, 1, C)."""
        cls = cls + self.attn(self.norm1(cls), kv)
        return cls + self.mlp(self.norm2(cls))


class HeterogenousTransmissionLayer(nn.Module):
    """One HTM layer: SEU per branch, then an MFU per direction.

    ``share_pattern`` follows the official switch: 0 = one SEU, two MFUs; 1 = two SEUs, two MFUs (default);
    2 = two SEUs, one MFU; 3 = one SEU, one MFU.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, share_pattern: int = 1) -> None:
        super().__init__()
        if share_pattern not in (0, 1, 2, 3):
            raise ValueError(f"htm share_pattern must be 0..3, got {share_pattern}")
        self.share_seu = share_pattern in (0, 3)
        self.share_mfu = share_pattern in (2, 3)
        if self.share_seu:
            self.seu = SharedEncodingUnit(dim, num_heads, mlp_ratio)
        else:
            self.seu_cnn = SharedEncodingUnit(dim, num_heads, mlp_ratio)
            self.seu_vit = SharedEncodingUnit(dim, num_heads, mlp_ratio)
        if self.share_mfu:
            self.mfu = MutualFusionUnit(dim, num_heads, mlp_ratio)
        else:
            self.mfu_cnn = MutualFusionUnit(dim, num_heads, mlp_ratio)
            self.mfu_vit = MutualFusionUnit(dim, num_heads, mlp_ratio)

    def forward(self, seq_cnn: torch.Tensor, seq_vit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s_r = (self.seu if self.share_seu else self.seu_cnn)(seq_cnn)
        s_t = (self.seu if self.share_seu else self.seu_vit)(seq_vit)
        cls_r = (self.mfu if self.share_mfu else self.mfu_cnn)(s_r[:, :1], s_t[:, 1:])
        cls_t = (self.mfu if self.share_mfu else self.mfu_vit)(s_t[:, :1], s_r[:, 1:])
        return cls_r, cls_t


class HeterogenousTransmissionModule(nn.Module):
    """HTM stack. Every layer sees ``[current cls ; ORIGINAL LRU tokens]``; only the cls tokens are carried."""

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float = 4.0, share_pattern: int = 1) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            HeterogenousTransmissionLayer(dim, num_heads, mlp_ratio, share_pattern) for _ in range(depth)
        )

    def forward(self, tok_cnn: torch.Tensor, tok_vit: torch.Tensor, cls_cnn: torch.Tensor, cls_vit: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        for layer in self.layers:
            cls_cnn, cls_vit = layer(torch.cat([cls_cnn, tok_cnn], 1), torch.cat([cls_vit, tok_vit], 1))
        return cls_cnn, cls_vit


# --------------------------------------------------------------------------------------------------------- backbones
def ReIDResNet(layers: tuple[int, ...], channels: tuple[int, ...] = (64, 128, 256, 512), last_stride: int = 1,
               stem_relu: bool = False, zero_init_last_bn: bool = True) -> nn.Module:
    """timm's ResNet (torchvision key names) with the ReID changes: 2x2/2 stem max-pool, last-stage stride.

    Args:
        layers: bottleneck blocks per stage ([3,4,6,3] = ResNet-50).
        channels: bottleneck widths per stage (output = 4x the last).
        last_stride: stride of the last stage (1 in the paper: a 16x8 map at 256x128).
        stem_relu: keep the ReLU after bn1 (the official backbone has none).
        zero_init_last_bn: zero-init the last BN of each residual branch (random init only).
    """
    from timm.models.resnet import Bottleneck, ResNet

    net = ResNet(Bottleneck, list(layers), channels=tuple(channels), num_classes=0, global_pool="",
                 zero_init_last=zero_init_last_bn)
    net.maxpool = nn.MaxPool2d(kernel_size=2, stride=2, padding=0)
    if not stem_relu:
        net.act1 = nn.Identity()
    first = net.layer4[0]
    first.conv2.stride = (last_stride, last_stride)
    if first.downsample is not None:
        first.downsample[0].stride = (last_stride, last_stride)
    return net  # num_classes=0: no ``fc.*`` keys (torchvision's are dropped on load)


class OverlapPatchViT(nn.Module):
    """TransReID-style ViT on timm blocks: overlapping patch embedding (stride < patch) + SIE camera embedding.

    Args:
        img_size: input (H, W).
        patch_size: patch (kernel) size.
        stride: patch stride (12 = overlapping, 16 = plain ViT).
        embed_dim: width.
        depth: blocks.
        num_heads: attention heads.
        mlp_ratio: MLP hidden ratio.
        num_cameras: SIE embeddings (none when <= 1, as upstream).
        sie_coe: SIE coefficient lambda (3.0).
        drop_path_rate: stochastic depth (linear rule).
        drop_rate: dropout after the embeddings and in the blocks.
        attn_drop_rate: attention dropout.
    """

    def __init__(self, img_size: tuple[int, int] = (256, 128), patch_size: int = 16, stride: int = 12,
                 embed_dim: int = 768, depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0,
                 num_cameras: int = 0, sie_coe: float = 3.0, drop_path_rate: float = 0.1, drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0) -> None:
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        base = VisionTransformer(img_size=tuple(img_size), patch_size=patch_size, embed_dim=embed_dim, depth=depth,
                                 num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=True, num_classes=0,
                                 drop_rate=drop_rate, proj_drop_rate=drop_rate, attn_drop_rate=attn_drop_rate,
                                 drop_path_rate=drop_path_rate)
        self.grid_size = ((img_size[0] - patch_size) // stride + 1, (img_size[1] - patch_size) // stride + 1)
        self.patch_embed = base.patch_embed
        proj = self.patch_embed.proj
        self.patch_embed.proj = nn.Conv2d(3, embed_dim, patch_size, stride=stride, device=proj.weight.device)
        self.patch_embed.grid_size = self.grid_size
        self.patch_embed.num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = base.cls_token
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim,
                                                  device=base.pos_embed.device))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.sie_coe = sie_coe
        self.num_cameras = num_cameras
        if num_cameras > 1:
            self.sie_embed = nn.Parameter(torch.zeros(num_cameras, 1, embed_dim, device=base.pos_embed.device))
            nn.init.trunc_normal_(self.sie_embed, std=0.02)
        else:
            self.sie_embed = None
        self.pos_drop = base.pos_drop
        self.blocks = base.blocks
        self.norm = base.norm
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) -> tokens (B, 1 + gh*gw, D) after the final LayerNorm."""
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        if self.sie_embed is not None and camids is not None:
            x = x + self.sie_coe * self.sie_embed[camids.long()]  # added to every token incl. cls
        x = self.pos_drop(x)
        return self.norm(self.blocks(x))

    def load_imagenet(self, state_dict: dict[str, torch.Tensor]) -> None:
        """Load a timm ViT state dict: head dropped, pos-embed bilinearly resized to this grid (as upstream)."""
        from timm.layers import resample_abs_pos_embed

        sd = {k: v for k, v in state_dict.items() if not k.startswith(("head", "fc_norm", "dist_token"))}
        pe = sd["pos_embed"]
        if pe.shape != self.pos_embed.shape:
            sd["pos_embed"] = resample_abs_pos_embed(pe, list(self.grid_size), num_prefix_tokens=1,
                                                     interpolation="bilinear", antialias=False)
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [k for k in missing if k != "sie_embed"]
        if missing or unexpected:
            raise RuntimeError(f"ImageNet ViT weights do not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")


# -------------------------------------------------------------------------------------------------------- the model
@dataclass
class FusionReIDOutput:
    """Training-mode output: six pre-BNNeck features and six logits, in :data:`FEATURE_NAMES` order."""

    features: list[torch.Tensor]
    logits: list[torch.Tensor]


class FusionReID(nn.Module):
    """FusionReID (CNN + ViT, LRUs, HTM, six BNNeck heads).

    Args:
        num_classes: training identities (classifier outputs).
        num_cameras: cameras for the SIE embedding (<= 1: none).
        img_size: input (H, W).
        cnn_layers: bottleneck blocks per ResNet stage.
        cnn_channels: bottleneck widths per ResNet stage.
        last_stride: stride of the last ResNet stage.
        stem_relu: ReLU after the ResNet stem BN (absent upstream).
        zero_init_last_bn: zero-init the last BN of each bottleneck (random init).
        vit_dim: ViT width.
        vit_depth: ViT blocks.
        vit_heads: ViT heads.
        patch_size: ViT patch size.
        patch_stride: ViT patch stride (12 = overlapping).
        sie_coe: SIE camera-embedding coefficient.
        drop_path_rate: ViT stochastic depth.
        drop_rate: ViT dropout.
        attn_drop_rate: ViT attention dropout.
        mix_dim: LRU output / HTM width.
        htm_depth: HTM layers.
        htm_heads: HTM attention heads.
        htm_share_pattern: 0..3, SEU/MFU sharing (1 = separate, the default).
        lru_kernel: LRU depthwise kernel size.
        gem_p: initial GeM exponent.
        normalize_each: at test time L2-normalise each of the six features before concatenating (default: the
            concatenation is normalised as a whole, like the official evaluator).
        pretrained_backbone: initialise both backbones from ImageNet weights via timm (skipped with a warning when
            offline and not cached).
        cnn_pretrained: timm name of the ResNet weights.
        vit_pretrained: timm name of the ViT weights.
    """

    def __init__(
        self,
        num_classes: int = 751,
        num_cameras: int = 6,
        img_size: tuple[int, int] | list[int] = (256, 128),
        cnn_layers: tuple[int, ...] | list[int] = (3, 4, 6, 3),
        cnn_channels: tuple[int, ...] | list[int] = (64, 128, 256, 512),
        last_stride: int = 1,
        stem_relu: bool = False,
        zero_init_last_bn: bool = True,
        vit_dim: int = 768,
        vit_depth: int = 12,
        vit_heads: int = 12,
        patch_size: int = 16,
        patch_stride: int = 12,
        sie_coe: float = 3.0,
        drop_path_rate: float = 0.1,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        mix_dim: int = 768,
        htm_depth: int = 2,
        htm_heads: int = 12,
        htm_share_pattern: int = 1,
        lru_kernel: int = 1,
        gem_p: float = 3.0,
        normalize_each: bool = False,
        pretrained_backbone: bool = False,
        cnn_pretrained: str = "resnet50.tv_in1k",
        vit_pretrained: str = "vit_base_patch16_224.orig_in21k_ft_in1k",
    ) -> None:
        super().__init__()
        img_size = (int(img_size[0]), int(img_size[1]))
        self.num_classes = num_classes
        self.img_size = img_size
        self.normalize_each = normalize_each
        self.cnn = ReIDResNet(tuple(cnn_layers), tuple(cnn_channels), last_stride, stem_relu, zero_init_last_bn)
        cnn_dim = cnn_channels[-1] * 4
        self.vit = OverlapPatchViT(img_size, patch_size, patch_stride, vit_dim, vit_depth, vit_heads,
                                   num_cameras=num_cameras, sie_coe=sie_coe, drop_path_rate=drop_path_rate,
                                   drop_rate=drop_rate, attn_drop_rate=attn_drop_rate)
        self.gem_cnn = GeM(gem_p)
        self.lru_cnn = LocalRefinementUnit(cnn_dim, mix_dim, lru_kernel)
        self.lru_vit = LocalRefinementUnit(vit_dim, mix_dim, lru_kernel)
        self.gem_lru_cnn = GeM(gem_p)
        self.gem_lru_vit = GeM(gem_p)
        self.htm = HeterogenousTransmissionModule(mix_dim, htm_depth, htm_heads, share_pattern=htm_share_pattern)
        self.feature_dims = (cnn_dim, vit_dim, mix_dim, mix_dim, mix_dim, mix_dim)
        self.embed_dim = sum(self.feature_dims)
        self.necks = nn.ModuleList(nn.BatchNorm1d(d) for d in self.feature_dims)
        self.classifiers = nn.ModuleList(nn.Linear(d, num_classes, bias=False) for d in self.feature_dims)
        for bn, fc in zip(self.necks, self.classifiers):
            nn.init.ones_(bn.weight)
            nn.init.zeros_(bn.bias)
            bn.bias.requires_grad_(False)  # BNNeck: frozen shift
            nn.init.normal_(fc.weight, std=0.001)
        if pretrained_backbone and not self.vit.pos_embed.is_meta:
            self._load_imagenet(cnn_pretrained, vit_pretrained)

    def _load_imagenet(self, cnn_name: str, vit_name: str) -> None:
        import timm

        def creator(name: str):
            return lambda pretrained: timm.create_model(name, pretrained=True, num_classes=0) if pretrained else None

        cnn = try_pretrained_backbone(creator(cnn_name), f"FusionReID CNN ({cnn_name})")
        if cnn is not None:
            sd = {k: v for k, v in cnn.state_dict().items() if not k.startswith("fc.")}
            self.cnn.load_state_dict(sd, strict=True)
        vit = try_pretrained_backbone(creator(vit_name), f"FusionReID ViT ({vit_name})")
        if vit is not None:
            self.vit.load_imagenet(vit.state_dict())

    def forward_features(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> list[torch.Tensor]:
        """The six pre-BNNeck features, in :data:`FEATURE_NAMES` order."""
        B = images.shape[0]
        fmap_cnn = self.cnn.forward_features(images)  # (B, 2048, 16, 8)
        f_cnn = self.gem_cnn(fmap_cnn)
        tokens = self.vit(images, camids)  # (B, 1 + 210, 768)
        f_vit = tokens[:, 0]
        gh, gw = self.vit.grid_size
        fmap_vit = tokens[:, 1:].transpose(1, 2).reshape(B, -1, gh, gw)
        lru_cnn = self.lru_cnn(fmap_cnn)
        lru_vit = self.lru_vit(fmap_vit)
        f_lru_cnn = self.gem_lru_cnn(lru_cnn)
        f_lru_vit = self.gem_lru_vit(lru_vit)
        cls_cnn, cls_vit = self.htm(lru_cnn.flatten(2).transpose(1, 2), lru_vit.flatten(2).transpose(1, 2),
                                    f_lru_cnn.unsqueeze(1), f_lru_vit.unsqueeze(1))
        return [f_cnn, f_vit, f_lru_cnn, f_lru_vit, cls_cnn[:, 0], cls_vit[:, 0]]

    def embed(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Test-time embedding from the six pre-BN features: concat + L2 normalisation."""
        if self.normalize_each:
            features = [F.normalize(f, dim=-1) for f in features]
        return F.normalize(torch.cat(features, dim=-1), dim=-1)

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> FusionReIDOutput | torch.Tensor:
        """``images`` (B, 3, H, W) normalised with mean = std = 0.5; ``camids`` (B,) 0-based camera ids.

        Returns :class:`FusionReIDOutput` in training mode, else the (B, embed_dim) test embedding.
        """
        feats = self.forward_features(images, camids)
        if not self.training:
            return self.embed(feats)
        logits = [fc(bn(f)) for f, bn, fc in zip(feats, self.necks, self.classifiers)]
        return FusionReIDOutput(features=feats, logits=logits)


# ----------------------------------------------------------------------------------------- official checkpoint keys
#: (our prefix, official prefix) pairs; HTM layer/SEU/MFU names are handled by regex below
_PREFIX_MAP: tuple[tuple[str, str], ...] = (
    ("cnn.", "resnet.base."),
    ("gem_cnn.", "resnet.gap."),
    ("necks.0.", "resnet.bottleneck."),
    ("classifiers.0.", "resnet.classifier."),
    ("vit.", "transformer.base."),
    ("necks.1.", "transformer.bottleneck."),
    ("classifiers.1.", "transformer.classifier."),
    ("lru_cnn.", "res_LRU."),
    ("lru_vit.", "former_LRU."),
    ("gem_lru_cnn.", "gap_r."),
    ("gem_lru_vit.", "gap_f."),
    *((f"necks.{i + 2}.", f"bottleneck_{i + 1}.") for i in range(4)),
    *((f"classifiers.{i + 2}.", f"classifier_{i + 1}.") for i in range(4)),
)
_HTM_UNIT_MAP = {"seu_cnn": "SEU1", "seu_vit": "SEU2", "seu": "SEU", "mfu_cnn": "MUF_RES", "mfu_vit": "MFU_FORMER",
                 "mfu": "MFU"}
#: official keys without a counterpart here (the ViT's unused ImageNet head)
_OFFICIAL_DROPPED = ("transformer.base.fc.",)


def official_key(ours: str) -> str:
    """Our state-dict key -> the official repository's key (the mapping table, used in both directions)."""
    m = re.match(r"htm\.layers\.(\d+)\.(seu_cnn|seu_vit|seu|mfu_cnn|mfu_vit|mfu)\.(.*)$", ours)
    if m:
        i, unit, rest = m.groups()
        rest = rest.replace("block.", "blocks.0.", 1) if unit.startswith("seu") else "blocks.0." + rest
        rest = rest.replace("attn.kv_norm.", "attn.norm.")
        return f"HTM.blocks.{i}.{_HTM_UNIT_MAP[unit]}.{rest}"
    for mine, theirs in _PREFIX_MAP:
        if ours.startswith(mine):
            return theirs + ours[len(mine):]
    raise KeyError(f"no official counterpart for {ours!r}")


def convert_official_checkpoint(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint of the official FusionReID code (``model.state_dict()``, optionally ``module.``-prefixed)
    to this module's keys. The ViT's unused ImageNet head (``transformer.base.fc``) is dropped.

    Raises:
        KeyError: an official key this port does not know (e.g. a T2T-ViT or center-loss checkpoint).
    """
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if k.startswith(_OFFICIAL_DROPPED):
            continue
        ours = _official_to_ours(k)
        if ours is None:
            unknown.append(key)
            continue
        out[ours] = value
    if unknown:
        raise KeyError(f"official FusionReID keys without a counterpart: {unknown[:8]}")
    return out


def _official_to_ours(k: str) -> str | None:
    m = re.match(r"HTM\.blocks\.(\d+)\.(SEU1|SEU2|SEU|MUF_RES|MFU_FORMER|MFU)\.(.*)$", k)
    if m:
        i, unit, rest = m.groups()
        ours_unit = {v: u for u, v in _HTM_UNIT_MAP.items()}[unit]
        if not rest.startswith("blocks.0.") and not (unit.startswith("SEU") and rest.startswith("norm.")):
            return None
        if unit.startswith("SEU"):
            rest = rest.replace("blocks.0.", "block.", 1)
        else:
            rest = rest[len("blocks.0."):].replace("attn.norm.", "attn.kv_norm.")
        return f"htm.layers.{i}.{ours_unit}.{rest}"
    for mine, theirs in sorted(_PREFIX_MAP, key=lambda p: -len(p[1])):
        if k.startswith(theirs):
            return mine + k[len(theirs):]
    return None


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: nn.Module | None = None
                         ) -> dict[str, torch.Tensor]:
    """Used by ``create_model(..., checkpoint_path=...)``: official keys are converted, ours pass through."""
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    if any(k.startswith(("resnet.base.", "transformer.base.", "HTM.")) for k in keys):
        return convert_official_checkpoint(state_dict)
    return state_dict


# ------------------------------------------------------------------------------------------------------ entrypoints
_R50, _R101, _R152 = (3, 4, 6, 3), (3, 4, 23, 3), (3, 8, 36, 3)


def _variant(name: str, pretrained: bool | str, defaults: dict[str, Any], **kwargs: Any) -> FusionReID:
    return build_model(FusionReID, name, pretrained, defaults, **kwargs)  # type: ignore[return-value]


@register_model
def fusionreid_vitb16_r50(pretrained: bool | str = False, **kwargs: Any) -> FusionReID:
    """FusionReID, paper config: ResNet-50 + ViT-B/16 (overlapping stride 12, SIE), 256x128, HTM depth 2."""
    return _variant("fusionreid_vitb16_r50", pretrained, dict(cnn_layers=_R50), **kwargs)


@register_model
def fusionreid_deitb16_r50(pretrained: bool | str = False, **kwargs: Any) -> FusionReID:
    """FusionReID with ResNet-50 + DeiT-B/16 (same ViT-B architecture, DeiT ImageNet weights), stride 12."""
    return _variant("fusionreid_deitb16_r50", pretrained,
                    dict(cnn_layers=_R50, vit_pretrained="deit_base_patch16_224.fb_in1k"), **kwargs)


@register_model
def fusionreid_vitb16_r101(pretrained: bool | str = False, **kwargs: Any) -> FusionReID:
    """FusionReID with ResNet-101 + ViT-B/16 (stride 12)."""
    return _variant("fusionreid_vitb16_r101", pretrained,
                    dict(cnn_layers=_R101, cnn_pretrained="resnet101.tv_in1k"), **kwargs)


@register_model
def fusionreid_vitb16_r152(pretrained: bool | str = False, **kwargs: Any) -> FusionReID:
    """FusionReID with ResNet-152 + ViT-B/16 (stride 12)."""
    return _variant("fusionreid_vitb16_r152", pretrained,
                    dict(cnn_layers=_R152, cnn_pretrained="resnet152.tv_in1k"), **kwargs)


@register_model
def fusionreid_tiny(pretrained: bool | str = False, **kwargs: Any) -> FusionReID:
    """Tiny FusionReID for CPU tests (spec's minimal config): 64x32 input, bottleneck ResNet [1,1,1,1] of width 8
    (32-ch output), ViT dim 32 / depth 2 / 4 heads / patch 8 stride 6, mix dim 32, HTM depth 2."""
    return _variant("fusionreid_tiny", pretrained, dict(
        num_classes=4, num_cameras=2, img_size=(64, 32), cnn_layers=(1, 1, 1, 1), cnn_channels=(8, 8, 8, 8),
        vit_dim=32, vit_depth=2, vit_heads=4, patch_size=8, patch_stride=6, mix_dim=32, htm_heads=4,
        drop_path_rate=0.0), **kwargs)
