"""``CMRAGTask``: trains CMRAG's UEM on (query, parsed text, page image) triplets with the dual-sigmoid loss.

Only the document-text tower, the image projection (when the image tower is not aligned with the text towers) and
τ/η train; the query and image towers are frozen (spec: UEM). Validation and test report the loss terms and the
page-retrieval metrics (Recall@1/5, MRR) of text-only, image-only and UCMR-fused ranking over the split's pages.
"""
from __future__ import annotations

from typing import Any

import torch

from tasks._base import ZooTask
from tasks.cmrag_index import ucmr_fuse
from tasks.metrics.cmrag import DualSigmoidLoss, retrieval_metrics


class CMRAGTask(ZooTask):
    """UEM training (spec: L = L^T + λ·L^I, SigLIP pairwise sigmoid terms).

    Args:
        model: a registered CMRAG UEM (``cmrag_tiny``, ``cmrag_minilm_easyocr``, ``cmrag_siglip_b16``).
        pretrained: False, True, a weight tag, or a local weight file/folder.
        model_kwargs: UEM constructor overrides (``long_text``, ``doc_max_length``, ...).
        compile: ``torch.compile`` switch (see ``ZooTask``).
        init_from: an earlier checkpoint to start from.
        image_weight: λ, the weight of the query↔image sigmoid term (not found in the paper; 1.0 assumed).
        beta: UCMR's fixed text weight for the fused validation metrics.
        lr: AdamW learning rate of the document-text tower.
        head_lr: learning rate of what trains from scratch or is a scalar (image projection, τ, η); None = ``lr``.
        weight_decay: AdamW weight decay.
    """

    def __init__(self, model: str = "cmrag_tiny", pretrained: bool | str = False,
                 model_kwargs: dict[str, Any] | None = None, compile: bool | str = False, init_from: str | None = None,
                 image_weight: float = 1.0, beta: float = 0.5, lr: float = 1e-3, head_lr: float | None = None,
                 weight_decay: float = 0.0) -> None:
        super().__init__(model, pretrained, model_kwargs, compile, init_from)
        self.save_hyperparameters()
        self.loss_fn = DualSigmoidLoss(image_weight)
        self._eval: dict[str, list[Any]] = {}

    def setup(self, stage: str) -> None:
        super().setup(stage)
        if self.trainer is not None and self.trainer.world_size > 1:  # negatives from every rank (open_clip)
            self.loss_fn = DualSigmoidLoss(self.hparams.image_weight, self.trainer.global_rank, self.trainer.world_size)

    # ------------------------------------------------------------------------------------------------ batches
    def encode_batch(self, batch: dict[str, list[Any]]) -> dict[str, torch.Tensor]:
        """Strings and PIL images of a triplet batch -> the UEM's tensor batch on this device."""
        q = self.net.tokenize(batch["query"], "query")
        t = self.net.tokenize(batch["text"], "doc")
        out = {"query_ids": q["input_ids"], "query_mask": q["attention_mask"], "doc_ids": t["input_ids"],
               "doc_mask": t["attention_mask"], "pixels": self.net.preprocess_images(batch["image"])}
        return {k: v.to(self.device) for k, v in out.items()}

    def _loss(self, batch: dict[str, list[Any]]) -> tuple[Any, Any]:
        out = self.network(self.encode_batch(batch))
        return self.loss_fn(out.query, out.text, out.image, out.logit_scale, out.logit_bias), out

    def training_step(self, batch: dict[str, list[Any]], batch_idx: int) -> torch.Tensor:
        terms, _ = self._loss(batch)
        n = len(batch["query"])
        self.log_dict({"train/loss": terms.loss, "train/loss_text": terms.text, "train/loss_image": terms.image},
                      prog_bar=True, batch_size=n)
        self.log("train/tau", self.net.logit_scale.exp(), batch_size=n)
        return terms.loss

    # ------------------------------------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, list[Any]], split: str) -> None:
        terms, out = self._loss(batch)
        n = len(batch["query"])
        self.log_dict({f"{split}/loss": terms.loss, f"{split}/loss_text": terms.text,
                       f"{split}/loss_image": terms.image}, batch_size=n, sync_dist=True)
        keep = self._eval.setdefault(split, [])
        keep.append((out.query.detach().float().cpu(), out.text.detach().float().cpu(),
                     out.image.detach().float().cpu(), list(batch["page"])))

    def _eval_end(self, split: str) -> None:
        rows = self._eval.pop(split, [])
        if not rows:
            return
        q = torch.cat([r[0] for r in rows])
        pages = [p for r in rows for p in r[3]]
        first = {p: i for i, p in reversed(list(enumerate(pages)))}  # one candidate per distinct page
        cand = sorted(first.values())
        t = torch.cat([r[1] for r in rows])[cand]
        im = torch.cat([r[2] for r in rows])[cand]
        col = {pages[i]: c for c, i in enumerate(cand)}
        relevant = [{col[p]} for p in pages]
        st, si = q @ t.T, q @ im.T
        for name, s in (("text", st), ("image", si), ("fused", ucmr_fuse(st, si, self.hparams.beta))):
            for k, v in retrieval_metrics(s, relevant).items():
                self.log(f"{split}/{name}_{k}", v)

    def validation_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        head = ("image_proj.", "logit_scale", "logit_bias")
        named = [(n, p) for n, p in self.net.named_parameters() if p.requires_grad]
        groups = [{"params": [p for n, p in named if not n.startswith(head)]},
                  {"params": [p for n, p in named if n.startswith(head)], "weight_decay": 0.0,
                   "lr": self.hparams.head_lr or self.hparams.lr}]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.hparams.lr,
                                 weight_decay=self.hparams.weight_decay)
