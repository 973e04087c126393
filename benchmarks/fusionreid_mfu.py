"""FusionReID training MFU matrix (issue 24 item 5): paper-config training steps under switches that keep the maths.

Every variant is the current best path (``base``: bf16-mixed, ``torch.compile`` default, channels-last, the task's
whole-step CUDA graph, batch 128 = 8 x 16) plus '+'-joined modifiers (:data:`MODIFIERS`), e.g. ``base+flash+b256``.
Per variant it builds a fresh task with the same seed, counts FLOPs and times steps exactly as ``sharezoo bench
--task train`` does (``tasks.bench``: ``train_step_fn``, ``count_flops`` on the eager network, ``time_steps``, MFU
against the GPU's dense bf16 peak), records the first step's loss (same weights, batch and seed: a maths check across
variants), profiles a few more steps (top kernels by CUDA time, kernel time per step against the step's wall time)
and appends one JSON line to ``OUT/fusionreid_mfu.jsonl`` — a variant that fails appends an ``error`` line.

    python3 benchmarks/fusionreid_mfu.py --variant base --variant base+flash --out "$OUT/fusionreid_mfu"
    python3 benchmarks/fusionreid_mfu.py --tiny --device cpu --variant base --variant base+nocl   # the CPU smoke mode
    python3 benchmarks/fusionreid_mfu.py --list

``benchmarks/fusionreid_mfu_h200.sh`` runs each variant in its own process under its own ``timeout``.
``--tiny`` runs ``fusionreid_tiny`` (a quarter of the batch: 32 = 2 x 16 at base) with ``torch.compile`` off (CPU
compilation would dominate a smoke test); the inductor options and SDPA backends are still set and restored, and
the CUDA graphs fall back to eager steps as ``ReIDTask`` does off CUDA.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
import time
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import bench  # noqa: E402

CONFIG = "configs/fusionreid/market1501.yaml"
PAPER = {"model": "fusionreid_vitb16_r50", "model_kwargs": {"num_classes": 751, "num_cameras": 6,
                                                            "pretrained_backbone": False}}
TINY = {"model": "fusionreid_tiny", "model_kwargs": {"num_classes": 8, "num_cameras": 2}}

#: the current best path (benchmarks/README.md, FusionReID: 1,774 img/s, 31.6% MFU at d2043e64)
BASE: dict[str, Any] = {"compile": "default", "channels_last": True, "cuda_graphs": True, "batch": 128,
                        "inductor": {}, "sdpa": None}
#: modifier -> (what it changes, the change). Inductor options are ``torch._inductor.config`` attributes (dotted for
#: sub-configs); one missing from the installed torch is skipped and named in the record's ``inductor_missing``.
MODIFIERS: dict[str, tuple[str, dict[str, Any]]] = {
    "base": ("the current best path", {}),
    "nocl": ("channels_last off (what channels-last buys)", {"channels_last": False}),
    "eager": ("torch.compile off", {"compile": "off"}),
    "nographs": ("the task's whole-step CUDA graph off", {"cuda_graphs": False}),
    "autotune": ("compile mode max-autotune-no-cudagraphs (GEMM/conv autotuning, Triton GEMM epilogue fusion)",
                 {"compile": "max-autotune-no-cudagraphs"}),
    "cdt": ("inductor coordinate_descent_tuning (re-tunes pointwise/reduction block sizes)",
            {"inductor": {"coordinate_descent_tuning": True}}),
    "aggr": ("inductor aggressive_fusion", {"inductor": {"aggressive_fusion": True}}),
    "noepi": ("inductor epilogue_fusion off (what epilogue fusion buys)", {"inductor": {"epilogue_fusion": False}}),
    "tritongemm": ("GEMMs from Triton templates only (with autotune: epilogues fused into every GEMM)",
                   {"inductor": {"max_autotune_gemm_backends": "TRITON"}}),
    "tma": ("Hopper persistent TMA Triton matmul templates (with autotune)",
            {"inductor": {"triton.enable_persistent_tma_matmul": True}}),
    "flash": ("SDPA: flash attention first, cuDNN attention excluded", {"sdpa": "flash"}),
    "cudnn": ("SDPA: cuDNN attention first", {"sdpa": "cudnn"}),
    "efficient": ("SDPA: memory-efficient attention first, cuDNN and flash excluded", {"sdpa": "efficient"}),
    "b64": ("batch 64 = 4 x 16", {"batch": 64}),
    "b256": ("batch 256 = 16 x 16", {"batch": 256}),
}


def variant_spec(name: str) -> dict[str, Any]:
    """The settings of a '+'-joined variant name (later modifiers win; inductor options merge)."""
    spec = {**BASE, "inductor": dict(BASE["inductor"])}
    for mod in name.split("+"):
        if mod not in MODIFIERS:
            raise ValueError(f"unknown modifier {mod!r} in variant {name!r}; known: {', '.join(MODIFIERS)}")
        for k, v in MODIFIERS[mod][1].items():
            if k == "inductor":
                spec["inductor"].update(v)
            else:
                spec[k] = v
    return spec


@contextlib.contextmanager
def inductor_options(options: dict[str, Any]) -> Iterator[tuple[dict[str, Any], list[str]]]:
    """Set ``torch._inductor.config`` options for the block (restored after): yields (applied, missing)."""
    import torch._inductor.config as cfg

    applied, missing, saved = {}, [], []
    for key, value in options.items():
        *path, attr = key.split(".")
        obj = cfg
        for p in path:
            obj = getattr(obj, p, None)
        if obj is None or not hasattr(obj, attr):
            missing.append(key)
            continue
        saved.append((obj, attr, getattr(obj, attr)))
        setattr(obj, attr, value)
        applied[key] = value
    try:
        yield applied, missing
    finally:
        for obj, attr, old in reversed(saved):
            setattr(obj, attr, old)


def sdpa_backends(choice: str | None, device: torch.device) -> list:
    """The SDPA backends (in priority order) of a variant's ``sdpa`` choice; [] = torch's own choice."""
    from torch.nn.attention import SDPBackend as B

    if choice is None:
        return []
    order = {"flash": [B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH],
             "cudnn": [B.CUDNN_ATTENTION, B.FLASH_ATTENTION, B.EFFICIENT_ATTENTION, B.MATH],
             "efficient": [B.EFFICIENT_ATTENTION, B.MATH]}[choice]
    if device.type != "cuda":  # only flash (CPU flash attention) and math exist off CUDA
        order = [b for b in order if b in (B.FLASH_ATTENTION, B.MATH)] or [B.MATH]
    return order


@contextlib.contextmanager
def sdpa_context(backends: list) -> Iterator[None]:
    if not backends:
        yield
        return
    from torch.nn.attention import sdpa_kernel

    try:
        ctx = sdpa_kernel(backends, set_priority=True)
    except TypeError:  # a torch without priorities: the set alone
        ctx = sdpa_kernel(backends)
    with ctx:
        yield


# ------------------------------------------------------------------------------------------------------ profiling
_CATEGORIES = (  # first match wins: inductor's kernel names carry the fused ops' names, cuDNN's convs say gemm
    ("triton fused (pointwise/reduction)", r"^triton_(poi|red|per)"),
    ("attention", r"flash|fmha|attention|sdpa"),
    ("batchnorm", r"batch_?norm|bn_fw|bn_bw"),
    ("conv", r"conv|implicit|wgrad|dgrad|fprop|mkldnn"),
    ("gemm", r"gemm|matmul|xmma|cutlass|nvjet|triton_tem|::mm$|::addmm|::bmm|::linear"),
    ("optimizer", r"sgd|multi_tensor|foreach|optimizer"),
    ("copy/layout", r"copy|transpose|permute|contiguous|nchwToNhwc|nhwcToNchw|cat|memcpy|memset|fill"),
)


def kernel_category(name: str) -> str:
    for cat, pat in _CATEGORIES:
        if re.search(pat, name, re.IGNORECASE):
            return cat
    return "other"


def _self_device_us(evt: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(evt, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def profile_steps(step: Any, steps: int, device: torch.device, rows: int, path: Path, title: str) -> dict[str, Any]:
    """Profile ``steps`` calls; write the top ``rows`` kernels by self CUDA time (self CPU time off CUDA), the time per
    kernel category and torch's own table to ``path``; return the summary numbers."""
    acts = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        acts.append(torch.profiler.ProfilerActivity.CUDA)
    bench._sync(device)
    t0 = time.perf_counter()
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        bench._sync(device)
    wall_ms = (time.perf_counter() - t0) * 1e3 / steps
    avgs = prof.key_averages()
    on_gpu = device.type == "cuda"
    if on_gpu:
        # kernels (and memcpy/memset) are the events with self device time and no CPU self time of their own
        kern = [(e.key, e.count, _self_device_us(e)) for e in avgs
                if _self_device_us(e) > 0 and e.self_cpu_time_total == 0]
    else:
        kern = [(e.key, e.count, float(e.self_cpu_time_total)) for e in avgs if e.self_cpu_time_total > 0]
    kern.sort(key=lambda r: -r[2])
    total_us = sum(r[2] for r in kern) or 1.0
    cats: dict[str, float] = {}
    for name, _, us in kern:
        cats[kernel_category(name)] = cats.get(kernel_category(name), 0.0) + us
    unit = "CUDA" if on_gpu else "CPU (self, ops)"
    lines = [f"# {title}", f"# {torch.cuda.get_device_name() if on_gpu else 'cpu'}, torch {torch.__version__}, "
             f"{steps} profiled steps; {unit} time per step {total_us / 1e3 / steps:.2f} ms, wall per step "
             f"(with profiler) {wall_ms:.2f} ms", "",
             f"| # | kernel | calls/step | ms/step | % | category |", "|---|---|---|---|---|---|"]
    for i, (name, count, us) in enumerate(kern[:rows], 1):
        short = name if len(name) <= 110 else name[:107] + "..."
        lines.append(f"| {i} | `{short}` | {count / steps:g} | {us / 1e3 / steps:.3f} | {100 * us / total_us:.1f} | "
                     f"{kernel_category(name)} |")
    lines += ["", "| category | ms/step | % |", "|---|---|---|"]
    for cat, us in sorted(cats.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {cat} | {us / 1e3 / steps:.2f} | {100 * us / total_us:.1f} |")
    sort_by = "self_cuda_time_total" if on_gpu else "self_cpu_time_total"
    with contextlib.suppress(Exception):  # torch's own table: the sort keys were renamed across versions
        lines += ["", "torch.profiler table:", avgs.table(sort_by=sort_by, row_limit=rows, max_name_column_width=90)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return {"profile_file": str(path), "profile_kernel_ms_per_step": total_us / 1e3 / steps,
            "profile_wall_ms_per_step": wall_ms,
            "profile_categories_ms_per_step": {k: v / 1e3 / steps for k, v in cats.items()},
            "profile_top": [{"kernel": n[:160], "ms_per_step": us / 1e3 / steps} for n, _, us in kern[:5]]}


# -------------------------------------------------------------------------------------------------------- running
def build(spec: dict[str, Any], tiny: bool, compile_mode: str) -> Any:
    m = TINY if tiny else PAPER
    overrides = [f"model_kwargs={json.dumps(m['model_kwargs'])}", f"channels_last={str(spec['channels_last']).lower()}",
                 f"cuda_graphs={str(spec['cuda_graphs']).lower()}"]
    return bench.build_task(bench.load_config(bench.ROOT / CONFIG), m["model"], compile_mode, overrides)


def run_variant(name: str, a: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Build, count, time and profile one variant; the record (without provenance)."""
    spec = variant_spec(name)
    batch = a.batch or (spec["batch"] // 4 if a.tiny else spec["batch"])  # tiny: 32 = 2 x 16 at base
    compile_mode = "off" if a.tiny else spec["compile"]
    rec: dict[str, Any] = {"variant": name, "spec": spec, "model": (TINY if a.tiny else PAPER)["model"],
                           "task": "train", "batch": batch, "precision": a.precision, "compile": compile_mode,
                           "channels_last": spec["channels_last"], "cuda_graphs": spec["cuda_graphs"]}
    torch._dynamo.reset()  # several variants in one process: nothing compiled for the last one is reused
    backends = sdpa_backends(spec["sdpa"], device)
    rec["sdpa_backends"] = [str(b).rsplit(".", 1)[-1] for b in backends] or "torch default"
    with inductor_options(spec["inductor"]) as (applied, missing), sdpa_context(backends):
        rec["inductor_applied"], rec["inductor_missing"] = applied, missing
        torch.manual_seed(0)
        task = build(spec, a.tiny, compile_mode).to(device)
        task.train()
        step, probe = bench.train_step_fn(task, batch, device, a.precision)
        with task.eager_network():
            rec["flops_fwd_bwd_per_sample"] = bench.count_flops(probe) / batch
        # the first step by hand (same weights, batch and seed in every variant): its loss checks the maths
        hook = bench._bench_train_hook(task)
        torch.manual_seed(0)
        t0 = time.perf_counter()
        if hook is not None:
            with bench.autocast(device, a.precision):
                stats = hook(bench._to(task.example_batch(batch), device), step=True)
            rec["loss_step0"] = float(stats[0])
        else:
            step()
            rec["loss_step0"] = None  # the automatic-optimisation step returns no loss to the harness
        bench._sync(device)
        rec["step0_s"] = time.perf_counter() - t0
        rec.update(bench.time_steps(step, a.steps, max(0, a.warmup - 1), device))
        if hasattr(task, "cuda_graph_counts"):
            rec["cuda_graph_counts"] = task.cuda_graph_counts()
        rec["samples_per_s"] = batch * a.steps / rec["wall_s"]
        rec["samples_per_s_median_step"] = batch / (rec["step_ms_median"] / 1e3)
        peak = bench.peak_flops(device, a.precision)
        rec["mfu"] = rec["flops_fwd_bwd_per_sample"] * rec["samples_per_s"] / peak if peak else None
        if a.profile_steps > 0:
            path = Path(a.out) / f"profile_{name.replace('+', '_')}.txt"
            rec.update(profile_steps(step, a.profile_steps, device, a.rows, path,
                                     f"FusionReID training step, variant {name} (batch {batch}): {spec}"))
    return rec


def summary(out: Path) -> str:
    """A Markdown table of ``out/fusionreid_mfu.jsonl`` (each variant's last result, else its last error line), gains
    against ``base`` at the same batch; written to ``out/summary.md``."""
    recs: dict[str, dict[str, Any]] = {}
    path = out / "fusionreid_mfu.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        if line.strip():
            r = json.loads(line)
            if r.get("samples_per_s") or not recs.get(r["variant"], {}).get("samples_per_s"):
                recs[r["variant"]] = r  # a result is kept over a later error line (a timeout after it was written)
    ok = {k: r for k, r in recs.items() if r.get("samples_per_s")}
    bases = {r["batch"]: r for k, r in ok.items() if k == "base" or (k.startswith("base+b") and k.count("+") == 1)}
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    lines = ["| variant | batch | img/s | MFU | vs base (same batch) | step ms (med) | kernel ms/step (profiled) | "
             "attention / gemm / conv ms | first step + warm-up s | loss step 0 | note |", "|" + "---|" * 11]
    for k, r in recs.items():
        if k not in ok:
            lines.append(f"| {k} | | | | | | | | | | {str(r.get('error', 'no result'))[:120]} |")
            continue
        b = bases.get(r["batch"])
        gain = r["samples_per_s"] / b["samples_per_s"] - 1 if b and b is not r else None
        c = r.get("profile_categories_ms_per_step") or {}
        cat = " / ".join(fmt(c.get(n), ".1f") for n in ("attention", "gemm", "conv"))
        miss = f"missing inductor options {r['inductor_missing']}; " if r.get("inductor_missing") else ""
        fb, fr = (b or {}).get("flops_fwd_bwd_per_sample"), r.get("flops_fwd_bwd_per_sample")
        if fb and fr and abs(fr / fb - 1) > 0.005:  # the same maths counts the same FLOPs
            miss += f"FLOPs/sample {fr / 1e9:.2f} G vs base {fb / 1e9:.2f} G"
        lines.append(f"| {k} | {r['batch']} | {r['samples_per_s']:,.0f} | {fmt(r.get('mfu'), '.1%')} | "
                     f"{fmt(gain, '+.1%')} | {fmt(r.get('step_ms_median'), '.1f')} | "
                     f"{fmt(r.get('profile_kernel_ms_per_step'), '.1f')} | {cat} | "
                     f"{fmt((r.get('step0_s') or 0) + (r.get('warmup_s') or 0), '.0f')} | "
                     f"{fmt(r.get('loss_step0'), '.4f')} | {miss} |")
    if ok:
        best = max(ok.values(), key=lambda r: r.get("mfu") or r["samples_per_s"])
        lines += ["", f"best: {best['variant']} ({best['samples_per_s']:,.0f} img/s, "
                  f"MFU {fmt(best.get('mfu'), '.1%')}), profile {best.get('profile_file')}"]
    table = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(table)
    return table


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--variant", action="append", default=[], help="'+'-joined modifiers, e.g. base+flash; repeatable")
    p.add_argument("--list", action="store_true", help="print the modifiers and exit")
    p.add_argument("--summary", action="store_true", help="write OUT/summary.md from OUT's JSON lines and exit")
    p.add_argument("--tiny", action="store_true",
                   help="fusionreid_tiny, a quarter of the batch, compile off (the smoke mode)")
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--precision", default=None, help="default: bf16-mixed on a GPU, 32-true on a CPU")
    p.add_argument("--batch", type=int, default=None, help="override every variant's batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5, help="warm-up steps incl. the first (compile, 3 eager + capture)")
    p.add_argument("--profile-steps", type=int, default=5, help="profiled steps after timing (0: none)")
    p.add_argument("--rows", type=int, default=20, help="kernels in the profile table")
    p.add_argument("--out", default="benchmarks/results/fusionreid_mfu", help="folder of the JSON lines and profiles")
    a = p.parse_args(argv)
    if a.list:
        for k, (what, change) in MODIFIERS.items():
            print(f"{k:12s} {what}: {change or BASE}")
        return 0
    if a.summary:
        print(summary(Path(a.out)))
        return 0
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a.precision = a.precision or bench.default_precision(device)
    if device.type == "cuda":  # as the harness sets them
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for name in a.variant or ["base"]:
        head = {**bench.provenance(["fusionreid_mfu", *(argv if argv is not None else sys.argv[1:])]),
                "variant": name, "tiny": a.tiny}
        try:
            rec = {**head, **run_variant(name, a, device)}
        except Exception as e:  # noqa: BLE001 - one variant's failure is a result; the next one runs
            failed += 1
            rec = {**head, "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
        with open(out / "fusionreid_mfu.jsonl", "a") as f:
            f.write(json.dumps(rec, default=str) + "\n")
        brief = {k: rec.get(k) for k in ("variant", "batch", "samples_per_s", "mfu", "step_ms_median", "loss_step0",
                                         "profile_kernel_ms_per_step", "step0_s", "warmup_s", "error")}
        print(json.dumps(brief), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
