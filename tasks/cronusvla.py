"""CronusVLA training: stage 1 (OpenVLA action tokens, cross-entropy) and post-training (multi-frame cognition
features -> cross-frame diffusion decoder, epsilon-MSE with repeated diffusion).

Post-training step (the released ``CronusVLA.forward``): the ``[B, M]`` frames give the feature chunk (past
features without gradient); actions and chunks are tiled ``repeated_diffusion_steps`` times and every copy gets
its own noise and timestep, so one VLM pass serves several diffusion samples; inside the decoder (training mode) a
sample's whole chunk is swapped for the learned null chunk with probability ``cfg_dropout_prob`` (per copy). The
loss is the plain MSE between predicted and true noise (DDPM 100 steps, ``squaredcos_cap_v2``).
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._base import ZooTask

__all__ = ["CronusVLATask", "OpenVLATokenTask", "IGNORE_INDEX", "action_token_inputs"]

IGNORE_INDEX = -100


class _VLATask(ZooTask):
    """Shared: AdamW (constant lr, the released default), action statistics copied from the datamodule."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.net.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        stats = getattr(dm, "action_stats", None) if dm is not None else None
        if stats is not None and stage == "fit":  # per-dataset q01 / q99 travel with the weights
            self.net.set_action_stats(stats["q01"], stats["q99"], stats.get("mask"))
        for key in ("num_frames", "chunk_len"):
            want, have = getattr(self.net, key), getattr(dm, key, None) if dm is not None else None
            if have is not None and have != want and not isinstance(self, OpenVLATokenTask):  # stage 1: a_t only
                raise ValueError(f"the datamodule's {key}={have} differs from the model's {key}={want}: set "
                                 f"data.init_args.{key}: {want} (or model_kwargs.{key})")

    def example_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        net = self.net
        s, m, t = net.image_size, net.num_frames, net.chunk_len
        ids = torch.randint(3, 250, (batch_size, 24))
        ids[:, 0] = 1
        ids[:, -1] = int(net.llm.config.eos_token_id)
        return {"pixels": torch.rand(batch_size, m, 3, s, s), "actions": torch.rand(batch_size, t, net.action_dim) * 2
                - 1, "input_ids": ids, "attention_mask": torch.ones_like(ids)}

    def example_inputs(self, batch_size: int) -> tuple:
        b = self.example_batch(batch_size)
        return b["pixels"], b["input_ids"], b["attention_mask"]


class CronusVLATask(_VLATask):
    """CronusVLA post-training / fine-tuning (diffusion decoder on multi-frame cognition features).

    Args:
        model: registered model name (``cronusvla_7b``, ``cronusvla_0_5b``, ``cronusvla_7b_libero``,
            ``cronusvla_tiny``).
        pretrained: False, a weight tag, or a local weight file (a released ``.pt`` converts).
        model_kwargs: constructor overrides (``num_frames``, ``chunk_len``, ``image_size``, ...).
        compile: ``torch.compile`` switch (see ``ZooTask``).
        init_from: the stage-1 (action-token) checkpoint; the decoder starts from scratch.
        lr: AdamW learning rate, constant (4e-5 post-training, 2e-5 LIBERO).
        weight_decay: AdamW weight decay (0).
        repeated_diffusion_steps: copies of each sample with fresh noise and timesteps (4).
        num_train_timesteps: DDPM steps (100).
        freeze_vlm: train only the decoder (not the paper; the VLM is fully fine-tuned there).
        val_ddim_steps: DDIM steps of validation sampling (10).
        val_cfg_scale: CFG scale of validation sampling (1.5).
    """

    init_exclude: ClassVar[tuple[str, ...]] = ("decoder.", "action_")

    def __init__(self, model: str = "cronusvla_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, lr: float = 4e-5, weight_decay: float = 0.0,
                 repeated_diffusion_steps: int = 4, num_train_timesteps: int = 100, freeze_vlm: bool = False,
                 val_ddim_steps: int = 10, val_cfg_scale: float = 1.5) -> None:
        object.__setattr__(self, "_freeze_vlm", freeze_vlm)  # read in on_net_built, inside ZooTask.__init__
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        from zoo.cronusvla_decoder import ddpm_scheduler

        self.scheduler = ddpm_scheduler(num_train_timesteps)

    def on_net_built(self) -> None:
        if self._freeze_vlm:
            for name, p in self.net.named_parameters():
                p.requires_grad_(name.startswith("decoder."))

    def diffusion_loss(self, features: torch.Tensor, actions: torch.Tensor,
                       generator: torch.Generator | None = None) -> torch.Tensor:
        """Epsilon-MSE over ``repeated_diffusion_steps`` tiled copies, each with its own noise and timestep."""
        r = self.hparams.repeated_diffusion_steps
        a, f = actions.repeat(r, 1, 1), features.repeat(r, 1, 1)
        steps = self.scheduler.config.num_train_timesteps
        noise = torch.randn(a.shape, generator=generator, device=generator.device if generator else a.device).to(a)
        t = torch.randint(0, steps, (a.shape[0],), generator=generator,
                          device=generator.device if generator else a.device).to(a.device)
        noisy = self.scheduler.add_noise(a, noise, t)
        return F.mse_loss(self.net.predict_noise(noisy, t, f), noise)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        feats = self.network(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features
        loss = self.diffusion_loss(feats, batch["actions"].to(feats.dtype))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(feats))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        feats = self.network(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features
        gen = torch.Generator(device=feats.device).manual_seed(0)
        loss = self.diffusion_loss(feats, batch["actions"].to(feats.dtype), gen)
        pred = self.net.sample_actions(feats, self.hparams.val_ddim_steps, self.hparams.val_cfg_scale,
                                       generator=torch.Generator(device=feats.device).manual_seed(1))
        n = len(feats)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True)
        self.log(f"{stage}/action_mse", F.mse_loss(pred, batch["actions"].to(pred)), batch_size=n, sync_dist=True)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")


