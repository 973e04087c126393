"""CronusVLA at paper shapes: control-step latency (one VLM pass on the current frame + the cached past features +
DDIM 10 / CFG 1.5 decoding) and the post-training step, eager vs compiled, random weights.

    python3 benchmarks/bench_cronusvla.py --benches step --model cronusvla_7b   # GPU (benchmarks/cronusvla_h200.sh)
    python3 benchmarks/bench_cronusvla.py --benches train --model cronusvla_0_5b
    python3 benchmarks/bench_cronusvla.py --device cpu --tiny                         # smoke test on a CPU

``step``: :class:`zoo.cronusvla_policy.CronusVLAPolicy.act` on a 224-px frame with a full feature cache (M - 1 past
features): one VLM forward (DINOv2-L + SigLIP-So400m + projector + LLM over 256 patches + the prompt), then 10 DDIM
steps of the DiT-B decoder on the doubled CFG batch; bf16 weights on GPU. Compiled: the LLM's decoder layers, the
two ViTs' blocks and the decoder's blocks compiled in place (``nn.Module.compile``, regional). Graph (``graph``,
``compile+graph``): ``CronusVLAPolicy(cuda_graphs=True)``, the VLM pass and the DDIM + CFG sampling each replayed as
one CUDA graph (captured in the first calls, counted in ``setup_ms``); the row records the graphed step against an
eager (not graphed) policy on the same model, frame and generator state (``graph_check_*``). The decoder's
zero-initialised output layer is re-drawn (std 0.02) in every mode, so that the actions depend on the features and
the check means something (same FLOPs).
``train``: one post-training optimiser step (AdamW, bf16 autocast, fp32 weights) of ``tasks.cronusvla.CronusVLATask``
on ``example_batch`` (M frames per sample, past frames under no_grad, repeated diffusion x4). Compiled: the task's
``compile='regional'``.

Every measurement is one JSON line (command, machine, versions, commit) appended to ``--out``. The official code's
``predict_action`` runs in its own process beside it (``benchmarks/cronusvla_official.py``: their classes, random
init, their pinned transformers 4.40.1 / timm 0.9.10 / draccus from ``.whl/official_cronusvla``;
``cronusvla_h200.sh official``), its rows marked ``impl: official`` in the same file.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

from tasks.bench import git_commit  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--tiny", action="store_true", help="cronusvla_tiny, few iterations (smoke test)")
    p.add_argument("--model", default=None, help="registered model (default cronusvla_7b; tiny: cronusvla_tiny)")
    p.add_argument("--benches", default="step,train", help="comma-separated subset of step,train")
    p.add_argument("--modes", default="eager,compile",
                   help="comma-separated subset of eager,compile (train and step), graph,compile+graph (step only)")
    p.add_argument("--batch", type=int, default=8, help="training batch per GPU (paper: 8 for 7B, 32 for 0.5B)")
    p.add_argument("--iters", type=int, default=None, help="timed iterations (default 20; tiny 2)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up iterations (default 3; tiny 1)")
    p.add_argument("--ddim-steps", type=int, default=10)
    p.add_argument("--out", default="benchmarks/results/cronusvla.jsonl")
    return p.parse_args(argv)


def _sync(dev: str) -> None:
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def _time(fn, iters: int, warmup: int, dev: str) -> list[float]:
    for _ in range(warmup):
        fn()
    _sync(dev)
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(dev)
        out.append((time.perf_counter() - t) * 1000)
    return out


def _provenance(args: argparse.Namespace, argv: list[str] | None) -> dict:
    import timm
    import transformers

    cmd = shlex.join(argv if argv is not None else sys.argv[1:])
    return {"command": f"python3 benchmarks/bench_cronusvla.py {cmd}",
            "git_commit": git_commit()[0][:12], "torch": torch.__version__, "transformers": transformers.__version__,
            "timm": timm.__version__, "python": platform.python_version(), "machine": platform.node(),
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"}


def bench_step(args: argparse.Namespace, mode: str) -> dict:
    import zoo
    from zoo.cronusvla_policy import CronusVLAPolicy

    dev = args.device
    dtype = torch.bfloat16 if dev.startswith("cuda") else torch.float32
    with torch.device(dev):
        model = zoo.create_model(args.model)
        torch.nn.init.normal_(model.decoder.head.weight, std=0.02)  # zero-init: the actions would ignore the features
        model = model.to(dtype).eval()
    if mode.startswith("compile"):
        for m in model.compile_regions():
            m.compile()
    ids = torch.randint(3, 250, (1, 20))
    ids[:, 0], ids[:, -1] = 1, int(model.llm.config.eos_token_id)
    graphs = mode.endswith("graph")
    img = torch.rand(3, model.image_size, model.image_size, device=dev, dtype=dtype)
    t_setup = time.perf_counter()
    pol = CronusVLAPolicy(model, ids.to(dev), num_steps=args.ddim_steps, cuda_graphs=graphs)
    for _ in range(model.num_frames):  # a full cache
        pol.features(img)
    t0 = time.perf_counter()
    pol.act(img)
    _sync(dev)
    first = (time.perf_counter() - t0) * 1000
    setup = (time.perf_counter() - t_setup) * 1000
    check = _graph_check(model, pol, ids.to(dev), img, args.ddim_steps) if graphs else {}
    vlm = _time(lambda: pol.features(img), args.iters, args.warmup, dev)
    step = _time(lambda: pol.act(img), args.iters, args.warmup, dev)
    row = {"bench": "step", "mode": mode, "model": args.model, "num_frames": model.num_frames,
           "chunk_len": model.chunk_len, "ddim_steps": args.ddim_steps, "cfg_scale": 1.5, "dtype": str(dtype),
           "first_call_ms": round(first, 1), "vlm_pass_ms_median": round(statistics.median(vlm), 3),
           "step_ms_median": round(statistics.median(step), 3), "step_ms_min": round(min(step), 3),
           "setup_ms": round(setup, 1), "cuda_graphs": graphs, "captured_graphs": pol.captured_graphs} | check
    if dev.startswith("cuda"):
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def _graph_check(model, pol, ids: torch.Tensor, img: torch.Tensor, ddim_steps: int) -> dict:
    """The graphed policy's step against an eager one's on the same model, frame, full cache and noise: max abs
    difference of the current feature and of the action chunk, each relative to the eager one's largest entry."""
    from zoo.cronusvla_policy import CronusVLAPolicy

    ref = CronusVLAPolicy(model, ids, num_steps=ddim_steps)
    for _ in range(model.num_frames):
        ref.features(img)
    out = []
    for p in (ref, pol):
        chunk = p.features(img)
        torch.manual_seed(1234)  # the CUDA noise (device generator)
        p.generator.manual_seed(1234)  # the CPU noise
        out.append((chunk[:, -1].float(), p.sample(chunk).float()))
    (fe, ae), (fg, ag) = out
    feat = ((fg - fe).abs().max() / fe.abs().max().clamp_min(1e-12)).item()
    act = (ag - ae).abs().max().item()
    scale = ae.abs().max().item()
    act_rel = act / max(scale, 1e-12)  # random weights give actions far outside [-1, 1]: judge them relative
    tol = 5e-2 if img.dtype == torch.bfloat16 else 1e-3
    return {"graph_check_feature_max_rel": round(feat, 6), "graph_check_action_max_abs": round(act, 6),
            "graph_check_action_scale": round(scale, 4), "graph_check_action_max_rel": round(act_rel, 6),
            "graph_check_tol": tol, "graph_check_ok": feat <= tol and act_rel <= tol}


