"""UniPic benchmarks: generation time / peak memory, per-stage training step (eager vs compiled), and the LLM-bridge vs
MAR-only comparison on the scene set (SYNTHETIC). Writes one JSON per run with the command, machine and versions,
rewritten after each finished row (a timeout keeps the finished ones).

    python benchmarks/bench_unipic.py gen   --model unipic_1p5b --size 1024 --num-iter 64 --out gen.json
    python benchmarks/bench_unipic.py train --model unipic_1p5b --stages stage1_pt stage3_ct --compile regional
    python benchmarks/bench_unipic.py compare --model unipic_tiny --epochs 4 --scenes 600 --arms llm bag refs
    python benchmarks/bench_unipic.py gen --tiny   (the CPU smoke mode: tiny model, tiny sizes)

Weights are random (no released weights are fetched): times and memory are the architecture's, not a quality number.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: paper-size builds here use a random-init Qwen2.5 config and the byte tokenizer (no download)
OFFLINE_KW = {"tokenizer": "bytes"}


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _meta(args: argparse.Namespace) -> dict:
    from tasks.bench import git_commit

    return {"command": " ".join(sys.argv), "git_commit": git_commit()[0][:12], "machine": platform.node(),
            "torch": torch.__version__,
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def bench_gen(args: argparse.Namespace) -> dict:
    import zoo
    from zoo.unipic import generate_images

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model = zoo.create_model(args.model, **OFFLINE_KW).to(device, dtype).eval()
    size = args.size or model.image_size
    out = {"model": args.model, "size": size, "num_iter": args.num_iter, "cfg": args.cfg, "dtype": str(dtype)}
    for rep in range(2):  # the first run warms up kernels
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        _sync(device)
        t = time.perf_counter()
        img = generate_images(model, ["a red circle left of a blue square"] * args.batch, args.num_iter, args.cfg,
                              image_size=size)
        _sync(device)
        out[f"seconds_run{rep}"] = time.perf_counter() - t
    out["image_shape"] = list(img.shape)
    if device == "cuda":
        out["peak_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return out


#: --compile choices -> the variants measured, in order (``both``: eager, then regional)
COMPILE_VARIANTS = {"off": ("eager",), "regional": ("regional",), "whole": ("whole",), "both": ("eager", "regional")}
_TASK_COMPILE = {"eager": False, "regional": "regional", "whole": True}


def bench_train(args: argparse.Namespace, save: Any = None) -> dict:
    """Per stage and compile variant: build the task (same seed), then ``--steps`` AdamW steps on one fixed example
    batch with the RNGs reseeded, so every variant sees the same masks, timesteps and prompt dropout and its losses
    can be compared with eager's. ``first_step_s`` holds the compile (regional: each block class once, fwd + bwd), a
    later step a recompile (the negative prompt's other sequence length makes the LLM layers' shapes dynamic);
    ``compile_overhead_s`` sums every step's time over the median; ``step_s_median`` is over the steps from the third
    on. ``save(result)`` is called after every row."""
    import pytorch_lightning as pl

    from tasks.bench import load_config
    from tasks.unipic import UniPicTask

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.fallback_random:  # compiled dropout draws eager's numbers (exact loss comparison; slower kernels)
        import torch._inductor.config as inductor_config

        inductor_config.fallback_random = True
    results: dict[str, dict] = {}
    out = {"model": args.model, "batch": args.batch, "results": results}
    for stage in args.stages:
        init = dict(load_config(ROOT / f"configs/unipic/{stage}.yaml")["model"]["init_args"])
        init.update(model=args.model, init_from=None, model_kwargs=dict(OFFLINE_KW))
        for variant in COMPILE_VARIANTS[args.compile]:
            t0 = time.perf_counter()
            torch.manual_seed(0)
            task = UniPicTask(**{**init, "compile": _TASK_COMPILE[variant]}).to(device)
            task.train()
            params = [p for p in task.net.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-5, betas=(0.9, 0.95), eps=1e-15)
            batch = task.example_batch(args.batch)
            task.log_dict = lambda *a, **k: None  # noqa: E731
            _sync(device)
            build_s = time.perf_counter() - t0
            times, losses = [], []
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            pl.seed_everything(1, verbose=False)  # prompt dropout, MAR orders / masks, timesteps
            for i in range(args.steps):
                _sync(device)
                t = time.perf_counter()
                with torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda"):
                    loss = task.training_step(batch, i)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                _sync(device)
                times.append(time.perf_counter() - t)
                losses.append(float(loss.detach()))
            warm = times[min(2, len(times) - 1):]
            median = sorted(warm)[len(warm) // 2]
            key = f"{stage}/{variant}"
            results[key] = {
                "compile": variant, "build_s": build_s, "first_step_s": times[0], "step_s_median": median,
                "first_step_minus_median_s": times[0] - median,
                "compile_overhead_s": sum(max(0.0, t - median) for t in times),  # the first step's + recompiles'
                "step_s": times, "losses": losses,
                "regions": len(task._regions), "trainable_m": sum(p.numel() for p in params) / 1e6,
                "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device == "cuda" else None}
            print(key, json.dumps(results[key]), flush=True)
            if save is not None:
                save(out)
            del task, opt, params
            if device == "cuda":
                torch.cuda.empty_cache()
    return out


def _judge_references(dm, size: int) -> dict:
    """The judge on two reference rows of the same held-out test set: the real rendered images (the ground truth, at
    the models' ``size`` as the models see them, and at their native size) and uniform-noise images (seeded)."""
    import numpy as np
    from PIL import Image

    from datamodules.scenes import Scene
    from tasks.metrics.scene_judge import SceneJudgeScore, judge_edit

    t2i, edit = dm.sets["test"]["t2i"], dm.sets["test"].get("edit")
    rng = np.random.default_rng(0)

    def pil(t: torch.Tensor) -> Image.Image:
        return Image.fromarray(((t.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy())

    sources = {"ground_truth": lambda ds, i, key: pil(ds[i][key]),
               "ground_truth_native": lambda ds, i, key: Image.open(ds.folder / ds.rows[i][key]).convert("RGB"),
               "noise": lambda ds, i, key: Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))}
    out = {}
    for name, image in sources.items():
        metric = SceneJudgeScore()
        for i, r in enumerate(t2i.rows):
            metric.update([image(t2i, i, "image")], [r["category"]], prompts=[r["caption"]])
        row = {f"test/geneval_{k}": float(v) for k, v in metric.compute().items()}
        if edit is not None:
            ok = [judge_edit(image(edit, i, "target"), Scene.from_dict(r["target_scene"])) for i, r in
                  enumerate(edit.rows)]
            row["test/edit_acc"] = sum(ok) / len(ok)
        out[name] = row
        print(name, json.dumps(row), flush=True)
    return out


def bench_compare(args: argparse.Namespace, save: Any = None) -> dict:
    """Generation with the LLM bridge vs MAR-only ('bag' conditioning) on the same optimiser steps; GenEval-style judge
    on the held-out prompts of the scene set, edit accuracy, understanding exact-match (LLM only); the judge on the
    ground-truth test images and on uniform noise as reference rows (``refs``). ``--arms`` picks which of the three
    run (one device call each if need be); ``save(result)`` is called after each (an earlier ``--out`` file's arms are
    kept, so the arms of separate calls land in one file)."""
    import pytorch_lightning as pl

    from datamodules.unipic import UniPicDataModule
    from tasks.unipic import UniPicTask

    n_train, n_val, n_test = args.scenes, max(12, args.scenes // 10), args.test_scenes
    # the set's counts in the folder name: a folder written earlier with other counts is never silently reused
    root = Path(args.root or f"runs/unipic_bench/scenes_{n_train}-{n_val}-{n_test}_{args.scene_size}px")
    out = dict(args.previous or {})
    out.update(scenes={"train": n_train, "val": n_val, "test": n_test, "size": args.scene_size},
               image_size=args.image_size, eval_num_iter=args.num_iter, batch=args.batch, lr=args.lr)

    def datamodule(cond: str) -> UniPicDataModule:
        return UniPicDataModule(root=str(root), synthetic_scenes=True, scene_counts=(n_train, n_val, n_test),
                                image_size=args.image_size, batch_size=args.batch, scene_image_size=args.scene_size,
                                num_workers=args.workers,
                                tasks=("t2i", "edit", "vqa") if cond == "llm" else ("t2i", "edit"))

    for cond in [a for a in args.arms if a != "refs"]:
        pl.seed_everything(0)
        dm = datamodule(cond)
        kw = {} if cond == "llm" else {"conditioning": "bag", "understanding": "none"}
        kw.update(json.loads(args.model_kwargs))
        task = UniPicTask(model=args.model, model_kwargs=kw, lr=args.lr, schedule="constant", warmup_ratio=0.05,
                          loss_weights={"image2text": 0.01, "text2image": 1.0, "image_edit": 1.0},
                          eval_batches=10 ** 6, eval_num_iter=args.num_iter)
        # the same optimiser steps for both (an epoch of the combined loader follows its largest set: vqa for the LLM)
        steps = args.epochs * max(1, n_train // args.batch)
        tr = pl.Trainer(accelerator="auto", devices=1, max_steps=steps, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, num_sanity_val_steps=0,
                        limit_val_batches=0, precision="bf16-mixed" if torch.cuda.is_available() else "32-true")
        t = time.perf_counter()
        tr.fit(task, dm)
        merged = {"fit_s": time.perf_counter() - t, "steps": tr.global_step,
                  "train_loss_last": {k: float(v) for k, v in tr.callback_metrics.items() if k.startswith("train/")}}
        out[cond] = merged
        if save is not None:  # the trained arm's row before its (sampling) test phase
            save(out)
        t = time.perf_counter()
        for r in tr.test(task, dm, verbose=False):
            merged.update(r)
        merged["test_s"] = time.perf_counter() - t
        print(cond, json.dumps(merged), flush=True)
        if save is not None:
            save(out)
    if "refs" in args.arms:
        dm = datamodule("bag")
        dm.setup("test")
        out.update(_judge_references(dm, args.image_size))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["gen", "train", "compare"])
    p.add_argument("--model", default="unipic_tiny")
    p.add_argument("--tiny", action="store_true", help="CPU smoke mode: unipic_tiny, small sizes, few steps")
    p.add_argument("--size", type=int, default=None)
    p.add_argument("--num-iter", type=int, default=64)
    p.add_argument("--cfg", type=float, default=3.0)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--stages", nargs="+", default=["stage1_pt", "stage2_align", "stage3_ct", "stage4_sft"])
    p.add_argument("--compile", choices=list(COMPILE_VARIANTS), default="both",
                   help="train: off (eager), regional (each repeated block compiled in place, the task's "
                   "compile='regional'), whole (torch.compile of the network's forward), both (eager, then regional)")
    p.add_argument("--fallback-random", action="store_true",
                   help="train: compiled dropout draws eager's random numbers (torch._inductor fallback_random), "
                   "for an exact eager vs compiled loss comparison")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--scenes", type=int, default=600)
    p.add_argument("--test-scenes", type=int, default=120)
    p.add_argument("--scene-size", type=int, default=64)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--arms", nargs="+", choices=["llm", "bag", "refs"], default=["llm", "bag", "refs"],
                   help="compare: which of the LLM-bridge arm, the MAR-only arm and the judge's reference rows run")
    p.add_argument("--workers", type=int, default=0, help="compare: data-loader workers (PNG decoding off the main "
                   "process; the same batches in the same order)")
    p.add_argument("--model-kwargs", default="{}", help="JSON model_kwargs for compare (a larger model on the GPU)")
    p.add_argument("--root", default=None, help="compare: the scene set's folder (default: one named by its counts)")
    p.add_argument("--out", default=None, help="JSON file, rewritten after every finished row (a timeout keeps them)")
    args = p.parse_args()
    if args.tiny:
        args.model, args.num_iter, args.steps, args.epochs, args.scenes, args.test_scenes = \
            "unipic_tiny", 2, max(2, min(args.steps, 3)), 1, 32, 12
    head = {"mode": args.mode, **_meta(args)}
    args.previous = None
    if args.mode == "compare" and args.out and Path(args.out).is_file():  # arms of an earlier call (same command)
        prev = json.loads(Path(args.out).read_text())
        args.previous = {k: v for k, v in prev.items() if k in ("llm", "bag", "ground_truth", "ground_truth_native",
                                                                "noise")}

    def save(res: dict) -> str:
        text = json.dumps({**head, **res}, indent=1, default=str)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text + "\n")
        return text

    if args.mode == "gen":
        res = bench_gen(args)
    else:
        res = {"train": bench_train, "compare": bench_compare}[args.mode](args, save)
    print(save(res))


if __name__ == "__main__":
    main()
