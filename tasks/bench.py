"""``sharezoo bench``: the benchmark harness shared by every family.

It builds a model's task (from ``--config``, or the config its model card names), feeds synthetic on-device
batches of the right shapes (``task.example_batch(n)`` / ``task.example_inputs(n)``) or the real datamodule,
and measures throughput, step time (median, p90; CUDA events on GPU), peak memory, FLOPs per sample
(``torch.utils.flop_counter``) and MFU against the GPU's dense peak. Every run appends one JSON line with the
exact command, git commit, machine and versions to ``benchmarks/results/<name>.jsonl``; ``sharezoo bench
report`` regenerates the table in ``benchmarks/README.md`` from those files.

Side by side: ``--reference FILE.py`` loads a driver exposing ``make_step(batch_size, precision, device, task)
-> (step_fn, samples_per_step)``, typically wrapping a paper's official code fetched into the git-ignored
``.upstream/``; it is timed the same way in the same process and reported as a ratio.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import importlib
import importlib.util
import inspect
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tasks._errors import building

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(os.environ.get("SHAREZOO_BENCH_RESULTS", ROOT / "benchmarks" / "results"))

#: dense peak FLOP/s per GPU by (name fragment, dtype); sparsity excluded. Sources: NVIDIA data sheets.
GPU_PEAK = {
    "H200": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "H100": {"bf16": 989.4e12, "fp16": 989.4e12, "tf32": 494.7e12, "fp32": 66.9e12},
    "A100": {"bf16": 312e12, "fp16": 312e12, "tf32": 156e12, "fp32": 19.5e12},
}
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")


# ----------------------------------------------------------------------------------------------- measurement
def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs executed by ``fn()`` as counted by ``torch.utils.flop_counter.FlopCounterMode``."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def peak_flops(device: torch.device, precision: str) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    dtype = {"bf16-mixed": "bf16", "16-mixed": "fp16"}.get(precision)
    if dtype is None:
        dtype = "tf32" if torch.backends.cuda.matmul.allow_tf32 else "fp32"
    for frag, table in GPU_PEAK.items():
        if frag in name:
            return table[dtype]
    return None


def default_precision(device: torch.device) -> str:
    """bf16-mixed on a GPU; 32-true on a CPU, where bf16 autocast is slower than fp32 without native bf16 units."""
    return "bf16-mixed" if device.type == "cuda" else "32-true"


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision == "bf16-mixed":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "16-mixed":
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


def time_steps(step: Callable[[], Any], steps: int, warmup: int, device: torch.device) -> dict[str, float]:
    """Run ``warmup`` then ``steps`` calls; per-step times (ms) from CUDA events on GPU, perf_counter on CPU.
    ``first_call_s``/``warmup_s``: the first warm-up call and all of them, synchronised (compilation, autotuning and
    CUDA-graph capture happen there)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    t_warm = time.perf_counter()
    first_call = None
    for _ in range(warmup):
        step()
        if first_call is None:
            sync()
            first_call = time.perf_counter() - t_warm
    sync()
    warmup_s = time.perf_counter() - t_warm
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(steps)]
        t0 = time.perf_counter()
        for start, end in events:
            start.record()
            step()
            end.record()
        sync()
        wall = time.perf_counter() - t0
        times = [s.elapsed_time(e) for s, e in events]
    else:
        times = []
        t0 = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            step()
            times.append((time.perf_counter() - t) * 1e3)
        wall = time.perf_counter() - t0
    times.sort()
    return {
        "step_ms_median": statistics.median(times),
        "step_ms_p90": times[min(len(times) - 1, int(round(0.9 * (len(times) - 1))))],
        "wall_s": wall,
        "peak_mem_gib": torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None,
        "first_call_s": first_call,
        "warmup_s": warmup_s,
    }


