"""CMRAG's dual-sigmoid loss and the page-retrieval metrics (Recall@k, MRR).

The loss is SigLIP's pairwise sigmoid loss (open_clip's ``SigLipLoss``, which also gathers negatives across ranks
under DDP) applied twice (spec: L = L^T + λ·L^I): query↔parsed-text pairs and query↔page-image pairs of a batch of
(query, text, image) triplets, with the UEM's shared learnable temperature τ (``logit_scale``, used as ``exp(τ)``)
and bias η. Tested against an independent formula in ``tests/test_cmrag.py``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["DualSigmoidLoss", "retrieval_metrics", "ranks_of_evidence"]


@dataclass
class DualSigmoidTerms:
    """The two terms and their weighted sum."""

    loss: torch.Tensor
    text: torch.Tensor
    image: torch.Tensor


class DualSigmoidLoss(torch.nn.Module):
    """L = L^T(q, t) + λ·L^I(q, i), each SigLIP's pairwise sigmoid loss summed over the batch's B×B pairs / B.

    Args:
        image_weight: λ, the weight of the query↔image term (not found in the paper; 1.0 assumed).
        rank: this process's rank (DDP), for open_clip's negative exchange.
        world_size: number of processes (1 = no exchange).
    """

    def __init__(self, image_weight: float = 1.0, rank: int = 0, world_size: int = 1) -> None:
        super().__init__()
        from open_clip.loss import SigLipLoss

        self.image_weight = image_weight
        self.siglip = SigLipLoss(rank=rank, world_size=world_size)

    def forward(self, query: torch.Tensor, text: torch.Tensor | None, image: torch.Tensor | None,
                logit_scale: torch.Tensor, logit_bias: torch.Tensor) -> DualSigmoidTerms:
        scale = logit_scale.exp()
        zero = query.new_zeros(())
        lt = self.siglip(query, text, scale, logit_bias) if text is not None else zero
        li = self.siglip(query, image, scale, logit_bias) if image is not None and self.image_weight else zero
        return DualSigmoidTerms(lt + self.image_weight * li, lt, li)


def ranks_of_evidence(scores: torch.Tensor, relevant: list[set[int]]) -> torch.Tensor:
    """1-based rank of the best-ranked relevant page per query (ties broken by page order, as a stable sort).

    Args:
        scores: (Q, N) scores of every query against every page.
        relevant: per query, the indices of its evidence pages.
    """
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    ranks = []
    for row, rel in zip(order.tolist(), relevant):
        hit = [r for r, page in enumerate(row, start=1) if page in rel]
        ranks.append(hit[0] if hit else len(row) + 1)
    return torch.tensor(ranks)


def retrieval_metrics(scores: torch.Tensor, relevant: list[set[int]], ks: tuple[int, ...] = (1, 5)
                      ) -> dict[str, float]:
    """Recall@k (a relevant page among the top k; the hit rate used for single-evidence VDQA) and MRR.

    Args:
        scores: (Q, N) scores.
        relevant: per query, the indices of its evidence pages.
        ks: the cut-offs.
    """
    ranks = ranks_of_evidence(scores, relevant).double()
    out = {f"recall@{k}": float((ranks <= k).double().mean()) for k in ks}
    out["mrr"] = float(torch.where(ranks <= scores.shape[1], 1.0 / ranks, torch.zeros_like(ranks)).mean())
    return out
