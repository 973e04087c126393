"""Person re-identification: ``ReIDTask`` (FusionReID's six-head recipe), its losses and the Market-1501 evaluation.

- Losses (FusionReID spec "Losses"): for each of the six heads, label-smoothed cross-entropy (eps 0.1) on the
  BNNeck logits + batch-hard soft-margin triplet on the pre-BN feature, summed with equal weights.
- Optimiser: SGD momentum 0.9, lr 0.005, weight decay 1e-4, biases at 2x lr, in two parameter groups.
- Schedule: timm ``CosineLRScheduler`` semantics per epoch (linear warmup from 0.01*lr over 10 epochs, cosine to
  0.002*lr), stepped with the official code's 1-based epoch index.
- Evaluation: query and gallery embeddings gathered across ranks, cosine distance (optionally k-reciprocal
  re-ranking), :func:`evaluate_rank` -> mAP and CMC rank-1/5/10.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from ._base import ZooTask

_logger = logging.getLogger(__name__)

__all__ = ["ReIDTask", "evaluate_rank", "re_ranking", "batch_hard_triplet_loss", "reid_losses", "cosine_distance",
           "timm_cosine_lr"]


# ------------------------------------------------------------------------------------------------------------ losses
def batch_hard_triplet_loss(features: torch.Tensor, labels: torch.Tensor, margin: float | None = None
                            ) -> torch.Tensor:
    """Batch-hard triplet loss (Hermans et al. 2017) on Euclidean distances of un-normalised features.

    For each anchor: hardest positive (largest distance, same label) and hardest negative (smallest distance,
    other label). ``margin=None`` is the soft-margin form ``log(1 + exp(d_ap - d_an))`` used by FusionReID;
    otherwise ``max(0, d_ap - d_an + margin)``. Computed in fp32.
    """
    x = features.float()
    sq = x.pow(2).sum(1)
    dist = (sq[:, None] + sq[None, :] - 2.0 * x @ x.t()).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    d_ap = dist.masked_fill(~same, float("-inf")).amax(1)
    d_an = dist.masked_fill(same, float("inf")).amin(1)
    if margin is None:
        return F.softplus(d_ap - d_an).mean()  # == SoftMarginLoss(d_an - d_ap, y=1)
    return F.relu(d_ap - d_an + margin).mean()


def reid_losses(features: list[torch.Tensor], logits: list[torch.Tensor], labels: torch.Tensor,
                label_smoothing: float = 0.1, margin: float | None = None, id_weight: float = 1.0,
                triplet_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Sum over heads of ``id_weight * CE_ls(logits_i) + triplet_weight * triplet(features_i)``.

    Returns the total and a dict of the per-head terms (``id_i``, ``tri_i``).
    """
    parts: dict[str, torch.Tensor] = {}
    total = features[0].new_zeros((), dtype=torch.float32)
    for i, (f, z) in enumerate(zip(features, logits)):
        ce = F.cross_entropy(z.float(), labels, label_smoothing=label_smoothing)
        tri = batch_hard_triplet_loss(f, labels, margin)
        parts[f"id_{i}"], parts[f"tri_{i}"] = ce.detach(), tri.detach()
        total = total + id_weight * ce + triplet_weight * tri
    return total, parts


