"""Closed-loop evaluation of a CronusVLA policy in the PyBullet tabletop (``datamodules.robot_sim``): per-task
success rate over seeded episodes.

Execution follows the released LIBERO evaluation: the VLM runs on *every* frame (so the feature cache holds
consecutive frames, as in training), a new action chunk is sampled every ``execute_horizon`` steps and executed
open-loop; or, with ``ensemble_horizon`` set, a chunk is sampled every step and CogACT's adaptive ensemble picks the
action (the SimplerEnv mode). The policy's gripper output ([0, 1], 1 = open, binarised) is mapped back to the
environment's -1 open / +1 close.

    python -m tasks.cronusvla_eval --ckpt runs/cronusvla_demo/checkpoints/last.ckpt --episodes 10
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["evaluate", "evaluate_expert", "run_episode", "load_policy_model", "to_env_action", "main"]


def to_env_action(action: np.ndarray) -> np.ndarray:
    """A post-processed policy action (gripper in [0, 1], 1 = open) -> the environment's (-1 open / +1 close)."""
    out = np.asarray(action, dtype=np.float64).copy()
    out[-1] = -1.0 if out[-1] > 0.5 else 1.0
    return out


def load_policy_model(path: str) -> torch.nn.Module:
    """A CronusVLA network from a Lightning ``.ckpt`` of :class:`tasks.cronusvla.CronusVLATask` or a local-dir."""
    import zoo

    if path.endswith(".ckpt"):
        from .cronusvla import CronusVLATask

        return CronusVLATask.load_from_checkpoint(path, map_location="cpu").net.eval()
    return zoo.create_model(f"local-dir:{path}").eval()


def run_episode(model: torch.nn.Module, env: Any, task: str, seed: int, prompt: Any, execute_horizon: int = 4,
                ensemble_horizon: int | None = None, num_steps: int = 10, cfg_scale: float = 1.5,
                time_axis_cfg_quirk: bool = True, max_steps: int | None = None, record: bool = False,
                sticky_gripper: int = 0) -> dict[str, Any]:
    """One seeded closed-loop episode; returns success, steps and (``record``) frames and predicted chunks.
    ``sticky_gripper`` > 0 holds a changed gripper command that many steps (the released Google-robot policy: 10)."""
    from datamodules.robot_sim import TASKS
    from zoo.cronusvla_policy import AdaptiveEnsembler, CronusVLAPolicy, StickyGripper

    spec = TASKS[task]
    ids = torch.tensor([prompt(spec.instruction)])
    policy = CronusVLAPolicy(model, ids, num_steps=num_steps, cfg_scale=cfg_scale,
                             time_axis_cfg_quirk=time_axis_cfg_quirk, seed=seed)
    ens = AdaptiveEnsembler(ensemble_horizon) if ensemble_horizon else None
    sticky = StickyGripper(sticky_gripper) if sticky_gripper else None
    obs = env.reset(task, seed)
    size = model.image_size
    frames, chunks, ok, buffer, t = [], [], False, None, 0
    for t in range(max_steps or spec.max_steps):
        img = torch.from_numpy(obs["agentview_rgb"]).permute(2, 0, 1).float()[None] / 255
        if img.shape[-1] != size:
            img = torch.nn.functional.interpolate(img, size=(size, size), mode="bilinear", antialias=True)
        if ens is not None or t % execute_horizon == 0:
            buffer = policy.act(img)
            if record:
                chunks.append((t, buffer.copy()))
            action = ens(buffer) if ens is not None else buffer[0]
        else:
            policy.features(img)  # keep the per-frame feature cache (the decoder output would be discarded)
            action = buffer[min(t % execute_horizon, len(buffer) - 1)]
        if record:
            frames.append(obs["agentview_rgb"])
        if sticky is not None:
            action = np.concatenate([action[:-1], [sticky(float(action[-1]))]])
        obs, ok = env.step(to_env_action(action))
        if ok:
            break
    out: dict[str, Any] = {"success": bool(ok), "steps": t + 1, "vlm_passes": policy.vlm_passes}
    if record:
        out |= {"frames": np.stack(frames), "chunks": chunks}
    return out


