"""CronusVLA CPU-recipe options (not the paper, docs/cronusvla.md "Results"): the stage-1 regression objective and
the frozen-VLM feature cache of post-training."""
from __future__ import annotations

import pytest
import torch

from tasks.cronusvla import CronusVLATask, OpenVLATokenTask


def _batch(b: int = 2, m: int = 3, size: int = 28) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, 250, (b, 9))
    ids[:, 0], ids[:, -1] = 1, 2
    return {"pixels": torch.rand(b, m, 3, size, size), "input_ids": ids, "attention_mask": torch.ones_like(ids),
            "actions": torch.rand(b, 4, 7) * 2 - 1}


def test_feature_cache_needs_a_frozen_vlm():
    with pytest.raises(ValueError, match="freeze_vlm"):
        CronusVLATask("cronusvla_tiny", feature_cache=True)


def test_feature_cache_equals_the_frozen_vlm_and_computes_each_frame_once(monkeypatch):
    torch.manual_seed(0)
    task = CronusVLATask("cronusvla_tiny", freeze_vlm=True, feature_cache=True)
    batch = _batch()
    batch["pixels"][1, 0] = batch["pixels"][0, 1]  # one frame shared by two windows
    batch["input_ids"][1] = batch["input_ids"][0]  # same prompt, so the shared frame is one cache entry
    task.net.eval()
    with torch.no_grad():
        want = task.net(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features
    task.net.train()
    calls = []
    real = task.net.frame_features
    monkeypatch.setattr(task.net, "frame_features", lambda *a: calls.append(len(a[0])) or real(*a))
    got = task.features(batch)
    torch.testing.assert_close(got, want)
    assert calls == [5] and len(task._cache) == 5 and task.net.training  # 6 frames, 5 distinct; mode restored
    task.features(batch)
    assert calls == [5]  # the second pass reads the cache only
    loss = task.training_step(batch, 0)
    loss.backward()
    assert all(p.grad is None for n, p in task.net.named_parameters() if not n.startswith("decoder."))
    assert task.net.decoder.head.weight.grad is not None


def test_stage1_regression_objective_trains_the_vlm_through_the_cognition_feature():
    with pytest.raises(ValueError, match="objective"):
        OpenVLATokenTask("cronusvla_tiny", objective="l2")
    torch.manual_seed(0)
    task = OpenVLATokenTask("cronusvla_tiny", objective="regression")
    loss, acc = task._loss(_batch())
    assert acc is None and loss.item() > 0
    loss.backward()
    assert task.net.vision.dino.patch_embed.proj.weight.grad.abs().sum() > 0
    assert task.regression_head.weight.grad is not None
    assert not any(k.startswith("regression_head") for k in task.net.state_dict())  # dropped by init_from
    opt = task.configure_optimizers()
    assert any(p is task.regression_head.weight for g in opt.param_groups for p in g["params"])