# -------------------------------------------------------------------------------------------------------- evaluation
def _np(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def evaluate_rank(
    distmat: Any,
    q_pids: Any,
    g_pids: Any,
    q_camids: Any = None,
    g_camids: Any = None,
    max_rank: int = 50,
    use_camids: bool = True,
    return_num_valid: bool = False,
    chunk: int = 512,
) -> tuple[np.ndarray, float] | tuple[np.ndarray, float, int]:
    """CMC and mAP with the Market-1501 protocol.

    For each query the gallery items with the same pid AND the same camera are removed (junk pids must already be
    dropped); queries with no remaining match are skipped and counted (a warning, and ``return_num_valid``).

    Args:
        distmat: (num_query, num_gallery) distances (smaller = more similar).
        q_pids: query identities.
        g_pids: gallery identities.
        q_camids: query cameras (required when ``use_camids``).
        g_camids: gallery cameras (required when ``use_camids``).
        max_rank: length of the returned CMC curve (capped at the gallery size).
        use_camids: apply the same-camera filter. False for data without camera ids: nothing is removed, so the
            query image itself must not be in the gallery.
        return_num_valid: also return the number of evaluated (valid) queries.
        chunk: queries sorted at a time (bounds memory on MSMT17-size galleries).

    Returns:
        ``(cmc, mAP)``: cmc[k] = fraction of valid queries with a correct match within the top k+1; mAP in [0, 1].
    """
    dist = _np(distmat)
    q_pids, g_pids = _np(q_pids), _np(g_pids)
    num_q, num_g = dist.shape
    if use_camids:
        if q_camids is None or g_camids is None:
            raise ValueError("evaluate_rank: camera ids are missing; pass use_camids=False for data without them")
        q_camids, g_camids = _np(q_camids), _np(g_camids)
    max_rank = min(max_rank, num_g)
    all_cmc, all_ap = [], []
    for start in range(0, num_q, chunk):
        order = np.argsort(dist[start:start + chunk], axis=1, kind="stable")
        for r, row in enumerate(order):
            qi = start + r
            match = g_pids[row] == q_pids[qi]
            if use_camids:
                keep = ~(match & (g_camids[row] == q_camids[qi]))
                match = match[keep]
            if not match.any():
                continue
            hits = np.flatnonzero(match)  # 0-based ranks of the correct matches
            cmc = np.zeros(max_rank, dtype=np.float64)
            if hits[0] < max_rank:
                cmc[hits[0]:] = 1.0
            all_cmc.append(cmc)
            all_ap.append(float(np.mean(np.arange(1, len(hits) + 1) / (hits + 1.0))))
    num_valid = len(all_ap)
    if num_valid == 0:
        raise ValueError("evaluate_rank: no query has a valid match in the gallery")
    if num_valid < num_q:
        _logger.warning("evaluate_rank: %d of %d queries have no valid gallery match and were skipped",
                        num_q - num_valid, num_q)
    cmc = np.mean(all_cmc, axis=0).astype(np.float32)
    m_ap = float(np.mean(all_ap))
    return (cmc, m_ap, num_valid) if return_num_valid else (cmc, m_ap)


def cosine_distance(qf: torch.Tensor, gf: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity (features are normalised here, so any scale works)."""
    return 1.0 - F.normalize(qf.float(), dim=1) @ F.normalize(gf.float(), dim=1).t()


def re_ranking(qf: Any, gf: Any, k1: int = 20, k2: int = 6, lambda_value: float = 0.3) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017), dense; returns the (num_q, num_g) final distance.

    d* = (1 - lambda) d_J + lambda d, where d is the squared Euclidean distance over query+gallery normalised per
    column, d_J the Jaccard distance of the k-reciprocal neighbour encodings V (Eq. 7-10): R*(p, k1) is R(p, k1)
    expanded by R(q, k1/2) of its members when they share more than 2/3 of their own neighbours (Eq. 6);
    V_pq = exp(-d(p, q)) on R*, normalised; V is averaged over the k2 nearest neighbours (query expansion, Eq. 11).
    """
    qf, gf = _np(qf).astype(np.float32), _np(gf).astype(np.float32)
    num_q = qf.shape[0]
    feats = np.concatenate([qf, gf], 0)
    n = feats.shape[0]
    sq = (feats ** 2).sum(1)
    d = np.maximum(sq[:, None] + sq[None, :] - 2.0 * feats @ feats.T, 0.0)
    d = d / np.maximum(d.max(axis=0, keepdims=True), 1e-12)  # column-normalised original distance
    rank = np.argsort(d, axis=1, kind="stable")
    k1 = min(k1, n - 1)

    def k_reciprocal(i: int, k: int) -> np.ndarray:
        forward = rank[i, :k + 1]
        backward = rank[forward, :k + 1]
        return forward[(backward == i).any(axis=1)]

    V = np.zeros((n, n), dtype=np.float32)
    half = int(round(k1 / 2))
    for i in range(n):
        r = k_reciprocal(i, k1)
        expanded = r
        for c in r:
            rc = k_reciprocal(int(c), half)
            if len(np.intersect1d(rc, r)) > 2.0 / 3.0 * len(rc):
                expanded = np.union1d(expanded, rc)
        expanded = np.unique(expanded)
        w = np.exp(-d[i, expanded])
        V[i, expanded] = w / w.sum()
    if k2 > 1:
        V = V[rank[:, :k2]].mean(axis=1)
    # Jaccard: 1 - sum(min) / sum(max); rows sum to 1, so sum(max) = 2 - sum(min)
    vq, vg = V[:num_q], V[num_q:]
    inter = np.minimum(vq[:, None, :], vg[None, :, :]).sum(-1)
    union = vq.sum(1)[:, None] + vg.sum(1)[None, :] - inter
    jaccard = 1.0 - inter / np.maximum(union, 1e-12)
    return (1 - lambda_value) * jaccard + lambda_value * d[:num_q, num_q:]


# --------------------------------------------------------------------------------------------------------- schedule
def timm_cosine_lr(t: int, base_lr: float, ref_lr: float, epochs: int, warmup_epochs: int = 10,
                   warmup_factor: float = 0.01, min_lr_factor: float = 0.002) -> float:
    """timm ``CosineLRScheduler`` (t_in_epochs, one cycle, no warmup prefix) at epoch index ``t``.

    ``base_lr`` is the group's lr; warmup start and floor are absolute (``warmup_factor``/``min_lr_factor`` of the
    reference lr ``ref_lr``) for every group, as in timm.
    """
    warm, lr_min = warmup_factor * ref_lr, min_lr_factor * ref_lr
    if t < warmup_epochs:
        return warm + t * (base_lr - warm) / warmup_epochs
    if t >= epochs:
        return lr_min
    return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * t / epochs))


