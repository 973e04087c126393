"""``sharezoo demo ppgflowecg``: PPGFlowECG on CPU on the bundled real record a103l: stage 1 → stage 2 →
generated-vs-real figure + metrics.

    sharezoo demo ppgflowecg [--out runs/ppgflowecg_demo] [--stage1-steps 300] [--stage2-steps 300]

Trains both stages through the ``sharezoo`` CLI with ``configs/ppgflowecg/demo.yaml`` and ``demo_stage2.yaml``, then
samples ECG for the held-out (last 10 % of the record) PPG windows with the EMA flow (10 Euler steps, several
seeds) and writes ``generated_vs_real.png``, ``metrics.md`` and ``metrics.json`` into ``--out``.
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tasks.demos import CONFIGS as ALL_CONFIGS
from tasks.demos import Demo

CONFIGS = ALL_CONFIGS / "ppgflowecg"


def _fit(config: Path, out: Path, stage: str, steps: int, overrides: dict | None = None) -> Path:
    """Run ``sharezoo fit`` on a copy of ``config`` whose run folder and checkpoint folder are under ``out``."""
    import yaml

    from tasks._lightning_cli import lightning_cli

    cfg = yaml.safe_load(config.read_text())
    ckpt_dir = out / stage / "checkpoints"
    cfg["trainer"]["max_steps"] = steps
    cfg["trainer"]["default_root_dir"] = str(out / stage)
    for cb in cfg["trainer"].get("callbacks", []):
        if cb["class_path"].endswith("ModelCheckpoint"):
            cb["init_args"]["dirpath"] = str(ckpt_dir)
    cfg["model"]["init_args"].update(overrides or {})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{stage}.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    lightning_cli(["fit", "--config", str(path)])
    return ckpt_dir / "last.ckpt"


def evaluate(stage2_ckpt: str | os.PathLike, out: Path, steps: int = 10, seeds: int = 3, num_plot: int = 4) -> dict:
    """Sample the test windows of the demo datamodule and write the figure and the metrics table."""
    import yaml

    from datamodules.signal import WFDBPairedSignalDataModule
    from tasks.metrics import signal as sm
    from tasks.signal import ECGFlowTask

    task = ECGFlowTask.load_from_checkpoint(str(stage2_ckpt), map_location="cpu", weights_only=False).eval()
    data_args = yaml.safe_load((CONFIGS / "demo_stage2.yaml").read_text())["data"]["init_args"]
    dm = WFDBPairedSignalDataModule(**data_args)
    dm.setup("test")
    test = dm.dataset("test")
    ecg = torch.stack([test[i]["ecg"] for i in range(len(test))])
    ppg = torch.stack([test[i]["ppg"] for i in range(len(test))])
    net, flow = task.net, task.flow_ema.module
    fakes = []
    with torch.no_grad():
        for s in range(seeds):
            g = torch.Generator().manual_seed(s)
            fakes.append(net.sample_ecg(ppg, steps=steps, generator=g, flow=flow))
        recon = net.decode_ecg(net.encode(ecg, sample=False))
    fs = dm.fs

    def row(name: str, pred: torch.Tensor) -> dict:
        r = {"method": name, "mae": sm.mae(pred, ecg), "rmse": sm.rmse(pred, ecg), "pearson_r": sm.pearson_r(pred, ecg),
             "fd": sm.frechet_distance(ecg, pred) if len(ecg) > 1 else float("nan"),
             "hr_mae_bpm": sm.heart_rate_mae(pred, ecg, fs)}
        return r

    rows = [row(f"PPGFlowECG tiny, EMA, {steps} Euler steps, seed {s}", f) for s, f in enumerate(fakes)]
    rows.append(row("stage-1 reconstruction of the real ECG (upper bound)", recon))
    rows.append(row("PPG itself as the ECG (naive baseline)", ppg))
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps({"n_windows": len(ecg), "fs": fs, "rows": rows}, indent=2))
    lines = [f"PPG→ECG on the held-out a103l windows ({len(ecg)} x {ecg.shape[-1] / fs:.0f} s, z-scored)", "",
             "| method | MAE | RMSE | Pearson r | FD | HR MAE (bpm) |", "| --- | --- | --- | --- | --- | --- |"]
    lines += [f"| {r['method']} | {r['mae']:.3f} | {r['rmse']:.3f} | {r['pearson_r']:.3f} | {r['fd']:.1f} | "
              f"{r['hr_mae_bpm']:.1f} |" for r in rows]
    (out / "metrics.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a test extra
        print("matplotlib not installed: no figure")
        return {"rows": rows}
    k = min(num_plot, len(ecg))
    t = np.arange(ecg.shape[-1]) / fs
    fig, axes = plt.subplots(k, 1, figsize=(10, 2.2 * k), squeeze=False)
    for i in range(k):
        ax = axes[i, 0]
        ax.plot(t, ppg[i, 0] - 4, color="tab:purple", lw=1, label="PPG (input)")
        ax.plot(t, ecg[i, 0], color="black", lw=1.2, label="real ECG (II)")
        for s, f in enumerate(fakes):
            ax.plot(t, f[i, 0], lw=0.9, alpha=0.8, color=f"C{s}", label=f"generated, seed {s}")
        ax.set_yticks([])
        ax.set_title(f"held-out window {i}", fontsize=9)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=3)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    fig.savefig(out / "generated_vs_real.png", dpi=110)
    print(f"wrote {out / 'generated_vs_real.png'}, {out / 'metrics.md'}")
    return {"rows": rows}


def run(argv: Sequence[str] = ()) -> int:
    """Train both stages (unless ``--evaluate-only``), then sample and score the held-out windows."""
    p = argparse.ArgumentParser(prog="sharezoo demo ppgflowecg", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--out", default="runs/ppgflowecg_demo", help="output folder")
    p.add_argument("--stage1-steps", type=int, default=300, help="stage-1 optimisation steps")
    p.add_argument("--stage2-steps", type=int, default=300, help="stage-2 optimisation steps")
    p.add_argument("--sample-steps", type=int, default=10, help="Euler steps of the final sampling")
    p.add_argument("--seeds", type=int, default=3, help="samples per PPG window")
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads (default: 1 on machines with <= 2 cores, where more threads are slower)")
    p.add_argument("--evaluate-only", default=None, help="skip training; evaluate this stage-2 checkpoint")
    a = p.parse_args(list(argv))
    threads = a.threads or (1 if (os.cpu_count() or 1) <= 2 else min(8, os.cpu_count() or 1))
    torch.set_num_threads(threads)
    out = Path(a.out)
    if a.evaluate_only:
        evaluate(a.evaluate_only, out, a.sample_steps, a.seeds)
        return 0
    s1 = _fit(CONFIGS / "demo.yaml", out, "stage1", a.stage1_steps, {"cosine_steps": a.stage1_steps})
    s2 = _fit(CONFIGS / "demo_stage2.yaml", out, "stage2", a.stage2_steps, {"stage1_checkpoint": str(s1)})
    evaluate(s2, out, a.sample_steps, a.seeds)
    return 0


DEMO = Demo("ppgflowecg", "PPG→ECG on the bundled real record a103l: both stages, then generated-vs-real metrics "
            "and figure (CPU)", run, configs=("ppgflowecg/demo.yaml", "ppgflowecg/demo_stage2.yaml"))
