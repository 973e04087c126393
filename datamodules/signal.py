"""Paired PPG/ECG (and ECG-only) windows from folders of WFDB records, for PPGFlowECG and ECG classifiers.

Pipeline per record (spec §Data; the reference ``data_process_to_npz/step1.py`` and ``step2.py``):
read WFDB (single- or multi-segment) → pick channels by name with aliases → mark NaN samples → resample to ``fs``
with torchaudio → PPG band-pass 0.5-8 Hz (Butterworth order 3), ECG high-pass 0.5 Hz (order 5), optional notch
→ non-overlapping windows → screening (NaN / dropout, flat line) → ECG polarity check → ECG SQI gate → per-window
z-score → [step 2: Savitzky-Golay smoothing, stricter PPG + ECG screening], with counts of every rejection reason.
Windows are written once to a memory-mapped cache (``.npy``), so later epochs and runs read no WFDB; the cache key
hashes every preprocessing option (and the record files), so changing an option rebuilds it.
Splits are by subject (or record); windows of one subject never land in two splits.

Flat-line test (``flat_method``): by default the reference's ``detect_flat_in_windows``: on the unfiltered signal at
its source rate, the mean |first difference| over every sliding window of int(0.1·fs) samples (int(0.1·fs) - 1
differences; all positions, step 1) is compared with ``flat_threshold`` (1e-3, in the record's physical units); a
window whose fraction of flat positions exceeds ``max_flat_fraction`` (0.25) is rejected. ``flat_method='ptp'`` keeps
our earlier test (peak-to-peak < threshold over non-overlapping 0.1-s chunks of the resampled, unfiltered signal).

ECG polarity (``ecg_polarity``, default 'record'): each window that passed the NaN/flat screening is tested with the
reference's rule (:func:`ecg_inverted`: median over rolling 2-s windows of the sample with the largest square < 0) on
the record's resampled ECG cleaned as the reference cleans it (0.5-Hz high-pass order 5 + 50-Hz notch,
:func:`ecg_clean_for_polarity`); the whole record's ECG is flipped when more than ``ecg_polarity_threshold`` (0.5) of
those windows are inverted (the spec's "flip if >50% windows inverted"). Our choices: the vote counts only screened
windows, and the test runs at the target rate on the whole cleaned record (the reference cleans and tests each stored
row at 125 Hz). Each stored row of the reference is one 10-s window, so its ratio is over a single window, i.e. it
decides per window in effect: ``ecg_polarity='window'`` does that. Counted as ``flipped_ecg`` (windows in
``screening.windows``, records in ``screening.records``).

ECG SQI (``ecg_sqi``, default 'zhao2018'): NeuroKit ``ecg_quality(window, sampling_rate, method='zhao2018',
approach='simple')`` on the filtered (and polarity-corrected) ECG window; 'Unacceptable' windows are dropped
('Excellent' and 'Barely acceptable' kept; a NeuroKit failure drops), counted as ``rejected_sqi_ecg``. This is the
reference's rule: its ``ecg_sqi_thre`` 0.5 / ``ecg_frac_thre`` 0.75 (the spec's "fraction >= 0.75 at 0.5") apply only
to its other method, 'averageQRS' (``ecg_sqi='averageQRS'``, ``ecg_sqi_threshold``, ``ecg_sqi_fraction``). PPG SQI is
off in the reference's step 1 and here. The reference rates the window at its 125-Hz source rate; we rate it at the
target rate (``fs``).

Step 2 smoothing (``step2_smooth``; off by default, on in the MC-MED configs): the reference smooths the z-scored
128-Hz windows with ``scipy.signal.savgol_filter`` (PPG window 7, ECG window 11, order 2; :func:`savgol_smooth`); the
smoothed windows are what it saves (``*_filtered.npz``), so they are cached as they are, not z-scored again. Off by
default because the spec does not say that the training LMDBs were built from the step-2 output.

Deviations from the reference preprocessing (``data_process_to_npz/step1.py`` and ``step2.py``):

- Filters and order: the reference filters at the source rate with MNE IIR Butterworth filters (PPG 0.5-8 Hz order 3;
  ECG 0.5-Hz high-pass order 5 plus an always-on 50-Hz notch) and resamples last with ``scipy.signal.resample_poly``;
  we resample first (torchaudio band-limited sinc), then filter with zero-phase Butterworth sections, and the notch is
  optional (``ecg_notch``; on in the MC-MED configs). The polarity check and the SQI gate therefore run at the target
  rate (see above).
- Step 2 is off by default (see above), and its stricter screening (the reference's ``step2.py`` PPG check on peak
  intervals and beat-template correlation through the biobss library, and its 'custom' ECG score) is not
  implemented: only the smoothing is. MC-MED runs get the step-1 screening (flat line, polarity, ECG SQI).
"""
from __future__ import annotations

import csv
import fractions
import hashlib
import json
import logging
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import signal as sps
from torch.utils.data import DataLoader, Dataset

from ._base import SplitDataModule
from ._layout import layout_error, require_dataset

_logger = logging.getLogger(__name__)

BUNDLED_ROOT = Path(__file__).parent / "data" / "physionet"

#: channel aliases, matched case-insensitively after stripping spaces/underscores/dashes
ECG_ALIASES = ("II", "MLII", "ECG", "ECGII", "LEADII", "ECG2")
PPG_ALIASES = ("PLETH", "PPG", "PLETHYSMOGRAM", "PULSE", "SPO2WAVE")

# bytes per sample of the WFDB storage formats (for the truncated-file check)
_FMT_BYTES = {"8": 1, "16": 2, "24": 3, "32": 4, "61": 2, "80": 1, "160": 2, "212": 1.5, "310": 4 / 3, "311": 4 / 3}


class SignalDataError(ValueError):
    """A record (named in the message) cannot be used: missing file or channel, truncated data, wrong rate, ..."""


@dataclass(frozen=True)
class LayoutSpec:
    """How a public dataset lies on disk and how its records map to subjects."""

    name: str
    tree: str
    source: str
    subject_regex: str | None = None  # group 1 of the first match in the record path is the subject id
    glob: str = "**/*.hea"
    expected_fs: tuple[float, ...] = ()
    notes: str = ""


LAYOUTS: dict[str, LayoutSpec] = {
    "wfdb": LayoutSpec(
        "wfdb",
        "<root>/RECORDS            (optional: one record path per line, or sub-folders holding their own RECORDS)\n"
        "<root>/<record>.hea + <record>.dat|.mat   (any depth; multi-segment headers are followed)",
        "any WFDB folder (https://physionet.org/)",
        notes="subject = record path (override with subject_regex)",
    ),
    "cinc2015": LayoutSpec(
        "cinc2015",
        "<root>/RECORDS\n<root>/a103l.hea, a103l.mat, ... (750 training alarms; channels vary: II, V, PLETH, ABP, ...)",
        "https://physionet.org/content/challenge-2015/1.0.0/ (open, ODC-By)",
        expected_fs=(250.0,),
        notes="one record = one alarm; header comments hold the alarm type and 'True alarm'/'False alarm' "
              "(use label_source='header'); subject = record (patients are not identified)",
    ),
    "bidmc": LayoutSpec(
        "bidmc",
        "<root>/RECORDS\n<root>/bidmc01.hea, bidmc01.dat, ... bidmc53 (8-min, 125 Hz: RESP, PLETH, V, AVR, II)",
        "https://physionet.org/content/bidmc/1.0.0/ (open, ODC-By)",
        subject_regex=r"(bidmc_?\d+)", expected_fs=(125.0,),
        notes="one record = one subject",
    ),
    "mimic3": LayoutSpec(
        "mimic3",
        "<root>/RECORDS                          (lists p00/, p01/, ...)\n"
        "<root>/p00/p000020/RECORDS\n"
        "<root>/p00/p000020/p000020-2183-04-28-17-47.hea      (multi-segment master header)\n"
        "<root>/p00/p000020/3544749_0001.hea + .dat, ...      (segments, 125 Hz; 3544749_layout.hea)\n"
        "<root>/p00/p000020/p000020-2183-04-28-17-47n.hea     (numerics: skipped)\n"
        "or plain segment records such as 3000003_0003.hea (MIMIC-III waveform database)",
        "https://physionet.org/content/mimic3wdb-matched/1.0/ (open, ODC-By; the clinical data are credentialed)",
        subject_regex=r"(p\d{6})|^(?:.*/)?(\d{7})_\d{4}", expected_fs=(125.0,),
        notes="subject = the pXXXXXX folder (matched subset) or the 7-digit record id before '_' (segments); "
              "gaps between segments are NaN and are screened out",
    ),
    "mcmed": LayoutSpec(
        "mcmed",
        "<root>/waveforms/<XXX>/<CSN>/<Pleth|II|...>/<CSN>_<k>.hea + .dat    (one visit = one CSN)\n"
        "  ECG and PPG may be separate single-channel records of one visit; they are paired by their header\n"
        "  start time (base_date/base_time) and cropped to their overlap",
        "https://physionet.org/content/mc-med/ (credentialed PhysioNet access: sign the DUA; never downloaded here)",
        subject_regex=r"waveforms/[^/]+/([^/]+)/",
        notes="the sub-folder layout above is our reading of the MC-MED description and is NOT verified against "
              "the data (we have no access); the reference code starts from its own train/val/test .npz exports "
              "(ECG 125 Hz, PPG 25 Hz) whose extraction code is unpublished; subject = visit CSN (one patient can "
              "have several visits: pass subject_table=<root>/visits.csv (CSN -> MRN) for a patient-level split, or "
              "the official split lists as splits=)",
    ),
}


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).upper()


