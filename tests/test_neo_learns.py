"""Does the image reach NEO's answer? The image changes the answer logits at init, and a tiny NEO learns "what colour
is the image?" on solid-colour images through the real data path (image files -> conversations -> packed rows ->
the weighted loss -> KV-cached greedy answers) far above the majority answer. Either fails if the image tokens stop
reaching the text (mask, splice, positions, labels)."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from datamodules.vlm_conversations import VLMConversationDataModule
from tasks.neo import normalise_answer, weighted_next_token_loss
from zoo.neo import neo_tiny

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 40, 220), "yellow": (230, 220, 30)}


def _write_colours(root: Path, n: dict[str, int], seed: int = 0) -> Path:
    """Solid-colour images (brightness jittered, 16×16 or 16×24 px) with "what colour is the image?" -> the name."""
    rng = torch.Generator().manual_seed(seed)
    names = list(COLOURS)
    for split, count in n.items():
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(count):
            name = names[int(torch.randint(len(names), (1,), generator=rng))]
            scale = 0.7 + 0.3 * float(torch.rand(1, generator=rng))
            size = (16, 24) if i % 3 == 2 else (16, 16)
            Image.new("RGB", size, tuple(int(c * scale) for c in COLOURS[name])).save(
                root / split / "images" / f"{i}.png")
            lines.append(json.dumps({"image": f"images/{i}.png", "kind": "colour", "conversations": [
                {"from": "human", "value": "<image>\nwhat colour is the image?"}, {"from": "gpt", "value": name}]}))
        (root / split / "vqa.jsonl").write_text("\n".join(lines) + "\n")
    return root


def _dm(root: Path) -> VLMConversationDataModule:
    return VLMConversationDataModule(str(root), token_px=8, min_pixels=64, max_pixels=32 * 32, max_len=128,
                                     batch_size=4, eval_batch_size=32, seed=0)


def _model(dm: VLMConversationDataModule, **kw) -> torch.nn.Module:
    torch.manual_seed(0)
    return neo_tiny(vocab_size=dm.vocab_size, image_token_ids=dm.image_token_ids, **kw)


def _exact_match(model, dm: VLMConversationDataModule) -> tuple[float, float]:
    """(exact match of greedy answers, the majority-answer baseline) on the test split."""
    model.eval()
    hits, answers = [], []
    for b in dm.test_dataloader():
        new = model.generate(b["input_ids"], b["images"], max_new_tokens=3, eos_id=dm.tokenizer.im_end_id,
                             doc_ids=b["doc_ids"])
        for row, ans in zip(new, b["answers"]):
            hits.append(normalise_answer(dm.tokenizer.decode(row)) == normalise_answer(ans))
            answers.append(ans)
    model.train()
    return sum(hits) / len(hits), Counter(answers).most_common(1)[0][1] / len(answers)


@pytest.mark.parametrize("native_rope", [True, False])
def test_image_changes_answer_logits_at_init(tmp_path, native_rope):
    dm = _dm(_write_colours(tmp_path, {"train": 1, "test": 4}))
    model = _model(dm, native_rope=native_rope).eval()
    b = next(iter(dm.test_dataloader()))
    ids, doc = b["input_ids"][:1], b["doc_ids"][:1]
    image = b["images"][0].clone().requires_grad_(True)
    logits = model(ids, [image], doc_ids=doc).logits[0, -1]
    logits[logits.argmax()].backward()
    assert image.grad.abs().sum() > 0  # the answer logit depends on the pixels
    with torch.no_grad():
        other = model(ids, [torch.randn_like(image)], doc_ids=doc).logits[0, -1]
    assert (other - logits.detach()).abs().max() > 1e-3


def test_learns_image_colour(tmp_path):
    """A few dozen steps take exact match on held-out images from ~chance to ~1 (a text-only model stays at the
    majority answer)."""
    dm = _dm(_write_colours(tmp_path, {"train": 256, "test": 48}))
    model = _model(dm)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95))
    step = 0
    while step < 60:
        for b in dm.train_dataloader():
            out = model(b["input_ids"], b["images"], doc_ids=b["doc_ids"], return_hidden=True)
            loss = weighted_next_token_loss(out.hidden, b["labels"], b["loss_weight"], model.logits)
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            step += 1
            if step == 60:
                break
    em, majority = _exact_match(model, dm)
    assert majority < 0.5
    assert em >= 0.9, f"exact match {em:.3f} vs majority answer {majority:.3f}: the image does not reach the answer"
