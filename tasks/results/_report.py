"""Shared bits of the results recipes: config loading, the machine / commit stamp, markdown tables."""
from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import yaml

__all__ = ["load_config", "stamp", "markdown_table", "write_json", "merge"]


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``base`` updated recursively with ``over`` (new dict)."""
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """A results config (YAML); ``include: other.yaml`` (relative to the file) is read first and updated."""
    path = Path(path)
    cfg = yaml.safe_load(path.read_text()) or {}
    inc = cfg.pop("include", None)
    if inc:
        cfg = merge(load_config(path.parent / inc), cfg)
    return merge(cfg, overrides or {})


@functools.cache
def checkout_commit() -> str:
    """This checkout's short commit (``+uncommitted changes`` when tracked files differ; ``unknown``), read once per
    process — a runner reads it when it starts (:func:`prepare_run`), so commits made while it trains do not change
    its stamp; ``SHAREZOO_GIT_COMMIT`` names it in a copy without ``.git`` (:func:`tasks.bench.git_commit`)."""
    from tasks.bench import git_commit

    commit, dirty = git_commit(untracked=False)
    if not commit:
        return "unknown"
    return (commit[:7] if len(commit) == 40 else commit) + (" (+uncommitted changes)" if dirty else "")


def stamp(module: str) -> dict[str, str]:
    """Commit, machine, versions and the command (``python -m <module> <args>``) of this run."""
    commit = checkout_commit()
    if torch.cuda.is_available():
        machine = f"{torch.cuda.get_device_name(0)} x{torch.cuda.device_count()}"
    else:
        import os

        machine = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads " \
                  f"{torch.get_num_threads()})"
    return {"commit": commit, "machine": machine, "python": sys.version.split()[0], "torch": torch.__version__,
            "command": " ".join(["python -m", module, *sys.argv[1:]])}


def markdown_table(rows: list[dict[str, Any]], columns: list[tuple[str, str, str]]) -> str:
    """``columns`` = (key, header, format spec); missing values print as n/a."""
    head = "| " + " | ".join(h for _, h, _ in columns) + " |"
    sep = "| " + " | ".join("---" for _ in columns) + " |"
    body = []
    for r in rows:
        cells = []
        for k, _, fmt in columns:
            v = r.get(k)
            cells.append("n/a" if v is None else (format(v, fmt) if fmt else str(v)))
        body.append("| " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *body])


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")


def fit_best_on_val(candidates: Iterable[tuple[Any, Any]], train: tuple[Any, Any], val: tuple[Any, Any]
                    ) -> tuple[Any, Any, float, list[tuple[Any, float]]]:
    """Fit each ``(label, estimator)`` (scikit-learn API) on ``train``; return the one with the best ``val`` accuracy
    (the first on ties) as ``(estimator, label, val accuracy, [(label, val accuracy), ...])`` — the whole sweep."""
    best, sweep = None, []
    for label, est in candidates:
        acc = float((est.fit(*train).predict(val[0]) == val[1]).mean())
        sweep.append((label, acc))
        if best is None or acc > best[2]:
            best = (est, label, acc)
    if best is None:
        raise ValueError("no candidate to fit")
    return best[0], best[1], best[2], sweep


def runner_parser(family: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every ``python -m tasks.results.<family>`` runner shares: ``--config``, ``--out``, ``--threads``,
    ``--tiny`` (a runner adds its own, e.g. ``--checkpoint``)."""
    p = argparse.ArgumentParser(prog=f"python -m tasks.results.{family}", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help=f"results recipe (configs/{family}/results*.yaml)")
    p.add_argument("--out", default=None, help="output folder (default: the config's out)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: 1 on <= 2 cores)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run of the config on the CPU "
                   "(tests, the H200 scripts' tiny mode); its numbers mean nothing")
    return p


def prepare_run(a: Any, family: str, smoke: Any) -> tuple[dict[str, Any], Path]:
    """Read the runner's config (shrunk by ``smoke(cfg)`` under ``--tiny``), make its output folder and set the torch
    CPU threads (``--threads``, else 1 on a machine of <= 2 cores, else up to 8); returns ``(config, out)``."""
    import os

    checkout_commit()  # the commit the run starts from (cached for stamp())
    cfg = yaml.safe_load(Path(a.config).read_text())
    if a.tiny:
        smoke(cfg)
    out = Path(a.out or cfg.get("out", f"runs/results/{family}"))
    out.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    torch.set_num_threads(a.threads or (1 if cores <= 2 else min(8, cores)))
    return cfg, out
