"""benchmarks/bench_ppgflowecg.py runs on CPU in its tiny smoke mode and writes well-formed JSON lines."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_ppgflowecg.py"


@pytest.mark.slow  # ~20-60 s on 2 shared cores
def test_bench_cpu_tiny_smoke(tmp_path):
    spec = importlib.util.spec_from_file_location("bench_ppgflowecg", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "r.jsonl"
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores: more threads are much slower
    try:
        rows = mod.main(["--device", "cpu", "--tiny", "--out", str(out)])
    finally:
        torch.set_num_threads(n)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == len(rows) == 8  # 4 measurements x (eager-fp32, eager-bf16)
    benches = {r["bench"] for r in lines}
    assert benches == {"stage1_train", "stage2_train_with_encoder", "stage2_train_latents", "sample"}
    for r in lines:
        assert r["command"] and r["torch"] and r["max_abs_diff"] is not None
        assert (r.get("pairs_per_s") or r.get("windows_per_s")) > 0
    fp32 = [r for r in lines if r["mode"] == "eager-fp32"]
    assert all(r["max_abs_diff"] == 0 for r in fp32)
