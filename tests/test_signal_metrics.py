"""tasks.metrics.signal against independent computations (numpy/scipy, neurokit2 R-peaks) on real ECG."""
import numpy as np
import pytest
import torch
from scipy import linalg, stats

from datamodules.signal import BUNDLED_ROOT, butter_filter, read_channels, resample
from tasks.metrics import signal as sm


@pytest.fixture(scope="module")
def real_ecg():
    """10-s windows of MIT-BIH 100 (MLII) at 128 Hz, high-passed, z-scored."""
    sig, fs, _, _ = read_channels(BUNDLED_ROOT, "100", {"ecg": ("MLII",)})
    x = butter_filter(resample(sig["ecg"][: 360 * 120], fs, 128.0), 128.0, 0.5, None, 5)
    w = x[: 12 * 1280].reshape(12, 1280)
    return (w - w.mean(1, keepdims=True)) / w.std(1, keepdims=True)


def test_mae_rmse_pearson_against_numpy_scipy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 100)), rng.normal(size=(5, 100))
    assert sm.mae(a, b) == pytest.approx(np.mean(np.abs(a - b)))
    assert sm.rmse(torch.tensor(a), torch.tensor(b)) == pytest.approx(np.sqrt(np.mean((a - b) ** 2)))
    ref = np.mean([stats.pearsonr(x, y)[0] for x, y in zip(a, b)])
    assert sm.pearson_r(a[:, None], b[:, None]) == pytest.approx(ref)
    assert sm.pearson_r(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="shape"):
        sm.mae(a, b[:, :50])


def test_frechet_distance_against_scipy_sqrtm():
    rng = np.random.default_rng(1)
    r = rng.normal(size=(40, 16))
    f = rng.normal(size=(30, 16)) * 1.5 + 0.3
    eps = 1e-6
    cr, cf = np.cov(r, rowvar=False) + eps * np.eye(16), np.cov(f, rowvar=False) + eps * np.eye(16)
    covmean = linalg.sqrtm(cr @ cf).real
    ref = ((r.mean(0) - f.mean(0)) ** 2).sum() + np.trace(cr) + np.trace(cf) - 2 * np.trace(covmean)
    assert sm.frechet_distance(r, f) == pytest.approx(ref, rel=1e-6)
    assert abs(sm.frechet_distance(r, r)) < 1e-6


def test_heart_rate_against_neurokit2(real_ecg):
    nk = pytest.importorskip("neurokit2")
    ours, ref = [], []
    for w in real_ecg:
        _, info = nk.ecg_peaks(w, sampling_rate=128, method="neurokit")
        peaks = info["ECG_R_Peaks"]
        ref.append(60 * 128 / np.diff(peaks).mean())
        ours.append(sm.heart_rate(w, 128))
        # every neurokit2 R-peak has one of ours within 50 ms (edge beats may differ by one)
        mine = sm.detect_r_peaks(w, 128)
        assert abs(len(mine) - len(peaks)) <= 1
        inner = np.asarray([p for p in peaks if 40 <= p < 1240])  # away from the window edges
        assert np.abs(mine[None] - inner[:, None]).min(1).max() <= 0.05 * 128
    np.testing.assert_allclose(ours, ref, atol=2.0)  # an edge beat found by one detector only shifts mean RR
    assert np.mean(np.abs(np.array(ours) - ref)) < 0.5
    assert 50 < np.mean(ours) < 100  # record 100 is ~75 bpm
    # heart_rate_mae on pairs: identical → 0; against a time-compressed copy → the rate difference
    assert sm.heart_rate_mae(real_ecg, real_ecg, 128) == 0.0
    faster = np.stack([np.interp(np.arange(1280) * 1.2, np.arange(1280), w, period=1280) for w in real_ecg])
    hr_f = np.array([60 * 128 / np.diff(nk.ecg_peaks(w, sampling_rate=128)[1]["ECG_R_Peaks"]).mean() for w in faster])
    assert sm.heart_rate_mae(faster, real_ecg, 128) == pytest.approx(np.mean(np.abs(hr_f - np.array(ref))), abs=1.5)
