"""``GRPOTask``: GRPO training of a Hugging Face causal LM on prompts with a verifiable reward, with the Prefix Grouper
switch (``prefix_grouper: true``: one packed shared-prefix forward per prompt group; same log-probs, loss and
gradients). The maths (advantages, log-probs, the clipped objective) is :mod:`tasks.llm.methods.grpo`.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from tasks.llm._base import LLMTask
from tasks.llm.engines.generation import sample_completions
from tasks.llm.methods.grpo import Rollout, completion_logps, cut_after_eos, group_advantages, grpo_loss
from tasks.llm.rewards import resolve_reward
from tasks.llm.sharding import clip_sharded_grad_norm_, fsdp_kind, shard_units
from zoo.llm import enable_activation_checkpointing, enable_prefix_attention

__all__ = ["GRPOTask", "Rollout", "completion_logps", "group_advantages", "grpo_loss", "recompile_regions"]


def recompile_regions(task: LLMTask, dynamic: bool | None) -> None:
    """Re-arm ``compile: regional``'s in-place compiled regions with ``torch.compile(dynamic=dynamic)`` (None: keep
    PyTorch's default). Nothing is compiled until the next call."""
    if dynamic is None or task.compile_mode != "regional":
        return
    for m in task._regions:
        m.compile(dynamic=dynamic)


