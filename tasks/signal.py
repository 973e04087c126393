"""Lightning tasks of the physiological-signal family (PPGFlowECG).

- :class:`CardioAlignTask`: stage 1, the shared-encoder VAE with reconstruction + KL + latent alignment +
  cross-reconstruction + InfoNCE (spec §Losses; weights from the reference ``config/cardioalign_encoder.yaml``).
- :class:`ECGFlowTask`: stage 2, the latent rectified flow on frozen stage-1 latents (4 t-draws per step, EMA,
  Euler sampling at validation/test with waveform metrics).
- :class:`ECGClassificationTask`: multi-label CVD / arrhythmia detection on real or generated ECG.

Batches are dicts from :class:`datamodules.signal.WFDBPairedSignalDataModule`: ``ecg``/``ppg`` (B, 1, T), ``labels``.

Evaluation gap: the paper's headline fidelity metric, FID on 1-lead ECGFounder embeddings (MCMED 12.84, VitalDB 27.09,
MIMIC-AFib 37.69, BIDMC 54.22), is NOT computed: the ECGFounder weights (HF ``PKUDigitalHealth/ECGFounder``,
``1_lead_ECGFounder.pth``) are not available offline and a FID on other features is not comparable. Plug in an
ECGFounder ``Net1D`` zoo model and :func:`tasks.metrics.signal.frechet_distance` (``small_sample_below=0``, eps 1e-6) on
its pooled features of real and generated windows. Heart-rate MAE uses our own R-peak detector, not biosppy's (see
:mod:`tasks.metrics.signal`).
"""
from __future__ import annotations

import copy
import inspect
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from timm.utils.model_ema import ModelEmaV3
from torch import nn

import zoo
from tasks._base import ZooTask
from tasks.metrics import signal as sm

__all__ = [
    "CardioAlignTask", "ECGClassificationTask", "ECGFlowTask", "ModelEMA", "WarmupReduceLROnPlateau",
    "cardioalign_loss", "flow_latents", "flow_matching_loss", "gaussian_kl", "infonce_loss", "kl_to_standard_normal",
    "rectified_flow_loss",
]


