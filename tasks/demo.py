"""``make demo``: train the tiny FusionReID on the bundled demo ReID data (Market-1501 layout), then evaluate it.

    python -m tasks.demo [--config configs/fusionreid_tiny/demo.yaml] [--out runs/demo]

Leaves the checkpoint and the run's config.yaml under ``--out`` and prints mAP and Rank-1/5/10 as a table.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
# The tiny model is too small to gain from intra-op threads; on a busy 2-core machine extra threads thrash.
os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tasks.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "fusionreid_tiny" / "demo.yaml"))
    p.add_argument("--out", default="runs/demo", help="run folder (checkpoint, config.yaml, logs)")
    a, extra = p.parse_known_args(argv)
    from rich.console import Console
    from rich.table import Table

    t0 = time.perf_counter()
    from tasks.cli import lightning_cli

    cli = lightning_cli(["fit", "--config", a.config, "--trainer.default_root_dir", a.out, *extra])
    ckpt = cli.trainer.checkpoint_callback.best_model_path or cli.trainer.checkpoint_callback.last_model_path
    results = cli.trainer.test(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt or None, verbose=False)[0]
    table = Table(title=f"{cli.model.hparams.get('model', 'model')} on the demo data (test split)")
    for k in results:
        table.add_column(k.split("/")[-1], justify="right")
    table.add_row(*[f"{int(v)}" if k.endswith("valid_queries") else f"{100 * v:.1f}" for k, v in results.items()])
    con = Console()
    con.print(table)
    con.print(f"checkpoint: {ckpt}\nconfig:     {cli.trainer.log_dir}/config.yaml\n"
              f"time:       {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
