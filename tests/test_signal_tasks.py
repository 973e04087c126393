"""Signal tasks: stage-2 learning on real a103l windows, stage-1 loading, CLI fit/test end to end, shipped configs."""
import copy
from pathlib import Path

import pytest
import torch
import yaml

import zoo
from datamodules.signal import WFDBPairedSignalDataModule
from tasks.signal import CardioAlignTask, ECGClassificationTask, ECGFlowTask, rectified_flow_loss

CONFIGS = Path(__file__).resolve().parent.parent / "configs" / "ppgflowecg"


@pytest.fixture(scope="module")
def a103l_windows(tmp_path_factory):
    dm = WFDBPairedSignalDataModule(window_s=2, split_by="time", cache_dir=str(tmp_path_factory.mktemp("c")))
    dm.setup()
    d = dm.dataset("train")
    return torch.stack([d[i]["ecg"] for i in range(len(d))]), torch.stack([d[i]["ppg"] for i in range(len(d))])


def test_stage2_loss_falls_on_real_a103l(a103l_windows):
    ecg, ppg = a103l_windows
    torch.manual_seed(0)
    net = zoo.create_model("ppgflowecg_tiny")
    with torch.no_grad():  # frozen stage 1 (random init): latents are fixed functions of the real windows
        z, c = net.encode(ecg, sample=False), net.encode(ppg, sample=False)
    opt = torch.optim.Adam(net.flow.parameters(), lr=2e-3, betas=(0.9, 0.96))
    losses = []
    for step in range(150):
        idx = torch.randint(0, len(z), (16,))
        loss = rectified_flow_loss(net.flow, z[idx], c[idx], num_draws=4)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.flow.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:20]) / 20, sum(losses[-20:]) / 20
    assert last < 0.5 * first, (first, last)


def test_flow_task_loads_stage1_from_zoo_folder_and_reference(tmp_path):
    from test_ppgflowecg import _official_vae_state_dict

    src = zoo.create_model("ppgflowecg_tiny")
    zoo.save_pretrained(src, tmp_path / "stage1")
    task = ECGFlowTask("ppgflowecg_tiny", stage1_checkpoint=str(tmp_path / "stage1"))  # read when the net is built
    assert torch.equal(task.net.encoder.blocks[0].weight, src.encoder.blocks[0].weight)
    assert not any(p.requires_grad for p in task.net.encoder.parameters())
    assert all(p.requires_grad for p in task.net.flow.parameters())
    task.train()
    assert not task.net.encoder.training and task.net.flow.training
    ref = _official_vae_state_dict(src)
    torch.save(ref, tmp_path / "VAE-iter-1.pth")
    torch.manual_seed(1)
    other = ECGFlowTask("ppgflowecg_tiny", stage1_checkpoint=str(tmp_path / "VAE-iter-1.pth"))
    assert torch.equal(other.net.ppg_decoder.to_latent.weight, ref["decoder_ppg"]["to_latent.weight"])
    torch.manual_seed(1)  # the flow is not taken from a stage-1 file: it keeps its initialisation
    torch.testing.assert_close(other.net.flow.state_dict(), zoo.create_model("ppgflowecg_tiny").flow.state_dict())
    with pytest.raises(zoo.PretrainedWeightsError, match="VAE-iter-1.pth"):
        ECGFlowTask("ppgflowecg_tiny", model_kwargs={"decomp_dim": 4},
                    stage1_checkpoint=str(tmp_path / "VAE-iter-1.pth"))
    with pytest.raises(FileNotFoundError, match="stage1_checkpoint=.*nope.ckpt does not exist"):
        ECGFlowTask("ppgflowecg_tiny", stage1_checkpoint=str(tmp_path / "nope.ckpt"))
    exported = task.export_model()
    assert torch.equal(exported.flow.pos_embed, task.flow_ema.module.pos_embed)


def test_classifier_on_generated_ecg(a103l_windows):
    ecg, ppg = a103l_windows
    task = ECGClassificationTask("ecg_resnet1d_tiny", model_kwargs={"num_classes": 2}, input_source="generated",
                                 generator_model="ppgflowecg_tiny", generator_steps=2)
    loss = task.training_step({"ecg": ecg[:4], "ppg": ppg[:4], "labels": torch.tensor([[1.0, 0.0]] * 4)}, 0)
    assert loss.isfinite()
    loss.backward()


