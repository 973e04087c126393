"""NEO training (PT / MT / SFT as options of one task) and exact-match VQA evaluation.

The loss is next-token cross-entropy on the assistant tokens of packed rows, each token weighted by
1/sqrt(supervised tokens of its sample) (NEO's "square" weighting, as InternVL) and normalised by the weights' sum;
labels are the unshifted ids (-100 off the answers) and are shifted exactly once, here. ``stage: pt`` trains only
the patch embedding, the pre-Buffer layers and the H/W parts (``NEO.set_stage``); ``mt`` / ``sft`` train everything.
The optimiser is the paper's AdamW (β 0.9/0.95, ε 1e-8, wd) with linear warm-up and cosine decay to ``min_lr_ratio``
of the peak (``cosine_with_min_lr``); clip 1.0 is the trainer's ``gradient_clip_val``. Validation and test answer
each prompt greedily with the KV cache and score exact match (lower-cased, stripped), overall and per question kind.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ._base import ZooTask

IGNORE = -100


def weighted_next_token_loss(hidden: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor,
                             head: Any) -> torch.Tensor:
    """Σ w·CE / Σ w over supervised next tokens: position i predicts ``labels[i + 1]`` with weight ``weights[i + 1]``
    (the one shift). Only supervised positions go through the LM head.

    Args:
        hidden: (B, L, D) hidden states (or logits when ``head`` is None).
        labels: (B, L) target ids, -100 where unsupervised (not shifted).
        weights: (B, L) per-token weights aligned with ``labels``.
        head: the LM head (hidden -> logits), or None when ``hidden`` already holds logits.
    """
    tgt, w = labels[:, 1:], weights[:, 1:].float()
    sel = tgt != IGNORE
    x = hidden[:, :-1][sel]
    logits = head(x) if head is not None else x
    ce = F.cross_entropy(logits.float(), tgt[sel], reduction="none")
    return (ce * w[sel]).sum() / w[sel].sum().clamp(min=1e-5)


def normalise_answer(text: str) -> str:
    """Lower-case, strip whitespace and a trailing full stop (exact-match comparison)."""
    return text.strip().lower().rstrip(".").strip()


class NEOTask(ZooTask):
    """Native VLM training and VQA evaluation on NEO.

    Args:
        model: registered model name (``neo_tiny``, ``neo_2b``, ``neo_9b``).
        pretrained: False, a weight tag, or a local weight file.
        model_kwargs: constructor overrides (``vocab_size`` and ``image_token_ids`` come from the datamodule).
        compile: ``torch.compile`` switch (see ``ZooTask``; ``regional`` compiles each decoder layer).
        init_from: the earlier stage's checkpoint (PT -> MT -> SFT), a released NEO checkpoint, or a plain Qwen3
            ``model.safetensors`` (initialised as the paper does: q_proj_hw from q_proj, zero k_proj_hw).
        stage: ``pt`` (only patch embedding, pre-Buffer and H/W parts train), ``mt`` or ``sft`` (all train).
        lr: peak learning rate (PT 8e-4, MT 5e-5, SFT 6e-5).
        weight_decay: AdamW weight decay (0.01 in PT; the MT / SFT scripts' value is not verified).
        betas: AdamW betas (0.9, 0.95).
        eps: AdamW epsilon (1e-8).
        warmup_steps: linear warm-up steps (PT 1000; MT / SFT 3 % of the steps for 2B, 200 for 9B).
        min_lr_ratio: the cosine ends at this fraction of the peak (0.1).
        max_new_tokens: generated tokens per answer in validation / test.
        gradient_checkpointing: recompute each decoder layer in the backward pass.
    """

    data_links: ClassVar[tuple[str, ...]] = ("vocab_size", "image_token_ids")

    def __init__(self, model: str = "neo_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False,
                 init_from: str | None = None, stage: str = "sft", lr: float = 6e-5, weight_decay: float = 0.01,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, warmup_steps: int = 0,
                 min_lr_ratio: float = 0.1, max_new_tokens: int = 8, gradient_checkpointing: bool = False) -> None:
        if stage not in ("pt", "mt", "sft"):
            raise ValueError(f"stage must be pt, mt or sft, got {stage!r}")
        object.__setattr__(self, "_stage", stage)
        object.__setattr__(self, "_ckpt", gradient_checkpointing)
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        self._em: dict[str, list[float]] = defaultdict(list)

    def on_net_built(self) -> None:
        self.net.set_stage(self._stage)
        if self._ckpt:
            self.net.lm.gradient_checkpointing_enable()

    # ------------------------------------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = self.network(batch["input_ids"], batch["images"], doc_ids=batch["doc_ids"], return_hidden=True)
        loss = weighted_next_token_loss(out.hidden, batch["labels"], batch["loss_weight"], self.net.logits)
        n = batch["input_ids"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log("train/tokens", float((batch["doc_ids"] >= 0).sum()), reduce_fx="sum", batch_size=n)
        return loss

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        params = [p for p in self.net.parameters() if p.requires_grad]
        decay = [p for p in params if p.ndim >= 2]
        no_decay = [p for p in params if p.ndim < 2]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": hp.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=hp.lr, betas=tuple(hp.betas),
                                eps=hp.eps)
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1
        warm, floor = hp.warmup_steps, hp.min_lr_ratio

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            frac = min((step - warm) / max(total - warm, 1), 1.0)
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # -------------------------------------------------------------------------------------------- evaluation
    @torch.no_grad()
    def answer(self, batch: dict[str, Any]) -> list[str]:
        """Greedy answers (decoded text) to a batch of left-padded prompts."""
        dm = self.trainer.datamodule if self._trainer is not None else None
        tok = batch.get("tokenizer") or dm.tokenizer
        new = self.net.generate(batch["input_ids"], batch["images"], max_new_tokens=self.hparams.max_new_tokens,
                                eos_id=tok.im_end_id, doc_ids=batch["doc_ids"])
        return [tok.decode(row) for row in new]

    def _eval(self, batch: dict[str, Any], prefix: str) -> None:
        preds = self.answer(batch)
        for p, a, k in zip(preds, batch["answers"], batch["kinds"]):
            hit = float(normalise_answer(p) == normalise_answer(a))
            self._em["all"].append(hit)
            if k:
                self._em[k].append(hit)

    def _flush(self, prefix: str) -> None:
        for k, v in sorted(self._em.items()):
            name = "exact_match" if k == "all" else f"exact_match_{k}"
            self.log(f"{prefix}/{name}", sum(v) / len(v), prog_bar=k == "all", sync_dist=True)
        self._em.clear()

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._flush("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._flush("test")

    # ----------------------------------------------------------------------------------------- benchmark hooks
    def example_batch(self, batch_size: int) -> dict[str, Any]:
        """Packed rows of two documents, each one 2×3-token image and a short answer (the real shapes)."""
        s, c, e = self.net.ids.start, self.net.ids.context, self.net.ids.end
        px = self.net.token_px
        doc = [1, s] + [c] * 6 + [e, 2, 3, 4, 5]
        ids = torch.tensor([doc + doc] * batch_size)
        labels = torch.full_like(ids, IGNORE)
        labels[:, 11:13] = ids[:, 11:13]
        labels[:, 24:26] = ids[:, 24:26]
        docs = torch.tensor([[0] * len(doc) + [1] * len(doc)] * batch_size)
        images = [torch.randn(3, 2 * px, 3 * px) for _ in range(2 * batch_size)]
        return {"input_ids": ids, "labels": labels, "doc_ids": docs, "loss_weight": (labels != IGNORE).float(),
                "images": images, "n_docs": 2 * batch_size}
