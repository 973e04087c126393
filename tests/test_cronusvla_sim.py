"""CronusVLA data and simulation: the PyBullet tabletop (seeded, headless camera), scripted experts, LIBERO-layout
demo writer (synthetic marker, never overwrites), the LIBERO datamodule (windows, padding, q01/q99 statistics, layout
errors), the RLDS/TFRecord reader, CLI fit + test on the demos, and the closed-loop evaluator."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("pybullet")

from datamodules._layout import DatasetLayoutError  # noqa: E402
from datamodules.libero import LiberoDataModule, action_stats, normalize_actions, read_libero_file  # noqa: E402
from datamodules.robot_sim import TASKS, ScriptedExpert, TabletopEnv, write_libero_demos  # noqa: E402
from datamodules.synthetic import SyntheticDataError, is_synthetic  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cronus") / "demos"
    return write_libero_demos(root, episodes=3, image_size=32, wrist=True, seed=0)


def test_env_is_seeded_and_renders_headless():
    env = TabletopEnv(image_size=32)
    a = env.reset("pick_red_cube", 7)["agentview_rgb"]
    b = env.reset("pick_red_cube", 7)["agentview_rgb"]
    c = env.reset("pick_red_cube", 8)["agentview_rgb"]
    env.close()
    assert a.shape == (32, 32, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    with pytest.raises(KeyError, match="unknown task"):
        TabletopEnv().reset("fly", 0)


def test_env_spread_narrows_placements(tmp_path):
    from datamodules.robot_sim.record import main as record_main

    env, narrow = TabletopEnv(image_size=16), TabletopEnv(image_size=16, spread=0.0)
    def cube_xy(e: TabletopEnv, seed: int) -> np.ndarray:
        e.reset("pick_red_cube", seed)
        return e.object_pos(e.cube)[:2]

    full, fixed = [cube_xy(env, s) for s in range(6)], [cube_xy(narrow, s) for s in range(6)]
    assert narrow._uniform(np.random.default_rng(0), 0.0, 0.12) == pytest.approx(0.06)
    assert env._uniform(np.random.default_rng(0), 0.0, 0.12) == np.random.default_rng(0).uniform(0.0, 0.12)
    env.close(), narrow.close()
    assert np.ptp(np.stack(full)[:, 0]) > 0.01 and np.allclose(np.abs(np.stack(fixed)), [0.525, 0.06], atol=2e-3)
    with pytest.raises(ValueError, match="spread"):
        TabletopEnv(spread=1.5)
    root = record_main(["--root", str(tmp_path / "d"), "--episodes", "1", "--tasks", "pick_red_cube",
                        "--image-size", "16", "--no-wrist", "--spread", "0.25"])
    import h5py

    with h5py.File(root / "pick_red_cube_demo.hdf5") as f:
        assert f["data"].attrs["spread"] == 0.25 and "obs/eye_in_hand_rgb" not in f["data/demo_0"]
    from tasks.cronusvla_eval import main as eval_main

    res = eval_main(["--expert", "--tasks", "pick_red_cube", "--episodes", "2", "--spread", "0.25"])
    assert res["policy"] == "expert" and res["per_task"]["pick_red_cube"]["success"] == 1.0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_scripted_expert_solves_each_task(task):
    env = TabletopEnv(image_size=16)
    solved = 0
    for seed in (0, 1):
        env.reset(task, seed)
        expert, ok = ScriptedExpert(env, seed), False
        for _ in range(TASKS[task].max_steps):
            _, ok = env.step(expert.act())
            if ok:
                break
        solved += ok
    assert env.success() == ok
    env.close()
    assert solved >= 1


def test_demo_writer_libero_layout(demos):
    import h5py

    assert is_synthetic(demos) and sorted(p.name for p in demos.glob("*.hdf5")) == sorted(
        f"{t}_demo.hdf5" for t in TASKS)
    with h5py.File(demos / "cube_in_tray_demo.hdf5") as f:
        assert json.loads(f["data"].attrs["problem_info"])["language_instruction"] == "put the red cube in the tray"
        g = f["data/demo_0"]
        n = g.attrs["num_samples"]
        assert g["actions"].shape == (n, 7) and g["obs/agentview_rgb"].shape == (n, 32, 32, 3)
        assert g["obs/eye_in_hand_rgb"].shape == (n, 32, 32, 3) and g["obs/joint_states"].shape == (n, 7)
        assert g["dones"][-1] == 1 and g["dones"][:-1].sum() == 0
        assert set(np.unique(g["actions"][:, -1])) <= {-1.0, 1.0}
    with pytest.raises(SyntheticDataError):
        write_libero_demos(demos, episodes=1, tasks=["pick_red_cube"])  # never overwrites


def test_datamodule_windows_padding_and_stats(demos):
    dm = LiberoDataModule(str(demos), num_frames=3, chunk_len=4, image_size=28, val_demos=1, batch_size=4)
    dm.setup("fit")
    eps = read_libero_file(demos / "pick_red_cube_demo.hdf5")
    assert eps[0].instruction == "pick up the red cube" and set(np.unique(eps[0].actions[:, -1])) <= {0.0, 1.0}
    ds = dm.splits["train"]
    first, ep0 = ds[0], ds.episodes[0]
    frames = ds.frames(ep0, np.array([0]))
    assert first["pixels"].shape == (3, 3, 28, 28)
    assert torch.equal(first["pixels"][0], frames[0]) and torch.equal(first["pixels"][1], frames[0])  # start pad
    last = ds[len(ep0.actions) - 1]
    assert torch.equal(last["actions"][1], last["actions"][-1])  # future past the end repeats the last action
    stats = dm.action_stats
    allact = np.concatenate([e.actions for e in ds.episodes])
    np.testing.assert_allclose(stats["q01"], np.quantile(allact, 0.01, axis=0))
    norm = normalize_actions(allact, stats)
    assert norm[:, :6].min() >= -1 and norm[:, :6].max() <= 1 and np.array_equal(norm[:, 6], allact[:, 6])
    batch = next(iter(dm.train_dataloader()))
    assert batch["pixels"].shape == (4, 3, 3, 28, 28) and batch["actions"].shape == (4, 4, 7)
    assert (batch["input_ids"][:, 0] == 1).all() and len(dm.splits["val"].episodes) == 3
    assert action_stats(np.ones((5, 7)))["mask"] == [1.0] * 6 + [0.0]


def test_missing_and_corrupt_data_are_named(tmp_path):
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        LiberoDataModule(str(tmp_path / "nope")).prepare_data()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x_demo.hdf5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetLayoutError, match="x_demo.hdf5"):
        read_libero_file(tmp_path / "bad" / "x_demo.hdf5")


def test_cli_fit_test_and_closed_loop_eval(demos, tmp_path, capsys):
    from tasks.cli import main
    from tasks.cronusvla import CronusVLATask
    from tasks.cronusvla_eval import evaluate, run_episode

    out = tmp_path / "run"
    args = ["--config", str(ROOT / "configs/cronusvla/demo.yaml"), "--trainer.default_root_dir", str(out),
            "--data.init_args.root", str(demos), "--data.init_args.batch_size", "4", "--data.init_args.val_demos", "1",
            "--trainer.limit_val_batches", "1", "--trainer.limit_test_batches", "1", "--model.init_args.val_ddim_steps",
            "2"]
    main(["fit", *args, "--trainer.max_steps", "2", "--trainer.val_check_interval", "1"])
    ckpt = next(out.rglob("*.ckpt"))
    main(["test", *args, "--ckpt_path", str(ckpt)])
    assert "test/action_mse" in capsys.readouterr().out
    net = CronusVLATask.load_from_checkpoint(ckpt, map_location="cpu").net
    assert net.num_frames == 4 and net.action_q99[0] > 0  # the dataset's q01/q99 travel with the weights
    res = evaluate(net, tasks=["pick_red_cube"], episodes=1, image_size=32, num_steps=2, max_steps=6)
    assert set(res["per_task"]) == {"pick_red_cube"} and 0 <= res["mean_success"] <= 1
    from datamodules.libero import BytePrompt

    env = TabletopEnv(image_size=32)
    ep = run_episode(net, env, "push_block_left", 3, BytePrompt(), execute_horizon=2, num_steps=2, max_steps=5,
                     record=True, sticky_gripper=3)
    ens = run_episode(net, env, "push_block_left", 3, BytePrompt(), ensemble_horizon=2, num_steps=2, max_steps=3,
                      record=True)
    assert len(ens["chunks"]) == ens["steps"]  # ensemble mode: a chunk every step
    env.close()
    assert ep["frames"].shape[0] == ep["steps"] and ep["vlm_passes"] == ep["steps"]  # one VLM pass per step
    assert [t for t, _ in ep["chunks"]] == list(range(0, ep["steps"], 2)) and ep["chunks"][0][1].shape == (8, 7)


def test_training_lowers_the_loss(demos):
    from tasks.cronusvla import CronusVLATask

    torch.manual_seed(0)
    dm = LiberoDataModule(str(demos), num_frames=2, chunk_len=4, image_size=28, batch_size=8)
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    task = CronusVLATask("cronusvla_tiny", model_kwargs=dict(num_frames=2), repeated_diffusion_steps=2)
    opt = torch.optim.AdamW(task.net.parameters(), lr=3e-3)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    task.net.eval()
    with torch.no_grad():
        before = task.diffusion_loss(task.net(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features,
                                     batch["actions"], gen())
    task.net.train()
    for _ in range(50):
        f = task.net(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features
        loss = task.diffusion_loss(f, batch["actions"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    task.net.eval()
    with torch.no_grad():
        after = task.diffusion_loss(task.net(batch["pixels"], batch["input_ids"], batch["attention_mask"]).features,
                                    batch["actions"], gen())
    assert after < 0.85 * before


def test_rlds_tfrecord_reader_without_tensorflow(tmp_path):
    import io as _io

    from PIL import Image

    from datamodules.rlds import RLDSDataModule, encode_example, parse_example, read_tfrecord, write_tfrecord

    rng = np.random.default_rng(0)
    episodes = []
    for n in (5, 7):
        imgs = rng.integers(0, 255, (n, 16, 16, 3), dtype=np.uint8)
        pngs = []
        for im in imgs:
            buf = _io.BytesIO()
            Image.fromarray(im).save(buf, format="PNG")
            pngs.append(buf.getvalue())
        act = rng.uniform(-1, 1, (n, 7)).astype(np.float32)
        act[:, -1] = np.sign(act[:, -1])
        episodes.append((imgs, act, encode_example({
            "steps/observation/image": pngs, "steps/action": act.ravel(), "steps/is_first": [1] + [0] * (n - 1),
            "steps/language_instruction": ["open the drawer"] * n, "episode_metadata/episode_id": [-3]})))
    root = tmp_path / "libero_spatial_no_noops" / "1.0.0"
    root.mkdir(parents=True)
    write_tfrecord(root / "libero-train.tfrecord-00000-of-00001", [e[2] for e in episodes])
    ex = parse_example(next(read_tfrecord(root / "libero-train.tfrecord-00000-of-00001")))
    assert ex["episode_metadata/episode_id"].tolist() == [-3] and len(ex["steps/observation/image"]) == 5
    dm = RLDSDataModule(str(root), num_frames=2, chunk_len=3, image_size=None, val_demos=1, batch_size=2)
    dm.setup("fit")
    ep = dm.splits["train"].episodes[0]
    assert np.array_equal(ep.frames, episodes[0][0]) and ep.instruction == "open the drawer"
    np.testing.assert_allclose(ep.actions[:, :6], episodes[0][1][:, :6], rtol=1e-6)
    assert set(np.unique(ep.actions[:, -1])) <= {0.0, 1.0}
    assert next(iter(dm.train_dataloader()))["pixels"].shape == (2, 2, 3, 16, 16)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "x-train.tfrecord-00000-of-00001").write_bytes(b"\x05\0\0")
    with pytest.raises(DatasetLayoutError, match="truncated"):
        list(read_tfrecord(bad / "x-train.tfrecord-00000-of-00001"))


def test_action_pipeline_round_trip_lets_the_expert_succeed(demos):
    """Expert actions through the training normalisation (q01/q99, gripper to [0, 1]) and back through the policy's
    post-processing and the env mapping still solve the task: a perfect model would succeed."""
    from datamodules.libero import gripper_to_unit
    from tasks.cronusvla_eval import to_env_action
    from zoo.cronusvla_policy import postprocess_actions

    dm = LiberoDataModule(str(demos), num_frames=1, chunk_len=1)
    st = dm.action_stats
    q01, q99, mask = (torch.tensor(st[k]) for k in ("q01", "q99", "mask"))
    env = TabletopEnv(image_size=16)
    env.reset("cube_in_tray", 5)
    expert, ok = ScriptedExpert(env, 5, noise=0.0), False
    for _ in range(TASKS["cube_in_tray"].max_steps):
        a = expert.act()
        a = np.concatenate([a[:-1], gripper_to_unit(a[-1:])])
        norm = normalize_actions(a[None], st)
        back = postprocess_actions(torch.from_numpy(norm), q01, q99, mask)[0].numpy()
        _, ok = env.step(to_env_action(back))
        if ok:
            break
    env.close()
    assert ok
