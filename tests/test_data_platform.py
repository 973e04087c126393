"""Shared data mechanisms: the layout error of every datamodule, the synthetic writers' folder ownership, the cache
policy, preprocessing bound to the weights (resolve_data_config), and our random erasing against timm's."""
from __future__ import annotations

import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from datamodules._layout import DatasetLayoutError, require_dataset
from datamodules.synthetic import (
    MARKER,
    SyntheticDataError,
    ensure_demo_reid,
    write_dsine,
    write_nyuv2_labeled,
    write_pair_list,
    write_reid_dataset,
    write_scannet_scene,
    write_skimage_photos,
    write_wfdb_record,
)


# ------------------------------------------------------------------------------------------------ layout errors
def _reid(root):
    from datamodules.reid import ReIDDataModule

    return ReIDDataModule(str(root), "market1501").prepare_data()


def _signal(root):
    from datamodules.signal import WFDBPairedSignalDataModule

    return WFDBPairedSignalDataModule(str(root), layout="bidmc").prepare_data()


def _inpainting(root):
    from datamodules.inpainting import CelebAHQInpaintingDataModule

    return CelebAHQInpaintingDataModule(str(root)).prepare_data()


def _geometry(root):
    from datamodules.geometry import NYUv2DataModule

    return NYUv2DataModule(str(root)).prepare_data()


# (datamodule, a line of its tree, a piece of its source)
LAYOUT_CASES = {
    "reid": (_reid, "bounding_box_train/", "zheng-lab"),
    "signal": (_signal, "bidmc01.hea", "physionet.org/content/bidmc"),
    "inpainting": (_inpainting, "train_fh256/img00000000.png", "progressive_growing_of_gans"),
    "geometry": (_geometry, "nyu_depth_v2_labeled.mat", "cs.nyu.edu"),
}


@pytest.mark.parametrize("state", ["missing", "empty"])
@pytest.mark.parametrize("family", sorted(LAYOUT_CASES))
def test_every_datamodule_prints_tree_and_source(tmp_path, family, state):
    run, tree_line, source = LAYOUT_CASES[family]
    root = tmp_path / "data"
    if state == "empty":
        root.mkdir()
    with pytest.raises(DatasetLayoutError) as e:
        run(root)
    msg = str(e.value)
    assert isinstance(e.value, FileNotFoundError)  # callers catching FileNotFoundError keep working
    assert "Expected layout:" in msg and "Where to get it: " in msg, msg
    assert tree_line in msg and source in msg and str(root) in msg, msg


def test_require_dataset(tmp_path):
    kw = dict(name="toy", tree="<root>/a/x.png\n<root>/list.txt", source="https://example.org (licence: CC-BY)")
    with pytest.raises(DatasetLayoutError, match=r"does not exist \(it should hold a, list.txt\)"):
        require_dataset(tmp_path / "nope", required=("a", "list.txt"), **kw)
    (tmp_path / "d").mkdir()
    with pytest.raises(DatasetLayoutError, match="is empty") as e:
        require_dataset(tmp_path / "d", **kw)
    assert f"{tmp_path / 'd'}/a/x.png" in str(e.value) and "CC-BY" in str(e.value)  # <root> filled in
    (tmp_path / "d" / "a").mkdir()
    with pytest.raises(DatasetLayoutError, match="lacks list.txt, scene"):
        require_dataset(tmp_path / "d", required=("a", "list.txt", "scene*"), **kw)
    (tmp_path / "d" / "list.txt").write_text("")
    (tmp_path / "d" / "scene0").mkdir()
    assert require_dataset(tmp_path / "d", required=("a", "list.txt", "scene*"), **kw) == tmp_path / "d"


# ------------------------------------------------------------------------------------------------ synthetic writers
def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


