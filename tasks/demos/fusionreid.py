"""``sharezoo demo fusionreid`` (``make demo``): train the tiny FusionReID on the photo-patch demo ReID data (regions
of real photographs seen through synthetic cameras, Market-1501 layout; held-out photos for query/gallery), then
evaluate it and print mAP and Rank-1/5/10 as a table.

    sharezoo demo fusionreid [--out runs/demo] [LightningCLI options, e.g. --trainer.max_epochs 5]
"""
from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence

from tasks.demos import CONFIGS, Demo

CONFIG = "fusionreid/demo.yaml"


def run(argv: Sequence[str] = ()) -> int:
    """Fit on ``configs/fusionreid/demo.yaml``, test the best (else last) checkpoint, print the rank table."""
    p = argparse.ArgumentParser(prog="sharezoo demo fusionreid", description=__doc__.split("\n\n")[0],
                                allow_abbrev=False)
    p.add_argument("--config", default=str(CONFIGS / CONFIG), help="the demo config")
    p.add_argument("--out", default=None, help="run folder (default: the config's trainer.default_root_dir)")
    a, extra = p.parse_known_args(list(argv))
    # The tiny model is too small to gain from intra-op threads; on a busy 2-core machine extra threads thrash.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from rich.console import Console
    from rich.table import Table

    from tasks._lightning_cli import lightning_cli

    t0 = time.perf_counter()
    out = ["--trainer.default_root_dir", a.out] if a.out else []
    cli = lightning_cli(["fit", "--config", a.config, *out, *extra])
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


DEMO = Demo("fusionreid", "tiny FusionReID on real photo regions seen through synthetic cameras (held-out photos), "
            "then the mAP / Rank-k table (CPU, a few minutes)", run, configs=(CONFIG,))
