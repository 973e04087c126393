"""benchmarks/unipic_h200.sh and benchmarks/bench_unipic.py: the script's cases, their CPU smoke runs (``script``
marker) and eager vs regional-compile training losses (``slow``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks/unipic_h200.sh"


def _run(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "TINY": "1", "PY": sys.executable, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.run(["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT)


def test_script_parses_and_names_its_cases():
    assert subprocess.run(["bash", "-n", str(SCRIPT)]).returncode == 0
    text = SCRIPT.read_text()
    for case in ("gen", "train_eager", "train_compile", "compare", "official", "digits", "digits_all", "digits_pick"):
        assert f"\n{case}) {case} ;;" in text, case
    assert "--compile regional" in text and "configs/unipic/results_digits_h200.yaml" in text
    r = _run("nope")
    assert r.returncode == 2 and "usage" in r.stderr


def test_digits_piece_must_be_of_the_recipe(tmp_path):
    r = _run("digits", "mar_only", "2e-3", str(tmp_path))
    assert r.returncode == 2 and "not a model / lr of the recipe" in r.stderr


@pytest.mark.script
def test_tiny_cases(tmp_path):
    """gen, train_eager, compare, two digits pieces and digits_pick in TINY mode on the CPU (a few minutes)."""
    for case in (["gen"], ["train_eager"], ["compare"], ["digits", "unipic_llm", "3e-4"],
                 ["digits", "mar_only", "3e-4"], ["digits_pick"]):
        out = [str(tmp_path)]
        r = _run(*case, *out)
        assert r.returncode == 0 and "rc " not in r.stdout, (case, r.stdout[-3000:] + r.stderr[-3000:])
    assert json.loads((tmp_path / "unipic_tiny_smoke_gen.json").read_text())["image_shape"] == [1, 3, 32, 32]
    train = json.loads((tmp_path / "unipic_tiny_smoke_train_eager.json").read_text())["results"]
    assert set(train) == {"stage1_pt/eager", "stage3_ct/eager"}
    compare = json.loads((tmp_path / "unipic_tiny_smoke_compare.json").read_text())
    assert {"llm", "bag", "ground_truth", "noise"} <= set(compare) and "test_s" in compare["llm"]
    picked = json.loads((tmp_path / "unipic_digits_tiny_smoke/picked.json").read_text())
    assert set(picked["picked"]) == {"unipic_llm", "mar_only"}


@pytest.mark.slow
def test_regional_compile_gives_eager_losses(tmp_path):
    """One stage, tiny model: the same seed gives the same losses at steps 0-2 eager and with compile='regional'
    (compiled dropout draws eager's numbers under --fallback-random); the compile shows in the first step only."""
    out = tmp_path / "train.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_unipic.py"), "train", "--tiny", "--compile",
                        "both", "--fallback-random", "--stages", "stage1_pt", "--steps", "3", "--out", str(out)],
                       env={**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}, capture_output=True,
                       text=True, timeout=1200, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())["results"]
    eager, regional = res["stage1_pt/eager"], res["stage1_pt/regional"]
    assert regional["regions"] > 0 and eager["regions"] == 0
    assert regional["losses"] == pytest.approx(eager["losses"], rel=1e-4)
    assert regional["first_step_s"] > regional["step_s_median"]
