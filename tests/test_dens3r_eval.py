"""GeometryTask evaluation logging (normal RMSE) and the consistency of the shipped Dens3R configs."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from tasks.geometry import GeometryTask
from zoo.dens3r import Dens3ROutput, Dens3RView

ROOT = Path(__file__).resolve().parents[1]


def _normals_at(angles_deg: torch.Tensor) -> torch.Tensor:
    """Unit vectors at the given angles from (0, 0, -1), rotated about x: ``(..., 3)``."""
    a = torch.deg2rad(angles_deg.double())
    return torch.stack([torch.zeros_like(a), torch.sin(a), -torch.cos(a)], -1).float()


class _FixedNormals(GeometryTask):
    """The tiny task with its network replaced by fixed normal predictions."""

    pred: torch.Tensor

    @property
    def network(self):  # type: ignore[override]
        def run(img, *_, **__):
            return Dens3ROutput(Dens3RView(pts3d=torch.ones(*self.pred.shape[:3], 3), normal=self.pred), Dens3RView())
        return run


def test_normal_rmse_is_logged_per_image_average():
    task = _FixedNormals("dens3r_tiny", stage=2)
    h, w = 4, 6
    err = torch.zeros(2, h, w)
    err[0] = 10.0
    err[1, :, : w // 2] = 30.0  # image 2: half at 0 deg, half at 30 deg
    valid = torch.ones(2, h, w, dtype=torch.bool)
    valid[1, 0, :] = False  # invalid pixels (error 30 / 0) are ignored
    err[1, 0, :] = 90.0
    task.pred = _normals_at(err)
    batch = {"img": torch.zeros(2, 3, h, w), "normal": _normals_at(torch.zeros(2, h, w)), "normal_valid": valid}
    task._eval_step(batch, "test")
    logged: dict[str, float] = {}
    task.log = lambda k, v, **kw: logged.__setitem__(k, v)  # type: ignore[method-assign]
    task._trainer = SimpleNamespace(world_size=1)
    task._eval_end("test")
    per_image = [10.0, math.sqrt((30.0**2 * 3 * 3) / (3 * 6))]
    assert logged["test/normal_rmse"] == pytest.approx(sum(per_image) / 2, abs=1e-3)
    pooled = err[valid]
    assert logged["test/normal_mean"] == pytest.approx(float(pooled.mean()), abs=1e-3)
    assert logged["test/normal_pct_11_25"] == pytest.approx(float((pooled < 11.25).float().mean() * 100), abs=1e-3)


# ------------------------------------------------------------------------------------------------ configs
def _load(rel: str) -> dict:
    return yaml.safe_load((ROOT / "configs" / rel).read_text())


def _last_ckpt(cfg: dict) -> str | None:
    from pytorch_lightning.callbacks import ModelCheckpoint

    for cb in cfg["trainer"].get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):
            args = cb.get("init_args", {})
            assert args.get("save_last"), "stage 2 reads last.ckpt: save_last must be on"
            mc = ModelCheckpoint(**args)
            return os.path.join(mc.dirpath, mc.CHECKPOINT_NAME_LAST + mc.FILE_EXTENSION)
    return None


def test_stage2_init_from_is_where_stage1_writes_last_ckpt():
    s1, s2 = _load("dens3r/stage1.yaml"), _load("dens3r/stage2.yaml")
    last = _last_ckpt(s1)
    assert last is not None, "stage1.yaml needs a ModelCheckpoint with a dirpath"
    assert os.path.realpath(s2["model"]["init_args"]["init_from"]) == last
    comments = [ln for ln in (ROOT / "configs/dens3r/stage2.yaml").read_text().splitlines()
                if ln.lstrip().startswith("#")]
    assert any(s2["model"]["init_args"]["init_from"] in ln for ln in comments)  # the header names the same file
    assert _last_ckpt(s2) is not None and _last_ckpt(s2) != last  # stage 2 does not overwrite stage 1


def test_confidence_term_is_flagged_as_a_deviation():
    """The paper's objectives have no confidence term: any config that turns it on says so on that line."""
    for p in sorted((ROOT / "configs").glob("dens3r/*.yaml")):
        for line in p.read_text().splitlines():
            m = re.match(r"\s*conf_alpha:\s*([^#\s]+)", line)
            if m and m[1] != "null":
                assert "deviation" in line.lower(), f"{p}: {line.strip()}"
        head = p.read_text().split("\n", 1)[0].lower()
        if "paper config" in head:
            assert "conf_alpha: 0" not in p.read_text(), f"{p}: 'paper config' with a confidence term"
