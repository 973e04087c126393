"""benchmarks/reid_graph_drift.py (issue 24 item 4's GPU diagnostic): its code path on the CPU (no graph capture) and
the divergence analysis on synthetic records."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load():
    spec = importlib.util.spec_from_file_location("reid_graph_drift", ROOT / "benchmarks/reid_graph_drift.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["reid_graph_drift"] = mod
    spec.loader.exec_module(mod)
    return mod


drift = _load()


def _lines(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]


def _rec(step: int, pair: str, loss: float, **diffs: float) -> dict:
    return {"step": step, "pair": pair, "loss_diff": loss, "diffs": diffs}


def test_first_divergence_names_the_first_step_and_the_worst_tensor():
    recs = []
    for step in range(3):
        recs.append(_rec(step, "compiled2~compiled", 1e-3, a=0.01, b=0.02))
        big = 0.5 if step >= 1 else 0.01  # 'b' leaves the noise at step 1, 'a' at step 2
        recs.append(_rec(step, "compiled_graphed~compiled", 1e-3, a=0.5 if step >= 2 else 0.02, b=big))
        recs.append(_rec(step, "compiled_graphed~compiled_nocache", 1e-3, a=0.0, b=0.0))
    div = drift.first_divergence(recs, factor=4.0, floor=1e-3)
    assert set(div) == {"compiled_graphed~compiled"}  # the noise pair itself and the quiet pair are not reported
    d = div["compiled_graphed~compiled"]
    assert d["step"] == 1 and d["count"] == 1 and d["tensors"][0]["name"] == "b"
    assert d["noise_pair"] == "compiled2~compiled"


def test_select_runs():
    assert "compiled_graphed" in drift.select_runs(None, "cuda")
    assert drift.select_runs(None, "cpu") == ["eager", "eager2", "compiled", "compiled2", "compiled_nocache",
                                              "compiled_graphlike"]
    assert drift.select_runs("graphed, eager", "cpu") == ["graphed", "eager"]  # as given: graphed is the source
    with pytest.raises(SystemExit):
        drift.select_runs("nope", "cpu")


@pytest.mark.script
def test_cpu_code_path(tmp_path):
    """Eager runs (the graphed one falls back to eager steps off CUDA) from one state are bitwise equal step by step;
    every named tensor is reported, the lr change and the eval embedding are applied, nothing moves storage."""
    out = tmp_path / "drift"
    with pytest.warns(UserWarning, match="not a CUDA device"):
        assert drift.main(["--tiny", "--device", "cpu", "--precision", "32-true", "--steps", "2", "--runs",
                           "eager,eager2,graphed", "--eval-at", "1", "--lr-change-at", "1", "--resync",
                           "--out", str(out)]) == 0
    lines = _lines(out)
    pairs = [r for r in lines if r["kind"] == "pair"]
    runs = [r for r in lines if r["kind"] == "run"]
    assert [(r["step"], r["pair"]) for r in pairs] == [(s, p) for s in (0, 1) for p in ("eager2~eager",
                                                                                          "graphed~eager")]
    for r in pairs:
        assert r["loss_diff"] == 0.0 and r["state_diff"] == 0.0 and max(r["diffs"].values()) == 0.0, r["pair"]
    names = set(pairs[1]["diffs"])
    for prefix in ("param.", "grad.", "momentum.", "buffer."):
        assert any(n.startswith(prefix) for n in names), prefix
    assert any(n.endswith("running_var") for n in names) and any(n.endswith("num_batches_tracked") for n in names)
    assert "eval.embedding" in pairs[2]["diffs"] and "eval.embedding" not in pairs[0]["diffs"]
    lr0 = {r["run"]: r["lr"] for r in runs if r["step"] == 0}
    lr1 = {r["run"]: r["lr"] for r in runs if r["step"] == 1}
    for run in ("eager", "eager2", "graphed"):
        assert lr1[run][0] == pytest.approx(lr0[run][0] / 2) and lr1[run][1] == lr0[run][1]
    assert all(r["moved"] == [] for r in runs)
    assert all(r["graph_counts"]["captures"] == 0 for r in runs)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["first_divergence"] == {} and summary["settings"]["runs"] == ["eager", "eager2", "graphed"]


@pytest.mark.script
def test_deterministic_switches_are_restored(tmp_path):
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
              torch.backends.cudnn.benchmark)
    assert drift.main(["--tiny", "--device", "cpu", "--precision", "32-true", "--steps", "1", "--runs", "eager",
                       "--deterministic", "--out", str(tmp_path)]) == 0
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
            torch.backends.cudnn.benchmark) == before
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["deterministic"]


@pytest.mark.slow
def test_cpu_compiled_runs(tmp_path):
    """The compiled runs with aot_eager: the graph path's autocast state (cache off) is a compilation of its own
    (dynamo guards on the flag), a second compiled task under the same state shares the first one's; all equal eager
    on the CPU within rounding, BatchNorm buffers keep their storage."""
    out = tmp_path / "drift"
    assert drift.main(["--tiny", "--device", "cpu", "--precision", "32-true", "--steps", "2", "--runs",
                       "eager,compiled,compiled2,compiled_nocache", "--backend", "aot_eager", "--eval-at", "-1",
                       "--lr-change-at", "-1", "--out", str(out)]) == 0
    lines = _lines(out)
    compiles = {r["run"]: r["compiles"] for r in lines if r["kind"] == "run" and r["step"] == 0}
    assert compiles["compiled"] > 0 and compiles["compiled2"] == 0 and compiles["compiled_nocache"] > 0, compiles
    assert all(r["moved"] == [] for r in lines if r["kind"] == "run")
    for r in lines:
        if r["kind"] == "pair":
            assert r["state_diff"] < 1e-4 and r["loss_diff"] < 1e-4, r["pair"]


@pytest.mark.gpu
@pytest.mark.slow
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_compiled_graphed_steps_equal_compiled_steps(tmp_path, precision):
    """The compiled analogue of test_reid_cuda_graphs.test_graphed_steps_equal_eager_steps: deterministic kernels (no
    SIE gather, math SDPA, inductor without on-device benchmarking), the lr an fp32 tensor in both runs, the graph
    path's autocast state in both (one compilation): the captured compiled step gives the compiled step's losses and
    every parameter, gradient, momentum and BatchNorm buffer, step by step (12 steps, lr change and eval included)."""
    out = tmp_path / "drift"
    assert drift.main(["--tiny", "--device", "cuda", "--precision", precision, "--steps", "12", "--deterministic",
                       "--tensor-lr", "--runs", "compiled_graphlike,compiled_graphed", "--out", str(out)]) == 0
    lines = _lines(out)
    counts = [r["graph_counts"] for r in lines if r["kind"] == "run" and r["run"] == "compiled_graphed"][-1]
    assert counts["train_replays"] == 12 - 3 and counts["captures"] == 2, counts  # training step + eval forward
    for r in lines:
        if r["kind"] == "pair":  # exact where the graph is: expected bitwise, allowed 1e-4 of each tensor's scale
            worst = max(r["rel"], key=r["rel"].get)
            assert r["loss_diff"] <= 1e-4 and r["rel"][worst] <= 1e-4, (r["step"], worst, r["diffs"][worst])
