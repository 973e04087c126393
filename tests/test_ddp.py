"""Scale-out on CPU: two processes (gloo) train and evaluate through Lightning's DDP strategy.

Checks that DDP fit runs for FusionReID and PPGFlowECG, that a DDP checkpoint loads in one process, and that
ReID evaluation gathered across two ranks (with the distributed sampler's padding) equals one process.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from datamodules.synthetic import write_reid_dataset

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "ddp_reid_worker.py"


def _run(args: list[str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "PL_DISABLE_FORK": "1"}
    env.pop("LOCAL_RANK", None)
    r = subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, (r.stdout[-2000:], r.stderr[-4000:])
    return r


@pytest.fixture(scope="module")
def reid_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("reid")
    write_reid_dataset(root, "market1501", num_train_ids=8, num_test_ids=6, train_images_per_id=8, seed=3)
    return root


def test_ddp_fit_then_eval_equals_single_process(reid_data, tmp_path):
    _run([str(WORKER), "fit", str(reid_data), str(tmp_path), "2"], tmp_path)
    fit = json.loads((tmp_path / "fit_2.json").read_text())
    assert fit["world_size"] == 2 and fit["global_step"] > 0
    ckpt = tmp_path / "ddp.ckpt"
    assert ckpt.is_file()
    _run([str(WORKER), "test", str(reid_data), str(tmp_path), "1", str(ckpt)], tmp_path)  # DDP ckpt, one process
    _run([str(WORKER), "test", str(reid_data), str(tmp_path), "2", str(ckpt)], tmp_path)
    one, two = (json.loads((tmp_path / f"test_{n}.json").read_text()) for n in (1, 2))
    assert one["test/valid_queries"] == two["test/valid_queries"] == 6
    for key in ("test/mAP", "test/rank1", "test/rank5", "test/rank10"):
        assert two[key] == pytest.approx(one[key], abs=1e-6), key


def test_ddp_fit_ppgflowecg_tiny_on_real_record(tmp_path):
    cfg = ROOT / "configs" / "ppgflowecg" / "demo.yaml"
    _run(["-m", "tasks.cli", "fit", "--config", str(cfg), "--trainer.accelerator", "cpu", "--trainer.devices", "2",
          "--trainer.strategy", "ddp", "--trainer.max_steps", "3", "--trainer.limit_val_batches", "1",
          "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path / "run")], tmp_path)
    ckpts = sorted(tmp_path.rglob("last.ckpt"))  # the demo config names its checkpoint folder (cwd-relative)
    assert ckpts, "rank 0 wrote a checkpoint"
    from tasks.signal import CardioAlignTask

    import torch

    task = CardioAlignTask.load_from_checkpoint(ckpts[0], map_location="cpu")  # a DDP checkpoint, one process
    saved = torch.load(ckpts[0], map_location="cpu", weights_only=True)["state_dict"]
    for k, v in task.state_dict().items():
        assert torch.equal(v, saved[k]), k
