"""benchmarks/cronusvla_h200.sh train at CPU size (CRONUSVLA_H200_SMOKE=1): stage 1, then M = 4 and M = 1 at once,
then the collector's files (checkpoints at a step both reached, summary JSON, logs); a returned checkpoint loads in
the closed-loop evaluator's loader."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.script
def test_cronusvla_h200_train_smoke(tmp_path):
    pytest.importorskip("pybullet")
    from datamodules.robot_sim import write_libero_demos

    demos = write_libero_demos(tmp_path / "demos", episodes=2, wrist=False, spread=0.25)
    out, work = tmp_path / "out", tmp_path / "work"
    env = {"OMP_NUM_THREADS": "1", "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
           "PYTHON": sys.executable, "CRONUSVLA_H200_SMOKE": "1", "CRONUSVLA_DEMOS": str(demos),
           "CRONUSVLA_H200_WORK": str(work), "CRONUSVLA_H200_SEEDS": "0",
           **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}}
    r = subprocess.run(["bash", str(ROOT / "benchmarks/cronusvla_h200.sh"), "train", str(out)], capture_output=True,
                       text=True, timeout=400, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert sorted(p.name for p in out.iterdir()) == ["cronusvla_h200_logs.tar.gz", "cronusvla_h200_m1_s0.ckpt",
                                                     "cronusvla_h200_m4_s0.ckpt", "cronusvla_h200_train.json"]
    summary = json.loads((out / "cronusvla_h200_train.json").read_text())
    assert summary["stage1"]["rc"] == 0 and summary["stage1"]["steps"] == 4
    runs = {x["run"]: x for x in summary["runs"]}
    assert set(runs) == {"m4_s0", "m1_s0"}
    for name, x in runs.items():
        assert x["rc"] == 0 and x["step"] == 4 and x["num_frames"] == (4 if name.startswith("m4") else 1)
        assert "val/action_mse" in x["val_at_step"] and "val/mean_chunk_mse" in x["val_at_step"]
    with tarfile.open(out / "cronusvla_h200_logs.tar.gz") as tar:
        assert {"stage1.log", "m4_s0.log", "m1_s0.log", "times.tsv"} <= set(tar.getnames())

    from tasks.cronusvla_eval import load_policy_model

    assert load_policy_model(str(out / "cronusvla_h200_m1_s0.ckpt")).num_frames == 1
