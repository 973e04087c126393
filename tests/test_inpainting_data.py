"""Inpainting datamodules on real photographs (scikit-image) in the CelebA-HQ / Places2 layouts; masks; bad input."""
import math

import numpy as np
import pytest
import torch
from PIL import Image

from datamodules.inpainting import (
    CelebAHQInpaintingDataModule,
    DatasetLayoutError,
    InpaintingDataError,
    MaskGenerator,
    Places2InpaintingDataModule,
    free_form_mask,
    load_mask_image,
    read_square_list,
    square_mask,
)
from datamodules.synthetic import write_skimage_photos


@pytest.fixture(scope="module")
def celebahq_root(tmp_path_factory):
    return write_skimage_photos(tmp_path_factory.mktemp("celebahq"), "celebahq", image_size=64, crops_per_photo=2)


def _reference_ff_mask(size, rng, max_len, max_width, max_angle, max_num, max_vertices, min_len, min_width,
                       min_vertices):
    """The official ff_mask's pixel loops, drawing from the same generator in the same order."""
    mask = np.ones((size, size))
    for _ in range(int(rng.integers(3, max_num, endpoint=True))):
        sx, sy = (int(v) for v in rng.integers(0, size, size=2, endpoint=True))
        n_ver = int(rng.integers(min_vertices, max_vertices, endpoint=True))
        width = int(rng.integers(min_width, max_width, endpoint=True))
        for _ in range(n_ver):
            angle = rng.uniform(-max_angle, max_angle)
            length = int(rng.integers(min_len, max_len, endpoint=True))
            ex = min(size - 1, max(0, int(sx + length * math.sin(angle))))
            ey = min(size - 1, max(0, int(sy + length * math.cos(angle))))
            lowx, highx = (sx, ex) if ex >= sx else (ex, sx)
            lowy, highy = (sy, ey) if ey >= sy else (ey, sy)
            if abs(sy - ey) + abs(sx - ex) != 0:
                wlx = max(0, lowx - int(abs(width * math.cos(angle))))
                whx = min(size - 1, highx + 1 + int(abs(width * math.cos(angle))))
                wly = max(0, lowy - int(abs(width * math.sin(angle))))
                why = min(size - 1, highy + 1 + int(abs(width * math.sin(angle))))
                for x in range(wlx, whx):
                    for y in range(wly, why):
                        d = (abs((ey - sy) * x - (ex - sx) * y - ey * sx + sy * ex)
                             / math.sqrt((sy - ey) ** 2 + (sx - ex) ** 2))
                        if d <= width:
                            mask[x, y] = 0
            wlx, whx = max(0, lowx - width), min(size - 1, highx + width + 1)
            wly, why = max(0, lowy - width), min(size - 1, highy + width + 1)
            for x2 in range(wlx, whx):
                for y2 in range(wly, why):
                    d1, d2 = (sx - x2) ** 2 + (sy - y2) ** 2, (ex - x2) ** 2 + (ey - y2) ** 2
                    if np.sqrt(d1) <= width or np.sqrt(d2) <= width:
                        mask[x2, y2] = 0
            sx, sy = ex, ey
    return 1.0 - mask  # 1 = hole


def test_free_form_mask_matches_the_official_loops():
    for seed in range(3):
        ours = free_form_mask(48, np.random.default_rng(seed), 12, 8, math.pi, 5, 6, 5, 3, 2, scale=1.0)
        ref = _reference_ff_mask(48, np.random.default_rng(seed), 12, 8, math.pi, 5, 6, 5, 3, 2)
        np.testing.assert_array_equal(ours, ref)
        assert 0 < ours.mean() < 1
    m = free_form_mask(256, np.random.default_rng(0))  # the paper's settings
    assert m.shape == (256, 256) and set(np.unique(m)) <= {0.0, 1.0}


def test_square_masks_scale_with_the_image():
    c = square_mask(256)
    assert c.sum() == 128 * 128 and c[128, 128] == 1 and c[0, 0] == 0
    assert square_mask(64).sum() == 32 * 32
    r = square_mask(64, center=False, rng=np.random.default_rng(3))
    assert r.sum() == 32 * 32
    ys, xs = np.nonzero(r)
    assert ys.max() - ys.min() == 31 and xs.max() - xs.min() == 31


