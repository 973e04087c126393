"""Uni-Encoder (Song et al., Findings of ACL 2023): all candidates packed after one context, one forward.

Spec (``shared/papers/llm/uni-encoder.md``): the context and its N candidates are one sequence; every candidate gets the
same position ids (right after the context, :class:`tasks.llm.prefix.PrefixLayout`); the attention mask lets
candidates see the context and themselves but not each other. ``attn_map``:

* ``arrow`` — as released: context rows see every valid token (context and all candidates); candidates bidirectional;
* ``arrow_context_masked`` — context rows see only the context: each candidate's representation equals scoring that
  candidate alone (tested);
* ``causal`` — decoder backbones (Llama/Qwen2): the Prefix Grouper layout; equals per-candidate scoring (tested).

Score: mean-pool each candidate's final hidden states, a linear layer, softmax over the candidates; loss:
cross-entropy over candidates (``-log`` of the total softmax mass of the positives when a context has several, as in
Douban's test set). Metrics: R_N@k, MRR, MAP, P@1 (Douban's definitions, see the metrics section).

Recipe (released ``run_dist.sh``: lr 2e-4, Noam, batch 8 per GPU x 6 GPUs, 20 epochs; AdamW betas (0.9, 0.98),
weight decay 0.01, gradient clipping 1.0): ``scheduler='noam'`` reproduces the released schedule (peak ``lr`` after
``min(warmup_steps, one epoch + 1)`` optimizer steps, then ``1/sqrt(step)`` decay); the global batch of 48 is
``devices x batch_size`` (or ``accumulate_grad_batches``). Deviations from the paper / released code:

* no auxiliary masked-LM loss, and backbones are built from config (random init), not bert-base(-chinese) / BERT-FP;
* attention dropout is 0 (the shared-prefix attention specs refuse attention dropout in training); hidden dropout is
  0 by default here (BERT: 0.1; set ``hidden_dropout_prob`` in the backbone spec);
* word-level vocabulary from the training set instead of the BERT WordPiece tokenizer; the context's utterances are
  joined with ``[SEP]`` (``[CLS] u_1 [SEP] ... u_k [SEP]``) instead of the released speaker tokens
  (``[CLS] [unused1] u_1 [unused2] u_2 ... [SEP]``); responses keep their first words, not their last.

Input layout (``candidate_format``, set on the datamodule, :mod:`datamodules.llm_response_selection`): ``official``
(default) is the released one, ``[CLS] c [SEP] [CLS] r_1 [SEP] [CLS] r_2 [SEP] ...`` with ``token_type_ids`` 0 on the
context and 1 on every candidate token (BERT backbones; decoders have no segment embeddings and ignore it); each
candidate block is its ``[CLS] r_j [SEP]``, so the masks, the shared position ids (every block starts at the context
length, the released ``bos_locations[0]``) and the mean pooling (the released one averages a candidate's block from its
``[CLS]`` through its ``[SEP]``) cover the wrapped tokens. ``plain``: bare candidate tokens, no token types.
"""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from tasks.llm.prefix import GroupedAttention, MaskedAttention, PrefixLayout, enable_prefix_attention
from tasks.llm.prefix.hf import _placeholder_mask
from tasks.llm.sharding import shard_units


def build_backbone(spec: dict[str, Any], vocab_size: int) -> nn.Module:
    """``{'family': 'bert'|'llama'|'qwen2'|'mistral', <config fields>}`` -> an HF base model (random init)."""
    import transformers

    spec = dict(spec)
    family = spec.pop("family", "bert")
    if family == "bert":
        base = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                    intermediate_size=128, max_position_embeddings=512, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
        base.update(spec)
        cfg = transformers.BertConfig(**base)
        cfg._attn_implementation = "sdpa"
        return transformers.BertModel(cfg, add_pooling_layer=False)
    from tasks.llm.hf_models import causal_lm_config

    cfg = causal_lm_config(family, vocab_size=vocab_size, **spec)
    return transformers.AutoModel.from_config(cfg, attn_implementation="sdpa")