# ------------------------------------------------------------------------------------------------ losses
def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(μ, σ²) ‖ N(0, I)) summed over the channel dim, averaged over batch and time (reference VAE loss)."""
    return (0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)).sum(1).mean()


def gaussian_kl(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor) -> torch.Tensor:
    """KL(N_p ‖ N_q) of diagonal Gaussians, summed over the last (time) dim and averaged over the rest, as the
    reference alignment loss does."""
    kl = 0.5 * ((logvar_p - logvar_q).exp() + (mu_q - mu_p).pow(2) / logvar_q.exp() - 1.0 + logvar_q - logvar_p)
    return kl.sum(-1).mean()


def infonce_loss(a: torch.Tensor, b: torch.Tensor, temperature: float = 0.07) -> torch.Tensor:
    """Symmetric InfoNCE between matched rows (cosine similarity / τ).

    (B, C, L) latents are pooled over every dim between batch and the last one (the channel dim of (B, 4, L)),
    exactly as the reference pools them, giving (B, L) vectors.
    """
    if a.ndim >= 3:
        a, b = a.mean(dim=tuple(range(1, a.ndim - 1))), b.mean(dim=tuple(range(1, b.ndim - 1)))
    logits = F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).t() / temperature
    labels = torch.arange(a.shape[0], device=a.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))


def cardioalign_loss(
    net: nn.Module, ecg: torch.Tensor, ppg: torch.Tensor, kld_weight: float = 1e-4, lambda_align: float = 1e-2,
    lambda_cross: float = 5e-4, lambda_infonce: float = 1e-3, temperature: float = 0.07,
    noise: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, torch.Tensor]:
    """Stage-1 objective (spec §Losses): both VAE losses + λ_align·(L2(μ) + symmetric KL) + λ_cross·cross-recon
    with detached latents + λ_infonce·InfoNCE(μ_ecg, μ_ppg). ``noise``: posterior ε of ECG and PPG (drawn when None)."""
    out = net.cardioalign(ecg, ppg, noise=noise, cross=lambda_cross > 0)
    mse_e, mse_p = F.mse_loss(out.recon_ecg, ecg), F.mse_loss(out.recon_ppg, ppg)
    kl_e = kl_to_standard_normal(out.mean_ecg, out.logvar_ecg)
    kl_p = kl_to_standard_normal(out.mean_ppg, out.logvar_ppg)
    align = F.mse_loss(out.mean_ecg, out.mean_ppg) + 0.5 * (
        gaussian_kl(out.mean_ecg, out.logvar_ecg, out.mean_ppg, out.logvar_ppg)
        + gaussian_kl(out.mean_ppg, out.logvar_ppg, out.mean_ecg, out.logvar_ecg))
    zero = ecg.new_zeros(())
    cross = F.mse_loss(out.cross_ecg, ecg) + F.mse_loss(out.cross_ppg, ppg) if lambda_cross > 0 else zero
    nce = infonce_loss(out.mean_ecg, out.mean_ppg, temperature) if lambda_infonce > 0 else zero
    loss = (mse_e + kld_weight * kl_e) + (mse_p + kld_weight * kl_p) + lambda_align * align + lambda_cross * cross \
        + lambda_infonce * nce
    return {"loss": loss, "mse_ecg": mse_e, "mse_ppg": mse_p, "kl_ecg": kl_e, "kl_ppg": kl_p, "align": align,
            "cross": cross, "infonce": nce}


def flow_matching_loss(
    velocity: Any, z: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
) -> torch.Tensor:
    """Rectified-flow MSE for given draws: times ``t`` (D, B) in [0, 1] and noise ``eps`` (D, *z.shape).

    All D draws go through ONE forward of ``velocity`` on the batch repeated D times (draw-major, ``cond`` repeated
    alike). Since the draws have equal size, the MSE over the stacked batch equals the mean over draws of each draw's
    ‖v(x_t, t | c) - (z - ε)‖² mean, x_t = (1-t)·ε + t·z: the reference's per-draw loop, D times fewer launches.
    """
    d, b = t.shape
    tt = t.reshape(d, b, *([1] * (z.ndim - 1)))
    x_t = ((1 - tt) * eps + tt * z).flatten(0, 1)
    v = velocity(x_t, t.reshape(d * b), cond.repeat(d, *([1] * (cond.ndim - 1))))
    return F.mse_loss(v.float(), (z - eps).flatten(0, 1).float())


def rectified_flow_loss(
    velocity: Any, z: torch.Tensor, cond: torch.Tensor, num_draws: int = 4, generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Mean over ``num_draws`` t ~ U(0,1) of ‖v(x_t, t | c) - (z - ε)‖², x_t = (1-t)·ε + t·z (noise at t=0).

    Draws all times first, t (num_draws, B), then all noise, ε (num_draws, *z.shape), and evaluates every draw in one
    forward (:func:`flow_matching_loss`). The loss is the reference's; the order in which the random stream is
    consumed is not (the reference draws t then ε per draw), so a given seed gives other draws than it did there.
    """
    t = torch.rand((num_draws, z.shape[0]), generator=generator, device=z.device, dtype=z.dtype)
    eps = torch.randn((num_draws, *z.shape), generator=generator, device=z.device, dtype=z.dtype)
    return flow_matching_loss(velocity, z, cond, t, eps)


