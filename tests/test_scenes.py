"""The synthetic scene set (datamodules.scenes), its writer and its exact judge (tasks.metrics.scene_judge)."""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageFilter

from datamodules.scenes import (
    ADD_ANCHORS,
    CATEGORIES,
    COLORS,
    MOVE_SHIFT,
    QA_KINDS,
    SHAPES,
    Scene,
    SceneObject,
    caption,
    parse_prompt,
    prompt_split,
    prompts,
    questions,
    relations,
    render_scene,
    sample_edit,
    sample_scene,
    scene_for_prompt,
)
from datamodules.synthetic import MARKER, SyntheticDataError
from datamodules.synthetic.scenes import write_scene_dataset
from tasks.metrics.scene_judge import SceneJudgeScore, detect_objects, judge, judge_edit, judge_spec, read_scene

SIZES = (64, (64, 96), (96, 64), 48, (56, 128), 128)


def _canvas(h: int = 64, w: int = 64) -> tuple[Image.Image, ImageDraw.ImageDraw]:
    img = Image.new("RGB", (w, h), (255, 255, 255))
    return img, ImageDraw.Draw(img)


# --- the judge against images drawn by hand (PIL, not render_scene) ---------------------------------------------

def test_judge_position_on_hand_drawn_image():
    img, d = _canvas()
    d.ellipse((4, 24, 19, 39), fill=(255, 0, 0))  # a red circle at the left
    d.rectangle((44, 26, 57, 39), fill=(0, 0, 255))  # a blue square at the right
    dets = detect_objects(img)
    assert sorted((o.shape, o.color) for o in dets) == [("circle", "red"), ("square", "blue")]
    assert judge(img, None, "position", prompt="a photo of a circle left of a square")
    assert judge(img, None, "position", prompt="a photo of a square right of a circle")
    assert not judge(img, None, "position", prompt="a photo of a circle right of a square")
    assert not judge(img, None, "position", prompt="a photo of a circle above a square")
    assert not judge(img, None, "position", prompt="a photo of a triangle left of a square")
    assert judge(img, None, "two_object", prompt="a photo of a square and a circle")
    assert judge(img, None, "color_attr", prompt="a photo of a red circle and a blue square")
    assert not judge(img, None, "color_attr", prompt="a photo of a blue circle and a red square")


def test_judge_colour_on_hand_drawn_image():
    img, d = _canvas()
    d.ellipse((20, 20, 41, 41), fill=(230, 20, 20))
    assert judge(img, None, "colors", prompt="a photo of a red circle")
    assert not judge(img, None, "colors", prompt="a photo of a blue circle")
    assert not judge(img, None, "colors", prompt="a photo of a red square")
    assert judge(img, None, "single_object", prompt="a photo of a circle")
    assert not judge(img, None, "single_object", prompt="a photo of a triangle")


def test_judge_counting_on_hand_drawn_image():
    img, d = _canvas(64, 96)
    for x, color in ((5, (0, 150, 0)), (38, (0, 150, 0)), (70, (250, 140, 0))):
        d.rectangle((x, 20, x + 15, 35), fill=color)
    d.polygon([(48, 44), (58, 60), (38, 60)], fill=(150, 40, 210))  # a purple triangle below
    assert sorted(o.shape for o in detect_objects(img)) == ["square"] * 3 + ["triangle"]
    assert judge(img, None, "counting", prompt="a photo of three squares")
    assert not judge(img, None, "counting", prompt="a photo of two squares")
    assert not judge(img, None, "counting", prompt="a photo of four squares")
    assert not judge(img, None, "counting", prompt="a photo of two triangles")


def test_judge_checks_category_of_prompt():
    img, _ = _canvas()
    with pytest.raises(ValueError, match="category"):
        judge(img, None, "counting", prompt="a photo of a circle")
    with pytest.raises(ValueError, match="not a prompt"):
        judge(img, None, "colors", prompt="a photo of a pink circle")


# --- prompts and the held-out split ----------------------------------------------------------------------------

