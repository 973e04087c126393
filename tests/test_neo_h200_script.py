"""benchmarks/neo_h200.sh: its cases parse, and ``ablation_seeds`` (variants x training seeds as concurrent runs on
one shared scene set) works end to end as a CPU smoke run (``script`` marker)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/neo_h200.sh"


def test_script_parses_and_names_its_cases():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    text = SCRIPT.read_text()
    for case in ("step", "decode", "decode_quick", "ablation", "ablation_seeds", "digits"):
        assert f"\n{case}) {case} ;;" in text, case
    r = subprocess.run(["bash", str(SCRIPT), "nope"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and "usage" in r.stderr


@pytest.mark.script
def test_ablation_seeds_tiny(tmp_path):
    env = {**os.environ, "TINY": "1", "SEEDS": "0 1", "VARIANTS": "neo rope_1d", "OMP_NUM_THREADS": "1",
           "CUDA_VISIBLE_DEVICES": "", "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(SCRIPT), "ablation_seeds", str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0 and "rc " not in r.stdout, r.stdout[-3000:] + r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "neo_seeds_smoke.jsonl").read_text().splitlines()]
    assert sorted((x["variant"], x["train_seed"]) for x in rows) == [("neo", 0), ("neo", 1), ("rope_1d", 0),
                                                                     ("rope_1d", 1)]
    assert {x["scene_seed"] for x in rows} == {0} and (tmp_path / "neo_ablation_logs.tar.gz").is_file()
    by_seed = {x["train_seed"]: x["final_loss"] for x in rows if x["variant"] == "neo"}
    assert by_seed[0] != by_seed[1]  # the training seed changes the run
