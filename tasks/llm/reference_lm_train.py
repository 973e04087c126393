"""Train the reference LM (``zoo.llm.reference_lm``) on CPython stdlib text; one script for both sizes.

    python -m tasks.llm.reference_lm_train --size tiny --out runs/reference_lm/tiny          # a CPU, ~1 min
    python -m tasks.llm.reference_lm_train --size base --out runs/reference_lm/base          # one H200, minutes

The output folder is a Hugging Face model folder (``save_pretrained``: ``config.json`` + ``model.safetensors``) plus
``sharezoo_tokenizer.json`` (the GPT-2 BPE, compact ids), ``stdlib_manifest.json`` (Python version, every document's
sha256 and split) and ``train_log.json`` (recipe, losses, held-out perplexity, time, versions). Load it with
``zoo.llm.build_causal_lm(folder)`` and ``datamodules.stdlib_text.ReferenceTokenizer.from_folder(folder)``.

:func:`cached_reference_lm` trains once per recipe + corpus and keeps the folder under
``cache_dir('derived/reference_lm/<size>-<hash>')`` (the tests' session fixture uses it).

A plain PyTorch loop (AdamW, linear warm-up + cosine decay, gradient clipping at 1, bf16 autocast on CUDA): the
recipe is fixed data, not a Lightning task, so the same few lines run on a laptop and on the H200.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from datamodules.stdlib_text import StdlibTextDataModule, manifest_key
from zoo import cache_dir
from zoo.llm.reference_lm import TRAINING_RECIPES, build_reference_lm, reference_lm_config

__all__ = ["cached_reference_lm", "evaluate_perplexity", "train_reference_lm"]


def _lr_at(step: int, steps: int, warmup: int, lr: float) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.1 * lr + 0.9 * lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))


@torch.no_grad()
def evaluate_perplexity(model: torch.nn.Module, loader, device: torch.device, max_batches: int | None = None) -> float:
    """Token-level perplexity of ``model`` over ``loader``'s windows (each window scored on its own)."""
    model.eval()
    nll, count = 0.0, 0
    for i, batch in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        batch = batch.to(device)
        with torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda"):
            logits = model(batch[:, :-1]).logits.float()
        nll += torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten(), reduction="sum").item()
        count += batch[:, 1:].numel()
    model.train()
    return math.exp(nll / max(count, 1))


