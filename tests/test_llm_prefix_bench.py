"""The round-2 speed benchmarks in their CPU smoke mode: flex backends side by side with the existing paths."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_loader import load_benchmark

ROOT = Path(__file__).resolve().parents[1]


def _recs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prefix_grouper_bench_has_flex_side_by_side(tmp_path):
    out = tmp_path / "pg.jsonl"
    args = ["--device", "cpu", "--tiny", "--out", str(out), "--P", "12", "--S", "4", "--G", "2", "--probe-G", "2",
            "--iters", "1", "--warmup", "0"]
    assert load_benchmark("bench_prefix_grouper").main(args) == 0
    recs = _recs(out)
    (par,) = [r for r in recs if r["kind"] == "parity"]
    assert par["loss_rel_diff_flex"] < 1e-4 and par["grad_norm_rel_diff_flex"] < 1e-4
    points = {r["method"] for r in recs if r["kind"] == "point" and r["status"] == "ok"}
    assert points == {"baseline", "prefix_grouper", "prefix_grouper_flex"}
    summ = {r["method"]: r for r in recs if r["kind"] == "summary"}
    assert set(summ) == {"prefix_grouper", "prefix_grouper_flex"}
    assert all(r["fraction_of_analytic"] > 0 and 0 < r["flop_ratio_analytic"] < 1 for r in summ.values())


def test_ape_bench_has_flex_side_by_side(tmp_path):
    out = tmp_path / "ape.jsonl"
    args = ["--device", "cpu", "--tiny", "--out", str(out), "--m", "2", "--Lc", "6", "--iters", "1"]
    assert load_benchmark("bench_ape").main(args) == 0
    recs = _recs(out)
    (par,) = [r for r in recs if r["kind"] == "parity_flex"]
    assert par["max_abs_logit_diff"] < 1e-4
    (pt,) = [r for r in recs if r["kind"] == "point"]
    assert pt["status"] == "ok" and pt["speedup_analytic"] > 1
    assert pt["ape_query_s"] > 0 and pt["ape_query_flex_s"] > 0 and "fraction_of_analytic_flex" in pt


@pytest.mark.script
def test_speed2_script_tiny_mode(tmp_path):
    """``benchmarks/speed2_h200.sh tiny`` runs both benchmarks on CPU at tiny sizes and writes their JSON lines."""
    r = subprocess.run(["bash", str(ROOT / "benchmarks/speed2_h200.sh"), "tiny", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=600,
                       env={"PATH": f"{ROOT / '.venv/bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                            "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path), "PYTHON": sys.executable,
                            **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}})
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("prefix_grouper_speed2.jsonl", "ape_speed2.jsonl"):
        recs = _recs(tmp_path / name)
        assert recs[-1]["kind"] == "done"
