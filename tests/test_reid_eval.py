"""ReID evaluation, losses, schedule and the ReIDTask end to end, against independent computations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tasks.reid import (
    ReIDTask,
    batch_hard_triplet_loss,
    evaluate_rank,
    re_ranking,
    reid_losses,
)


# ------------------------------------------------------------------------------------------------ evaluate_rank
def _reference(dist, qp, gp, qc, gc, max_rank, use_cams=True):
    """Brute force: per query, filter, sklearn AP on -distance, CMC from the first correct rank."""
    from sklearn.metrics import average_precision_score

    aps, cmcs = [], []
    for i in range(dist.shape[0]):
        keep = ~((gp == qp[i]) & (gc == qc[i])) if use_cams else np.ones_like(gp, dtype=bool)
        y = (gp[keep] == qp[i]).astype(int)
        if y.sum() == 0:
            continue
        d = dist[i, keep]
        aps.append(average_precision_score(y, -d))
        first = int(np.sort(d)[:].tolist().index(d[y == 1].min()))  # 0-based rank of the best match (no ties)
        cmcs.append([1.0 if first <= k else 0.0 for k in range(max_rank)])
    return np.mean(cmcs, 0), float(np.mean(aps)), len(aps)


def _random_protocol(seed=0, nq=15, ng=60, npid=8, ncam=4):
    rng = np.random.default_rng(seed)
    qp, gp = rng.integers(1, npid, nq), rng.integers(0, npid, ng)  # gallery pid 0 = distractors
    qc, gc = rng.integers(0, ncam, nq), rng.integers(0, ncam, ng)
    qp[-1] = 99  # a query whose identity is absent: skipped
    dist = rng.random((nq, ng))
    return dist, qp, gp, qc, gc


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_rank_matches_sklearn_and_brute_force(seed):
    dist, qp, gp, qc, gc = _random_protocol(seed)
    cmc, m_ap, n_valid = evaluate_rank(dist, qp, gp, qc, gc, max_rank=20, return_num_valid=True)
    rcmc, rap, rn = _reference(dist, qp, gp, qc, gc, 20)
    assert n_valid == rn < len(qp)
    np.testing.assert_allclose(cmc, rcmc, atol=1e-6)
    assert m_ap == pytest.approx(rap, abs=1e-9)


def test_evaluate_rank_same_camera_filter_and_no_camera_mode():
    # one query, gallery: same pid same cam at rank 1 (junk under the protocol), wrong pid, same pid other cam
    dist = np.array([[0.1, 0.2, 0.3]])
    qp, gp, qc, gc = np.array([5]), np.array([5, 7, 5]), np.array([0]), np.array([0, 1, 2])
    cmc, m_ap = evaluate_rank(dist, qp, gp, qc, gc, max_rank=3)
    assert cmc.tolist() == [0.0, 1.0, 1.0] and m_ap == pytest.approx(0.5)
    cmc, m_ap = evaluate_rank(dist, qp, gp, None, None, max_rank=3, use_camids=False)
    assert cmc.tolist() == [1.0, 1.0, 1.0] and m_ap == pytest.approx((1 + 2 / 3) / 2)
    dist2, qp2, gp2, qc2, gc2 = _random_protocol(5)
    cmc2, ap2 = evaluate_rank(dist2, qp2, gp2, None, None, max_rank=10, use_camids=False)
    rc, ra, _ = _reference(dist2, qp2, gp2, qc2, gc2, 10, use_cams=False)
    np.testing.assert_allclose(cmc2, rc, atol=1e-6)
    assert ap2 == pytest.approx(ra)
    with pytest.raises(ValueError, match="use_camids=False"):
        evaluate_rank(dist, qp, gp, None, None)
    assert len(evaluate_rank(dist, qp, gp, qc, gc, max_rank=50)[0]) == 3  # capped at the gallery size
    # torch inputs work too
    cmc_t, _ = evaluate_rank(torch.tensor(dist), torch.tensor(qp), torch.tensor(gp), torch.tensor(qc), torch.tensor(gc))
    assert cmc_t[1] == 1.0


def test_re_ranking_sanity():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 16)) * 3
    pids = np.repeat(np.arange(5), 6)
    feats = centers[pids] + rng.normal(size=(30, 16)) * 0.3
    q, g = feats[::6], np.delete(feats, np.arange(0, 30, 6), 0)
    qp, gp = pids[::6], np.delete(pids, np.arange(0, 30, 6))
    d = re_ranking(q, g, k1=6, k2=3, lambda_value=0.3)
    assert d.shape == (5, 25) and np.isfinite(d).all()
    cmc, m_ap = evaluate_rank(d, qp, gp, None, None, use_camids=False)
    assert m_ap == pytest.approx(1.0) and cmc[0] == 1.0
    # lambda = 1 leaves the column-normalised squared Euclidean distance over query+gallery
    allf = np.concatenate([q, g])
    sq = ((allf[:, None] - allf[None]) ** 2).sum(-1)
    ref = (sq / sq.max(0, keepdims=True))[:5, 5:]
    np.testing.assert_allclose(re_ranking(q, g, k1=6, k2=3, lambda_value=1.0), ref, rtol=1e-4, atol=1e-5)
    # lambda = 0: pure Jaccard distance in [0, 1]
    dj = re_ranking(q, g, k1=6, k2=3, lambda_value=0.0)
    assert dj.min() >= -1e-6 and dj.max() <= 1 + 1e-6


# ------------------------------------------------------------------------------------------------------ losses
def test_soft_margin_batch_hard_triplet_against_hand_mined_pairs():
    torch.manual_seed(0)
    x, y = torch.randn(12, 5), torch.arange(3).repeat_interleave(4)
    ap, an = [], []
    for i in range(12):
        d = [float(torch.dist(x[i], x[j])) for j in range(12)]
        ap.append(max(d[j] for j in range(12) if y[j] == y[i]))
        an.append(min(d[j] for j in range(12) if y[j] != y[i]))
    ap, an = torch.tensor(ap), torch.tensor(an)
    ref = F.soft_margin_loss(an - ap, torch.ones(12))
    assert batch_hard_triplet_loss(x, y).item() == pytest.approx(ref.item(), rel=1e-5)
    ref_m = F.margin_ranking_loss(an, ap, torch.ones(12), margin=0.3)
    assert batch_hard_triplet_loss(x, y, margin=0.3).item() == pytest.approx(ref_m.item(), rel=1e-5)


def test_six_losses_sum():
    torch.manual_seed(0)
    y = torch.arange(2).repeat_interleave(4)
    feats = [torch.randn(8, d) for d in (16, 8, 8, 8, 8, 8)]
    logits = [torch.randn(8, 5) for _ in range(6)]
    total, parts = reid_losses(feats, logits, y)
    ref = 0.0
    for f, z in zip(feats, logits):
        # label smoothing eps=0.1 written out: (1 - eps) * NLL + eps * mean(-log p)
        logp = z.log_softmax(1)
        ce = (0.9 * -logp.gather(1, y[:, None]).squeeze(1) + 0.1 * -logp.mean(1)).mean()
        ref += ce + batch_hard_triplet_loss(f, y)
    assert total.item() == pytest.approx(float(ref), rel=1e-5) and len(parts) == 12


# ---------------------------------------------------------------------------------------- schedule, optimiser
def timm_cosine_lr(t: int, base_lr: float, ref_lr: float, epochs: int, warmup_epochs: int = 10,
                   warmup_factor: float = 0.01, min_lr_factor: float = 0.002) -> float:
    """Reference: the official schedule written out (linear warm-up from an absolute 0.01 * ref_lr, cosine to an
    absolute 0.002 * ref_lr) at epoch index ``t``."""
    warm, lr_min = warmup_factor * ref_lr, min_lr_factor * ref_lr
    if t < warmup_epochs:
        return warm + t * (base_lr - warm) / warmup_epochs
    if t >= epochs:
        return lr_min
    return lr_min + 0.5 * (base_lr - lr_min) * (1 + math.cos(math.pi * t / epochs))


def test_schedule_matches_timm_cosine_scheduler():
    from timm.scheduler import CosineLRScheduler

    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": 0.005},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.01}], lr=0.005)
    s = CosineLRScheduler(opt, t_initial=180, lr_min=0.002 * 0.005, warmup_lr_init=0.01 * 0.005, warmup_t=10,
                          cycle_limit=1, t_in_epochs=True)
    for t in range(1, 181):
        s.step(t)
        for g, base in zip(opt.param_groups, (0.005, 0.01)):
            assert timm_cosine_lr(t, base, 0.005, 180) == pytest.approx(g["lr"], rel=1e-9), t


def test_optimizer_groups_and_timm_schedule():
    task = ReIDTask("fusionreid_tiny", model_kwargs={"num_classes": 4, "num_cameras": 2}, epochs=20, warmup_epochs=2)
    cfg = task.configure_optimizers()
    opt, sched = cfg["optimizer"], cfg["lr_scheduler"]["scheduler"]
    assert len(opt.param_groups) == 2 and opt.defaults["momentum"] == 0.9
    w, b = opt.param_groups
    assert w["lr"] == pytest.approx(timm_cosine_lr(1, 0.005, 0.005, 20, 2)) and b["weight_decay"] == 1e-4
    assert b["lr"] == pytest.approx(timm_cosine_lr(1, 0.01, 0.005, 20, 2))
    n_trainable = sum(1 for p in task.net.parameters() if p.requires_grad)
    assert len(w["params"]) + len(b["params"]) == n_trainable
    assert all(p is not task.net.necks[0].bias for p in b["params"])  # frozen BNNeck bias excluded
    from types import SimpleNamespace

    for e in range(0, 24):  # the end of epoch e: the task steps timm's scheduler to the next epoch's index
        task._trainer = SimpleNamespace(current_epoch=e)
        opt.step(), task.lr_scheduler_step(sched, None)
        assert w["lr"] == pytest.approx(timm_cosine_lr(e + 2, 0.005, 0.005, 20, 2))
        assert b["lr"] == pytest.approx(timm_cosine_lr(e + 2, 0.01, 0.005, 20, 2))
    assert w["lr"] == pytest.approx(0.002 * 0.005)
    assert math.isclose(b["lr"], 0.002 * 0.005)


# ---------------------------------------------------------------------------------------- Trainer end to end
def test_trainer_fit_and_test_on_synthetic_market(tmp_path):
    import pytorch_lightning as pl

    from datamodules.reid import ReIDDataModule
    from datamodules.synthetic import write_reid_dataset

    write_reid_dataset(tmp_path, "market1501", num_train_ids=8, num_test_ids=6, train_images_per_id=8)
    dm = ReIDDataModule(str(tmp_path), "market1501", image_size=(64, 32), batch_size=16, num_instances=4,
                        num_workers=0, test_batch_size=64, erasing_prob=0.0)

    class Losses(pl.Callback):
        def __init__(self):
            self.epochs: list[list[float]] = []
            self.lrs: list[list[float]] = []

        def on_train_epoch_start(self, trainer, module):
            self.epochs.append([])
            self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.epochs[-1].append(float(outputs["loss"]))

    pl.seed_everything(0)
    rec = Losses()
    task = ReIDTask("fusionreid_tiny", lr=0.02, warmup_epochs=1)
    trainer = pl.Trainer(max_epochs=8, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         check_val_every_n_epoch=8, callbacks=[rec])
    trainer.fit(task, dm)
    assert task.hparams.model_kwargs == {"num_classes": 8, "num_cameras": 6}  # linked from the datamodule
    first, last = np.mean(rec.epochs[0]), np.mean(rec.epochs[-1])
    assert last < 0.85 * first, (first, last)
    for e, (w, b) in enumerate(rec.lrs):  # epoch e trains at the official 1-based index e + 1, both groups
        ref = (timm_cosine_lr(e + 1, 0.02, 0.02, 8, 1), timm_cosine_lr(e + 1, 0.04, 0.02, 8, 1))
        assert (w, b) == pytest.approx(ref), e
    res = trainer.test(task, dm, verbose=False)[0]
    assert set(res) >= {"test/mAP", "test/rank1", "test/rank5", "test/rank10"}
    assert res["test/valid_queries"] == 6 and res["test/mAP"] > 0.3  # chance is ~0.2


def test_eval_outputs_gathered_across_ranks_and_deduplicated():
    """Two ranks, the DistributedSampler padding rank 1 with a duplicate of sample 0: each sample counted once."""
    from types import SimpleNamespace

    task = ReIDTask("fusionreid_tiny", model_kwargs={"num_classes": 4, "num_cameras": 2})

    def part(idx):
        idx = torch.tensor(idx)
        return {"emb": torch.stack([idx.float(), -idx.float()], 1), "pid": idx % 2, "camid": idx % 3,
                "is_query": idx < 2, "index": idx}

    rank0, rank1 = part([0, 2, 4]), part([1, 3, 0])
    task._eval_outputs = [rank0]
    task._trainer = SimpleNamespace(world_size=2)
    task.all_gather = lambda d: {k: torch.stack([v, rank1[k]]) for k, v in d.items()}
    out = task.gather_eval_outputs()
    assert out["index"].tolist() == [0, 1, 2, 3, 4]
    torch.testing.assert_close(out["emb"][:, 0], torch.arange(5.0))
    assert out["is_query"].tolist() == [True, True, False, False, False]
