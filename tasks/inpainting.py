"""``InpaintingTask``: adversarial image inpainting (PEPSI, Diet-PEPSI) with manual optimisation.

Per training batch (official PEPSI loop): one discriminator step, then one generator step.

- D (hinge): ``mean(relu(1 + D(composite))) + mean(relu(1 - D(real)))``; D sees only the composited image.
- G: ``adv_weight * -mean(D(composite)) + l1_weight * L1(inpainted, real) + coarse_weight * (1 - t/T) * L1(coarse,
  real)``: L1 over the whole image, the coarse-path weight annealed linearly to 0 over ``T`` iterations.

Validation/test (per image, then averaged; [0, 1] scale): ``psnr`` (global PSNR of the composite), ``psnr_hole``
(PSNR over the hole pixels only: for PEPSI's 128x128 square holes this is the paper's "local PSNR" of the hole crop),
``ssim`` (RGB in [0, 1], torchmetrics, over the valid window positions as in scikit-image), ``ssim_luma`` (the
official code's SSIM, on the 8-bit BT.601 luma: :func:`ssim_luma_per_image`; compare it, not ``ssim``, with the
paper's SSIM), ``l1`` and ``l1_hole``; a grid of [masked input | coarse | output | ground truth] rows is logged when
the logger takes images.

The paper's protocol has two passes over the test set: square holes (local + global PSNR, SSIM) and free-form holes
(global PSNR); each pass is one ``test`` run with the datamodule's ``eval_mask`` set accordingly (see the configs;
``eval_mask: square_list`` + ``mask_list`` reads the official List/test_mask256.txt offsets).

Note: with two optimisers stepping per batch Lightning's ``global_step`` grows by 2 per iteration, so
``trainer.max_steps`` = 2 x iterations; the annealing counts iterations (``self.iterations``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.functional.image import structural_similarity_index_measure
from torchmetrics.image import PeakSignalNoiseRatio

import zoo

from ._base import ZooTask

__all__ = ["LUMA_BT601", "InpaintingTask", "coarse_weight_at", "hinge_d_loss", "hinge_g_loss", "luma_bt601",
           "psnr_hole_per_image", "ssim_luma_per_image", "ssim_per_image"]


def hinge_d_loss(real_scores: torch.Tensor, fake_scores: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss ``mean(relu(1 - D(real))) + mean(relu(1 + D(fake)))``."""
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def hinge_g_loss(fake_scores: torch.Tensor) -> torch.Tensor:
    """Generator hinge loss ``-mean(D(fake))``."""
    return -fake_scores.mean()


def coarse_weight_at(iteration: int, total: int, weight: float) -> float:
    """Coarse-path L1 weight ``weight * (1 - iteration / total)``, floored at 0 (PEPSI's alpha annealing)."""
    return weight * max(0.0, 1.0 - iteration / max(1, total))


