"""benchmarks/bench_neuropictor.py: the CPU smoke mode runs both benches and writes provenance-carrying JSON lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.script
def test_bench_neuropictor_smoke(tmp_path):
    out = tmp_path / "np.jsonl"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks/bench_neuropictor.py"), "--device", "cpu", "--tiny",
                        "--modes", "eager", "--out", str(out)], capture_output=True, text=True, timeout=300,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["bench"], x["mode"]) for x in rows] == [("train", "eager"), ("sample", "eager")]
    for x in rows:
        assert x["command"].startswith("python3 benchmarks/bench_neuropictor.py") and "git_commit" in x
        assert x["torch"] and x["model"] == "neuropictor_tiny" and x["step_ms_median"] > 0
    assert rows[1]["ddim_steps"] == 3 and rows[1]["guidance"] == 5.0


def test_bench_neuropictor_modes_record_their_switches(tmp_path):
    """In process: the ``_cl`` modes turn on the task's channels_last; every train row records its switches (the
    optimiser's actual ``fused``); unknown modes are refused."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_neuropictor as bench

    assert bench.mode_options("compile_cl") == (True, True) and bench.mode_options("regional") == ("regional", False)
    with pytest.raises(SystemExit):
        bench.parse_args(["--modes", "compiled"])
    out = tmp_path / "np.jsonl"
    assert bench.main(["--device", "cpu", "--tiny", "--benches", "train", "--modes", "eager,eager_cl", "--fused-adamw",
                       "on", "--steps", "1", "--warmup", "1", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["mode"], r["channels_last"], r["fused_adamw"], r["compile"], r["compile_vae"]) for r in rows] == [
        ("eager", False, True, False, False), ("eager_cl", True, True, False, False)]


def test_neuropictor_h200_script_parses_and_names_its_cases():
    script = ROOT / "benchmarks/neuropictor_h200.sh"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    r = subprocess.run(["bash", str(script), "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "official|ablation" in r.stderr
    text = script.read_text()
    assert "--modes compile_cl" in text and "--no-checkpointing" in text and "--modes regional_cl" in text
