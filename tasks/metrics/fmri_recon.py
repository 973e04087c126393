"""Image-reconstruction metrics of the MindEye protocol (NeuroPictor's ``eval_metrics.py``).

Low level: PixCorr (Pearson correlation of the flattened pixels, per image pair, averaged), SSIM (grey images,
Gaussian window sigma 1.5, population covariance, as scikit-image's ``structural_similarity(gaussian_weights=True,
use_sample_covariance=False)``), AlexNet(2)/(5) 2-way identification (features.4 / features.11). High level:
InceptionV3 (avgpool) and CLIP ViT-L/14 (image embedding) 2-way identification, EffNet-B1 and SwAV-ResNet50 mean
correlation distance. Architectures come from torchvision / open_clip; their ImageNet/CLIP/SwAV weights are loaded
only when ``pretrained=True`` and available (offline here: random init, which exercises the code, not the numbers).

The functions score one set of pairs; the torchmetrics classes (:class:`PixCorr`, :class:`SSIMGray`,
:class:`TwoWayIdentification`, :class:`CorrelationDistance`, :func:`reconstruction_metric_collection`) accumulate
over batches and across DDP ranks: per-pair means as summed states, and 2-way identification — which compares
every reconstruction with every target — on the features of ALL samples gathered (``dist_reduce_fx="cat"``).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torchmetrics import Metric, MetricCollection
from torchmetrics.utilities import dim_zero_cat

__all__ = ["pixcorr", "ssim_gray", "two_way_identification", "correlation_distance", "feature_extractor",
           "reconstruction_metrics", "FEATURE_NETS", "PixCorr", "SSIMGray", "TwoWayIdentification",
           "CorrelationDistance", "reconstruction_metric_collection"]

#: metric name -> (architecture, layer, input side, kind): kind '2way' or 'distance'
FEATURE_NETS: dict[str, tuple[str, str, int, str]] = {
    "alexnet2": ("alexnet", "features.4", 256, "2way"),
    "alexnet5": ("alexnet", "features.11", 256, "2way"),
    "inception": ("inception_v3", "avgpool", 342, "2way"),
    "clip": ("clip_vit_l14", "image_embeds", 224, "2way"),
    "effnet": ("efficientnet_b1", "avgpool", 255, "distance"),
    "swav": ("resnet50_swav", "avgpool", 224, "distance"),
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))


def pixcorr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of the Pearson correlation of all pixels (B, C, H, W) of a prediction and its target."""
    p = pred.flatten(1).double()
    t = target.flatten(1).double()
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    r = (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)
    return r.mean().float()