def test_prompts_round_trip_and_partition():
    for category in CATEGORIES:
        every = set(prompts(category))
        parts = [set(prompts(category, s)) for s in ("train", "val", "test")]
        assert all(parts) and set.union(*parts) == every and sum(map(len, parts)) == len(every)
        for p in every:
            spec = parse_prompt(p)
            assert spec.category == category and prompt_split(p) in ("train", "val", "test")
            assert caption(scene_for_prompt(0, p), category) == p
    assert "a photo of an orange square" in prompts("colors")
    assert "a photo of three triangles" in prompts("counting")
    assert "a photo of a circle below a triangle" in prompts("position")


def test_sample_scene_is_deterministic_and_non_overlapping():
    for category in CATEGORIES:
        a, pa = sample_scene(5, category, split="test")
        b, pb = sample_scene(np.random.default_rng(5), category, split="test")
        assert a == b and pa == pb and prompt_split(pa) == "test"
        assert Scene.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    for seed in range(60):
        scene, p = sample_scene(seed, CATEGORIES[seed % 6])
        big = np.asarray(render_scene(scene, (120, 200))).astype(int)
        for o in scene.objects:  # rendered alone, each object's pixels are untouched by the others
            alone = np.asarray(render_scene(Scene((o,)), (120, 200))).astype(int)
            footprint = (alone != 245).any(-1)
            assert (big[footprint] == alone[footprint]).all()
        if parse_prompt(p).category == "position":
            assert relations(*scene.objects) == {parse_prompt(p).relation}


# --- the judge on rendered scenes ------------------------------------------------------------------------------

def _perturb(scene: Scene, category: str, rng: np.random.Generator) -> Scene:
    """A scene that must fail ``category``'s check for ``scene``'s caption."""
    objs = list(scene.objects)
    if category == "single_object":
        objs[0] = dataclasses.replace(objs[0], shape=next(s for s in SHAPES if s != objs[0].shape))
    elif category == "two_object":
        objs = objs[rng.integers(2):][:1]
    elif category == "counting":
        objs = objs[1:]
    elif category == "colors":
        objs[0] = dataclasses.replace(objs[0], color=next(c for c in COLORS if c != objs[0].color))
    elif category == "position":
        a, b = objs
        objs = [dataclasses.replace(a, cx=b.cx, cy=b.cy), dataclasses.replace(b, cx=a.cx, cy=a.cy)]
    else:
        a, b = objs
        objs = [dataclasses.replace(a, color=b.color), dataclasses.replace(b, color=a.color)]
    return Scene(tuple(objs))


def test_judge_rendered_true_and_perturbed_false():
    rng = np.random.default_rng(0)
    for i in range(48):
        category = CATEGORIES[i % 6]
        scene, prompt = sample_scene(rng, category)
        size = SIZES[i % len(SIZES)]
        assert judge(render_scene(scene, size), scene, category)
        assert judge(render_scene(scene, size), None, category, prompt=prompt)
        assert not judge(render_scene(_perturb(scene, category, rng), size), scene, category), (prompt, size)


def test_detection_exact_on_random_scenes():
    n = 0
    for seed in range(240):
        category = CATEGORIES[seed % 6]
        scene, _ = sample_scene(seed, category)
        size = SIZES[seed % len(SIZES)]
        h, w = (size, size) if isinstance(size, int) else size
        dets = detect_objects(render_scene(scene, size))
        assert sorted((d.shape, d.color) for d in dets) == sorted((o.shape, o.color) for o in scene.objects)
        for o in scene.objects:  # every object found at its place, within 1.5 pixels
            assert any((d.shape, d.color) == (o.shape, o.color) and abs(d.cx - o.cx) * w <= 1.5
                       and abs(d.cy - o.cy) * h <= 1.5 for d in dets), (seed, o, dets)
        assert judge(render_scene(scene, size), scene, category)
        n += 1
    assert n >= 200


def test_detect_accepts_arrays_and_tensors():
    scene, _ = sample_scene(3, "color_attr")
    img = render_scene(scene, 64)
    ref = detect_objects(img)
    arr = np.array(img)
    assert detect_objects(arr) == ref
    assert detect_objects(arr / 255.0) == ref
    assert detect_objects(torch.from_numpy(arr).permute(2, 0, 1).float() / 255) == ref


# --- the judge rejects what is not a clean scene ---------------------------------------------------------------

