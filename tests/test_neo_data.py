"""NEO's data and task: the conversation layout (ChatML, labels, packing, errors), the loss (one shift, square
weighting) against an independent computation, the CLI fit + test and the chat entry."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from datamodules.vlm_conversations import (
    ChatTokenizer,
    ConversationFormatError,
    VLMConversationDataModule,
    pack_lengths,
    read_annotations,
    write_digits_vqa,
)
from tasks.neo import NEOTask, weighted_next_token_loss

ROOT = Path(__file__).resolve().parents[1]


def _write(root: Path, records: list[dict], sizes=((32, 32), (24, 40))) -> Path:
    for split in ("train", "val", "test"):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        for i, (h, w) in enumerate(sizes):
            Image.new("RGB", (w, h), (200, 30 * i, 30)).save(root / split / "images" / f"{i}.png")
        (root / split / "vqa.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return root


def _qa(i: int, q: str = "what color?", a: str = "red") -> dict:
    return {"image": f"images/{i}.png", "kind": "color", "conversations": [
        {"from": "human", "value": f"<image>\n{q}"}, {"from": "gpt", "value": a}]}


def _dm(root: Path, **kw) -> VLMConversationDataModule:
    return VLMConversationDataModule(str(root), token_px=8, min_pixels=64, max_pixels=64 * 64, **kw)


def test_chatml_sample_labels_and_image_tokens(tmp_path):
    dm = _dm(_write(tmp_path, [_qa(1)]))
    s = dm.dataset("val")[0]
    tok = dm.tokenizer
    ids, labels = s["input_ids"].tolist(), s["labels"].tolist()
    assert s["images"][0].shape == (3, 24, 40) and ids.count(tok.special["<IMG_CONTEXT>"]) == 3 * 5
    text = tok.decode([i for i in ids if i != tok.im_end_id])
    assert text.startswith("<|im_start|>user\n<img><IMG_CONTEXT>") and "</img>\nwhat color?" in text
    assert text.endswith("<|im_start|>assistant\nred\n")
    sup = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(sup[:-1]) == "red" and sup[-1] == tok.im_end_id  # answer + <|im_end|>, labels not shifted
    assert all(lab in (-100, i) for i, lab in zip(ids, labels))


def test_multi_image_and_multi_turn(tmp_path):
    rec = {"image": ["images/0.png", "images/1.png"], "conversations": [
        {"from": "human", "value": "<image> and <image>: same?"}, {"from": "gpt", "value": "no"},
        {"from": "human", "value": "why?"}, {"from": "gpt", "value": "colour"}]}
    dm = _dm(_write(tmp_path, [rec]))
    s = dm.dataset("val")[0]
    assert len(s["images"]) == 2
    sup = s["input_ids"][s["labels"] != -100].tolist()
    assert dm.tokenizer.decode([i for i in sup if i != dm.tokenizer.im_end_id]) == "nocolour"


@pytest.mark.parametrize("bad, match", [
    ({"image": "images/0.png", "conversations": [{"from": "gpt", "value": "<image>x"}]}, "alternate"),
    ({"image": "images/0.png", "conversations": [{"from": "human", "value": "no placeholder"},
                                                 {"from": "gpt", "value": "x"}]}, "0 <image> placeholders"),
    ({"image": "images/0.png", "conversations": [{"from": "robot", "value": "<image>"}]}, "each turn"),
    ({"image": "images/0.png"}, "non-empty 'conversations'"),
])
def test_malformed_conversations_are_named(tmp_path, bad, match):
    root = _write(tmp_path, [_qa(0), bad])
    with pytest.raises(ConversationFormatError, match=f"vqa.jsonl:2: .*{match}"):
        read_annotations(root / "train" / "vqa.jsonl")


def test_missing_image_and_missing_root(tmp_path):
    root = _write(tmp_path / "d", [_qa(7)])
    with pytest.raises(FileNotFoundError, match="vqa.jsonl:1: image .*7.png not found"):
        read_annotations(root / "train" / "vqa.jsonl")
    from datamodules._layout import DatasetLayoutError

    with pytest.raises(DatasetLayoutError, match="does not exist"):
        _dm(tmp_path / "nothing").prepare_data()


def test_packing_rows_documents_and_square_weights(tmp_path):
    recs = [_qa(i % 2, a=a) for i, a in enumerate(["red", "dark red", "red", "a very dark red"])]
    dm = _dm(_write(tmp_path, recs), max_len=80, batch_size=2, seed=None)
    ds = dm.dataset("train")
    assert all(sum(ds.samples.lengths[i] for i in row) <= 80 for row in ds.rows)
    assert sorted(i for row in ds.rows for i in row) == [0, 1, 2, 3]
    batch = next(iter(dm.train_dataloader()))
    for b, row in enumerate(ds.rows[:2]):
        for d, i in enumerate(row):
            n_sup = int((ds.samples[i]["labels"] != -100).sum())
            w = batch["loss_weight"][b][(batch["doc_ids"][b] == d) & (batch["labels"][b] != -100)]
            torch.testing.assert_close(w, torch.full_like(w, n_sup ** -0.5))
    assert (batch["labels"][batch["doc_ids"] == -1] == -100).all()
    with pytest.raises(ValueError, match="packing length"):
        pack_lengths([10, 90], 80)


def test_loss_shifts_labels_exactly_once_with_square_weights():
    torch.manual_seed(0)
    logits = torch.randn(2, 6, 11)
    labels = torch.full((2, 6), -100)
    labels[0, 2], labels[0, 3], labels[1, 5] = 4, 7, 9
    w = torch.zeros(2, 6)
    w[0, 2:4], w[1, 5] = 2 ** -0.5, 1.0
    got = weighted_next_token_loss(logits, labels, w, head=None)
    # independent: the token at position j is predicted by the logits at j - 1
    ce = [F.cross_entropy(logits[0, 1], torch.tensor(4)), F.cross_entropy(logits[0, 2], torch.tensor(7)),
          F.cross_entropy(logits[1, 4], torch.tensor(9))]
    want = (2 ** -0.5 * (ce[0] + ce[1]) + ce[2]) / (2 * 2 ** -0.5 + 1)
    torch.testing.assert_close(got, want)
    twice = F.cross_entropy(logits[0, 0], torch.tensor(4))  # a double shift would use position j - 2
    assert not torch.isclose(got, (2 ** -0.5 * (twice + ce[0]) + F.cross_entropy(logits[1, 3], torch.tensor(9)))
                             / (2 * 2 ** -0.5 + 1))


def test_task_lowers_loss_on_digits(tmp_path):
    """Real data: scikit-learn's digits as VQA; a few steps lower the loss."""
    import pytorch_lightning as pl

    root = write_digits_vqa(tmp_path / "digits", scale=2)
    dm = VLMConversationDataModule(str(root), token_px=8, min_pixels=64, max_pixels=4096, max_len=256, batch_size=2)
    task = NEOTask("neo_tiny", lr=3e-3, warmup_steps=2)
    losses = []

    class Rec(pl.Callback):
        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    pl.Trainer(max_steps=30, logger=False, enable_checkpointing=False, enable_progress_bar=False, callbacks=[Rec()],
               limit_val_batches=0, num_sanity_val_steps=0, enable_model_summary=False).fit(task, dm)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5, losses


