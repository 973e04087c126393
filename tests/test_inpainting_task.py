"""InpaintingTask: losses, annealing, metrics vs scikit-image, sample grids, fit/validate/test through the CLI."""
import json

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

import zoo
from datamodules.inpainting import CelebAHQInpaintingDataModule
from datamodules.synthetic import write_skimage_photos
from tasks.inpainting import (
    InpaintingTask,
    coarse_weight_at,
    hinge_d_loss,
    hinge_g_loss,
    luma_bt601,
    psnr_hole_per_image,
    ssim_luma_per_image,
    ssim_per_image,
)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    return write_skimage_photos(tmp_path_factory.mktemp("photos"), "celebahq", image_size=32, crops_per_photo=2)


def _task(**kw):
    args = {"model": "pepsi_tiny", "discriminator": "pepsi_red_tiny", "discriminator_kwargs": {"input_size": 32},
            "lr_g": 2e-3, "lr_d": 1e-3, "num_sample_images": 2}
    return InpaintingTask(**{**args, **kw})


def _dm(root, **kw):
    return CelebAHQInpaintingDataModule(str(root), **{"image_size": 32, "batch_size": 4, "num_workers": 0, **kw})


def test_hinge_losses_and_coarse_annealing():
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-2.0, 0.0, 1.5])
    # by hand: relu(1 - real) = [0, .5, 2], relu(1 + fake) = [0, 1, 2.5]
    assert hinge_d_loss(real, fake).item() == pytest.approx((0 + 0.5 + 2) / 3 + (0 + 1 + 2.5) / 3)
    assert hinge_g_loss(fake).item() == pytest.approx(-(-2.0 + 0.0 + 1.5) / 3)
    assert coarse_weight_at(0, 100, 5.0) == 5.0
    assert coarse_weight_at(50, 100, 5.0) == 2.5
    assert coarse_weight_at(100, 100, 5.0) == 0.0 and coarse_weight_at(150, 100, 5.0) == 0.0