def pick_channel(names: list[str], wanted: list[str] | tuple[str, ...]) -> int | None:
    """Index of the first channel of ``names`` matching ``wanted`` (in order of preference), else None."""
    normed = [_norm(n or "") for n in names]
    for w in wanted:
        if _norm(w) in normed:
            return normed.index(_norm(w))
    return None


def layout_kwargs(layout: str) -> dict[str, str]:
    """``name``/``tree``/``source``/``notes`` of a layout for :func:`datamodules._layout.require_dataset`."""
    spec = LAYOUTS[layout]
    return {"name": f"WFDB layout '{layout}'", "tree": spec.tree, "source": spec.source, "notes": spec.notes}


# ------------------------------------------------------------------------------------------------ record listing
def list_records(root: str | os.PathLike, records: list[str] | str | None = None, layout: str = "wfdb") -> list[str]:
    """Record paths (relative to ``root``, no extension).

    Args:
        root: dataset folder.
        records: explicit list of record names, a glob pattern (``'**/*.hea'``), or None (RECORDS file, else glob).
        layout: key of :data:`LAYOUTS` (sets the default glob).
    """
    root = Path(root)
    if isinstance(records, (list, tuple)):
        return [str(r).removesuffix(".hea") for r in records]
    if records is None and (root / "RECORDS").is_file():
        return _read_records_file(root, Path(""))
    pattern = records or LAYOUTS[layout].glob
    heads = sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.glob(pattern) if p.suffix == ".hea")
    return _drop_segment_headers(root, heads)


def _read_records_file(root: Path, sub: Path) -> list[str]:
    out: list[str] = []
    for line in (root / sub / "RECORDS").read_text().split():
        rel = sub / line
        if line.endswith("/") or (root / rel).is_dir():
            if (root / rel / "RECORDS").is_file():
                out += _read_records_file(root, rel)
            else:
                heads = sorted(p.relative_to(root).with_suffix("").as_posix() for p in (root / rel).glob("*.hea"))
                out += _drop_segment_headers(root, heads)
        else:
            out.append(rel.as_posix())
    return [r for r in out if not _is_auxiliary(r)]


def _is_auxiliary(rec: str) -> bool:
    name = rec.rsplit("/", 1)[-1]
    return name.endswith("_layout") or bool(re.match(r"^p\d{6}-.*n$", name))  # MIMIC layout / numerics headers


def _drop_segment_headers(root: Path, heads: list[str]) -> list[str]:
    """Keep master headers of multi-segment records and drop the segments they list (no double reading)."""
    import wfdb

    segs: set[str] = set()
    for h in heads:
        text = (root / f"{h}.hea").read_text(errors="replace").split("\n", 1)[0]
        if "/" in text.split()[0] if text.split() else False:  # "name/nseg ..." marks a multi-segment header
            try:
                hdr = wfdb.rdheader(str(root / h))
            except Exception:  # noqa: BLE001
                continue
            parent = h.rsplit("/", 1)[0] + "/" if "/" in h else ""
            segs.update(parent + s for s in (hdr.seg_name or []) if s != "~")
    return [h for h in heads if h not in segs and not _is_auxiliary(h)]


def subject_of(record: str, layout: str = "wfdb", subject_regex: str | None = None) -> str:
    """Subject id of a record path under a layout (the record itself when no rule matches)."""
    record = record.split("+")[0]
    rx = subject_regex or LAYOUTS[layout].subject_regex
    if rx:
        m = re.search(rx, record)
        if m:
            return next((g for g in m.groups() if g), m.group(0))
    return record


# ------------------------------------------------------------------------------------------------ record reading
_NUMBER = r"\d*\.?\d+(?:[eE][-+]?\d+)?"
#: the record line's sampling frequency field: ``fs[/counter_freq[(base_counter)]]``
_FS_FIELD = re.compile(rf"{_NUMBER}(?:/{_NUMBER}(?:\({_NUMBER}\))?)?")


def _check_record_line(header: Path, rec: str) -> None:
    """The header's record line ``name[/segments] n_signals [fs [n_samples ...]]`` holds numbers where numbers go.

    ``wfdb`` reads a negative or non-numeric sample count as "absent" (and then reads whatever the file holds), and a
    non-numeric rate as its default 250 Hz: both are errors naming the record here.
    """
    for line in header.read_text(errors="replace").splitlines():
        tokens = line.split()
        if not tokens or tokens[0].startswith("#"):
            continue
        fields = dict(zip(("signals", "fs", "samples"), tokens[1:4]))
        problems = []
        if "signals" in fields and not fields["signals"].isdigit():
            problems.append(f"signal count {fields['signals']!r}")
        if "fs" in fields and not _FS_FIELD.fullmatch(fields["fs"]):
            problems.append(f"sampling frequency {fields['fs']!r}")
        if "samples" in fields and not fields["samples"].isdigit():
            problems.append(f"sample count {fields['samples']!r}")
        if problems:
            raise SignalDataError(f"record {rec}: its header {header} has an invalid {' and '.join(problems)} in "
                                  f"its record line {line.strip()!r} (non-negative numbers expected)")
        return


def _check_files(path: Path, rec: str) -> None:
    """Clear errors for a missing header / data file, an invalid record line and a truncated signal file."""
    import wfdb

    if not path.with_suffix(".hea").is_file():
        raise SignalDataError(f"record {rec}: header {path.with_suffix('.hea')} not found")
    _check_record_line(path.with_suffix(".hea"), rec)
    try:
        hdr = wfdb.rdheader(str(path))
    except Exception as e:  # noqa: BLE001
        raise SignalDataError(f"record {rec}: unreadable header ({type(e).__name__}: {e})") from e
    if getattr(hdr, "seg_name", None):
        return  # multi-segment: each segment is checked when read
    if not hdr.fs or hdr.fs <= 0:
        raise SignalDataError(f"record {rec}: invalid sampling frequency {hdr.fs!r} in its header")
    files = Counter(hdr.file_name or [])
    for fname, nsig in files.items():
        fpath = path.parent / fname
        if not fpath.is_file():
            raise SignalDataError(f"record {rec}: signal file {fpath} named in its header is missing")
        fmt = hdr.fmt[hdr.file_name.index(fname)]
        per = _FMT_BYTES.get(str(fmt))
        if per is None or fpath.suffix == ".mat" or not hdr.sig_len:
            continue
        offset = (hdr.byte_offset or [0] * len(hdr.file_name))[hdr.file_name.index(fname)] or 0
        need = int(np.ceil(hdr.sig_len * nsig * per)) + offset
        have = fpath.stat().st_size
        if have < need:
            raise SignalDataError(f"record {rec}: signal file {fpath.name} is truncated ({have} bytes, the header "
                                  f"implies {need}: {hdr.sig_len} samples x {nsig} channels, format {fmt})")


