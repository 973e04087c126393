"""A headless PyBullet tabletop: a Franka Panda on a table with a red cube, a blue block and a tray
(``pybullet_data`` models), three language-conditioned tasks, a 7-D delta end-effector action space and an
agent-view (plus wrist) camera rendered with PyBullet's CPU TinyRenderer (``p.DIRECT``, no display).

Action (LIBERO's convention): ``[dx, dy, dz, droll, dpitch, dyaw, gripper]`` in metres / radians per control step
(clipped to ``max_delta`` / ``max_rot``) applied to the end-effector *target* pose, which inverse kinematics turns
into joint targets; ``gripper`` -1 opens, +1 closes. One control step is ``substeps`` physics steps at 240 Hz
(default 8: 30 Hz). "Left" is the robot's left (+y; the agent-view camera faces the robot, so it is image right).

The arm links are drawn transparent: TinyRenderer spends ~60 ms per 64 px frame on the Panda's meshes, ~3 ms
without them; the hand and fingers stay visible.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TASKS", "TabletopEnv", "TaskSpec"]


@dataclass(frozen=True)
class TaskSpec:
    """One task: its key (file name), instruction and episode length limit."""

    key: str
    instruction: str
    max_steps: int


TASKS: dict[str, TaskSpec] = {
    "pick_red_cube": TaskSpec("pick_red_cube", "pick up the red cube", 60),
    "push_block_left": TaskSpec("push_block_left", "push the blue block to the left", 80),
    "cube_in_tray": TaskSpec("cube_in_tray", "put the red cube in the tray", 100),
}

_TABLE_TOP = 0.626
_HOME = np.array([0.45, 0.0, _TABLE_TOP + 0.25])
_ARM_JOINTS = list(range(7))
_FINGERS = (9, 10)
_EE_LINK = 11
_REST = [0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785]
_DOWN = (np.pi, 0.0, np.pi / 2)  # end-effector orientation: pointing down, fingers closing along x


class TabletopEnv:
    """The PyBullet environment. ``reset(task, seed)`` builds a seeded scene; ``step(action)``; ``render()``.

    Args:
        image_size: camera resolution (square).
        wrist: also render the wrist camera (``eye_in_hand_rgb``) in observations.
        substeps: physics steps (240 Hz) per control step.
        max_delta: per-step translation limit (m).
        max_rot: per-step rotation limit (rad).
        spread: width of the cube's, tray's and start pose's random placement ranges around their midpoints (1: the
            full ranges; 0: fixed, except the tray's side, which still sets the cube's side). The blue block keeps
            its full range (a distractor outside ``push_block_left``). The easier CPU results use 0.25.
    """

    def __init__(self, image_size: int = 64, wrist: bool = False, substeps: int = 8, max_delta: float = 0.02,
                 max_rot: float = 0.1, spread: float = 1.0) -> None:
        if not 0.0 <= spread <= 1.0:
            raise ValueError(f"spread must lie in [0, 1], got {spread}")
        import pybullet as p
        import pybullet_data

        self.p = p
        self.image_size, self.wrist, self.substeps = image_size, wrist, substeps
        self.max_delta, self.max_rot, self.spread = max_delta, max_rot, spread
        self.cid = p.connect(p.DIRECT)
        p.setAdditionalSearchPath(pybullet_data.getDataPath(), physicsClientId=self.cid)
        self._proj = p.computeProjectionMatrixFOV(50, 1.0, 0.01, 5.0)
        self._view = p.computeViewMatrix([1.15, 0.0, _TABLE_TOP + 0.55], [0.5, 0.0, _TABLE_TOP], [0, 0, 1])
        self.task: TaskSpec | None = None
        self.steps = 0

    # ------------------------------------------------------------------------------------------------ scene
    def _uniform(self, rng: np.random.Generator, lo: float, hi: float) -> float:
        """A draw from U(lo, hi) shrunk toward the midpoint by ``spread`` (the same rng draws for every spread)."""
        u = rng.uniform(lo, hi)
        return u if self.spread == 1.0 else (lo + hi) / 2 + self.spread * (u - (lo + hi) / 2)

    def reset(self, task: str, seed: int) -> dict[str, np.ndarray]:
        """A fresh seeded scene for ``task``; returns the first observation."""
        p, cid = self.p, self.cid
        if task not in TASKS:
            raise KeyError(f"unknown task {task!r}; one of {sorted(TASKS)}")
        self.task, self.steps = TASKS[task], 0
        rng = np.random.default_rng(seed)
        p.resetSimulation(physicsClientId=cid)
        p.setGravity(0, 0, -9.81, physicsClientId=cid)
        p.loadURDF("table/table.urdf", [0.5, 0, 0], physicsClientId=cid)
        self.robot = p.loadURDF("franka_panda/panda.urdf", [0, 0, _TABLE_TOP], useFixedBase=True,
                                physicsClientId=cid)
        for link in range(-1, 8):
            p.changeVisualShape(self.robot, link, rgbaColor=[1, 1, 1, 0], physicsClientId=cid)
        for f in _FINGERS:
            p.changeDynamics(self.robot, f, lateralFriction=2.0, physicsClientId=cid)
        # objects: tray on one side, cube and block elsewhere, never overlapping
        tray_y = rng.choice([-1, 1]) * self._uniform(rng, 0.17, 0.22)
        self.tray_pos = np.array([self._uniform(rng, 0.5, 0.6), tray_y, _TABLE_TOP])
        self.tray = p.loadURDF("tray/traybox.urdf", self.tray_pos.tolist(), globalScaling=0.45, useFixedBase=True,
                               physicsClientId=cid)
        free_y = -np.sign(tray_y)
        cube_xy = np.array([self._uniform(rng, 0.45, 0.6), free_y * self._uniform(rng, 0.0, 0.12)])
        while True:
            block_xy = np.array([rng.uniform(0.42, 0.62), rng.uniform(-0.12, 0.12) * 0.5 + free_y * 0.05])
            if np.linalg.norm(block_xy - cube_xy) > 0.1:
                break
        self.cube = p.loadURDF("cube_small.urdf", [*cube_xy, _TABLE_TOP + 0.026], physicsClientId=cid)
        self.block = p.loadURDF("cube_small.urdf", [*block_xy, _TABLE_TOP + 0.026], globalScaling=1.2,
                                physicsClientId=cid)
        p.changeVisualShape(self.cube, -1, rgbaColor=[0.9, 0.1, 0.1, 1], physicsClientId=cid)
        p.changeVisualShape(self.block, -1, rgbaColor=[0.1, 0.2, 0.9, 1], physicsClientId=cid)
        p.changeDynamics(self.cube, -1, lateralFriction=1.5, physicsClientId=cid)
        for j, q in zip(_ARM_JOINTS, _REST):
            p.resetJointState(self.robot, j, q, physicsClientId=cid)
        for f in _FINGERS:
            p.resetJointState(self.robot, f, 0.04, physicsClientId=cid)
        self.target = _HOME + np.array([0.0, self._uniform(rng, -0.03, 0.03), 0.0])
        self.target_rpy = np.array(_DOWN)
        self.gripper = -1.0
        self._block_start = np.array(block_xy)
        self._drive(settle=True)
        return self.observation()

    def close(self) -> None:
        if self.cid is not None:
            self.p.disconnect(self.cid)
            self.cid = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass

    # ------------------------------------------------------------------------------------------------ control
    def _drive(self, settle: bool = False) -> None:
        p, cid = self.p, self.cid
        orn = p.getQuaternionFromEuler(self.target_rpy.tolist())
        q = p.calculateInverseKinematics(self.robot, _EE_LINK, self.target.tolist(), orn, maxNumIterations=50,
                                         restPoses=_REST + [0.0] * 5, physicsClientId=cid)
        if settle:
            for j in _ARM_JOINTS:
                p.resetJointState(self.robot, j, q[j], physicsClientId=cid)
        p.setJointMotorControlArray(self.robot, _ARM_JOINTS, p.POSITION_CONTROL, targetPositions=list(q[:7]),
                                    forces=[200.0] * 7, physicsClientId=cid)
        width = 0.0 if self.gripper > 0 else 0.04
        p.setJointMotorControlArray(self.robot, list(_FINGERS), p.POSITION_CONTROL, targetPositions=[width] * 2,
                                    forces=[40.0] * 2, physicsClientId=cid)
        for _ in range(self.substeps * (3 if settle else 1)):
            p.stepSimulation(physicsClientId=cid)

    def step(self, action: np.ndarray) -> tuple[dict[str, np.ndarray], bool]:
        """Apply one 7-D action; returns (observation, success)."""
        a = np.asarray(action, dtype=np.float64)
        self.target = self.target + np.clip(a[:3], -self.max_delta, self.max_delta)
        self.target = np.clip(self.target, [0.3, -0.35, _TABLE_TOP + 0.015], [0.75, 0.35, _TABLE_TOP + 0.4])
        self.target_rpy = self.target_rpy + np.clip(a[3:6], -self.max_rot, self.max_rot)
        self.gripper = 1.0 if a[6] > 0 else -1.0
        self._drive()
        self.steps += 1
        return self.observation(), self.success()

    # ------------------------------------------------------------------------------------------------ state
    def object_pos(self, body: int) -> np.ndarray:
        return np.array(self.p.getBasePositionAndOrientation(body, physicsClientId=self.cid)[0])

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        st = self.p.getLinkState(self.robot, _EE_LINK, physicsClientId=self.cid)
        return np.array(st[4]), np.array(self.p.getEulerFromQuaternion(st[5]))

    def success(self) -> bool:
        """The task's success predicate on the current state."""
        key = self.task.key if self.task else ""
        cube = self.object_pos(self.cube)
        if key == "pick_red_cube":
            return bool(cube[2] > _TABLE_TOP + 0.08)
        if key == "push_block_left":
            block = self.object_pos(self.block)
            return bool(block[1] - self._block_start[1] > 0.08 and block[2] < _TABLE_TOP + 0.05)
        if key == "cube_in_tray":
            d = np.abs(cube[:2] - self.tray_pos[:2])
            return bool(d.max() < 0.09 and cube[2] < _TABLE_TOP + 0.07 and self.gripper < 0)
        return False

    def _camera(self, view: list[float]) -> np.ndarray:
        p = self.p
        img = p.getCameraImage(self.image_size, self.image_size, view, self._proj, renderer=p.ER_TINY_RENDERER,
                               shadow=0, flags=p.ER_NO_SEGMENTATION_MASK, physicsClientId=self.cid)[2]
        return np.asarray(img, dtype=np.uint8).reshape(self.image_size, self.image_size, 4)[..., :3].copy()

    def render(self) -> np.ndarray:
        """The agent-view RGB frame ``[H, W, 3]`` uint8."""
        return self._camera(self._view)

    def render_wrist(self) -> np.ndarray:
        """The wrist (eye-in-hand) RGB frame, looking down from just behind the fingers."""
        pos, _ = self.ee_pose()
        view = self.p.computeViewMatrix((pos + [-0.08, 0, 0.1]).tolist(), (pos + [0.05, 0, -0.1]).tolist(), [1, 0, 0])
        return self._camera(view)

    def observation(self) -> dict[str, np.ndarray]:
        """LIBERO's observation keys (``agentview_rgb``, ``eye_in_hand_rgb`` when ``wrist``, states)."""
        p, cid = self.p, self.cid
        pos, ori = self.ee_pose()
        fingers = np.array([p.getJointState(self.robot, f, physicsClientId=cid)[0] for f in _FINGERS])
        joints = np.array([p.getJointState(self.robot, j, physicsClientId=cid)[0] for j in _ARM_JOINTS])
        obs = dict(agentview_rgb=self.render(), ee_pos=pos, ee_ori=ori, ee_states=np.concatenate([pos, ori]),
                   gripper_states=fingers, joint_states=joints)
        if self.wrist:
            obs["eye_in_hand_rgb"] = self.render_wrist()
        return obs
