"""UniPic data readers, the task's losses and stages, the CLI on the demo config."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from datamodules.unipic import UniPicDataModule, read_records, write_digits
from tasks.unipic import UniPicTask

ROOT = Path(__file__).resolve().parents[1]


def _img(path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (16, 16), (200, 10, 10)).save(path)


def test_readers_name_missing_images_and_bad_lines(tmp_path):
    _img(tmp_path / "images/a.png")
    (tmp_path / "t2i.jsonl").write_text('{"image": "images/a.png", "prompt": "a red square"}\n\n'
                                        '{"image": "images/b.png", "caption": "x"}\n')
    with pytest.raises(FileNotFoundError, match=r"t2i.jsonl:3: image .*b.png does not exist"):
        read_records(tmp_path / "t2i.jsonl", "t2i")
    (tmp_path / "edit.jsonl").write_text('{"source": "images/a.png", "instruction": "x"\n')
    with pytest.raises(ValueError, match=r"edit.jsonl:1: malformed JSON"):
        read_records(tmp_path / "edit.jsonl", "edit")
    (tmp_path / "edit.json").write_text(json.dumps([{"source": "images/a.png", "instruction": "x"}]))
    with pytest.raises(ValueError, match=r"edit.json:1: missing field\(s\) \['target'\]"):
        read_records(tmp_path / "edit.json", "edit")
    (tmp_path / "t2i.jsonl").write_text('{"image": "images/a.png", "prompt": "a red square"}\n')
    assert read_records(tmp_path / "t2i.jsonl", "t2i")[0]["caption"] == "a red square"


def test_missing_root_prints_the_layout(tmp_path):
    from datamodules._layout import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="t2i.jsonl"):
        UniPicDataModule(root=str(tmp_path / "nope")).prepare_data()


def test_digits_writer_and_batches(tmp_path):
    root = write_digits(tmp_path / "digits", size=16, limit=20)
    assert "REAL" in (root / "README.md").read_text()
    dm = UniPicDataModule(root=str(root), tasks=("t2i",), image_size=16, batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    b = batch[0] if isinstance(batch, tuple) else batch
    sub = b["text2image"]
    assert sub["image"].shape == (4, 3, 16, 16) and sub["image"].min() >= -1
    assert all(c.startswith("a handwritten digit ") for c in sub["caption"])


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    from datamodules.synthetic.scenes import write_scene_dataset

    return write_scene_dataset(tmp_path_factory.mktemp("s") / "scenes", 16, 6, 6, seed=0, size=32)


def test_task_losses_weights_and_freeze_flags(scenes):
    dm = UniPicDataModule(root=str(scenes), batch_size=4)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    batch = batch[0] if isinstance(batch, tuple) else batch
    task = UniPicTask(model="unipic_tiny", freeze_llm=True, loss_weights={"image2text": 0.01, "text2image": 1.0,
                                                                            "image_edit": 0.0})
    task.train()
    losses = task.compute_losses(batch)
    assert set(losses) == {"image2text", "text2image", "loss"}  # weight 0: not computed
    assert torch.allclose(losses["loss"], 0.01 * losses["image2text"] + losses["text2image"])
    losses["loss"].backward()
    assert all(p.grad is None for p in task.net.llm.parameters())
    assert task.net.proj_in[0].weight.grad is not None and task.net.siglip_proj[0].weight.grad is not None


def test_understanding_loss_only_on_answer_tokens(scenes):
    task = UniPicTask(model="unipic_tiny")
    seen = {}
    orig = torch.nn.functional.cross_entropy

    def spy(inp, target, **kw):
        seen["target"] = target
        return orig(inp, target, **kw)

    batch = {"image": torch.rand(1, 3, 32, 32) * 2 - 1, "question": ["how many?"], "answer": ["two"]}
    import tasks.unipic as tu

    tu.F.cross_entropy, old = spy, tu.F.cross_entropy
    try:
        task.image2text_loss(batch)
    finally:
        tu.F.cross_entropy = old
    kept = seen["target"][seen["target"] != -100].tolist()
    assert task.net.tokenizer.decode(kept) == "two" and kept[-1] == task.net.tokenizer.eos_token_id


def test_stage_configs_set_the_paper_values():
    from tasks.bench import load_config

    cfg = {s: load_config(ROOT / f"configs/unipic/{s}.yaml")["model"]["init_args"]
           for s in ("stage1_pt", "stage2_align", "stage3_ct", "stage4_sft")}
    assert [c["lr"] for c in cfg.values()] == [5e-5, 1e-5, 1e-5, 5e-6]
    assert [c["weight_decay"] for c in cfg.values()] == [0.0, 0.02, 0.02, 0.02]
    assert [c["warmup_ratio"] for c in cfg.values()] == [0.05, 0.05, 0.01, 0.01]
    assert [c.get("ema_decay") for c in cfg.values()] == [0.9999, None, 0.9999, 0.995]
    assert [c.get("freeze_llm", False) for c in cfg.values()] == [True, True, False, False]
    assert cfg["stage1_pt"]["schedule"] == "constant" and cfg["stage4_sft"]["schedule"] == "cosine"
    assert cfg["stage3_ct"]["loss_weights"] == {"image2text": 0.01, "text2image": 1.0, "image_edit": 1.0}
    assert all(tuple(c["betas"]) == (0.9, 0.95) and c["eps"] == 1e-15 for c in cfg.values())


def test_cli_fit_and_test_demo(tmp_path, scenes, capsys):
    from tasks.cli import main

    out = tmp_path / "run"
    args = ["--config", str(ROOT / "configs/unipic/demo.yaml"), "--trainer.default_root_dir", str(out),
            "--data.init_args.root", str(scenes), "--data.init_args.batch_size", "4",
            "--model.init_args.eval_num_iter", "2", "--model.init_args.eval_batches", "1"]
    main(["fit", *args, "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0"])
    ckpt = next(out.rglob("*.ckpt"))
    main(["test", *args, "--ckpt_path", str(ckpt)])
    summary = capsys.readouterr().out
    assert "test/geneval_overall" in summary and "test/edit_acc" in summary and "test/vqa_em" in summary
    task = UniPicTask.load_from_checkpoint(ckpt, weights_only=True)
    assert task.net.mar.buffer_size == 4


def test_generate_and_edit_cli(tmp_path):
    import zoo
    from tasks.unipic_generate import main

    m = zoo.create_model("unipic_tiny")
    zoo.save_pretrained(m, tmp_path / "m")
    out = tmp_path / "a.png"
    assert main(["--ckpt", str(tmp_path / "m"), "--prompt", "a red circle", "--out", str(out), "--num-iter", "2"]) == 0
    from PIL import Image

    assert Image.open(out).size == (32, 32)
    assert main(["--image", str(out), "--prompt", "make the circle green", "--out", str(tmp_path / "b.png"),
                 "--num-iter", "2"]) == 0