def test_cli_fit_test_and_chat(tmp_path, capsys, monkeypatch):
    from tasks.cli import main

    monkeypatch.chdir(tmp_path)  # the demo's checkpoint folder is relative: runs/neo_demo/checkpoints
    from tasks.neo_chat import main as chat

    cfg = str(ROOT / "configs/neo/demo.yaml")
    args = ["--config", cfg, "--trainer.default_root_dir", str(tmp_path / "run"), "--data.init_args.root",
            str(tmp_path / "scenes"), "--data.init_args.scene_count", "8", "--data.init_args.limit_eval", "8"]
    main(["fit", *args, "--trainer.max_steps", "2"])
    ckpt = tmp_path / "runs" / "neo_demo" / "checkpoints" / "last.ckpt"
    main(["test", *args, "--ckpt_path", str(ckpt)])
    assert "test/exact_match=" in capsys.readouterr().out
    assert (tmp_path / "scenes" / "SYNTHETIC.md").is_file()
    task = NEOTask.load_from_checkpoint(ckpt, weights_only=True)
    assert task.net.ids.context == ChatTokenizer().image_token_ids[1]
    img = next((tmp_path / "scenes" / "test" / "images").glob("*.png"))
    chat(["--ckpt", str(ckpt), "--image", str(img), "--question", "how many circles are there?",
          "--max-new-tokens", "2"])
    assert str(img) in capsys.readouterr().out
