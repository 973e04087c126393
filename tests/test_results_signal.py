"""PPGFlowECG results recipe (issue 16): the held-out split of the shipped recipes, the baselines' code paths against
independent computations, and the runner end to end on a tiny config. Not the numbers."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.results import ppgflowecg as res

ROOT = Path(__file__).resolve().parents[1]
RECIPES = [ROOT / "configs/ppgflowecg/results_cpu.yaml", ROOT / "configs/ppgflowecg/results.yaml"]


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_recipe_split_holds_test_time_span_out(path):
    """Train windows (overlapping) and the non-overlapping val/test windows never share a sample, and the spans are
    ordered train < val < test in time, as the config's comment says."""
    cfg = yaml.safe_load(path.read_text())
    assert cfg["dataset"]["split_by"] == "time" and cfg["dataset"]["window_hop_s"] < cfg["dataset"]["window_s"]
    # the split rule does not depend on which windows the quality gates drop: the NeuroKit SQI gate (minutes over
    # thousands of overlapping windows) is off here
    dm = res.build_datamodule(cfg["dataset"] | {"ecg_sqi": None})
    spans = {k: dm.window_spans(k) for k in ("train", "val", "test")}
    assert all(spans.values()), {k: len(v) for k, v in spans.items()}
    assert len(spans["train"]) > 3 * len(spans["test"])  # the overlap multiplies the training windows
    covered = {k: set() for k in spans}
    for k, ws in spans.items():
        for rec, a, b in ws:
            covered[k].update((rec, s) for s in range(a, b))
    assert not covered["train"] & covered["val"] and not covered["train"] & covered["test"]
    assert not covered["val"] & covered["test"]
    for k in ("val", "test"):  # evaluation windows do not overlap each other
        assert sum(b - a for _, a, b in spans[k]) == len(covered[k])
    assert max(b for _, _, b in spans["train"]) <= min(a for _, a, _ in spans["val"])
    assert max(b for _, _, b in spans["val"]) <= min(a for _, a, _ in spans["test"])


def test_neurokit_heart_rate_on_simulated_signals():
    """nk.ecg_peaks recovers the known rate of a NeuroKit2-simulated ECG; nk.ppg_peaks the rate of a simulated PPG as
    counted independently by scipy's find_peaks on the clean pulse (the PPG simulator's realised rate runs ~7 % below
    its heart_rate argument)."""
    import neurokit2 as nk
    from scipy.signal import find_peaks

    for bpm in (60, 90, 120):
        ecg = nk.ecg_simulate(duration=10, sampling_rate=128, heart_rate=bpm, noise=0, random_state=1)
        assert abs(res.nk_heart_rate(ecg, 128.0, "ecg") - bpm) < 1.5
        ppg = nk.ppg_simulate(duration=10, sampling_rate=128, heart_rate=bpm, ibi_randomness=0, drift=0,
                              motion_amplitude=0, powerline_amplitude=0, burst_number=0, random_state=1)
        peaks = find_peaks(ppg, distance=int(0.3 * 128), prominence=0.3 * np.ptp(ppg))[0]
        assert abs(res.nk_heart_rate(ppg, 128.0, "ppg") - 60 * 128 / np.diff(peaks).mean()) < 1.0
    assert np.isnan(res.nk_heart_rate(np.zeros(256), 128.0, "ecg"))  # no peaks → no rate (not a crash)
    mae, n = res.hr_mae(np.array([60.0, np.nan, 80.0]), np.array([62.0, 70.0, 77.0]))
    assert (mae, n) == (2.5, 2)


def test_ridge_baseline_matches_closed_form_and_picks_alpha_on_val():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 16)).astype(np.float32)
    w = rng.standard_normal((16, 16)).astype(np.float32)
    y = x @ w + 0.1 * rng.standard_normal((200, 16)).astype(np.float32)
    model, alpha, scores = res.ridge_baseline((y[:150], x[:150]), (y[150:], x[150:]), [1e-2, 1e4])
    assert alpha == 1e-2 and len(scores) == 2  # the small penalty fits this linear map better on val
    xc, yc = x[:150] - x[:150].mean(0), y[:150] - y[:150].mean(0)  # ridge with intercept = ridge on centred data
    coef = np.linalg.solve(xc.T.astype(np.float64) @ xc + alpha * np.eye(16), xc.T.astype(np.float64) @ yc)
    np.testing.assert_allclose(model.coef_.T, coef, rtol=1e-3, atol=1e-4)


def test_runner_end_to_end_tiny(tmp_path):
    cfg = yaml.safe_load(RECIPES[0].read_text())
    cfg["dataset"] |= {"window_hop_s": 1.0, "ecg_sqi": None, "cache_dir": str(tmp_path / "cache")}
    tiny = {"accelerator": "cpu", "max_steps": 2, "val_check_interval": 1, "log_every_n_steps": 1}
    cfg["stage1"]["trainer"] = tiny
    cfg["stage2"]["trainer"] = tiny | {"gradient_clip_val": 1.0}
    cfg["eval"] |= {"sample_steps": 2, "seeds": 2, "ridge_alphas": [10, 100]}
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    result = res.run(["--config", str(path), "--out", str(out)])
    methods = [r["method"] for r in result["rows"]]
    assert methods[0].startswith("PPGFlowECG") and any("Ridge" in m for m in methods)
    assert any("PPG itself" in m for m in methods)
    for r in result["rows"]:
        assert -1 <= r["pearson_r"] <= 1 and r["rmse"] >= 0 and r["windows"] == result["windows"]["test"]
    assert (out / "results.md").is_file() and (out / "results.json").is_file()
    assert (out / "generated_vs_real.png").stat().st_size > 1000
    assert result["val_curves"]["stage1"]["val"]  # validation ran and was recorded
