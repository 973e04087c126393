"""``sharezoo demo ppgflowecg``: the CPU-sized PPGFlowECG results recipe on the bundled real record a103l.

    sharezoo demo ppgflowecg [--out runs/results/ppgflowecg_cpu] [--config configs/ppgflowecg/results_cpu.yaml]

Runs ``python -m tasks.results.ppgflowecg`` (:mod:`tasks.results.ppgflowecg`): stage 1 and stage 2 on the first 70 %
of the record (best-validation checkpoints), then ECG generated from the PPG of the held-out last 15 % beside the PPG
itself, its pulse rate and a scikit-learn Ridge baseline; writes ``results.md``, ``results.json`` and
``generated_vs_real.png`` into ``--out``. ``configs/ppgflowecg/demo.yaml`` and ``demo_stage2.yaml`` are the two stages
as plain ``sharezoo fit`` configs on the same split.
"""
from __future__ import annotations

from tasks.demos import Demo, results_recipe

DEMO = Demo("ppgflowecg", "PPG→ECG on the bundled real record a103l: both stages, then generated vs real ECG on the "
            "held-out span beside the PPG and a Ridge baseline (CPU)", results_recipe("ppgflowecg", __doc__),
            configs=("ppgflowecg/demo.yaml", "ppgflowecg/demo_stage2.yaml", "ppgflowecg/results*.yaml"))