def flow_latents(
    encoder: Any, ecg: torch.Tensor, ppg: torch.Tensor, sample: bool = True, noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled float32 stage-1 latents of the ECG (flow target) and the PPG (condition), both modalities in ONE
    forward of the (frozen, shared) encoder: per-window ops only (GroupNorm, attention over time), so this is the
    same as encoding each alone. ``noise`` (2B, 4, L) is the posterior ε of [ecg; ppg] (drawn when None)."""
    from zoo.ppgflowecg import PPGFlowECG

    mean, logvar = encoder(torch.cat([ecg, ppg]))
    z = PPGFlowECG.reparameterize(mean, logvar, sample=sample, noise=noise).float()
    return z[: ecg.shape[0]], z[ecg.shape[0]:]


# ------------------------------------------------------------------------------------------------ EMA, schedule
_EMA_ARGS = inspect.signature(ModelEmaV3.__init__).parameters


class ModelEMA(ModelEmaV3):
    """Exponential moving average of a module's parameters and buffers, with the schedule of ema-pytorch 0.7.7's
    ``EMA(beta=decay, update_after_step=start, update_every=every)`` that the reference uses (its defaults
    ``inv_gamma=1``, ``power=2/3``, ``min_value=0``): timm's ``ModelEmaV3`` (whose warm-up decay is ema-pytorch's
    formula, and whose update lerps floating tensors and copies the others) plus the two things it lacks.

    Call :meth:`step` once per optimiser step. With ``s`` the number of earlier calls (ema-pytorch's ``step`` before
    its increment): the first call (s = 0) copies the online weights; afterwards only calls with ``s % every == 0``
    act (ema-pytorch's ``update_every``, not in ``ModelEmaV3``): they copy while ``s <= start`` and past that average
    with the warm-up decay ``decay(s + 1) = clamp(1 - (1 + e / inv_gamma) ** -power, min_decay, decay)``,
    ``e = max(s - start, 0)`` (:meth:`current_decay`, ``ModelEmaV3.get_decay``), which rises from 0.80 at the
    first average (e = 10) to the cap ``decay`` = 0.995 at e ≈ 2,830 (of the reference's 10,000 steps). A copy is
    ``ModelEmaV3``'s update with decay 0 (``lerp`` with weight 1 returns the online value exactly).
    ``warmup=False`` averages with the constant ``decay`` instead.

    The step count is a Python int (:attr:`steps`; ``ModelEmaV3`` keeps none), so :meth:`step` never reads the
    device; the ``num_steps`` buffer is its copy in state dicts and checkpoints (written when saving, read back when
    loading).

    Args:
        model: the online module (deep-copied).
        decay: the maximum EMA decay (ema-pytorch ``beta``; 0.995 in the reference).
        every: act on every ``every``-th call (``update_every``, 10).
        start: copy instead of averaging while fewer calls have been made (``update_after_step``, 100).
        inv_gamma: warm-up inverse multiplicative factor (1.0).
        power: warm-up exponent (2/3).
        min_decay: warm-up floor (ema-pytorch ``min_value``, 0).
        warmup: use the warm-up schedule (True, as the reference); False: constant ``decay``.
    """

    def __init__(
        self, model: nn.Module, decay: float = 0.995, every: int = 10, start: int = 100, inv_gamma: float = 1.0,
        power: float = 2 / 3, min_decay: float = 0.0, warmup: bool = True,
    ) -> None:
        # stochastic rounding (newer timm) off: it only concerns a bf16 average and would draw random numbers
        extra = {"stochastic_rounding": False} if "stochastic_rounding" in _EMA_ARGS else {}
        super().__init__(model, decay=decay, min_decay=min_decay, update_after_step=start, use_warmup=warmup,
                         warmup_gamma=inv_gamma, warmup_power=power, **extra)
        self.module.requires_grad_(False)
        self.every, self.start = every, start
        self.steps = 0
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        with torch.no_grad():
            self.num_steps.fill_(self.steps)
        super()._save_to_state_dict(destination, prefix, keep_vars)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        if prefix + "num_steps" in state_dict:
            self.steps = int(state_dict[prefix + "num_steps"])

    def current_decay(self, step: int | None = None) -> float:
        """Decay used by an average when ``step`` calls have been made, this one included (ema-pytorch
        ``get_current_decay`` with its ``step`` after the increment; 0 = a copy); default: :attr:`steps`."""
        return self.get_decay(self.steps if step is None else step)

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        s = self.steps
        self.steps += 1
        if s and s % self.every:  # the first call always acts (ema-pytorch initialises the average with it)
            return
        self._check(model)
        self.update(model, step=self.steps)  # decay 0 (a copy) while s <= start

    def _check(self, model: nn.Module) -> None:
        ema, src = self.module.state_dict(), model.state_dict()
        if len(ema) != len(src) or any(e.shape != v.shape for e, v in zip(ema.values(), src.values())):
            raise ValueError("ModelEMA: the module does not match the averaged one")

    @torch.no_grad()
    def copy_from(self, model: nn.Module) -> None:
        self._check(model)
        self.set(model)


class WarmupReduceLROnPlateau:
    """Linear warm-up from the base lr to ``warmup_lr`` over ``warmup`` steps, then reduce-on-plateau on the step
    loss (the reference ``ReduceLROnPlateauWithWarmup``, stepped every optimisation step).

    Args:
        optimizer: the optimiser.
        warmup_lr: lr reached at the end of warm-up.
        warmup: warm-up steps.
        factor: multiplicative decay on a plateau.
        patience: steps without relative improvement > ``threshold`` before decaying.
        threshold: relative improvement threshold.
        min_lr: floor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, warmup_lr: float = 8e-4, warmup: int = 1000,
                 factor: float = 0.5, patience: int = 1000, threshold: float = 1e-2, min_lr: float = 1e-9) -> None:
        self.optimizer, self.warmup_lr, self.warmup = optimizer, warmup_lr, warmup
        self.factor, self.patience, self.threshold, self.min_lr = factor, patience, threshold, min_lr
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.steps, self.best, self.bad = 0, math.inf, 0

    def step(self, loss: float) -> None:
        self.steps += 1
        if self.steps <= self.warmup:
            for g, base in zip(self.optimizer.param_groups, self.base_lrs):
                g["lr"] = base + (max(self.warmup_lr, base) - base) * self.steps / max(1, self.warmup)
            return
        if loss < self.best * (1 - self.threshold):
            self.best, self.bad = loss, 0
        else:
            self.bad += 1
        if self.bad > self.patience:
            for g in self.optimizer.param_groups:
                g["lr"] = max(g["lr"] * self.factor, self.min_lr)
            self.bad = 0

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "optimizer"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)


