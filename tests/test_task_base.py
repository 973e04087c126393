"""ZooTask: compile keeps clean checkpoint keys; data-linked kwargs are saved so checkpoints need no config."""
from __future__ import annotations

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
