"""Record scripted-expert demonstrations in the LIBERO HDF5 layout (SYNTHETIC: labelled ``SYNTHETIC.md``).

One file per task, ``<root>/<task key>_demo.hdf5``, as LIBERO's released demos: ``data/demo_<i>/actions`` (T x 7,
float64), ``data/demo_<i>/obs/{agentview_rgb, eye_in_hand_rgb}`` (T x H x W x 3 uint8), ``obs/{ee_pos, ee_ori,
ee_states, gripper_states, joint_states}``, ``rewards`` / ``dones`` (1 at the last step), the demo's
``num_samples`` attribute, and ``data.attrs['problem_info']`` (JSON with ``language_instruction``) plus
``data.attrs['env_name']``. Only episodes the expert finishes successfully are kept; the observation is the one the
action was taken from. They are demonstrations from a real physics engine (PyBullet), not LIBERO's.

    python -m datamodules.robot_sim.record --root runs/cronusvla/demos_pick --episodes 120 \
        --tasks pick_red_cube --spread 0.25 --no-wrist
"""
from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ..synthetic._owned import claim, fresh
from .env import TASKS, TabletopEnv
from .experts import ScriptedExpert

__all__ = ["record_demos", "write_libero_demos", "main"]

_WRITER = "datamodules.robot_sim.record.write_libero_demos"


def record_demos(env: TabletopEnv, task: str, episodes: int, seed: int = 0, max_tries: int | None = None
                 ) -> list[dict[str, np.ndarray]]:
    """``episodes`` successful expert episodes of ``task`` (seeds ``seed, seed + 1, ...``; failures skipped)."""
    out: list[dict[str, np.ndarray]] = []
    s = seed
    limit = seed + (max_tries or 3 * episodes + 5)
    while len(out) < episodes and s < limit:
        obs = env.reset(task, s)
        expert = ScriptedExpert(env, seed=s)
        frames: dict[str, list] = {k: [] for k in obs}
        actions, ok = [], False
        for _ in range(TASKS[task].max_steps):
            for k, v in obs.items():
                frames[k].append(v)
            a = expert.act()
            actions.append(a)
            obs, ok = env.step(a)
            if ok:
                break
        s += 1
        if ok:
            out.append({"actions": np.asarray(actions)} | {f"obs/{k}": np.stack(v) for k, v in frames.items()})
    if len(out) < episodes:
        raise RuntimeError(f"the {task} expert succeeded in only {len(out)} of {limit - seed} episodes")
    return out


def write_libero_demos(root: str | os.PathLike, episodes: int = 20, tasks: Sequence[str] = tuple(TASKS),
                       image_size: int = 64, wrist: bool = True, seed: int = 0, spread: float = 1.0) -> Path:
    """Record ``episodes`` successful demos per task into ``root`` (absent, empty or synthetic-labelled).

    Args:
        root: output folder.
        episodes: demos per task.
        tasks: task keys (``datamodules.robot_sim.TASKS``).
        image_size: camera resolution.
        wrist: also record ``eye_in_hand_rgb``.
        seed: first scene seed (task i uses ``seed + 10000 i``).
        spread: placement-range width of :class:`TabletopEnv` (1: full; stored as ``data.attrs['spread']``).
    """
    import h5py

    root = claim(root, _WRITER)
    env = TabletopEnv(image_size=image_size, wrist=wrist, spread=spread)
    try:
        for i, task in enumerate(tasks):
            demos = record_demos(env, task, episodes, seed + 10000 * i)
            with h5py.File(fresh(root / f"{task}_demo.hdf5", _WRITER), "w") as f:
                data = f.create_group("data")
                data.attrs["problem_info"] = json.dumps({"language_instruction": TASKS[task].instruction,
                                                         "problem_name": task})
                data.attrs["env_name"] = "sharezoo_pybullet_tabletop"
                data.attrs["spread"] = spread
                data.attrs["synthetic"] = "scripted-expert demonstrations in PyBullet (sharezoo), not LIBERO"
                for j, demo in enumerate(demos):
                    g = data.create_group(f"demo_{j}")
                    n = len(demo["actions"])
                    g.attrs["num_samples"] = n
                    for k, v in demo.items():
                        g.create_dataset(k, data=v, compression="gzip" if v.dtype == np.uint8 else None)
                    g.create_dataset("rewards", data=np.eye(1, n, n - 1)[0].astype(np.uint8))
                    g.create_dataset("dones", data=np.eye(1, n, n - 1)[0].astype(np.uint8))
    finally:
        env.close()
    return root


def main(argv: Sequence[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description="Record PyBullet scripted-expert demos in the LIBERO HDF5 layout")
    ap.add_argument("--root", required=True, help="output folder (absent, empty or synthetic-labelled)")
    ap.add_argument("--episodes", type=int, default=20, help="successful demos per task")
    ap.add_argument("--tasks", nargs="*", default=list(TASKS))
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--no-wrist", action="store_true", help="skip the wrist camera (halves the rendering)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--spread", type=float, default=1.0, help="placement-range width (TabletopEnv)")
    a = ap.parse_args(argv)
    return write_libero_demos(a.root, a.episodes, a.tasks, a.image_size, not a.no_wrist, a.seed, a.spread)


if __name__ == "__main__":
    main()