def test_mask_images_folder_and_errors(tmp_path):
    d = tmp_path / "masks"
    d.mkdir()
    m = np.full((32, 32), 255, np.uint8)
    m[8:16, 8:24] = 0  # black hole (PEPSI's test masks: 1 = valid)
    Image.fromarray(m).save(d / "mask_00000.png")
    gen = MaskGenerator("folder", 32, d)
    hole = gen(0, np.random.default_rng(0))
    assert hole.sum() == 8 * 16 and hole[10, 10] == 1
    assert load_mask_image(d / "mask_00000.png", 32, holes_are="white").sum() == 32 * 32 - 8 * 16
    Image.fromarray(m).resize((40, 40)).save(tmp_path / "big.png")
    with pytest.raises(InpaintingDataError, match=r"big\.png.*40x40.*32x32"):
        load_mask_image(tmp_path / "big.png", 32)
    soft = m.copy()
    soft[0, 0] = 128
    Image.fromarray(soft).save(tmp_path / "soft.png")
    with pytest.raises(InpaintingDataError, match=r"soft\.png is not binary"):
        load_mask_image(tmp_path / "soft.png", 32)
    assert load_mask_image(tmp_path / "soft.png", 32, threshold=0.5)[0, 0] == 0  # 128 >= 127.5: known
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(InpaintingDataError, match=r"broken\.png"):
        load_mask_image(tmp_path / "broken.png", 32)
    with pytest.raises(DatasetLayoutError, match="mask_dir"):
        MaskGenerator("folder", 32, tmp_path / "nope")


def test_celebahq_layout_batches_and_official_lists(celebahq_root):
    # the list files hold the official absolute Windows paths; they are re-rooted
    assert (celebahq_root / "train_fh256.txt").read_text().startswith("D:/dataset/inpainting/train_fh256/")
    dm = CelebAHQInpaintingDataModule(str(celebahq_root), image_size=64, batch_size=4, num_workers=0)
    dm.prepare_data()
    dm.setup("fit")
    assert len(dm.datasets["train"]) == 22 and len(dm.datasets["val"]) == 6
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (4, 3, 64, 64) and b["mask"].shape == (4, 1, 64, 64)
    assert b["image"].min() >= -1 and b["image"].max() <= 1 and b["image"].dtype == torch.float32
    assert set(torch.unique(b["mask"]).tolist()) <= {0.0, 1.0}
    # evaluation masks are fixed per index; training masks are drawn afresh
    v1, v2 = dm.datasets["val"][3], dm.datasets["val"][3]
    assert torch.equal(v1["mask"], v2["mask"]) and torch.equal(v1["image"], v2["image"])
    assert v1["mask"].sum() == 32 * 32  # square_random: 128x128 at 256 -> 32x32 at 64
    # the photo itself, resized: the first training crop is the astronaut's centre
    img = np.asarray(Image.open(dm.datasets["train"].paths[0]).convert("RGB")).astype(np.float32)
    x = dm.datasets["val"].transform(image=img.astype(np.uint8))["image"]
    torch.testing.assert_close(x, torch.from_numpy(img).permute(2, 0, 1) / 127.5 - 1, atol=1e-5, rtol=0)


def test_places2_layout(tmp_path):
    root = write_skimage_photos(tmp_path / "places", "places2", image_size=32, crops_per_photo=1)
    assert (root / "places365_train_standard.txt").read_text().startswith("/a/astronaut/00000001.jpg 0")
    dm = Places2InpaintingDataModule(str(root), image_size=32, batch_size=2, num_workers=0, eval_mask="square_center")
    dm.setup("test")
    b = next(iter(dm.test_dataloader()))
    assert b["image"].shape == (2, 3, 32, 32) and b["path"][0].endswith("Places365_val_00000001.jpg")
    assert b["mask"][0, 0, 16, 16] == 1 and b["mask"][0, 0, 0, 0] == 0


def test_missing_root_prints_the_expected_tree(tmp_path):
    with pytest.raises(DatasetLayoutError) as e:
        CelebAHQInpaintingDataModule(str(tmp_path / "celebahq")).prepare_data()
    msg = str(e.value)
    assert "train_fh256/img00000000.png" in msg and "progressive_growing_of_gans" in msg
    with pytest.raises(DatasetLayoutError) as e:
        Places2InpaintingDataModule(str(tmp_path / "places")).prepare_data()
    assert "val_256/Places365_val_00000001.jpg" in str(e.value) and "places2.csail.mit.edu" in str(e.value)
    (tmp_path / "places").mkdir()
    (tmp_path / "places" / "places365_val.txt").write_text("Places365_val_00000001.jpg 0\n")
    with pytest.raises(DatasetLayoutError, match="Places365_val_00000001.jpg"):
        Places2InpaintingDataModule(str(tmp_path / "places")).split_paths("val")


def test_unreadable_image_names_the_file_or_is_skipped(tmp_path):
    root = write_skimage_photos(tmp_path / "c", "celebahq", image_size=32, crops_per_photo=1)
    bad = root / "test_fh256" / "img00000012.png"
    bad.write_bytes(b"\x89PNG\r\n truncated")
    dm = CelebAHQInpaintingDataModule(str(root), image_size=32, batch_size=2, num_workers=0, verify="off")
    dm.setup("test")  # verify="off": the file is met at read time (setup's up-front check: test_reliability.py)
    i = dm.datasets["test"].paths.index(bad)
    with pytest.raises(InpaintingDataError, match=r"cannot read image .*img00000012\.png"):
        dm.datasets["test"][i]
    dm = CelebAHQInpaintingDataModule(str(root), image_size=32, batch_size=2, num_workers=0, on_bad_image="skip",
                                      verify="off")
    dm.setup("test")
    item = dm.datasets["test"][i]
    assert item["path"] != str(bad) and dm.datasets["test"].skipped == [str(bad)]


