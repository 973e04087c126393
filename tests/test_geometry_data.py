"""Synthetic renderer ground truth, and the geometry datamodules on fixtures written in the real formats."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from datamodules.geometry import (
    BadSampleError,
    DatasetLayoutError,
    DSINENormalDataModule,
    NYUv2DataModule,
    PairListDataModule,
    ScanNetPairDataModule,
    SyntheticGeometryDataModule,
)
from datamodules.synthetic.geometry import (
    nyu_mask_holes,
    nyu_raw_holes,
    render_views,
    write_dsine,
    write_nyuv2_labeled,
    write_pair_list,
    write_scannet_scene,
)
from zoo.layers.geometry import normals_from_pointmap


@pytest.fixture(scope="module")
def views():
    return render_views(11, 2, 40, 48)


def test_renderer_pointmap_depth_intrinsics_consistent(views):
    for v in views:
        K, p = v["K"], v["pts3d"]
        assert v["valid"].all() and (v["depth"] > 0).all()
        assert np.allclose(p[..., 2], v["depth"])
        u = p[..., 0] / p[..., 2] * K[0, 0] + K[0, 2]
        vv = p[..., 1] / p[..., 2] * K[1, 1] + K[1, 2]
        assert np.allclose(u, np.arange(48)[None] + 0.5, atol=1e-3) and np.allclose(vv, np.arange(40)[:, None] + 0.5,
                                                                                       atol=1e-3)
        world = p @ v["c2w"][:3, :3].T + v["c2w"][:3, 3]
        assert np.allclose(world, v["pts3d_world"], atol=1e-4)
        assert np.allclose(np.linalg.norm(v["normal"], axis=-1), 1, atol=1e-5)
        assert ((v["normal"] * p).sum(-1) < 0).all()  # normals face the camera
        assert v["image"].min() >= 0 and v["image"].max() <= 1


def test_renderer_normals_perpendicular_to_surfaces(views):
    v = views[0]
    p, n = torch.tensor(v["pts3d"]), torch.tensor(v["normal"])
    est, ok = normals_from_pointmap(p[None])
    # pixels whose 4 neighbours carry the same GT normal lie inside one planar face
    same = torch.zeros_like(ok[0])
    c = n[1:-1, 1:-1]
    same[1:-1, 1:-1] = torch.stack([(n[1:-1, 2:] - c).abs().amax(-1), (n[1:-1, :-2] - c).abs().amax(-1),
                                    (n[2:, 1:-1] - c).abs().amax(-1), (n[:-2, 1:-1] - c).abs().amax(-1)]).amax(0) < 1e-5
    m = ok[0] & same
    assert m.float().mean() > 0.4
    cos = (est[0] * n).sum(-1)[m]
    assert (cos > 0.9999).float().mean() > 0.97
    # tangent vectors (neighbour differences inside a face) are perpendicular to the normal
    dx = torch.zeros_like(p)
    dx[:, 1:-1] = p[:, 2:] - p[:, :-2]
    assert ((dx * n).sum(-1)[m] / dx.norm(dim=-1)[m]).abs().max() < 1e-3


def test_correspondences_reproject(views):
    v1, v2 = views
    w1 = v1["pts3d_world"].reshape(-1, 3)
    c2w2 = v2["c2w"]
    pc = (w1 - c2w2[:3, 3]) @ c2w2[:3, :3]
    uv = pc[:, :2] / pc[:, 2:] * np.diag(v2["K"])[:2] + v2["K"][:2, 2]
    u, vv = np.floor(uv[:, 0]).astype(int), np.floor(uv[:, 1]).astype(int)
    inb = (pc[:, 2] > 0) & (u >= 0) & (u < 48) & (vv >= 0) & (vv < 40)
    vis = inb.copy()
    vis[inb] = np.abs(v2["depth"][vv[inb], u[inb]] - pc[inb, 2]) < 0.02 * pc[inb, 2]
    assert vis.mean() > 0.3
    # the matched view-2 pixel sees (almost) the same world point: within one pixel footprint
    d = np.linalg.norm(v2["pts3d_world"][vv[vis], u[vis]] - w1[vis], axis=-1)
    assert np.median(d / pc[vis, 2]) < 2.0 / v2["K"][0, 0]


def test_synthetic_datamodule_batch():
    dm = SyntheticGeometryDataModule(num_train=4, num_val=2, num_test=2, size=32, batch_size=2)
    dm.setup()
    b = next(iter(dm.train_dataloader()))
    assert b["img1"].shape == (2, 3, 32, 32) and b["pts1"].shape == (2, 32, 32, 3) and b["pose2to1"].shape == (2, 4, 4)
    assert b["valid1"].dtype == torch.bool and b["img1"].min() >= -1 and b["img1"].max() <= 1
    with pytest.raises(ValueError, match="multiple of 16"):
        SyntheticGeometryDataModule(size=40)


def test_nyuv2_mat_fixture(tmp_path):
    root = write_nyuv2_labeled(tmp_path / "nyu", n=5, h=48, w=64, n_test=3)
    dm = NYUv2DataModule(str(root), size=64)
    dm.setup("test")
    assert len(dm.test_set) == 3
    s = dm.test_set[0]
    # border cut 9/9/12/12 at 480x640 scaled to 48x64: 1 px top/bottom, 1 px left/right
    assert s["depth"].shape == (46, 62) and s["img"].shape[0] == 3 and s["img"].shape[1] % 16 == 0
    ref = render_views(0, 1, 48, 64)[0]["depth"][1:-1, 1:-1]
    assert np.allclose(s["depth"], ref, atol=1e-5)  # the h5py axis order round-trips
    assert s["index"] == 1


def test_nyuv2_invalid_depth_masked_by_raw_depth_and_official_mask(tmp_path):
    """Only pixels with a raw Kinect reading (rawDepths > 0) are evaluated, not the in-painted ones; an official
    masks.mat beside the .mat is applied too; range (1e-3, 20) as the released eval_depth.py."""
    root = write_nyuv2_labeled(tmp_path / "nyu", n=3, h=48, w=64, n_test=3)
    ds = NYUv2DataModule(str(root), size=None)
    ds.setup()
    for k in range(3):
        s = ds.test_set[k]
        expect = ~nyu_raw_holes(k, 48, 64)[1:-1, 1:-1]
        assert np.array_equal(s["valid"], expect), k
        ref = render_views(k, 1, 48, 64)[0]["depth"][1:-1, 1:-1]
        assert np.allclose(s["depth"], ref, atol=1e-5)  # the in-painted depth is what is returned
    assert ds.test_set.max_depth == 20.0
    off = NYUv2DataModule(str(root), size=None, raw_mask=False)
    off.setup()
    assert off.test_set[0]["valid"].all()
    root2 = write_nyuv2_labeled(tmp_path / "nyu_masks", n=2, h=48, w=64, n_test=2, masks=True)
    dm = NYUv2DataModule(str(root2), size=None)
    dm.setup()
    s = dm.test_set[1]
    expect = ~(nyu_raw_holes(1, 48, 64) | nyu_mask_holes(48, 64))[1:-1, 1:-1]
    assert np.array_equal(s["valid"], expect) and not s["valid"][:, :3].any()


def test_nyuv2_missing_and_bad_files(tmp_path):
    with pytest.raises(DatasetLayoutError, match="nyu_depth_v2_labeled.mat.*\n.*Expected layout"):
        NYUv2DataModule(str(tmp_path / "nope")).prepare_data()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "nyu_depth_v2_labeled.mat").write_bytes(b"not hdf5")
    (tmp_path / "bad" / "splits.mat").write_bytes(b"x")
    with pytest.raises(BadSampleError, match="nyu_depth_v2_labeled.mat"):
        NYUv2DataModule(str(tmp_path / "bad")).setup()


def test_nyuv2_nan_depth_is_masked_and_counted(tmp_path):
    import h5py

    root = write_nyuv2_labeled(tmp_path / "nyu", n=2, h=48, w=64, n_test=2)
    with h5py.File(root / "nyu_depth_v2_labeled.mat", "r+") as f:
        d = f["depths"][0]
        d[10:20, 10:20] = np.nan
        f["depths"][0] = d
    dm = NYUv2DataModule(str(root), size=None)
    dm.setup()
    s = dm.test_set[0]
    assert dm.test_set.n_bad_depth == 1 and np.isfinite(s["depth"]).all() and not s["valid"].all()


def test_scannet_scene_folders(tmp_path):
    write_scannet_scene(tmp_path / "scannet", "scene0000_00", n_frames=3, h=48, w=64, seed=1)
    write_scannet_scene(tmp_path / "scannet", "scene0001_00", n_frames=2, h=48, w=64, seed=2)
    np.savetxt(tmp_path / "scannet" / "scene0000_00" / "pose" / "2.txt", np.full((4, 4), -np.inf))
    dm = ScanNetPairDataModule(str(tmp_path / "scannet"), frame_gap=1, size=64, batch_size=1, num_workers=0)
    dm.setup()
    assert len(dm.train_set) == 1 and dm.train_set.n_skipped == 1 and len(dm.val_set) == 1
    s = dm.train_set[0]
    assert s["img1"].shape == (3, 48, 64) and s["pts1"].shape == (48, 64, 3)
    views = render_views(1, 3, 48, 64)
    T = np.linalg.inv(views[0]["c2w"]) @ views[1]["c2w"]
    assert np.allclose(s["pose2to1"], T, atol=1e-4)
    assert np.abs(s["depth1"] - views[0]["depth"]).max() < 1e-3  # mm quantisation
    assert (np.linalg.norm(s["normal1"], axis=-1) > 0.5).mean() > 0.5
    with pytest.raises(DatasetLayoutError, match="scene0000_00"):
        ScanNetPairDataModule(str(tmp_path / "missing")).prepare_data()


def test_dsine_normals(tmp_path):
    d = write_dsine(tmp_path / "dsine", "nyuv2", n=2, h=32, w=48)
    from PIL import Image

    bad = np.asarray(Image.open(d / "000001_normal.png")).copy()
    bad[:4, :4] = 20  # far from unit length
    Image.fromarray(bad).save(d / "000001_normal.png")
    dm = DSINENormalDataModule(str(tmp_path / "dsine"), "nyuv2", size=None)
    dm.setup()
    s0, s1 = dm.test_set[0], dm.test_set[1]
    gt = render_views(0, 1, 32, 48)[0]["normal"]
    assert np.degrees(np.arccos(np.clip((s0["normal"] * gt).sum(-1), -1, 1))).max() < 1.0  # 8-bit quantisation
    assert s0["normal_valid"].all() and not s1["normal_valid"][:4, :4].any() and dm.test_set.n_masked == 16
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(d / "000000_img.png")
    with pytest.raises(BadSampleError, match="000000_img.png"):
        dm.test_set[0]
    with pytest.raises(DatasetLayoutError, match="DSINE"):
        DSINENormalDataModule(str(tmp_path / "dsine"), "ibims").prepare_data()


def test_dsine_normal_axes_option(tmp_path):
    """A benchmark whose files store normals as (-z, y, x) of the model's frame: normal_axes='z,y,-x' maps back."""
    from PIL import Image

    d = write_dsine(tmp_path / "dsine", "ibims", n=1, h=32, w=48)
    png = np.asarray(Image.open(d / "000000_normal.png"))
    other = np.stack([255 - png[..., 2], png[..., 1], png[..., 0]], -1).astype(np.uint8)  # 255 - v encodes -n
    Image.fromarray(other).save(d / "000000_normal.png")
    gt = render_views(0, 1, 32, 48)[0]["normal"]
    err = lambda n: np.degrees(np.arccos(np.clip((n * gt).sum(-1), -1, 1))).max()  # noqa: E731
    for axes, ok in (("x,y,z", False), ("z,y,-x", True)):
        dm = DSINENormalDataModule(str(tmp_path / "dsine"), "ibims", size=None, normal_axes=axes)
        dm.setup()
        assert (err(dm.test_set[0]["normal"]) < 1.0) == ok, axes
    for bad in ("x,y", "x,x,z", "x,y,w"):
        with pytest.raises(ValueError, match="normal_axes"):
            DSINENormalDataModule(str(tmp_path / "dsine"), "ibims", normal_axes=bad)


def test_pair_list(tmp_path):
    root = write_pair_list(tmp_path / "pairs", n_pairs=2, h=32, w=48)
    dm = PairListDataModule(str(root), size=48)
    dm.setup()
    s = dm.test_set[1]
    v0, v1 = render_views(1, 2, 32, 48)
    assert np.allclose(s["pose2to1"], np.linalg.inv(v0["c2w"]) @ v1["c2w"], atol=1e-5)
    assert s["img1"].shape == (3, 32, 48) and np.allclose(s["K1"], v0["K"])
    (root / "pairs.txt").write_text("a.png b.png 0 0 1 2 3\n")
    with pytest.raises(BadSampleError, match="pairs.txt:1: expected 38 fields"):
        PairListDataModule(str(root)).setup()
