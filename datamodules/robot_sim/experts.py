"""Scripted experts for the tabletop tasks: waypoint controllers that read the true object poses and emit the
environment's 7-D delta actions (they move the end-effector target toward the next waypoint at a per-episode
random speed, hold the gripper for a few steps when it changes, and add a little action noise for diversity)."""
from __future__ import annotations

import numpy as np

from .env import _TABLE_TOP, TabletopEnv

__all__ = ["ScriptedExpert"]


class ScriptedExpert:
    """Waypoint expert for the env's current task.

    Args:
        env: a reset :class:`TabletopEnv`.
        seed: noise / speed seed.
        noise: std of the Gaussian noise added to the translation (m).
    """

    def __init__(self, env: TabletopEnv, seed: int = 0, noise: float = 0.002) -> None:
        self.env = env
        self.rng = np.random.default_rng(seed)
        self.speed = self.rng.uniform(0.012, 0.018)
        self.noise = noise
        self.plan = self._plan()
        self.i = 0
        self.hold = 0

    def _plan(self) -> list[tuple[np.ndarray | None, float, int]]:
        """(target position or None to stay, gripper, hold steps) waypoints."""
        env, top = self.env, _TABLE_TOP
        key = env.task.key  # type: ignore[union-attr]
        cube = env.object_pos(env.cube)
        if key == "push_block_left":
            b = env.object_pos(env.block)
            start = np.array([b[0], b[1] - 0.065, top + 0.025])
            return [(start + [0, 0, 0.1], 1.0, 0), (start, 1.0, 0), (start + [0, 0.2, 0], 1.0, 0),
                    (start + [0, 0.2, 0.12], 1.0, 0)]
        grasp = [(np.array([cube[0], cube[1], top + 0.13]), -1.0, 0), (np.array([cube[0], cube[1], top + 0.022]),
                 -1.0, 0), (None, 1.0, 5), (np.array([cube[0], cube[1], top + 0.2]), 1.0, 0)]
        if key == "pick_red_cube":
            return grasp
        tray = env.tray_pos
        return grasp + [(np.array([tray[0], tray[1], top + 0.2]), 1.0, 0),
                        (np.array([tray[0], tray[1], top + 0.11]), 1.0, 0), (None, -1.0, 4),
                        (np.array([tray[0], tray[1], top + 0.22]), -1.0, 0)]

    @property
    def done(self) -> bool:
        return self.i >= len(self.plan)

    def act(self) -> np.ndarray:
        """The next action (zeros with an open gripper once the plan is finished)."""
        a = np.zeros(7)
        if self.done:
            a[6] = self.plan[-1][1] if self.plan else -1.0
            return a
        target, grip, hold = self.plan[self.i]
        a[6] = grip
        if target is None:
            self.hold += 1
            if self.hold >= hold:
                self.i, self.hold = self.i + 1, 0
            return a
        delta = target - self.env.target
        dist = np.linalg.norm(delta)
        step = delta if dist <= self.speed else delta / dist * self.speed
        a[:3] = step + self.rng.normal(0, self.noise, 3) * (dist > self.speed)
        if dist <= self.speed:
            self.i += 1
        return a
