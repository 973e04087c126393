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