WRITERS = {
    "reid": lambda root: write_reid_dataset(root, "market1501", num_train_ids=2, num_test_ids=2,
                                            train_images_per_id=2, gallery_images_per_id=2, num_junk=1,
                                            num_distractors=1, size=(16, 8)),
    "inpainting": lambda root: write_skimage_photos(root, "celebahq", image_size=16, crops_per_photo=1),
    "nyuv2": lambda root: write_nyuv2_labeled(root, n=2, h=16, w=16, n_test=1),
    "scannet": lambda root: write_scannet_scene(root, n_frames=2, h=16, w=16),
    "dsine": lambda root: write_dsine(root, n=1, h=16, w=16),
    "pairs": lambda root: write_pair_list(root, n_pairs=1, h=16, w=16),
    "wfdb": lambda root: write_wfdb_record(root, "rec", np.zeros((250, 2))),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_writers_label_their_folder_and_never_touch_user_files(tmp_path, writer):
    write = WRITERS[writer]
    out = write(tmp_path / "new")  # an absent folder: written and labelled
    assert (tmp_path / "new" / MARKER).is_file() and "synthetic" in (tmp_path / "new" / MARKER).read_text().lower()
    if Path(out).is_dir():
        assert (Path(out) / MARKER).is_file()
    # a user's folder: refused, nothing written, nothing changed (issue 15: data loss)
    user = tmp_path / "user"
    (user / "sub").mkdir(parents=True)
    for name in ("train_fh256.txt", "sub/img.png", "market1501/query/0001_c1s1_000001_00.jpg", "rec.hea"):
        (user / name).parent.mkdir(parents=True, exist_ok=True)
        (user / name).write_bytes(f"user data {name}".encode())
    before = _snapshot(user)
    with pytest.raises(SyntheticDataError, match="refusing to write synthetic data into"):
        write(user)
    assert _snapshot(user) == before
    # our own folder written again: never overwrites a file
    with pytest.raises(SyntheticDataError, match="refusing to"):
        write(tmp_path / "new")


def test_synthetic_if_missing_never_writes_beside_real_data(tmp_path):
    from datamodules.reid import ReIDDataModule

    root = tmp_path / "data"
    (root / "market-1501" / "query").mkdir(parents=True)  # a real, differently spelt (or partial) dataset
    (root / "market-1501" / "query" / "0001_c1s1_000001_00.jpg").write_bytes(b"real")
    before = _snapshot(root)
    with pytest.raises(SyntheticDataError):
        ReIDDataModule(str(root), "market1501", synthetic_if_missing=True).num_classes
    assert _snapshot(root) == before
    partial = tmp_path / "partial"  # the real folder name, partly present
    (partial / "market1501" / "query").mkdir(parents=True)
    (partial / "market1501" / "query" / "0001_c1s1_000001_00.jpg").write_bytes(b"real")
    with pytest.raises(SyntheticDataError):
        ReIDDataModule(str(partial), "market1501", synthetic_if_missing=True).num_classes
    assert _snapshot(partial) == {"market1501/query/0001_c1s1_000001_00.jpg": b"real"}
    d = ensure_demo_reid(tmp_path / "demo")  # an absent folder: the demo set, labelled, found the next time
    assert (d / MARKER).is_file() and ensure_demo_reid(tmp_path / "demo") == d


def test_inpainting_demo_refuses_a_users_folder(tmp_path):
    from datamodules.inpainting import SkimagePhotosInpaintingDataModule

    user = tmp_path / "faces"
    (user / "train_fh256").mkdir(parents=True)
    (user / "train_fh256.txt").write_text("mine\n")
    with pytest.raises(SyntheticDataError):
        SkimagePhotosInpaintingDataModule(str(user), image_size=16, crops_per_photo=1).split_paths("train")
    assert (user / "train_fh256.txt").read_text() == "mine\n" and not (user / MARKER).exists()


# ------------------------------------------------------------------------------------------------ cache policy
def test_cache_dir_policy(tmp_path, monkeypatch):
    monkeypatch.delenv("SHAREZOO_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert zoo.cache_dir() == tmp_path / "home" / ".cache" / "sharezoo"
    monkeypatch.setenv("SHAREZOO_CACHE", str(tmp_path / "env"))  # read at call time
    assert zoo.cache_dir() == tmp_path / "env"
    assert zoo.cache_dir("derived/signal") == tmp_path / "env" / "derived" / "signal"
    assert zoo.cache_dir("derived/signal", tmp_path / "explicit") == tmp_path / "explicit" / "derived" / "signal"
    assert not (tmp_path / "env").exists()  # nothing created


def test_datamodule_caches_follow_the_policy(tmp_path, monkeypatch):
    from datamodules.inpainting import SkimagePhotosInpaintingDataModule
    from datamodules.signal import WFDBPairedSignalDataModule
    from zoo._pretrained import cache_path

    monkeypatch.setenv("SHAREZOO_CACHE", str(tmp_path / "c"))
    assert WFDBPairedSignalDataModule().cache_root == tmp_path / "c" / "derived" / "signal"
    assert WFDBPairedSignalDataModule(cache_dir=str(tmp_path / "w")).cache_root == tmp_path / "w"
    assert SkimagePhotosInpaintingDataModule(image_size=32).root == (
        tmp_path / "c" / "derived" / "inpainting" / "skimage_photos_32")
    cfg = zoo.PretrainedCfg(sha256="0" * 64, url="file:///x.safetensors")
    assert cache_path("a_b.t", cfg) == tmp_path / "c" / "a_b.t" / "model.safetensors"


# ------------------------------------------------------------------------------------------------ data config
def test_resolve_data_config_and_reid_transform(monkeypatch):
    from datamodules.reid import ReIDDataModule
    from zoo._data_config import _default_data_configs
    from zoo._registry import _pretrained_cfgs

    assert zoo.resolve_data_config("fusionreid_tiny") == {}  # nothing known: the datamodule keeps its defaults
    cfg = zoo.PretrainedCfg(sha256="0" * 64, url="file:///x.safetensors",
                            preprocessing={"input_size": (3, 64, 32), "mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5),
                                           "interpolation": "bilinear"})
    monkeypatch.setitem(_pretrained_cfgs, "fusionreid_tiny", {"toy": cfg})
    r = zoo.resolve_data_config("fusionreid_tiny")
    assert r["image_size"] == (64, 32) and r["mean"] == (0.1, 0.2, 0.3) and r["interpolation"] == "bilinear"
    assert zoo.resolve_data_config("fusionreid_tiny.toy", mean=(0, 0, 0))["mean"] == (0, 0, 0)  # overrides win
    model = torch.nn.Linear(1, 1)
    model.pretrained_cfg = cfg.to_dict()
    assert zoo.resolve_data_config(model)["image_size"] == (64, 32)

    def first_pixel(dm):
        dm.setup("test")
        return dm.eval_set.transform(image=np.full((128, 64, 3), 255, np.uint8))["image"]

    dm = ReIDDataModule("unused", preprocessing_model="fusionreid_tiny")
    assert dm.image_size == (64, 32) and dm.mean == (0.1, 0.2, 0.3)
    dm._splits = {"train": [], "query": [], "gallery": []}
    x = first_pixel(dm)
    assert x.shape == (3, 64, 32)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([1.8, 1.6, 1.4]))  # (1 - mean) / std
    # the same datamodule, the cfg's preprocessing changed: the transform follows
    monkeypatch.setitem(cfg.preprocessing, "input_size", (3, 32, 16))
    dm2 = ReIDDataModule("unused", preprocessing_model="fusionreid_tiny")
    dm2._splits = dm._splits
    assert first_pixel(dm2).shape == (3, 32, 16)
    explicit = ReIDDataModule("unused", preprocessing_model="fusionreid_tiny", image_size=(16, 8), mean=(0.5, 0.5, 0.5))
    assert explicit.image_size == (16, 8) and explicit.mean == (0.5, 0.5, 0.5)  # explicit arguments win
    plain = ReIDDataModule("unused")
    assert (plain.image_size, plain.mean, plain.std) == ((256, 128), (0.5,) * 3, (0.5,) * 3)  # as before
    monkeypatch.setitem(_default_data_configs, "pepsi_tiny", {"input_size": (3, 48, 48)})
    assert zoo.resolve_data_config("pepsi_tiny")["image_size"] == (48, 48)


# ------------------------------------------------------------------------------------------------ random erasing
def test_random_erasing_draws_the_same_boxes_as_timm():
    """Under one python RNG state, ReIDRandomErasing picks exactly timm's RandomErasing(mode='pixel') box; the fill
    comes from another generator (ours: the pipeline's seeded numpy generator; timm: the global torch RNG), so the
    values differ while both are N(0, 1) (why timm's is not used: ReIDRandomErasing's docstring)."""
    from timm.data.random_erasing import RandomErasing

    from datamodules.reid import ReIDRandomErasing

    H, W = 64, 32
    ours = ReIDRandomErasing(p=1.0)
    theirs = RandomErasing(probability=1.0, mode="pixel", device="cpu")
    assert (theirs.min_area, theirs.max_area) == (ours.min_area, ours.max_area)
    assert theirs.log_aspect_ratio == pytest.approx(ours.log_aspect)
    for seed in range(200):
        ours.py_random = random.Random(seed)
        ours.py_random.random()  # timm's probability draw
        box = ours.get_params_dependent_on_data({"shape": (H, W, 3)}, {})["box"]
        random.seed(seed)
        img = theirs(torch.zeros(3, H, W))
        hit = img.abs().sum(0) > 0
        if box is None:
            assert not hit.any()
            continue
        ys, xs = torch.nonzero(hit, as_tuple=True)
        top, left, h, w = box
        assert (int(ys.min()), int(xs.min()), int(ys.max()) - int(ys.min()) + 1, int(xs.max()) - int(xs.min()) + 1
                ) == (top, left, h, w)
    ours.set_random_seed(0)
    fill = np.concatenate([ours(image=np.zeros((H, W, 3), np.float32))["image"].ravel() for _ in range(50)])
    fill = fill[fill != 0]
    assert abs(fill.mean()) < 0.05 and abs(fill.std() - 1) < 0.05 and not math.isnan(fill.std())


def test_no_datamodule_imports_tasks():
    """Layering: zoo <- datamodules <- tasks; a datamodule never imports tasks (not even lazily)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "datamodules"
    bad = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            bad += [f"{path.relative_to(root.parent)}:{node.lineno} {n}" for n in names if n.split(".")[0] == "tasks"]
    assert not bad, bad
