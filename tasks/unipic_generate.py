"""UniPic generation and editing from the command line: prompt -> PNG, or image + instruction -> PNG.

    python -m tasks.unipic_generate --model unipic_tiny --ckpt run/last.ckpt --prompt "a red circle" --out a.png
    python -m tasks.unipic_generate --ckpt run/last.ckpt --image a.png --prompt "make the circle green" --out b.png

``--ckpt`` takes a sharezoo task checkpoint (``.ckpt``; its EMA weights when it has them), a saved model folder or an
official UniPic ``.pth`` (converted). Sampling: MaskGIT over ``--num-iter`` steps, CFG ``--cfg`` against "Generate an
image." ("Repeat this image." for edits).
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import zoo


def load_model(model: str, ckpt: str | None, model_kwargs: dict | None = None) -> torch.nn.Module:
    """The network of ``model`` with the weights of ``ckpt`` (a task checkpoint's EMA when present)."""
    path = Path(ckpt) if ckpt else None
    state = torch.load(path, map_location="cpu", weights_only=True) if path and path.suffix == ".ckpt" else None
    if state is not None:  # a task checkpoint: the architecture from its hyperparameters
        hp = state.get("hyper_parameters", {})
        model, model_kwargs = hp.get("model", model), {**(hp.get("model_kwargs") or {}), **(model_kwargs or {})}
    net = zoo.create_model(model, **(model_kwargs or {}))
    if state is not None and "ema_state_dict" in state:
        net.load_state_dict(state["ema_state_dict"])
    elif path is not None:
        zoo.load_checkpoint(net, path)
    return net.eval()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.unipic_generate", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="unipic_tiny", help="registered UniPic model name")
    p.add_argument("--ckpt", default=None, help="task checkpoint, model folder or official .pth")
    p.add_argument("--prompt", required=True, help="the caption, or the edit instruction with --image")
    p.add_argument("--image", default=None, help="source image: edit it instead of generating")
    p.add_argument("--out", default="unipic.png", help="output PNG")
    p.add_argument("--size", type=int, default=None, help="output side (default: the model's)")
    p.add_argument("--num-iter", type=int, default=64, help="MaskGIT steps (paper: 64)")
    p.add_argument("--cfg", type=float, default=3.0, help="classifier-free guidance scale (paper: 3.0)")
    p.add_argument("--temperature", type=float, default=1.0, help="DiffLoss sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    args = p.parse_args(argv)
    from zoo.unipic import edit_images, generate_images

    net = load_model(args.model, args.ckpt)
    if args.image:
        size = args.size or net.image_size
        with Image.open(args.image) as im:
            arr = np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC), dtype=np.float32)
        src = torch.from_numpy(arr).permute(2, 0, 1)[None] / 127.5 - 1
        img = edit_images(net, src, [args.prompt], args.num_iter, args.cfg, temperature=args.temperature,
                          seed=args.seed)
    else:
        img = generate_images(net, [args.prompt], args.num_iter, args.cfg, image_size=args.size,
                              temperature=args.temperature, seed=args.seed)
    out = ((img[0].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    Image.fromarray(out).save(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
