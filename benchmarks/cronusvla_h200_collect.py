"""Collect the H200 CronusVLA training runs (benchmarks/cronusvla_h200.sh train) into at most 8 files for the trip
back: per seed, the M = 4 and M = 1 checkpoints at the LAST STEP BOTH REACHED (a checkpoint every 1000 steps and
``last.ckpt``, so a run cut short by its time guard is still compared at an equal step), a summary JSON (steps,
wall times, exit codes, held-out validation metrics at that step, versions) and a tarball of the logs.

    python3 benchmarks/cronusvla_h200_collect.py --work runs/cronusvla_h200 --out "$OUT" --seeds 0 1 2
"""
from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
import tarfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from tasks.bench import git_commit  # noqa: E402

NAME = "cronusvla_h200"


def checkpoint_steps(run: Path) -> dict[int, Path]:
    """{global step: checkpoint} of one run (step checkpoints and last.ckpt; the newest version folder)."""
    out: dict[int, Path] = {}
    for ckpt in sorted(run.glob("lightning_logs/version_*/checkpoints/*.ckpt")):
        step = int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])
        out.setdefault(step, ckpt)
    return out


def val_metrics(run: Path) -> dict[int, dict[str, float]]:
    """{global step: {metric: value}} of the run's CSV log (Lightning's CSV rows carry the global step - 1)."""
    rows: dict[int, dict[str, float]] = {}
    for path in sorted(run.glob("lightning_logs/version_*/metrics.csv")):
        with path.open() as f:
            for row in csv.DictReader(f):
                step = int(row.get("step") or 0) + 1
                vals = {k: float(v) for k, v in row.items() if k not in ("step", "epoch") and v not in ("", None)}
                rows.setdefault(step, {}).update(vals)
    return rows


def at_step(metrics: dict[int, dict[str, float]], step: int) -> dict[str, float]:
    """The validation metrics logged at global step ``step`` (empty when no validation ran there)."""
    return {k: v for k, v in metrics.get(step, {}).items() if k.startswith("val/")}


def read_times(path: Path) -> dict[str, dict[str, Any]]:
    """``run<TAB>rc<TAB>seconds`` lines the shell script wrote."""
    out: dict[str, dict[str, Any]] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            run, rc, sec = line.split("\t")
            out[run] = {"rc": int(rc), "seconds": int(sec)}
    return out


def collect(work: Path, out: Path, seeds: Sequence[int]) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    times = read_times(work / "times.tsv")
    commit, dirty = git_commit()
    summary: dict[str, Any] = {
        "bench": "cronusvla_h200_train", "git_commit": commit[:12] or "unknown", "dirty": dirty,
        "torch": torch.__version__, "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "stage1": {"run": "stage1", **times.get("stage1", {}), "steps": max(checkpoint_steps(work / "stage1"),
                                                                            default=None),
                   "val": {s: v for s, v in val_metrics(work / "stage1").items()
                           if any(k.startswith("val/") for k in v)}},
        "runs": [], "total_seconds": times.get("total", {}).get("seconds"),
    }
    for seed in seeds:
        runs = {m: work / f"{m}_s{seed}" for m in ("m4", "m1")}
        steps = {m: checkpoint_steps(r) for m, r in runs.items()}
        common = sorted(set(steps["m4"]) & set(steps["m1"]))
        for m, run in runs.items():
            metrics = val_metrics(run)
            entry: dict[str, Any] = {"run": f"{m}_s{seed}", "num_frames": 4 if m == "m4" else 1, "seed": seed,
                                     **times.get(f"{m}_s{seed}", {}), "steps_reached": max(steps[m], default=None),
                                     "val_by_step": {s: v for s, v in metrics.items()
                                                     if any(k.startswith("val/") for k in v)}}
            if common:
                step = common[-1]
                dest = out / f"{NAME}_{m}_s{seed}.ckpt"
                shutil.copyfile(steps[m][step], dest)
                entry |= {"step": step, "ckpt": dest.name, "val_at_step": at_step(metrics, step)}
            else:
                entry["error"] = "no checkpoint step common to M = 4 and M = 1"
            summary["runs"].append(entry)
    (out / f"{NAME}_train.json").write_text(json.dumps(summary, indent=1) + "\n")
    with tarfile.open(out / f"{NAME}_logs.tar.gz", "w:gz") as tar:
        for path in sorted(work.rglob("*")):
            if path.is_file() and (path.suffix in (".log", ".csv", ".yaml", ".tsv")):
                tar.add(path, arcname=str(path.relative_to(work)))
    return summary


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", required=True, help="the runs' folder (stage1/, m4_s<seed>/, m1_s<seed>/, times.tsv)")
    ap.add_argument("--out", required=True, help="where the (at most 8) files go")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    a = ap.parse_args(argv)
    summary = collect(Path(a.work), Path(a.out), a.seeds)
    for r in summary["runs"]:
        print(f"{r['run']}: steps {r.get('steps_reached')} compared at {r.get('step')} rc {r.get('rc')} "
              f"{r.get('seconds')} s val {r.get('val_at_step')}")
    return summary


if __name__ == "__main__":
    main()