def read_channels(
    root: str | os.PathLike, rec: str, wanted: dict[str, tuple[str, ...]]
) -> tuple[dict[str, np.ndarray], float, list[str], list[str]]:
    """Read the wanted channels of one record as float64 arrays (NaN where invalid).

    Returns (signals by modality, fs, all channel names, header comments). Raises :class:`SignalDataError` naming
    the record on a missing file, a truncated file or a missing channel.
    """
    import wfdb

    path = Path(root) / rec
    _check_files(path, rec)
    try:
        r = wfdb.rdrecord(str(path), m2s=True)
    except Exception as e:  # noqa: BLE001
        raise SignalDataError(f"record {rec}: cannot read signals ({type(e).__name__}: {e}); is a file truncated "
                              "or corrupt?") from e
    names = list(r.sig_name or [])
    out = {}
    for mod, aliases in wanted.items():
        i = pick_channel(names, aliases)
        if i is None:
            raise SignalDataError(f"record {rec}: no {mod.upper()} channel (wanted one of {list(aliases)}; "
                                  f"the header names {names})")
        sig = r.p_signal if r.p_signal is not None else r.dac()
        out[mod] = np.asarray(sig[:, i], dtype=np.float64)
    if not r.fs or r.fs <= 0:
        raise SignalDataError(f"record {rec}: invalid sampling frequency {r.fs!r}")
    return out, float(r.fs), names, list(r.comments or [])


def read_beat_annotations(record_path: str | os.PathLike, extension: str = "atr") -> dict[str, Any]:
    """Beat annotations of a WFDB record (e.g. MIT-BIH ``100`` + ``100.atr``): sample indices, symbols and fs."""
    import wfdb

    path = Path(record_path)
    if not path.with_suffix(f".{extension}").is_file():
        raise SignalDataError(f"record {path.name}: annotation file {path.with_suffix('.' + extension)} not found")
    a = wfdb.rdann(str(path), extension)
    return {"sample": np.asarray(a.sample), "symbol": list(a.symbol), "fs": float(a.fs or wfdb.rdheader(str(path)).fs)}


def _record_span(hdr: Any) -> tuple[float, float]:
    """(start, end) in seconds of a record from its header (absolute when base_date/base_time are set, else 0)."""
    import datetime as dt

    start = 0.0
    if hdr.base_time is not None:
        day = hdr.base_date or dt.date(1970, 1, 1)
        start = dt.datetime.combine(day, hdr.base_time).replace(tzinfo=dt.timezone.utc).timestamp()
    return start, start + (hdr.sig_len or 0) / float(hdr.fs or 1)


def pair_separate_records(
    root: str | os.PathLike, recs: list[str], wanted: dict[str, tuple[str, ...]], layout: str = "wfdb",
    subject_regex: str | None = None,
) -> tuple[list[str], list[str]]:
    """Pair single-modality records of one subject (e.g. MC-MED's separate ECG and Pleth records of a visit).

    Records holding both modalities are kept as they are. An ECG-only record is paired with the PPG-only record of
    the same subject whose time span (header base date/time + length) overlaps it most; the pair is named
    ``'<ecg record>+<ppg record>'`` and cropped to the overlap when read. Returns (records, unpaired records).
    """
    import wfdb

    kept, ecg_only, ppg_only = [], {}, {}
    for rec in recs:
        try:
            hdr = wfdb.rdheader(str(Path(root) / rec))
        except Exception:  # noqa: BLE001  (reported with the record's name when it is read)
            kept.append(rec)
            continue
        names = list(hdr.sig_name or [])
        has = {m: pick_channel(names, a) is not None for m, a in wanted.items()}
        if not names or all(has.values()) or len(wanted) == 1:
            kept.append(rec)
            continue
        sub = subject_of(rec, layout, subject_regex)
        if has.get("ecg"):
            ecg_only.setdefault(sub, []).append((rec, _record_span(hdr)))
        elif has.get("ppg"):
            ppg_only.setdefault(sub, []).append((rec, _record_span(hdr)))
        else:
            kept.append(rec)  # neither modality: read and reported as a missing channel
    unpaired = []
    for sub, ecgs in ecg_only.items():
        ppgs = list(ppg_only.get(sub, []))
        for rec, (s0, s1) in ecgs:
            best = max(ppgs, key=lambda p: min(s1, p[1][1]) - max(s0, p[1][0]), default=None)
            if best is None or min(s1, best[1][1]) - max(s0, best[1][0]) <= 0:
                unpaired.append(rec)
                continue
            ppgs.remove(best)
            kept.append(f"{rec}+{best[0]}")
        unpaired += [p[0] for p in ppgs]
    unpaired += [r for sub, v in ppg_only.items() if sub not in ecg_only for r, _ in v]
    return kept, unpaired


# ------------------------------------------------------------------------------------------------ preprocessing
def resample(x: np.ndarray, fs_in: float, fs_out: float) -> np.ndarray:
    """Band-limited resampling with torchaudio (rational ratio of the two rates)."""
    if abs(fs_in - fs_out) < 1e-9:
        return x
    import torchaudio.functional as AF

    ratio = fractions.Fraction(fs_out / fs_in).limit_denominator(1000)
    y = AF.resample(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)), ratio.denominator, ratio.numerator)
    return y.numpy()


def butter_filter(x: np.ndarray, fs: float, low: float | None, high: float | None, order: int) -> np.ndarray:
    """Zero-phase Butterworth (second-order sections): band-pass, high-pass (high=None) or low-pass (low=None)."""
    if low and high:
        sos = sps.butter(order, [low, min(high, 0.99 * fs / 2)], btype="bandpass", fs=fs, output="sos")
    elif low:
        sos = sps.butter(order, low, btype="highpass", fs=fs, output="sos")
    elif high:
        sos = sps.butter(order, min(high, 0.99 * fs / 2), btype="lowpass", fs=fs, output="sos")
    else:
        return x
    return sps.sosfiltfilt(sos, x)


def notch_filter(x: np.ndarray, fs: float, freq: float, q: float = 30.0) -> np.ndarray:
    if freq >= fs / 2:
        return x
    b, a = sps.iirnotch(freq, q, fs=fs)
    return sps.filtfilt(b, a, x)


def flat_fraction(w: np.ndarray, fs: float, chunk_s: float = 0.1, threshold: float = 1e-3) -> float:
    """Fraction of ``chunk_s`` chunks whose peak-to-peak change is below ``threshold`` (flat line / dropout)."""
    n = max(1, int(round(chunk_s * fs)))
    k = len(w) // n
    if k == 0:
        return 1.0
    c = w[: k * n].reshape(k, n)
    return float((np.ptp(c, axis=1) < threshold).mean())


def flat_fraction_diff(w: np.ndarray, fs: float, window_s: float = 0.1, threshold: float = 1e-3) -> float:
    """The reference flat-line measure (``step1.py`` ``detect_flat_in_windows``): the fraction of positions of a
    sliding window of int(``window_s``·fs) samples (all positions, step 1) whose mean |first difference| is below
    ``threshold``. The reference rejects a window when this exceeds 0.25."""
    k = max(1, int(window_s * fs) - 1)  # differences per sliding window
    d = np.abs(np.diff(np.asarray(w, dtype=np.float64)))
    if len(d) < k:
        return 1.0
    rate = np.convolve(d, np.ones(k), mode="valid") / k
    return float((rate < threshold).mean())


