"""NEO results recipe on real digits (tasks/results/neo.py): the split rule is pinned (disjoint, stratified, no
identical-pixel image in two splits), the baselines choose C on val only, and the runner runs end to end in --tiny."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from tasks.results import neo as R

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs/neo/results_digits.yaml"
PINNED = "700fd3840bb3"  # sha1 of the index lists of configs/neo/results_digits.yaml's split


def _split_of_config() -> dict[str, np.ndarray]:
    sp = yaml.safe_load(CONFIG.read_text())["split"]
    return R.digits_split(sp["seed"], sp["fractions"], sp["duplicates"])


def test_config_split_rule():
    cfg = yaml.safe_load(CONFIG.read_text())
    assert cfg["split"] == {"seed": 0, "fractions": [0.6, 0.2, 0.2], "duplicates": "drop"}
    assert "stratified" in cfg["split_rule"] and "60/20/20" in cfg["split_rule"]


def test_split_pinned_disjoint_stratified_no_shared_pixels():
    from sklearn.datasets import load_digits

    split = _split_of_config()
    d = load_digits()
    tr, va, te = split["train"], split["val"], split["test"]
    assert (len(tr), len(va), len(te)) == (1078, 359, 360)
    assert not (set(tr) & set(te)) and not (set(tr) & set(va)) and not (set(va) & set(te))
    assert len(set(tr) | set(va) | set(te)) == 1797  # load_digits() has no identical images: nothing dropped
    flat = d.images.reshape(len(d.target), -1)
    seen = {flat[i].tobytes() for i in tr}
    assert not any(flat[i].tobytes() in seen for i in np.concatenate([va, te]))  # no identical pixels across splits
    for c in range(10):  # stratified: each class's share of test within one image of 20 %
        n_c = int((d.target == c).sum())
        assert abs(int((d.target[te] == c).sum()) - 0.2 * n_c) <= 1
    digest = hashlib.sha1(json.dumps({k: v.tolist() for k, v in split.items()}).encode()).hexdigest()[:12]
    assert digest == PINNED, f"the split changed (digest {digest}): results in docs/results.md no longer match"



def test_duplicates_dropped_before_the_split(monkeypatch):
    """A copy of an image never lands in another split: only the first of identical images is kept."""
    import sklearn.datasets
    from sklearn.datasets import load_digits

    real = load_digits()

    class Fake:
        images = np.concatenate([real.images[:100], real.images[:20]])  # 20 exact copies
        target = np.concatenate([real.target[:100], real.target[:20]])

    monkeypatch.setattr(sklearn.datasets, "load_digits", lambda: Fake)
    split = R.digits_split(0, (0.6, 0.2, 0.2))
    kept = np.concatenate(list(split.values()))
    assert len(kept) == 100 and kept.max() < 100
    with pytest.raises(ValueError, match="drop"):
        R.digits_split(0, (0.6, 0.2, 0.2), duplicates="keep")


def test_baselines_choose_c_on_val_only():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 8)) * 3

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.integers(0, 3, n)
        return centres[y] + rng.normal(size=(n, 8)), y

    train, val = draw(90), draw(30)
    test = (val[0][:5] * 0 + 100, np.zeros(5, int))  # a test set that would pick different C if it were looked at
    rows, preds = R.baselines(train, val, test, [0.001, 1.0], [0.001, 1.0])
    assert [r["method"].split(":")[1].split("(")[0].strip() for r in rows][:2] == [
        "scikit-learn LogisticRegression", "scikit-learn SVC"]
    for r in rows[:2]:
        best = max(r["sweep"], key=lambda s: s["val"])
        assert r["C"] == best["C"] and r["val"] == best["val"]
    assert set(preds) == {"LogisticRegression", "SVC (RBF)", "majority"}
    assert len(set(preds["majority"].tolist())) == 1


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("neo_results")
    mp = pytest.MonkeyPatch()
    mp.setenv("SHAREZOO_CACHE", str(tmp / "cache"))
    try:
        res = R.run(["--config", str(CONFIG), "--tiny", "--out", str(tmp / "out")])
    finally:
        mp.undo()
    return res, tmp / "out"


def test_runner_tiny_end_to_end(tiny_run):
    res, out = tiny_run
    assert (out / "results.md").is_file() and (out / "results.json").is_file()
    saved = json.loads((out / "results.json").read_text())
    assert [r["kind"] for r in saved["rows"]] == ["ours", "baseline", "baseline", "baseline"]
    for r in saved["rows"]:
        assert 0.0 <= r["test"] <= 1.0
    assert saved["counts"]["test"] == 20 and saved["counts"]["dropped_duplicates"] == 0
    assert "NEO" in (out / "results.md").read_text() and "LogisticRegression" in (out / "results.md").read_text()
    assert saved["neo"]["val_curve"] and saved["neo"]["val_curve"][-1][0] == 2  # validated at each step
    pytest.importorskip("matplotlib")
    assert (out / "test_answers.png").is_file()


def test_runner_tiny_baselines_see_the_written_pixels(tiny_run):
    """The baselines read the PNGs NEO reads; train and test share no identical image."""
    res, _ = tiny_run
    root = Path(res["data_root"])
    (xtr, ytr), (xte, _) = R.pixels(root, "train"), R.pixels(root, "test")
    assert xtr.shape == (40, 32 * 32) and xte.shape == (20, 32 * 32) and 0 <= xtr.min() and xtr.max() <= 1
    assert not {x.tobytes() for x in xtr} & {x.tobytes() for x in xte}
    from sklearn.datasets import load_digits

    d = load_digits()
    assert ytr.tolist() == d.target[res["split_indices"]["train"]].tolist()