def bench_train(args: argparse.Namespace, mode: str) -> dict:
    from tasks.cronusvla import CronusVLATask

    dev = args.device
    task = CronusVLATask(args.model, compile="regional" if mode == "compile" else False).to(dev)
    opt = torch.optim.AdamW(task.net.parameters(), lr=4e-5, weight_decay=0.0)
    batch = {k: v.to(dev) for k, v in task.example_batch(args.batch).items()}
    auto = torch.autocast("cuda", dtype=torch.bfloat16) if dev.startswith("cuda") else torch.autocast("cpu",
                                                                                                    enabled=False)

    def step() -> None:
        with auto:
            loss = task.diffusion_loss(
                task.network(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features,
                batch["actions"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.net.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    if dev.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    step()
    _sync(dev)
    first = (time.perf_counter() - t0) * 1000
    times = _time(step, args.iters, args.warmup, dev)
    net = task.net
    row = {"bench": "train", "mode": mode, "model": args.model, "batch": args.batch, "num_frames": net.num_frames,
           "chunk_len": net.chunk_len, "repeated_diffusion_steps": 4, "first_call_ms": round(first, 1),
           "step_ms_median": round(statistics.median(times), 3), "step_ms_min": round(min(times), 3),
           "samples_per_s": round(args.batch / statistics.median(times) * 1000, 2)}
    if dev.startswith("cuda"):
        row["peak_mem_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    args.model = args.model or ("cronusvla_tiny" if args.tiny else "cronusvla_7b")
    args.iters = args.iters or (2 if args.tiny else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.tiny else 3)
    if args.tiny:
        args.batch = min(args.batch, 2)
        args.ddim_steps = min(args.ddim_steps, 2)
    prov = _provenance(args, argv)
    rows = []
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for bench in args.benches.split(","):
        for mode in args.modes.split(","):
            if bench == "train" and mode.endswith("graph"):
                continue  # the training step's graphs are tasks._cuda_graphs (not measured here)
            torch.manual_seed(0)
            try:
                row = {"step": bench_step, "train": bench_train}[bench](args, mode) | prov
            except Exception as e:  # a capture that fails is a result too (the graph modes are new)
                if not mode.endswith("graph"):
                    raise
                row = {"bench": bench, "mode": mode, "model": args.model, "error": f"{type(e).__name__}: {e}"[:2000]}
                row |= prov
            print(json.dumps(row), flush=True)
            with out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            rows.append(row)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


if __name__ == "__main__":
    main()