# ------------------------------------------------------------------------------------------------ ECG polarity and SQI
def ecg_clean_for_polarity(x: np.ndarray, fs: float) -> np.ndarray:
    """The reference's ECG cleaning inside its polarity check (``ecg_clean_nk_mne``): 0.5-Hz Butterworth high-pass
    (order 5) and a 50-Hz notch (skipped when 50 Hz is not below Nyquist); zero-phase here as in MNE's IIR filter."""
    return notch_filter(butter_filter(np.asarray(x, dtype=np.float64), fs, 0.5, None, 5), fs, 50.0)


def ecg_inverted(w: np.ndarray, fs: float, window_s: float = 2.0) -> bool:
    """The reference / NeuroKit inversion rule on a cleaned ECG window: over every position of a rolling
    ``window_s`` window (step 1), take the original value of the sample with the largest square; the ECG is inverted
    when the median of these values is negative. A window shorter than ``window_s`` is one rolling window."""
    w = np.asarray(w, dtype=np.float64)
    if len(w) == 0:
        return False
    k = min(len(w), max(1, int(window_s * fs)))
    r = np.lib.stride_tricks.sliding_window_view(w, k)
    v = np.take_along_axis(r, np.square(r).argmax(-1)[:, None], axis=-1)
    return bool(np.nanmedian(v) < 0)


def ecg_sqi_ok(w: np.ndarray, fs: float, method: str = "zhao2018", approach: str = "simple",
               threshold: float = 0.5, fraction: float = 0.75) -> bool:
    """The reference's step-1 ECG quality gate (``ecg_quality_checker``) on one cleaned ECG window, through NeuroKit's
    ``ecg_quality``: 'zhao2018' keeps the window unless it is rated 'Unacceptable' ('Excellent' and 'Barely
    acceptable' pass); 'averageQRS' keeps it when the fraction of samples with quality >= ``threshold`` is >=
    ``fraction``. A NeuroKit failure rejects the window, as in the reference."""
    import neurokit2 as nk

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            q = nk.ecg_quality(np.asarray(w, dtype=np.float64), sampling_rate=int(fs), method=method,
                               approach=approach)
    except Exception:  # noqa: BLE001  (the reference: 'Unacceptable' / zero quality)
        return False
    if method == "zhao2018":
        return q != "Unacceptable"
    q = np.asarray(q, dtype=np.float64)
    return bool(q.size and (q >= threshold).sum() / q.size >= fraction)


# ------------------------------------------------------------------------------------------------ step 2
def savgol_smooth(x: np.ndarray, window: int, order: int = 2) -> np.ndarray:
    """Savitzky-Golay smoothing as the reference's ``_safe_savgol``: ``scipy.signal.savgol_filter(x, window, order)``
    (mode 'interp'), the window shortened to the longest odd length for short inputs, the input returned as it is
    when it is too short to smooth."""
    x = np.asarray(x)
    n = len(x)
    if n < order + 2:
        return x
    w = min(window, n if n % 2 == 1 else n - 1)
    if w < order + 2:
        w = order + 3 if (order + 3) % 2 else order + 4  # the reference: order + 3, made odd
        if w > n:
            return x
    return sps.savgol_filter(x, window_length=w, polyorder=order)


@dataclass
class Screening:
    """Counts of windows and records kept and rejected, by reason."""

    windows: Counter = field(default_factory=Counter)
    records: Counter = field(default_factory=Counter)
    skipped_records: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"windows": dict(self.windows), "records": dict(self.records), "skipped_records": self.skipped_records}


# ------------------------------------------------------------------------------------------------ window cache
def _load_cached(path: str | os.PathLike) -> np.ndarray:
    """A cached window array, memory-mapped; a missing, truncated or corrupt file is an error naming it."""
    try:
        return np.load(path, mmap_mode="r")
    except Exception as e:  # noqa: BLE001 - numpy says "mmap length is greater than file size", naming nothing
        raise SignalDataError(f"signal window cache file {path} cannot be read ({type(e).__name__}: {e}); delete "
                              f"its folder to rebuild it") from e


def _digest(path: str | os.PathLike) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_problem(cache: Path, shapes: dict[str, tuple[int, ...]]) -> str | None:
    """What is wrong with the window cache folder ``cache`` (None when it is sound).

    ``shapes``: the arrays it must hold and their shape (``-1``: the number of windows in ``meta.json``). Each array
    must load, have that shape, hold only finite values and match the checksum stored when the cache was built.
    """
    try:
        meta = json.loads((cache / "meta.json").read_text())
        n, stored = len(meta["window_records"]), meta["files"]
    except Exception as e:  # noqa: BLE001
        return f"{cache / 'meta.json'} is unreadable or lacks its file checksums ({type(e).__name__}: {e})"
    for name, shape in shapes.items():
        path = cache / f"{name}.npy"
        want = tuple(n if d == -1 else d for d in shape)
        try:
            arr = _load_cached(path)
        except SignalDataError as e:
            return str(e)
        if arr.shape != want:
            return f"{path} has shape {arr.shape}, expected {want}"
        if name not in stored or _digest(path) != stored[name]:
            return f"{path} does not match the checksum stored when the cache was built (changed or corrupt)"
        for i in range(0, len(arr), 4096):
            if not np.isfinite(arr[i:i + 4096]).all():
                return f"{path} holds NaN or infinite values"
    return None


# ------------------------------------------------------------------------------------------------ dataset
class WindowDataset(Dataset):
    """Windows from the memory-mapped cache: dict(ecg=(1,W), [ppg=(1,W)], [labels=(K,)], index=int)."""

    def __init__(self, cache: str, indices: np.ndarray, paired: bool, has_labels: bool) -> None:
        self.cache, self.indices, self.paired, self.has_labels = cache, np.asarray(indices), paired, has_labels
        self._arrays: dict[str, np.ndarray] | None = None

    def _open(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            names = ["ecg"] + (["ppg"] if self.paired else []) + (["labels"] if self.has_labels else [])
            self._arrays = {n: _load_cached(os.path.join(self.cache, f"{n}.npy")) for n in names}
        return self._arrays

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_arrays": None}

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, Any]:
        a, j = self._open(), int(self.indices[i])
        item: dict[str, Any] = {"ecg": torch.from_numpy(np.array(a["ecg"][j])), "index": j}
        if self.paired:
            item["ppg"] = torch.from_numpy(np.array(a["ppg"][j]))
        if self.has_labels:
            item["labels"] = torch.from_numpy(np.array(a["labels"][j]))
        return item


