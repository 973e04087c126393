"""CronusVLA training: stage 1 (OpenVLA action tokens, cross-entropy) and post-training (multi-frame cognition
features -> cross-frame diffusion decoder, epsilon-MSE with repeated diffusion).

Post-training step (the released ``CronusVLA.forward``): the ``[B, M]`` frames give the feature chunk (past
features without gradient); actions and chunks are tiled ``repeated_diffusion_steps`` times and every copy gets
its own noise and timestep, so one VLM pass serves several diffusion samples; inside the decoder (training mode) a
sample's whole chunk is swapped for the learned null chunk with probability ``cfg_dropout_prob`` (per copy). The
loss is the plain MSE between predicted and true noise (DDPM 100 steps, ``squaredcos_cap_v2``).
"""
from __future__ import annotations

import hashlib
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from ._base import ZooTask

__all__ = ["CronusVLATask", "OpenVLATokenTask", "IGNORE_INDEX", "action_token_inputs"]

IGNORE_INDEX = -100


class _VLATask(ZooTask):
    """Shared: AdamW (constant lr, the released default), action statistics copied from the datamodule."""

    def configure_optimizers(self) -> torch.optim.Optimizer:
        params = [p for p in self.parameters() if p.requires_grad]  # the network and any task head (stage 1's)
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
        feature_cache: with ``freeze_vlm`` only (not the paper): each frame's cognition feature is computed once by
            the frozen VLM (eval mode) and reused, keyed by the frame's pixels and prompt, so the decoder can train
            many steps cheaply (CPU recipes; exact for a frozen VLM, since the M frames are independent passes).
    """

    init_exclude: ClassVar[tuple[str, ...]] = ("decoder.", "action_")

    def __init__(self, model: str = "cronusvla_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, lr: float = 4e-5, weight_decay: float = 0.0,
                 repeated_diffusion_steps: int = 4, num_train_timesteps: int = 100, freeze_vlm: bool = False,
                 val_ddim_steps: int = 10, val_cfg_scale: float = 1.5, feature_cache: bool = False) -> None:
        if feature_cache and not freeze_vlm:
            raise ValueError("feature_cache=True needs freeze_vlm=True "
                             "(cached features are only valid for a frozen VLM)")
        object.__setattr__(self, "_freeze_vlm", freeze_vlm)  # read in on_net_built, inside ZooTask.__init__
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self._cache: dict[bytes, torch.Tensor] = {}
        self._mean_action: torch.Tensor | None = None  # the training actions' per-dim mean (validation baseline)
        self.save_hyperparameters()
        from zoo.cronusvla_decoder import ddpm_scheduler

        self.scheduler = ddpm_scheduler(num_train_timesteps)

    def on_net_built(self) -> None:
        if self._freeze_vlm:
            for name, p in self.net.named_parameters():
                p.requires_grad_(name.startswith("decoder."))

    def setup(self, stage: str) -> None:
        super().setup(stage)
        dm = self.trainer.datamodule if self._trainer is not None else None
        train = getattr(dm, "splits", {}).get("train") if dm is not None else None
        norm = getattr(train, "norm", None)
        if norm:
            self._mean_action = torch.from_numpy(np.concatenate(norm)).float().mean(0)

    def features(self, batch: dict[str, Any]) -> torch.Tensor:
        """The feature chunk ``[B, M, d]`` of a batch (from the cache with ``feature_cache``)."""
        if not self.hparams.feature_cache:
            return self.network(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features
        return self.cached_features(batch["pixels"], batch["input_ids"], batch["attention_mask"])

    @torch.no_grad()
    def cached_features(self, pixels: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor
                        ) -> torch.Tensor:
        """Per-frame features of the frozen VLM, computed once per distinct (frame, prompt) and kept in memory."""
        b, m = pixels.shape[:2]
        frames = pixels.flatten(0, 1)
        ids, mask = input_ids.repeat_interleave(m, 0), attention_mask.repeat_interleave(m, 0)
        # keys from ONE host copy of the batch (per-frame .cpu() calls were 3 device syncs per frame on a GPU)
        host_frames, host_ids, host_mask = (t.detach().cpu().numpy() for t in (frames, ids, mask))
        keys = []
        for x, i, k in zip(host_frames, host_ids, host_mask):
            h = hashlib.blake2b(x.tobytes(), digest_size=16)
            h.update(i[k.astype(bool)].tobytes())
            keys.append(h.digest())
        missing = [k for k in dict.fromkeys(keys) if k not in self._cache]
        if missing:
            rows = torch.tensor([keys.index(k) for k in missing], device=pixels.device)
            was = self.net.training
            self.net.eval()
            new = self.net.frame_features(frames[rows], ids[rows], mask[rows])
            self.net.train(was)
            self._cache.update(zip(missing, new.detach()))
        return torch.stack([self._cache[k] for k in keys]).view(b, m, -1)

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
        feats = self.features(batch)
        loss = self.diffusion_loss(feats, batch["actions"].to(feats.dtype))
        self.log("train/loss", loss, prog_bar=True, batch_size=len(feats))
        return loss

    def _eval_step(self, batch: dict[str, Any], stage: str) -> None:
        feats = self.features(batch)
        gen = torch.Generator(device=feats.device).manual_seed(0)
        loss = self.diffusion_loss(feats, batch["actions"].to(feats.dtype), gen)
        pred = self.net.sample_actions(feats, self.hparams.val_ddim_steps, self.hparams.val_cfg_scale,
                                       generator=torch.Generator(device=feats.device).manual_seed(1))
        n = len(feats)
        self.log(f"{stage}/loss", loss, batch_size=n, sync_dist=True)
        mse = F.mse_loss(pred, batch["actions"].to(pred))
        self.log(f"{stage}/action_mse", mse, batch_size=n, sync_dist=True)
        if self._mean_action is not None:  # the image-blind baseline: every action predicted as the training mean
            base = F.mse_loss(self._mean_action.to(pred).expand_as(pred), batch["actions"].to(pred))
            self.log(f"{stage}/mean_chunk_mse", base, batch_size=n, sync_dist=True)

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
        objective: 'tokens' (OpenVLA, the paper) or 'regression' (NOT the paper; a CPU-scale stand-in for an
            OXE-pretrained VLA): a linear head on the cognition (EOS) feature regresses the normalised action
            ``a_t`` (MSE), so the feature post-training reads becomes action-informative; the head is dropped after.
    """

    def __init__(self, model: str = "cronusvla_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, lr: float = 2e-5, weight_decay: float = 0.0,
                 objective: str = "tokens") -> None:
        if objective not in ("tokens", "regression"):
            raise ValueError(f"objective is 'tokens' or 'regression', got {objective!r}")
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        self.regression_head = (torch.nn.Linear(int(self.net.llm.config.hidden_size), self.net.action_dim)
                                if objective == "regression" else None)

    def on_net_built(self) -> None:
        self.net.decoder.requires_grad_(False)

    def _loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, action-token accuracy; None for the regression objective)."""
        net = self.net
        if self.regression_head is not None:  # objective='regression': MSE of a_t from the cognition feature
            feat = net.frame_features(batch["pixels"][:, -1], batch["input_ids"], batch["attention_mask"])
            pred, target = self.regression_head(feat), batch["actions"][:, 0].to(feat.dtype)
            return F.mse_loss(pred, target), None
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
        if acc is not None:
            self.log("train/token_acc", acc, batch_size=len(batch["actions"]))
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        loss, acc = self._loss(batch)
        self.log("val/loss", loss, batch_size=len(batch["actions"]), sync_dist=True)
        if acc is not None:
            self.log("val/token_acc", acc, batch_size=len(batch["actions"]), sync_dist=True)