def evaluate(model: torch.nn.Module, tasks: Sequence[str] | None = None, episodes: int = 10, seed: int = 100000,
             image_size: int = 64, spread: float = 1.0, **kwargs: Any) -> dict[str, Any]:
    """Per-task success over ``episodes`` seeded episodes (seeds ``seed + i``, disjoint from the demos' by default).

    Args:
        model: a CronusVLA network (q01/q99 buffers set by training).
        tasks: task keys (default all).
        episodes: episodes per task.
        seed: first scene seed.
        image_size: camera resolution (frames are resized to the model's).
        spread: placement-range width of the scenes (``TabletopEnv``; use the demos' value).
        **kwargs: :func:`run_episode` options (execute_horizon, ensemble_horizon, num_steps, cfg_scale, ...).
    """
    from datamodules.libero import BytePrompt, make_prompt
    from datamodules.robot_sim import TASKS, TabletopEnv

    prompt = BytePrompt(model.cognition_suffix) if model.llm.config.vocab_size == BytePrompt.vocab_size else \
        make_prompt(kwargs.pop("tokenizer"), model.cognition_suffix)
    env = TabletopEnv(image_size=image_size, spread=spread)
    model.eval()
    res: dict[str, Any] = {"per_task": {}, "episodes": episodes, "seed": seed, "spread": spread}
    t0 = time.time()
    try:
        for task in tasks or list(TASKS):
            runs = [run_episode(model, env, task, seed + i, prompt, **kwargs) for i in range(episodes)]
            res["per_task"][task] = {"success": float(np.mean([r["success"] for r in runs])),
                                     "mean_steps": float(np.mean([r["steps"] for r in runs]))}
    finally:
        env.close()
    res["mean_success"] = float(np.mean([v["success"] for v in res["per_task"].values()]))
    res["seconds"] = round(time.time() - t0, 1)
    return res


def evaluate_expert(tasks: Sequence[str] | None = None, episodes: int = 10, seed: int = 100000, spread: float = 1.0,
                    image_size: int = 16) -> dict[str, Any]:
    """The scripted expert's per-task success on the same seeded scenes (the reference row of a results table)."""
    from datamodules.robot_sim import TASKS, ScriptedExpert, TabletopEnv

    env = TabletopEnv(image_size=image_size, spread=spread)
    res: dict[str, Any] = {"per_task": {}, "episodes": episodes, "seed": seed, "spread": spread, "policy": "expert"}
    try:
        for task in tasks or list(TASKS):
            wins = []
            for i in range(episodes):
                env.reset(task, seed + i)
                expert, ok = ScriptedExpert(env, seed + i), False
                for _ in range(TASKS[task].max_steps):
                    _, ok = env.step(expert.act())
                    if ok:
                        break
                wins.append(ok)
            res["per_task"][task] = {"success": float(np.mean(wins))}
    finally:
        env.close()
    res["mean_success"] = float(np.mean([v["success"] for v in res["per_task"].values()]))
    return res


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--ckpt", default=None, help="CronusVLATask .ckpt or a local-dir model folder")
    ap.add_argument("--expert", action="store_true", help="evaluate the scripted expert instead (same seeds)")
    ap.add_argument("--episodes", type=int, default=10)
    ap.add_argument("--seed", type=int, default=100000)
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--spread", type=float, default=1.0, help="placement-range width (the demos' --spread)")
    ap.add_argument("--execute-horizon", type=int, default=4)
    ap.add_argument("--ensemble-horizon", type=int, default=None)
    ap.add_argument("--sticky-gripper", type=int, default=0, help="hold a changed gripper command N steps")
    ap.add_argument("--ddim-steps", type=int, default=10)
    ap.add_argument("--cfg-scale", type=float, default=1.5)
    ap.add_argument("--no-quirk", action="store_true", help="guide the whole chunk (not the released time-axis CFG)")
    ap.add_argument("--out", default=None, help="write the result JSON here")
    a = ap.parse_args(argv)
    if a.expert == bool(a.ckpt):
        ap.error("give --ckpt or --expert")
    if a.expert:
        return _report(evaluate_expert(a.tasks, a.episodes, a.seed, a.spread), a.out)
    torch.manual_seed(0)
    model = load_policy_model(a.ckpt)
    res = evaluate(model, a.tasks, a.episodes, a.seed, spread=a.spread, execute_horizon=a.execute_horizon,
                   ensemble_horizon=a.ensemble_horizon, num_steps=a.ddim_steps, cfg_scale=a.cfg_scale,
                   time_axis_cfg_quirk=not a.no_quirk, sticky_gripper=a.sticky_gripper)
    return _report(res | {"ckpt": a.ckpt, "num_frames": model.num_frames}, a.out)


def _report(res: dict[str, Any], out: str | None) -> dict[str, Any]:
    text = json.dumps(res, indent=1)
    print(text)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")
    return res


if __name__ == "__main__":
    main()
