"""The ``sharezoo`` command end to end: zoo subcommands, and fit + test from a shipped config on CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def sharezoo(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "tasks.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_list_models_info_and_errors(tmp_path):
    r = sharezoo("list-models", "fusionreid*", cwd=tmp_path)
    assert r.returncode == 0 and "fusionreid_vitb16_r50" in r.stdout.split()
    r = sharezoo("info", "fusionreid_tiny", cwd=tmp_path)
    assert r.returncode == 0 and "parameters:" in r.stdout and "deviations from the paper" in r.stdout
    r = sharezoo("info", "fusionreid_vitb16_r5", cwd=tmp_path)
    assert r.returncode == 2 and "Did you mean: fusionreid_vitb16_r50" in r.stderr
    r = sharezoo("download", "fusionreid_tiny", cwd=tmp_path)
    assert r.returncode == 2 and "no pretrained weights" in r.stderr


def test_fit_test_export_fusionreid_tiny(tmp_path):
    cfg = ROOT / "configs" / "fusionreid" / "demo.yaml"
    common = ["--config", str(cfg), "--data.init_args.root", str(tmp_path / "data"),
              "--trainer.default_root_dir", str(tmp_path / "run")]
    r = sharezoo("fit", *common, "--trainer.max_epochs", "2", "--trainer.check_val_every_n_epoch", "1",
                 "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = sorted((tmp_path / "run").rglob("*.ckpt"))
    assert ckpts, "fit leaves a checkpoint"
    assert sorted((tmp_path / "run").rglob("config.yaml")), "fit saves the run's config"
    ckpt = str(next(c for c in ckpts if c.name == "last.ckpt"))
    r = sharezoo("test", *common, "--ckpt_path", ckpt, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "test/mAP" in r.stdout and "test/rank1" in r.stdout
    r = sharezoo("export", ckpt, str(tmp_path / "exported"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    import torch

    import zoo
    from tasks.reid import ReIDTask

    task = ReIDTask.load_from_checkpoint(ckpt, map_location="cpu")  # no config needed: data links are saved
    net = zoo.create_model(f"local-dir:{tmp_path / 'exported'}").eval()
    x, cams = torch.randn(2, 3, 64, 32), torch.tensor([0, 1])
    with torch.no_grad():
        assert torch.equal(net(x, cams), task.net.eval()(x, cams))


@pytest.mark.parametrize("bad", ["--model.init_args.model=fusionreid_nope"])
def test_fit_with_bad_model_name_fails_clearly(tmp_path, bad):
    r = sharezoo("fit", "--config", str(ROOT / "configs" / "fusionreid" / "demo.yaml"), bad,
                 "--data.init_args.root", str(tmp_path / "data"), "--trainer.fast_dev_run", "true", cwd=tmp_path)
    assert r.returncode != 0 and "Unknown model 'fusionreid_nope'" in r.stderr