def _junk(rng: np.random.Generator, scene: Scene) -> dict[str, np.ndarray]:
    """Images that are not clean scenes, some of them drawn over a correct render of ``scene``."""
    clean = np.asarray(render_scene(scene, 64)).astype(float)
    background = np.full((64, 64, 3), 245.0)
    salt_pepper = clean.copy()
    hit = rng.random((64, 64)) < 0.1
    salt_pepper[hit] = rng.choice([0.0, 255.0], (hit.sum(), 1))
    confetti = clean.copy()  # 40 specks of palette colours, each below an object's least area
    for color in rng.choice(list(COLORS), 40):
        y, x = rng.integers(0, 62, 2)
        confetti[y:y + 2, x:x + 2] = COLORS[color]
    crowd = background.copy()  # 16 solid squares: more objects than a scene of the set holds
    for i in range(16):
        y, x = 2 + 16 * (i // 4), 2 + 16 * (i % 4)
        crowd[y:y + 10, x:x + 10] = list(COLORS.values())[i % 6]
    return {"uniform noise": rng.integers(0, 256, (64, 64, 3)).astype(float),
            "uniform noise, 32 px": rng.integers(0, 256, (32, 32, 3)).astype(float),
            "gaussian noise on the background": background + rng.normal(0, 20, background.shape),
            "gaussian noise on the scene": clean + rng.normal(0, 20, clean.shape),
            "salt and pepper on the scene": salt_pepper,
            "random colour blocks": np.kron(rng.integers(0, 256, (8, 8, 3)), np.ones((8, 8, 1))),
            "large random colour blocks": np.kron(rng.integers(0, 256, (4, 4, 3)), np.ones((16, 16, 1))),
            "palette confetti on the scene": confetti, "sixteen squares": crowd}


def test_judge_rejects_noise_blank_and_clutter():
    rng = np.random.default_rng(5)
    every = {c: [parse_prompt(p) for p in prompts(c)] for c in CATEGORIES}
    reasons = set()
    for i in range(12):
        category = CATEGORIES[i % 6]
        scene, prompt = sample_scene(rng, category)
        blank = np.full((64, 64, 3), 245, np.uint8)
        assert read_scene(blank).rejected is None and detect_objects(blank) == []  # a clean scene of nothing
        for name, arr in {**_junk(rng, scene), "blank": blank}.items():
            img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
            reading = read_scene(img)
            assert name == "blank" or reading.rejected, (name, reading.detections)
            reasons.add((reading.rejected or "").split(" (")[0].split(":")[0])
            dets = detect_objects(img)
            assert dets == [], name
            assert not judge(img, scene, category) and not judge(img, None, category, prompt=prompt), name
            assert not judge_edit(img, scene), name
            assert not any(judge_spec(dets, spec) for specs in every.values() for spec in specs), name
    assert {"no uniform background", "clutter", "16 objects"} <= reasons, reasons


def _jpeg(img: Image.Image, quality: int, subsampling: int) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, subsampling=subsampling)
    return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")


@pytest.mark.parametrize("distort", ["jpeg 90 (4:4:4)", "gaussian blur 0.5"])
def test_judge_tolerates_mild_jpeg_and_blur(distort):
    """Clean renders stay clean under mild JPEG and blur (limits: chroma subsampling, more blur; docs/scenes.md)."""
    f = {"jpeg 90 (4:4:4)": lambda im: _jpeg(im, 90, 0),
         "gaussian blur 0.5": lambda im: im.filter(ImageFilter.GaussianBlur(0.5))}[distort]
    for seed in range(60):
        category = CATEGORIES[seed % 6]
        scene, _ = sample_scene(seed, category)
        img = f(render_scene(scene, SIZES[seed % len(SIZES)]))
        assert read_scene(img).rejected is None, (seed, read_scene(img).rejected)
        assert judge(img, scene, category), (seed, detect_objects(img))
        if seed % 6 == 0:
            assert judge_edit(img, scene)


# --- edits -----------------------------------------------------------------------------------------------------

_REF = r"the (?:(\w+) )?(\w+)"


def _named(scene: Scene, color: str | None, shape: str) -> int:
    hits = [i for i, o in enumerate(scene.objects) if o.shape == shape and color in (None, o.color)]
    assert len(hits) == 1, "the instruction names exactly one object"
    return hits[0]


