"""``sharezoo demo pepsi``: the CPU-sized PEPSI / Diet-PEPSI results recipe on real photographs.

    sharezoo demo pepsi [--out runs/results/pepsi_cpu] [--config configs/pepsi/results_cpu.yaml]

Runs ``python -m tasks.results.pepsi`` (:mod:`tasks.results.pepsi`): both tiny generators trained on random crops of
the training photographs, then held-out photographs inpainted beside OpenCV's Telea and Navier-Stokes inpainting and
mean fill; writes ``results.md``, ``results.json`` and ``inpainted_vs_opencv.png`` into ``--out``.
``configs/pepsi/demo.yaml`` / ``diet_pepsi_demo.yaml`` stay plain ``sharezoo fit`` configs.
"""
from __future__ import annotations

import argparse
from collections.abc import Sequence

from tasks.demos import CONFIGS, Demo


def run(argv: Sequence[str] = ()) -> int:
    """Run the CPU results recipe (options after the name: ``--out``, ``--config``, ``--threads``, ``--checkpoint``)."""
    from tasks.results import pepsi

    p = argparse.ArgumentParser(prog="sharezoo demo pepsi", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--config", default=str(CONFIGS / "pepsi" / "results_cpu.yaml"), help="results recipe")
    a, rest = p.parse_known_args(list(argv))
    pepsi.run(["--config", a.config, *rest])
    return 0


DEMO = Demo("pepsi", "PEPSI / Diet-PEPSI on real photographs: trained on crops, held-out photographs inpainted beside "
            "OpenCV (CPU)", run, configs=("pepsi/demo.yaml", "pepsi/results*.yaml"))
