"""PEPSI vs Diet-PEPSI inference: latency per 256x256 image (batch 1), throughput (batch 64), eager vs compiled.

    python3 benchmarks/bench_pepsi.py                       # the GPU run (bf16 autocast, < 2 min on an H200)
    python3 benchmarks/bench_pepsi.py --device cpu --tiny   # smoke test of the script on a CPU

The generators run their inference path (encoder -> CAM -> decoder; no coarse path) on a centred 128x128 hole.
Parameters and FLOPs per image (``torch.utils.flop_counter``, one multiply-add = 2 FLOPs) are measured on the same
models. Every measurement is appended as a JSON line, with the command, GPU, and versions, to
``benchmarks/results/pepsi.jsonl`` (``--out``), and a side-by-side table is printed.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="tiny variants, small images, few iterations (smoke test)")
    p.add_argument("--models", default=None, help="comma-separated (default pepsi,diet_pepsi; tiny: *_tiny)")
    p.add_argument("--image-size", type=int, default=None, help="default 256 (tiny: 64)")
    p.add_argument("--latency-batch", type=int, default=1)
    p.add_argument("--throughput-batch", type=int, default=None, help="default 64 (tiny: 4)")
    p.add_argument("--modes", default="eager,compile", help="comma-separated subset of eager,compile")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="autocast dtype")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 100 / 30; tiny: 3)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 10; tiny: 1)")
    p.add_argument("--out", default=None, help="JSON-lines file (default benchmarks/results/pepsi.jsonl; tiny: a "
                   "temporary file, so smoke numbers never land in the committed results)")
    a = p.parse_args(argv)
    a.models = a.models or ("pepsi_tiny,diet_pepsi_tiny" if a.tiny else "pepsi,diet_pepsi")
    a.image_size = a.image_size or (64 if a.tiny else 256)
    a.throughput_batch = a.throughput_batch or (4 if a.tiny else 64)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.tiny else 10)
    from tasks.bench import results_path

    a.out = a.out or results_path("pepsi", a.tiny, "bench_pepsi")
    return a


def provenance(argv: list[str]) -> dict[str, Any]:
    from tasks.bench import git_commit

    commit, dirty = git_commit()
    try:
        import pytorch_lightning

        pl_version = pytorch_lightning.__version__
    except ImportError:
        pl_version = None
    return {
        "time": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": "python3 benchmarks/bench_pepsi.py " + " ".join(shlex.quote(x) for x in argv),
        "git_commit": commit + ("-dirty" if dirty else ""),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.cuda.is_available() else None,
        "pytorch_lightning": pl_version,
        "python": platform.python_version(),
    }


def load_pepsi() -> Any:
    """``zoo.pepsi``; when another family's optional dependency (timm, ...) is missing, load only the PEPSI modules."""
    try:
        import zoo.pepsi as pepsi_mod
    except ImportError as e:
        import types

        print(f"note: `import zoo` failed ({e}); loading zoo/pepsi.py without the other families", file=sys.stderr)
        for k in [k for k in sys.modules if k == "zoo" or k.startswith("zoo.")]:
            del sys.modules[k]
        pkg = types.ModuleType("zoo")
        pkg.__path__ = [str(ROOT / "zoo")]  # a bare package: zoo/__init__.py (all families) is not run
        sys.modules["zoo"] = pkg
        import zoo.pepsi as pepsi_mod
    return pepsi_mod


def make_inputs(batch: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    image = (torch.rand(batch, 3, size, size, generator=g) * 2 - 1).to(device)
    mask = torch.zeros(batch, 1, size, size)
    mask[:, :, size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 1  # 128x128 at 256
    return image, mask.to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, iters: int, warmup: int, device: torch.device) -> list[float]:
    """Per-iteration wall times in ms (CUDA events on GPU)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return times


def count_flops(model: torch.nn.Module, image: torch.Tensor, mask: torch.Tensor) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(image, mask)
    return int(counter.get_total_flops())


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    a = parse_args(argv)
    pepsi_mod = load_pepsi()
    device = torch.device(a.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}[a.dtype]
    prov = provenance(argv)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    t_start = time.perf_counter()
    for name in a.models.split(","):
        model = getattr(pepsi_mod, name)().to(device).eval()  # the registered entrypoint
        params = sum(p.numel() for p in model.parameters())
        flops = count_flops(model, *make_inputs(1, a.image_size, device))
        for mode in a.modes.split(","):
            net = torch.compile(model, dynamic=False) if mode == "compile" else model
            for kind, batch in (("latency", a.latency_batch), ("throughput", a.throughput_batch)):
                image, mask = make_inputs(batch, a.image_size, device)
                iters = a.iters or (3 if a.tiny else (100 if kind == "latency" else 30))

                @torch.inference_mode()
                def step(net=net, image=image, mask=mask) -> torch.Tensor:
                    with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                        return net(image, mask).composite

                t0 = time.perf_counter()
                step()  # first call: compilation / cuDNN autotuning, reported separately
                sync(device)
                first_s = time.perf_counter() - t0
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                times = time_it(step, iters, a.warmup, device)
                med = statistics.median(times)
                rec = {
                    **prov, "model": name, "mode": mode, "measure": kind, "batch": batch, "image_size": a.image_size,
                    "dtype": a.dtype, "device": str(device), "params": params, "flops_per_image": flops,
                    "gflops_per_image": flops / 1e9, "iters": iters, "first_call_s": round(first_s, 3),
                    "ms_median": med, "ms_p90": sorted(times)[int(0.9 * (len(times) - 1))], "ms_min": min(times),
                    "ms_per_image": med / batch, "images_per_s": batch / (med / 1e3),
                    "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
                }
                rows.append(rec)
                with open(a.out, "a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"{name:18s} {mode:8s} {kind:10s} b={batch:<3d} {med:9.3f} ms  {rec['images_per_s']:10.1f} img/s "
                      f"(first call {first_s:.1f}s)", flush=True)
    # side by side
    print(f"\n{'model':18s} {'params(M)':>9s} {'GFLOPs/img':>10s} " + " ".join(
        f"{m + ' ' + k:>22s}" for m in a.modes.split(",") for k in ("lat b1 (ms)", "thr (img/s)")))
    for name in a.models.split(","):
        sel = {(r["mode"], r["measure"]): r for r in rows if r["model"] == name}
        r0 = next(iter(sel.values()))
        cells = []
        for m in a.modes.split(","):
            cells += [f"{sel[(m, 'latency')]['ms_per_image']:22.3f}", f"{sel[(m, 'throughput')]['images_per_s']:22.1f}"]
        print(f"{name:18s} {r0['params'] / 1e6:9.3f} {r0['gflops_per_image']:10.2f} " + " ".join(cells))
    print(f"\n{len(rows)} results appended to {a.out} ({time.perf_counter() - t_start:.0f} s; {prov['gpu'] or 'cpu'}, "
          f"torch {torch.__version__})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
