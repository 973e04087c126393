"""Does RoPE position interpolation keep Dens3R's 2x-resolution output consistent with the 1x one? (issue 6)

A random-weight network has learned nothing about positions, so this check TRAINS ``dens3r_tiny`` (stage 1, the
synthetic ray-cast scenes with exact ground truth) at a base resolution (64 px = 4x4 tokens) and then infers on
held-out scenes rendered at 1x and 2x (128 px = 8x8 tokens), with several position schemes for the same weights:

- ``interpolate`` (Dens3R Eq. 2): the 2x token grid is squeezed into the position range seen in training
  (stride halved: 0, 4, ..., 28 for a model trained with the default 0-32 range at 4 tokens).
- ``extrapolate`` (plain RoPE): the trained position stride is kept, so 2x positions run past the trained range
  (0, 8, ..., 56). Implemented as ``interpolate=False`` with the RoPE frequency scale ``f0`` = trained stride;
  at 1x both schemes give bit-for-bit the same positions (checked and recorded).
- ``integer`` (only for a model trained with interpolation): ``rope.interpolate`` flipped off with nothing else
  changed, i.e. integer positions 0..L-1 at every size — not what the model was trained on even at 1x.

A fourth scheme, ``no_positions`` (every token at position 0, RoPE = identity), is the reference for "the
positions carry no information" (the DPT convolutions' zero padding still tells borders apart).

A second model (skip it with ``--pi-only``) is trained from the same initial weights on the same batches with
interpolation off (integer positions, stride 1) and evaluated with extrapolation (its native positions) and with
interpolation applied after training (the 2x grid squeezed into 0..4, as LLM context extension does). At the
paper's scale the two trainings are identical (512 px = 32 tokens = the interpolation range); at 64 px they
differ by the stride (8 vs 1), i.e. by the RoPE frequencies, so model 2 is a second frequency regime rather
than "the same model without PI".

Figures per model / scheme / size: depth AbsRel and delta<1.25 vs the exact ground truth (least-squares
scale-and-shift alignment per image, ``tasks.metrics.geometry.depth_metrics``), and the agreement of the 2x
prediction, area-downsampled to the 1x grid, with the 1x prediction (same metric, the 1x prediction as reference).

    python benchmarks/dens3r_pi_consistency.py                          # CPU, ~8 min on 2 idle cores
    python benchmarks/dens3r_pi_consistency.py --device cuda --steps 6000

Writes one JSON line to benchmarks/results/dens3r_pi_consistency.jsonl; the trained weights go to a temporary
directory (``--save-dir`` to keep them somewhere git-ignored, e.g. ``runs/``).
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from datamodules.geometry import SyntheticGeometryDataModule, SyntheticPairs  # noqa: E402
from tasks.geometry import GeometryTask  # noqa: E402
from tasks.metrics.geometry import depth_metrics  # noqa: E402


# ------------------------------------------------------------------------------------------- positions
@contextlib.contextmanager
def rope_scheme(net: torch.nn.Module, interpolate: bool, ref_len: float, f0: float):
    """Temporarily set the network's RoPE position scheme."""
    rope = net.rope
    old = (rope.interpolate, rope.ref_len, rope.f0)
    rope.interpolate, rope.ref_len, rope.f0 = interpolate, float(ref_len), float(f0)
    try:
        yield
    finally:
        rope.interpolate, rope.ref_len, rope.f0 = old


def schemes(trained_pi: bool, ref_len: float, train_tokens: int) -> dict[str, tuple[bool, float, float]]:
    """Inference position schemes ``name -> (interpolate, ref_len, f0)`` for a model trained at ``train_tokens``
    tokens a side. The trained stride (position step per token) is ``ref_len / train_tokens`` with interpolation,
    1 without; ``interpolate`` keeps the trained range at any size, ``extrapolate`` keeps the trained stride."""
    stride = ref_len / train_tokens if trained_pi else 1.0
    out = {"interpolate": (True, stride * train_tokens, 1.0), "extrapolate": (False, ref_len, stride)}
    if trained_pi and stride != 1.0:
        out["integer"] = (False, ref_len, 1.0)
    out["no_positions"] = (False, ref_len, 0.0)  # every token at position 0: RoPE is the identity
    return out


def positions_used(net: torch.nn.Module, tokens: int) -> list[float]:
    """The (row) positions the network's RoPE gives a ``tokens``-wide grid, in units of the base frequency."""
    rope = net.rope
    pos = rope.scaled_positions(torch.arange(tokens)[None, :, None].expand(1, -1, 2))[0, :, 0] * rope.f0
    return [round(float(p), 4) for p in pos]


# ------------------------------------------------------------------------------------------------ train
class _RenderOnce(SyntheticGeometryDataModule):
    """Keeps its (cached) scenes across several ``Trainer.fit`` calls."""

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            super().setup(stage)


