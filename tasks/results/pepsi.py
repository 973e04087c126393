"""PEPSI / Diet-PEPSI results recipe (issue 16): trained on real photographs, judged on held-out photographs beside
OpenCV's classical inpainting.

    python -m tasks.results.pepsi --config configs/pepsi/results_cpu.yaml [--out DIR]

Trains each generator of the config's ``models`` (PEPSI, Diet-PEPSI) with ``tasks.inpainting.InpaintingTask`` on
random crops of the training photographs (``datamodules.inpainting.PhotoCropsInpaintingDataModule``; the checkpoint
with the best validation hole PSNR on the VALIDATION photographs is kept), then inpaints fixed crops of the TEST
photographs, which no training or validation step saw, once per mask kind of ``eval.masks`` (free-form strokes as
in training, and S/2 x S/2 squares), beside baselines on the very same images and masks:

- OpenCV ``cv2.inpaint`` with ``INPAINT_TELEA`` and with ``INPAINT_NS`` (Navier-Stokes), radius ``eval.cv2_radius``;
- mean fill: the hole gets the mean colour of the image's known pixels.

Every result is quantised to 8 bits and composited (known pixels kept) before scoring. Metrics, per image then
averaged: PSNR over the hole pixels only (``tasks.inpainting.psnr_hole_per_image``), SSIM of the whole composite
(torchmetrics, Gaussian 11 / 1.5, valid positions: ``tasks.inpainting.ssim_per_image``) and the hole L1. No
perceptual metric: torchmetrics' LPIPS needs its pretrained AlexNet/VGG weights downloaded, which is not possible
here (offline). Writes ``results.md``, ``results.json`` and ``inpainted_vs_opencv.png``. ``--checkpoint NAME=PATH``
evaluates a trained InpaintingTask checkpoint instead of training that model.
"""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.results._report import checkout_commit, prepare_run, runner_parser
from tasks.results.ppgflowecg import _machine

__all__ = ["cv2_inpaint", "evaluate", "mean_fill", "run", "score", "to_uint8"]


# ------------------------------------------------------------------------------------------------ baselines
def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) in [-1, 1] → (B, H, W, 3) uint8 (round to the nearest 8-bit level)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def cv2_inpaint(images: np.ndarray, holes: np.ndarray, method: str = "telea", radius: int = 3) -> np.ndarray:
    """OpenCV's classical inpainting of (B, H, W, 3) uint8 RGB images; ``holes`` (B, H, W), nonzero = hole.
    ``method``: 'telea' (``cv2.INPAINT_TELEA``, fast marching) or 'ns' (``cv2.INPAINT_NS``, Navier-Stokes)."""
    import cv2

    flag = {"telea": cv2.INPAINT_TELEA, "ns": cv2.INPAINT_NS}[method]
    return np.stack([cv2.inpaint(np.ascontiguousarray(im), (h > 0).astype(np.uint8) * 255, radius, flag)
                     for im, h in zip(images, holes)])


def mean_fill(images: np.ndarray, holes: np.ndarray) -> np.ndarray:
    """The trivial baseline: each hole pixel gets the per-channel mean of the image's known pixels."""
    out = images.copy()
    for im, h in zip(out, holes > 0):
        known = im[~h]
        im[h] = np.round(known.mean(0)).astype(np.uint8) if len(known) else 128
    return out


# ------------------------------------------------------------------------------------------------ scoring
def score(pred: np.ndarray, truth: np.ndarray, holes: np.ndarray) -> dict[str, np.ndarray]:
    """Per-image hole PSNR (dB), SSIM (whole composite) and hole L1 of uint8 (B, H, W, 3) results; the known pixels of
    ``pred`` are replaced by the truth first (every method is scored on its composite)."""
    from tasks.inpainting import psnr_hole_per_image, ssim_per_image

    h = torch.from_numpy((holes > 0).astype(np.float32))[:, None]
    p = torch.from_numpy(pred).permute(0, 3, 1, 2).float() / 255.0
    t = torch.from_numpy(truth).permute(0, 3, 1, 2).float() / 255.0
    p = p * h + t * (1 - h)
    psnr, has = psnr_hole_per_image(p, t, h)
    l1 = ((p - t).abs() * h).sum(dim=(1, 2, 3)) / (3 * h.sum(dim=(1, 2, 3))).clamp_min(1.0)
    return {"psnr_hole": psnr[has].numpy(), "ssim": ssim_per_image(p, t).numpy(), "l1_hole": l1[has].numpy()}


