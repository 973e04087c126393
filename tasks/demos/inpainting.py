"""``sharezoo demo pepsi``: the CPU-sized PEPSI / Diet-PEPSI results recipe on real photographs.

    sharezoo demo pepsi [--out runs/results/pepsi_cpu] [--config configs/pepsi/results_cpu.yaml]

Runs ``python -m tasks.results.pepsi`` (:mod:`tasks.results.pepsi`): both tiny generators trained on random crops of
the training photographs, then held-out photographs inpainted beside OpenCV's Telea and Navier-Stokes inpainting and
mean fill; writes ``results.md``, ``results.json`` and ``inpainted_vs_opencv.png`` into ``--out``.
``configs/pepsi/demo.yaml`` / ``diet_pepsi_demo.yaml`` stay plain ``sharezoo fit`` configs.
"""
from __future__ import annotations

from tasks.demos import Demo, results_recipe

DEMO = Demo("pepsi", "PEPSI / Diet-PEPSI on real photographs: trained on crops, held-out photographs inpainted beside "
            "OpenCV (CPU)", results_recipe("pepsi", __doc__), configs=("pepsi/demo.yaml", "pepsi/results*.yaml"))
