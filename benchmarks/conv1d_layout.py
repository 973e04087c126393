"""Why PPGFlowECG's stage 1 is where it is: bf16 throughput of its 1-D convolutions (kernel 15) on this GPU, in the
default (N, C, L) layout and in a channels-last layout (the same convolution run by cuDNN as a 2-D NHWC one).

    python3 benchmarks/conv1d_layout.py [--out benchmarks/results/conv1d_layout.jsonl]

Shapes are the stage-1 encoder/decoder's (batch 256, 10-s windows at 128 Hz). Forward + backward (input and weight
gradients) per convolution; TFLOP/s counts 3x the forward's multiply-adds x 2.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = [  # (channels in, channels out, length): the encoder's and decoder's stages
    (128, 128, 1280), (256, 256, 640), (512, 512, 320), (512, 512, 160), (512, 512, 40), (128, 128, 1280),
]


def _time(fn, iters: int = 20) -> float:
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--kernel", type=int, default=15)
    p.add_argument("--out")
    a = p.parse_args()
    torch.backends.cudnn.benchmark = True
    rows = []
    for cin, cout, length in dict.fromkeys(SHAPES):
        w = torch.randn(cout, cin, a.kernel, device="cuda", dtype=torch.bfloat16, requires_grad=True)
        flops = 3 * 2 * a.batch * cout * cin * a.kernel * length
        for layout in ("ncl", "channels_last"):
            x = torch.randn(a.batch, cin, length, device="cuda", dtype=torch.bfloat16)
            if layout == "ncl":
                x.requires_grad_(True)

                def step(x=x, w=w):
                    F.conv1d(x, w, padding=a.kernel // 2).sum().backward()
            else:
                x4 = x.unsqueeze(2).contiguous(memory_format=torch.channels_last).requires_grad_(True)
                w4 = w.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last).requires_grad_(True)

                def step(x4=x4, w4=w4):
                    F.conv2d(x4, w4, padding=(0, a.kernel // 2)).sum().backward()
            ms = _time(step)
            rows.append({"bench": "conv1d_fwd_bwd", "layout": layout, "cin": cin, "cout": cout, "length": length,
                         "kernel": a.kernel, "batch": a.batch, "ms": round(ms, 4), "tflops": round(flops / ms / 1e9, 1),
                         "gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
                         "cudnn": torch.backends.cudnn.version(), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "command": "python3 " + " ".join(sys.argv)})
            print(json.dumps(rows[-1]))
    if a.out:
        with open(a.out, "a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
