"""Synthetic WFDB records (tests): a paired ECG-like / PPG-like signal and a format-16 WFDB writer.

Records are written with ``wfdb.wrsamp`` exactly as PhysioNet stores them; the folder is labelled ``SYNTHETIC.md``,
and the writer refuses folders holding anything it did not write and never overwrites a record.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._owned import claim, fresh

__all__ = ["paired_signal", "write_wfdb_record"]


def paired_signal(n: int, fs: float = 125) -> np.ndarray:
    """(n, 2) paired ECG-like (spiky beats + 20 µV noise, so the baseline is not a flat line) and PPG-like channels.

    The sin^15 "ECG" spikes both ways (no polarity) and is no ECG to NeuroKit's SQI: turn those stages off on it.
    """
    t = np.arange(n) / fs
    ecg = np.sin(2 * np.pi * 1.2 * t) ** 15 + 0.02 * np.random.default_rng(0).standard_normal(n)
    return np.stack([ecg, np.sin(2 * np.pi * 1.2 * t + 1) + 1], 1)


def write_wfdb_record(folder: str | os.PathLike, name: str, sig: np.ndarray, names: Sequence[str] = ("II", "PLETH"),
                      fs: float = 125, units: Sequence[str] = ("mV", "NU")) -> Path:
    """Write a format-16 WFDB record ``<folder>/<name>.hea + .dat``; NaN samples are stored as the WFDB invalid
    value (-32768). Returns the header path.

    Raises:
        SyntheticDataError: ``folder`` holds files no synthetic writer created, or the record exists.
    """
    import wfdb

    w_ = "write_wfdb_record"
    d = claim(folder, w_)
    for ext in (".hea", ".dat"):
        fresh(d / f"{name}{ext}", w_)
    sig = np.asarray(sig, dtype=np.float64)
    digital = np.where(np.isnan(sig), -32768, np.round(np.nan_to_num(sig) * 1000)).astype(np.int64)
    wfdb.wrsamp(name, fs=fs, units=list(units), sig_name=list(names), d_signal=digital, fmt=["16"] * sig.shape[1],
                adc_gain=[1000.0] * sig.shape[1], baseline=[0] * sig.shape[1], write_dir=str(d))
    return d / f"{name}.hea"
