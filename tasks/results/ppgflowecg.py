"""PPGFlowECG results recipe (issue 16): trained on a real PhysioNet record, judged on its held-out time span beside
baselines no one here wrote.

    python -m tasks.results.ppgflowecg --config configs/ppgflowecg/results_cpu.yaml [--out DIR]

Trains stage 1 (CardioAlign) and stage 2 (latent rectified flow) with the config's ``stage1`` / ``stage2`` sections
(the checkpoint with the best validation loss of each stage is kept: early stopping on the VALIDATION span), then
samples ECG for every TEST window from its PPG and scores it against the real ECG beside:

- the PPG itself taken as the ECG waveform (Pearson r, RMSE) and the heart rate read from the PPG's own pulse peaks
  (NeuroKit2 ``nk.ppg_peaks``);
- scikit-learn ``Ridge`` from PPG windows to ECG windows, fitted on the training windows, alpha chosen on the
  validation windows;
- (for reference, not baselines) the stage-1 reconstruction of the real ECG, an upper bound, and the CardioAlign
  cross-decoding of the PPG latent without the flow.

Metrics, per window then averaged: Pearson r and RMSE on the z-scored windows (``tasks.metrics.signal``), and
heart-rate MAE with NeuroKit2's R-peak detector ``nk.ecg_peaks`` applied alike to the generated (or baseline) and the
real ECG (the rate of a window = 60·fs / mean R-R; windows where either side has < 2 peaks are left out and counted).
Writes ``results.md``, ``results.json`` and ``generated_vs_real.png`` into the output folder. ``--checkpoint`` skips
training and evaluates a stage-2 checkpoint.
"""
from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tasks.results._report import checkout_commit, prepare_run, runner_parser

__all__ = ["evaluate", "hr_mae", "nk_heart_rate", "ridge_baseline", "run", "split_arrays", "train_stage"]


# ------------------------------------------------------------------------------------------------ metrics
def nk_heart_rate(x: np.ndarray, fs: float, kind: str = "ecg") -> float:
    """Heart rate (bpm) of one window from NeuroKit2's peak detector: ``nk.ecg_peaks`` (R peaks) for ``kind='ecg'``,
    ``nk.ppg_peaks`` (systolic peaks) for 'ppg'; 60·fs / mean peak interval; NaN with < 2 peaks or a failure."""
    import warnings

    import neurokit2 as nk

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "ecg":
                peaks = nk.ecg_peaks(np.asarray(x, np.float64), sampling_rate=int(fs))[1]["ECG_R_Peaks"]
            else:
                peaks = nk.ppg_peaks(np.asarray(x, np.float64), sampling_rate=int(fs))[1]["PPG_Peaks"]
    except Exception:  # NeuroKit raises on degenerate windows (e.g. generated noise): no rate for that window
        return float("nan")
    peaks = np.asarray(peaks)
    return float(60.0 * fs / np.diff(peaks).mean()) if len(peaks) >= 2 else float("nan")


def hr_mae(pred_hr: np.ndarray, true_hr: np.ndarray) -> tuple[float, int]:
    """(mean |pred - true| over windows where both rates exist, number of such windows)."""
    ok = np.isfinite(pred_hr) & np.isfinite(true_hr)
    return (float(np.abs(pred_hr[ok] - true_hr[ok]).mean()) if ok.any() else float("nan")), int(ok.sum())


def _row(name: str, pred: np.ndarray, real: np.ndarray, real_hr: np.ndarray, fs: float,
         pred_hr: np.ndarray | None = None, kind: str = "model") -> dict[str, Any]:
    from tasks.metrics import signal as sm

    if pred_hr is None:
        pred_hr = np.array([nk_heart_rate(w, fs, "ecg") for w in pred])
    mae_hr, n_hr = hr_mae(pred_hr, real_hr)
    return {"method": name, "kind": kind, "pearson_r": sm.pearson_r(pred, real), "rmse": sm.rmse(pred, real),
            "hr_mae_bpm": mae_hr, "hr_windows": n_hr, "windows": int(len(real))}


# ------------------------------------------------------------------------------------------------ data
def build_datamodule(data: dict[str, Any]) -> Any:
    from datamodules.signal import WFDBPairedSignalDataModule

    dm = WFDBPairedSignalDataModule(**data)
    dm.setup("fit")
    return dm


