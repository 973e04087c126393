"""``UniEncoderTask``: training and evaluating a Uni-Encoder response ranker (Song et al., Findings of ACL 2023).

The ranker is the registered zoo model :mod:`zoo.uni_encoder` (``model: uni_encoder_tiny`` / ``uni_encoder_bert_base``;
its card lists the deviations from the paper). This module holds the rest of the paper's training: softmax over the
candidates, cross-entropy (``-log`` of the total softmax mass of the positives when a context has several, as in
Douban's test set) and the ranking metrics R_N@k, MRR, MAP, P@1 (Douban's definitions, see the metrics section).

Recipe (released ``run_dist.sh``: lr 2e-4, Noam, batch 8 per GPU x 6 GPUs, 20 epochs; AdamW betas (0.9, 0.98),
weight decay 0.01, gradient clipping 1.0): ``scheduler='noam'`` reproduces the released schedule (peak ``lr`` after
``min(warmup_steps, one epoch + 1)`` optimizer steps, then ``1/sqrt(step)`` decay); the global batch of 48 is
``devices x batch_size`` (or ``accumulate_grad_batches``).

Input layout (``candidate_format``, set on the datamodule, :mod:`datamodules.llm_response_selection`): ``official``
(default, the released ``[CLS] c [SEP] [CLS] r_1 [SEP] ...`` with token type 1 on candidate tokens) or ``plain``; the
task passes it to the ranker's ``token_types``.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from tasks.llm._base import LLMTask
from tasks.llm.sharding import shard_units


class UniEncoderTask(LLMTask):
    """Training a Uni-Encoder response ranker; reports R10@1/2/5, MRR, MAP and P@1 (Douban: multi-positive labels).

    Args:
        model: the ranker, a registered Uni-Encoder (``uni_encoder_tiny``, ``uni_encoder_bert_base``) or a
            ``local-dir:`` folder written by ``zoo.save_pretrained``.
        pretrained: False, True, a weight tag, or a local weight file/folder.
        model_kwargs: ranker overrides: ``backbone`` (a partial spec, ``{'family': 'bert'|'llama'|'qwen2', ...config
            fields}``), ``attn_map`` (``arrow``, ``arrow_context_masked`` or ``causal``); ``vocab_size`` is taken
            from the datamodule when left out.
        compile: compile the ranker: False, True, a mode, or 'regional' (each backbone block; the one to use with
            ragged batches: the packing runs eagerly, the blocks see tensors only).
        compile_dynamic: ``torch.compile``'s ``dynamic`` for ``compile: regional`` (None: PyTorch's default, one
            static compile then one dynamic recompile; True: dynamic from the start; False: one graph per length).
        init_from: an earlier stage's checkpoint loaded into the ranker when it is built.
        lr: AdamW learning rate (the peak learning rate with ``scheduler='noam'``).
        weight_decay: AdamW weight decay.
        recall_ks: the k of the R_N@k metrics.
        scheduler: None (constant ``lr``) or ``noam`` (the released recipe, :func:`noam_factor`, stepped per
            optimizer step).
        warmup_steps: Noam warmup (released default 3500, capped at one epoch + 1 step when the trainer knows it).
        betas: AdamW betas (released: ``(0.9, 0.98)``).
        candidate_format: ``official`` (candidates wrapped ``[CLS] r [SEP]`` by the datamodule, token type 1 on
            candidate tokens) or ``plain``; None takes the datamodule's (``official`` without one). A value that
            disagrees with the datamodule's is an error.
    """

    data_links = ("vocab_size",)

    def __init__(
        self,
        model: str = "uni_encoder_tiny",
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        init_from: str | None = None,
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        recall_ks: tuple[int, ...] = (1, 2, 5),
        scheduler: str | None = None,
        warmup_steps: int = 3500,
        betas: tuple[float, float] = (0.9, 0.999),
        candidate_format: str | None = None,
        compile_dynamic: bool | None = None,
    ) -> None:
        if scheduler not in (None, "noam"):
            raise ValueError(f"unknown scheduler {scheduler!r} (None or 'noam')")
        if candidate_format not in (None, "official", "plain"):
            raise ValueError(f"unknown candidate_format {candidate_format!r} (None, 'official' or 'plain')")
        self.candidate_format = candidate_format  # read by on_net_built(), which may run inside ZooTask.__init__
        self.compile_dynamic = compile_dynamic
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()

    def on_net_built(self) -> None:
        """The ranker's input layout follows ``candidate_format`` (token types only in the ``official`` layout)."""
        self.net.token_types = (self.candidate_format or "official") == "official"
        if self.compile_dynamic is not None and self.compile_mode == "regional" and not getattr(self, "_armed", False):
            for m in self._regions:  # re-armed with the dynamic setting; nothing compiles until the next call
                m.compile(dynamic=self.compile_dynamic)
            self._armed = True

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule if self._trainer is not None else None
        dm_fmt = getattr(dm, "candidate_format", None)
        if dm_fmt is not None:
            own = self.hparams.get("candidate_format")
            if own is not None and own != dm_fmt:
                raise ValueError(f"UniEncoderTask candidate_format={own!r} but the datamodule's is {dm_fmt!r}")
            self.hparams["candidate_format"] = self.candidate_format = dm_fmt
        super().setup(stage)
        self.on_net_built()

    def configure_model(self) -> None:
        """FSDP (``tasks.llm.sharding``): each backbone block is a unit, then the whole ranker."""
        if self.net is not None:
            shard_units(self, self, self.net.backbone._no_split_modules or [], ["net"])

    def _shared(self, batch: dict, stage: str) -> torch.Tensor:
        scores, valid = self(batch["context_ids"], batch["candidate_ids"])
        if "labels" in batch:  # multi-hot (Douban test contexts may have several positives)
            labels = batch["labels"].to(scores.device) & valid
        else:
            labels = nn.functional.one_hot(batch["label"].to(scores.device), scores.shape[1]).bool()
        loss = multi_positive_cross_entropy(scores, labels)
        n = scores.shape[0]
        sync = stage != "train"  # epoch-level metrics: averaged over the ranks under DDP / FSDP (no-op otherwise)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=sync)
        if stage != "train":
            n_cand = scores.shape[1]
            for k in self.hparams.recall_ks:
                if k < n_cand:
                    self.log(f"{stage}/R{n_cand}@{k}", recall_at_k(scores, labels, k), batch_size=n, sync_dist=True)
            self.log(f"{stage}/MRR", mean_reciprocal_rank(scores, labels), batch_size=n, sync_dist=True)
            self.log(f"{stage}/MAP", mean_average_precision(scores, labels), batch_size=n, sync_dist=True)
            self.log(f"{stage}/P@1", precision_at_1(scores, labels), batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared(batch, "test")

    def noam_warmup(self) -> int:
        """The released rule: ``min(warmup_steps, optimizer steps per epoch + 1)`` (``warmup_steps`` off a trainer)."""
        warmup = int(self.hparams.warmup_steps)
        trainer = self._trainer
        if trainer is not None and trainer.max_epochs and trainer.max_epochs > 0:
            try:
                per_epoch = int(trainer.estimated_stepping_batches) // int(trainer.max_epochs)
            except Exception:  # noqa: BLE001 - no train loader yet / unbounded epochs: keep warmup_steps
                per_epoch = None
            if per_epoch:
                warmup = min(warmup, per_epoch + 1)
        return max(1, warmup)

    def configure_optimizers(self):
        hp = self.hparams
        opt = torch.optim.AdamW(self.parameters(), lr=hp.lr, weight_decay=hp.weight_decay, betas=tuple(hp.betas))
        if hp.scheduler != "noam":
            return opt
        warmup = self.noam_warmup()
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: noam_factor(i + 1, warmup))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def noam_factor(step: int, warmup: int) -> float:
    """Noam multiplier normalised to peak 1 at ``step == warmup`` (the released code divides ``lr`` by the peak):
    ``sqrt(warmup) * min(step^-0.5, step * warmup^-1.5)``: linear warmup, then ``sqrt(warmup / step)`` decay."""
    step = max(1, step)
    return warmup**0.5 * min(step**-0.5, step * warmup**-1.5)


