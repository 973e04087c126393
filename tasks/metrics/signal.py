"""Waveform-fidelity metrics for generated signals (PPGFlowECG evaluation, spec §Metrics).

Every function takes numpy arrays or tensors of shape (N, T) (or (N, 1, T)) and returns a float. They follow the
reference ``evaluation/calculate_metric.py`` definitions: MAE / RMSE over all samples, Fréchet distance on the raw
windows (each window a T-dimensional point, covariances regularised by ``eps``), heart-rate error from R-peaks.
"""
from __future__ import annotations

from typing import Any

import numpy as np
from scipy import signal as sps

__all__ = ["mae", "rmse", "pearson_r", "frechet_distance", "heart_rate_mae", "detect_r_peaks", "heart_rate"]


def _as_2d(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 3:
        if x.shape[1] != 1:
            raise ValueError(f"expected (N, T) or (N, 1, T), got {x.shape}")
        x = x[:, 0]
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(f"expected (N, T), got {x.shape}")
    return x


def _pair(pred: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    p, t = _as_2d(pred), _as_2d(target)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: {p.shape} vs {t.shape}")
    return p, t


def mae(pred: Any, target: Any) -> float:
    """Mean absolute error over all windows and samples."""
    p, t = _pair(pred, target)
    return float(np.abs(p - t).mean())


def rmse(pred: Any, target: Any) -> float:
    """Root mean squared error over all windows and samples."""
    p, t = _pair(pred, target)
    return float(np.sqrt(((p - t) ** 2).mean()))


def pearson_r(pred: Any, target: Any) -> float:
    """Mean over windows of the per-window Pearson correlation (constant windows count as 0)."""
    p, t = _pair(pred, target)
    pc, tc = p - p.mean(1, keepdims=True), t - t.mean(1, keepdims=True)
    den = np.sqrt((pc ** 2).sum(1) * (tc ** 2).sum(1))
    r = np.divide((pc * tc).sum(1), den, out=np.zeros(len(p)), where=den > 0)
    return float(r.mean())


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(real: Any, fake: Any, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to the raw windows: |μr-μf|² + Tr(Σr + Σf - 2(ΣrΣf)^½).

    Tr((ΣrΣf)^½) is computed as Tr((Σr^½ Σf Σr^½)^½) with symmetric eigendecompositions (same value, stable).
    """
    r, f = _as_2d(real), _as_2d(fake)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"window lengths differ: {r.shape} vs {f.shape}")
    if len(r) < 2 or len(f) < 2:
        raise ValueError("frechet_distance needs at least 2 windows per set")
    eye = eps * np.eye(r.shape[1])
    cr, cf = np.cov(r, rowvar=False) + eye, np.cov(f, rowvar=False) + eye
    s = _sqrtm_psd(cr)
    tr_covmean = np.sqrt(np.clip(np.linalg.eigvalsh(s @ cf @ s), 0, None)).sum()
    return float(((r.mean(0) - f.mean(0)) ** 2).sum() + np.trace(cr) + np.trace(cf) - 2 * tr_covmean)


def detect_r_peaks(ecg: np.ndarray, fs: float) -> np.ndarray:
    """R-peak sample indices of one ECG window: 5-15 Hz band-pass, squared slope, adaptive threshold, refractory
    period 250 ms, then the largest |amplitude| of the band-passed signal within ±50 ms (polarity-agnostic)."""
    x = np.asarray(ecg, dtype=np.float64)
    if len(x) < int(fs):
        return np.zeros(0, dtype=int)
    sos = sps.butter(2, [5.0, min(15.0, 0.45 * fs)], btype="bandpass", fs=fs, output="sos")
    bp = sps.sosfiltfilt(sos, x)
    energy = np.convolve(np.gradient(bp) ** 2, np.ones(max(1, int(0.12 * fs))) / max(1, int(0.12 * fs)), "same")
    peaks, _ = sps.find_peaks(energy, height=0.3 * np.percentile(energy, 99), distance=int(0.25 * fs))
    half = int(0.05 * fs)
    refined = [p - half + int(np.argmax(np.abs(bp[max(0, p - half):p + half + 1]))) if p >= half
               else int(np.argmax(np.abs(bp[:p + half + 1]))) for p in peaks]
    return np.unique(np.asarray(refined, dtype=int))


def heart_rate(ecg: np.ndarray, fs: float) -> float:
    """Heart rate (bpm) of one window from the mean R-R interval; NaN with fewer than two R-peaks."""
    peaks = detect_r_peaks(ecg, fs)
    if len(peaks) < 2:
        return float("nan")
    return float(60.0 * fs / np.diff(peaks).mean())


def heart_rate_mae(pred: Any, target: Any, fs: float = 128.0) -> float:
    """Mean absolute heart-rate difference (bpm) over windows where both signals have ≥ 2 detected R-peaks."""
    p, t = _pair(pred, target)
    hp = np.array([heart_rate(w, fs) for w in p])
    ht = np.array([heart_rate(w, fs) for w in t])
    ok = np.isfinite(hp) & np.isfinite(ht)
    return float(np.abs(hp[ok] - ht[ok]).mean()) if ok.any() else float("nan")