class GRPOTask(LLMTask):
    """GRPO training of a Hugging Face causal LM on prompts with a verifiable reward.

    Args:
        model: the policy: a causal-LM family (``llama``, ``qwen2``, ``mistral``, ``gemma2``; random init, config
            fields in ``model_kwargs``) or a local Hugging Face model folder to start from (offline).
        model_kwargs: config fields of the policy (``hidden_size``, ...); ``vocab_size`` is taken from the datamodule
            when left out.
        compile: False or 'regional' (each decoder layer compiled in place; with ``prefix_mode`` ``auto``/``flex``
            the FlexAttention kernel is traced into every layer's graph, and the block mask is built once per step
            outside the compiled regions).
        compile_dynamic: ``torch.compile``'s ``dynamic`` for ``compile: regional``: None (PyTorch's default: the
            first packed length compiles statically, the second recompiles once with dynamic lengths, then no more
            recompiles), True (dynamic from the first step) or False (one graph per packed length).
        init_from: an earlier stage's checkpoint (a sharezoo ``.ckpt`` or safetensors) loaded into the policy.
        group_size: completions sampled per prompt (G).
        max_new_tokens: completion length cap.
        temperature: sampling temperature of the rollouts.
        reward: reward function (name in ``tasks.llm.rewards`` or dotted path), ``f(completions, answers)``.
        clip_eps: PPO clipping range.
        kl_coef: weight of the KL penalty to the frozen reference (0 disables the reference model).
        num_iterations: optimisation passes over each rollout (1: on-policy, ratio = 1).
        scale_rewards: divide advantages by the group's reward std.
        loss_agg: ``sequence`` (mean per completion, then over completions) or ``token``.
        prefix_grouper: compute the log-probs with one packed shared-prefix forward per prompt group.
        prefix_mode: attention path of the packed forward: ``auto`` (``flex``, one fused FlexAttention kernel per
            layer, on CUDA; ``split`` elsewhere), ``flex``, ``split``, ``merge`` or ``dense`` (all exact).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping (0 disables).
        sft_warmup_steps: supervised steps on the reference answers before GRPO starts (warm start).
        sft_lr: learning rate of the warm start (None: ``lr``).
        gradient_checkpointing: HF gradient checkpointing in the policy.
        val_max_new_tokens: greedy generation cap in validation (None: ``max_new_tokens``).
    """

    data_links = ("vocab_size",)

    def __init__(
        self,
        model: str = "llama",
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        init_from: str | None = None,
        compile_dynamic: bool | None = None,
        group_size: int = 4,
        max_new_tokens: int = 8,
        temperature: float = 1.0,
        reward: str = "exact_match",
        clip_eps: float = 0.2,
        kl_coef: float = 0.0,
        num_iterations: int = 1,
        scale_rewards: bool = True,
        loss_agg: str = "sequence",
        prefix_grouper: bool = False,
        prefix_mode: str = "auto",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        sft_warmup_steps: int = 0,
        sft_lr: float | None = None,
        gradient_checkpointing: bool = False,
        val_max_new_tokens: int | None = None,
    ) -> None:
        # plain attributes read by on_net_built(), which runs inside ZooTask.__init__ when vocab_size is given
        self.gradient_checkpointing = gradient_checkpointing
        self.compile_dynamic = compile_dynamic
        self.tokenizer = None
        super().__init__(model, False, model_kwargs, compile, init_from)
        self.reward_fn = resolve_reward(reward)
        object.__setattr__(self, "_reference", None)  # frozen, kept out of the module tree and checkpoints
        self.save_hyperparameters()
        self.automatic_optimization = False


    # ------------------------------------------------------------------------------------------------ build
    def on_net_built(self) -> None:
        enable_prefix_attention(self.net)  # ordinary calls stay SDPA; packed calls use the shared prefix
        if self.gradient_checkpointing:
            enable_activation_checkpointing(self.net)
        recompile_regions(self, self.compile_dynamic)

    @property
    def policy(self) -> nn.Module:
        """The policy being trained (``self.net``)."""
        return self.net

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.tokenizer is None and dm is not None:
            self.tokenizer = getattr(dm, "tokenizer", None)
        super().setup(stage)

    def configure_model(self) -> None:
        """FSDP (``tasks.llm.sharding``): each decoder layer is a unit, then the decoder and the LM head, which the
        log-prob computation calls separately. Nothing to do under other strategies."""
        if fsdp_kind(self._trainer) is None or self.net is None:
            return
        if self.hparams.kl_coef > 0:
            raise NotImplementedError("kl_coef > 0 under FSDP: the frozen reference is an unsharded copy of the policy "
                                      "(use DDP, or kl_coef: 0)")
        head = self.net.get_output_embeddings()
        head_name = next(n for n, m in self.net.named_modules() if m is head)
        shard_units(self, self, self.net._no_split_modules or [],
                    [f"net.{self.net.base_model_prefix}", f"net.{head_name}"])

    def on_train_start(self) -> None:
        # seed_everything gives every rank the same RNG stream, so the ranks' rollouts would draw the same random
        # numbers; offset it on ranks > 0 (rank 0, and so a single process, keeps its stream)
        if self.global_rank > 0:
            torch.manual_seed(torch.initial_seed() + self.global_rank)

    def generate(self, prompts: list[torch.Tensor], num_samples: int, max_new_tokens: int, **kw) -> list:
        """``sample_completions`` of the policy. Under FSDP every rank must run the same number of forwards (each one
        gathers the shards), so the decode loop does not stop early at ``<eos>`` there: the completions are cut after
        their first ``<eos>`` instead, which gives the same completions."""
        sharded = fsdp_kind(self._trainer) is not None
        eos = self.eos_id
        outs = sample_completions(self.policy, prompts, num_samples, max_new_tokens, eos_id=None if sharded else eos,
                                  pad_id=self.pad_id, **kw)
        if sharded and eos is not None:
            outs = [[cut_after_eos(c, eos) for c in group] for group in outs]
        return outs

    @property
    def pad_id(self) -> int:
        return getattr(self.tokenizer, "pad_id", 0)

    @property
    def eos_id(self) -> int | None:
        return getattr(self.tokenizer, "eos_id", None)

    def reference(self) -> nn.Module:
        """The frozen reference policy (a snapshot taken when GRPO starts, i.e. after any warm start)."""
        if self._reference is None:
            ref = copy.deepcopy(self.policy).eval()
            for p in ref.parameters():
                p.requires_grad_(False)
            object.__setattr__(self, "_reference", ref)
        return self._reference.to(self.device)

    # ---------------------------------------------------------------------------------------------- rollouts
    @torch.no_grad()
    def rollout(self, prompts: list[torch.Tensor], answers: list[str]) -> Rollout:
        """Sample G completions per prompt (KV-cached), score them, group-normalise the advantages."""
        hp = self.hparams
        completions = self.generate(prompts, hp.group_size, hp.max_new_tokens, temperature=hp.temperature)
        texts = [self.tokenizer.decode(c.tolist()) for group in completions for c in group]
        refs = [a for a in answers for _ in range(hp.group_size)]
        rewards = torch.tensor(self.reward_fn(texts, refs), dtype=torch.float32, device=self.device)
        rewards = rewards.view(len(prompts), hp.group_size)
        ro = Rollout(prompts, completions, rewards, group_advantages(rewards, hp.scale_rewards))
        if hp.num_iterations > 1:
            ro.old_logp = self.logps(ro)[0]
        if hp.kl_coef > 0:
            ro.ref_logp = completion_logps(
                self.reference(), prompts, completions, hp.prefix_grouper, hp.prefix_mode, self.pad_id
            )[0]
        return ro

    def logps(self, ro: Rollout) -> tuple[torch.Tensor, torch.Tensor]:
        logp, valid, _ = completion_logps(
            self.policy, ro.prompts, ro.completions, self.hparams.prefix_grouper, self.hparams.prefix_mode, self.pad_id
        )
        return logp, valid

    def policy_loss(self, ro: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The GRPO loss of a rollout under the current policy (differentiable)."""
        hp = self.hparams
        logp, valid = self.logps(ro)
        return grpo_loss(logp, valid, ro.advantages, ro.old_logp, ro.ref_logp, hp.clip_eps, hp.kl_coef, hp.loss_agg)

    def sft_loss(self, prompts: list[torch.Tensor], answer_ids: list[torch.Tensor]) -> torch.Tensor:
        """Teacher-forced cross-entropy of the reference answers (+ ``<eos>``): the warm start."""
        logp, valid, _ = completion_logps(
            self.policy, prompts, [[a] for a in answer_ids], self.hparams.prefix_grouper, self.hparams.prefix_mode,
            self.pad_id,
        )
        return -(logp.sum() / valid.sum())

    # --------------------------------------------------------------------------------------------- lightning
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        hp = self.hparams
        prompts = self.to_device(batch["prompt_ids"])
        sft = self.global_step < hp.sft_warmup_steps
        for group in opt.param_groups:
            group["lr"] = hp.sft_lr if (sft and hp.sft_lr is not None) else hp.lr
        if sft:
            loss = self.sft_loss(prompts, self.to_device(batch["answer_ids"]))
            self._step(opt, loss)
            self.log("train/sft_loss", loss, prog_bar=True, batch_size=len(prompts))
            return loss.detach()
        ro = self.rollout(prompts, batch["answer"])
        for _ in range(hp.num_iterations):
            loss, stats = self.policy_loss(ro)
            self._step(opt, loss)
        n = len(prompts)
        self.log("train/reward", ro.rewards.mean(), prog_bar=True, batch_size=n)
        self.log("train/reward_std", ro.rewards.std(dim=1).mean() if hp.group_size > 1 else 0.0, batch_size=n)
        self.log("train/loss", loss.detach(), batch_size=n)
        self.log("train/kl", stats["kl"], batch_size=n)
        self.log("train/clip_frac", stats["clip_frac"], batch_size=n)
        self.log("train/completion_len", torch.tensor(
            [c.numel() for g in ro.completions for c in g], dtype=torch.float32).mean(), batch_size=n)
        return loss.detach()

    def _step(self, opt, loss: torch.Tensor) -> None:
        opt.zero_grad()
        self.manual_backward(loss)
        if self.hparams.max_grad_norm and fsdp_kind(self._trainer) == "fsdp":  # FSDPPrecision refuses norm clipping
            clip_sharded_grad_norm_(self.policy.parameters(), self.hparams.max_grad_norm, self.trainer.strategy)
        elif self.hparams.max_grad_norm:
            self.clip_gradients(opt, gradient_clip_val=self.hparams.max_grad_norm, gradient_clip_algorithm="norm")
        opt.step()

    @torch.no_grad()
    def validation_step(self, batch: dict, batch_idx: int) -> None:
        prompts = self.to_device(batch["prompt_ids"])
        n_tok = self.hparams.val_max_new_tokens or self.hparams.max_new_tokens
        outs = self.generate(prompts, 1, n_tok, greedy=True)
        texts = [self.tokenizer.decode(g[0].tolist()) for g in outs]
        reward = torch.tensor(self.reward_fn(texts, batch["answer"]), dtype=torch.float32).mean()
        self.log("val/reward", reward, prog_bar=True, batch_size=len(prompts), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        return torch.optim.AdamW(self.policy.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.99))