# ------------------------------------------------------------------------------------------------ metrics
# Ubuntu (one positive per context) and Douban (several positives in some test contexts) metrics, as the Douban
# evaluation scripts define them: candidates ranked by score (ties: pessimistic, negatives first); R_N@k = positives in
# the k best / positives; MRR = 1 / rank of the best-ranked positive; P@1 = the best candidate is positive; MAP = mean
# average precision. Contexts without a positive are skipped by the reader. ``labels``: index tensor ``[b]`` (one
# positive) or multi-hot ``[b, N]``; padded candidates have score ``-inf`` and label 0.
def _ranked_labels(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[b, N]`` 0/1 labels in ranking order (score descending; among equal scores negatives first)."""
    if labels.dim() == 1:
        labels = torch.nn.functional.one_hot(labels, scores.shape[1])
    labels = labels.to(scores.device).float()
    by_label = torch.sort(labels, dim=1, stable=True).indices  # negatives first
    by_score = torch.sort(scores.gather(1, by_label), dim=1, descending=True, stable=True).indices
    return labels.gather(1, by_label.gather(1, by_score))


def recall_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """R_N@k: fraction of each context's positives among its ``k`` best candidates, averaged over contexts."""
    ranked = _ranked_labels(scores, labels)
    return (ranked[:, :k].sum(1) / ranked.sum(1)).mean()


def mean_reciprocal_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MRR of the best-ranked positive."""
    ranked = _ranked_labels(scores, labels)
    first = ranked.argmax(1)  # index of the first positive
    return (1.0 / (first + 1).float()).mean()


def precision_at_1(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """P@1: fraction of contexts whose best-scored candidate is a positive."""
    return _ranked_labels(scores, labels)[:, 0].mean()


def mean_average_precision(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MAP: mean over contexts of ``sum_k P@k * rel_k / positives`` (sklearn's ``average_precision_score``)."""
    ranked = _ranked_labels(scores, labels)
    rank = torch.arange(1, ranked.shape[1] + 1, device=ranked.device, dtype=ranked.dtype)
    precision = ranked.cumsum(1) / rank
    return ((precision * ranked).sum(1) / ranked.sum(1)).mean()


def multi_positive_cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``-log sum_{positives} softmax(scores)``, mean over contexts; equals cross-entropy with one positive."""
    pos = scores.masked_fill(~labels.bool(), float("-inf"))
    return (torch.logsumexp(scores, 1) - torch.logsumexp(pos, 1)).mean()
