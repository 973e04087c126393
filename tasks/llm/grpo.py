"""GRPO with an optional Prefix Grouper forward (one packed forward shares each prompt across its G completions).

DeepSeekMath's GRPO objective (per completion ``i`` of a group, token ``t``)::

    A_i   = (r_i - mean(r_group)) / (std(r_group) + eps)                   group-normalised advantage
    rho   = exp(logp_t - logp_old_t)
    L_t   = min(rho * A_i, clip(rho, 1 - e, 1 + e) * A_i) - beta * KL_t     KL_t: k3 estimator to the reference
    loss  = - mean_i  mean_t L_t          (``loss_agg='sequence'``; ``'token'`` averages over all tokens)

``prefix_grouper=True`` changes only how ``logp`` is computed (packed layout, :mod:`tasks.llm.prefix`); the log-probs,
the loss and every gradient are the same as with the repeated-prefix forward (tested).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch
import torch.utils.checkpoint
from torch import nn

from tasks.llm.generation import sample_completions
from tasks.llm.prefix import enable_prefix_attention, lm_logits, packed_suffix_logits, repeated_suffix_logits
from tasks.llm.rewards import resolve_reward
from tasks.llm.sharding import clip_sharded_grad_norm_, fsdp_kind, shard_units


@dataclass
class Rollout:
    """One generation round: ``B`` prompts with ``G`` completions each (row-major ``B*G`` order)."""

    prompts: list[torch.Tensor]
    completions: list[list[torch.Tensor]]
    rewards: torch.Tensor  # [B, G]
    advantages: torch.Tensor  # [B*G]
    old_logp: torch.Tensor | None = None  # [B*G, S_max]; None: on-policy (= current log-probs, detached)
    ref_logp: torch.Tensor | None = None


def group_advantages(rewards: torch.Tensor, scale: bool = True, eps: float = 1e-4) -> torch.Tensor:
    """``[B, G]`` rewards -> ``[B*G]`` advantages normalised within each group (G = 1 gives zeros)."""
    centred = rewards - rewards.mean(dim=1, keepdim=True)
    if scale and rewards.shape[1] > 1:
        centred = centred / (rewards.std(dim=1, keepdim=True) + eps)
    return centred.reshape(-1)


def completion_logps(
    model: nn.Module,
    prompts: list[torch.Tensor],
    completions: list[list[torch.Tensor]],
    prefix_grouper: bool,
    mode: str = "split",
    pad_id: int = 0,
    chunk_elements: int = 1 << 28,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log-probs of every completion token: ``(logp [B*G, S_max], valid, targets)``.

    The LM head and the fp32 log-softmax run in row chunks of at most ``chunk_elements`` logits, recomputed in backward
    (activation checkpointing), so the ``[B*G, S, V]`` fp32 logits never live at once; identical maths either way.
    """
    if prefix_grouper:
        hidden, valid, _ = packed_suffix_logits(model, prompts, completions, mode=mode, pad_id=pad_id,
                                                return_hidden=True)
    else:
        hidden, valid = repeated_suffix_logits(model, prompts, completions, pad_id=pad_id, return_hidden=True)
    flat = [c for group in completions for c in group]
    targets = torch.full(valid.shape, pad_id, dtype=torch.long, device=valid.device)
    for r, c in enumerate(flat):
        targets[r, : c.numel()] = c

    def token_logp(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        logits = lm_logits(model, h).float()
        return logits.gather(-1, t[..., None])[..., 0] - torch.logsumexp(logits, dim=-1)

    rows = max(1, chunk_elements // max(1, hidden.shape[1] * model.config.vocab_size))
    if rows >= hidden.shape[0]:
        logp = token_logp(hidden, targets)
    else:
        parts = []
        for i in range(0, hidden.shape[0], rows):
            h, t = hidden[i : i + rows], targets[i : i + rows]
            if torch.is_grad_enabled() and h.requires_grad:
                parts.append(torch.utils.checkpoint.checkpoint(token_logp, h, t, use_reentrant=False))
            else:
                parts.append(token_logp(h, t))
        logp = torch.cat(parts)
    return logp * valid, valid, targets


def grpo_loss(
    logp: torch.Tensor,
    valid: torch.Tensor,
    advantages: torch.Tensor,
    old_logp: torch.Tensor | None = None,
    ref_logp: torch.Tensor | None = None,
    clip_eps: float = 0.2,
    kl_coef: float = 0.0,
    loss_agg: str = "sequence",
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped GRPO objective (module docstring); returns ``(loss, stats)``."""
    old = logp.detach() if old_logp is None else old_logp.detach()
    ref_logp = None if ref_logp is None else ref_logp.detach()
    ratio = torch.exp(logp - old)
    adv = advantages[:, None]
    surrogate = torch.minimum(ratio * adv, ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv)
    per_token = -surrogate
    kl = torch.zeros_like(logp)
    if ref_logp is not None and kl_coef > 0:
        delta = ref_logp - logp
        kl = torch.exp(delta) - delta - 1  # k3 estimator, >= 0
        per_token = per_token + kl_coef * kl
    v = valid.to(per_token.dtype)
    if loss_agg == "sequence":
        loss = ((per_token * v).sum(1) / v.sum(1).clamp(min=1)).mean()
    elif loss_agg == "token":
        loss = (per_token * v).sum() / v.sum().clamp(min=1)
    else:
        raise ValueError(f"unknown loss_agg {loss_agg!r}")
    clipped = ((ratio - 1).abs() > clip_eps) & valid
    stats = {
        "kl": (kl * v).sum() / v.sum().clamp(min=1),
        "clip_frac": clipped.float().sum() / v.sum().clamp(min=1),
    }
    return loss, stats


def _cut_after_eos(tokens: torch.Tensor, eos_id: int) -> torch.Tensor:
    hits = (tokens == eos_id).nonzero()
    return tokens[: int(hits[0, 0]) + 1].clone() if hits.numel() else tokens


def build_causal_lm_from_spec(spec: dict[str, Any], vocab_size: int) -> nn.Module:
    """An HF causal LM from ``{'family': 'llama'|'qwen2'|'mistral', <config fields>}`` (random init, SDPA)."""
    from tasks.llm.hf_models import build_causal_lm, causal_lm_config

    spec = dict(spec)
    family = spec.pop("family", "llama")
    return build_causal_lm(causal_lm_config(family, vocab_size=vocab_size, **spec))


class GRPOTask(pl.LightningModule):
    """GRPO training of a Hugging Face causal LM on prompts with a verifiable reward.

    Args:
        model: config of the policy built from scratch: ``{'family': 'llama'|'qwen2'|'mistral', 'hidden_size': ...}``
            (any transformers config field).
        pretrained_path: a local HF model folder to start from instead (``AutoModelForCausalLM.from_pretrained``).
        vocab_size: vocabulary size; None takes it from the datamodule's tokenizer.
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
        prefix_mode: attention path of the packed forward: ``split``, ``merge`` or ``dense`` (all exact).
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        max_grad_norm: gradient clipping (0 disables).
        sft_warmup_steps: supervised steps on the reference answers before GRPO starts (warm start).
        sft_lr: learning rate of the warm start (None: ``lr``).
        gradient_checkpointing: HF gradient checkpointing in the policy.
        val_max_new_tokens: greedy generation cap in validation (None: ``max_new_tokens``).
    """

    def __init__(
        self,
        model: dict[str, Any] | None = None,
        pretrained_path: str | None = None,
        vocab_size: int | None = None,
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
        prefix_mode: str = "split",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        max_grad_norm: float = 1.0,
        sft_warmup_steps: int = 0,
        sft_lr: float | None = None,
        gradient_checkpointing: bool = False,
        val_max_new_tokens: int | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.reward_fn = resolve_reward(reward)
        self.tokenizer = None
        self.policy: nn.Module | None = None
        object.__setattr__(self, "_reference", None)  # frozen, kept out of the module tree and checkpoints
        if pretrained_path is not None or vocab_size is not None:
            self._build(vocab_size)

    # ------------------------------------------------------------------------------------------------ build
    def _build(self, vocab_size: int | None) -> None:
        hp = self.hparams
        if hp.pretrained_path:
            from transformers import AutoModelForCausalLM

            self.policy = AutoModelForCausalLM.from_pretrained(hp.pretrained_path, attn_implementation="sdpa")
        else:
            self.policy = build_causal_lm_from_spec(hp.model or {}, vocab_size)
        enable_prefix_attention(self.policy)  # ordinary calls stay SDPA; packed calls use the shared prefix
        if hp.gradient_checkpointing:
            from tasks.llm.hf_models import enable_activation_checkpointing

            enable_activation_checkpointing(self.policy)
        self.hparams["vocab_size"] = self.policy.config.vocab_size

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        if self.tokenizer is None and dm is not None:
            self.tokenizer = getattr(dm, "tokenizer", None)
        if self.policy is None:
            if self.tokenizer is None:
                raise ValueError("GRPOTask needs vocab_size or a datamodule with a tokenizer")
            self._build(self.tokenizer.vocab_size)

    def configure_model(self) -> None:
        """FSDP (``tasks.llm.sharding``): each decoder layer is a unit, then the decoder and the LM head, which the
        log-prob computation calls separately. Nothing to do under other strategies."""
        if fsdp_kind(self._trainer) is None or self.policy is None:
            return
        if self.hparams.kl_coef > 0:
            raise NotImplementedError("kl_coef > 0 under FSDP: the frozen reference is an unsharded copy of the policy "
                                      "(use DDP, or kl_coef: 0)")
        head = self.policy.get_output_embeddings()
        head_name = next(n for n, m in self.policy.named_modules() if m is head)
        shard_units(self, self, self.policy._no_split_modules or [],
                    [f"policy.{self.policy.base_model_prefix}", f"policy.{head_name}"])

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
            outs = [[_cut_after_eos(c, eos) for c in group] for group in outs]
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
    def _to_device(self, xs: list[torch.Tensor]) -> list[torch.Tensor]:
        return [x.to(self.device) for x in xs]

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        opt = self.optimizers()
        hp = self.hparams
        prompts = self._to_device(batch["prompt_ids"])
        sft = self.global_step < hp.sft_warmup_steps
        for group in opt.param_groups:
            group["lr"] = hp.sft_lr if (sft and hp.sft_lr is not None) else hp.lr
        if sft:
            loss = self.sft_loss(prompts, self._to_device(batch["answer_ids"]))
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
        prompts = self._to_device(batch["prompt_ids"])
        n_tok = self.hparams.val_max_new_tokens or self.hparams.max_new_tokens
        outs = self.generate(prompts, 1, n_tok, greedy=True)
        texts = [self.tokenizer.decode(g[0].tolist()) for g in outs]
        reward = torch.tensor(self.reward_fn(texts, batch["answer"]), dtype=torch.float32).mean()
        self.log("val/reward", reward, prog_bar=True, batch_size=len(prompts), sync_dist=True)

    def configure_optimizers(self):
        hp = self.hparams
        return torch.optim.AdamW(self.policy.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=(0.9, 0.99))