def ssim_per_image(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """SSIM of each image (Gaussian window 11, sigma 1.5), averaged over the pixels whose window fits the image.

    torchmetrics averages its reflect-padded border too; excluding the 5-pixel border reproduces Wang et al.'s
    reference and ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False)``.
    """
    _, full = structural_similarity_index_measure(pred, target, data_range=data_range, return_full_image=True,
                                                  reduction="none")
    return full[..., 5:-5, 5:-5].mean(dim=(1, 2, 3))


#: ITU-R BT.601 luma weights of R, G, B: the Y row of ``tf.image.rgb_to_yuv`` (and of ``skimage.color.rgb2yuv``)
LUMA_BT601 = (0.299, 0.587, 0.114)


def luma_bt601(rgb: torch.Tensor, quantize: bool = True, eps: float = 5e-4) -> torch.Tensor:
    """BT.601 luma ``Y = 0.299 R + 0.587 G + 0.114 B`` of (B,3,H,W) images in [0, 1] -> (B,1,H,W) in [0, 1].

    ``quantize`` reproduces the official ``tf.to_int32(rgb_to_yuv(x)[..., 0:1] * 255.0)``: truncation to an 8-bit
    level, returned as ``level / 255``. ``eps`` (in levels) is added before the floor so float noise never drops a
    level: for 8-bit inputs ``255 Y`` is a multiple of 0.001 exactly, float32 noise is ~1e-5, so the result is the
    exact floor (the official float32 truncation may instead lose one level, at random, where ``255 Y`` is an
    integer, e.g. grey pixels).
    """
    w = torch.tensor(LUMA_BT601, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    y = (rgb * w).sum(dim=1, keepdim=True)
    if quantize:
        y = torch.floor((y * 255.0 + eps).clamp(0.0, 255.0)) / 255.0
    return y


def ssim_luma_per_image(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The official PEPSI SSIM of each image: SSIM of the 8-bit BT.601 luma channel.

    The official ``main.py`` computes ``tf.image.ssim(to_int32(255 * Y(A)), to_int32(255 * Y(B)), 255)`` with
    ``Y = tf.image.rgb_to_yuv(.)[..., 0]`` of the composite and the ground truth in [0, 1]. Chosen to match it:

    - luma: BT.601 ``0.299 R + 0.587 G + 0.114 B`` (``tf.image.rgb_to_yuv``; not ``tf.image.rgb_to_grayscale``'s
      0.2989/0.5870/0.1140, nor scikit-image's ``rgb2gray``, which is BT.709), truncated to 8-bit levels
      (:func:`luma_bt601`);
    - SSIM: ``tf.image.ssim``'s defaults, an 11x11 Gaussian window of sigma 1.5, k1 = 0.01, k2 = 0.03, population
      (co)variances, averaged over the VALID window positions; TF rescales the int32 images and ``max_val`` alike,
      so this is SSIM of ``level / 255`` at data range 1 = :func:`ssim_per_image` on the luma (=
      ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
      data_range=1)``).

    Args:
        pred: (B,3,H,W) composite in [0, 1].
        target: (B,3,H,W) ground truth in [0, 1].

    Returns:
        (B,) SSIM per image; the official number is their mean (it averages per-batch means of equal batches).
    """
    return ssim_per_image(luma_bt601(pred.float()), luma_bt601(target.float()), data_range=1.0)


def psnr_hole_per_image(pred: torch.Tensor, target: torch.Tensor, hole: torch.Tensor, data_range: float = 1.0,
                        min_mse: float = 1e-10) -> tuple[torch.Tensor, torch.Tensor]:
    """PSNR of each image over its hole pixels only: ``10 log10(data_range**2 / MSE_hole)``.

    ``MSE_hole`` averages the squared error over the hole's pixels and all channels, so for a square hole it is the
    PSNR of the hole crop (PEPSI's "local PSNR", official ``main.py``). ``MSE_hole`` is floored at ``min_mse`` (a
    perfect hole scores 100 dB at ``data_range`` 1 instead of ``inf``).

    Args:
        pred: (B,C,H,W) prediction.
        target: (B,C,H,W) ground truth.
        hole: (B,1,H,W) or (B,C,H,W), 1 = hole.
        data_range: value range of the images.
        min_mse: floor of the hole MSE.

    Returns:
        ``(psnr, has_hole)``: (B,) PSNR per image and (B,) bool, False for images without a hole (their PSNR is
        meaningless and must be left out of the average).
    """
    hole = hole.to(pred.dtype).expand_as(pred)
    n = hole.sum(dim=(1, 2, 3))
    mse = (((pred - target) ** 2) * hole).sum(dim=(1, 2, 3)) / n.clamp_min(1.0)
    return 10.0 * torch.log10(data_range ** 2 / mse.clamp_min(min_mse)), n > 0


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1]."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


class InpaintingTask(ZooTask):
    """GAN inpainting with a coarse training path and a region discriminator.

    Args:
        model: generator name (``pepsi``, ``diet_pepsi``, ``pepsi_tiny``, ``diet_pepsi_tiny``, ``local-dir:...``).
        pretrained: False, True, a weight tag, or a local weight file/folder for the generator.
        model_kwargs: generator constructor overrides.
        compile: compile the generator with ``torch.compile`` (False, True or a mode).
        discriminator: discriminator name (``pepsi_red``, ``pepsi_red_tiny``).
        discriminator_kwargs: discriminator overrides; ``input_size`` must equal the image size.
        lr_g: generator Adam learning rate (1e-4 in the paper).
        lr_d: discriminator Adam learning rate (4e-4).
        betas: Adam betas for both (0.5, 0.9).
        adv_weight: weight of the generator's hinge loss (0.1).
        l1_weight: weight of the inpainting-path L1 (10).
        coarse_weight: initial weight of the coarse-path L1 (5), annealed linearly to 0.
        coarse_decay_iterations: iterations over which the coarse weight reaches 0 (None: the run's length,
            ``trainer.max_steps / 2`` or the estimated number of batches).
        num_sample_images: samples in the logged validation grid (0 = none).
    """

    def __init__(
        self,
        model: str = "pepsi",
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        discriminator: str = "pepsi_red",
        discriminator_kwargs: dict[str, Any] | None = None,
        lr_g: float = 1e-4,
        lr_d: float = 4e-4,
        betas: tuple[float, float] = (0.5, 0.9),
        adv_weight: float = 0.1,
        l1_weight: float = 10.0,
        coarse_weight: float = 5.0,
        coarse_decay_iterations: int | None = None,
        num_sample_images: int = 4,
    ) -> None:
        self._disc_name = discriminator
        self._disc_kwargs = dict(discriminator_kwargs or {})
        super().__init__(model, pretrained, model_kwargs, compile)
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.register_buffer("iterations", torch.zeros((), dtype=torch.long))
        self.last_sample_grid: torch.Tensor | None = None

    def on_net_built(self) -> None:
        self.disc: nn.Module = zoo.create_model(self._disc_name, **self._disc_kwargs)
        self.val_metrics = nn.ModuleDict({
            "psnr": PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)),
            "psnr_hole": MeanMetric(),
            "ssim": MeanMetric(),
            "ssim_luma": MeanMetric(),
            "l1": MeanMetric(),
            "l1_hole": MeanMetric(),
        })

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Each optimiser's backward reaches only its own network (the discriminator's loss never touches the
        # generator, and the generator step leaves the discriminator frozen), so DDP must look for unused parameters.
        # Plain `strategy: ddp` gets it here (before the Trainer wraps the module); an explicit
        # ddp_find_unused_parameters_false is left as the user set it.
        from pytorch_lightning.strategies import DDPStrategy
        from pytorch_lightning.utilities import rank_zero_info

        strategy = self._trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy) and "find_unused_parameters" not in strategy._ddp_kwargs:
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info(f"{type(self).__name__}: DDP with find_unused_parameters=True (two optimisers, each "
                           "backward reaches only its own network)")

    # ------------------------------------------------------------------------------------------- optimisers
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        hp = self.hparams
        assert self.net is not None
        opt_g = torch.optim.Adam(self.net.parameters(), lr=hp.lr_g, betas=tuple(hp.betas))
        opt_d = torch.optim.Adam(self.disc.parameters(), lr=hp.lr_d, betas=tuple(hp.betas))
        return [opt_g, opt_d]

    def coarse_decay_total(self) -> int:
        """Iterations T of the coarse-weight annealing."""
        if self.hparams.coarse_decay_iterations:
            return int(self.hparams.coarse_decay_iterations)
        trainer = self._trainer
        if trainer is None:
            return 1_000_000  # the paper's run
        if trainer.max_steps and trainer.max_steps > 0:
            return max(1, trainer.max_steps // 2)  # two optimiser steps per iteration
        return max(1, int(trainer.estimated_stepping_batches))

    # --------------------------------------------------------------------------------------------- training
    def _iteration(self, image: torch.Tensor, mask: torch.Tensor, opt_g: torch.optim.Optimizer,
                   opt_d: torch.optim.Optimizer, backward: Any, toggle: Any, untoggle: Any, step: bool = True,
                   ) -> tuple[torch.Tensor, ...]:
        """One training iteration: the discriminator step, then the generator step against the updated
        discriminator. ``step=False`` (the benchmark's FLOP probe) runs the same forwards and backwards (backwards
        only under grad) without the optimiser steps and without counting the iteration."""
        hp = self.hparams
        out = self.network(image, mask, with_coarse=True)
        grad = torch.is_grad_enabled()

        # discriminator step on the composite (generator detached)
        toggle(opt_d)
        d_loss = hinge_d_loss(self.disc(image), self.disc(out.composite.detach()))
        opt_d.zero_grad(set_to_none=True)
        if grad:
            backward(d_loss)
        if step:
            opt_d.step()
        untoggle(opt_d)

        # generator step against the updated discriminator
        toggle(opt_g)
        adv = hinge_g_loss(self.disc(out.composite))
        l1 = (out.inpainted - image).abs().mean()
        l1_coarse = (out.coarse - image).abs().mean()
        w_coarse = coarse_weight_at(int(self.iterations), self.coarse_decay_total(), hp.coarse_weight)
        g_loss = hp.adv_weight * adv + hp.l1_weight * l1 + w_coarse * l1_coarse
        opt_g.zero_grad(set_to_none=True)
        if grad:
            backward(g_loss)
        if step:
            opt_g.step()
            self.iterations += 1
        untoggle(opt_g)
        return d_loss, g_loss, adv, l1, l1_coarse, w_coarse

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        image, mask = batch["image"], batch["mask"]
        opt_g, opt_d = self.optimizers()  # type: ignore[misc]
        d_loss, g_loss, adv, l1, l1_coarse, w_coarse = self._iteration(
            image, mask, opt_g, opt_d, self.manual_backward, self.toggle_optimizer, self.untoggle_optimizer)

        self.log_dict({"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach(), "train/adv": adv.detach(),
                       "train/l1": l1.detach(), "train/l1_coarse": l1_coarse.detach(), "train/coarse_weight": w_coarse},
                      prog_bar=False, on_step=True, on_epoch=False, batch_size=image.shape[0])
        self.log("train/l1_ep", l1.detach(), prog_bar=True, on_step=False, on_epoch=True, batch_size=image.shape[0])
        return g_loss.detach()

    # ------------------------------------------------------------------------------------------- evaluation
    def _evaluate(self, batch: dict[str, Any], batch_idx: int, prefix: str) -> None:
        image, mask = batch["image"], batch["mask"]
        want_grid = prefix == "val" and batch_idx == 0 and self.hparams.num_sample_images > 0
        out = self.network(image, mask, with_coarse=want_grid)
        pred, target = to_unit(out.composite.float()), to_unit(image.float())
        m = self.val_metrics
        m["psnr"].update(pred, target)
        psnr_hole, has_hole = psnr_hole_per_image(pred, target, mask)
        m["psnr_hole"].update(psnr_hole[has_hole])  # an empty update adds nothing
        m["ssim"].update(ssim_per_image(pred, target))
        m["ssim_luma"].update(ssim_luma_per_image(pred, target))
        err = (pred - target).abs()
        m["l1"].update(err.mean(dim=(1, 2, 3)))
        hole = mask.expand_as(err)
        m["l1_hole"].update((err * hole).sum() / hole.sum().clamp_min(1.0), weight=hole.sum().clamp_min(1.0))
        if want_grid:
            self._log_samples(image, mask, out)

    def _log_samples(self, image: torch.Tensor, mask: torch.Tensor, out: Any) -> None:
        from torchvision.utils import make_grid

        n = min(self.hparams.num_sample_images, image.shape[0])
        masked = image[:n] * (1 - mask[:n]) + mask[:n] * 0.0  # holes shown grey (0 in [-1, 1])
        rows = torch.stack([masked, out.coarse[:n], out.composite[:n], image[:n]], 1).flatten(0, 1)
        grid = make_grid(to_unit(rows.float().cpu()), nrow=4, padding=2)
        self.last_sample_grid = grid
        for logger in self.loggers:
            exp = getattr(logger, "experiment", None)
            if hasattr(exp, "add_image"):  # TensorBoard; CSV loggers take no images
                exp.add_image("val/samples (masked | coarse | output | truth)", grid, self.global_step)
            elif hasattr(logger, "log_image"):  # W&B and similar
                logger.log_image(key="val/samples", images=[grid])

    def _log_metrics(self, prefix: str) -> None:
        m = self.val_metrics
        self.log_dict({f"{prefix}/{k}": metric.compute() for k, metric in m.items()}, prog_bar=True, sync_dist=False)
        for metric in m.values():
            metric.reset()

    def on_fit_start(self) -> None:
        # metric states last reset inside a trainer.validate() are inference tensors; fit validates under no_grad
        for metric in self.val_metrics.values():
            metric.reset()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._log_metrics("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        """The composited result in [-1, 1]."""
        return self.network(batch["image"], batch["mask"]).composite

    # ------------------------------------------------------------------------------------- benchmark hooks
    def _bench_size(self) -> int:
        return int(getattr(self.disc, "input_size", 256))

    def example_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """A synthetic batch at the discriminator's image size with a centred square hole."""
        s = self._bench_size()
        image = torch.rand(batch_size, 3, s, s) * 2 - 1
        mask = torch.zeros(batch_size, 1, s, s)
        mask[:, :, s // 4: 3 * s // 4, s // 4: 3 * s // 4] = 1
        return {"image": image, "mask": mask}

    def bench_train_step(self, batch: dict[str, torch.Tensor], step: bool = True) -> torch.Tensor:
        """``sharezoo bench --task train``: one training iteration (D step + G step) by ``training_step``'s own
        path outside a Trainer, with the task's two Adam optimisers; freezing the other network's parameters during
        each step as Lightning's ``toggle_optimizer`` does. ``step=False``: forwards and backwards only (FLOP probe)."""
        if getattr(self, "_bench_opts", None) is None:
            self._bench_opts = self.configure_optimizers()
        opt_g, opt_d = self._bench_opts
        saved = {p: p.requires_grad for p in self.parameters()}

        def toggle(opt: torch.optim.Optimizer) -> None:
            mine = {id(p) for g in opt.param_groups for p in g["params"]}
            for p, r in saved.items():
                p.requires_grad_(r and id(p) in mine)

        def untoggle(opt: torch.optim.Optimizer) -> None:
            for p, r in saved.items():
                p.requires_grad_(r)

        return self._iteration(batch["image"], batch["mask"], opt_g, opt_d, torch.Tensor.backward, toggle, untoggle,
                               step=step)[1]

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``(image, mask)`` for the generator's inference forward."""
        b = self.example_batch(batch_size)
        return b["image"], b["mask"]