# ------------------------------------------------------------------------------------------------------ CUDA graphs
def _inductor_cudagraphs(compile_mode: bool | str) -> bool:
    """True for the ``torch.compile`` modes whose inductor output runs under inductor's own CUDA graphs."""
    return isinstance(compile_mode, str) and ("reduce-overhead" in compile_mode or compile_mode == "max-autotune")


def _graph_autocast() -> torch.autocast:
    """The current CUDA autocast state with autocast's cast cache off, around every call on the CUDA-graph path.

    A cast cached before a capture (same autocast region) would be read by the graph instead of recomputed: stale
    weights, or memory freed when the region ends. With the cache off every replay casts the live fp32 weights. All
    calls on the graph path (warm-up, capture, eager fallbacks) use this same state, so ``torch.compile``'s guards
    (which include the cache flag) see one global state and nothing recompiles during a capture.
    """
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                          cache_enabled=False)


class _CudaGraphs:
    """A task's captured CUDA graphs and their static buffers; a copy or an unpickled task starts empty."""

    def __init__(self) -> None:
        self.warned = False  # the off-CUDA warning was shown
        self.captures = self.train_replays = self.infer_replays = 0  # totals, kept across reset()
        self.reset()

    def reset(self) -> None:
        """Drop the graphs (the module moved: Lightning's teardown moves it to the CPU after fit, for one)."""
        self.stream: torch.cuda.Stream | None = None  # warm-up side stream
        self.train: dict[str, Any] | None = None  # the training-step graph: key, graph, static inputs/stats, lrs
        self.train_warmup: dict[tuple, int] = {}  # eager warm-up steps done per batch signature
        self.infer: dict[tuple, dict[str, Any]] = {}  # eval-forward graphs per input signature
        self.infer_seen: dict[tuple, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def __deepcopy__(self, memo: dict) -> _CudaGraphs:
        return _CudaGraphs()


# -------------------------------------------------------------------------------------------------------------- task
class ReIDTask(ZooTask):
    """Person re-identification with a multi-head ReID model (FusionReID).

    Args:
        model: registered model name (e.g. ``fusionreid_vitb16_r50``), ``name.tag``, ``hf-hub:`` or ``local-dir:``.
        pretrained: False, True, a weight tag, or a local weight file/folder.
        model_kwargs: constructor overrides; ``num_classes``/``num_cameras`` come from the datamodule when absent.
        compile: ``torch.compile`` the network (False, True or a mode).
        lr: base learning rate (SGD).
        momentum: SGD momentum.
        weight_decay: weight decay of weights.
        bias_lr_factor: learning-rate factor of biases.
        weight_decay_bias: weight decay of biases.
        epochs: schedule length (None: the trainer's max_epochs).
        warmup_epochs: linear warmup epochs.
        warmup_factor: warmup starts at this fraction of lr.
        min_lr_factor: cosine floor as a fraction of lr.
        label_smoothing: cross-entropy label smoothing.
        triplet_margin: triplet margin; None = soft margin (the paper).
        id_loss_weight: weight of each ID loss.
        triplet_loss_weight: weight of each triplet loss.
        use_camids: feed camera ids to the model (SIE) and apply the same-camera filter in evaluation.
        reranking: k-reciprocal re-ranking at evaluation.
        rerank_k1: re-ranking k1.
        rerank_k2: re-ranking k2.
        rerank_lambda: re-ranking lambda.
        max_rank: CMC length.
        channels_last: run the CNN branch in channels-last memory format (faster convolutions on GPU).
        cuda_graphs: run whole steps as captured CUDA graphs (one GPU; precision 32-true or bf16-mixed), against the
            host/launch overhead of the step. Training switches to manual optimisation: the first
            ``graph_warmup_steps`` (3) steps of a batch shape run eagerly on a side stream, then one graph holding the
            forward (the compiled network and loss when ``compile`` is on), backward and the fused SGD step is
            captured, and every later batch of that shape is copied into its static inputs and replayed. Eval and
            predict forwards replay one graph per input shape (captured when a shape comes a second time). Off CUDA
            it warns once and every step is eager. ``'auto'``: on where the run allows it (one CUDA device,
            32-true or bf16-mixed, no gradient clipping or accumulation, no inductor CUDA-graph compile mode), else
            the plain automatic-optimisation path, said once at fit start — the multi-GPU, 16-mixed and CPU runs of
            a config that sets it work unchanged. See "CUDA graphs" below.

    CUDA graphs (``cuda_graphs=True``):
        - Learning rate: at capture each param group's lr becomes a 0-d fp32 tensor on the GPU that the captured
          fused-SGD kernel reads on every replay. The LambdaLR schedule (stepped per epoch by this task in
          ``on_train_epoch_end``, as Lightning does in automatic optimisation) fills that tensor in place, so a new
          lr needs no recapture; a float assigned to a group's lr is copied into the tensor before the next replay;
          a change of any other hyper-parameter (momentum, weight decay, ...) recaptures.
        - ``trainer.global_step``: the raw optimiser runs inside the graph, not ``LightningOptimizer.step()``, so the
          task advances Lightning's manual-optimisation step counter after each replay (``max_steps``, logging and
          checkpoint names behave as in automatic optimisation).
        - A batch of another shape takes an eager step and the graph is kept (the P x K sampler with ``drop_last``
          never yields one). Logged values are copies of the graph's static outputs: no host synchronisation.
        - BatchNorm running statistics are updated in place by the replays, so eval sees the real buffers; eval runs
          its own graphs (eval mode) outside the training graph. Moving the module (``.to()``) drops all graphs.
        - Not supported: compile modes with inductor's own CUDA graphs (reduce-overhead, max-autotune; use
          ``compile=True`` or 'max-autotune-no-cudagraphs'), 16-mixed (GradScaler's skip-step check is not
          capturable), several devices, ``Trainer(gradient_clip_val=...)`` and ``accumulate_grad_batches > 1``
          (Lightning refuses both in manual optimisation). Hooks around ``backward()``/``optimizer.step()``
          (``on_after_backward``, ``on_before_optimizer_step``) run on eager steps only.
    """

    data_links = ("num_classes", "num_cameras")
    #: eager steps (on a side stream) of a batch shape before its training step is captured
    graph_warmup_steps: ClassVar[int] = 3
    #: eval-forward graphs kept (one per input shape); further shapes run eagerly
    max_infer_graphs: ClassVar[int] = 4

    def __init__(
        self,
        model: str = "fusionreid_vitb16_r50",
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        lr: float = 0.005,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        bias_lr_factor: float = 2.0,
        weight_decay_bias: float = 1e-4,
        epochs: int | None = None,
        warmup_epochs: int = 10,
        warmup_factor: float = 0.01,
        min_lr_factor: float = 0.002,
        label_smoothing: float = 0.1,
        triplet_margin: float | None = None,
        id_loss_weight: float = 1.0,
        triplet_loss_weight: float = 1.0,
        use_camids: bool = True,
        reranking: bool = False,
        rerank_k1: int = 20,
        rerank_k2: int = 6,
        rerank_lambda: float = 0.3,
        max_rank: int = 50,
        channels_last: bool = False,
        cuda_graphs: bool | str = False,
    ) -> None:
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be true, false or 'auto', not {cuda_graphs!r}")
        if cuda_graphs is True and _inductor_cudagraphs(compile):
            raise ValueError(f"cuda_graphs=True captures whole steps itself and cannot contain inductor's CUDA graphs "
                             f"(compile={compile!r}): use compile=True or 'max-autotune-no-cudagraphs'")
        self.channels_last = channels_last
        self.cuda_graphs: bool | str = cuda_graphs
        self._graphs = _CudaGraphs()
        self._bench_opt: torch.optim.Optimizer | None = None
        super().__init__(model, pretrained, model_kwargs, compile)
        self.save_hyperparameters()
        self._eval_outputs: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------------------------------------ training
    @property
    def automatic_optimization(self) -> bool:  # type: ignore[override]
        """False while CUDA graphs may be used: the task then runs the optimiser itself (inside the captured graph)."""
        return not self._graphs_enabled()

    def _graphs_enabled(self) -> bool:
        if self.cuda_graphs == "auto":
            return self._auto_graphs_off_reason() is None
        return bool(self.cuda_graphs)

    def _auto_graphs_off_reason(self) -> str | None:
        """Why ``cuda_graphs='auto'`` stays off for this run (the attached Trainer's settings; without a Trainer,
        the network's device), or None when it is on."""
        if _inductor_cudagraphs(self.compile_mode):
            return f"compile={self.compile_mode!r} uses inductor's own CUDA graphs"
        t = self._trainer
        if t is None:
            return None if self.device.type == "cuda" else f"the network is on {self.device}"
        from pytorch_lightning.accelerators import CUDAAccelerator

        if not isinstance(t.accelerator, CUDAAccelerator):
            return f"the accelerator is {type(t.accelerator).__name__}, not CUDA"
        if t.world_size > 1:
            return f"{t.world_size} devices (CUDA graphs run on one GPU)"
        if t.precision not in ("32-true", "bf16-mixed"):
            return f"precision {t.precision} (32-true or bf16-mixed only)"
        if t.gradient_clip_val:
            return "gradient clipping (not available in manual optimisation)"
        if t.accumulate_grad_batches > 1:
            return "gradient accumulation (not available in manual optimisation)"
        return None

    def on_net_built(self) -> None:
        # with compile on, the twelve loss terms are fused too (the eager loss is launch-bound beside the model)
        self._loss_fn = torch.compile(reid_losses) if self.compile_mode else reid_losses
        self._cudagraphs = _inductor_cudagraphs(self.compile_mode)
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)  # type: ignore[union-attr]

    def _cl(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _images(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._cl(batch["image"])

    def _camids(self, batch: dict[str, torch.Tensor]) -> torch.Tensor | None:
        return batch.get("camid") if self.hparams.use_camids else None

    def _forward_loss(self, images: torch.Tensor, pids: torch.Tensor, camids: torch.Tensor | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed loss and the (4,) statistics logged per step: [loss, ID losses, triplet losses, accuracy]."""
        out = self.network(images, camids)
        hp = self.hparams
        loss_fn = reid_losses if self._eager else self._loss_fn  # eager_network(): no compiled loss either
        loss, parts = loss_fn(out.features, out.logits, pids, hp.label_smoothing, hp.triplet_margin,
                              hp.id_loss_weight, hp.triplet_loss_weight)
        id_loss = sum(v for k, v in parts.items() if k.startswith("id"))
        tri_loss = sum(v for k, v in parts.items() if k.startswith("tri"))
        acc = (out.logits[0].argmax(1) == pids).float().mean()
        return loss, torch.stack([loss.detach(), id_loss, tri_loss, acc])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        if self.automatic_optimization:
            if self._cudagraphs:
                torch.compiler.cudagraph_mark_step_begin()  # a new iteration: CUDA-graph outputs of the last may be reused
            loss, stats = self._forward_loss(self._images(batch), batch["pid"], self._camids(batch))
        else:
            stats = self._manual_step(batch, self.optimizers())
            loss = stats[0]
        bs = batch["image"].shape[0]
        self.log("train/loss", stats[0], prog_bar=True, batch_size=bs)
        self.log("train/id", stats[1], batch_size=bs)
        self.log("train/triplet", stats[2], batch_size=bs)
        self.log("train/acc", stats[3], prog_bar=True, batch_size=bs)
        return loss

    def on_fit_start(self) -> None:
        if self.cuda_graphs == "auto":
            reason = self._auto_graphs_off_reason()
            rank_zero_info("ReIDTask(cuda_graphs='auto'): " + ("whole-step CUDA graphs on" if reason is None else
                                                               f"off, automatic optimisation ({reason})"))
            return
        if not (self.cuda_graphs and self.device.type == "cuda"):
            return
        if self.trainer.world_size > 1:
            raise ValueError("ReIDTask(cuda_graphs=True) runs on one GPU; for multi-device training drop cuda_graphs "
                             "or set it to 'auto' (off where it cannot run)")
        if self.trainer.precision == "16-mixed":
            raise ValueError("ReIDTask(cuda_graphs=True) supports precision 32-true or bf16-mixed, not "
                             f"{self.trainer.precision} (GradScaler's skip-step check cannot be captured)")

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:  # Lightning steps the schedulers itself only in automatic optimisation
            sched = self.lr_schedulers()
            if sched is not None:
                sched.step()

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        weights, biases = [], []
        for name, p in self.net.named_parameters():  # type: ignore[union-attr]
            if p.requires_grad:
                (biases if "bias" in name else weights).append(p)
        groups = [
            {"params": weights, "lr": hp.lr, "weight_decay": hp.weight_decay},
            {"params": biases, "lr": hp.lr * hp.bias_lr_factor, "weight_decay": hp.weight_decay_bias},
        ]
        on_cuda = self.device.type == "cuda"
        opt = torch.optim.SGD(groups, lr=hp.lr, momentum=hp.momentum, fused=True if on_cuda else None,
                              foreach=None if on_cuda else True)
        epochs = hp.epochs or (self.trainer.max_epochs if self._trainer is not None else None) or 180
        if epochs < 0:
            epochs = 180
        lambdas = [
            (lambda e, b=g["lr"]: timm_cosine_lr(e + 1, b, hp.lr, epochs, hp.warmup_epochs, hp.warmup_factor,
                                                 hp.min_lr_factor) / b)
            for g in groups
        ]
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambdas)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------------------------------- CUDA graphs
    def _graph_path(self) -> bool:
        """Whether this call may use CUDA graphs: the option is on, the network is on a GPU, no ``eager_network()``."""
        if not self._graphs_enabled() or self._eager:
            return False
        if self.device.type == "cuda":
            return True
        if not self._graphs.warned:
            self._graphs.warned = True
            rank_zero_warn(f"ReIDTask(cuda_graphs=True): the network is on {self.device}, not a CUDA device; every "
                           "step runs eagerly (this warning is shown once)")
        return False

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to()/.cuda()/.float() may give parameters new storage that a captured graph would not see
        graphs = self.__dict__.get("_graphs")
        if graphs is not None and (graphs.train is not None or graphs.infer):
            self._drop_train_graph()
            graphs.reset()
        return super()._apply(fn, *args, **kwargs)

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Run the block on a side stream that waits for the current stream's work and is waited for after it."""
        g = self._graphs
        if g.stream is None:
            g.stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        g.stream.wait_stream(main)
        try:
            with torch.cuda.stream(g.stream):
                yield
        finally:
            main.wait_stream(g.stream)

    def _train_key(self, batch: dict[str, torch.Tensor]) -> tuple:
        cam = self._camids(batch)
        return (tuple(batch["image"].shape), batch["image"].dtype, tuple(batch["pid"].shape),
                None if cam is None else (tuple(cam.shape), cam.dtype), self.net.training,  # type: ignore[union-attr]
                torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))

    @staticmethod
    def _hyper(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
        """The param groups' hyper-parameters a captured optimiser step has baked in (all but params and lr)."""
        return [{k: v for k, v in g.items() if k not in ("params", "lr") and not isinstance(v, torch.Tensor)}
                for g in opt.param_groups]

    def _manual_step(self, batch: dict[str, torch.Tensor], opt: Any) -> torch.Tensor:
        """One optimiser step in manual optimisation: a replay of the captured training graph when the batch matches
        it, else an eager step (before the capture: the warm-up steps, on a side stream). ``opt`` is the
        ``LightningOptimizer`` inside ``Trainer.fit`` or a torch optimiser (benchmark). Returns the step's
        statistics (see ``_forward_loss``), owned by the caller."""
        lightning = isinstance(opt, LightningOptimizer)
        raw = opt.optimizer if lightning else opt
        if not self._graph_path():
            return self._eager_step(batch, opt, raw, lightning)
        g = self._graphs
        key = self._train_key(batch)
        if g.train is None:
            done = g.train_warmup.get(key, 0)
            if done < self.graph_warmup_steps:  # momentum buffers, cuDNN autotuning, compilation before the capture
                g.train_warmup[key] = done + 1
                with self._side_stream(), _graph_autocast():
                    return self._eager_step(batch, opt, raw, lightning)
            self._capture_train(batch, raw, key)
        elif g.train["key"] != key:  # another batch shape: eager, the graph is kept
            with _graph_autocast():
                return self._eager_step(batch, opt, raw, lightning)
        return self._replay_train(batch, raw, lightning)

    def _eager_step(self, batch: dict[str, torch.Tensor], opt: Any, raw: torch.optim.Optimizer, lightning: bool
                    ) -> torch.Tensor:
        raw.zero_grad(set_to_none=self._graphs.train is None)  # a captured graph keeps its gradient buffers
        loss, stats = self._forward_loss(self._images(batch), batch["pid"], self._camids(batch))
        if lightning:
            self.manual_backward(loss)
            opt.step()  # LightningOptimizer: Lightning's hooks, and it counts the step
        else:
            loss.backward()
            raw.step()
        return stats

    def _capture_train(self, batch: dict[str, torch.Tensor], raw: torch.optim.Optimizer, key: tuple) -> None:
        """Capture forward + loss + backward + optimiser step on static inputs of the batch's signature."""
        if not all(grp.get("fused") for grp in raw.param_groups):
            raise RuntimeError("ReIDTask(cuda_graphs=True) captures the optimiser step and needs a fused optimiser "
                               "(configure_optimizers() builds a fused SGD on CUDA)")
        lrs = []
        for grp in raw.param_groups:  # the schedule fills these in place; the captured kernel reads them
            lr = grp["lr"]
            if not (isinstance(lr, torch.Tensor) and lr.is_cuda and lr.dtype == torch.float32 and lr.dim() == 0):
                lr = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
            grp["lr"] = lr
            lrs.append(lr)
        x, cam = batch["image"], self._camids(batch)
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        static = {"image": torch.empty_like(x, memory_format=fmt), "pid": torch.empty_like(batch["pid"])}
        if cam is not None:
            static["camid"] = torch.empty_like(cam)
        raw.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        t0 = time.perf_counter()
        # thread_local: DataLoader pin-memory threads may call CUDA while this thread captures
        with _graph_autocast(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            loss, stats = self._forward_loss(static["image"], static["pid"], static.get("camid"))
            loss.backward()
            raw.step()
        self._graphs.train = {"key": key, "graph": graph, "static": static, "stats": stats, "lrs": lrs,
                              "hyper": self._hyper(raw)}
        self._graphs.captures += 1
        rank_zero_info(f"ReIDTask(cuda_graphs): captured the training step (batch {tuple(x.shape)}, "
                       f"{self._graphs.train_warmup.get(key, 0)} eager warm-up steps, {time.perf_counter() - t0:.2f} s)")

    def _replay_train(self, batch: dict[str, torch.Tensor], raw: torch.optim.Optimizer, lightning: bool
                      ) -> torch.Tensor:
        t = self._graphs.train
        assert t is not None
        for grp, lr in zip(raw.param_groups, t["lrs"]):
            if grp["lr"] is not lr:  # a float (or another tensor) was assigned: the graph reads `lr`
                lr.fill_(grp["lr"])
                grp["lr"] = lr
        if self._hyper(raw) != t["hyper"]:
            rank_zero_info("ReIDTask(cuda_graphs): optimiser hyper-parameters changed; recapturing the training step")
            self._drop_train_graph()
            self._capture_train(batch, raw, t["key"])
            t = self._graphs.train
        s = t["static"]
        s["image"].copy_(batch["image"], non_blocking=True)
        s["pid"].copy_(batch["pid"], non_blocking=True)
        if "camid" in s:
            s["camid"].copy_(batch["camid"], non_blocking=True)
        t["graph"].replay()
        self._graphs.train_replays += 1
        if lightning:
            # The raw optimiser stepped inside the graph, not LightningOptimizer.step(), which is what counts
            # Lightning's manual-optimisation steps: count this one so that trainer.global_step (max_steps,
            # log_every_n_steps, checkpoint names) advances as with opt.step().
            progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
        return t["stats"].clone()  # the next replay overwrites the static outputs

    def _drop_train_graph(self) -> None:
        if self._graphs.train is not None:
            self._graphs.train = None
            self.net.zero_grad(set_to_none=True)  # type: ignore[union-attr]  # the gradients live in its pool

    def _embed(self, images: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        """The eval-mode embedding of a batch (a copy of a CUDA-graph output when graphs are on)."""
        if not self.net.training and not torch.is_grad_enabled() and self._graph_path():
            return self._infer_graphed(images, camids)
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
            return self.network(self._cl(images), camids).clone()  # inductor reuses its graph outputs next step
        return self.network(self._cl(images), camids)

    def _infer_graphed(self, images: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        g = self._graphs
        key = (tuple(images.shape), images.dtype, None if camids is None else (tuple(camids.shape), camids.dtype),
               torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))
        entry = g.infer.get(key)
        if entry is None:
            seen = g.infer_seen.get(key, 0)
            g.infer_seen[key] = seen + 1
            if seen == 0 or len(g.infer) >= self.max_infer_graphs:  # first sight (the warm-up): eager
                with self._side_stream(), _graph_autocast():
                    return self.network(self._cl(images), camids)
            fmt = torch.channels_last if self.channels_last else torch.contiguous_format
            entry = {"image": torch.empty_like(images, memory_format=fmt),
                     "camid": None if camids is None else torch.empty_like(camids), "graph": torch.cuda.CUDAGraph()}
            with _graph_autocast(), torch.cuda.graph(entry["graph"], capture_error_mode="thread_local"):
                entry["out"] = self.network(entry["image"], entry["camid"])
            g.infer[key] = entry
            g.captures += 1
            rank_zero_info(f"ReIDTask(cuda_graphs): captured the eval forward for batch {tuple(images.shape)}")
        entry["image"].copy_(images, non_blocking=True)
        if camids is not None:
            entry["camid"].copy_(camids, non_blocking=True)
        entry["graph"].replay()
        g.infer_replays += 1
        return entry["out"].clone()

    def cuda_graph_counts(self) -> dict[str, int]:
        """Graphs captured and replayed so far (``sharezoo bench`` records them; tests check the path taken)."""
        g = self._graphs
        return {"captures": g.captures, "train_replays": g.train_replays, "infer_replays": g.infer_replays}

    # ----------------------------------------------------------------------------------------------- benchmark
    def example_batch(self, batch_size: int, num_instances: int = 16) -> dict[str, torch.Tensor]:
        """A synthetic P x K training batch of the model's input size (``sharezoo bench``)."""
        net = self.net
        h, w = getattr(net, "img_size", (256, 128))
        k = num_instances if batch_size % num_instances == 0 else 1
        cams = max(1, int(self.model_kwargs.get("num_cameras", 1)))
        n_cls = int(getattr(net, "num_classes", batch_size))
        g = torch.Generator().manual_seed(0)
        pids = torch.randperm(n_cls, generator=g)[: batch_size // k].repeat_interleave(k) % n_cls
        return {"image": torch.randn(batch_size, 3, h, w, generator=g), "pid": pids,
                "camid": torch.randint(0, cams, (batch_size,), generator=g)}

    def example_inputs(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        b = self.example_batch(batch_size)
        return self._images(b), self._camids(b)

    def bench_train_step(self, batch: dict[str, torch.Tensor], step: bool = True) -> torch.Tensor:
        """``sharezoo bench --task train`` of this manually optimised task (``cuda_graphs``): one optimiser step by
        the same path as ``training_step`` (warm-up, capture, replays) with the task's own optimiser. ``step=False``:
        the eager forward, and backward when grad is enabled, without the optimiser (the FLOP probe)."""
        if not step:
            loss, stats = self._forward_loss(self._images(batch), batch["pid"], self._camids(batch))
            if torch.is_grad_enabled():
                loss.backward()
                self.net.zero_grad(set_to_none=self._graphs.train is None)  # type: ignore[union-attr]
            return stats
        if self._bench_opt is None:
            self._bench_opt = self.configure_optimizers()["optimizer"]
        return self._manual_step(batch, self._bench_opt)

    def bench_infer_step(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """``sharezoo bench --task infer``: the eval forward of ``example_inputs`` (graph replays with cuda_graphs)."""
        return self._embed(images, camids)

    # ---------------------------------------------------------------------------------------------- evaluation
    def _eval_step(self, batch: dict[str, torch.Tensor]) -> None:
        emb = self._embed(batch["image"], self._camids(batch))
        self._eval_outputs.append({
            "emb": emb.float(), "pid": batch["pid"], "camid": batch["camid"], "is_query": batch["is_query"],
            "index": batch["index"],
        })

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch)

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        return self._embed(batch["image"], self._camids(batch))

    def on_validation_epoch_start(self) -> None:
        self._eval_outputs = []

    on_test_epoch_start = on_validation_epoch_start

    def on_validation_epoch_end(self) -> None:
        self._finish_eval("val")

    def on_test_epoch_end(self) -> None:
        self._finish_eval("test")

    def gather_eval_outputs(self) -> dict[str, torch.Tensor]:
        """Concatenate this rank's eval outputs, gather them from all ranks and drop sampler padding duplicates."""
        outs = self._eval_outputs
        cat = {k: torch.cat([o[k] for o in outs]) for k in outs[0]}
        if self.trainer.world_size > 1:
            gathered = self.all_gather(cat)
            cat = {k: v.reshape(-1, *v.shape[2:]) for k, v in gathered.items()}
        index = cat["index"]
        uniq, first = np.unique(index.cpu().numpy(), return_index=True)
        sel = torch.as_tensor(first, device=index.device)
        return {k: v[sel] for k, v in cat.items()}

    def _finish_eval(self, stage: str) -> None:
        if not self._eval_outputs or self.trainer.sanity_checking:
            self._eval_outputs = []
            return
        d = self.gather_eval_outputs()
        self._eval_outputs = []
        # rank 0 ranks the gathered set (MSMT17: 11,659 x 82,161 distances); the others receive its metrics
        metrics = self.compute_metrics(d, stage) if self.trainer.global_rank == 0 else None
        if self.trainer.world_size > 1:
            metrics = self.trainer.strategy.broadcast(metrics, src=0)
        for k, v in (metrics or {}).items():
            self.log(f"{stage}/{k}", float(v), prog_bar=k in ("mAP", "rank1"))

    def compute_metrics(self, d: dict[str, torch.Tensor], stage: str = "val") -> dict[str, float] | None:
        """mAP, rank-1/5/10 and the number of valid queries from gathered ``emb/pid/camid/is_query``."""
        hp = self.hparams
        q, g = d["is_query"].bool(), ~d["is_query"].bool()
        if not q.any() or not g.any():
            _logger.warning("%s: the evaluated batches hold no %s images (limit_*_batches?); no metrics", stage,
                            "query" if not q.any() else "gallery")
            return None
        if hp.reranking:
            dist = re_ranking(d["emb"][q], d["emb"][g], hp.rerank_k1, hp.rerank_k2, hp.rerank_lambda)
        else:
            dist = cosine_distance(d["emb"][q], d["emb"][g])
        cmc, m_ap, n_valid = evaluate_rank(dist, d["pid"][q], d["pid"][g], d["camid"][q], d["camid"][g],
                                           max_rank=hp.max_rank, use_camids=hp.use_camids, return_num_valid=True)
        return {"mAP": m_ap, "rank1": float(cmc[0]), "rank5": float(cmc[min(4, len(cmc) - 1)]),
                "rank10": float(cmc[min(9, len(cmc) - 1)]), "valid_queries": float(n_valid)}
