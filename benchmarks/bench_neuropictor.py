"""NeuroPictor at paper size: one training step (bf16, batch 16, 512 px) and DDIM + CFG sampling, eager vs compiled.

    python3 benchmarks/bench_neuropictor.py --benches train                 # GPU: fine-tuning step (see
    python3 benchmarks/bench_neuropictor.py --benches sample                # benchmarks/neuropictor_h200.sh)
    python3 benchmarks/bench_neuropictor.py --device cpu --tiny             # smoke test of the script on a CPU

``train``: one optimiser step of :class:`tasks.neuropictor.NeuroPictorTask` on the subject fine-tuning recipe
(``neuropictor_sd21``: 256x256 surface -> fMRI ViT (trainable), semantic network + 0.1 semantic MSE against the
frozen OpenCLIP ViT-H/14 text tower, ControlNet (trainable) on the frozen SD 2.1 UNet, the frozen VAE encoding the
512-px targets every step as the official LDM does; AdamW) — ``tasks.bench``'s ``train_step_fn`` on the task's
``example_batch``. Modes: ``eager``; ``compile`` = the task's ``compile=True`` (``torch.compile`` of the whole
network forward + backward, and, ``compile_vae``, the frozen VAE encoder compiled in place — it runs outside that
forward); ``regional`` = ``compile='regional'`` (the model's repeated blocks compiled in place, each block class once
per shape; automatic dynamic shapes off so each shape gets static kernels) + the VAE encoder. A ``_cl`` suffix
(``eager_cl``, ``compile_cl``, ``regional_cl``) adds the task's ``channels_last`` (UNet, ControlNet, VAE and their
inputs in NHWC). The optimiser is the task's AdamW, fused on CUDA unless ``--fused-adamw off``. Every row records
``channels_last``, ``fused_adamw``, ``compile_vae``.
``sample``: :func:`zoo.neuropictor.sample_images` — DDIM 50 steps, eta 0, CFG 5.0 (the paper's inference), VAE
decode included. Compiled: the UNet and the ControlNet compiled in place (``nn.Module.compile``); ``_cl`` as above.

Weights are random (the released checkpoints are not mirrored): speed does not depend on them. Every measurement is
appended as one JSON line with the command, machine, versions and commit to ``benchmarks/results/neuropictor.jsonl``
(``--out``), with ``impl: ours``. The official code (jingyanghuo/neuropictor) is timed beside it by
``neuropictor_official.py`` into the same file (``impl: official``; ``neuropictor_h200.sh official`` runs both).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

BASE_MODES = ("eager", "compile", "regional")
MODES = tuple(m + cl for m in BASE_MODES for cl in ("", "_cl"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="neuropictor_tiny, few iterations (smoke test)")
    p.add_argument("--model", default=None, help="registered model (default neuropictor_sd21; tiny: neuropictor_tiny)")
    p.add_argument("--benches", default="train,sample", help="comma-separated subset of train,sample")
    p.add_argument("--modes", default="eager,compile", help=f"comma-separated subset of {','.join(MODES)}")
    p.add_argument("--fused-adamw", default="auto", choices=["auto", "on", "off"],
                   help="the task's fused_adamw: auto = fused when the parameters are on CUDA")
    p.add_argument("--no-compile-vae", dest="compile_vae", action="store_false",
                   help="compiled modes leave the frozen VAE encoder eager (the task's compile_vae=False)")
    p.add_argument("--batch", type=int, default=16, help="training batch (paper: 16 per GPU)")
    p.add_argument("--sample-batch", type=int, default=None, help="images sampled at once (default 4; tiny: 2)")
    p.add_argument("--ddim-steps", type=int, default=None, help="DDIM steps (default 50, the paper's; tiny: 3)")
    p.add_argument("--guidance", type=float, default=5.0, help="classifier-free guidance scale (paper: 5.0)")
    p.add_argument("--precision", default=None, choices=["bf16-mixed", "32-true"],
                   help="autocast (default bf16-mixed on a GPU, 32-true on a CPU)")
    p.add_argument("--steps", type=int, default=None, help="timed training steps (default 20; tiny: 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up training steps (default 3; tiny: 1)")
    p.add_argument("--sample-iters", type=int, default=None, help="timed sampling runs (default 3; tiny: 1)")
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/neuropictor.jsonl; tiny: "
                   "a temporary file, so smoke numbers never land in the committed results)")
    a = p.parse_args(argv)
    a.model = a.model or ("neuropictor_tiny" if a.tiny else "neuropictor_sd21")
    a.sample_batch = a.sample_batch or (2 if a.tiny else 4)
    a.ddim_steps = a.ddim_steps or (3 if a.tiny else 50)
    a.steps = a.steps or (2 if a.tiny else 20)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 3)
    a.sample_iters = a.sample_iters or (1 if a.tiny else 3)
    if a.tiny and a.batch == 16:
        a.batch = 2
    from tasks.bench import results_path

    a.out = a.out or results_path("neuropictor", a.tiny, "bench_neuropictor")
    for name, allowed in (("benches", {"train", "sample"}), ("modes", set(MODES))):
        bad = set(getattr(a, name).split(",")) - allowed
        if bad:
            p.error(f"--{name}: unknown {sorted(bad)} (choose from {sorted(allowed)})")
    return a


def mode_options(mode: str) -> tuple[bool | str, bool]:
    """A mode -> (the task's ``compile`` for the training step, ``channels_last``)."""
    base = mode.removesuffix("_cl")
    return {"eager": False, "compile": True, "regional": "regional"}[base], mode.endswith("_cl")


def build_task(a: argparse.Namespace, device: torch.device, compile_train: bool | str,
               channels_last: bool = False) -> Any:
    """The fine-tuning task (sem_loss 0.1, no CFG masking) with its network on ``device``."""
    from tasks.neuropictor import NeuroPictorTask

    if compile_train == "regional":  # blocks of one class at several widths: one static graph per width
        import torch._dynamo

        cfg = torch._dynamo.config
        cfg.automatic_dynamic_shapes = False
        limit = "recompile_limit" if hasattr(cfg, "recompile_limit") else "cache_size_limit"  # renamed in torch 2.7
        setattr(cfg, limit, max(getattr(cfg, limit), 32))
    fused = {"auto": None, "on": True, "off": False}[a.fused_adamw]
    kw = dict(model=a.model, compile=compile_train, sem_loss_weight=0.1, uncond_prob=0.0, lr=1e-4, weight_decay=0.01,
              channels_last=channels_last, fused_adamw=fused, compile_vae=a.compile_vae)
    try:  # initialise directly on the GPU (2.4 G parameters: a CPU init takes minutes on few cores)
        with torch.device(device) if device.type == "cuda" else contextlib.nullcontext():
            task = NeuroPictorTask(**kw)
    except (RuntimeError, TypeError) as e:  # pragma: no cover - fall back to a CPU build
        print(f"note: building on {device} failed ({e}); building on the CPU", file=sys.stderr)
        task = NeuroPictorTask(**kw)
    return task.to(device)


def bench_train(a: argparse.Namespace, device: torch.device, mode: str) -> dict[str, Any]:
    from tasks.bench import time_steps, train_step_fn

    compile_train, channels_last = mode_options(mode)
    task = build_task(a, device, compile_train, channels_last)
    task.train()
    task.log_dict = lambda *args, **kwargs: None  # no Trainer attached
    step, _ = train_step_fn(task, a.batch, device, a.precision)
    r = time_steps(step, a.steps, a.warmup, device)
    net = task.net
    rec = {"bench": "train", "batch": a.batch, "image_size": net.image_size, **_switches(task),
           "params": sum(p.numel() for p in net.parameters()),
           "trainable_params": sum(p.numel() for p in task._trainable()), **r,
           "samples_per_s": a.batch / (r["step_ms_median"] / 1e3)}
    del task, step
    return rec


def bench_sample(a: argparse.Namespace, device: torch.device, mode: str) -> dict[str, Any]:
    from tasks.bench import autocast, time_steps
    from zoo.neuropictor import sample_images

    compiled, channels_last = mode_options(mode)
    task = build_task(a, device, compile_train=False, channels_last=channels_last)
    net = task.net.eval()
    if compiled:
        net.unet.compile()
        net.controlnet.compile()
    s = net.fmri_encoder.surface_size
    fmri = torch.randn(a.sample_batch, net.fmri_encoder.in_chans, s, s, device=device)

    @torch.inference_mode()
    def run() -> torch.Tensor:
        with autocast(device, a.precision):
            return sample_images(net, fmri, steps=a.ddim_steps, guidance_scale=a.guidance,
                                 generator=torch.Generator(device).manual_seed(42))

    r = time_steps(run, a.sample_iters, 1, device)
    rec = {"bench": "sample", "batch": a.sample_batch, "channels_last": channels_last, "image_size": net.image_size,
           "ddim_steps": a.ddim_steps, "guidance": a.guidance, "params": sum(p.numel() for p in net.parameters()), **r,
           "s_per_image": r["step_ms_median"] / 1e3 / a.sample_batch,
           "samples_per_s": a.sample_batch / (r["step_ms_median"] / 1e3)}
    del task
    return rec


def _switches(task: Any) -> dict[str, Any]:
    """The speed switches a training row ran with (the optimiser's actual ``fused``, not the request)."""
    return {"compile": task.compile_mode, "channels_last": task.channels_last,
            "fused_adamw": bool(task.configure_optimizers().defaults.get("fused")),
            "compile_vae": bool(task.compile_mode) and task.compile_vae and task.net.vae is not None}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    from tasks.bench import default_precision, provenance

    device = torch.device(a.device)
    a.precision = a.precision or default_precision(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    prov = provenance(argv)
    prov["command"] = "python3 benchmarks/bench_neuropictor.py " + " ".join(shlex.quote(x) for x in argv)
    with contextlib.suppress(ImportError):
        import diffusers

        prov["diffusers"] = diffusers.__version__
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    rows = []
    for bench in a.benches.split(","):
        for mode in a.modes.split(","):
            torch.manual_seed(0)
            fn = bench_train if bench == "train" else bench_sample
            rec = {**prov, "impl": "ours", "model": a.model, "mode": mode, "precision": a.precision,
                   "device": str(device), **fn(a, device, mode)}
            rows.append(rec)
            with open(a.out, "a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"{a.model} {bench:6s} {mode:8s} b={rec['batch']:<3d} {rec['step_ms_median']:10.1f} ms "
                  f"{rec['samples_per_s']:8.2f} samples/s  (first call {rec['first_call_s']:.1f} s, peak "
                  f"{rec['peak_mem_gib'] or 0:.1f} GiB)", flush=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
    for bench in a.benches.split(","):
        sel = {r["mode"]: r for r in rows if r["bench"] == bench}
        for mode in (m for m in sel if m != "eager" and "eager" in sel):
            ratio = sel[mode]["samples_per_s"] / sel["eager"]["samples_per_s"]
            print(f"{bench}: {mode} / eager = {ratio:.2f}x")
    print(f"{len(rows)} results appended to {a.out} ({time.perf_counter() - t_start:.0f} s; {prov['gpu'] or 'cpu'}, "
          f"torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
