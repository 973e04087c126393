"""The LLM benchmark scripts run in their CPU smoke mode and write well-formed JSON lines."""
import json

import pytest
from bench_loader import load_benchmark


@pytest.mark.parametrize("name,args", [
    ("bench_prefix_grouper", ["--P", "12", "--S", "4", "--G", "2", "--probe-G", "3", "--iters", "1", "--warmup", "0"]),
    ("bench_ape", ["--m", "2", "--Lc", "6", "--iters", "1"]),
    ("bench_batchllm", ["--D", "10", "--Q", "2", "--alone", "1"]),
])
def test_benchmark_smoke(name, args, tmp_path):
    out = tmp_path / "r.jsonl"
    assert load_benchmark(name).main(["--device", "cpu", "--tiny", "--out", str(out), *args]) == 0
    recs = [json.loads(line) for line in out.read_text().splitlines()]
    assert recs[-1]["kind"] == "done" and all("command" in r and "torch" in r for r in recs)
    points = [r for r in recs if r["kind"] == "point"]
    assert points and all(r["status"] == "ok" for r in points)
    if name == "bench_prefix_grouper":
        (par,) = [r for r in recs if r["kind"] == "parity"]
        assert par["loss_rel_diff"] < 1e-4 and par["grad_norm_rel_diff"] < 1e-4
        summ = [r for r in recs if r["kind"] == "summary"]
        assert all(0 < r["flop_ratio_analytic"] < 1 for r in summ)
        assert any(r["kind"] == "max_group_size" and r["max_G_prefix_grouper"] == 3 for r in recs)