# ------------------------------------------------------------------------------------------------ stage 1
class CardioAlignTask(ZooTask):
    """Stage 1: CardioAlign VAE (shared encoder; ECG and PPG decoders) on paired windows.

    Args:
        model: registered PPGFlowECG model ('ppgflowecg_base', 'ppgflowecg_tiny').
        pretrained: False, True, a tag, or a local weight file/folder.
        model_kwargs: constructor overrides (``seq_len`` must equal the datamodule's window length; checked).
        compile: compile the encoder and decoders with torch.compile.
        conv1d_as_conv2d: with ``compile``, run the VAE's 1-D convolutions as 2-D ones
            (``zoo.ppgflowecg.conv1d_as_conv2d``) so inductor lays them out channels-last: stage 1 1.09x faster on an
            H200 in bf16 (benchmarks/README.md). No effect without ``compile``.
        lr: AdamW learning rate (reference 2e-5).
        weight_decay: AdamW weight decay (reference: torch default 0.01).
        kld_weight: KL-to-prior weight (1e-4).
        lambda_align: alignment weight (1e-2).
        lambda_cross: cross-reconstruction weight (5e-4).
        lambda_infonce: InfoNCE weight (1e-3).
        temperature: InfoNCE temperature (0.07).
        cosine_steps: CosineAnnealingLR period in optimisation steps (reference 40,000); 0 disables.
        eta_min: cosine floor (1e-9).
    """

    def __init__(
        self, model: str = "ppgflowecg_tiny", pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False, lr: float = 2e-5, weight_decay: float = 0.01, kld_weight: float = 1e-4,
        lambda_align: float = 1e-2, lambda_cross: float = 5e-4, lambda_infonce: float = 1e-3,
        temperature: float = 0.07, cosine_steps: int = 40_000, eta_min: float = 1e-9,
        conv1d_as_conv2d: bool = True,
    ) -> None:
        object.__setattr__(self, "_conv2d", conv1d_as_conv2d)  # read by on_net_built, maybe inside ZooTask's __init__
        super().__init__(model, pretrained, model_kwargs, compile)
        self.save_hyperparameters()

    def setup(self, stage: str) -> None:
        super().setup(stage)
        _check_window(self)

    def on_net_built(self) -> None:
        # stage 2's flow transformer is not trained here: freeze it so DDP does not wait for its gradients
        self.net.flow.requires_grad_(False)
        object.__setattr__(self, "_stage1", self.net)  # an alias outside the module tree (not saved twice)
        if self.compile_mode:  # compile the stage-1 modules; the wrapper stays outside the module tree
            mode = None if self.compile_mode is True else str(self.compile_mode)
            object.__setattr__(self, "_stage1", _CompiledStage1(self.net, mode, self._conv2d))

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        sd = checkpoint.get("state_dict")
        if isinstance(sd, dict):  # checkpoints written while the alias was registered hold every weight twice
            for k in [k for k in sd if k.startswith("_stage1.")]:
                del sd[k]

    def _losses(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.hparams
        return cardioalign_loss(self._stage1, batch["ecg"], batch["ppg"], h.kld_weight, h.lambda_align,
                                h.lambda_cross, h.lambda_infonce, h.temperature)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        losses = self._losses(batch)
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items() if k != "loss"},
                      batch_size=batch["ecg"].shape[0])
        self.log("train/loss", losses["loss"].detach(), prog_bar=True, batch_size=batch["ecg"].shape[0])
        return losses["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor], stage: str) -> None:
        losses = self._losses(batch)
        n = batch["ecg"].shape[0]
        self.log_dict({f"{stage}/{k}": v for k, v in losses.items()}, batch_size=n)
        mean = self.net.encode_dist(batch["ecg"])[0]
        self.log(f"{stage}/recon_mae_ecg", (self.net.decode_ecg(mean * zoo.ppgflowecg.LATENT_SCALE)
                                            - batch["ecg"]).abs().mean(), batch_size=n)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def example_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        return _paired_batch(self.net, batch_size)

    def example_inputs(self, batch_size: int) -> tuple:
        return (_paired_batch(self.net, batch_size)["ppg"],)

    def configure_optimizers(self) -> Any:
        params = [p for n, p in self.net.named_parameters() if not n.startswith("flow.")]
        # one fused kernel over the ~318M stage-1 parameters on a GPU (the default there is the multi-pass foreach)
        opt = torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay,
                                fused=True if params[0].is_cuda else None)
        if not self.hparams.cosine_steps:
            return opt
        sch = torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.hparams.cosine_steps, self.hparams.eta_min)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sch, "interval": "step"}}