class WFDBPairedSignalDataModule(SplitDataModule):
    """Paired PPG→ECG windows (or ECG-only windows with labels) from a folder of WFDB records.

    Args:
        root: dataset folder; default: the bundled real PhysioNet records (``datamodules/data/physionet``: a103l
            when paired, 100 and 3000003_0003 otherwise).
        records: record names, a glob pattern, or None (the RECORDS file, else every header).
        layout: 'wfdb', 'cinc2015', 'bidmc', 'mimic3' or 'mcmed' (see ``LAYOUTS``: tree, source, subject rule).
        ecg_channels: ECG channel names in order of preference (aliases matched ignoring case/spaces).
        ppg_channels: PPG channel names in order of preference.
        paired: read PPG too (False: ECG-only windows, e.g. MIT-BIH for classification).
        fs: target sampling rate in Hz (128 in the paper).
        window_s: window length in seconds (10 in the paper; non-overlapping).
        expected_fs: source rates the records must have (a record at another rate is bad input); None: the
            layout's (cinc2015 250 Hz, bidmc and mimic3 125 Hz, wfdb/mcmed any); []: any.
        ppg_band: PPG band-pass in Hz (Butterworth order 3); None disables.
        ecg_highpass: ECG high-pass in Hz (Butterworth order 5); None disables.
        ecg_notch: ECG notch frequency in Hz (50 in the reference code); None disables.
        flat_threshold: change below which a 0.1-s stretch counts as flat (mean |difference| for
            'mean_abs_diff', peak-to-peak for 'ptp'), in the record's physical units.
        max_flat_fraction: windows with a larger flat fraction than this (per modality) are rejected.
        flat_method: 'mean_abs_diff' (the reference's sliding mean |diff| at the source rate; default) or 'ptp'
            (peak-to-peak over non-overlapping 0.1-s chunks of the resampled signal; the earlier default).
        ecg_polarity: 'record' (default; the spec's rule: flip the whole ECG of a record when more than
            ``ecg_polarity_threshold`` of its windows that pass the NaN/flat screening are inverted), 'window' (flip
            each inverted window on its own: what the reference code does in effect, as each of its stored rows is
            one 10-s window), or None (never flip). See :func:`ecg_inverted`.
        ecg_polarity_threshold: fraction of inverted windows above which a record is flipped (0.5).
        ecg_sqi: step-1 ECG quality gate through NeuroKit ``ecg_quality``: 'zhao2018' (default; drop 'Unacceptable'
            windows), 'averageQRS' (keep when >= ``ecg_sqi_fraction`` of samples have quality >=
            ``ecg_sqi_threshold``), or None. For ECG-only classification data consider None: the gate also drops
            noisy and ectopy-rich windows.
        ecg_sqi_approach: zhao2018 fusion, 'simple' (reference) or 'fuzzy'.
        ecg_sqi_threshold: averageQRS per-sample quality threshold (0.5, the reference's ``ecg_sqi_thre``).
        ecg_sqi_fraction: averageQRS fraction of good samples (0.75, the reference's ``ecg_frac_thre``).
        step2_smooth: Savitzky-Golay-smooth the z-scored windows as ``step2.py`` (PPG window
            ``savgol_ppg_window``, ECG ``savgol_ecg_window``, order ``savgol_order``); the smoothed windows are
            cached as they are (not z-scored again, as the reference saves them). Off by default (see the module
            docstring); on in the MC-MED configs. (The reference's step-2 screening is not implemented.)
        savgol_ppg_window, savgol_ecg_window, savgol_order: step-2 smoothing (7, 11, 2 as the reference).
        on_bad_record: 'raise' (clear error naming the record) or 'skip' (counted in ``screening``).
        split_by: 'subject' (layout rule), 'record', or 'time' (contiguous blocks within each record; only for
            single-record demos).
        window_hop_s: start-to-start spacing of the windows in seconds (None: ``window_s``, non-overlapping). A
            shorter hop gives overlapping windows (more training windows from a short record). With
            ``split_by='time'`` the fractions then cut each record's TIME SPAN, a window belongs to a split only when
            it lies wholly inside that split's span (windows straddling a cut are dropped), and the val/test windows
            are thinned to non-overlapping ones: no sample of a val/test window is in any training window
            (:meth:`window_spans`). ``ecg_polarity='window'`` is not allowed with overlap.
        split_fractions: train/val/test fractions.
        split_seed: seed of the subject permutation.
        splits: explicit {'train': [...], 'val': [...], 'test': [...]} record (or subject) lists; overrides the above.
        subject_regex: overrides the layout's subject rule (group 1 = subject id).
        subject_table: CSV mapping the layout's subject id to a grouping id, e.g. MC-MED's ``visits.csv`` (visit CSN
            → patient MRN), so that all visits of one patient land in one split; ids absent from the table keep
            their own id (counted in ``unmapped_subjects``). None: group by the layout's subject id.
        subject_table_columns: (key column, group column) of ``subject_table`` (('CSN', 'MRN')).
        label_source: None, 'header' (label names found in header comments), 'csv', or 'annotations'
            (beat symbols present in the window, e.g. MIT-BIH .atr).
        label_names: label names (header/csv) or annotation symbols; sets ``num_classes``.
        labels_csv: CSV with a 'record' column and either one 0/1 column per label or a 'labels' column
            (';'-separated names).
        annotation_extension: annotation file extension for label_source='annotations'.
        cache_dir: window cache folder (default ``zoo.cache_dir('derived/signal')``: ``$SHAREZOO_CACHE/derived/signal``
            or ``~/.cache/sharezoo/derived/signal``).
        batch_size: windows per batch.
        num_workers: DataLoader workers.
        max_windows_per_record: cap per record (None: all).
        pair_separate_records: pair ECG-only and PPG-only records of one subject by their header start times
            (None: on for layout 'mcmed'); unpaired records are counted in ``screening``.
    """

    def __init__(
        self,
        root: str | None = None,
        records: list[str] | str | None = None,
        layout: str = "wfdb",
        ecg_channels: list[str] | None = None,
        ppg_channels: list[str] | None = None,
        paired: bool = True,
        fs: float = 128.0,
        window_s: float = 10.0,
        expected_fs: list[float] | None = None,
        ppg_band: tuple[float, float] | None = (0.5, 8.0),
        ecg_highpass: float | None = 0.5,
        ecg_notch: float | None = None,
        flat_threshold: float = 1e-3,
        max_flat_fraction: float = 0.25,
        flat_method: str = "mean_abs_diff",
        ecg_polarity: str | None = "record",
        ecg_polarity_threshold: float = 0.5,
        ecg_sqi: str | None = "zhao2018",
        ecg_sqi_approach: str = "simple",
        ecg_sqi_threshold: float = 0.5,
        ecg_sqi_fraction: float = 0.75,
        step2_smooth: bool = False,
        savgol_ppg_window: int = 7,
        savgol_ecg_window: int = 11,
        savgol_order: int = 2,
        on_bad_record: str = "raise",
        split_by: str = "subject",
        window_hop_s: float | None = None,
        split_fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
        split_seed: int = 0,
        splits: dict[str, list[str]] | None = None,
        subject_regex: str | None = None,
        subject_table: str | None = None,
        subject_table_columns: tuple[str, str] = ("CSN", "MRN"),
        label_source: str | None = None,
        label_names: list[str] | None = None,
        labels_csv: str | None = None,
        annotation_extension: str = "atr",
        cache_dir: str | None = None,
        batch_size: int = 32,
        num_workers: int = 0,
        max_windows_per_record: int | None = None,
        pair_separate_records: bool | None = None,
    ) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"unknown layout {layout!r}; one of {sorted(LAYOUTS)}")
        if on_bad_record not in ("raise", "skip"):
            raise ValueError("on_bad_record must be 'raise' or 'skip'")
        if split_by not in ("subject", "record", "time"):
            raise ValueError("split_by must be 'subject', 'record' or 'time'")
        if flat_method not in ("mean_abs_diff", "ptp"):
            raise ValueError("flat_method must be 'mean_abs_diff' or 'ptp'")
        if ecg_polarity not in (None, "record", "window"):
            raise ValueError("ecg_polarity must be None, 'record' or 'window'")
        if ecg_sqi not in (None, "zhao2018", "averageQRS"):
            raise ValueError("ecg_sqi must be None, 'zhao2018' or 'averageQRS'")
        if label_source not in (None, "header", "csv", "annotations"):
            raise ValueError("label_source must be None, 'header', 'csv' or 'annotations'")
        if label_source and not label_names:
            raise ValueError("label_source needs label_names")
        self.root = Path(root) if root else BUNDLED_ROOT
        if root is None and records is None:  # bundled data: the paired record, or the ECG-only ones
            records = ["a103l"] if paired else ["100", "3000003_0003"]
        self.records, self.layout, self.paired = records, layout, paired
        self.ecg_channels = tuple(ecg_channels or ECG_ALIASES)
        self.ppg_channels = tuple(ppg_channels or PPG_ALIASES)
        self.target_fs, self.window_s = float(fs), float(window_s)
        if not (self.target_fs > 0 and self.window_s > 0) or self.window_s * self.target_fs < 1:
            raise ValueError(f"fs ({fs}) and window_s ({window_s}) must be positive, and a window at least one sample "
                             f"(window_s * fs = {self.window_s * self.target_fs:g})")
        self.expected_fs = tuple(float(f) for f in (expected_fs if expected_fs is not None
                                                    else LAYOUTS[layout].expected_fs))
        self.ppg_band, self.ecg_highpass, self.ecg_notch = ppg_band, ecg_highpass, ecg_notch
        self.flat_threshold, self.max_flat_fraction, self.flat_method = flat_threshold, max_flat_fraction, flat_method
        self.ecg_polarity, self.ecg_polarity_threshold = ecg_polarity, float(ecg_polarity_threshold)
        self.ecg_sqi, self.ecg_sqi_approach = ecg_sqi, ecg_sqi_approach
        self.ecg_sqi_threshold, self.ecg_sqi_fraction = float(ecg_sqi_threshold), float(ecg_sqi_fraction)
        self.step2_smooth = step2_smooth
        self.savgol_ppg_window, self.savgol_ecg_window = int(savgol_ppg_window), int(savgol_ecg_window)
        self.savgol_order = int(savgol_order)
        self.on_bad_record, self.split_by = on_bad_record, split_by
        self.window_hop_s = None if window_hop_s is None else float(window_hop_s)
        if self.window_hop_s is not None and not 0 < self.window_hop_s * self.target_fs:
            raise ValueError(f"window_hop_s ({window_hop_s}) must be positive")
        if self.window_hop_s is not None and ecg_polarity == "window":
            raise ValueError("ecg_polarity='window' flips window by window and cannot be used with overlapping "
                             "windows (window_hop_s): use 'record' or None")
        self.split_fractions, self.split_seed, self.splits = tuple(split_fractions), split_seed, splits
        self.subject_regex = subject_regex
        self.subject_table, self.subject_table_columns = subject_table, tuple(subject_table_columns)
        self.unmapped_subjects = 0
        self.label_source, self.label_names, self.labels_csv = label_source, list(label_names or []), labels_csv
        self.annotation_extension = annotation_extension
        if cache_dir:
            self.cache_root = Path(cache_dir)
        else:
            from zoo import cache_dir as zoo_cache_dir

            self.cache_root = zoo_cache_dir("derived/signal")
        self.batch_size, self.num_workers = batch_size, num_workers
        self.max_windows_per_record = max_windows_per_record
        self.pair_separate_records = pair_separate_records
        self.screening = Screening()
        self.window_records: list[str] = []
        self.window_starts: list[int] | None = None
        self.split_indices: dict[str, np.ndarray] = {}
        self.cache_path: Path | None = None

    # -- data-derived properties (readable before setup) ---------------------------------------------------------
    @property
    def seq_len(self) -> int:
        return int(round(self.window_s * self.target_fs))

    @property
    def fs(self) -> float:
        return self.target_fs

    @property
    def hop(self) -> int:
        """Start-to-start spacing of the windows in samples at ``fs`` (``seq_len`` unless ``window_hop_s``)."""
        return self.seq_len if self.window_hop_s is None else max(1, int(round(self.window_hop_s * self.target_fs)))

    @property
    def num_leads(self) -> int:
        return 1

    @property
    def in_chans(self) -> int:
        return 1

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def prepare_data(self) -> None:
        self._check_root()

    def _check_root(self) -> list[str]:
        require_dataset(self.root, **layout_kwargs(self.layout))
        recs = list_records(self.root, self.records, self.layout)
        if not recs:
            raise layout_error(f"no WFDB records found under {self.root} (records={self.records!r}).", root=self.root,
                               **layout_kwargs(self.layout))
        return recs

    def setup(self, stage: str | None = None) -> None:
        if self.cache_path is not None:
            return
        recs = self._check_root()
        self._subject_table()  # a missing/malformed subject_table fails now, not after the window cache is built
        unpaired: list[str] = []
        if self.paired and (self.pair_separate_records if self.pair_separate_records is not None
                            else self.layout == "mcmed"):
            recs, unpaired = pair_separate_records(self.root, recs, self._wanted, self.layout, self.subject_regex)
        self._unpaired = unpaired
        key = self._cache_key(recs)
        cache = self.cache_root / key
        problem = cache_problem(cache, self._cache_shapes()) if (cache / "meta.json").is_file() else "absent"
        if problem is not None:
            if problem != "absent":
                import shutil

                _logger.warning("signal window cache %s is bad: %s. Rebuilding it.", cache, problem)
                shutil.rmtree(cache)
            self._check_neurokit()
            self._build_cache(recs, cache)
            problem = cache_problem(cache, self._cache_shapes())
            if problem is not None:
                raise SignalDataError(f"signal window cache {cache} is bad right after it was built: {problem}")
        meta = json.loads((cache / "meta.json").read_text())
        self.cache_path = cache
        self.window_records = meta["window_records"]
        self.window_starts = meta.get("window_starts")
        self.screening = Screening(Counter(meta["screening"]["windows"]), Counter(meta["screening"]["records"]),
                                   meta["screening"]["skipped_records"])
        self.split_indices = self._split(meta)
        _logger.info("signal windows %s: %s", cache, json.dumps(meta["screening"]))

    def _config(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in (
            "layout", "paired", "ecg_channels", "ppg_channels", "target_fs", "window_s", "expected_fs", "ppg_band",
            "ecg_highpass", "ecg_notch", "flat_threshold", "max_flat_fraction", "flat_method", "on_bad_record",
            "ecg_polarity", "ecg_polarity_threshold", "ecg_sqi", "ecg_sqi_approach", "ecg_sqi_threshold",
            "ecg_sqi_fraction", "step2_smooth", "savgol_ppg_window",
            "savgol_ecg_window", "savgol_order", "label_source",
            "label_names", "labels_csv", "annotation_extension", "max_windows_per_record", "pair_separate_records")
        } | {"version": 4} | ({} if self.window_hop_s is None else {"window_hop_s": self.window_hop_s, "starts": 1})

    def _cache_shapes(self) -> dict[str, tuple[int, ...]]:
        """The arrays of a window cache and their shapes (-1: the number of windows)."""
        win = (-1, 1, self.seq_len)
        return {"ecg": win} | ({"ppg": win} if self.paired else {}) | (
            {"labels": (-1, len(self.label_names))} if self.label_source else {})

    def _cache_key(self, recs: list[str]) -> str:
        h = hashlib.sha1(json.dumps(self._config(), sort_keys=True, default=str).encode())
        h.update(str(self.root.resolve()).encode())
        for r in (part for rec in recs for part in rec.split("+")):
            for p in sorted((self.root / r).parent.glob(Path(r).name + ".*")):
                st = p.stat()  # full-resolution mtime; headers (small) by content, so a same-size rewrite is seen
                h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns}".encode())
                if p.suffix == ".hea":
                    h.update(hashlib.sha1(p.read_bytes()).digest())
        if self.labels_csv and Path(self.labels_csv).is_file():
            h.update(Path(self.labels_csv).read_bytes())
        return h.hexdigest()[:16]

    # -- per-record processing -------------------------------------------------------------------------------------
    def process_record(self, rec: str) -> dict[str, Any]:
        """Windows (z-scored float32 (n, 1, W)) and labels of one record; raises SignalDataError on bad input."""
        sources, comments = self._read_sources(rec)
        sigs = {m: x for m, (x, _) in sources.items()}
        win, hop = self.seq_len, self.hop
        out: dict[str, np.ndarray] = {}
        bad = None
        for mod, (x, fs) in sources.items():
            nan = ~np.isfinite(x)
            if nan.all():
                raise SignalDataError(f"record {rec}: the {mod.upper()} channel is entirely NaN/missing")
            if nan.any():  # fill for filtering; the windows that held NaN are rejected below
                idx = np.arange(len(x))
                x = np.interp(idx, idx[~nan], x[~nan])
            y = resample(x, fs, self.target_fs)
            m = np.zeros(len(y), bool)
            if nan.any():  # nearest source sample of every output sample (no ringing across window edges)
                m = nan[np.minimum(np.round(np.arange(len(y)) * fs / self.target_fs).astype(int), len(x) - 1)]
            raw = y
            if mod == "ppg" and self.ppg_band:
                y = butter_filter(y, self.target_fs, self.ppg_band[0], self.ppg_band[1], 3)
            if mod == "ecg":
                if self.ecg_highpass:
                    y = butter_filter(y, self.target_fs, self.ecg_highpass, None, 5)
                if self.ecg_notch:
                    y = notch_filter(y, self.target_fs, self.ecg_notch)
            out[mod], out[f"{mod}_raw"], out[f"{mod}_nan"], out[f"{mod}_src"] = y, raw, m, (x, fs)
            bad = m if bad is None else bad
        length = min(len(out[m]) for m in sigs)
        n = (length - win) // hop + 1 if length >= win else 0
        if self.max_windows_per_record:
            n = min(n, self.max_windows_per_record)
        cand, reasons = [], Counter()
        for i in range(n):
            s = slice(i * hop, i * hop + win)
            if any(out[f"{m}_nan"][s].any() for m in sigs):
                reasons["rejected_nan"] += 1
                continue
            flat = [m for m in sigs
                    if self._flat(out, m, i, win, hop) > self.max_flat_fraction or out[m][s].std() < 1e-8]
            if flat:
                for m in flat:
                    reasons[f"rejected_flat_{m}"] += 1
                continue
            cand.append(i)
        flipped = self._fix_polarity(out, cand, win, hop) if self.ecg_polarity else 0
        if flipped:
            reasons["flipped_ecg"] += flipped
        keep = []
        for i in cand:
            if self.ecg_sqi and not ecg_sqi_ok(out["ecg"][i * hop:i * hop + win], self.target_fs, self.ecg_sqi,
                                               self.ecg_sqi_approach, self.ecg_sqi_threshold, self.ecg_sqi_fraction):
                reasons["rejected_sqi_ecg"] += 1
                continue
            keep.append(i)
        wins = {}
        for m in sigs:
            w = np.stack([out[m][i * hop:i * hop + win] for i in keep]) if keep else np.zeros((0, win))
            wins[m] = (w - w.mean(1, keepdims=True)) / w.std(1, keepdims=True).clip(1e-8)
            if self.step2_smooth:
                sg = self.savgol_ppg_window if m == "ppg" else self.savgol_ecg_window
                wins[m] = np.stack([savgol_smooth(x, sg, self.savgol_order) for x in wins[m]]) if keep else wins[m]
        reasons["kept"] += len(keep)
        reasons["total"] += n
        res: dict[str, Any] = {"n": len(keep), "reasons": reasons, "flipped_ecg": flipped,
                               "starts": [i * hop for i in keep]}
        for m in sigs:
            res[m] = wins[m][:, None].astype(np.float32)
        if self.label_source:
            res["labels"] = self._labels(rec.split("+")[0], comments, keep, win, hop)
        return res

    def _check_neurokit(self) -> None:
        """A clear error, before any record is read, when a stage that needs NeuroKit is on and it is missing."""
        if not self.ecg_sqi:
            return
        try:
            import neurokit2  # noqa: F401
        except ImportError as e:
            raise ImportError("the ECG SQI gate (ecg_sqi) needs neurokit2: pip install neurokit2, or set "
                              "ecg_sqi: null") from e

    def _fix_polarity(self, out: dict[str, Any], cand: list[int], win: int, hop: int | None = None) -> int:
        """Flip inverted ECG (``ecg_polarity``) in ``out['ecg']``; returns the number of candidate windows flipped.

        Each candidate window (passed the NaN and flat screening) is tested with :func:`ecg_inverted` on the
        resampled, unfiltered ECG cleaned as the reference cleans it (:func:`ecg_clean_for_polarity`, the whole
        record at once)."""
        if not cand or "ecg" not in out:
            return 0
        hop = win if hop is None else hop
        clean = ecg_clean_for_polarity(out["ecg_raw"], self.target_fs)
        inv = np.asarray([ecg_inverted(clean[i * hop:i * hop + win], self.target_fs) for i in cand])
        if self.ecg_polarity == "record":
            if inv.mean() <= self.ecg_polarity_threshold:
                return 0
            out["ecg"] = -out["ecg"]
            return len(cand)
        y = out["ecg"].copy()
        for i in np.asarray(cand)[inv]:
            y[i * hop:i * hop + win] *= -1
        out["ecg"] = y
        return int(inv.sum())

    def _flat(self, out: dict[str, Any], mod: str, i: int, win: int, hop: int | None = None) -> float:
        """Flat fraction of window ``i`` of modality ``mod`` under ``flat_method``."""
        hop = win if hop is None else hop
        if self.flat_method == "ptp":
            return flat_fraction(out[f"{mod}_raw"][i * hop:i * hop + win], self.target_fs, 0.1, self.flat_threshold)
        x, fs = out[f"{mod}_src"]  # the same span at the source rate, unfiltered (as the reference tests it)
        a, b = (int(round(j * fs / self.target_fs)) for j in (i * hop, i * hop + win))
        return flat_fraction_diff(x[a:b], fs, 0.1, self.flat_threshold)

    @property
    def _wanted(self) -> dict[str, tuple[str, ...]]:
        return {"ecg": self.ecg_channels} | ({"ppg": self.ppg_channels} if self.paired else {})

    def _check_fs(self, rec: str, fs: float) -> None:
        if self.expected_fs and not any(abs(fs - f) < 1e-6 for f in self.expected_fs):
            raise SignalDataError(f"record {rec}: sampling rate {fs} Hz, expected {list(self.expected_fs)} Hz")

    def _read_sources(self, rec: str) -> tuple[dict[str, tuple[np.ndarray, float]], list[str]]:
        """{modality: (signal, fs)} of a record, or of an 'ecg_record+ppg_record' pair cropped to their overlap."""
        if "+" not in rec:
            sigs, fs, _, comments = read_channels(self.root, rec, self._wanted)
            self._check_fs(rec, fs)
            return {m: (x, fs) for m, x in sigs.items()}, comments
        import wfdb

        parts = dict(zip(("ecg", "ppg"), rec.split("+")))
        spans, out, comments = {}, {}, []
        for mod, r in parts.items():
            sigs, fs, _, com = read_channels(self.root, r, {mod: self._wanted[mod]})
            self._check_fs(r, fs)
            spans[mod] = _record_span(wfdb.rdheader(str(self.root / r)))
            out[mod] = (sigs[mod], fs)
            comments += com
        t0, t1 = max(s[0] for s in spans.values()), min(s[1] for s in spans.values())
        if t1 <= t0:
            raise SignalDataError(f"record pair {rec}: the ECG and PPG records do not overlap in time")
        for mod, (x, fs) in out.items():
            a = int(round((t0 - spans[mod][0]) * fs))
            out[mod] = (x[a: a + int(round((t1 - t0) * fs))], fs)
        return out, comments

    def _labels(self, rec: str, comments: list[str], keep: list[int], win: int, hop: int | None = None) -> np.ndarray:
        k = len(self.label_names)
        hop = win if hop is None else hop
        if self.label_source == "annotations":
            ann = read_beat_annotations(self.root / rec, self.annotation_extension)
            t = ann["sample"] / ann["fs"] * self.target_fs
            lab = np.zeros((len(keep), k), np.float32)
            for j, i in enumerate(keep):
                sym = {s for s, tt in zip(ann["symbol"], t) if i * hop <= tt < i * hop + win}
                lab[j] = [float(n in sym) for n in self.label_names]
            return lab
        if self.label_source == "header":
            text = " ".join(comments).lower()
            vec = [float(n.lower() in text) for n in self.label_names]
        else:
            vec = self._csv_labels().get(rec) or self._csv_labels().get(rec.rsplit("/", 1)[-1])
            if vec is None:
                raise SignalDataError(f"record {rec}: no row in labels CSV {self.labels_csv}")
        return np.tile(np.asarray(vec, np.float32), (len(keep), 1))

    def _csv_labels(self) -> dict[str, list[float]]:
        if getattr(self, "_csv_cache", None) is None:
            if not self.labels_csv or not Path(self.labels_csv).is_file():
                raise FileNotFoundError(f"labels_csv {self.labels_csv!r} not found")
            table = {}
            with open(self.labels_csv, newline="") as f:
                for row in csv.DictReader(f):
                    if "labels" in row:
                        names = {s.strip().lower() for s in (row["labels"] or "").split(";") if s.strip()}
                        table[row["record"]] = [float(n.lower() in names) for n in self.label_names]
                    else:
                        table[row["record"]] = [float(row.get(n) or 0) for n in self.label_names]
            self._csv_cache = table
        return self._csv_cache

    def _build_cache(self, recs: list[str], cache: Path) -> None:
        parts: dict[str, list[np.ndarray]] = {"ecg": [], "ppg": [], "labels": []}
        window_records: list[str] = []
        window_starts: list[int] = []
        scr = Screening()
        for rec in recs:
            try:
                r = self.process_record(rec)
                if r["n"] == 0:
                    raise SignalDataError(f"record {rec}: all {r['reasons']['total']} windows were rejected "
                                          f"({dict(r['reasons'])})")
            except SignalDataError as e:
                if self.on_bad_record == "raise":
                    raise
                scr.records["skipped"] += 1
                scr.skipped_records[rec] = str(e)
                _logger.warning("skipping %s", e)
                continue
            scr.records["used"] += 1
            if r.get("flipped_ecg"):
                scr.records["flipped_ecg"] += 1
            scr.windows.update(r["reasons"])
            for m in parts:
                if m in r:
                    parts[m].append(r[m])
            window_records += [rec] * r["n"]
            window_starts += [int(v) for v in r["starts"]]
        if getattr(self, "_unpaired", None):
            scr.records["unpaired"] = len(self._unpaired)
            scr.skipped_records.update({r: "no record of the other modality overlaps it" for r in self._unpaired})
        if not window_records:
            raise SignalDataError(f"no usable windows under {self.root}: {scr.to_dict()}")
        tmp = cache.with_name(cache.name + f".tmp{os.getpid()}")
        tmp.mkdir(parents=True, exist_ok=True)
        files = {}
        for m, arrs in parts.items():
            if arrs:
                np.save(tmp / f"{m}.npy", np.concatenate(arrs))
                files[m] = _digest(tmp / f"{m}.npy")  # checked on every load (cache_problem)
        (tmp / "meta.json").write_text(json.dumps(
            {"window_records": window_records, "window_starts": window_starts, "screening": scr.to_dict(),
             "config": self._config(), "files": files}, default=str))
        try:
            tmp.rename(cache)
        except OSError:  # another process wrote it first
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)

    # -- splits ------------------------------------------------------------------------------------------------------
    def _split(self, meta: dict[str, Any]) -> dict[str, np.ndarray]:
        recs = np.asarray(meta["window_records"])
        names = ("train", "val", "test")
        if self.split_by == "time" and not self.splits and self.window_hop_s is not None:
            return self._split_time_spans(recs, np.asarray(meta["window_starts"]))
        if self.split_by == "time" and not self.splits:
            out = {n: [] for n in names}
            for r in dict.fromkeys(recs):
                idx = np.flatnonzero(recs == r)
                cut = np.cumsum([int(round(f * len(idx))) for f in self.split_fractions])
                out["train"] += list(idx[: cut[0]])
                out["val"] += list(idx[cut[0]: cut[1]])
                out["test"] += list(idx[cut[1]:])
            return {n: np.asarray(v, dtype=np.int64) for n, v in out.items()}
        if self.split_by == "record":
            subjects = groups = recs
        else:
            subjects = np.asarray([subject_of(r, self.layout, self.subject_regex) for r in recs])
            table = self._subject_table()
            groups = np.asarray([table.get(s, s) for s in subjects]) if table else subjects
            self.unmapped_subjects = len(set(subjects) - set(table)) if table else 0
            if self.unmapped_subjects:
                _logger.warning("%d subjects are not in subject_table %s; each is its own group",
                                self.unmapped_subjects, self.subject_table)
        if self.splits:  # a list may name records, layout subjects (e.g. MC-MED CSNs) or table groups (MRNs)
            return {n: np.flatnonzero(np.isin(recs, self.splits.get(n, [])) | np.isin(subjects, self.splits.get(n, []))
                                      | np.isin(groups, self.splits.get(n, []))) for n in names}
        uniq = sorted(set(groups))
        perm = np.random.default_rng(self.split_seed).permutation(len(uniq))
        n_tr = max(1, int(round(self.split_fractions[0] * len(uniq))))
        n_va = int(round(self.split_fractions[1] * len(uniq)))
        assign = {}
        for rank, j in enumerate(perm):
            assign[uniq[j]] = "train" if rank < n_tr else ("val" if rank < n_tr + n_va else "test")
        return {n: np.flatnonzero(np.asarray([assign[g] == n for g in groups])) for n in names}

    def _split_time_spans(self, recs: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
        """``split_by='time'`` with overlapping windows: the fractions cut each record's span [0, last start + W) at
        sample positions; a window joins the split whose span holds it wholly (a window across a cut is dropped);
        val/test keep non-overlapping windows only (greedy from the first)."""
        win = self.seq_len
        out: dict[str, list[int]] = {"train": [], "val": [], "test": []}
        for r in dict.fromkeys(recs):
            idx = np.flatnonzero(recs == r)
            idx = idx[np.argsort(starts[idx], kind="stable")]
            total = int(starts[idx].max()) + win
            cuts = [0, *(int(round(c * total)) for c in np.cumsum(self.split_fractions)[:2]), total]
            for k, name in enumerate(("train", "val", "test")):
                lo, hi, last = cuts[k], cuts[k + 1], None
                for i in idx:
                    s = int(starts[i])
                    if s < lo or s + win > hi:
                        continue
                    if name != "train" and last is not None and s < last + win:
                        continue
                    out[name].append(int(i))
                    last = s
        return {n: np.asarray(v, dtype=np.int64) for n, v in out.items()}

    def window_spans(self, split: str) -> list[tuple[str, int, int]]:
        """``(record, first sample, end sample)`` at ``fs`` of every window of ``split`` (after :meth:`setup`)."""
        if self.cache_path is None:
            self.setup()
        if self.window_starts is None:  # a cache written before starts were stored: non-overlapping windows
            raise RuntimeError("this window cache holds no window starts; rebuild it (delete it)")
        return [(self.window_records[i], int(self.window_starts[i]), int(self.window_starts[i]) + self.seq_len)
                for i in self.split_indices[split]]

    def split_subjects(self, split: str) -> set[str]:
        """Subjects (layout rule) whose windows are in ``split``."""
        return {subject_of(self.window_records[i], self.layout, self.subject_regex) for i in self.split_indices[split]}

    def split_groups(self, split: str) -> set[str]:
        """Split groups (``subject_table`` ids, e.g. MC-MED patients; else the subjects) whose windows are in
        ``split``."""
        table = self._subject_table()
        return {table.get(s, s) for s in self.split_subjects(split)}

    def _subject_table(self) -> dict[str, str]:
        """``subject_table`` as {layout subject id: group id} (empty when unset)."""
        if not self.subject_table:
            return {}
        if getattr(self, "_subject_map", None) is None:
            path = Path(self.subject_table)
            if not path.is_file():
                raise FileNotFoundError(f"subject_table {path} not found (expected a CSV with columns "
                                        f"{list(self.subject_table_columns)}, e.g. MC-MED's visits.csv)")
            key, grp = self.subject_table_columns
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or key not in reader.fieldnames or grp not in reader.fieldnames:
                    raise ValueError(f"subject_table {path} lacks the columns {key!r} and {grp!r} "
                                     f"(it has {reader.fieldnames}); set subject_table_columns")
                self._subject_map = {str(row[key]).strip(): str(row[grp]).strip() for row in reader if row[key]}
        return self._subject_map

    # -- loaders -----------------------------------------------------------------------------------------------------
    def dataset(self, split: str) -> WindowDataset:
        if self.cache_path is None:
            self.setup()
        return WindowDataset(str(self.cache_path), self.split_indices[split], self.paired, bool(self.label_source))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle and len(ds) > 0,
                          num_workers=self.num_workers, drop_last=False, persistent_workers=self.num_workers > 0)