def _tmp_config(name: str, tmp: Path, stage: str, **model_overrides) -> Path:
    cfg = yaml.safe_load((CONFIGS / name).read_text())
    cfg = copy.deepcopy(cfg)
    cfg["trainer"].update(max_steps=4, default_root_dir=str(tmp / stage), check_val_every_n_epoch=1,
                          limit_val_batches=1, limit_test_batches=2, enable_progress_bar=False, logger=False)
    for cb in cfg["trainer"].get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(tmp / stage / "ckpt")
    cfg["model"]["init_args"].update(model_overrides)
    cfg["data"]["init_args"]["cache_dir"] = str(tmp / "cache")
    p = tmp / f"{stage}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_cli_fit_and_test_end_to_end(tmp_path):
    from tasks.cli import main

    s1 = _tmp_config("demo.yaml", tmp_path, "stage1", cosine_steps=4)
    main(["fit", "--config", str(s1)])
    ckpt1 = tmp_path / "stage1" / "ckpt" / "last.ckpt"
    assert ckpt1.is_file()
    reloaded = CardioAlignTask.load_from_checkpoint(str(ckpt1), weights_only=True)
    assert reloaded.net.seq_len == 256
    s2 = _tmp_config("demo_stage2.yaml", tmp_path, "stage2", stage1_checkpoint=str(ckpt1), ema_start=1)
    main(["fit", "--config", str(s2)])
    ckpt2 = tmp_path / "stage2" / "ckpt" / "last.ckpt"
    main(["test", "--config", str(s2), "--ckpt_path", str(ckpt2)])
    task = ECGFlowTask.load_from_checkpoint(str(ckpt2), weights_only=True)
    assert task.flow_ema.steps == 4  # the host-side EMA step count round-trips through the checkpoint
    # stage 1 stayed frozen through stage 2
    torch.testing.assert_close(task.net.encoder.state_dict(), reloaded.net.encoder.state_dict())
    out = task.net.sample_ecg(torch.randn(2, 1, 256), steps=3, flow=task.flow_ema.module)
    assert out.shape == (2, 1, 256) and out.isfinite().all()


def test_cli_classifier_end_to_end(tmp_path):
    from tasks.cli import main

    cfg = _tmp_config("mitbih_classifier_demo.yaml", tmp_path, "cls")
    main(["fit", "--config", str(cfg)])
    main(["test", "--config", str(cfg)])


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml") if not p.name.startswith("results")))
def test_shipped_configs_parse(name, capsys):
    from tasks.cli import main

    with pytest.raises(SystemExit) as e:
        main(["fit", "--config", str(CONFIGS / name), "--print_config"])
    assert e.value.code in (0, None)
    assert "class_path" in capsys.readouterr().out


def test_window_length_mismatch_is_a_clear_error(tmp_path):
    import pytorch_lightning as pl

    dm = WFDBPairedSignalDataModule(window_s=10, split_by="time", cache_dir=str(tmp_path))
    trainer = pl.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="seq_len=256: set model_kwargs.seq_len: 1280"):
        trainer.fit(CardioAlignTask("ppgflowecg_tiny"), dm)


def test_bench_hooks():
    task = ECGFlowTask("ppgflowecg_tiny", warmup_steps=1)
    batch = task.example_batch(2)
    assert batch["ppg"].shape == (2, 1, 256) and task.training_step(batch, 0).isfinite()
    assert task.network(*task.example_inputs(2)).shape == (2, 1, 256)
    cls = ECGClassificationTask("ecg_resnet1d_tiny", model_kwargs={"num_classes": 3})
    assert cls.training_step(cls.example_batch(2), 0).isfinite()
    s1 = CardioAlignTask("ppgflowecg_tiny")
    assert s1.training_step(s1.example_batch(2), 0).isfinite()


def test_flow_schedule_reads_losses_before_the_next_optimizer_step():
    """The lr schedule gets each step's loss before the next optimiser step (deferred device read): the same lr
    sequence as stepping it at every batch end."""
    from tasks.signal import WarmupReduceLROnPlateau

    task = ECGFlowTask("ppgflowecg_tiny", warmup_steps=3, warmup_lr=1e-3, plateau_patience=2, plateau_factor=0.5)
    opt = task.configure_optimizers()
    ref_opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=task.hparams.lr)
    ref = WarmupReduceLROnPlateau(ref_opt, 1e-3, 3, 0.5, 2, 1e-2, task.hparams.min_lr)
    losses = [1.0, 0.9, 0.8, 0.5, 0.5, 0.5, 0.5, 0.5, 0.4, 0.4, 0.4, 0.4]
    for i, loss in enumerate(losses):
        task.on_before_optimizer_step(opt)  # the lr of this step
        assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"]), i
        task.on_train_batch_end({"loss": torch.tensor(loss)}, None, i)
        ref.step(loss)
    task.on_train_end()
    assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"])
    assert opt.param_groups[0]["lr"] < 1e-3  # the plateau decayed it


