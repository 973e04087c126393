"""FusionReID results recipe (issue 16): the photo split rule, the baseline code paths, the runner end to end (tiny)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules.reid import ReIDDataModule, parse_layout
from datamodules.synthetic.reid import PHOTO_SPLIT, write_photo_reid_dataset
from tasks.results._report import load_config
from tasks.results.fusionreid import (
    BaselineReIDTask,
    SingleBranchReID,
    build_baseline,
    check_split,
    rank_metrics,
)
from zoo.fusionreid import FusionReIDOutput

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ["configs/fusionreid/results_cpu.yaml", "configs/fusionreid/results.yaml"]
SMALL = dict(train_photos=("astronaut", "coffee"), test_photos=("gravel", "coins"), train_ids_per_photo=3,
             test_ids_per_photo=3, train_images_per_id=3, gallery_images_per_id=3, num_distractors=4)


@pytest.fixture(scope="module")
def photo_data(tmp_path_factory) -> Path:
    return write_photo_reid_dataset(tmp_path_factory.mktemp("photo_reid"), **SMALL)


@pytest.mark.parametrize("path", CONFIGS)
def test_config_split_rule(path):
    """The shipped recipes: training and test photographs disjoint, every photograph one the writer knows."""
    cfg = load_config(ROOT / path)
    d = cfg["dataset"]
    assert set(d["train_photos"]).isdisjoint(d["test_photos"])
    assert tuple(d["train_photos"]) == PHOTO_SPLIT["train"] and tuple(d["test_photos"]) == PHOTO_SPLIT["test"]
    assert {"fused", "cnn_branch", "vit_branch", "timm_resnet", "raw_pixels"} <= set(cfg["models"])


def test_written_split_has_no_overlap(photo_data):
    counts = check_split(photo_data)
    assert counts == {"train_ids": 6, "test_ids": 6, "train_photos": 2, "test_photos": 2}
    s = parse_layout(photo_data, "market1501")
    assert len(s["query"]) == 6 and len(s["gallery"]) == 6 * 3 + 4  # + distractors (pid 0 kept in the gallery)
    assert (photo_data.parent / "SYNTHETIC.md").is_file()


def test_check_split_catches_overlap(photo_data, tmp_path):
    import shutil

    d = tmp_path / "market1501"
    shutil.copytree(photo_data, d)
    q = next((d / "query").glob("*.jpg"))
    shutil.copy(q, d / "bounding_box_train" / q.name)  # a test identity leaks into training
    with pytest.raises(ValueError, match="both splits"):
        check_split(d)


def test_writer_refuses_shared_photos(tmp_path):
    with pytest.raises(ValueError, match="both splits"):
        write_photo_reid_dataset(tmp_path / "x", train_photos=("astronaut",), test_photos=("astronaut",))


def test_photo_demo_through_datamodule(tmp_path, monkeypatch):
    import datamodules.synthetic.reid as writer

    monkeypatch.setitem(writer.DEMO_PHOTO_REID, "train_ids_per_photo", 1)
    monkeypatch.setitem(writer.DEMO_PHOTO_REID, "test_ids_per_photo", 2)
    monkeypatch.setitem(writer.DEMO_PHOTO_REID, "train_images_per_id", 2)
    dm = ReIDDataModule(str(tmp_path / "demo"), "market1501", image_size=(64, 32), synthetic_if_missing="photo_patches")
    assert dm.num_classes == 12 and dm.num_query == 12  # 12 training photos x 1, 6 test photos x 2


@pytest.mark.parametrize("kind", ["cnn_branch", "vit_branch", "timm"])
def test_baseline_networks(kind):
    spec = {"kind": kind, "model": "fusionreid_tiny", "timm_name": "resnet10t"}
    net = build_baseline(spec, num_classes=5, num_cameras=2)
    x, cam = torch.randn(4, 3, 64, 32), torch.tensor([0, 1, 0, 1])
    out = net.train()(x, cam)
    assert isinstance(out, FusionReIDOutput) and len(out.features) == 1 and out.logits[0].shape == (4, 5)
    emb = net.eval()(x, cam)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)


def test_branch_is_the_fused_models_branch():
    """cnn_branch / vit_branch reuse FusionReID's own modules (same classes, same parameter shapes)."""
    import zoo

    full = zoo.create_model("fusionreid_tiny", num_classes=5, num_cameras=2)
    cnn = build_baseline({"kind": "cnn_branch", "model": "fusionreid_tiny"}, 5, 2)
    vit = build_baseline({"kind": "vit_branch", "model": "fusionreid_tiny"}, 5, 2)
    assert {k: v.shape for k, v in cnn.backbone.state_dict().items()} == \
        {k: v.shape for k, v in full.cnn.state_dict().items()}
    assert {k: v.shape for k, v in vit.backbone.state_dict().items()} == \
        {k: v.shape for k, v in full.vit.state_dict().items()}