def train_reference_lm(out: str | os.PathLike, size: str = "tiny", device: str | None = None, compile: bool = False,
                       val_batches: int | None = 20, log_every: int = 50, time_budget_s: float | None = None,
                       **recipe: Any) -> Path:
    """Train a reference LM of ``size`` with its recipe (``TRAINING_RECIPES[size]`` updated by ``recipe``); returns
    the saved folder.

    Args:
        out: the output model folder (replaced if it exists).
        size: ``tiny`` or ``base``.
        device: ``cuda`` / ``cpu``; None: CUDA when available.
        compile: ``torch.compile`` the model for training.
        val_batches: held-out batches for the final perplexity (None: all).
        log_every: print the loss every this many steps.
        time_budget_s: wall-clock budget of the training loop: after 30 timed steps (compile excluded) the number of
            steps is lowered to what fits, and the cosine schedule is re-planned over it (``train_log.json`` records
            the steps planned and run). None: the recipe's steps.
        recipe: overrides of the recipe fields (``steps``, ``lr``, ``batch_size``, ``seq_len``, ...).
    """
    rec = {**TRAINING_RECIPES[size], **recipe}
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(rec["seed"])
    dm = StdlibTextDataModule(seq_len=rec["seq_len"], batch_size=rec["batch_size"],
                              train_samples=rec["steps"] * rec["batch_size"], val_fraction=rec["val_fraction"],
                              vocab_limit=rec["vocab_limit"], max_train_tokens=rec["max_train_tokens"],
                              seed=rec["seed"])
    dm.prepare_data()
    model = build_reference_lm(size, vocab_size=dm.vocab_size, max_position_embeddings=max(
        reference_lm_config(size)["max_position_embeddings"], rec["seq_len"])).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": rec["weight_decay"]}, {"params": no_decay,
                             "weight_decay": 0.0}], lr=rec["lr"], betas=(0.9, 0.95), fused=dev.type == "cuda")
    step_model = torch.compile(model) if compile else model
    losses, t0 = [], time.perf_counter()
    planned, steps, t_probe = rec["steps"], rec["steps"], None
    model.train()
    for step, batch in enumerate(dm.train_dataloader()):
        if step >= steps:
            break
        if time_budget_s is not None and step in (5, 35):  # steps 5..35 timed: compile and warm-up excluded
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            if step == 5:
                t_probe = time.perf_counter()
            else:
                per_step = (time.perf_counter() - t_probe) / 30
                fit = int((time_budget_s - (time.perf_counter() - t0)) / per_step) + step
                if fit < steps:
                    steps = max(fit, step + 1)
                    print(f"time budget {time_budget_s:.0f}s at {per_step * 1e3:.0f} ms/step: {steps} of "
                          f"{planned} steps", flush=True)
        for group in opt.param_groups:
            group["lr"] = _lr_at(step, steps, rec["warmup"], rec["lr"])
        batch = batch.to(dev, non_blocking=True)
        with torch.autocast(dev.type, torch.bfloat16, enabled=dev.type == "cuda"):
            logits = step_model(batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            losses.append((step, loss.item()))
            print(f"step {step}/{steps} loss {loss.item():.3f} {time.perf_counter() - t0:.0f}s", flush=True)
    train_s = time.perf_counter() - t0
    val_ppl = evaluate_perplexity(model, dm.val_dataloader(), dev, val_batches)
    print(f"held-out perplexity {val_ppl:.2f} ({n_params / 1e6:.1f}M params, {train_s:.0f}s)", flush=True)
    folder = Path(out)
    if folder.exists():
        shutil.rmtree(folder)
    model.float().cpu().save_pretrained(folder)
    dm.tokenizer.save(folder)
    (folder / "stdlib_manifest.json").write_text(json.dumps(dm.corpus.manifest, indent=1))
    log = {"size": size, "recipe": rec, "steps_planned": planned, "steps_run": min(steps, step + 1),
           "time_budget_s": time_budget_s, "params": n_params, "train_seconds": train_s, "losses": losses,
           "val_perplexity": val_ppl, "val_batches": val_batches, "device": str(dev),
           "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
           "torch": torch.__version__, "python": sys.version, "train_tokens": int(len(dm.corpus.train)),
           "val_tokens": int(len(dm.corpus.val)), "corpus_key": manifest_key(dm.corpus.manifest)}
    (folder / "train_log.json").write_text(json.dumps(log, indent=1))
    return folder


def recipe_key(size: str, **recipe: Any) -> str:
    """Hash of what a trained reference LM depends on: its size's model config, its recipe and this Python's
    version (the corpus is this interpreter's stdlib)."""
    blob = json.dumps({"config": reference_lm_config(size), "recipe": {**TRAINING_RECIPES[size], **recipe},
                       "python": sys.version, "v": 1}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def cached_reference_lm(size: str = "tiny", cache: str | os.PathLike | None = None, **recipe: Any) -> Path:
    """A trained reference LM folder, trained on first use and cached (keyed by :func:`recipe_key`).

    Args:
        size: ``tiny`` (CPU) or ``base``.
        cache: the cache root (None: ``cache_dir('derived/reference_lm')``).
        recipe: recipe overrides (part of the key).
    """
    root = Path(cache) if cache is not None else cache_dir("derived/reference_lm")
    folder = root / f"{size}-{recipe_key(size, **recipe)}"
    if (folder / "train_log.json").is_file():
        return folder
    tmp = root / f".{folder.name}.{os.getpid()}.tmp"
    train_reference_lm(tmp, size=size, device="cpu" if size == "tiny" else None, **recipe)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", default="tiny", choices=sorted(TRAINING_RECIPES))
    p.add_argument("--out", required=True, help="output model folder")
    p.add_argument("--device", default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the model for training")
    p.add_argument("--val-batches", type=int, default=50, help="held-out batches for the final perplexity (-1: all)")
    p.add_argument("--time-budget-s", type=float, default=None,
                   help="fit the training loop into this many seconds (fewer steps, schedule re-planned)")
    for k, v in TRAINING_RECIPES["base"].items():
        p.add_argument(f"--{k.replace('_', '-')}", type=type(v) if v is not None else int, default=None)
    a = p.parse_args(argv)
    recipe = {k: getattr(a, k) for k in TRAINING_RECIPES["base"] if getattr(a, k) is not None}
    train_reference_lm(a.out, a.size, a.device, a.compile, None if a.val_batches < 0 else a.val_batches,
                       time_budget_s=a.time_budget_s, **recipe)


if __name__ == "__main__":
    main()