def _expected(scene: Scene, instruction: str) -> tuple[Scene | None, tuple]:
    """The target an instruction asks for, parsed independently of datamodules.scenes.edits."""
    objs = list(scene.objects)
    if m := re.fullmatch(f"make {_REF} (\\w+)", instruction):
        i = _named(scene, m[1], m[2])
        objs[i] = dataclasses.replace(objs[i], color=m[3])
        return Scene(tuple(objs)), ()
    if m := re.fullmatch(f"remove {_REF}", instruction):
        del objs[_named(scene, m[1], m[2])]
        return Scene(tuple(objs)), ()
    if m := re.fullmatch(f"move {_REF} (to the left|to the right|up|down)", instruction):
        i = _named(scene, m[1], m[2])
        dx, dy = {"to the left": (-1, 0), "to the right": (1, 0), "up": (0, -1), "down": (0, 1)}[m[3]]
        objs[i] = dataclasses.replace(objs[i], cx=objs[i].cx + dx * MOVE_SHIFT, cy=objs[i].cy + dy * MOVE_SHIFT)
        return Scene(tuple(objs)), ()
    m = re.fullmatch(r"add an? (\w+) (\w+) at the (top left|top right|bottom left|bottom right)", instruction)
    assert m, instruction
    return None, (m[1], m[2], ADD_ANCHORS[m[3]])


def test_edit_targets_differ_exactly_by_instruction():
    rng = np.random.default_rng(1)
    kinds = set()
    for i in range(120):
        scene, _ = sample_scene(rng, CATEGORIES[i % 6])
        instruction, target = sample_edit(scene, rng)
        kinds.add(instruction.split()[0])
        want, added = _expected(scene, instruction)
        if want is not None:
            assert target == want, instruction
        else:
            color, shape, (ax, ay) = added
            assert target.objects[:-1] == scene.objects
            new = target.objects[-1]
            assert (new.color, new.shape) == (color, shape) and max(abs(new.cx - ax), abs(new.cy - ay)) <= 0.03 + 1e-9
        for a in target.objects:  # the target is a valid scene: nothing overlaps
            for b in target.objects:
                if a is not b:
                    reach = (a.size + b.size) / 2
                    assert abs(a.cx - b.cx) >= reach or abs(a.cy - b.cy) >= reach
        if i % 4 == 0:
            assert judge_edit(render_scene(target, 64), target)
            assert not judge_edit(render_scene(scene, 64), target), instruction
    assert kinds == {"make", "remove", "add", "move"}
    with pytest.raises(ValueError, match="edit kind"):
        sample_edit(scene, rng, kind="rotate")


# --- questions -------------------------------------------------------------------------------------------------

def test_questions_have_exact_answers():
    rng = np.random.default_rng(2)
    for i in range(60):
        scene, _ = sample_scene(rng, CATEGORIES[i % 6])
        qas = questions(scene, rng)
        assert len({q.kind for q in qas[:4]}) == min(4, len({q.kind for q in qas}))
        assert questions(scene, i, n=2) == questions(scene, i)[:2]
        for qa in qas:
            assert qa.kind in QA_KINDS and qa.question.endswith("?") and " " not in qa.answer
            if m := re.fullmatch(r"how many (\w+)s are there\?", qa.question):
                assert qa.answer == str(scene.count(m[1]))
            elif m := re.fullmatch(r"how many (\w+) objects are there\?", qa.question):
                assert qa.answer == str(scene.count(color=m[1]))
            elif m := re.fullmatch(r"what color is the (\w+)\?", qa.question):
                assert scene.count(m[1]) == 1 and qa.answer == next(o.color for o in scene.objects if o.shape == m[1])
            elif m := re.fullmatch(r"what shape is the (\w+) object\?", qa.question):
                assert qa.answer == next(o.shape for o in scene.objects if o.color == m[1])
            else:
                m = re.fullmatch(f"is {_REF} (left or right of|above or below) {_REF}\\?", qa.question)
                a, b = scene.objects[_named(scene, m[1], m[2])], scene.objects[_named(scene, m[4], m[5])]
                assert (qa.answer + (" of" if qa.answer in ("left", "right") else "")) in relations(a, b)


# --- the writer ------------------------------------------------------------------------------------------------

