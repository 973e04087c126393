"""GeometryTask: shipped configs parse, training lowers the loss, test metrics, stage 2 from stage 1, notebook."""
from __future__ import annotations

import glob
import os
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from datamodules.geometry import SyntheticGeometryDataModule
from tasks.geometry import GeometryTask


ROOT = Path(__file__).resolve().parents[1]
# results*.yaml are the issue-16 recipes read by tasks.results.dens3r (tests/test_results_dens3r.py), not CLI configs
CONFIGS = sorted(c for c in glob.glob(str(ROOT / "configs" / "dens3r*" / "*.yaml"))
                 if not os.path.basename(c).startswith("results"))


def _cli(args: list[str]):
    from pytorch_lightning.cli import LightningCLI

    return LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                        auto_configure_optimizers=False, run=False, args=args, save_config_callback=None)


@pytest.mark.parametrize("cfg", CONFIGS, ids=[os.path.relpath(c, ROOT) for c in CONFIGS])
def test_shipped_config_parses(cfg, tmp_path):
    from jsonargparse import ArgumentParser  # noqa: F401  (LightningCLI's parser)

    over = ["--model.init_args.model=dens3r_tiny", "--trainer.accelerator=cpu", "--trainer.devices=1",
            "--trainer.strategy=auto", "--trainer.precision=32-true", f"--trainer.default_root_dir={tmp_path}"]
    if "stage2" in cfg:
        over.append("--model.init_args.init_from=null")
    cli = _cli(["--config", cfg, *over])
    assert isinstance(cli.model, GeometryTask) and cli.model.net is not None
    assert type(cli.datamodule).__module__ == "datamodules.geometry"


def test_cli_fit_and_test_on_demo_config(tmp_path):
    cfg = str(ROOT / "configs" / "dens3r" / "demo.yaml")
    cli = _cli(["--config", cfg, "--data.init_args.size=32", "--data.init_args.num_train=2", "--data.init_args.num_val=1",
                "--data.init_args.num_test=1", "--data.init_args.batch_size=2", "--trainer.max_steps=2",
                "--trainer.max_epochs=1", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
                f"--trainer.default_root_dir={tmp_path}"])
    cli.trainer.fit(cli.model, cli.datamodule)
    assert cli.trainer.global_step == 1 and "val/depth_abs_rel" in cli.trainer.callback_metrics
    res = cli.trainer.test(cli.model, cli.datamodule, verbose=False)[0]
    assert {"test/loss", "test/depth_delta1", "test/pose_auc@10"} <= set(res)


class _Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))


def test_fit_lowers_loss_then_test_and_stage2_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    dm = SyntheticGeometryDataModule(num_train=4, num_val=2, num_test=2, size=32, batch_size=4)
    task = GeometryTask("dens3r_tiny", stage=1, lr=2e-3, warmup_steps=0, max_matches=64)
    rec = _Losses()
    tr = pl.Trainer(max_epochs=12, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, enable_model_summary=False, callbacks=[rec], limit_val_batches=0,
                    default_root_dir=tmp_path)
    tr.fit(task, dm)
    first, last = sum(rec.losses[:2]) / 2, sum(rec.losses[-2:]) / 2
    assert last < 0.8 * first, rec.losses
    res = tr.test(task, dm, verbose=False)[0]
    for k in ("test/loss", "test/depth_abs_rel", "test/depth_delta1", "test/pose_auc@5", "test/pose_auc@20"):
        assert k in res
    # normal head frozen in stage 1, descriptor MLP trained
    assert not any(p.requires_grad for p in task.net.normal_head.parameters())
    ckpt = tmp_path / "stage1.ckpt"
    tr.save_checkpoint(ckpt)
    back = GeometryTask.load_from_checkpoint(ckpt, weights_only=True)  # no config needed
    assert back.hparams.stage == 1
    s2 = GeometryTask("dens3r_tiny", stage=2, init_from=str(ckpt))
    for (k, a), b in zip(task.net.state_dict().items(), s2.net.state_dict().values()):
        assert torch.equal(a, b), k
    assert all(p.requires_grad for p in s2.net.normal_head.parameters())
    assert not any(p.requires_grad for p in s2.net.local_head.desc_mlp.parameters())
    assert s2.weights["normal"] == 1.0 and s2.weights["match"] == 0.0 and s2.conf_alpha is None
    tr2 = pl.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, limit_val_batches=1,
                     default_root_dir=tmp_path)
    tr2.fit(s2, dm)
    assert "val/normal_mean" in tr2.callback_metrics
    with pytest.raises(FileNotFoundError, match="init_from=.*nope.ckpt does not exist"):
        GeometryTask("dens3r_tiny", stage=2, init_from=str(tmp_path / "nope.ckpt"))