def test_metrics_match_scikit_image():
    import skimage.data
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    task = _task()
    img = torch.from_numpy(skimage.data.astronaut()[::8, ::8].copy()).permute(2, 0, 1).float() / 255  # 64x64
    g = torch.Generator().manual_seed(0)
    target = torch.stack([img, img.flip(-1)])
    pred = (target + 0.08 * torch.randn(target.shape, generator=g)).clamp(0, 1)
    m = task.val_metrics
    m["psnr"].update(pred, target)
    m["ssim"].update(ssim_per_image(pred, target))
    ref_psnr = np.mean([peak_signal_noise_ratio(t.numpy(), p.numpy(), data_range=1.0) for p, t in zip(pred, target)])
    ref_ssim = np.mean([structural_similarity(t.numpy(), p.numpy(), data_range=1.0, channel_axis=0,
                                              gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                        for p, t in zip(pred, target)])
    assert m["psnr"].compute().item() == pytest.approx(ref_psnr, abs=1e-3)
    assert m["ssim"].compute().item() == pytest.approx(ref_ssim, abs=1e-4)


def test_ssim_luma_matches_scikit_image_on_the_bt601_luma():
    """ssim_luma (the official code's SSIM) == scikit-image's SSIM with tf.image.ssim's settings on the 8-bit BT.601
    luma computed independently (skimage.color.rgb2yuv, then truncated to levels as tf.to_int32(255 Y))."""
    import skimage.data
    from skimage.color import rgb2yuv
    from skimage.metrics import structural_similarity

    rng = np.random.default_rng(0)
    img = skimage.data.astronaut()[::8, ::8].copy()  # 64x64 uint8
    img[:8, :8] = 255  # white: 255 Y is exactly 255 (float noise must not drop it to 254)
    img[8:16, :8] = 77  # grey: 255 Y exactly 77
    target8 = np.stack([img, img[:, ::-1]])
    pred8 = np.clip(target8.astype(int) + rng.integers(-40, 41, target8.shape), 0, 255).astype(np.uint8)
    pred8[:, :8, :8] = 255
    pred8[:, 8:16, :8] = 77

    def ref_luma(x8):  # independent: scikit-image's YUV (BT.601), float64, exact floor of the 8-bit level
        return np.floor(rgb2yuv(x8.astype(np.float64) / 255.0)[..., 0] * 255.0 + 1e-6) / 255.0

    def to_t(a):
        return torch.from_numpy(a.astype(np.float32) / 255.0).permute(0, 3, 1, 2)

    pred, target = to_t(pred8), to_t(target8)
    ours = luma_bt601(target)
    assert ours.shape == (2, 1, 64, 64)
    np.testing.assert_array_equal(np.round(ours[:, 0].numpy() * 255), np.stack([ref_luma(t) for t in target8]) * 255)
    assert ours[0, 0, 0, 0].item() * 255 == pytest.approx(255) and ours[0, 0, 8, 0].item() * 255 == pytest.approx(77)
    ref = [structural_similarity(ref_luma(t), ref_luma(p), data_range=1.0, gaussian_weights=True, sigma=1.5,
                                 use_sample_covariance=False, K1=0.01, K2=0.03) for p, t in zip(pred8, target8)]
    got = ssim_luma_per_image(pred, target)
    np.testing.assert_allclose(got.numpy(), ref, atol=2e-5, rtol=0)
    assert abs(got.mean().item() - ssim_per_image(pred, target).mean().item()) > 1e-3  # a different number than RGB
    task = _task()
    task.val_metrics["ssim_luma"].update(got)
    assert task.val_metrics["ssim_luma"].compute().item() == pytest.approx(float(np.mean(ref)), abs=2e-5)


def test_hole_psnr_is_the_local_psnr_of_the_square_crop():
    """psnr_hole over a square hole == scikit-image's PSNR of the hole crop (PEPSI's local PSNR); images without a
    hole are flagged and left out of the task's average."""
    import skimage.data
    from skimage.metrics import peak_signal_noise_ratio

    from datamodules.inpainting import square_mask

    img = torch.from_numpy(skimage.data.astronaut()[::8, ::8].copy()).permute(2, 0, 1).float() / 255  # 64x64
    g = torch.Generator().manual_seed(0)
    target = torch.stack([img, img.flip(-1), img.flip(-2)])
    rng = np.random.default_rng(0)
    hole = torch.stack([torch.from_numpy(square_mask(64, center=False, rng=rng))[None] for _ in range(3)])
    hole[2] = 0  # no hole
    pred = (target + 0.1 * torch.randn(target.shape, generator=g) * hole).clamp(0, 1)  # errors only in the hole
    psnr, has_hole = psnr_hole_per_image(pred, target, hole)
    assert has_hole.tolist() == [True, True, False]
    for i in range(2):
        ys, xs = torch.nonzero(hole[i, 0], as_tuple=True)
        crop = (slice(None), slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1))
        assert crop[1].stop - crop[1].start == 32 and crop[2].stop - crop[2].start == 32
        ref = peak_signal_noise_ratio(target[i][crop].numpy(), pred[i][crop].numpy(), data_range=1.0)
        assert psnr[i].item() == pytest.approx(ref, abs=1e-3)
        # the global PSNR is higher: the known pixels are exact
        assert peak_signal_noise_ratio(target[i].numpy(), pred[i].numpy(), data_range=1.0) > ref + 5
    task = _task()
    task.val_metrics["psnr_hole"].update(psnr[has_hole])
    assert task.val_metrics["psnr_hole"].compute().item() == pytest.approx(psnr[:2].mean().item(), abs=1e-4)


