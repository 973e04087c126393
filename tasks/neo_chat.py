"""Ask a trained NEO about an image: ``python -m tasks.neo_chat --ckpt last.ckpt --image a.png --question "..."``.

The image is smart-resized to the model's token size within the checkpoint's data bounds (``--min-pixels`` /
``--max-pixels`` override), the question is wrapped in ChatML with ``<image>`` expanded, and the answer is decoded
greedily with a static KV cache (:meth:`zoo.neo.NEO.generate`, fixed-shape decode step).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from datamodules.vlm_conversations import ChatTokenizer, load_image

from .neo import NEOTask


def answer(task: NEOTask, image: str | Path, question: str, min_pixels: int = 256, max_pixels: int = 1 << 22,
           max_new_tokens: int = 32, tokenizer: ChatTokenizer | None = None) -> str:
    """The model's greedy answer to ``question`` about the image file ``image``.

    Args:
        task: a trained task (``NEOTask.load_from_checkpoint``).
        image: the image file.
        question: the question (an ``<image>`` placeholder is prepended when it has none).
        min_pixels: smart-resize lower bound.
        max_pixels: smart-resize upper bound.
        max_new_tokens: most tokens generated.
        tokenizer: the chat tokenizer (None: built).
    """
    tok = tokenizer or ChatTokenizer()
    net = task.net.eval()
    dev = next(net.parameters()).device
    im = load_image(image, net.token_px, min_pixels, max_pixels).to(dev)
    n = (im.shape[1] // net.token_px) * (im.shape[2] // net.token_px)
    text = question if "<image>" in question else f"<image>\n{question}"
    ids = torch.tensor([tok.prompt(text, [n])], device=dev)
    new = net.generate(ids, [im], max_new_tokens=max_new_tokens, eos_id=tok.im_end_id)
    return tok.decode(new[0])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--ckpt", required=True, help="a NEOTask checkpoint (sharezoo fit's last.ckpt)")
    p.add_argument("--image", required=True, action="append", help="image file (repeat for several questions)")
    p.add_argument("--question", required=True)
    p.add_argument("--min-pixels", type=int, default=256)
    p.add_argument("--max-pixels", type=int, default=16384)
    p.add_argument("--max-new-tokens", type=int, default=32)
    a = p.parse_args(argv)
    if not Path(a.ckpt).is_file():
        raise SystemExit(f"--ckpt {a.ckpt} does not exist (a NEOTask checkpoint, e.g. runs/neo_demo/checkpoints/"
                         "last.ckpt after `sharezoo fit --config configs/neo/demo.yaml`)")
    task = NEOTask.load_from_checkpoint(a.ckpt, map_location="cpu", weights_only=True)
    tok = ChatTokenizer()
    for im in a.image:
        print(f"{im}: {answer(task, im, a.question, a.min_pixels, a.max_pixels, a.max_new_tokens, tok)}")


if __name__ == "__main__":
    main()