def _check_window(task: ZooTask) -> None:
    """The datamodule's window length must be the model's ``seq_len`` (the latent length depends on it)."""
    dm = task.trainer.datamodule if task._trainer is not None else None
    want = getattr(dm, "seq_len", None)
    if want is not None and task.net is not None and int(want) != task.net.seq_len:
        raise ValueError(f"the data windows have {want} samples but {task.model_name} expects seq_len="
                         f"{task.net.seq_len}: set model_kwargs.seq_len: {want} (or the data's window_s/fs)")


def _paired_batch(net: nn.Module, n: int) -> dict[str, torch.Tensor]:
    dev = next(net.parameters()).device
    return {"ecg": torch.randn(n, net.in_chans, net.seq_len, device=dev),
            "ppg": torch.randn(n, net.in_chans, net.seq_len, device=dev)}


class _CompiledStage1:
    """The stage-1 API of a PPGFlowECG with its encoder and decoders compiled (not an nn.Module on purpose), their 1-D
    convolutions run as 2-D ones when ``conv1d_as_conv2d`` (``zoo.ppgflowecg.conv1d_as_conv2d``, in place)."""

    def __init__(self, net: nn.Module, mode: str | None, conv1d_as_conv2d: bool = True) -> None:
        for name in ("encoder", "ecg_decoder", "ppg_decoder"):
            module = zoo.ppgflowecg.conv1d_as_conv2d(getattr(net, name), conv1d_as_conv2d)
            setattr(self, name, torch.compile(module, mode=mode))

    def encode_dist(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.encoder(x)

    def decode_ecg(self, z: torch.Tensor) -> torch.Tensor:
        return self.ecg_decoder(z)

    def decode_ppg(self, z: torch.Tensor) -> torch.Tensor:
        return self.ppg_decoder(z)

    def cardioalign(self, ecg: torch.Tensor, ppg: torch.Tensor,
                    noise: tuple[torch.Tensor, torch.Tensor] | None = None, cross: bool = False) -> Any:
        return zoo.ppgflowecg.cardioalign_forward(self, ecg, ppg, noise, cross)


# ------------------------------------------------------------------------------------------------ stage 2
class ECGFlowTask(ZooTask):
    """Stage 2: latent rectified flow from the PPG latent to the ECG latent, stage 1 frozen.

    Args:
        model: registered PPGFlowECG model.
        pretrained: False, True, a tag, or a local weight file/folder (whole model).
        model_kwargs: constructor overrides (``seq_len`` must equal the datamodule's window length; checked).
        compile: compile the flow transformer and the frozen encoder with torch.compile.
        conv1d_as_conv2d: with ``compile``, run the frozen encoder's 1-D convolutions as 2-D ones
            (``zoo.ppgflowecg.conv1d_as_conv2d``; channels-last under inductor). No effect without ``compile``.
        stage1_checkpoint: stage-1 weights (every key but the flow's), loaded when the network is built (``ZooTask``'s
            ``init_from``; ``load_from_checkpoint`` does not read it): a CardioAlignTask ``.ckpt``, our
            safetensors/folder, or the reference ``VAE-iter-*.pth``; None keeps the weights given by ``pretrained``
            (the zoo).
        lr: Adam learning rate (reference 1e-4).
        betas: Adam betas (0.9, 0.96).
        warmup_lr: lr at the end of warm-up (8e-4).
        warmup_steps: warm-up steps (1000).
        plateau_factor: lr decay on a loss plateau (0.5).
        plateau_patience: plateau patience in steps (1000).
        min_lr: lr floor (1e-9).
        num_t_draws: t draws per step (4).
        ema_decay: maximum EMA decay (0.995; ema-pytorch ``beta``).
        ema_every: EMA update interval in steps (10).
        ema_start: steps during which the EMA copies the online weights (100, ema-pytorch ``update_after_step``).
        ema_inv_gamma: EMA warm-up inverse gamma (1.0, ema-pytorch default).
        ema_power: EMA warm-up power (2/3, ema-pytorch default): past ``ema_start`` the decay is
            ``min(1 - (1 + e / ema_inv_gamma) ** -ema_power, ema_decay)``, e = steps past ``ema_start``
            (:class:`ModelEMA`; 0.80 at the first average, the 0.995 cap after ~2,830 more steps).
        ema_warmup: use that warm-up (True, as the reference); False: constant ``ema_decay``.
        sample_steps: Euler steps when sampling (10).
        val_sample_batches: validation batches that are sampled (0: none).
        encode_with_noise: stage-1 latents are posterior samples (reference) rather than means.
        fd_small_sample_below: Fréchet distance of the epoch's sampled windows: with fewer windows than this, PCA to
            ``fd_pca_dim`` dims, eps 1e-4, mean of ``fd_trials`` (the reference script's N < 3000 branch); otherwise
            raw windows, eps 1e-6. 0: always raw.
        fd_pca_dim: PCA dims of that branch (32).
        fd_trials: PCA trials averaged (5).

    Logged at validation/test: flow losses (online and EMA), and on ``sample_steps``-step Euler samples of the EMA
    flow: MAE, RMSE, Pearson r, FD, heart-rate MAE. FID on ECGFounder features is not computed (module docstring).
    """

    init_exclude: ClassVar[tuple[str, ...]] = ("flow.",)  # stage 2 trains the flow from scratch
    init_key: ClassVar[str] = "stage1_checkpoint"

    def __init__(
        self, model: str = "ppgflowecg_tiny", pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False, stage1_checkpoint: str | None = None, lr: float = 1e-4,
        betas: tuple[float, float] = (0.9, 0.96), warmup_lr: float = 8e-4, warmup_steps: int = 1000,
        plateau_factor: float = 0.5, plateau_patience: int = 1000, min_lr: float = 1e-9, num_t_draws: int = 4,
        ema_decay: float = 0.995, ema_every: int = 10, ema_start: int = 100, sample_steps: int = 10,
        val_sample_batches: int = 1, encode_with_noise: bool = True, conv1d_as_conv2d: bool = True,
        ema_inv_gamma: float = 1.0, ema_power: float = 2 / 3, ema_warmup: bool = True,
        fd_small_sample_below: int = 3000, fd_pca_dim: int = 32, fd_trials: int = 5,
    ) -> None:
        # what on_net_built needs, set before ZooTask may build the network inside its __init__
        object.__setattr__(self, "_cfg", {"ema_decay": ema_decay,
                                          "ema_every": ema_every, "ema_start": ema_start,
                                          "ema_inv_gamma": ema_inv_gamma, "ema_power": ema_power,
                                          "ema_warmup": ema_warmup, "conv1d_as_conv2d": conv1d_as_conv2d})
        super().__init__(model, pretrained, model_kwargs, compile, init_from=stage1_checkpoint)
        self.save_hyperparameters()
        self._sched: WarmupReduceLROnPlateau | None = None
        self._sched_losses: list[torch.Tensor] = []  # step losses not yet given to the schedule (see _step_schedule)
        self._eval_store: dict[str, list[np.ndarray]] = {}

    def on_net_built(self) -> None:
        cfg = self._cfg
        for name in ("encoder", "ecg_decoder", "ppg_decoder"):
            getattr(self.net, name).requires_grad_(False).eval()
        self.flow_ema = ModelEMA(self.net.flow, cfg["ema_decay"], cfg["ema_every"], cfg["ema_start"],
                                 cfg["ema_inv_gamma"], cfg["ema_power"], warmup=cfg["ema_warmup"])
        # aliases outside the module tree (registering them would store the flow and the encoder twice in every
        # checkpoint: +386 MB per stage-2 .ckpt at paper size)
        object.__setattr__(self, "_flow", self.net.flow)
        object.__setattr__(self, "_encoder", self.net.encoder)
        if self.compile_mode:  # the flow and the frozen encoder; the wrappers stay outside the module tree
            mode = None if self.compile_mode is True else str(self.compile_mode)
            object.__setattr__(self, "_flow", torch.compile(self.net.flow, mode=mode))
            zoo.ppgflowecg.conv1d_as_conv2d(self.net.encoder, cfg["conv1d_as_conv2d"])
            object.__setattr__(self, "_encoder", torch.compile(self.net.encoder, mode=mode))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        _check_window(self)

    def train(self, mode: bool = True) -> ECGFlowTask:
        super().train(mode)
        if self.net is not None:  # stage 1 stays frozen in eval mode
            for name in ("encoder", "ecg_decoder", "ppg_decoder"):
                getattr(self.net, name).eval()
        if getattr(self, "flow_ema", None) is not None:
            self.flow_ema.module.eval()
        return self

    @torch.no_grad()
    def latents(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Frozen stage-1 latents (scaled, float32 so t and x_t stay precise under bf16 autocast): ECG target and PPG
        condition, from one encoder forward over both."""
        self.net._check_input(batch["ecg"])
        self.net._check_input(batch["ppg"])
        return flow_latents(self._encoder, batch["ecg"], batch["ppg"], sample=self.hparams.encode_with_noise)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        z, c = self.latents(batch)
        loss = rectified_flow_loss(self._flow, z, c, self.hparams.num_t_draws)
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=z.shape[0])
        return loss

    def example_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Synthetic paired windows of the model's length (``sharezoo bench``)."""
        return _paired_batch(self.net, batch_size)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._sched is not None and outputs is not None:
            self._sched_losses.append(outputs["loss"].detach())
        self.flow_ema.step(self.net.flow)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        self._step_schedule()
        if self._trainer is not None:
            self.log("train/lr", optimizer.param_groups[0]["lr"])

    def _step_schedule(self) -> None:
        """Step the lr schedule with the losses of the batches finished since the last optimiser step.

        The schedule sets the lr of the next optimiser step from each step's loss, so its values are read here, just
        before that step (this step's forward and backward are already queued) rather than at each batch end, which
        would stall the host on the device every step. Same lr sequence; during warm-up the losses are not read."""
        losses, self._sched_losses = self._sched_losses, []
        if not losses or self._sched is None:
            return
        if self._sched.steps + len(losses) <= self._sched.warmup:
            values = [math.nan] * len(losses)  # warm-up ignores the loss
        else:
            stacked = torch.stack(losses).float()
            if self._trainer is not None and self.trainer.world_size > 1:  # one schedule: every rank sees the mean
                stacked = self.trainer.strategy.reduce(stacked, reduce_op="mean")
            values = stacked.tolist()
        for v in values:
            self._sched.step(v)

    def on_train_end(self) -> None:
        self._step_schedule()

    def _eval_step(self, batch: dict[str, torch.Tensor], batch_idx: int, stage: str) -> None:
        z, c = self.latents(batch)
        g = torch.Generator(device=z.device).manual_seed(1234 + batch_idx)
        n = z.shape[0]
        self.log(f"{stage}/loss", rectified_flow_loss(self.net.flow, z, c, self.hparams.num_t_draws, g), batch_size=n)
        self.log(f"{stage}/loss_ema", rectified_flow_loss(self.flow_ema.module, z, c, self.hparams.num_t_draws, g),
                 batch_size=n)
        if stage == "val" and batch_idx >= self.hparams.val_sample_batches:
            return
        fake = self.net.decode_ecg(self.net.sample_latent(c, self.hparams.sample_steps, g, self.flow_ema.module))
        real = batch["ecg"]
        self.log(f"{stage}/mae", sm.mae(fake, real), batch_size=n)
        self.log(f"{stage}/rmse", sm.rmse(fake, real), batch_size=n)
        self.log(f"{stage}/pearson_r", sm.pearson_r(fake, real), batch_size=n)
        store = self._eval_store.setdefault(stage, [])
        store.append(np.stack([real[:, 0].float().cpu().numpy(), fake[:, 0].float().cpu().numpy()]))

    def _eval_epoch_end(self, stage: str) -> None:
        parts = self._eval_store.pop(stage, [])
        if not parts:
            return
        real, fake = np.concatenate(parts, axis=1)
        if len(real) >= 2:
            h = self.hparams
            self.log(f"{stage}/fd", sm.frechet_distance(real, fake, small_sample_below=h.fd_small_sample_below,
                                                        pca_dim=h.fd_pca_dim, n_trials=h.fd_trials))
        fs = float(getattr(self.trainer.datamodule, "fs", 128.0)) if self._trainer and self.trainer.datamodule else 128.
        if real.shape[1] >= 4 * fs:  # heart rate needs a few beats
            hr = sm.heart_rate_mae(fake, real, fs)
            if np.isfinite(hr):
                self.log(f"{stage}/hr_mae", hr)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        c = self.net.encode(batch["ppg"], sample=self.hparams.encode_with_noise)
        return self.net.decode_ecg(self.net.sample_latent(c, self.hparams.sample_steps, None, self.flow_ema.module))

    def configure_optimizers(self) -> Any:
        h = self.hparams
        opt = torch.optim.Adam(self.net.flow.parameters(), lr=h.lr, betas=tuple(h.betas))
        self._sched = WarmupReduceLROnPlateau(opt, h.warmup_lr, h.warmup_steps, h.plateau_factor,
                                              h.plateau_patience, 1e-2, h.min_lr)
        return opt

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._step_schedule()
        if self._sched is not None:
            checkpoint["flow_lr_schedule"] = self._sched.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._pending_sched = checkpoint.get("flow_lr_schedule")
        sd = checkpoint.get("state_dict")
        if isinstance(sd, dict):  # checkpoints written before the aliases left the module tree hold duplicates
            for k in [k for k in sd if k.startswith(("_flow.", "_encoder."))]:
                del sd[k]

    def on_fit_start(self) -> None:
        state = getattr(self, "_pending_sched", None)
        if state and self._sched is not None:
            self._sched.load_state_dict(state)

    def example_inputs(self, batch_size: int) -> tuple:
        return (_paired_batch(self.net, batch_size)["ppg"],)

    def export_model(self, use_ema: bool = True) -> nn.Module:
        """A copy of the network with the EMA flow weights (what the reference samples with), for save_pretrained."""
        net = copy.deepcopy(self.net)
        if use_ema:
            net.flow.load_state_dict(self.flow_ema.module.state_dict())
        return net


# ------------------------------------------------------------------------------------------------ classification
class ECGClassificationTask(ZooTask):
    """Multi-label CVD / arrhythmia detection from ECG windows (real, or generated from PPG by a frozen PPGFlowECG).

    Args:
        model: registered classifier ('ecg_resnet1d18', 'ecg_resnet1d_tiny').
        pretrained: False, True, a tag, or a local weight file/folder.
        model_kwargs: constructor overrides; ``num_classes`` is taken from the datamodule when left out.
        compile: compile the classifier.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        threshold: probability threshold of the F1 score.
        input_source: 'real' (the batch's ECG) or 'generated' (ECG sampled from the batch's PPG).
        generator_model: PPGFlowECG model name for input_source='generated' (e.g. 'ppgflowecg_base').
        generator_checkpoint: weights of the generator (our safetensors/folder, an ECGFlowTask .ckpt or the
            reference stage-2 checkpoint), read by ``zoo.ppgflowecg.load_weights``.
        generator_steps: Euler steps of the generator.
        generator_use_ema: take the EMA flow of a stage-2 checkpoint (True; what the reference samples with) rather
            than the online flow.
    """

    data_links: ClassVar[tuple[str, ...]] = ("num_classes",)

    def __init__(
        self, model: str = "ecg_resnet1d_tiny", pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None, compile: bool | str = False, lr: float = 1e-3,
        weight_decay: float = 1e-4, threshold: float = 0.5, input_source: str = "real",
        generator_model: str | None = None, generator_checkpoint: str | None = None, generator_steps: int = 10,
        generator_use_ema: bool = True,
    ) -> None:
        if input_source not in ("real", "generated"):
            raise ValueError("input_source must be 'real' or 'generated'")
        if input_source == "generated" and not generator_model:
            raise ValueError("input_source='generated' needs generator_model")
        object.__setattr__(self, "_cfg", {"threshold": threshold})
        super().__init__(model, pretrained, model_kwargs, compile)
        self.save_hyperparameters()
        self._generator = None
        if input_source == "generated":
            gen = zoo.create_model(generator_model)
            if generator_checkpoint:  # load_weights: the EMA-or-online choice (create_model always takes the EMA)
                zoo.ppgflowecg.load_weights(gen, generator_checkpoint, use_ema=generator_use_ema)
            object.__setattr__(self, "_generator", gen.eval().requires_grad_(False))

    def on_net_built(self) -> None:
        from torchmetrics import MetricCollection
        from torchmetrics.classification import MultilabelAUROC, MultilabelF1Score

        k = self.net.num_classes
        th = self._cfg["threshold"]
        metrics = MetricCollection({"auroc": MultilabelAUROC(k, average="macro"),
                                    "f1": MultilabelF1Score(k, threshold=th, average="macro")})
        self.val_metrics, self.test_metrics = metrics.clone(prefix="val/"), metrics.clone(prefix="test/")

    def _inputs(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        if self._generator is None:
            return batch["ecg"]
        gen = self._generator.to(batch["ppg"].device)
        return gen.sample_ecg(batch["ppg"], steps=self.hparams.generator_steps)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self.network(self._inputs(batch))
        loss = F.binary_cross_entropy_with_logits(logits, batch["labels"].float())
        self.log("train/loss", loss.detach(), prog_bar=True, batch_size=logits.shape[0])
        return loss

    def _eval(self, batch: dict[str, torch.Tensor], metrics: Any, stage: str) -> None:
        logits = self.network(self._inputs(batch))
        y = batch["labels"]
        self.log(f"{stage}/loss", F.binary_cross_entropy_with_logits(logits, y.float()), batch_size=y.shape[0])
        metrics.update(torch.sigmoid(logits), y.long())

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, self.val_metrics, "val")

    def on_validation_epoch_end(self) -> None:
        self.log_dict(self.val_metrics.compute())
        self.val_metrics.reset()

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval(batch, self.test_metrics, "test")

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def example_batch(self, batch_size: int, seq_len: int = 1280) -> dict[str, torch.Tensor]:
        dev = next(self.net.parameters()).device
        b = {"ecg": torch.randn(batch_size, self.net.in_chans, seq_len, device=dev),
             "labels": torch.randint(0, 2, (batch_size, self.net.num_classes), device=dev).float()}
        if self._generator is not None:
            b["ppg"] = torch.randn(batch_size, 1, self._generator.seq_len, device=dev)
        return b

    def example_inputs(self, batch_size: int) -> tuple:
        return (self.example_batch(batch_size)["ecg"],)

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