def test_square_list_reads_official_offsets_paired_by_split_order(celebahq_root, tmp_path):
    """eval_mask 'square_list': fixed S/2 squares at the list's offsets (x = row, y = column, as the official
    main.py crops [:, x:x+128, y:y+128]); line i goes with image i of the split in the split list's order; the
    official '<mask png> x y' lines are read as is; a longer list is fine (the official one has 15,000 lines)."""
    offsets = [(0, 32), (32, 0), (5, 17), (31, 2), (12, 12), (1, 30), (7, 7)]  # 7 lines for 6 test images
    official = tmp_path / "test_mask256.txt"
    official.write_text("".join(f"D:/dataset/inpainting/test_mask256/mask_{i:05d}.png {x} {y}\n"
                                for i, (x, y) in enumerate(offsets)))
    assert read_square_list(official, 64) == offsets
    # the split in a non-sorted list order (the official test_fh256.txt is not sorted)
    lines = (celebahq_root / "test_fh256.txt").read_text().split()
    (celebahq_root / "test_reversed.txt").write_text("\n".join(lines[::-1]) + "\n")
    dm = CelebAHQInpaintingDataModule(str(celebahq_root), image_size=64, batch_size=3, num_workers=0,
                                      eval_mask="square_list", mask_list=str(official), test_list="test_reversed.txt",
                                      limit_val_images=2)
    dm.setup("test")
    ds = dm.datasets["test"]
    assert [p.name for p in ds.paths] == [ln.rsplit("/", 1)[-1] for ln in lines[::-1]]
    for i in range(len(ds)):
        item = ds[i]
        x, y = offsets[i]
        expected = np.zeros((64, 64), np.float32)
        expected[x:x + 32, y:y + 32] = 1
        np.testing.assert_array_equal(item["mask"][0].numpy(), expected)
    b = next(iter(dm.test_dataloader()))
    assert b["mask"].shape == (3, 1, 64, 64) and b["mask"][:, 0].sum(dim=(1, 2)).tolist() == [32 * 32] * 3
    dm.setup("validate")  # validation: its first limit_val_images images, the first lines
    assert len(dm.datasets["val"]) == 2 and dm.datasets["val"][1]["mask"][0, 32, 0] == 1
    # plain 'x y' lines (and comments), a path relative to the root
    (celebahq_root / "squares.txt").write_text("# x y\n" + "".join(f"{x} {y}\n" for x, y in offsets[:6]))
    dm = CelebAHQInpaintingDataModule(str(celebahq_root), image_size=64, num_workers=0, eval_mask="square_list",
                                      mask_list="squares.txt")
    dm.setup("test")
    assert dm.datasets["test"][3]["mask"][0, 31, 2] == 1 and dm.datasets["test"][3]["mask"][0, 30, 2] == 0


def test_square_list_errors_name_the_file_and_line(celebahq_root, tmp_path):
    bad = tmp_path / "bad.txt"
    for text, pattern in [("1 2\n3\n", r"bad\.txt, line 2: expected 'x y'"),
                          ("1 2\n\n4 five\n", r"bad\.txt, line 3: the offsets must be integers"),
                          ("1 2 3 4\n", r"bad\.txt, line 1: expected"),
                          ("0 0\n0 33\n", r"bad\.txt, line 2: offset x=0 y=33 puts the 32x32 hole outside the 64x64")]:
        bad.write_text(text)
        with pytest.raises(InpaintingDataError, match=pattern):
            read_square_list(bad, 64)
    bad.write_text("# nothing\n")
    with pytest.raises(DatasetLayoutError, match=r"bad\.txt holds no 'x y' lines"):
        read_square_list(bad, 64)
    with pytest.raises(DatasetLayoutError, match=r"nope\.txt does not exist"):
        read_square_list(tmp_path / "nope.txt", 64)
    with pytest.raises(DatasetLayoutError, match="needs mask_list"):
        MaskGenerator("square_list", 64)
    short = tmp_path / "short.txt"
    short.write_text("0 0\n" * 5)  # 5 offsets for 6 test images
    dm = CelebAHQInpaintingDataModule(str(celebahq_root), image_size=64, num_workers=0, eval_mask="square_list",
                                      mask_list=str(short))
    with pytest.raises(InpaintingDataError, match=r"short\.txt has 5 'x y' lines but the test split has 6 images"):
        dm.setup("test")
    with pytest.raises(ValueError, match="train_mask 'square_list' is not supported"):
        CelebAHQInpaintingDataModule(str(celebahq_root), train_mask="square_list", mask_list=str(short))
