"""Profile one training step (or the inference forward) of a model's task on synthetic batches (where does the step time go?).

    python3 benchmarks/profile_step.py --config configs/fusionreid/market1501.yaml --batch 128 \
        --task-arg 'model_kwargs={num_classes: 751, num_cameras: 6}' --task-arg channels_last=true [--compile default]

Prints the top CUDA kernels by self time and writes the table (and a Chrome trace with --trace) next to --out.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tasks import bench  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--model")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", default="bf16-mixed")
    p.add_argument("--compile", default="off")
    p.add_argument("--task", default="train", choices=("train", "infer"), help="a training step or the forward")
    p.add_argument("--task-arg", action="append", default=[])
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rows", type=int, default=30)
    p.add_argument("--out", default="benchmarks/results/profile.txt")
    p.add_argument("--trace", action="store_true")
    a = p.parse_args()
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    task = bench.build_task(bench.load_config(a.config), a.model, a.compile, a.task_arg).to(device)
    if a.task == "train":
        task.train()
        step, _ = bench.train_step_fn(task, a.batch, device, a.precision)
    else:
        step = bench.infer_step_fn(task, a.batch, device, a.precision)
    for _ in range(a.warmup):
        step()
    torch.cuda.synchronize()
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=acts) as prof:
        for _ in range(a.steps):
            step()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=a.rows, max_name_column_width=90)
    header = f"# {' '.join(sys.argv)}\n# {torch.cuda.get_device_name()} torch {torch.__version__}, {a.steps} steps\n"
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(header + table)
    print(header + table)
    if a.trace:
        prof.export_chrome_trace(str(Path(a.out).with_suffix(".json")))


if __name__ == "__main__":
    main()
