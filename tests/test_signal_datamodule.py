"""WFDBPairedSignalDataModule on the real bundled PhysioNet records, layouts, cache and every bad-input case."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import signal as ds
from datamodules.signal import BUNDLED_ROOT, SignalDataError, WFDBPairedSignalDataModule
from datamodules.synthetic import paired_signal as _synthetic
from datamodules.synthetic import write_wfdb_record as _write


def _copy(dst: Path, rec: str, new: str | None = None) -> None:
    """Copy a bundled record, renaming it (header first line and file names) when ``new`` is given."""
    new = new or rec
    dst.mkdir(parents=True, exist_ok=True)
    hea = (BUNDLED_ROOT / f"{rec}.hea").read_text().replace(rec, new)
    (dst / f"{new}.hea").write_text(hea)
    for ext in (".dat", ".mat", ".atr"):
        if (BUNDLED_ROOT / f"{rec}{ext}").is_file():
            shutil.copy(BUNDLED_ROOT / f"{rec}{ext}", dst / f"{new}{ext}")


# the synthetic sin^15 "ECG" below spikes both ways (no polarity) and is no ECG to NeuroKit's SQI: tests that use it
# (or that read many records and are not about these stages) turn the polarity check and the SQI gate off
NO_QC = {"ecg_polarity": None, "ecg_sqi": None}


def test_a103l_real_windows(tmp_path):
    dm = WFDBPairedSignalDataModule(cache_dir=str(tmp_path), window_s=10, split_by="time")
    assert (dm.seq_len, dm.fs, dm.num_leads) == (1280, 128.0, 1)  # readable before setup
    sig, fs, names, comments = ds.read_channels(BUNDLED_ROOT, "a103l", {"ecg": ds.ECG_ALIASES, "ppg": ds.PPG_ALIASES})
    assert fs == 250 and names == ["II", "V", "PLETH"] and "False alarm" in comments
    dm.setup()
    assert dm.screening.windows["total"] == 33  # 330 s / 10 s
    assert dm.screening.windows["kept"] + sum(v for k, v in dm.screening.windows.items() if k.startswith("rej")) == 33
    tr = dm.dataset("train")
    item = tr[0]
    assert item["ecg"].shape == (1, 1280) and item["ppg"].shape == (1, 1280) and item["ecg"].dtype == torch.float32
    assert abs(float(item["ppg"].mean())) < 1e-4 and abs(float(item["ppg"].std(unbiased=False)) - 1) < 1e-3
    sizes = {k: len(v) for k, v in dm.split_indices.items()}
    assert sum(sizes.values()) == dm.screening.windows["kept"] and sizes["test"] > 0
    assert not set(dm.split_indices["train"]) & set(dm.split_indices["test"])
    # ECG is II (not V): the cached ECG equals the pipeline applied to channel II
    ecg = ds.butter_filter(ds.resample(sig["ecg"], 250, 128), 128, 0.5, None, 5)[:1280]
    ecg = (ecg - ecg.mean()) / ecg.std()
    np.testing.assert_allclose(dm.dataset("train")[0]["ecg"][0].numpy(), ecg, atol=1e-4)
    b = next(iter(dm.train_dataloader()))
    assert b["ecg"].shape[1:] == (1, 1280)


def test_short_windows_screening_counts(tmp_path):
    dm = WFDBPairedSignalDataModule(cache_dir=str(tmp_path), window_s=2, split_by="time")
    dm.setup()
    w = dm.screening.windows
    assert w["total"] == 165 and w["kept"] < 165  # a103l has flat PPG/ECG stretches, counted by reason
    assert w["kept"] + w.get("rejected_flat_ecg", 0) + w.get("rejected_flat_ppg", 0) + w.get("rejected_nan", 0) == 165


def test_cache_is_memory_mapped_and_skips_wfdb(tmp_path, monkeypatch):
    dm = WFDBPairedSignalDataModule(cache_dir=str(tmp_path), window_s=10)
    dm.setup()
    first = dm.dataset("train")[3]["ecg"]
    import wfdb

    def boom(*a, **k):
        raise AssertionError("WFDB read on a cached run")

    monkeypatch.setattr(wfdb, "rdrecord", boom)
    dm2 = WFDBPairedSignalDataModule(cache_dir=str(tmp_path), window_s=10)
    dm2.setup()
    d = dm2.dataset("train")
    assert torch.equal(d[3]["ecg"], first)
    assert isinstance(d._open()["ecg"], np.memmap)


def test_subject_split_disjoint(tmp_path):
    root = tmp_path / "cinc"
    for i in range(10):
        _copy(root, "a103l", f"s{i:02d}_a103l")
        _copy(root, "a103l", f"s{i:02d}_b103l")  # two records of one subject
    dm = WFDBPairedSignalDataModule(str(root), layout="cinc2015", subject_regex=r"(s\d\d)_", window_s=10,
                                    cache_dir=str(tmp_path / "c"), expected_fs=[250], **NO_QC)
    dm.setup()
    subs = {k: dm.split_subjects(k) for k in ("train", "val", "test")}
    assert len(subs["train"]) == 8 and len(subs["val"]) == 1 and len(subs["test"]) == 1
    assert not (subs["train"] & subs["val"]) and not (subs["train"] & subs["test"]) and not (subs["val"] & subs["test"])
    recs = {k: {dm.window_records[i] for i in v} for k, v in dm.split_indices.items()}
    assert not (recs["train"] & recs["test"])
    dm_rec = WFDBPairedSignalDataModule(str(root), split_by="record", window_s=10, cache_dir=str(tmp_path / "c"),
                                        splits={"train": ["s00_a103l"], "test": ["s01_b103l"]}, **NO_QC)
    dm_rec.setup()
    assert {dm_rec.window_records[i] for i in dm_rec.split_indices["test"]} == {"s01_b103l"}


def test_mimic_layouts_multisegment_and_segments(tmp_path):
    root = tmp_path / "mimic"
    pdir = root / "p00" / "p000001"
    _write(pdir, "3100001_0001", _synthetic(125 * 30))
    _write(pdir, "3100001_0002", _synthetic(125 * 20))
    (pdir / "3100001_layout.hea").write_text("3100001_layout 2 125 0\n~ 0 200/mV 16 0 0 0 0 II\n"
                                             "~ 0 200/NU 16 0 0 0 0 PLETH\n")
    (pdir / "p000001-2100-01-01-00-00.hea").write_text(
        "p000001-2100-01-01-00-00/4 2 125 7500\n3100001_layout 0\n3100001_0001 3750\n~ 1250\n3100001_0002 2500\n")
    (pdir / "p000001-2100-01-01-00-00n.hea").write_text("p000001-2100-01-01-00-00n 1 1 10\nx.dat 16 1 0 0 0 0 HR\n")
    (root / "RECORDS").write_text("p00/\n")
    (root / "p00").joinpath("RECORDS").write_text("p000001/\n")
    (pdir / "RECORDS").write_text("p000001-2100-01-01-00-00\n")
    assert ds.list_records(root, None, "mimic3") == ["p00/p000001/p000001-2100-01-01-00-00"]
    assert ds.list_records(root, "**/*.hea", "mimic3") == ["p00/p000001/p000001-2100-01-01-00-00"]
    dm = WFDBPairedSignalDataModule(str(root), layout="mimic3", window_s=10, cache_dir=str(tmp_path / "c"), **NO_QC)
    dm.setup()
    # 60 s: 3 windows in segment 1, the one overlapping the 10-s gap rejected, 2 more after it
    assert dm.screening.windows["total"] == 6 and dm.screening.windows["rejected_nan"] == 1
    assert dm.split_subjects("train") == {"p000001"}
    # plain MIMIC-III segment record (real, 8-bit format 80, 125 Hz, ECG only): subject = 7-digit id
    seg = WFDBPairedSignalDataModule(records=["3000003_0003"], paired=False, layout="mimic3", window_s=2,
                                     cache_dir=str(tmp_path / "c"), expected_fs=[125])
    seg.setup()
    assert seg.screening.windows["total"] == 4 and seg.split_subjects("train") == {"3000003"}


def test_labels_header_csv_and_annotations(tmp_path):
    dm = WFDBPairedSignalDataModule(cache_dir=str(tmp_path), label_source="header",
                                    label_names=["Asystole", "True alarm", "False alarm"], split_by="time")
    assert dm.num_classes == 3
    dm.setup()
    assert dm.dataset("train")[0]["labels"].tolist() == [1.0, 0.0, 1.0]
    csv = tmp_path / "labels.csv"
    csv.write_text("record,labels\na103l,AF;Brady\n")
    dm = WFDBPairedSignalDataModule(cache_dir=str(tmp_path), label_source="csv", label_names=["AF", "VT", "Brady"],
                                    labels_csv=str(csv), split_by="time")
    dm.setup()
    assert dm.dataset("train")[0]["labels"].tolist() == [1.0, 0.0, 1.0]
    ann = ds.read_beat_annotations(BUNDLED_ROOT / "100")
    assert ann["fs"] == 360 and ann["symbol"].count("V") == 1 and ann["symbol"].count("A") == 33
    dm = WFDBPairedSignalDataModule(records=["100"], paired=False, label_source="annotations",
                                    label_names=["N", "A", "V"], window_s=10, cache_dir=str(tmp_path), split_by="time",
                                    ecg_sqi=None)
    dm.setup()
    lab = np.stack([dm.dataset(s)[i]["labels"].numpy() for s in ("train", "val", "test")
                    for i in range(len(dm.dataset(s)))])
    assert lab.shape == (180, 3) and lab[:, 0].all() and lab[:, 2].sum() == 1 and 10 <= lab[:, 1].sum() <= 33


def test_missing_root_prints_tree(tmp_path):
    dm = WFDBPairedSignalDataModule(str(tmp_path / "nope"), layout="mcmed")
    with pytest.raises(FileNotFoundError) as e:
        dm.prepare_data()
    msg = str(e.value)
    assert "waveforms/<XXX>/<CSN>" in msg and "physionet.org/content/mc-med" in msg and "credentialed" in msg
    for layout in ("bidmc", "cinc2015", "mimic3", "wfdb"):
        with pytest.raises(FileNotFoundError, match="Where to get it: "):
            WFDBPairedSignalDataModule(str(tmp_path / "nope"), layout=layout).prepare_data()


# ------------------------------------------------------------------------------------------------ bad input
def test_truncated_dat_names_record(tmp_path):
    root = tmp_path / "r"
    _copy(root, "100")
    data = (root / "100.dat").read_bytes()
    (root / "100.dat").write_bytes(data[:1000])
    dm = WFDBPairedSignalDataModule(str(root), records=["100"], paired=False, cache_dir=str(tmp_path))
    with pytest.raises(SignalDataError, match=r"record 100: signal file 100.dat is truncated"):
        dm.setup()
    skip = WFDBPairedSignalDataModule(str(root), records=["100", "a103l"], cache_dir=str(tmp_path),
                                      on_bad_record="skip", paired=False)
    _copy(root, "a103l")
    skip.setup()
    assert skip.screening.records == {"skipped": 1, "used": 1} and "truncated" in skip.screening.skipped_records["100"]


def test_missing_channel_and_missing_file(tmp_path):
    with pytest.raises(SignalDataError, match=r"record 100: no PPG channel .*\['MLII', 'V5'\]"):
        WFDBPairedSignalDataModule(records=["100"], cache_dir=str(tmp_path)).setup()
    root = tmp_path / "r"
    _copy(root, "a103l")
    (root / "a103l.mat").unlink()
    with pytest.raises(SignalDataError, match=r"record a103l: signal file .*a103l.mat named in its header is missing"):
        WFDBPairedSignalDataModule(str(root), records=["a103l"], cache_dir=str(tmp_path)).setup()


def test_all_nan_windows(tmp_path):
    root = tmp_path / "r"
    sig = _synthetic(125 * 20)
    sig[:, 1] = np.nan  # PPG entirely missing
    _write(root, "nanrec", sig)
    with pytest.raises(SignalDataError, match="record nanrec: the PPG channel is entirely NaN"):
        WFDBPairedSignalDataModule(str(root), cache_dir=str(tmp_path), **NO_QC).setup()
    sig = _synthetic(125 * 20)
    sig[: 125 * 10, 0] = np.nan  # first 10 s of ECG missing: one window rejected, one kept
    root = tmp_path / "r2"  # the synthetic writer never overwrites a record
    _write(root, "nanrec", sig)
    dm = WFDBPairedSignalDataModule(str(root), cache_dir=str(tmp_path), window_s=10, **NO_QC)
    dm.setup()
    assert dm.screening.windows["rejected_nan"] == 1 and dm.screening.windows["kept"] == 1
    flat = _synthetic(125 * 20)
    flat[:, 1] = 0.5  # flat PPG: every window rejected → clear error naming the record, or skipped and counted
    root = tmp_path / "r3"
    _write(root, "nanrec", flat)
    with pytest.raises(SignalDataError, match=r"record nanrec: all 2 windows were rejected .*rejected_flat_ppg"):
        WFDBPairedSignalDataModule(str(root), cache_dir=str(tmp_path), window_s=10, **NO_QC).setup()


def test_wrong_sampling_rate(tmp_path):
    with pytest.raises(SignalDataError, match=r"record a103l: sampling rate 250.0 Hz, expected \[125.0\]"):
        WFDBPairedSignalDataModule(layout="bidmc", records=["a103l"], expected_fs=[125],
                                   cache_dir=str(tmp_path)).setup()
    assert ds.LAYOUTS["bidmc"].expected_fs == (125.0,)


def test_mcmed_separate_records_paired_by_start_time(tmp_path):
    import datetime as dt

    import wfdb

    root = tmp_path / "mcmed"

    def write(folder: Path, name: str, sig: np.ndarray, chan: str, fs: float, start: dt.time) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        wfdb.wrsamp(name, fs=fs, units=["mV"], sig_name=[chan], p_signal=sig[:, None], fmt=["16"],
                    base_date=dt.date(2020, 1, 1), base_time=start, write_dir=str(folder))

    visit = root / "waveforms" / "123" / "100123"
    t_e, t_p = np.arange(250 * 60) / 250, np.arange(125 * 60) / 125
    ecg_src = np.sin(2 * np.pi * 1.2 * t_e) ** 15 + 0.02 * np.random.default_rng(0).standard_normal(len(t_e))
    write(visit / "II", "100123_1", ecg_src, "II", 250, dt.time(10, 0, 0))
    write(visit / "Pleth", "100123_1", np.sin(2 * np.pi * 1.2 * (t_p + 5)) + 1, "Pleth", 125, dt.time(10, 0, 5))
    lone = root / "waveforms" / "456" / "100456"
    write(lone / "Pleth", "100456_1", np.sin(2 * np.pi * t_p) + 1, "Pleth", 125, dt.time(9, 0, 0))
    dm = WFDBPairedSignalDataModule(str(root), layout="mcmed", window_s=10, cache_dir=str(tmp_path / "c"), **NO_QC)
    dm.setup()
    assert set(dm.window_records) == {"waveforms/123/100123/II/100123_1+waveforms/123/100123/Pleth/100123_1"}
    assert dm.screening.windows["total"] == 5  # 55 s of overlap
    assert dm.screening.records["unpaired"] == 1 and dm.split_subjects("train") == {"100123"}
    # both are cropped to the overlap: the PPG from its own start, the ECG from its t = 5 s
    item = dm.dataset("train")[0]
    ref = ds.butter_filter(ds.resample(np.sin(2 * np.pi * 1.2 * (t_p + 5)) + 1, 125, 128), 128, 0.5, 8, 3)[:1280]
    np.testing.assert_allclose(item["ppg"][0].numpy(), (ref - ref.mean()) / ref.std(), atol=1e-4)
    ecg = wfdb.rdrecord(str(visit / "II" / "100123_1")).p_signal[1250:, 0]  # as stored (16-bit)
    ref = ds.butter_filter(ds.resample(ecg, 250, 128), 128, 0.5, None, 5)[:1280]
    np.testing.assert_allclose(item["ecg"][0].numpy(), (ref - ref.mean()) / ref.std(), atol=1e-4)


def _reference_flat_ratios(windows: np.ndarray, window_size: int, threshold: float) -> np.ndarray:
    """The reference ``detect_flat_in_windows`` (data_process_to_npz/step1.py), row by row."""
    diff = np.abs(np.diff(windows, axis=1))
    rate = np.apply_along_axis(lambda x: np.convolve(x, np.ones(window_size - 1), mode="valid") / (window_size - 1),
                               axis=1, arr=diff)
    return np.mean(rate < threshold, axis=1)


def test_flat_line_default_is_the_reference_mean_abs_diff(tmp_path):
    fs = 125
    rng = np.random.default_rng(3)
    sig = _synthetic(fs * 20)
    # window 2 (10-20 s): a 5-s PPG stretch that drifts by 2e-4 per sample — flat for the reference (mean |diff| <
    # 1e-3) but not for a peak-to-peak test (0.0025 > 1e-3 over 0.1 s)
    sig[fs * 12: fs * 17, 1] = 1.0 + 2e-4 * np.arange(fs * 5)
    # the measure itself equals the reference on source-rate windows with a flat segment
    for w in (sig[: fs * 10, 1], sig[fs * 10:, 1], sig[fs * 10:, 0], np.r_[np.zeros(300), rng.normal(size=950)]):
        assert ds.flat_fraction_diff(w, fs) == pytest.approx(_reference_flat_ratios(w[None], int(0.1 * fs), 1e-3)[0])
    assert ds.flat_fraction_diff(sig[fs * 10:, 1], fs) > 0.25 > ds.flat_fraction(
        ds.resample(sig[fs * 10:, 1], fs, 128), 128)
    _write(tmp_path / "r", "drift", sig)
    dm = WFDBPairedSignalDataModule(str(tmp_path / "r"), cache_dir=str(tmp_path / "c"), window_s=10, **NO_QC)
    dm.setup()
    assert dict(dm.screening.windows) == {"kept": 1, "rejected_flat_ppg": 1, "total": 2}
    old = WFDBPairedSignalDataModule(str(tmp_path / "r"), cache_dir=str(tmp_path / "c"), window_s=10, flat_method="ptp",
                                     **NO_QC)
    old.setup()
    assert old.screening.windows["kept"] == 2
    with pytest.raises(ValueError, match="flat_method"):
        WFDBPairedSignalDataModule(flat_method="std")


def test_subject_table_groups_visits_of_one_patient(tmp_path):
    root = tmp_path / "r"
    for v in range(10):  # 10 visits (the layout's subject), 2 per patient
        _write(root, f"v{v:02d}_rec", _synthetic(125 * 10))
    table = tmp_path / "visits.csv"
    table.write_text("MRN,CSN,Age\n" + "".join(f"P{v // 2},v{v:02d},50\n" for v in range(10)))
    kw = dict(subject_regex=r"(v\d\d)_", window_s=10, cache_dir=str(tmp_path / "c"), split_seed=1, **NO_QC)
    dm = WFDBPairedSignalDataModule(str(root), subject_table=str(table), **kw)
    dm.setup()
    groups = {k: dm.split_groups(k) for k in ("train", "val", "test")}
    assert set().union(*groups.values()) == {f"P{i}" for i in range(5)} and dm.unmapped_subjects == 0
    assert not (groups["train"] & groups["val"]) and not (groups["train"] & groups["test"])
    for k in ("train", "val", "test"):  # both visits of a patient are in the same split
        assert {f"v{2 * int(p[1:]) + j:02d}" for p in groups[k] for j in (0, 1)} == dm.split_subjects(k)
    # explicit split lists may name visits (CSNs) or patients (MRNs)
    dm = WFDBPairedSignalDataModule(str(root), subject_table=str(table), **kw,
                                    splits={"train": ["P0", "P1", "P2"], "val": ["v06"], "test": ["P4"]})
    dm.setup()
    assert dm.split_subjects("val") == {"v06"} and dm.split_subjects("test") == {"v08", "v09"}
    bad = tmp_path / "bad.csv"
    bad.write_text("patient,visit\n")
    with pytest.raises(ValueError, match="lacks the columns 'CSN' and 'MRN'"):
        WFDBPairedSignalDataModule(str(root), subject_table=str(bad), **kw).setup()


# ------------------------------------------------------------------------------------------------ reference QC stages
def _sim_pair(seconds: int = 40, hr: int = 60, fs: int = 125) -> tuple[np.ndarray, np.ndarray]:
    """A NeuroKit-simulated (upright) ECG and PPG of one heart rate."""
    nk = pytest.importorskip("neurokit2")
    ecg = nk.ecg_simulate(duration=seconds, sampling_rate=fs, heart_rate=hr, random_state=0, method="simple",
                          noise=0.01)
    return ecg, nk.ppg_simulate(duration=seconds, sampling_rate=fs, heart_rate=hr, random_state=0)


def _cached(dm: WFDBPairedSignalDataModule, mod: str, rec: str) -> np.ndarray:
    return np.load(dm.cache_path / f"{mod}.npy")[np.asarray(dm.window_records) == rec][:, 0]


def test_ecg_polarity_flips_an_inverted_record(tmp_path):
    ecg, ppg = _sim_pair()
    root = tmp_path / "r"
    _write(root, "up", np.stack([ecg, ppg], 1))
    _write(root, "down", np.stack([-ecg, ppg], 1))  # the same record with its ECG lead inverted
    clean = ds.ecg_clean_for_polarity(ds.resample(ecg, 125, 128), 128)
    assert not ds.ecg_inverted(clean[:1280], 128) and ds.ecg_inverted(-clean[:1280], 128)
    kw = {"root": str(root), "window_s": 10, "split_by": "record", "ecg_sqi": None}
    dm = WFDBPairedSignalDataModule(cache_dir=str(tmp_path / "c"), **kw)  # default: ecg_polarity='record'
    dm.setup()
    assert dm.screening.records["flipped_ecg"] == 1 and dm.screening.windows["flipped_ecg"] == 4  # 'down' only
    np.testing.assert_allclose(_cached(dm, "ecg", "down"), _cached(dm, "ecg", "up"), atol=1e-3)
    off = WFDBPairedSignalDataModule(cache_dir=str(tmp_path / "c"), ecg_polarity=None, **kw)
    off.setup()
    assert "flipped_ecg" not in off.screening.windows and "flipped_ecg" not in off.screening.records
    np.testing.assert_allclose(_cached(off, "ecg", "down"), -_cached(off, "ecg", "up"), atol=1e-3)
    np.testing.assert_allclose(_cached(off, "ecg", "up"), _cached(dm, "ecg", "up"), atol=1e-6)  # 'up' untouched


def test_ecg_sqi_rejects_noise_and_matches_neurokit(tmp_path):
    nk = pytest.importorskip("neurokit2")
    ecg, ppg = _sim_pair()
    ecg[125 * 20:] = 0.5 * np.random.default_rng(0).standard_normal(125 * 20)  # last 20 s: noise, not ECG
    _write(tmp_path / "r", "half", np.stack([ecg, ppg], 1))
    dm = WFDBPairedSignalDataModule(str(tmp_path / "r"), window_s=10, split_by="time", cache_dir=str(tmp_path / "c"))
    dm.setup()  # default ecg_sqi='zhao2018'
    w = dm.screening.windows
    assert (w["rejected_sqi_ecg"], w["kept"], w["total"]) == (2, 2, 4)
    # the same decision as NeuroKit called directly on the pipeline's filtered ECG windows
    sig, *_ = ds.read_channels(tmp_path / "r", "half", {"ecg": ds.ECG_ALIASES})
    y = ds.butter_filter(ds.resample(sig["ecg"], 125, 128), 128, 0.5, None, 5)
    wins = [y[i * 1280:(i + 1) * 1280] for i in range(4)]
    direct = [nk.ecg_quality(x, sampling_rate=128, method="zhao2018", approach="simple") for x in wins]
    assert [q != "Unacceptable" for q in direct] == [ds.ecg_sqi_ok(x, 128) for x in wins] == [True, True, False, False]
    kept = _cached(dm, "ecg", "half")
    np.testing.assert_allclose(kept[0], (wins[0] - wins[0].mean()) / wins[0].std(), atol=1e-4)
    q = np.asarray(nk.ecg_quality(wins[0], sampling_rate=128, method="averageQRS"))
    assert ds.ecg_sqi_ok(wins[0], 128, "averageQRS") == ((q >= 0.5).mean() >= 0.75)


def test_savgol_smoothing_equals_scipy():
    from scipy.signal import savgol_filter

    x = np.random.default_rng(0).standard_normal(1280)
    for window in (7, 11):
        np.testing.assert_array_equal(ds.savgol_smooth(x, window, 2), savgol_filter(x, window, 2))
    np.testing.assert_array_equal(ds.savgol_smooth(x[:6], 11, 2), savgol_filter(x[:6], 5, 2))  # shortened window
    np.testing.assert_array_equal(ds.savgol_smooth(x[:3], 7, 2), x[:3])  # too short: unchanged


def test_step2_smoothing_of_the_cached_windows(tmp_path):
    from scipy.signal import savgol_filter

    ecg, ppg = _sim_pair()
    _write(tmp_path / "r", "sim", np.stack([ecg, ppg], 1))
    kw = dict(root=str(tmp_path / "r"), window_s=10, split_by="time", cache_dir=str(tmp_path / "c"), **NO_QC)
    step1 = WFDBPairedSignalDataModule(**kw)
    step1.setup()
    e1, p1 = _cached(step1, "ecg", "sim"), _cached(step1, "ppg", "sim")
    smooth = WFDBPairedSignalDataModule(step2_smooth=True, **kw)
    smooth.setup()  # smoothed z-scored windows, PPG window 7, ECG window 11, order 2
    np.testing.assert_allclose(_cached(smooth, "ppg", "sim"), savgol_filter(p1, 7, 2, axis=1), atol=1e-5)
    np.testing.assert_allclose(_cached(smooth, "ecg", "sim"), savgol_filter(e1, 11, 2, axis=1), atol=1e-5)
    assert smooth.screening.windows["kept"] == step1.screening.windows["kept"] == 4


def test_cache_key_follows_the_qc_options(tmp_path):
    base = WFDBPairedSignalDataModule(cache_dir=str(tmp_path))
    recs = ["a103l"]
    keys = {base._cache_key(recs)}
    for opt in ({"ecg_polarity": None}, {"ecg_polarity": "window"}, {"ecg_polarity_threshold": 0.6},
                {"ecg_sqi": None}, {"ecg_sqi": "averageQRS"}, {"ecg_sqi_approach": "fuzzy"},
                {"ecg_sqi_threshold": 0.4}, {"ecg_sqi_fraction": 0.5}, {"step2_smooth": True},
                {"savgol_ppg_window": 9}, {"savgol_ecg_window": 13}, {"savgol_order": 3}):
        keys.add(WFDBPairedSignalDataModule(cache_dir=str(tmp_path), **opt)._cache_key(recs))
    assert len(keys) == 13
    assert WFDBPairedSignalDataModule(cache_dir=str(tmp_path))._cache_key(recs) == base._cache_key(recs)
    for bad in ({"ecg_polarity": "yes"}, {"ecg_sqi": "orphanidou"}):
        with pytest.raises(ValueError):
            WFDBPairedSignalDataModule(**bad)
