"""Person re-identification: ``ReIDTask`` (FusionReID's six-head recipe), its losses and the Market-1501 evaluation.

- Losses (FusionReID spec "Losses"): for each of the six heads, label-smoothed cross-entropy (eps 0.1) on the
  BNNeck logits + batch-hard soft-margin triplet on the pre-BN feature, summed with equal weights.
- Optimiser: SGD momentum 0.9, lr 0.005, weight decay 1e-4, biases at 2x lr, in two parameter groups.
- Schedule: timm ``CosineLRScheduler`` per epoch (linear warmup from 0.01*lr over 10 epochs, cosine to 0.002*lr),
  stepped with the official code's 1-based epoch index.
- Evaluation: query and gallery embeddings gathered across ranks, cosine distance (optionally k-reciprocal
  re-ranking), :func:`evaluate_rank` -> mAP and CMC rank-1/5/10.
"""
from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from timm.scheduler import CosineLRScheduler

from ._base import ZooTask
from ._cuda_graphs import CudaGraphSteps, inductor_cudagraphs

_logger = logging.getLogger(__name__)

__all__ = ["ReIDTask", "evaluate_rank", "re_ranking", "batch_hard_triplet_loss", "reid_losses", "cosine_distance"]


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
    # Why not torchmetrics.retrieval (RetrievalMAP, RetrievalHitRate@k): it ranks flat (pred, target, query index)
    # lists, so the per-query junk filter would have to drop those pairs first, and it would then hold every
    # query x gallery pair at once (MSMT17: 11,659 x 82,161 = 958 M pairs, ~12 GB of preds/targets/indexes) where
    # this loop sorts 512 queries at a time; it also breaks distance ties by its own sort, not the stable order
    # torchreid's protocol uses. The metric is checked against scikit-learn's average_precision in the tests.
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


# -------------------------------------------------------------------------------------------------------------- task
class ReIDTask(CudaGraphSteps, ZooTask):
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
            a config that sets it work unchanged. See "CUDA graphs" below and ``tasks._cuda_graphs``.

    CUDA graphs (``cuda_graphs=True``, :class:`tasks._cuda_graphs.CudaGraphSteps`):
        - Learning rate: at capture each param group's lr becomes a 0-d fp32 tensor on the GPU that the captured
          fused-SGD kernel reads on every replay. The timm cosine schedule (stepped per epoch by the task in
          ``on_train_epoch_end``, as Lightning does in automatic optimisation) assigns a float lr to each group, which
          is copied into that tensor before the next replay, so a new lr needs no recapture;
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
        self.init_cuda_graphs(cuda_graphs, compile)
        self.channels_last = channels_last
        self._bench_opt: torch.optim.Optimizer | None = None
        super().__init__(model, pretrained, model_kwargs, compile)
        self.save_hyperparameters()
        self._eval_outputs: list[dict[str, torch.Tensor]] = []

    # ------------------------------------------------------------------------------------------------ training
    def on_net_built(self) -> None:
        # with compile on, the twelve loss terms are fused too (the eager loss is launch-bound beside the model)
        self._loss_fn = torch.compile(reid_losses) if self.compile_mode else reid_losses
        self._cudagraphs = inductor_cudagraphs(self.compile_mode)
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
            stats = self.graphed_training_step(batch)
            loss = stats[0]
        bs = batch["image"].shape[0]
        self.log("train/loss", stats[0], prog_bar=True, batch_size=bs)
        self.log("train/id", stats[1], batch_size=bs)
        self.log("train/triplet", stats[2], batch_size=bs)
        self.log("train/acc", stats[3], prog_bar=True, batch_size=bs)
        return loss

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
        # warm-up start and floor are absolute (fractions of the reference lr) for both groups, as in the official code
        sched = CosineLRScheduler(opt, t_initial=epochs, lr_min=hp.min_lr_factor * hp.lr, warmup_t=hp.warmup_epochs,
                                  warmup_lr_init=hp.warmup_factor * hp.lr, cycle_limit=1, t_in_epochs=True)
        sched.step(1)  # the official loop steps with the 1-based epoch index: epoch 0 trains at t = 1
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if isinstance(scheduler, CosineLRScheduler):  # timm's schedulers take the epoch index
            scheduler.step(self.current_epoch + 2)  # at the end of epoch e (0-based): the next epoch's t = e + 2
        else:
            super().lr_scheduler_step(scheduler, metric)

    # ------------------------------------------------------------------------------------------- CUDA graphs
    def graph_inputs(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        inputs = {"image": batch["image"], "pid": batch["pid"]}
        cam = self._camids(batch)
        if cam is not None:
            inputs["camid"] = cam
        return inputs

    def graph_loss(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        return self._forward_loss(self._cl(inputs["image"]), inputs["pid"], inputs.get("camid"))

    def graph_forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.network(self._cl(inputs["image"]), inputs.get("camid"))

    def graph_static_like(self, name: str, x: torch.Tensor) -> torch.Tensor:
        fmt = torch.channels_last if self.channels_last and name == "image" else torch.contiguous_format
        return torch.empty_like(x, memory_format=fmt)

    def _embed(self, images: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        """The eval-mode embedding of a batch (a copy of a CUDA-graph output when graphs are on)."""
        if not self.net.training and not torch.is_grad_enabled() and self._graph_path():
            inputs = {"image": images} if camids is None else {"image": images, "camid": camids}
            return self.graphed_forward(inputs)
        if self._cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
            return self.network(self._cl(images), camids).clone()  # inductor reuses its graph outputs next step
        return self.network(self._cl(images), camids)

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
            loss, stats = self.graph_loss(self.graph_inputs(batch))
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
