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


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench_ppgflowecg", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_child_arguments():
    mod = _load_bench()
    names = ("--modes", "--isolate", "--official-only", "--official-repo", "--out")
    argv = ["--modes", "eager-fp32", "--tiny", "--official-repo=/x", "--isolate", "1", "--official-only", "--iters",
            "3", "--out", "o.jsonl"]
    assert mod._strip_args(argv, names) == ["--tiny", "--iters", "3"]


@pytest.mark.slow  # ~30 s: two subprocesses
def test_bench_isolated_modes_share_one_reference(tmp_path):
    mod = _load_bench()
    out = tmp_path / "r.jsonl"
    rows = mod.main(["--device", "cpu", "--tiny", "--isolate", "1", "--modes", "eager-fp32,eager-bf16", "--benches",
                     "sample", "--time-budget", "300", "--out", str(out)])
    assert [(r["mode"], r["bench"]) for r in rows] == [("eager-fp32", "sample"), ("eager-bf16", "sample")]
    assert rows[0]["max_abs_diff"] == 0 and 0 < rows[1]["max_abs_diff"] < 0.5  # bf16 against the shared fp32 output
    assert len({r["run"] for r in rows}) == 1