# ------------------------------------------------------------------------------------------------ training
def train_model(name: str, task_kwargs: dict[str, Any], dm: Any, trainer_kwargs: dict[str, Any], out: Path,
                monitor: str = "val/psnr_hole") -> Path:
    """Fit an InpaintingTask, keeping the checkpoint with the best ``monitor`` on the validation photographs."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import ModelCheckpoint

    from tasks.inpainting import InpaintingTask

    folder = out / name
    ckpt = ModelCheckpoint(dirpath=str(folder / "checkpoints"), monitor=monitor, mode="max", save_top_k=1,
                           filename="best")
    kw = {"accelerator": "auto", "devices": 1, "enable_model_summary": False, "enable_progress_bar": False,
          "num_sanity_val_steps": 0, "logger": pl.loggers.CSVLogger(str(folder), name="", version=""),
          **trainer_kwargs}
    trainer = pl.Trainer(default_root_dir=str(folder), callbacks=[ckpt], **kw)
    trainer.fit(InpaintingTask(**task_kwargs), datamodule=dm)
    return Path(ckpt.best_model_path)


def _val_curve(folder: Path, key: str) -> list[tuple[int, float]]:
    import csv

    f = folder / "metrics.csv"
    if not f.is_file():
        return []
    return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f.open()) if r.get(key)]


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(models: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]], dm: Any,
             masks: Sequence[str], radius: int = 3, batch_size: int = 16) -> tuple[list[dict[str, Any]], dict]:
    """Score each model (``fn(image, mask) -> composite`` in [-1, 1]) and the baselines on the test crops, once per
    mask kind. Returns the table rows and, per mask kind, the images of the first batch for the figure."""
    rows, samples = [], {}
    for kind in masks:
        ds = dm.eval_dataset("test", kind)
        scores: dict[str, dict[str, list[np.ndarray]]] = {}
        for start in range(0, len(ds), batch_size):
            items = [ds[i] for i in range(start, min(len(ds), start + batch_size))]
            image = torch.stack([it["image"] for it in items])
            mask = torch.stack([it["mask"] for it in items])
            truth, holes = to_uint8(image), mask[:, 0].numpy()
            masked = truth.copy()
            masked[holes > 0] = 0
            preds = {n: to_uint8(fn(image, mask)) for n, fn in models.items()}
            preds |= {"OpenCV Telea (cv2.INPAINT_TELEA)": cv2_inpaint(masked, holes, "telea", radius),
                      "OpenCV Navier-Stokes (cv2.INPAINT_NS)": cv2_inpaint(masked, holes, "ns", radius),
                      "mean fill (known-pixel mean colour)": mean_fill(masked, holes)}
            if start == 0:
                samples[kind] = {"masked": masked, "truth": truth, **preds}
            for n, p in preds.items():
                for k, v in score(p, truth, holes).items():
                    scores.setdefault(n, {}).setdefault(k, []).append(v)
        for n, sc in scores.items():
            vals = {k: np.concatenate(v) for k, v in sc.items()}
            rows.append({"mask": kind, "method": n, "kind": "ours" if n in models else "baseline",
                         "images": int(len(vals["ssim"])), "hole_frac": float(np.mean([
                             ds[i]["mask"].mean().item() for i in range(len(ds))])),
                         **{k: float(v.mean()) for k, v in vals.items()},
                         **{f"{k}_sem": float(v.std(ddof=1) / np.sqrt(len(v))) if len(v) > 1 else 0.0
                            for k, v in vals.items()}})
    return rows, samples


def _plot(path: Path, samples: dict[str, dict[str, np.ndarray]], k: int = 3) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    kinds = list(samples)
    cols = [c for c in samples[kinds[0]] if c != "truth"] + ["truth"]
    n = min(k, len(samples[kinds[0]]["truth"]))
    fig, axes = plt.subplots(n * len(kinds), len(cols), figsize=(1.3 * len(cols), 1.35 * n * len(kinds)),
                             squeeze=False)
    for a, kind in enumerate(kinds):
        for i in range(n):
            for j, c in enumerate(cols):
                ax = axes[a * n + i, j]
                ax.imshow(samples[kind][c][i])
                ax.set_xticks([])
                ax.set_yticks([])
                if a * n + i == 0:
                    ax.set_title(c.split(" (")[0].replace("OpenCV ", "cv2 "), fontsize=6)
            axes[a * n + i, 0].set_ylabel(kind, fontsize=6)
    fig.tight_layout(pad=0.2)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    from PIL import Image  # a 256-colour palette keeps the photo grid small enough to commit

    with Image.open(path) as im:
        small = im.convert("RGB").quantize(256)
    small.save(path, optimize=True)


def write_table(rows: list[dict[str, Any]], out: Path, meta: dict[str, Any], extra: dict[str, Any]) -> str:
    lines = [f"Inpainting on held-out real photographs ({meta['split']}); {meta['image_size']}x{meta['image_size']} "
             "crops, 8-bit, scored on the composite", "",
             "| masks | method | hole PSNR (dB) ↑ | SSIM ↑ | hole L1 ↓ | images |",
             "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['mask']} ({100 * r['hole_frac']:.0f} % hole) | {r['method']} | {r['psnr_hole']:.2f} ± "
                     f"{r['psnr_hole_sem']:.2f} | {r['ssim']:.4f} | {r['l1_hole']:.4f} | {r['images']} |")
    lines += ["", "± = standard error over images. LPIPS: not computed (torchmetrics' LPIPS downloads pretrained "
              "weights; offline here).", "",
              f"Command: `{meta['command']}`; machine: {meta['machine']}; commit {meta['commit']}; "
              f"wall {meta['wall_s']:.0f} s."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({"rows": rows, **extra, "meta": meta}, indent=2, default=str))
    return text


# ------------------------------------------------------------------------------------------------ entry point
def smoke(cfg: dict[str, Any]) -> None:
    """Shrink a recipe in place to a CPU smoke run: 2 iterations per model, float32, 2 crops per eval photo."""
    cfg["training"] |= {"accelerator": "cpu", "precision": "32-true", "max_steps": 4, "val_check_interval": 2}
    cfg["dataset"] |= {"num_workers": 0, "train_samples": 4 * cfg["dataset"].get("batch_size", 8),
                    "eval_crops_per_photo": 2}


def run(argv: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Train the configured generators (unless given checkpoints), evaluate them and the baselines on the held-out
    photographs, write the table and the figure."""
    import pytorch_lightning as pl
    from datamodules.inpainting import PhotoCropsInpaintingDataModule
    from tasks.inpainting import InpaintingTask

    p = runner_parser("pepsi", __doc__)
    p.add_argument("--checkpoint", action="append", default=[], help="NAME=PATH: evaluate this checkpoint of model "
                   "NAME (a key of the config's models) instead of training it; repeatable")
    a = p.parse_args(list(argv))
    cfg, out = prepare_run(a, "pepsi", smoke)
    t0 = time.time()
    given = dict(c.split("=", 1) for c in a.checkpoint)
    dm = PhotoCropsInpaintingDataModule(**cfg["dataset"])
    dm.setup("fit")
    models, curves, best = {}, {}, {}
    for name, spec in cfg["models"].items():
        pl.seed_everything(int(cfg.get("seed", 0)), workers=True)
        path = Path(given[name]) if name in given else train_model(name, spec["task"], dm, cfg["training"], out)
        task = InpaintingTask.load_from_checkpoint(str(path), map_location="cpu", weights_only=True).eval().float()
        label = spec.get("label", name)
        models[label] = (lambda net: lambda im, m: net(im, m).composite)(task.net)
        curves[name] = _val_curve(out / name, "val/psnr_hole")
        best[name] = str(path)
    ev = cfg.get("eval", {})
    masks = ev.get("masks", ["free_form", "square_random"])
    rows, samples = evaluate(models, dm, masks, int(ev.get("cv2_radius", 3)))
    _plot(out / "inpainted_vs_opencv.png", samples, int(ev.get("num_plot", 3)))
    command = f"python -m tasks.results.pepsi --config {a.config}" + (" --tiny" if a.tiny else "")
    meta = {"command": command, "machine": _machine(),
            "commit": checkout_commit(), "wall_s": time.time() - t0, "split": cfg.get("split_rule", "held-out photographs"),
            "image_size": dm.image_size, "config": cfg}
    print(write_table(rows, out, meta, {"val_curves": curves, "checkpoints": best}))
    return rows


if __name__ == "__main__":
    run(__import__("sys").argv[1:])