def action_token_inputs(input_ids: torch.Tensor, attention_mask: torch.Tensor, action_ids: torch.Tensor,
                        suffix_len: int, eos_id: int, pad_id: int = 0) -> tuple[torch.Tensor, ...]:
    """OpenVLA's stage-1 sequence per sample: the prompt (its cognition suffix removed) + the action tokens + EOS,
    right-padded; labels are IGNORE except the action tokens and EOS. Returns (ids, mask, labels)."""
    rows = []
    for ids, m, act in zip(input_ids, attention_mask, action_ids):
        prompt = ids[: int(m.sum()) - suffix_len]
        rows.append((torch.cat([prompt, act, act.new_tensor([eos_id])]), len(prompt)))
    width = max(len(r) for r, _ in rows)
    out = input_ids.new_full((len(rows), width), pad_id)
    mask = torch.zeros_like(out)
    labels = torch.full_like(out, IGNORE_INDEX)
    for j, (r, n) in enumerate(rows):
        out[j, :len(r)], mask[j, :len(r)] = r, 1
        labels[j, n:len(r)] = r[n:]
    return out, mask, labels


class OpenVLATokenTask(_VLATask):
    """Stage 1 (OpenVLA): the current frame + prompt -> 7 action tokens (256 bins on the last vocabulary ids),
    next-token cross-entropy on the action tokens (and EOS) only; the decoder is not trained.

    Args:
        model: registered model name.
        pretrained: False, a weight tag, or a local weight file.
        model_kwargs: constructor overrides.
        compile: ``torch.compile`` switch.
        init_from: an earlier checkpoint.
        lr: AdamW learning rate (2e-5, constant).
        weight_decay: AdamW weight decay (0).
    """

    def __init__(self, model: str = "cronusvla_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, lr: float = 2e-5, weight_decay: float = 0.0) -> None:
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()

    def on_net_built(self) -> None:
        self.net.decoder.requires_grad_(False)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        net = self.net
        act = net.action_tokenizer.encode(batch["actions"][:, 0])
        ids, mask, labels = action_token_inputs(batch["input_ids"], batch["attention_mask"], act,
                                                len(net.cognition_suffix), int(net.llm.config.eos_token_id))
        logits = net.token_logits(batch["pixels"][:, -1], ids, mask)
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)
        sel = labels[:, 1:] != IGNORE_INDEX
        acc = (logits[:, :-1].argmax(-1)[sel] == labels[:, 1:][sel]).float().mean()
        return loss, acc

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, acc = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["actions"]))
        self.log("train/token_acc", acc, batch_size=len(batch["actions"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, acc = self._loss(batch)
        self.log("val/loss", loss, batch_size=len(batch["actions"]), sync_dist=True)
        self.log("val/token_acc", acc, batch_size=len(batch["actions"]), sync_dist=True)