def _rows(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_writer_layout_and_split_rule(tmp_path):
    root = write_scene_dataset(tmp_path / "scenes", n_train=36, n_val=12, n_test=18, seed=3)
    assert (root / MARKER).is_file()
    captions, hashes, sizes = {}, {}, {}
    for split in ("train", "val", "test"):
        folder = root / split
        assert (folder / MARKER).is_file()
        t2i, edit, vqa = (_rows(folder / f"{n}.jsonl") for n in ("t2i", "edit", "vqa"))
        assert len(t2i) == {"train": 36, "val": 12, "test": 18}[split] and len(edit) > 0.8 * len(t2i)
        assert {r["category"] for r in t2i} == set(CATEGORIES) and len(vqa) == 2 * len(t2i)
        for r in t2i:
            img = Image.open(folder / r["image"])
            scene = Scene.from_dict(r["scene"])
            assert caption(scene, r["category"]) == r["caption"] and prompt_split(r["caption"]) == split
            assert (np.asarray(img) == np.asarray(render_scene(scene, img.size[::-1]))).all()
        for r in edit:
            assert (folder / r["source"]).is_file() and (folder / r["target"]).is_file() and r["instruction"]
            assert judge_edit(Image.open(folder / r["target"]), Scene.from_dict(r["target_scene"]))
        for r in vqa:
            human, gpt = r["conversations"]
            assert human["from"] == "human" and human["value"].startswith("<image>\n") and gpt["from"] == "gpt"
            assert r["kind"] in QA_KINDS and (folder / r["image"]).is_file()
        captions[split] = {r["caption"] for r in t2i}
        hashes[split] = {hashlib.sha256((folder / p).read_bytes()).hexdigest() for p in
                         [r["image"] for r in t2i] + [r["target"] for r in edit]}
        sizes[split] = {Image.open(folder / r["image"]).size for r in t2i}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not captions[a] & captions[b] and not hashes[a] & hashes[b]
    assert sizes["train"] == sizes["val"] == {(64, 64)}
    assert sizes["test"] == {(64, 64), (96, 64), (64, 96)}


def test_writer_never_overwrites(tmp_path):
    root = write_scene_dataset(tmp_path / "s", n_train=2, n_val=1, n_test=1)
    before = (root / "train" / "t2i.jsonl").read_bytes()
    with pytest.raises(SyntheticDataError, match="overwrite"):
        write_scene_dataset(root, n_train=2, n_val=1, n_test=1, seed=1)
    assert (root / "train" / "t2i.jsonl").read_bytes() == before
    user = tmp_path / "mine"
    user.mkdir()
    (user / "photo.png").write_bytes(b"x")
    with pytest.raises(SyntheticDataError, match="refusing"):
        write_scene_dataset(user, n_train=1, n_val=1, n_test=1)
    assert sorted(p.name for p in user.iterdir()) == ["photo.png"]


# --- the metric ------------------------------------------------------------------------------------------------

def test_scene_judge_score_is_the_mean_of_category_accuracies():
    rng = np.random.default_rng(4)
    cases = [("single_object", True), ("single_object", True), ("counting", True), ("counting", False),
             ("colors", False)]
    images, scenes, cats = [], [], []
    for category, ok in cases:
        scene, _ = sample_scene(rng, category)
        shown = scene if ok else _perturb(scene, category, rng)
        images.append(torch.from_numpy(np.array(render_scene(shown, 64))).permute(2, 0, 1))
        scenes.append(scene)
        cats.append(category)
    metric = SceneJudgeScore()
    metric.update(torch.stack(images[:3]), cats[:3], scenes=scenes[:3])
    other = SceneJudgeScore()  # a second rank's share, merged as DDP's sum reduction would
    other.update(images[3:], cats[3:], prompts=[caption(s, c) for s, c in zip(scenes[3:], cats[3:])])
    metric.merge_state(other)
    out = metric.compute()
    assert set(out) == {"single_object", "counting", "colors", "overall"}
    assert out["single_object"] == 1.0 and out["counting"] == 0.5 and out["colors"] == 0.0
    assert out["overall"].item() == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    metric.reset()
    metric.update_verdicts([True, False, True], ["position", "position", "color_attr"])
    assert metric.compute()["overall"].item() == pytest.approx(0.75)