# ---------------------------------------------------------------------------------------------- task plumbing
def load_config(path: str | os.PathLike) -> dict[str, Any]:
    """A LightningCLI YAML as a dict; a file that includes another (``config: recipe.yaml``, then dotted overrides)
    is resolved by the CLI's own parser, as ``sharezoo fit --config PATH --print_config`` prints it."""
    import contextlib
    import io

    import yaml

    with open(path) as f:
        cfg = yaml.safe_load(f)
    if "config" not in cfg:
        return cfg
    from tasks._lightning_cli import lightning_cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
        lightning_cli(["fit", "--config", str(path), "--print_config"])
    return yaml.safe_load(out.getvalue())


def _import(class_path: str) -> type:
    mod, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(mod), name)


def default_config_for(model: str) -> Path:
    """The config a model's card names (``MODEL_CARD['bench_config']``) or ``configs/<model>/*.yaml``."""
    import zoo

    card = zoo.model_card_dict(model)
    if card.get("bench_config"):
        return ROOT / card["bench_config"]
    cands = sorted((ROOT / "configs" / model).glob("*.yaml"))
    if not cands:
        raise ValueError(f"no config for {model}: pass --config (a LightningCLI YAML naming its task)")
    return cands[0]


def _overrides(pairs: list[str]) -> dict[str, Any]:
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise ValueError(f"expected KEY=VALUE, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def build_task(config: dict[str, Any], model: str | None, compile_mode: str, overrides: list[str] = ()) -> Any:
    spec = config["model"]
    cls = _import(spec["class_path"])
    init = {**spec.get("init_args", {}), **_overrides(list(overrides))}
    if model:
        init["model"] = model
    if "compile" in inspect.signature(cls).parameters:  # the zoo tasks; the LLM tasks have no compile switch
        init["compile"] = False if compile_mode == "off" else (True if compile_mode == "default" else compile_mode)
    return cls(**init)


def build_datamodule(config: dict[str, Any], overrides: list[str] = ()):
    spec = config["data"]
    return _import(spec["class_path"])(**{**spec.get("init_args", {}), **_overrides(list(overrides))})


def _optimizer(task) -> torch.optim.Optimizer:
    out = task.configure_optimizers()
    if isinstance(out, dict):
        out = out["optimizer"]
    if isinstance(out, (list, tuple)):
        out = out[0]
        if isinstance(out, (list, tuple)):
            out = out[0]
        if isinstance(out, dict):
            out = out["optimizer"]
    return out


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to(v, device) for v in batch)
    return batch


def _loss(out: Any) -> torch.Tensor:
    return out["loss"] if isinstance(out, dict) else out


def _bench_train_hook(task) -> Callable | None:
    """A manually optimised task's own timed step, ``bench_train_step(batch, step=True)`` (e.g. ReIDTask with
    cuda_graphs); ``step=False`` runs its eager forward (+ backward under grad) alone, for the FLOP probes."""
    return None if task.automatic_optimization else getattr(task, "bench_train_step", None)


def train_step_fn(task, batch_size: int, device: torch.device, precision: str) -> tuple[Callable[[], Any], Callable]:
    """(step, flop_probe): one optimiser step of the task's own training_step on a synthetic batch."""
    hook = _bench_train_hook(task)
    if not task.automatic_optimization and hook is None:
        raise ValueError(f"{type(task).__name__} optimises manually (several optimisers per step); "
                         "time its real loop with --task fit instead of --task train")
    batch = _to(task.example_batch(batch_size), device)
    if hook is not None:
        if precision == "16-mixed":
            raise ValueError(f"{type(task).__name__}.bench_train_step has no GradScaler: use bf16-mixed or 32-true")

        def hook_step(step: bool = True) -> None:
            with autocast(device, precision):
                hook(batch, step=step)

        return hook_step, lambda: hook_step(step=False)
    opt = _optimizer(task)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None

    def fwd_bwd() -> torch.Tensor:
        with autocast(device, precision):
            loss = _loss(task.training_step(batch, 0))
        (scaler.scale(loss) if scaler else loss).backward()
        return loss

    def step() -> None:
        fwd_bwd()
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)

    def probe() -> None:
        fwd_bwd()
        opt.zero_grad(set_to_none=True)

    return step, probe