class UniEncoder(nn.Module):
    """Response selection scoring all candidates of a context in one forward.

    Args:
        backbone: backbone spec, ``{'family': 'bert'|'llama'|'qwen2', ...config fields}``.
        vocab_size: vocabulary size.
        attn_map: ``arrow`` (released), ``arrow_context_masked`` or ``causal`` (decoder backbones).
        token_types: BERT backbones: ``token_type_ids`` 0 on the context, 1 on the candidate tokens (the released
            ``official`` layout); ignored by decoder backbones (no segment embeddings). A plain attribute (no
            parameters depend on it): the task sets it from the datamodule's ``candidate_format``.
    """

    def __init__(self, backbone: dict[str, Any], vocab_size: int, attn_map: str = "arrow",
                 token_types: bool = False) -> None:
        super().__init__()
        if attn_map not in ("arrow", "arrow_context_masked", "causal"):
            raise ValueError(f"unknown attn_map {attn_map!r}")
        self.attn_map = attn_map
        self.token_types = token_types
        self.backbone = enable_prefix_attention(build_backbone(backbone, vocab_size))
        self.score = nn.Linear(self.backbone.config.hidden_size, 1)

    def pack(
        self, contexts: list[torch.Tensor], candidates: list[list[torch.Tensor]]
    ) -> tuple[PrefixLayout, torch.Tensor, torch.Tensor | None]:
        """The packed layout, input ids ``[b, L]`` and ``token_type_ids`` ``[b, L]`` (None unless a BERT backbone
        with ``token_types``): 0 on the context and padding, 1 on every candidate token."""
        device = contexts[0].device
        layout = PrefixLayout.build([c.numel() for c in contexts], [[r.numel() for r in g] for g in candidates], device)
        ids = layout.pack(list(contexts), [list(g) for g in candidates])
        types = None
        if self.token_types and self.backbone.config.model_type == "bert":
            pos = torch.arange(layout.length, device=device)
            ctx_len = torch.tensor(layout.prefix_lens, device=device)[:, None]
            types = ((pos[None] >= ctx_len) & layout.valid).long()
        return layout, ids, types

    def forward(
        self, contexts: list[torch.Tensor], candidates: list[list[torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[b, N_max]`` (``-inf`` where a context has fewer candidates) and their validity mask."""
        device = contexts[0].device
        layout, ids, types = self.pack(contexts, candidates)
        if self.attn_map == "causal":
            spec = GroupedAttention(layout)
        else:
            spec = MaskedAttention(layout.dense_mask(self.attn_map), layout.max_position)
        extra = {} if types is None else {"token_type_ids": types}
        out = self.backbone(
            input_ids=ids, position_ids=layout.position_ids, attention_mask=_placeholder_mask(device),
            prefix_attention=spec, **extra,
        )
        hidden = out.last_hidden_state
        b, length, d = hidden.shape
        tok = hidden.reshape(b * length, d)[layout.suffix_index.reshape(-1)].view(*layout.suffix_index.shape, d)
        v = layout.suffix_valid[..., None].to(tok.dtype)
        pooled = (tok * v).sum(1) / v.sum(1)  # mean over each candidate's tokens
        flat = self.score(pooled)[:, 0]
        n_max = max(len(g) for g in candidates)
        scores = flat.new_full((len(candidates), n_max), float("-inf"))
        valid = torch.zeros(len(candidates), n_max, dtype=torch.bool, device=device)
        k = 0
        for i, g in enumerate(candidates):
            scores[i, : len(g)] = flat[k : k + len(g)]
            valid[i, : len(g)] = True
            k += len(g)
        return scores, valid


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


class UniEncoderTask(pl.LightningModule):
    """Training a Uni-Encoder response ranker; reports R10@1/2/5, MRR, MAP and P@1 (Douban: multi-positive labels).

    Args:
        backbone: backbone spec, ``{'family': 'bert'|'llama'|'qwen2', ...config fields}``.
        vocab_size: vocabulary size; None takes it from the datamodule.
        attn_map: ``arrow``, ``arrow_context_masked`` or ``causal``.
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

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        attn_map: str = "arrow",
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        recall_ks: tuple[int, ...] = (1, 2, 5),
        scheduler: str | None = None,
        warmup_steps: int = 3500,
        betas: tuple[float, float] = (0.9, 0.999),
        candidate_format: str | None = None,
    ) -> None:
        super().__init__()
        if scheduler not in (None, "noam"):
            raise ValueError(f"unknown scheduler {scheduler!r} (None or 'noam')")
        if candidate_format not in (None, "official", "plain"):
            raise ValueError(f"unknown candidate_format {candidate_format!r} (None, 'official' or 'plain')")
        self.save_hyperparameters()
        self.net: UniEncoder | None = None
        if vocab_size is not None:
            self._build(vocab_size)

    def _build(self, vocab_size: int) -> None:
        fmt = self.hparams.get("candidate_format") or "official"
        self.net = UniEncoder(self.hparams.backbone or {"family": "bert"}, vocab_size, self.hparams.attn_map,
                              token_types=fmt == "official")
        self.hparams["vocab_size"] = vocab_size

    def setup(self, stage: str) -> None:
        dm = self.trainer.datamodule
        dm_fmt = getattr(dm, "candidate_format", None)
        if dm_fmt is not None:
            own = self.hparams.get("candidate_format")
            if own is not None and own != dm_fmt:
                raise ValueError(f"UniEncoderTask candidate_format={own!r} but the datamodule's is {dm_fmt!r}")
            self.hparams["candidate_format"] = dm_fmt
        if self.net is None:
            if dm is None or not hasattr(dm, "vocab_size"):
                raise ValueError("UniEncoderTask needs vocab_size or a datamodule that provides it")
            self._build(dm.vocab_size)
        self.net.token_types = (self.hparams.get("candidate_format") or "official") == "official"

    def configure_model(self) -> None:
        """FSDP (``tasks.llm.sharding``): each backbone block is a unit, then the whole ranker."""
        if self.net is not None:
            shard_units(self, self, self.net.backbone._no_split_modules or [], ["net"])

    def forward(self, contexts, candidates):
        return self.net(contexts, candidates)

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
