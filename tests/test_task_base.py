"""ZooTask: compile (whole network or regional) keeps clean checkpoint keys; data-linked kwargs are saved so
checkpoints need no config."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch

from tasks.reid import ReIDTask


def test_compile_switch_keeps_clean_state_dict_keys():
    kw = {"num_classes": 4, "num_cameras": 2, "pretrained_backbone": False}
    plain = ReIDTask(model="fusionreid_tiny", model_kwargs=kw)
    compiled = ReIDTask(model="fusionreid_tiny", model_kwargs=kw, compile=True)
    assert compiled._compiled is not None and compiled.network is not compiled.net
    keys = list(compiled.state_dict())
    assert keys == list(plain.state_dict())
    assert not any("_orig_mod" in k for k in keys)
    compiled.load_state_dict(plain.state_dict())  # a plain checkpoint loads into a compiled task and back
    assert torch.equal(compiled.net.classifiers[0].weight, plain.net.classifiers[0].weight)


def test_data_links_are_written_back_into_hparams(tmp_path):
    class _DM(pl.LightningDataModule):
        num_classes, num_cameras = 5, 3

    task = ReIDTask(model="fusionreid_tiny", model_kwargs={"pretrained_backbone": False})
    assert task.net is None  # built once the datamodule is known
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, max_epochs=1)
    trainer.strategy.connect(task)
    task.trainer = trainer
    trainer.datamodule = _DM()
    task.setup("fit")
    assert task.net.classifiers[0].out_features == 5 and task.hparams.model_kwargs["num_cameras"] == 3
    ckpt = {"state_dict": task.state_dict(), "hyper_parameters": dict(task.hparams),
            "pytorch-lightning_version": pl.__version__}
    torch.save(ckpt, tmp_path / "t.ckpt")
    back = ReIDTask.load_from_checkpoint(tmp_path / "t.ckpt", map_location="cpu")
    assert back.net is not None and back.net.classifiers[0].out_features == 5


def _eager_backend(monkeypatch):
    """torch.compile with the 'eager' backend: dynamo traces and caches graphs exactly as with inductor, without
    generating kernels (a C++ toolchain and minutes of CPU time); nn.Module.compile looks torch.compile up per call."""
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda *a, **k: real(*a, **{**k, "backend": "eager"}))
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()


def test_regional_compile_shares_one_graph_per_block_class(monkeypatch):
    """compile='regional' compiles Dens3R's encoder and decoder blocks in place: parameter names unchanged, outputs
    and gradients equal to the eager network, and 8 blocks of two classes give 2 graphs (one per class), not 8."""
    from tasks.geometry import GeometryTask

    _eager_backend(monkeypatch)
    kw = {"enc_depth": 4, "dec_depth": 4}
    task = GeometryTask("dens3r_tiny", compile="regional", model_kwargs=kw)
    ref = GeometryTask("dens3r_tiny", model_kwargs=kw)
    assert list(task.net.state_dict()) == list(ref.net.state_dict())
    ref.net.load_state_dict(task.net.state_dict())
    regions = task.net.compile_regions()
    assert len(regions) == 8 and all(m._compiled_call_impl is not None for m in regions)
    assert task.network is task.net  # no whole-network wrapper
    batch = task.example_batch(2)
    outs = [t.network(batch["img1"], batch["img2"], heads="all") for t in (task, ref)]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 2
    for a, b in zip(outs[0].view1.to_dict().values(), outs[1].view1.to_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for t, o in zip((task, ref), outs):
        o.view2.pts3d.square().mean().backward()
    for (name, p), q in zip(task.net.named_parameters(), ref.net.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_regional_compile_regions_run_eagerly_inside_eager_network(monkeypatch):
    from tasks.geometry import GeometryTask

    _eager_backend(monkeypatch)
    task = GeometryTask("dens3r_tiny", compile="regional")
    regions = task.net.compile_regions()
    compiled = [m._compiled_call_impl for m in regions]
    with task.eager_network() as net:
        assert all(m._compiled_call_impl is None for m in regions)
        batch = task.example_batch(1)
        net(batch["img1"], batch["img2"])
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0  # nothing was traced
    assert [m._compiled_call_impl for m in regions] == compiled  # restored


def test_regional_compile_needs_a_model_with_regions():
    with pytest.raises(ValueError, match="compile_regions"):
        ReIDTask("fusionreid_tiny", compile="regional",
                 model_kwargs={"num_classes": 4, "num_cameras": 2, "pretrained_backbone": False})


def test_init_from_loads_an_earlier_stage_and_is_not_read_on_restore(tmp_path):
    """ZooTask(init_from=...): a task checkpoint's ``net.*`` weights load when the network is built, ``init_exclude``
    keys keep their own values, a missing file names the file and the config key, and ``load_from_checkpoint`` does
    not read the (possibly gone) earlier file."""
    import zoo
    from tasks.signal import CardioAlignTask, ECGFlowTask

    torch.manual_seed(0)
    s1 = CardioAlignTask("ppgflowecg_tiny")
    ckpt = {"state_dict": s1.state_dict(), "hyper_parameters": dict(s1.hparams),
            "pytorch-lightning_version": pl.__version__}
    torch.save(ckpt, tmp_path / "s1.ckpt")
    torch.manual_seed(1)
    s2 = ECGFlowTask("ppgflowecg_tiny", stage1_checkpoint=str(tmp_path / "s1.ckpt"))
    torch.manual_seed(1)
    fresh = zoo.create_model("ppgflowecg_tiny")
    for k, v in s2.net.state_dict().items():
        assert torch.equal(v, (fresh if k.startswith("flow.") else s1.net).state_dict()[k]), k
    torch.save({"state_dict": s2.state_dict(), "hyper_parameters": dict(s2.hparams),
                "pytorch-lightning_version": pl.__version__}, tmp_path / "s2.ckpt")
    (tmp_path / "s1.ckpt").unlink()
    back = ECGFlowTask.load_from_checkpoint(tmp_path / "s2.ckpt", map_location="cpu", weights_only=True)
    assert back.hparams.stage1_checkpoint == str(tmp_path / "s1.ckpt")
    torch.testing.assert_close(back.net.state_dict(), s2.net.state_dict())
    with pytest.raises(FileNotFoundError, match=r"stage1_checkpoint=.*s1.ckpt does not exist"):
        ECGFlowTask("ppgflowecg_tiny", stage1_checkpoint=str(tmp_path / "s1.ckpt"))


def test_strip_task_prefix():
    import zoo

    sd = {"net.a": 1, "net.b.c": 2, "flow_ema.module.x": 3}
    assert zoo.strip_task_prefix(sd) == {"a": 1, "b.c": 2}
    assert zoo.strip_task_prefix({"a": 1}) == {"a": 1}
    own = torch.nn.Module()
    own.net = torch.nn.Linear(1, 1)  # a model whose own keys start with net.: the prefix is its own
    assert zoo.strip_task_prefix({"net.weight": 1}, own) == {"net.weight": 1}