class Progress(pl.Callback):
    def __init__(self, every: int, total: int, tag: str) -> None:
        self.every, self.total, self.tag = every, total, tag
        self.losses: list[float] = []
        self.t0 = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(outputs["loss"]))
        step = trainer.global_step
        if step % self.every == 0 or step == self.total:
            recent = np.mean(self.losses[-self.every:])
            print(f"[{self.tag}] step {step}/{self.total}  loss {recent:.4f}  {time.perf_counter() - self.t0:.0f}s",
                  flush=True)


def train(a: argparse.Namespace, dm: SyntheticGeometryDataModule, rope_interpolate: bool,
          tag: str) -> tuple[GeometryTask, dict]:
    pl.seed_everything(a.seed, verbose=False)  # same initial weights and batch order for every model
    task = GeometryTask("dens3r_tiny", stage=1, lr=a.lr, warmup_steps=a.warmup, max_matches=128,
                        model_kwargs={"rope_interpolate": rope_interpolate})
    prog = Progress(a.log_every, a.steps, tag)
    gpu = a.device.startswith("cuda")
    tr = pl.Trainer(max_steps=a.steps, accelerator="gpu" if gpu else "cpu", devices=1, logger=False,
                    enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                    limit_val_batches=0, num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[prog],
                    default_root_dir=a.save_dir)
    t = time.perf_counter()
    tr.fit(task, dm)
    secs = time.perf_counter() - t
    k = max(1, len(prog.losses) // 20)
    info = {"train_s": round(secs, 1), "steps": tr.global_step, "loss_first": round(float(np.mean(prog.losses[:k])), 4),
            "loss_last": round(float(np.mean(prog.losses[-k:])), 4)}
    folder = zoo.save_pretrained(task.net, Path(a.save_dir) / f"dens3r_tiny_{tag}")
    info["weights"] = str(folder)
    return task, info


# ------------------------------------------------------------------------------------------------- eval
def held_out(n: int, size: int, seed: int) -> dict[str, torch.Tensor]:
    """``n`` held-out pairs (the datamodule's test seeds) rendered at ``size``; same scenes/cameras at any size."""
    ds = SyntheticPairs(n, size=size, seed=seed + 2_000_000, cache=False)
    return torch.utils.data.default_collate([ds[i] for i in range(n)])


@torch.no_grad()
def predict_depth(net: torch.nn.Module, batch: dict[str, torch.Tensor], device: str, chunk: int = 8) -> torch.Tensor:
    out = []
    for i in range(0, len(batch["img1"]), chunk):
        o = net(batch["img1"][i:i + chunk].to(device), batch["img2"][i:i + chunk].to(device))
        out.append(o.depth.float().cpu())
    return torch.cat(out)


def _m(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor | None, **kw) -> dict:
    d = depth_metrics(pred, gt, valid, align="scale_shift", reduction="none", **kw)
    return {"abs_rel": round(float(d["abs_rel"].mean()), 4), "delta1": round(float(d["delta1"].mean()), 4),
            "_per_scene": d["abs_rel"].float()}


def _paired(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Per-scene comparison of two AbsRel vectors: mean of a - b, its standard error, fraction of scenes a < b."""
    d = a - b
    return {"mean_diff": round(float(d.mean()), 4), "sem": round(float(d.std() / len(d) ** 0.5), 4),
            "frac_lower": round(float((d < 0).float().mean()), 3)}


def evaluate(net: torch.nn.Module, lo: dict, hi: dict, device: str, scheme: tuple[bool, float, float]) -> dict:
    size_lo = lo["img1"].shape[-1]
    with rope_scheme(net, *scheme):
        d_lo, d_hi = predict_depth(net, lo, device), predict_depth(net, hi, device)
        pos_hi = positions_used(net, hi["img1"].shape[-1] // net.patch_size)
    d_down = F.interpolate(d_hi[:, None], size=(size_lo, size_lo), mode="area")[:, 0]
    return {
        "positions_2x": pos_hi,
        "lo_vs_gt": _m(d_lo, lo["depth1"], lo["valid1"]),
        "hi_vs_gt": _m(d_hi, hi["depth1"], hi["valid1"]),
        "hi_down_vs_gt_lo": _m(d_down, lo["depth1"], lo["valid1"]),
        # agreement: the 1x prediction is the reference (positive depths from the exp pointmap head)
        "hi_down_vs_lo": _m(d_down, d_lo, lo["valid1"], min_depth=1e-6, max_depth=1e6),
        "_d_lo": d_lo,
    }


def run_model(a: argparse.Namespace, dm: SyntheticGeometryDataModule, trained_pi: bool, lo: dict, hi: dict) -> dict:
    tag = "pi" if trained_pi else "nopi"
    task, info = train(a, dm, trained_pi, tag)
    net = task.net.to(a.device).eval()
    tokens = a.size // net.patch_size
    res: dict = {"trained_with_interpolation": trained_pi, **info, "schemes": {}}
    for name, sch in schemes(trained_pi, net.rope.ref_len, tokens).items():
        r = evaluate(net, lo, hi, a.device, sch)
        res["schemes"][name] = r
        print(f"[{tag}] {name:12s} 1x AbsRel {r['lo_vs_gt']['abs_rel']:.4f} d1 {r['lo_vs_gt']['delta1']:.4f} | "
              f"2x AbsRel {r['hi_vs_gt']['abs_rel']:.4f} d1 {r['hi_vs_gt']['delta1']:.4f} | 2x-down vs 1x AbsRel "
              f"{r['hi_down_vs_lo']['abs_rel']:.4f} d1 {r['hi_down_vs_lo']['delta1']:.4f}", flush=True)
    s = res["schemes"]
    # at the training resolution interpolation and extrapolation are the same positions
    res["lo_max_abs_diff_interp_vs_extrap"] = float((s["interpolate"]["_d_lo"] - s["extrapolate"]["_d_lo"]).abs().max())
    # interpolation vs extrapolation, scene by scene (same weights, same scenes)
    res["interpolate_minus_extrapolate"] = {
        k: _paired(s["interpolate"][k]["_per_scene"], s["extrapolate"][k]["_per_scene"])
        for k in ("hi_vs_gt", "hi_down_vs_lo")}
    for r in s.values():
        del r["_d_lo"]
        for v in r.values():
            if isinstance(v, dict):
                v.pop("_per_scene", None)
    noise = torch.rand(lo["depth1"].shape, generator=torch.Generator().manual_seed(0))
    const = torch.ones_like(lo["depth1"]) + 1e-3 * noise  # the best affine map of (almost) a constant
    res["constant_depth_baseline_lo"] = _m(const, lo["depth1"], lo["valid1"])
    res["constant_depth_baseline_lo"].pop("_per_scene")
    return res


# ------------------------------------------------------------------------------------------- provenance
def provenance() -> dict:
    from tasks.bench import git_commit

    commit, dirty = git_commit()
    commit += "-dirty" if dirty else ""
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import timm

    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git_commit": commit or "unknown", "python": platform.python_version(), "torch": torch.__version__,
            "pytorch_lightning": pl.__version__, "timm": timm.__version__, "cpu": cpu,
            "threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--size", type=int, default=64, help="training (1x) resolution, a multiple of 16")
    ap.add_argument("--factor", type=int, default=2, help="inference resolution = factor x size")
    ap.add_argument("--steps", type=int, default=1200, help="optimiser steps per trained model")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--train-scenes", type=int, default=512)
    ap.add_argument("--test-scenes", type=int, default=32, help="held-out scenes (the datamodule's test seeds)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pi-only", action="store_true", help="skip the second model (trained with interpolation off)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--log-every", type=int, default=100)
    ap.add_argument("--save-dir", default=None, help="where the trained weights go (default: a temporary directory)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "dens3r_pi_consistency.jsonl"))
    a = ap.parse_args(argv)
    if a.size % 16 or a.factor < 2:
        ap.error("--size must be a multiple of 16 and --factor >= 2")
    if a.threads:
        torch.set_num_threads(a.threads)
    tmp = None
    if a.save_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="dens3r_pi_")
        a.save_dir = tmp.name
    t0 = time.perf_counter()
    hi_size = a.size * a.factor
    print(f"rendering {a.test_scenes} held-out pairs at {a.size} and {hi_size} px", flush=True)
    lo, hi = held_out(a.test_scenes, a.size, a.seed), held_out(a.test_scenes, hi_size, a.seed)
    # one training set (rendered once, cached) for both models
    dm = _RenderOnce(num_train=a.train_scenes, num_val=1, num_test=1, size=a.size, seed=a.seed, batch_size=a.batch)
    models = {"trained_pi": run_model(a, dm, True, lo, hi)}
    if not a.pi_only:
        models["trained_no_pi"] = run_model(a, dm, False, lo, hi)
    row = {
        "bench": "dens3r_pi_consistency",
        "command": " ".join(shlex.quote(x) for x in ["python", os.path.relpath(__file__, ROOT),
                                                     *(sys.argv[1:] if argv is None else argv)]),
        **provenance(), "device": a.device, "model": "dens3r_tiny", "stage": 1,
        "settings": {"size": a.size, "size_2x": hi_size, "patch": 16, "steps": a.steps, "batch": a.batch, "lr": a.lr,
                     "warmup": a.warmup, "train_scenes": a.train_scenes, "test_scenes": a.test_scenes, "seed": a.seed,
                     "rope_ref_len": 32.0, "rope_freq": 100.0, "align": "scale_shift", "downsample": "area"},
        "models": models, "wall_s": round(time.perf_counter() - t0, 1),
    }
    if tmp is not None:  # the weights are deleted with the temporary directory
        for m in models.values():
            m.pop("weights", None)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"wrote {out} ({row['wall_s']:.0f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
