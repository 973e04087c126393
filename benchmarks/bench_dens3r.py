"""Dens3R inference benchmark: latency / memory at 512 and 1024 px, eager vs torch.compile, bf16, and a check
that RoPE position interpolation keeps the 1024-px output consistent with the 512-px one on synthetic scenes.

    python3 benchmarks/bench_dens3r.py                         # GPU: dens3r_vitl16, 512 + 1024 px, bf16
    python3 benchmarks/bench_dens3r.py --device cpu --tiny     # CPU smoke test (dens3r_tiny, 64 + 128 px, eager)

Writes one JSON line per measurement to benchmarks/results/dens3r.jsonl (with command, machine, versions).
Absolute numbers count only from a GPU. ``--checkpoint`` loads weights (ours, or an upstream .pth converted on
the fly); without it the weights are random, which is fine for latency but makes the PI consistency check a mere
code-path exercise (an untrained network has learned nothing about positions; ``--scenes 0`` skips it). The check on
a trained model is ``benchmarks/dens3r_pi_consistency.py``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from datamodules.synthetic.geometry import random_cameras, random_scene, intrinsics, render  # noqa: E402
from tasks.metrics.geometry import depth_metrics  # noqa: E402


def machine() -> dict:
    info = {"host": platform.node(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        import timm

        info["timm"] = timm.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version())
    return info


def build(name: str, device: str, checkpoint: str | None, **kw) -> torch.nn.Module:
    model = zoo.create_model(name, **kw)
    if checkpoint:
        try:
            zoo.load_checkpoint(model, checkpoint)
        except zoo.PretrainedWeightsError:
            from zoo.dens3r import convert_official_checkpoint

            model.load_state_dict(convert_official_checkpoint(checkpoint, shared_decoder=model.dec_blocks2 is None))
    return model.to(device).eval()


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def latency(fn, x1, x2, device: str, warmup: int, iters: int) -> tuple[float, float]:
    for _ in range(warmup):
        fn(x1, x2)
    sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn(x1, x2)
        sync(device)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1e3), float(np.std(times) * 1e3)


@torch.no_grad()
def consistency(model: torch.nn.Module, sizes: tuple[int, int], device: str, dtype: torch.dtype | None,
                n_scenes: int, seed: int = 0) -> dict:
    """Render the same scenes at the low and high size, predict depth at both, compare on the low grid."""
    lo, hi = sizes
    rel, ab_lo, ab_hi = [], [], []
    for k in range(n_scenes):
        rng = np.random.default_rng(seed + k)
        scene = random_scene(rng)
        c2w = random_cameras(rng, 1)[0]
        imgs, gts = [], []
        for s in (lo, hi):
            v = render(scene, intrinsics(s, s), c2w, s, s)
            imgs.append(torch.tensor(v["image"].transpose(2, 0, 1) * 2 - 1)[None].to(device))
            gts.append(torch.tensor(v["depth"])[None])
        with torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            o_lo, o_hi = model(imgs[0]), model(imgs[1])
        d_lo, d_hi = o_lo.depth.float().cpu(), o_hi.depth.float().cpu()
        # agreement of the two predictions on the low grid, on the distance |P| (positive even for random weights),
        # after least-squares scale-and-shift alignment of high onto low
        r_lo = o_lo.view1.pts3d.float().norm(dim=-1).cpu()
        r_hi = F.interpolate(o_hi.view1.pts3d.float().norm(dim=-1)[:, None].cpu(), size=(lo, lo), mode="area")[:, 0]
        rel.append(float(depth_metrics(r_hi, r_lo, align="scale_shift", min_depth=1e-6, max_depth=1e6)["abs_rel"]))
        ab_lo.append(float(depth_metrics(d_lo, gts[0])["abs_rel"]))
        ab_hi.append(float(depth_metrics(d_hi, gts[1])["abs_rel"]))
    return {"hi_vs_lo_dist_abs_rel": float(np.mean(rel)), "abs_rel_lo": float(np.mean(ab_lo)),
            "abs_rel_hi": float(np.mean(ab_hi))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tiny", action="store_true", help="dens3r_tiny at 64/128 px (CPU smoke test)")
    ap.add_argument("--model", default=None, help="registered model (default dens3r_vitl16, or dens3r_tiny)")
    ap.add_argument("--sizes", type=int, nargs="+", default=None, help="square input sizes (default 512 1024)")
    ap.add_argument("--batch", type=int, default=1, help="image pairs per forward")
    ap.add_argument("--modes", nargs="+", default=None, choices=["eager", "compile"],
                    help="default: eager + compile (GPU), eager only with --tiny (inductor on a CPU takes minutes)")
    ap.add_argument("--dtype", default=None, choices=["bf16", "fp16", "fp32"], help="autocast dtype (GPU: bf16)")
    ap.add_argument("--warmup", type=int, default=None)
    ap.add_argument("--iters", type=int, default=None)
    ap.add_argument("--scenes", type=int, default=None, help="synthetic scenes for the PI consistency check")
    ap.add_argument("--checkpoint", default=None, help="weights: our safetensors/.ckpt or an upstream .pth")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dens3r.jsonl"))
    a = ap.parse_args()
    gpu = a.device.startswith("cuda")
    name = a.model or ("dens3r_tiny" if a.tiny else "dens3r_vitl16")
    sizes = a.sizes or ([64, 128] if a.tiny else [512, 1024])
    dt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[a.dtype or ("bf16" if gpu else "fp32")]
    warmup, iters = a.warmup or (2 if a.tiny else 5), a.iters or (3 if a.tiny else 20)
    scenes = a.scenes if a.scenes is not None else (2 if a.tiny else 8)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    common = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]), "model": name,
              "machine": machine(), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "dtype": a.dtype or ("bf16" if gpu else "fp32"), "device": a.device,
              "weights": a.checkpoint or "random"}
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []

    def emit(row):  # appended as soon as measured: a run cut at its time limit keeps what it finished
        rows.append({**common, **row})
        with out.open("a") as f:
            f.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps(row), flush=True)

    torch.manual_seed(0)
    model = build(name, a.device, a.checkpoint)
    params = sum(p.numel() for p in model.parameters())
    for mode in a.modes or (["eager"] if a.tiny else ["eager", "compile"]):
        fn = torch.compile(model) if mode == "compile" else model
        for s in sizes:
            x1 = torch.randn(a.batch, 3, s, s, device=a.device)
            x2 = torch.randn(a.batch, 3, s, s, device=a.device)
            if gpu:
                torch.cuda.reset_peak_memory_stats()

            def run(u, v):
                with torch.autocast(a.device.split(":")[0], dtype=dt, enabled=dt is not None):
                    return fn(u, v)

            try:
                ms, sd = latency(run, x1, x2, a.device, warmup, iters)
                row = {"bench": "latency", "mode": mode, "size": s, "batch": a.batch, "ms_per_forward": round(ms, 3),
                       "ms_std": round(sd, 3), "pairs_per_s": round(a.batch / ms * 1e3, 3), "params": params}
            except Exception as e:  # noqa: BLE001 - e.g. compile unavailable: record it, keep going
                row = {"bench": "latency", "mode": mode, "size": s, "batch": a.batch, "error": repr(e)[:300]}
            if gpu:
                row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            emit(row)
    # position interpolation consistency: PI on (paper) vs off (plain RoPE), same weights
    lo, hi = min(sizes), max(sizes)
    for pi in (True, False) if scenes else ():
        model.rope.interpolate = pi
        row = {"bench": "pi_consistency", "rope_interpolate": pi, "sizes": [lo, hi], "scenes": scenes,
               **consistency(model, (lo, hi), a.device, dt, scenes)}
        emit(row)
    model.rope.interpolate = True
    print(f"wrote {len(rows)} rows to {out}")


if __name__ == "__main__":
    main()