def test_training_steps_update_both_nets_and_anneal(photos, tmp_path):
    task = _task(coarse_decay_iterations=4)
    g0 = {k: v.clone() for k, v in task.net.state_dict().items()}
    d0 = {k: v.clone() for k, v in task.disc.state_dict().items()}
    logger = CSVLogger(tmp_path)
    trainer = pl.Trainer(max_steps=8, logger=logger, log_every_n_steps=1, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(task, datamodule=_dm(photos))
    assert int(task.iterations) == 4 and trainer.global_step == 8  # two optimiser steps per iteration
    assert any(not torch.equal(v, task.net.state_dict()[k]) for k, v in g0.items())
    assert any(not torch.equal(v, task.disc.state_dict()[k]) for k, v in d0.items() if "original" in k)
    logger.save()
    import csv
    with open(f"{logger.log_dir}/metrics.csv") as f:
        rows = list(csv.DictReader(f))
    w = [float(r["train/coarse_weight"]) for r in rows if r.get("train/coarse_weight")]
    assert w == [5.0, 3.75, 2.5, 1.25]


def test_validation_logs_sample_grid_only_where_supported(photos, tmp_path):
    task = _task()
    tb = TensorBoardLogger(tmp_path, name="tb")
    trainer = pl.Trainer(logger=[tb, CSVLogger(tmp_path)], limit_val_batches=1, enable_progress_bar=False,
                         enable_model_summary=False)
    res = trainer.validate(task, datamodule=_dm(photos), verbose=False)[0]
    assert {"val/psnr", "val/psnr_hole", "val/ssim", "val/ssim_luma", "val/l1", "val/l1_hole"} <= set(res)
    assert res["val/psnr_hole"] < res["val/psnr"]  # the known pixels of the composite are exact
    assert task.last_sample_grid.shape == (3, 2 * 34 + 2, 4 * 34 + 2)  # 2 samples x [masked|coarse|output|truth]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(tb.log_dir)
    ea.Reload()
    assert any("samples" in t for t in ea.Tags()["images"])


def test_fit_lowers_validation_l1_on_real_photos(photos, tmp_path):
    """100 iterations (200 optimiser steps) of the tiny PEPSI on scikit-image's photographs lower the val L1."""
    pl.seed_everything(0)
    task = _task(lr_g=5e-4, lr_d=5e-4)
    dm = _dm(photos, batch_size=4, hflip=True)
    kw = {"logger": False, "enable_checkpointing": False, "enable_progress_bar": False, "enable_model_summary": False}
    before = pl.Trainer(**kw).validate(task, datamodule=dm, verbose=False)[0]
    pl.Trainer(max_steps=200, limit_val_batches=0, **kw).fit(task, datamodule=dm)
    after = pl.Trainer(**kw).validate(task, datamodule=dm, verbose=False)[0]
    assert after["val/l1"] < 0.85 * before["val/l1"], (before, after)
    assert after["val/psnr"] > before["val/psnr"]


def test_cli_fit_test_and_checkpoint_round_trip(photos, tmp_path):
    from tasks.cli import main

    common = ["--config", "configs/pepsi/demo.yaml",
              "--model.init_args.discriminator_kwargs", json.dumps({"input_size": 32}),
              "--data", "datamodules.inpainting.CelebAHQInpaintingDataModule",
              "--data.init_args.root", str(photos), "--data.init_args.image_size", "32",
              "--data.init_args.batch_size", "4", "--data.init_args.num_workers", "0",
              "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"]
    main(["fit", *common, "--trainer.max_steps", "4", "--trainer.limit_val_batches", "1",
          "--trainer.check_val_every_n_epoch", "1"])
    ckpts = sorted(tmp_path.rglob("*.ckpt"))
    assert ckpts, "fit wrote no checkpoint"
    # the paper's second test pass (free-form holes), by the CLI override the paper configs document
    main(["test", *common, "--ckpt_path", str(ckpts[-1]), "--data.init_args.eval_mask", "free_form"])
    # the first pass with the official fixed squares: an offsets list in the official '<mask png> x y' format
    mask_list = tmp_path / "test_mask256.txt"
    mask_list.write_text("".join(f"D:/dataset/inpainting/test_mask256/mask_{i:05d}.png {i} {16 - i}\n"
                                 for i in range(8)))
    main(["test", *common, "--ckpt_path", str(ckpts[-1]), "--data.init_args.eval_mask", "square_list",
          "--data.init_args.mask_list", str(mask_list)])
    # the checkpoint restores without a config, and its generator loads through the zoo
    task = InpaintingTask.load_from_checkpoint(ckpts[-1], weights_only=True)
    assert task.hparams.model == "pepsi_tiny" and int(task.iterations) == 2
    g = zoo.create_model("pepsi_tiny", checkpoint_path=ckpts[-1]).eval()
    x, m = task.example_inputs(2)
    task.eval()
    with torch.no_grad():
        torch.testing.assert_close(g(x, m).composite, task.net(x, m).composite)


@pytest.mark.parametrize("config", ["configs/pepsi/recipe.yaml"])  # the dataset files include it
def test_paper_configs_never_select_checkpoints_on_the_test_split(config):
    """Validation of the paper configs runs on the test split: checkpoints are kept by recency (last.ckpt is
    reported), never chosen by val/psnr; the free-form test pass is documented as a CLI override."""
    import yaml

    with open(config) as f:
        text = f.read()
    cfg = yaml.safe_load(text)
    ckpt = [c["init_args"] for c in cfg["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpt and all("monitor" not in a and a.get("save_last") for a in ckpt)
    assert cfg["trainer"]["precision"] == "bf16-mixed" and "32-true" in text  # the deviation and its way back
    assert "--data.init_args.eval_mask free_form" in text and "test_mask256" in text
    # the official fixed squares: documented as an option, the key present in the data section
    assert "--data.init_args.eval_mask square_list" in text and "--data.init_args.mask_list" in text
    assert "mask_list" in cfg["data"]["init_args"] and "ssim_luma" in text


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/pepsi/demo.yaml", "configs/pepsi/diet_pepsi_demo.yaml"])
def test_demo_config_lowers_validation_l1(config, tmp_path):
    """The shipped demo (64x64 photos, 300 iterations) lowers the validation L1 (a few minutes on a CPU)."""
    from pytorch_lightning.cli import LightningCLI

    cli = LightningCLI(pl.LightningModule, pl.LightningDataModule, subclass_mode_model=True, subclass_mode_data=True,
                       auto_configure_optimizers=False, run=False,
                       args=["--config", config, "--data.init_args.root", str(tmp_path / "photos"),
                             "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
                             "--trainer.enable_checkpointing", "false"])
    before = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
    assert cli.trainer.max_steps == 2 * int(cli.model.iterations)  # config resolved (diet file includes demo)
    assert after["val/l1"] < 0.9 * before["val/l1"], (before, after)
    assert after["val/l1_hole"] < before["val/l1_hole"] and after["val/psnr"] > before["val/psnr"]


def test_bench_train_step_matches_one_trainer_iteration(tmp_path):
    """`sharezoo bench --task train` times the same iteration as Trainer.fit (D step, then G step, each with the
    other network frozen): from the same init and batch both give the same weights."""
    torch.manual_seed(0)
    task = _task()
    task.configure_model()
    bench_task = _task()
    bench_task.configure_model()
    bench_task.load_state_dict(task.state_dict())
    batch = task.example_batch(2)

    loader = torch.utils.data.DataLoader([{"image": batch["image"][i], "mask": batch["mask"][i]} for i in range(2)],
                                         batch_size=2)
    pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, default_root_dir=tmp_path).fit(task, loader)  # the bench step runs here
    assert int(task.iterations) == 1

    before = {k: v.clone() for k, v in bench_task.state_dict().items()}
    g_loss = bench_task.bench_train_step(batch)
    assert torch.isfinite(g_loss) and int(bench_task.iterations) == 1
    after = bench_task.state_dict()
    for k, v in task.state_dict().items():
        torch.testing.assert_close(after[k], v, rtol=1e-5, atol=1e-6, msg=k)
    for prefix in ("disc.", "net."):  # both networks stepped
        assert any(not torch.equal(after[k], before[k]) for k in after if k.startswith(prefix)), prefix
    assert all(p.requires_grad for p in bench_task.parameters())  # the toggling is undone

    # the FLOP probe: forwards and backwards, no optimiser step, no iteration counted
    bench_task.bench_train_step(batch, step=False)
    assert int(bench_task.iterations) == 1
    assert all(torch.equal(bench_task.state_dict()[k], after[k]) for k in after)


@pytest.mark.parametrize("strategy, expected", [("ddp", True), ("ddp_find_unused_parameters_false", False),
                                                ("ddp_find_unused_parameters_true", True)])
def test_plain_ddp_gets_find_unused_parameters(strategy, expected):
    """Each optimiser's backward reaches only its own network: under plain ``ddp`` the task turns on DDP's search
    for unused parameters before the Trainer wraps it (tests/test_ddp.py trains PEPSI with 2 processes so); an
    explicit choice is kept."""
    trainer = pl.Trainer(strategy=strategy, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    task = InpaintingTask("pepsi_tiny", discriminator="pepsi_red_tiny")
    task.trainer = trainer
    task.setup("fit")
    assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is expected