def test_baseline_task_step_reduces_nothing_but_runs():
    task = BaselineReIDTask({"kind": "timm", "timm_name": "resnet10t"}, model="fusionreid_tiny",
                            model_kwargs={"num_classes": 3, "num_cameras": 2})
    assert isinstance(task.net, SingleBranchReID)
    pids = torch.tensor([0, 0, 1, 1, 2, 2])
    loss, stats = task._forward_loss(torch.randn(6, 3, 64, 32), pids, torch.zeros(6, dtype=torch.long))
    loss.backward()
    assert torch.isfinite(loss) and stats.shape == (4,)


def test_rank_metrics_against_sklearn():
    """The runner's metrics (landed evaluate_rank) vs scikit-learn's average precision on a case without filters."""
    from sklearn.metrics import average_precision_score

    g = torch.Generator().manual_seed(0)
    emb = torch.randn(14, 8, generator=g)
    pid = torch.tensor([1, 2, 3, 4, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5])
    d = {"emb": emb, "pid": pid, "camid": torch.tensor([0] * 4 + [1] * 10), "is_query": torch.arange(14) < 4,
         "index": torch.arange(14)}
    m, dist = rank_metrics(d)
    aps = [average_precision_score((pid[4:] == pid[i]).numpy(), -dist[i]) for i in range(4)]
    assert m["mAP"] == pytest.approx(float(np.mean(aps)), abs=1e-6)
    assert m["rank1"] == pytest.approx(float(np.mean([(pid[4:][dist[i].argmin()] == pid[i]).item()
                                                      for i in range(4)])))


def test_runner_end_to_end_tiny(tmp_path):
    """The runner on the shipped H200 config in its --tiny mode (three of the models: the other baselines' networks
    are checked above): they train and evaluate on the same held-out split, the table and figures are written."""
    from tasks.results.fusionreid import main

    res = main(["--config", str(ROOT / "configs/fusionreid/results.yaml"), "--out", str(tmp_path / "out"),
                "--data_root", str(tmp_path / "data"), "--tiny", "--models", "fused,timm_resnet,raw_pixels"])
    assert [row["name"] for row in res["rows"]] == ["fused", "timm_resnet", "raw_pixels"]
    assert all(0 <= row["mAP"] <= 1 and 0 <= row["rank1"] <= 1 for row in res["rows"])
    assert res["split"]["train_photos"] == 2 and res["split"]["test_photos"] == 2
    assert json.loads((tmp_path / "out/results.json").read_text())["rows"][0]["name"] == "fused"
    for f in ("results.md", "ranklist.png", "curves.png", "data.png"):
        assert (tmp_path / "out" / f).is_file(), f
    assert "| FusionReID" in (tmp_path / "out/results.md").read_text()


def test_h200_script_is_the_recipe():
    text = (ROOT / "benchmarks/results_fusionreid_h200.sh").read_text()
    assert "-m tasks.results.fusionreid" in text and "configs/fusionreid/results.yaml" in text
    assert "benchmarks/results/issue16/fusionreid" in text
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks/results_fusionreid_h200.sh")]).returncode == 0


@pytest.mark.slow
def test_h200_script_tiny(tmp_path):
    """benchmarks/results_fusionreid_h200.sh in its TINY mode, as a subprocess (slow: a fresh interpreter)."""
    env = {**os.environ, "TINY": "1", "OUT": str(tmp_path / "out"), "DATA_ROOT": str(tmp_path / "data"),
           "MODELS": "fused,raw_pixels", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    r = subprocess.run(["bash", str(ROOT / "benchmarks/results_fusionreid_h200.sh")], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert (tmp_path / "out/results.md").is_file() and "wall" in (tmp_path / "out/run.log").read_text()
