"""Uni-Encoder (Song et al., Findings of ACL 2023): all candidates packed after one context, one forward.

Spec (``shared/papers/llm/uni-encoder.md``): the context and its N candidates are one sequence; every candidate gets the
same position ids (right after the context, :class:`tasks.llm.prefix.PrefixLayout`); the attention mask lets
candidates see the context and themselves but not each other. ``attn_map``:

* ``arrow`` — as released: context rows see every valid token (context and all candidates); candidates bidirectional;
* ``arrow_context_masked`` — context rows see only the context: each candidate's representation equals scoring that
  candidate alone (tested);
* ``causal`` — decoder backbones (Llama/Qwen2): the Prefix Grouper layout; equals per-candidate scoring (tested).

Score: mean-pool each candidate's final hidden states, a linear layer, softmax over the candidates; loss:
cross-entropy over candidates. Deviation: the paper's auxiliary masked-LM loss on a pretrained BERT is not used
(backbones here are built from config, random init).
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
    """

    def __init__(self, backbone: dict[str, Any], vocab_size: int, attn_map: str = "arrow") -> None:
        super().__init__()
        if attn_map not in ("arrow", "arrow_context_masked", "causal"):
            raise ValueError(f"unknown attn_map {attn_map!r}")
        self.attn_map = attn_map
        self.backbone = enable_prefix_attention(build_backbone(backbone, vocab_size))
        self.score = nn.Linear(self.backbone.config.hidden_size, 1)

    def forward(
        self, contexts: list[torch.Tensor], candidates: list[list[torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores ``[b, N_max]`` (``-inf`` where a context has fewer candidates) and their validity mask."""
        device = contexts[0].device
        layout = PrefixLayout.build([c.numel() for c in contexts], [[r.numel() for r in g] for g in candidates], device)
        ids = layout.pack(list(contexts), [list(g) for g in candidates])
        if self.attn_map == "causal":
            spec = GroupedAttention(layout)
        else:
            spec = MaskedAttention(layout.dense_mask(self.attn_map), layout.length)
        out = self.backbone(
            input_ids=ids, position_ids=layout.position_ids, attention_mask=_placeholder_mask(device),
            prefix_attention=spec,
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
def recall_at_k(scores: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """R_N@k: fraction of contexts whose true candidate ``labels[i]`` is in the ``k`` best (ties: pessimistic)."""
    true = scores.gather(1, labels[:, None])
    rank = (scores > true).sum(1) + (scores == true).sum(1) - 1  # candidates at least as good, minus itself
    return (rank < k).float().mean()


def mean_reciprocal_rank(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MRR of the true candidate (ties: pessimistic)."""
    true = scores.gather(1, labels[:, None])
    rank = (scores > true).sum(1) + (scores == true).sum(1)
    return (1.0 / rank.float()).mean()


class UniEncoderTask(pl.LightningModule):
    """Training a Uni-Encoder response ranker; reports R10@1/2/5 and MRR.

    Args:
        backbone: backbone spec, ``{'family': 'bert'|'llama'|'qwen2', ...config fields}``.
        vocab_size: vocabulary size; None takes it from the datamodule.
        attn_map: ``arrow``, ``arrow_context_masked`` or ``causal``.
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        recall_ks: the k of the R_N@k metrics.
    """

    def __init__(
        self,
        backbone: dict[str, Any] | None = None,
        vocab_size: int | None = None,
        attn_map: str = "arrow",
        lr: float = 5e-4,
        weight_decay: float = 0.01,
        recall_ks: tuple[int, ...] = (1, 2, 5),
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net: UniEncoder | None = None
        if vocab_size is not None:
            self._build(vocab_size)

    def _build(self, vocab_size: int) -> None:
        self.net = UniEncoder(self.hparams.backbone or {"family": "bert"}, vocab_size, self.hparams.attn_map)
        self.hparams["vocab_size"] = vocab_size

    def setup(self, stage: str) -> None:
        if self.net is None:
            dm = self.trainer.datamodule
            if dm is None or not hasattr(dm, "vocab_size"):
                raise ValueError("UniEncoderTask needs vocab_size or a datamodule that provides it")
            self._build(dm.vocab_size)

    def configure_model(self) -> None:
        """FSDP (``tasks.llm.sharding``): each backbone block is a unit, then the whole ranker."""
        if self.net is not None:
            shard_units(self, self, self.net.backbone._no_split_modules or [], ["net"])

    def forward(self, contexts, candidates):
        return self.net(contexts, candidates)

    def _shared(self, batch: dict, stage: str) -> torch.Tensor:
        scores, _ = self(batch["context_ids"], batch["candidate_ids"])
        labels = batch["label"].to(scores.device)
        loss = nn.functional.cross_entropy(scores, labels)
        n = scores.shape[0]
        sync = stage != "train"  # epoch-level metrics: averaged over the ranks under DDP / FSDP (no-op otherwise)
        self.log(f"{stage}/loss", loss, prog_bar=True, batch_size=n, sync_dist=sync)
        if stage != "train":
            n_cand = scores.shape[1]
            for k in self.hparams.recall_ks:
                if k < n_cand:
                    self.log(f"{stage}/R{n_cand}@{k}", recall_at_k(scores, labels, k), batch_size=n, sync_dist=True)
            self.log(f"{stage}/MRR", mean_reciprocal_rank(scores, labels), batch_size=n, sync_dist=True)
        return loss

    def training_step(self, batch, batch_idx):
        return self._shared(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._shared(batch, "val")

    def test_step(self, batch, batch_idx):
        self._shared(batch, "test")

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