def test_single_image_eval_path_resizes_to_gt(tmp_path):
    from datamodules.geometry import NYUv2DataModule
    from datamodules.synthetic.geometry import write_nyuv2_labeled

    root = write_nyuv2_labeled(tmp_path / "nyu", n=2, h=48, w=64, n_test=2)
    task = GeometryTask("dens3r_tiny", depth_crop=None, max_depth=10.0)
    tr = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                    default_root_dir=tmp_path)
    res = tr.test(task, NYUv2DataModule(str(root), size=32), verbose=False)[0]
    assert 0 <= res["test/depth_delta1"] <= 1 and res["test/depth_abs_rel"] > 0


@pytest.mark.slow
def test_demo_beats_constant_depth_baseline_on_held_out_scenes(tmp_path):
    """The learning check of the issue: a few CPU minutes of stage-1 training on synthetic scenes."""
    from tasks.metrics.geometry import depth_metrics

    torch.set_num_threads(2 if (os.cpu_count() or 1) > 2 else 1)
    torch.manual_seed(0)
    dm = SyntheticGeometryDataModule(num_train=128, num_val=16, num_test=16, size=64, batch_size=8)
    task = GeometryTask("dens3r_tiny", stage=1, lr=1e-3, warmup_steps=10, max_matches=128)
    tr = pl.Trainer(max_epochs=6, accelerator="cpu", logger=False, enable_checkpointing=False,
                    enable_progress_bar=False, limit_val_batches=0, default_root_dir=tmp_path)
    tr.fit(task, dm)
    dm.setup()
    batch = torch.utils.data.default_collate([dm.test_set[i] for i in range(16)])
    task.eval()
    with torch.no_grad():
        pred = task.net(batch["img1"]).depth
    ours = depth_metrics(pred, batch["depth1"], batch["valid1"], align="scale_shift")["abs_rel"]
    const = depth_metrics(torch.ones_like(pred) + 1e-3 * torch.rand_like(pred), batch["depth1"], batch["valid1"],
                          align="scale_shift")["abs_rel"]  # best affine map of (almost) a constant
    print(f"held-out abs_rel (scale-shift aligned): model {float(ours):.4f} vs constant depth {float(const):.4f}")
    assert ours < 0.9 * const, (ours, const)


def test_resolution_schedule_switches_datamodule_size():
    from types import SimpleNamespace

    from tasks.geometry import ResolutionSchedule

    dm = SyntheticGeometryDataModule(size=32)
    cb = ResolutionSchedule({0: 32, 2: 64})
    cb.on_fit_start(SimpleNamespace(datamodule=dm, current_epoch=0), None)
    assert dm.size == 32
    for epoch, size_next in ((0, 32), (1, 64), (4, 64)):  # at the end of `epoch`, prepare epoch + 1
        cb.on_train_epoch_end(SimpleNamespace(datamodule=dm, current_epoch=epoch), None)
        assert dm.size == size_next
    dm.num_train, dm.batch_size = 2, 2
    dm.setup()
    dm.size = 48  # what the callback does; the reloaded train loader follows it
    assert next(iter(dm.train_dataloader()))["img1"].shape[-1] == 48


def test_resolution_schedule_in_a_fit(tmp_path):
    from tasks.geometry import ResolutionSchedule

    class Shapes(pl.Callback):
        def __init__(self) -> None:
            self.sizes: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            self.sizes.append(batch["img1"].shape[-1])

    rec = Shapes()
    dm = SyntheticGeometryDataModule(num_train=2, num_val=1, num_test=1, size=32, batch_size=2)
    tr = pl.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False, limit_val_batches=0,
                    enable_progress_bar=False, enable_model_summary=False, reload_dataloaders_every_n_epochs=1,
                    callbacks=[ResolutionSchedule({0: 32, 1: 48}), rec], default_root_dir=tmp_path)
    tr.fit(GeometryTask("dens3r_tiny", max_matches=16), dm)
    assert rec.sizes == [32, 48]
