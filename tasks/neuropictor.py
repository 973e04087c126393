"""NeuroPictor training (the paper's stages as options of one task) and the voxel-adapter variant.

Stages (configs/neuropictor/): multi-subject pre-training (``sem_loss_weight: 0``, the model built with
``semantic_extra: false, unet_encoder_no_grad: true``), subject fine-tuning (``sem_loss_weight: 0.1``,
``init_from`` the pre-training checkpoint), CFG-mask fine-tuning (``uncond_prob: 0.05``, lr 1e-5). The loss is the
LDM epsilon-MSE plus the weighted semantic MSE between the predicted ``clip_txt`` and the OpenCLIP text features of
a caption (paper Sec. 3; the official ``CLDM_for_FMRI``). Validation samples with DDIM + classifier-free guidance
and scores the MindEye metrics. :class:`NeuroPictorAdapterTask` adds the voxel subjects of a datamodule (their
adapters) and the optional category head (the Haxby demo), and ``freeze_shared`` for adding a subject.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._base import ZooTask
from .metrics.fmri_recon import reconstruction_metric_collection


class NeuroPictorTask(ZooTask):
    """fMRI -> image diffusion training on NeuroPictor.

    Args:
        model: registered model name (``neuropictor_sd21``, ``neuropictor_tiny``).
        pretrained: False, a weight tag, or a local weight file (an official ``.ckpt`` converts).
        model_kwargs: constructor overrides.
        compile: ``torch.compile`` switch (see ``ZooTask``).
        init_from: the earlier stage's checkpoint (pre-training -> fine-tuning -> CFG-mask fine-tuning).
        lr: AdamW learning rate (1e-4; 1e-5 in the CFG-mask stage).
        weight_decay: AdamW weight decay (0.01).
        sem_loss_weight: weight of the semantic MSE (0 in multi-subject pre-training, 0.1 in fine-tuning).
        uncond_prob: probability that a sample's context is replaced by the empty-text context (0.05 in the
            CFG-mask stages, else 0).
        cls_loss_weight: weight of the category cross-entropy (models with a category head; 0 = not trained).
        freeze_shared: train only the subject adapters (of ``train_subjects`` when given): a new subject.
        train_subjects: adapters trained under ``freeze_shared`` (None: all).
        new_subjects: subjects whose adapters ``init_from`` does not hold (they start from scratch).
        val_steps: DDIM steps of validation sampling (20 in the official validation; 50 at test time).
        val_guidance: CFG scale of validation / test sampling (5.0).
        val_sample_batches: batches per validation / test epoch that are sampled and scored (0 = loss only).
        sample_seed: seed of the sampling noise.
        channels_last: keep the UNet, ControlNet and VAE weights and their image/latent inputs in channels-last
            (NHWC) memory format — the same maths, faster bf16 convolutions on recent GPUs (cuDNN, and inductor,
            whose own layout heuristic keeps this network channels-first because of the UNet's concatenating
            up-block convolutions). Off by default until measured on the paper-size step (see the card's
            speed_h200); eager CUDA GroupNorm copies its input to channels-first.
        fused_adamw: AdamW's fused kernel (one launch over all trained tensors per step): None = when every trained
            parameter is on a CUDA device, True = always (CPU too), False = never (PyTorch's default: foreach
            on CUDA).
        compile_vae: with ``compile`` on, also compile the frozen VAE encoder in place (it encodes the 512-px
            targets every step outside the network's forward, so ``compile`` alone leaves it eager).
    """

    def __init__(self, model: str = "neuropictor_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, lr: float = 1e-4, weight_decay: float = 0.01,
                 sem_loss_weight: float = 0.1, uncond_prob: float = 0.0, cls_loss_weight: float = 0.0,
                 freeze_shared: bool = False, train_subjects: list[str] | None = None,
                 new_subjects: list[str] | None = None, val_steps: int = 20, val_guidance: float = 5.0,
                 val_sample_batches: int = 1, sample_seed: int = 42, channels_last: bool = False,
                 fused_adamw: bool | None = None, compile_vae: bool = True) -> None:
        if not 0.0 <= uncond_prob <= 1.0:
            raise ValueError(f"uncond_prob must be in [0, 1], got {uncond_prob}")
        # read while the network is built inside ZooTask.__init__ (before save_hyperparameters can run)
        object.__setattr__(self, "init_exclude", tuple(f"adapters.adapters.{s}." for s in (new_subjects or [])))
        object.__setattr__(self, "_freeze", (freeze_shared, list(train_subjects) if train_subjects else None))
        self.channels_last, self.fused_adamw, self.compile_vae = channels_last, fused_adamw, compile_vae
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        self.lr, self.weight_decay = lr, weight_decay
        self.sem_loss_weight, self.uncond_prob, self.cls_loss_weight = sem_loss_weight, uncond_prob, cls_loss_weight
        self.freeze_shared, self.train_subjects = freeze_shared, train_subjects
        self.val_steps, self.val_guidance = val_steps, val_guidance
        self.val_sample_batches, self.sample_seed = val_sample_batches, sample_seed
        self._scheduler = None

    def on_net_built(self) -> None:
        # reconstruction metrics over every sampled batch, synchronised across ranks (not a mean of per-batch scores);
        # SSIM needs its 11-px Gaussian window
        ssim = int(getattr(self.net, "image_size", 0)) >= 11
        self.recon_metrics = torch.nn.ModuleDict({
            stage: reconstruction_metric_collection(ssim=ssim).clone(prefix=f"{stage}/") for stage in ("val", "test")})
        if self._freeze[0]:
            self.net.requires_grad_(False)
            for p in self._trainable():
                p.requires_grad_(True)
        net = self.net
        if self.channels_last:  # the convolutional nets; the fMRI ViT and the text tower have no 4-D weights
            for m in (net.unet, net.controlnet, net.vae):
                if m is not None:
                    m.to(memory_format=torch.channels_last)
        if self.compile_mode and self.compile_vae and net.vae is not None:
            net.vae.encoder.compile()  # in place: parameter names unchanged; eager_network() runs it eagerly
            object.__setattr__(self, "_regions", [*self._regions, net.vae.encoder])

    def _cl(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in channels-last memory format when ``channels_last`` is on (4-D tensors only)."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.ndim == 4 else x

    def _trainable(self) -> list[torch.nn.Parameter]:
        freeze, subs = self._freeze
        if freeze:
            return [p for s in (subs or list(self.net.adapters.adapters)) for p in
                    self.net.trainable_parameters(True, s)]
        return self.net.trainable_parameters()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = self._trainable()
        if not params:
            raise ValueError("nothing to train: freeze_shared=True but the model has no subject adapter")
        fused = all(p.is_cuda for p in params) if self.fused_adamw is None else self.fused_adamw
        kw: dict[str, Any] = {"fused": True} if fused else {}
        return torch.optim.AdamW(params, lr=self.lr, weight_decay=self.weight_decay, **kw)

    # ------------------------------------------------------------------------------------------------ the loss
    @property
    def noise_scheduler(self) -> Any:
        if self._scheduler is None:
            from diffusers import DDPMScheduler

            self._scheduler = DDPMScheduler.from_config(self.net.scheduler_config)
        return self._scheduler

    @staticmethod
    def _subject(batch: dict[str, Any]) -> str | None:
        if batch["fmri"].ndim != 2:
            return None  # surfaces: every subject shares the encoder's input space
        subs = set(batch["subject"])
        if len(subs) != 1:
            raise ValueError(f"a voxel batch must hold one subject (their voxel counts differ), got {sorted(subs)}")
        return subs.pop()

    def _losses(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        net = self.net
        latents = self._cl(net.encode_images(self._cl(batch["image"])))
        b = latents.shape[0]
        steps = self.noise_scheduler.config.num_train_timesteps
        if generator is None:  # drawn channels-first (the values do not depend on the memory format), then converted
            noise = self._cl(torch.randn(latents.shape, device=latents.device, dtype=latents.dtype))
            t = torch.randint(0, steps, (b,), device=latents.device)
        else:  # evaluation: the same noise and timesteps every epoch
            noise = self._cl(torch.randn(latents.shape, generator=generator).to(latents))
            t = torch.randint(0, steps, (b,), generator=generator).to(latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, t)
        uncond = None
        if self.training and self.uncond_prob > 0:
            uncond = torch.rand(b, device=latents.device) < self.uncond_prob
        out = self.network(batch["fmri"], noisy, t, subject=self._subject(batch), uncond_mask=uncond)
        losses = {"ldm": F.mse_loss(out.eps.float(), noise.float())}
        if self.sem_loss_weight > 0:
            with torch.no_grad():
                target = net.encode_text(list(batch["caption"]))
            losses["sem"] = F.mse_loss(out.clip_txt.float(), target.float())
        if out.logits is not None and "label" in batch:
            losses["ce"] = F.cross_entropy(out.logits.float(), batch["label"])
            losses["acc"] = (out.logits.argmax(-1) == batch["label"]).float().mean()
        losses["loss"] = losses["ldm"] + self.sem_loss_weight * losses.get("sem", 0.0) + \
            self.cls_loss_weight * losses.get("ce", 0.0)
        return losses

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True,
                      batch_size=batch["fmri"].shape[0])
        return losses["loss"]

    # ------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def generate(self, batch: dict[str, Any], steps: int | None = None, guidance: float | None = None
                 ) -> torch.Tensor:
        """DDIM + CFG images in [0, 1] for a batch's fMRI (fixed seed)."""
        from zoo.neuropictor import sample_images

        gen = torch.Generator().manual_seed(self.sample_seed)
        return sample_images(self.net, batch["fmri"], self._subject(batch), steps or self.val_steps,
                             self.val_guidance if guidance is None else guidance, generator=gen)

    def _evaluate(self, batch: dict[str, Any], batch_idx: int, prefix: str) -> None:
        gen = torch.Generator().manual_seed(self.sample_seed + batch_idx)
        losses = self._losses(batch, generator=gen)
        bs = batch["fmri"].shape[0]
        self.log_dict({f"{prefix}/{k}": v for k, v in losses.items()}, batch_size=bs, prog_bar=prefix == "val")
        if batch_idx < self.val_sample_batches:
            images = self.generate(batch)
            target = ((batch["image"].float() + 1) / 2).clamp(0, 1)
            metrics = self.recon_metrics[prefix]
            metrics.update(images.float(), target)
            self.log_dict(metrics, batch_size=bs)  # computed and reset at epoch end

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        return self.generate(batch)

    # ------------------------------------------------------------------------------------------- benchmarks
    def example_batch(self, batch_size: int) -> dict[str, Any]:
        net = self.net
        s = net.fmri_encoder.surface_size
        return {"fmri": torch.randn(batch_size, net.fmri_encoder.in_chans, s, s, device=self.device),
                # pixel-space models (no VAE) diffuse the image itself: as many channels as the UNet's input
                "image": torch.rand(batch_size, 3 if net.vae is not None else net.latent_channels, net.image_size,
                                    net.image_size, device=self.device) * 2 - 1,
                "caption": ["a photo"] * batch_size, "subject": [None] * batch_size}


class NeuroPictorAdapterTask(NeuroPictorTask):
    """:class:`NeuroPictorTask` for voxel subjects: ``subjects`` (their adapters) and ``num_classes`` (the category
    head) come from the datamodule (:class:`datamodules.haxby.HaxbyDataModule`) unless given in ``model_kwargs``."""

    data_links: ClassVar[tuple[str, ...]] = ("subjects", "num_classes")