def _gray(x: torch.Tensor) -> torch.Tensor:
    """scikit-image's rgb2gray weights (ITU-R 709)."""
    if x.shape[1] == 1:
        return x
    w = torch.tensor([0.2125, 0.7154, 0.0721], dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def ssim_gray(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM of grey images in [0, 1]: 11-tap Gaussian window (sigma 1.5, truncated at 3.5 sigma), population
    statistics, only windows fully inside the image (the border of half a window excluded) — scikit-image's
    ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``, the MindEye protocol.
    """
    x, y = _gray(pred).double(), _gray(target).double()
    r = int(3.5 * 1.5 + 0.5)
    if min(x.shape[-2:]) < 2 * r + 1:
        raise ValueError(f"SSIM needs images of at least {2 * r + 1} px (its Gaussian window), got {tuple(x.shape[-2:])}")
    g = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float64, device=x.device) / 1.5) ** 2)
    g = (g / g.sum())

    def blur(z: torch.Tensor) -> torch.Tensor:  # separable 'valid' filtering = the cropped border
        return F.conv2d(F.conv2d(z, g.view(1, 1, 1, -1)), g.view(1, 1, -1, 1))

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return s.mean(dim=(1, 2, 3)).mean().float()


def two_way_identification(pred_feats: torch.Tensor, target_feats: torch.Tensor) -> torch.Tensor:
    """2-way identification: for each reconstruction j, the fraction of other targets i whose feature correlation
    with it is lower than that of its own target j (chance 0.5), averaged."""
    p = pred_feats.flatten(1).double()
    t = target_feats.flatten(1).double()
    n = p.shape[0]
    if n < 2:
        raise ValueError("2-way identification needs at least two image pairs")
    p = (p - p.mean(1, keepdim=True)) / p.std(1, keepdim=True).clamp_min(1e-12)
    t = (t - t.mean(1, keepdim=True)) / t.std(1, keepdim=True).clamp_min(1e-12)
    r = t @ p.T / (p.shape[1] - 1)  # r[i, j] = corr(target i, prediction j)
    congruent = r.diagonal()
    return ((r < congruent[None]).sum(0).double() / (n - 1)).mean().float()


def correlation_distance(pred_feats: torch.Tensor, target_feats: torch.Tensor) -> torch.Tensor:
    """Mean over pairs of 1 - Pearson correlation of the features (scipy's ``correlation`` distance)."""
    p = pred_feats.flatten(1).double()
    t = target_feats.flatten(1).double()
    p, t = p - p.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    return (1 - (p * t).sum(1) / (p.norm(dim=1) * t.norm(dim=1)).clamp_min(1e-12)).mean().float()


def feature_extractor(name: str, pretrained: bool = False) -> Callable[[torch.Tensor], torch.Tensor]:
    """A frozen feature function for :data:`FEATURE_NETS` ``name``: images in [0, 1] (B, 3, H, W) -> features."""
    arch, layer, size, _ = FEATURE_NETS[name]
    if arch == "clip_vit_l14":
        import open_clip

        model = open_clip.create_model("ViT-L-14", pretrained="openai" if pretrained else None)
        mean, std = _CLIP

        def net(x: torch.Tensor) -> torch.Tensor:
            return model.encode_image(x)
    else:
        import torchvision
        from torchvision.models.feature_extraction import create_feature_extractor

        if arch == "resnet50_swav":
            base = torchvision.models.resnet50(weights=None)
            if pretrained:  # SwAV weights through torch.hub (facebookresearch/swav)
                base = torch.hub.load("facebookresearch/swav:main", "resnet50")
        elif arch == "inception_v3":
            base = torchvision.models.inception_v3(weights="DEFAULT" if pretrained else None, aux_logits=True,
                                                   init_weights=not pretrained)
        else:
            base = getattr(torchvision.models, arch)(weights="DEFAULT" if pretrained else None)
        model = create_feature_extractor(base, return_nodes={layer: "f"})
        mean, std = _IMAGENET

        def net(x: torch.Tensor) -> torch.Tensor:
            return model(x)["f"]
    model.eval().requires_grad_(False)
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)

    @torch.no_grad()
    def extract(images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        dev = next(model.parameters()).device
        x = ((x.to(dev) - m.to(dev)) / s.to(dev))
        return net(x).float().flatten(1).cpu()

    extract.model = model  # type: ignore[attr-defined]
    return extract


def reconstruction_metrics(pred: torch.Tensor, target: torch.Tensor, feature_nets: Sequence[str] = (),
                           pretrained: bool = False, extractors: dict[str, Callable] | None = None
                           ) -> dict[str, float]:
    """All metrics of the protocol for reconstructions ``pred`` and stimuli ``target`` (B, 3, H, W) in [0, 1].

    Args:
        pred: reconstructions.
        target: the stimuli (same size).
        feature_nets: which of :data:`FEATURE_NETS` to run (none by default: they are heavy).
        pretrained: load the feature networks' published weights.
        extractors: prebuilt extractors by name (reused across calls).
    """
    from torchmetrics.functional.image import peak_signal_noise_ratio

    out = {"pixcorr": float(pixcorr(pred, target)), "ssim": float(ssim_gray(pred, target)),
           "psnr": float(peak_signal_noise_ratio(pred.float(), target.float(), data_range=1.0))}
    for name in feature_nets:
        ex = (extractors or {}).get(name) or feature_extractor(name, pretrained)
        fp, ft = ex(pred), ex(target)
        kind = FEATURE_NETS[name][3]
        out[name] = float(two_way_identification(fp, ft) if kind == "2way" else correlation_distance(fp, ft))
    return out



# ------------------------------------------------------------------------------------- accumulating (DDP) metrics
class _PairMean(Metric):
    """Mean over all image pairs of a per-pair score (summed states: exact across batches and ranks)."""

    full_state_update = False
    higher_is_better = True

    def __init__(self, fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], **kwargs) -> None:
        super().__init__(**kwargs)
        self._fn = fn
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        n = pred.shape[0]
        self.total += self._fn(pred, target).double() * n  # the functions average over the batch's pairs
        self.count += n

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


class PixCorr(_PairMean):
    """:func:`pixcorr` accumulated over batches and ranks (images (B, C, H, W) in [0, 1])."""

    def __init__(self, **kwargs) -> None:
        super().__init__(pixcorr, **kwargs)


class SSIMGray(_PairMean):
    """:func:`ssim_gray` accumulated over batches and ranks (images in [0, 1], at least 11 px)."""

    def __init__(self, data_range: float = 1.0, **kwargs) -> None:
        super().__init__(lambda p, t: ssim_gray(p, t, data_range), **kwargs)


class _FeatureMetric(Metric):
    """Base of the feature metrics: ``update(pred, target)`` takes images when an ``extractor`` is given (features
    are computed per batch), else features (B, ...) directly."""

    full_state_update = False

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self._extractor = extractor

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        f = self._extractor(x) if self._extractor is not None else x
        return f.detach().flatten(1).float().to(self.device)


class TwoWayIdentification(_FeatureMetric):
    """:func:`two_way_identification` over ALL pairs seen on all ranks: the features of every reconstruction and
    target are kept and gathered (``cat``) before the all-pairs comparison (it is not a mean of batch scores).

    Args:
        extractor: image -> feature function (:func:`feature_extractor`), or None to pass features to ``update``.
    """

    higher_is_better = True

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(extractor, **kwargs)
        self.add_state("pred_feats", default=[], dist_reduce_fx="cat")
        self.add_state("target_feats", default=[], dist_reduce_fx="cat")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        self.pred_feats.append(self._features(pred))
        self.target_feats.append(self._features(target))

    def compute(self) -> torch.Tensor:
        return two_way_identification(dim_zero_cat(self.pred_feats), dim_zero_cat(self.target_feats))


class CorrelationDistance(_FeatureMetric):
    """:func:`correlation_distance` (mean over pairs) accumulated over batches and ranks.

    Args:
        extractor: image -> feature function, or None to pass features to ``update``.
    """

    higher_is_better = False

    def __init__(self, extractor: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs) -> None:
        super().__init__(extractor, **kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        n = pred.shape[0]
        self.total += correlation_distance(self._features(pred), self._features(target)).double() * n
        self.count += n

    def compute(self) -> torch.Tensor:
        return (self.total / self.count.clamp_min(1)).float()


def reconstruction_metric_collection(feature_nets: Sequence[str] = (), pretrained: bool = False,
                                     ssim: bool = True, pixel_two_way: bool = False,
                                     extractors: dict[str, Callable] | None = None) -> MetricCollection:
    """The protocol as a ``MetricCollection`` of images (B, 3, H, W) in [0, 1]: ``update(pred, target)``,
    ``compute()`` after all batches (synchronised across ranks).

    Args:
        feature_nets: which of :data:`FEATURE_NETS` to add (2-way identification or correlation distance).
        pretrained: load the feature networks' published weights.
        ssim: add SSIM (off for images smaller than its 11-px window).
        pixel_two_way: also 2-way identification on the raw pixels (a cheap check without feature networks).
        extractors: prebuilt extractors by name.
    """
    metrics: dict[str, Metric] = {"pixcorr": PixCorr()}
    if ssim:
        metrics["ssim"] = SSIMGray()
    if pixel_two_way:
        metrics["pixel_2way"] = TwoWayIdentification()
    for name in feature_nets:
        ex = (extractors or {}).get(name) or feature_extractor(name, pretrained)
        cls = TwoWayIdentification if FEATURE_NETS[name][3] == "2way" else CorrelationDistance
        metrics[name] = cls(ex)
    return MetricCollection(metrics)