def split_arrays(dm: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(ECG, PPG) windows of ``split`` as (N, T) float32 arrays."""
    ds = dm.dataset(split)
    items = [ds[i] for i in range(len(ds))]
    return (np.stack([it["ecg"][0].numpy() for it in items]), np.stack([it["ppg"][0].numpy() for it in items]))


def ridge_baseline(train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
                   alphas: Sequence[float]) -> tuple[Any, float, list[dict[str, float]]]:
    """scikit-learn ``Ridge`` from PPG windows (inputs) to ECG windows (targets): one fit per alpha on the training
    windows, the alpha with the best validation Pearson r kept. ``train``/``val`` are (ECG, PPG) pairs."""
    from sklearn.linear_model import Ridge

    from tasks.metrics import signal as sm

    scores, best = [], None
    for a in alphas:
        m = Ridge(alpha=float(a)).fit(train[1], train[0])
        r = sm.pearson_r(m.predict(val[1]), val[0])
        scores.append({"alpha": float(a), "val_pearson_r": r})
        if best is None or r > best[1]:
            best = (m, r, float(a))
    assert best is not None
    return best[0], best[2], scores


# ------------------------------------------------------------------------------------------------ training
def train_stage(task: Any, dm: Any, trainer_kwargs: dict[str, Any], out: Path, monitor: str,
                patience: int | None = None) -> Path:
    """Fit ``task`` keeping the checkpoint with the lowest ``monitor`` (a validation metric); early stop after
    ``patience`` validations without improvement (None: never). Returns the best checkpoint."""
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import EarlyStopping, ModelCheckpoint

    ckpt = ModelCheckpoint(dirpath=str(out / "checkpoints"), monitor=monitor, mode="min", save_top_k=1,
                           filename="best", save_last=False)
    callbacks: list[Any] = [ckpt]
    if patience:
        callbacks.append(EarlyStopping(monitor=monitor, mode="min", patience=patience))
    kw = {"accelerator": "auto", "devices": 1, "logger": pl.loggers.CSVLogger(str(out), name="", version=""),
          "enable_model_summary": False, "enable_progress_bar": False, "num_sanity_val_steps": 0,
          "check_val_every_n_epoch": None, **trainer_kwargs}
    trainer = pl.Trainer(default_root_dir=str(out), callbacks=callbacks, **kw)
    trainer.fit(task, datamodule=dm)
    return Path(ckpt.best_model_path)


def _val_curve(folder: Path, key: str) -> list[tuple[int, float]]:
    """(step, value) of a validation metric from the stage's CSV log."""
    import csv

    f = folder / "metrics.csv"
    if not f.is_file():
        return []
    rows = list(csv.DictReader(f.open()))
    return [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]


# ------------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def evaluate(stage2_ckpt: str | os.PathLike, dm: Any, cfg: dict[str, Any], out: Path) -> dict[str, Any]:
    """Score the stage-2 checkpoint and the baselines on the test windows; write the table, JSON and figure."""
    from tasks.signal import ECGFlowTask

    ev = cfg.get("eval", {})
    fs = float(dm.fs)
    task = ECGFlowTask.load_from_checkpoint(str(stage2_ckpt), map_location="cpu", weights_only=True).eval()
    net, flow = task.net.float(), task.flow_ema.module.float()
    test_ecg, test_ppg = split_arrays(dm, "test")
    train, val = split_arrays(dm, "train"), split_arrays(dm, "val")
    real_hr = np.array([nk_heart_rate(w, fs, "ecg") for w in test_ecg])
    ppg_t = torch.from_numpy(test_ppg)[:, None]
    steps, seeds = int(ev.get("sample_steps", 10)), int(ev.get("seeds", 3))
    fakes = []
    for s in range(seeds):
        g = torch.Generator().manual_seed(s)
        fakes.append(net.sample_ecg(ppg_t, steps=steps, generator=g, flow=flow,
                                    sample_posterior=bool(ev.get("sample_posterior", True)))[:, 0].numpy())
    recon = net.decode_ecg(net.encode(torch.from_numpy(test_ecg)[:, None], sample=False))[:, 0].numpy()
    cross = net.decode_ecg(net.encode(ppg_t, sample=False))[:, 0].numpy()
    ridge, alpha, ridge_scores = ridge_baseline(train, val, ev.get("ridge_alphas", [0.1, 1, 10, 100, 1000, 10000]))
    ppg_hr = np.array([nk_heart_rate(w, fs, "ppg") for w in test_ppg])

    per_seed = [_row(f"seed {s}", f, test_ecg, real_hr, fs) for s, f in enumerate(fakes)]
    ours = {"method": f"PPGFlowECG ({task.hparams.model}, EMA flow, {steps} Euler steps; mean of {seeds} samples' "
                      "scores)", "kind": "ours"}
    for k in ("pearson_r", "rmse", "hr_mae_bpm"):
        vals = np.array([r[k] for r in per_seed], dtype=float)
        ours[k], ours[f"{k}_std"] = float(np.nanmean(vals)), float(np.nanstd(vals))
    ours.update(hr_windows=int(np.mean([r["hr_windows"] for r in per_seed])), windows=len(test_ecg))
    rows = [
        ours,
        _row("baseline: PPG itself as the ECG (waveform); HR from its pulse peaks (nk.ppg_peaks)", test_ppg,
             test_ecg, real_hr, fs, pred_hr=ppg_hr, kind="baseline"),
        _row(f"baseline: scikit-learn Ridge PPG window → ECG window (alpha {alpha:g}, chosen on val)",
             ridge.predict(test_ppg), test_ecg, real_hr, fs, kind="baseline"),
        _row("reference: CardioAlign cross-decoding dec_ecg(enc(PPG)), no flow", cross, test_ecg, real_hr, fs,
             kind="reference"),
        _row("reference: stage-1 reconstruction of the real ECG (upper bound, sees the ECG)", recon, test_ecg,
             real_hr, fs, kind="reference"),
    ]
    res = {"rows": rows, "per_seed": per_seed, "ridge_alphas": ridge_scores, "fs": fs,
           "windows": {k: int(len(dm.split_indices[k])) for k in ("train", "val", "test")},
           "window_s": dm.seq_len / fs, "real_hr_mean_bpm": float(np.nanmean(real_hr)),
           "stage2_checkpoint": str(stage2_ckpt)}
    _plot(out / "generated_vs_real.png", test_ecg, test_ppg, fakes, ridge.predict(test_ppg), fs,
          int(ev.get("num_plot", 3)))
    return res


def _plot(path: Path, ecg: np.ndarray, ppg: np.ndarray, fakes: list[np.ndarray], ridge: np.ndarray, fs: float,
          k: int) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # matplotlib is a test extra
        return
    k = min(k, len(ecg))
    idx = np.linspace(0, len(ecg) - 1, k).round().astype(int)
    t = np.arange(ecg.shape[-1]) / fs
    fig, axes = plt.subplots(k, 1, figsize=(9, 1.9 * k), squeeze=False)
    for ax, i in zip(axes[:, 0], idx):
        ax.plot(t, ppg[i] - 5, color="tab:purple", lw=0.8, label="PPG (input)")
        ax.plot(t, ecg[i], color="black", lw=1.1, label="real ECG (II)")
        ax.plot(t, fakes[0][i], color="tab:red", lw=0.9, alpha=0.85, label="PPGFlowECG (seed 0)")
        ax.plot(t, ridge[i] + 5, color="tab:green", lw=0.8, label="Ridge baseline (+5)")
        ax.set_yticks([])
        ax.set_title(f"held-out test window {i}", fontsize=8)
    axes[0, 0].legend(loc="upper right", fontsize=6, ncol=4)
    axes[-1, 0].set_xlabel("time (s)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _fmt(v: Any, std: Any = None) -> str:
    if not isinstance(v, (int, float)) or not np.isfinite(v):
        return "–"
    return f"{v:.3f} ± {std:.3f}" if isinstance(std, float) and std > 0 else f"{v:.3f}"


def write_table(res: dict[str, Any], out: Path, meta: dict[str, Any]) -> str:
    w = res["windows"]
    lines = [f"PPG→ECG on held-out real data: {meta['split']} ({w['train']} train / {w['val']} val / {w['test']} "
             f"test windows of {res['window_s']:g} s at {res['fs']:g} Hz, z-scored; mean real HR "
             f"{res['real_hr_mean_bpm']:.0f} bpm)", "",
             "| method | Pearson r ↑ | RMSE ↓ | HR MAE (bpm) ↓ | HR windows |", "| --- | --- | --- | --- | --- |"]
    for r in res["rows"]:
        lines.append(f"| {r['method']} | {_fmt(r['pearson_r'], r.get('pearson_r_std'))} | "
                     f"{_fmt(r['rmse'], r.get('rmse_std'))} | {_fmt(r['hr_mae_bpm'], r.get('hr_mae_bpm_std'))} | "
                     f"{r['hr_windows']}/{r['windows']} |")
    lines += ["", f"Command: `{meta['command']}`; machine: {meta['machine']}; commit {meta['commit']}; "
              f"wall {meta['wall_s']:.0f} s."]
    text = "\n".join(lines) + "\n"
    (out / "results.md").write_text(text)
    (out / "results.json").write_text(json.dumps({**res, "meta": meta}, indent=2, default=str))
    return text


def _machine() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    cpu = platform.processor() or platform.machine()
    return f"CPU {cpu}, {torch.get_num_threads()} thread(s) of {os.cpu_count()} cores (torch {torch.__version__})"


# ------------------------------------------------------------------------------------------------ entry point
def smoke(cfg: dict[str, Any]) -> None:
    """Shrink a recipe in place to a CPU smoke run: 2 steps per stage, validation every step, 1 sample, no workers."""
    for st in ("stage1", "stage2"):
        cfg[st]["trainer"] |= {"accelerator": "cpu", "precision": "32-true", "max_steps": 2, "val_check_interval": 1}
        cfg[st]["task"]["sample_steps"] = 2 if st == "stage2" else cfg[st]["task"].get("sample_steps")
        cfg[st]["task"] = {k: v for k, v in cfg[st]["task"].items() if v is not None}
    cfg["dataset"] |= {"num_workers": 0}
    cfg["eval"] = cfg.get("eval", {}) | {"sample_steps": 2, "seeds": 1}


def run(argv: Sequence[str] = ()) -> dict[str, Any]:
    """Train both stages (unless ``--checkpoint``), evaluate ours and the baselines on the test span, write the
    table and the figure."""
    p = runner_parser("ppgflowecg", __doc__)
    p.add_argument("--checkpoint", default=None, help="evaluate this stage-2 checkpoint instead of training")
    p.add_argument("--stage1-checkpoint", default=None, help="skip stage 1: train stage 2 on this stage-1 checkpoint")
    a = p.parse_args(list(argv))
    import pytorch_lightning as pl

    from tasks.signal import CardioAlignTask, ECGFlowTask

    cfg, out = prepare_run(a, "ppgflowecg", smoke)
    t0 = time.time()
    pl.seed_everything(int(cfg.get("seed", 0)), workers=True)
    dm = build_datamodule(cfg["dataset"])
    curves: dict[str, Any] = {}
    s2 = a.checkpoint
    if s2 is None:
        c1, c2 = cfg["stage1"], cfg["stage2"]
        s1 = Path(a.stage1_checkpoint) if a.stage1_checkpoint else train_stage(
            CardioAlignTask(**c1["task"]), dm, c1["trainer"], out / "stage1", c1["monitor"], c1.get("patience"))
        pl.seed_everything(int(cfg.get("seed", 0)), workers=True)
        s2 = train_stage(ECGFlowTask(**c2["task"], stage1_checkpoint=str(s1)), dm, c2["trainer"], out / "stage2",
                         c2["monitor"], c2.get("patience"))
        curves = {"stage1": {"monitor": c1["monitor"], "val": _val_curve(out / "stage1", c1["monitor"]),
                             "best": str(s1)},
                  "stage2": {"monitor": c2["monitor"], "val": _val_curve(out / "stage2", c2["monitor"]),
                             "best": str(s2)}}
    res = evaluate(s2, dm, cfg, out)
    res["val_curves"] = curves
    command = f"python -m tasks.results.ppgflowecg --config {a.config}" + (" --tiny" if a.tiny else "")
    meta = {"command": command, "machine": _machine(),
            "commit": checkout_commit(), "wall_s": time.time() - t0, "split": cfg.get("split_rule", "time split"),
            "config": cfg}
    print(write_table(res, out, meta))
    return res


if __name__ == "__main__":
    run(__import__("sys").argv[1:])