def infer_step_fn(task, batch_size: int, device: torch.device, precision: str) -> Callable[[], Any]:
    """The network's forward on ``example_inputs``, or the task's ``bench_infer_step(*inputs)`` when it has one
    (e.g. CUDA-graph replays); the callable is looked up per call, so ``task.eager_network()`` applies to it."""
    args = _to(task.example_inputs(batch_size), device)
    task.network.eval()
    hook = getattr(task, "bench_infer_step", None)

    @torch.inference_mode()
    def step() -> Any:
        with autocast(device, precision):
            return hook(*args) if hook is not None else task.network(*args)

    return step


class _LoopTimer:
    """Times ``steps`` training batches of a real ``Trainer.fit`` after ``warmup`` batches (end to end: loader,
    host-to-device copy, forward, backward, optimiser, Lightning's loop)."""

    def __init__(self, warmup: int, steps: int) -> None:
        import pytorch_lightning as pl

        class _CB(pl.Callback):
            # batches are counted across epochs (a small dataset has fewer batches per epoch than warmup + steps)
            def on_train_batch_start(cb, trainer, module, batch, batch_idx):  # noqa: N805
                if self.seen == warmup:
                    _sync(module.device)
                    self.t0 = time.perf_counter()
                    if module.device.type == "cuda":
                        torch.cuda.reset_peak_memory_stats(module.device)
                if self.seen >= warmup:
                    self.samples += _batch_len(batch)

            def on_train_batch_end(cb, trainer, module, outputs, batch, batch_idx):  # noqa: N805
                self.seen += 1
                if self.seen == warmup + steps:
                    _sync(module.device)
                    self.t1 = time.perf_counter()
                    trainer.should_stop = True

        self.callback = _CB()
        self.t0 = self.t1 = 0.0
        self.samples = self.seen = 0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _batch_len(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return len(batch)
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
        return len(first) if isinstance(first, list) else _batch_len(first)  # a list value: ragged samples (LLM)
    return _batch_len(batch[0])


def time_fit_loop(config: dict[str, Any], task, a: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Samples/s of the task's real training loop (``Trainer.fit`` on the config's datamodule)."""
    import pytorch_lightning as pl

    timer = _LoopTimer(a.warmup, a.steps)
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu", devices=a.devices, strategy=a.strategy,
        sync_batchnorm=a.sync_batchnorm, precision=a.precision,
        max_steps=4 * (a.warmup + a.steps), max_epochs=10_000,  # stopped by the timer; manual-opt. tasks count >1/batch
        callbacks=[timer.callback], logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, benchmark=device.type == "cuda",
    )
    trainer.fit(task, datamodule=build_datamodule(config, a.data_arg))
    root = trainer.strategy.root_device
    mine = {"samples": timer.samples, "dt": timer.t1 - timer.t0,
            "peak": torch.cuda.max_memory_allocated(root) / 2**30 if root.type == "cuda" else None,
            # reserved counts memory the allocator holds for CUDA-graph pools captured before the timer started,
            # which the allocated peak (reset when timing starts) does not see
            "reserved": torch.cuda.max_memory_reserved(root) / 2**30 if root.type == "cuda" else None}
    ranks = [mine]
    if trainer.world_size > 1:  # every rank timed its own batches (per-device batch size): sum the samples
        ranks = [None] * trainer.world_size
        torch.distributed.all_gather_object(ranks, mine)
    dt = max(r["dt"] for r in ranks)
    samples = sum(r["samples"] for r in ranks)
    peaks = [r["peak"] for r in ranks]
    return {"loop_samples_per_s": samples / dt if dt > 0 else None, "loop_wall_s": dt, "loop_steps": a.steps,
            "loop_step_ms_mean": dt / a.steps * 1e3, "devices": trainer.world_size, "strategy": a.strategy,
            "sync_batchnorm": a.sync_batchnorm, "loop_peak_mem_gib": max(peaks) if peaks[0] is not None else None,
            "loop_peak_mem_gib_per_device": peaks, "loop_peak_reserved_gib": max(r["reserved"] or 0 for r in ranks)
            if root.type == "cuda" else None, "global_rank": trainer.global_rank}


def time_datamodule(dm, batches: int) -> dict[str, float]:
    """Samples/s of the datamodule's train loader alone, on this machine's cores."""
    dm.prepare_data()
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    first = next(it)  # worker start-up excluded
    n, t0 = 0, time.perf_counter()
    for i, batch in enumerate(it):
        n += len(batch[0]) if isinstance(batch, (list, tuple)) else len(next(iter(batch.values())))
        if i + 1 >= batches:
            break
    dt = time.perf_counter() - t0
    del first
    return {"data_samples_per_s": n / dt if dt > 0 else float("nan"), "data_workers": loader.num_workers}


# ------------------------------------------------------------------------------------------------ provenance
def results_path(name: str, tiny: bool = False, smoke_name: str | None = None) -> str:
    """Where a benchmark script appends its JSON lines by default: ``benchmarks/results/<name>.jsonl``; for a
    ``--tiny`` smoke run a file in the temporary folder (``<smoke_name or name>_smoke.jsonl``), so that smoke numbers
    never land in the committed results."""
    if tiny:
        import tempfile

        return str(Path(tempfile.gettempdir()) / f"{smoke_name or name}_smoke.jsonl")
    return str(ROOT / "benchmarks" / "results" / f"{name}.jsonl")


def git_commit(untracked: bool = True) -> tuple[str, bool]:
    """(commit, dirty) of this checkout for result provenance. ``SHAREZOO_GIT_COMMIT`` wins: a copy of the tree on a
    remote GPU machine may carry no ``.git`` or a stale one. ("", False) when neither answers. ``untracked=False``:
    only changes to tracked files make it dirty."""
    commit = os.environ.get("SHAREZOO_GIT_COMMIT", "")
    if commit:
        return commit, False
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False,
                             timeout=10).stdout.strip()
        if len(out) != 40:
            return "", False
        status = ["git", "status", "--porcelain"] + ([] if untracked else ["--untracked-files=no"])
        dirty = subprocess.run(status, cwd=ROOT, capture_output=True, text=True, check=False, timeout=10).stdout
        return out, bool(dirty)
    except (OSError, subprocess.SubprocessError):
        return "", False


def provenance(argv: list[str]) -> dict[str, Any]:
    commit, dirty = git_commit()
    commit = commit or "unknown"
    cpu = platform.processor()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {
        "time": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": "sharezoo bench " + " ".join(shlex.quote(a) for a in argv),
        "git_commit": commit + ("-dirty" if dirty else ""),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
    }


def append_result(record: dict[str, Any], name: str) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    return path


# --------------------------------------------------------------------------------------------------- running
def run(a: argparse.Namespace, argv: list[str]) -> dict[str, Any]:
    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    a.precision = a.precision or default_precision(device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    with building("the benchmark from --model / --config / --task-arg / --data-arg"):
        cfg_path = Path(a.config) if a.config else default_config_for(a.model)
        config = load_config(cfg_path)
        task = build_task(config, a.model, a.compile, a.task_arg)
        if getattr(task, "net", False) is None:  # data-linked kwargs (num_classes, ...) come from the datamodule
            dm = build_datamodule(config, a.data_arg)
            for k in task.data_links:
                task.model_kwargs.setdefault(k, getattr(dm, k))
            task._build()
    if a.devices > 1 and a.task != "fit":
        raise ValueError("--devices > 1 needs --task fit (the Trainer's strategy runs the processes)")
    if a.devices == 1:
        task.to(device)  # --devices > 1: Lightning moves each rank's copy to its own GPU
    rec: dict[str, Any] = {**provenance(argv), "model": getattr(task, "model_name", type(task).__name__),
                           "task": a.task, "batch": a.batch,
                           "precision": a.precision, "compile": a.compile, "config": str(cfg_path.relative_to(ROOT))
                           if cfg_path.is_relative_to(ROOT) else str(cfg_path)}
    rec["params"] = sum(p.numel() for p in getattr(task, "net", task).parameters())
    if a.task == "fit":
        rec.update(time_fit_loop(config, task, a, device))
        rec["samples_per_s"] = rec["loop_samples_per_s"]
        if hasattr(task, "cuda_graph_counts"):
            rec["cuda_graph_counts"] = task.cuda_graph_counts()
        if a.reference:
            rec.update(_reference(a, task, device, "train"))
            rec["speedup_vs_reference"] = rec["samples_per_s"] / rec["reference"]["samples_per_s"]
        if a.data:
            rec.update(time_datamodule(build_datamodule(load_config(a.data), a.data_arg), a.data_batches))
        return rec
    # FLOPs are counted on the plain module (task.eager_network()): the first torch.compile compilation, or a
    # CUDA-graph capture, must not run under FlopCounterMode's dispatch mode and module hooks
    if a.task == "train":
        task.train()
        step, probe = train_step_fn(task, a.batch, device, a.precision)
        hook = _bench_train_hook(task)
        fwd_batch = _to(task.example_batch(a.batch), device)
        with task.eager_network():
            rec["flops_fwd_bwd_per_sample"] = count_flops(probe) / a.batch
            with torch.no_grad():
                fwd = (lambda: hook(fwd_batch, step=False)) if hook else (lambda: task.training_step(fwd_batch, 0))
                rec["flops_fwd_per_sample"] = count_flops(fwd) / a.batch
        flops = rec["flops_fwd_bwd_per_sample"]
    else:
        step = infer_step_fn(task, a.batch, device, a.precision)
        with task.eager_network():
            rec["flops_fwd_per_sample"] = count_flops(step) / a.batch
        flops = rec["flops_fwd_per_sample"]
    rec.update(time_steps(step, a.steps, a.warmup, device))
    if hasattr(task, "cuda_graph_counts"):
        rec["cuda_graph_counts"] = task.cuda_graph_counts()
    rec["samples_per_s"] = a.batch * a.steps / rec["wall_s"]
    rec["samples_per_s_median_step"] = a.batch / (rec["step_ms_median"] / 1e3)
    peak = peak_flops(device, a.precision)
    rec["mfu"] = flops * rec["samples_per_s"] / peak if peak else None
    if a.reference:
        rec.update(_reference(a, task, device, a.task))
        rec["speedup_vs_reference"] = rec["samples_per_s"] / rec["reference"]["samples_per_s"]
    if a.data:
        rec.update(time_datamodule(build_datamodule(load_config(a.data), a.data_arg), a.data_batches))
    return rec


def _reference(a: argparse.Namespace, task, device: torch.device, mode: str) -> dict[str, Any]:
    """Time the reference driver's step (same shapes, same process) -> ``{'reference': {...}}``."""
    spec = importlib.util.spec_from_file_location("bench_reference", a.reference)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    ref_step, per_step = mod.make_step(a.batch, a.precision, device, task=task, mode=mode)
    r = time_steps(ref_step, a.steps, a.warmup, device)
    return {"reference": {"driver": a.reference, **r, "samples_per_s": per_step * a.steps / r["wall_s"]}}


def report() -> str:
    """Regenerate the results table of ``benchmarks/README.md`` from ``benchmarks/results/*.jsonl``."""
    rows = []
    for path in sorted(RESULTS.glob("*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    head = ("| model | task | batch | precision | compile | samples/s | step ms (med/p90) | first call s | peak GiB | "
            "GFLOP/sample | MFU | vs ref | machine | commit |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
    for r in rows:
        if "samples_per_s" not in r:
            continue
        gf = r.get("flops_fwd_bwd_per_sample") if r.get("task") == "train" else r.get("flops_fwd_per_sample")
        graphs = " + CUDA graphs" if (r.get("cuda_graph_counts") or {}).get("captures") else ""  # the task's own
        out.append(
            f"| {r.get('model')} | {r.get('task')} | {r.get('batch')} | {r.get('precision')} | {r.get('compile')}{graphs} | "
            f"{r['samples_per_s']:.1f} | {fmt(r.get('step_ms_median'), '.1f')}/{fmt(r.get('step_ms_p90'), '.1f')} | "
            f"{fmt(r.get('first_call_s'), '.1f')} | {fmt(r.get('peak_mem_gib'), '.2f')} | {fmt(gf and gf / 1e9, '.2f')} | {fmt(r.get('mfu'), '.1%')} | "
            f"{fmt(r.get('speedup_vs_reference'), '.2f')} | {r.get('gpu') or r.get('cpu')} | "
            f"{str(r.get('git_commit'))[:8]} |"
        )
    table = "\n".join(out)
    readme = ROOT / "benchmarks" / "README.md"
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    text = readme.read_text() if readme.is_file() else f"# Benchmarks\n\n{start}\n{end}\n"
    if start not in text:
        text += f"\n{start}\n{end}\n"
    pre, rest = text.split(start, 1)
    post = rest.split(end, 1)[1]
    readme.parent.mkdir(parents=True, exist_ok=True)
    readme.write_text(f"{pre}{start}\n{table}\n{end}{post}")
    return table


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sharezoo bench", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--model", help="registered model name (its task/config from --config or its model card)")
    p.add_argument("--config", help="LightningCLI YAML naming the task (and the datamodule for --data)")
    p.add_argument("--task", choices=("train", "infer", "fit"), default="train",
                   help="train: one optimiser step on synthetic on-device batches; infer: forward; "
                        "fit: the real Trainer loop end to end on the config's datamodule")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: bf16-mixed on a GPU, 32-true on a CPU (bf16 autocast ran 1.3-1.7x slower than fp32 "
                        "on the tiny FusionReID on an AVX-512 Xeon without native bf16)")
    p.add_argument("--compile", choices=("off", "default", "max-autotune", "reduce-overhead",
                                         "max-autotune-no-cudagraphs", "regional"), default="off",
                   help="regional: the task's compile='regional' (the model's repeated blocks, in place)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--device", default=None, help="cuda | cpu (default: cuda when available)")
    p.add_argument("--devices", type=int, default=1,
                   help="--task fit: GPUs (or CPU processes) of the Trainer; --batch and the datamodule's batch size "
                        "stay per device, samples/s counts all devices")
    p.add_argument("--strategy", default="auto", help="--task fit: Lightning strategy for --devices > 1 (ddp, fsdp)")
    p.add_argument("--sync-batchnorm", action="store_true", help="--task fit: SyncBatchNorm across devices")
    p.add_argument("--task-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a task init arg (YAML value), e.g. channels_last=true; repeatable")
    p.add_argument("--data-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="override a datamodule init arg for --task fit / --data, e.g. num_workers=12; repeatable")
    p.add_argument("--data", help="also time this config's datamodule alone (samples/s on this machine's CPUs)")
    p.add_argument("--data-batches", type=int, default=50)
    p.add_argument("--reference", help="driver file exposing make_step(...) for a side-by-side run")
    p.add_argument("--name", help="results file stem (default: the model name)")
    p.add_argument("--no-save", action="store_true", help="print only; do not append to benchmarks/results")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["report"]:
        print(report())
        return 0
    a = parser().parse_args(argv)
    if not (a.model or a.config):
        parser().error("give --model or --config")
    rec = run(a, argv)
    if rec.pop("global_rank", 0) != 0:  # --devices > 1: every rank runs this; rank 0 reports for all
        return 0
    print(json.dumps(rec, indent=2))
    if not a.no_save:
        print(f"appended to {append_result(rec, a.name or rec['model'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