@pytest.fixture(scope="module")
def stage2_ckpt(tmp_path_factory):
    """A real ECGFlowTask .ckpt (2 optimisation steps) whose EMA flow differs from its online flow."""
    import pytorch_lightning as pl

    torch.manual_seed(0)
    task = ECGFlowTask("ppgflowecg_tiny", warmup_steps=1, val_sample_batches=0)
    data = [{"ecg": torch.randn(1, 256), "ppg": torch.randn(1, 256)} for _ in range(8)]
    trainer = pl.Trainer(max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(task, torch.utils.data.DataLoader(data, batch_size=4))
    with torch.no_grad():  # make the difference unmistakable
        for p in task.flow_ema.module.parameters():
            p.add_(0.5)
    path = tmp_path_factory.mktemp("s2") / "stage2.ckpt"
    trainer.save_checkpoint(path)
    ema = {k: v.clone() for k, v in task.flow_ema.module.state_dict().items()}
    online = {k: v.clone() for k, v in task.net.flow.state_dict().items()}
    assert all(not torch.equal(ema[k], online[k]) for k in ema)
    return path, ema, online, {k: v.clone() for k, v in task.net.encoder.state_dict().items()}


def _assert_state(module, expected):
    got = module.state_dict()
    assert got.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(got[k], v), k


def test_stage2_task_checkpoint_loads_the_ema_flow(stage2_ckpt):
    path, ema, online, encoder = stage2_ckpt
    net = zoo.ppgflowecg.load_weights(zoo.create_model("ppgflowecg_tiny"), path)
    _assert_state(net.flow, ema)
    _assert_state(net.encoder, encoder)
    _assert_state(zoo.ppgflowecg.load_weights(zoo.create_model("ppgflowecg_tiny"), path, use_ema=False).flow, online)
    # the downstream classifier's generator samples with the EMA flow (unless told otherwise)
    cls = ECGClassificationTask("ecg_resnet1d_tiny", model_kwargs={"num_classes": 2}, input_source="generated",
                                generator_model="ppgflowecg_tiny", generator_checkpoint=str(path))
    _assert_state(cls._generator.flow, ema)
    cls = ECGClassificationTask("ecg_resnet1d_tiny", model_kwargs={"num_classes": 2}, input_source="generated",
                                generator_model="ppgflowecg_tiny", generator_checkpoint=str(path),
                                generator_use_ema=False)
    _assert_state(cls._generator.flow, online)
    # the family filter maps the EMA copy whenever it sees it (a raw task state dict, with or without net.)
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    net = zoo.create_model("ppgflowecg_tiny")
    for raw in (sd, {k.removeprefix("net."): v for k, v in sd.items()}):
        net.load_state_dict(zoo.ppgflowecg.checkpoint_filter_fn(raw, net))  # strict: exactly the model's keys
        _assert_state(net.flow, ema)
        _assert_state(net.encoder, encoder)


def test_create_model_from_stage2_task_checkpoint_uses_the_ema_flow(stage2_ckpt):
    path, ema, _, _ = stage2_ckpt
    _assert_state(zoo.create_model("ppgflowecg_tiny", checkpoint_path=path).flow, ema)


def test_task_checkpoints_hold_each_weight_once_and_old_ones_still_load():
    for task, alias in ((CardioAlignTask("ppgflowecg_tiny"), "_stage1"), (ECGFlowTask("ppgflowecg_tiny"), "_flow")):
        sd = task.state_dict()
        assert {k.split(".")[0] for k in sd} <= {"net", "flow_ema"}  # no aliased copies
        # a checkpoint written while the aliases were registered submodules (duplicate keys) still loads strictly
        prefix = "net." if alias == "_stage1" else "net.flow."
        old = {"state_dict": {**sd, **{f"{alias}.{k[len(prefix):]}": v for k, v in sd.items() if k.startswith(prefix)}}}
        task.on_load_checkpoint(old)
        task.load_state_dict(old["state_dict"])


def test_export_of_a_stage2_checkpoint_takes_the_ema_flow_like_create_model(stage2_ckpt, tmp_path):
    """One rule: `sharezoo export` writes the network `create_model(checkpoint_path=...)` loads (the EMA flow)."""
    from tasks.cli import main

    path, ema, _, encoder = stage2_ckpt
    assert main(["export", str(path), str(tmp_path / "out")]) == 0
    net = zoo.create_model(f"local-dir:{tmp_path / 'out'}")
    _assert_state(net.flow, ema)
    _assert_state(net.encoder, encoder)
