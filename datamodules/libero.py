"""LIBERO demonstrations (HDF5) as multi-frame VLA training windows: M past-to-current frames, the prompt, and the
future action chunk, actions normalised with per-dataset q01/q99 bounds (gripper mapped to [0, 1], 1 = open, not
scaled), as OpenVLA / CronusVLA train on ``libero_*_no_noops``.

Windowing (Octo / OpenVLA's trajectory transforms): the frames of steps ``t - (M - 1) .. t`` (indices before the
episode start repeat the first frame) and the actions of steps ``t .. t + T - 1`` (indices past the end repeat the
last action). The prompt is Prismatic's ``"In: What action should the robot take to {instruction}?\\nOut:"`` plus the
LLM's cognition suffix (the EOS feature); :class:`BytePrompt` tokenises it for the tiny byte-vocabulary models, a
local Hugging Face tokenizer folder for the paper LLMs.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from ._base import SplitDataModule
from ._layout import layout_error, require_dataset

__all__ = ["BytePrompt", "HFPrompt", "make_prompt", "LiberoDataModule", "WindowDataset", "Episode",
           "read_libero_file", "action_stats", "normalize_actions", "gripper_to_unit", "PROMPT"]

PROMPT = "In: What action should the robot take to {}?\nOut:"
LIBERO_TREE = """<root>/
  <task name>_demo.hdf5        one file per task (LIBERO's released demos, or datamodules.robot_sim's)
    data/ (attrs: problem_info = JSON with language_instruction)
      demo_0/actions           T x 7 float (delta xyz, delta rpy, gripper -1 open / +1 close)
      demo_0/obs/agentview_rgb T x H x W x 3 uint8 (and eye_in_hand_rgb, ee_pos, ee_ori, gripper_states, ...)
      demo_1/ ..."""
LIBERO_SOURCE = ("LIBERO (https://libero-project.github.io, datasets via the LIBERO repository's "
                 "benchmark_scripts/download_libero_datasets.py, CC BY 4.0); or write PyBullet demos with "
                 "datamodules.robot_sim.write_libero_demos (synthetic, labelled)")


class BytePrompt:
    """Byte-level prompt tokenizer of the tiny models (vocabulary 300: pad 0, BOS 1, EOS 2, bytes at 3..258).

    Args:
        suffix: ids appended after the prompt (the cognition token: EOS).
    """

    pad_id, bos_id, eos_id, vocab_size = 0, 1, 2, 300

    def __init__(self, suffix: Sequence[int] = (2,)) -> None:
        self.suffix = tuple(suffix)

    def __call__(self, instruction: str) -> list[int]:
        text = PROMPT.format(instruction.lower().strip().rstrip("."))
        return [self.bos_id] + [b + 3 for b in text.encode()] + list(self.suffix)


class HFPrompt:
    """A local Hugging Face tokenizer folder (never downloaded) for the paper LLMs; appends the released cognition
    suffix (Llama: 29871 + EOS; Qwen: 220 + <|im_end|>).

    Args:
        path: tokenizer folder (``tokenizer.json`` / ``tokenizer.model``).
        suffix: ids appended after the prompt.
    """

    def __init__(self, path: str, suffix: Sequence[int]) -> None:
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        self.suffix = tuple(suffix)
        self.pad_id = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0

    def __call__(self, instruction: str) -> list[int]:
        ids = self.tok(PROMPT.format(instruction.lower().strip().rstrip(".")), add_special_tokens=True).input_ids
        return list(ids) + list(self.suffix)


def make_prompt(tokenizer: str = "bytes", suffix: Sequence[int] | None = None) -> BytePrompt | HFPrompt:
    """'bytes' (tiny models) or a local tokenizer folder."""
    if tokenizer == "bytes":
        return BytePrompt(suffix or (BytePrompt.eos_id,))
    return HFPrompt(tokenizer, suffix or ())


def gripper_to_unit(g: np.ndarray) -> np.ndarray:
    """LIBERO's gripper command (-1 open, +1 close) -> [0, 1] with 1 = open (OpenVLA's LIBERO transform)."""
    return np.clip((1 - g) / 2, 0, 1)


def action_stats(actions: np.ndarray) -> dict[str, list[float]]:
    """Per-dimension q01 / q99 (and mean, std, min, max) and the normalisation mask (all but the gripper)."""
    a = np.asarray(actions, dtype=np.float64)
    return {"q01": np.quantile(a, 0.01, axis=0).tolist(), "q99": np.quantile(a, 0.99, axis=0).tolist(),
            "mean": a.mean(0).tolist(), "std": a.std(0).tolist(), "min": a.min(0).tolist(),
            "max": a.max(0).tolist(), "mask": [1.0] * (a.shape[1] - 1) + [0.0]}


def normalize_actions(actions: np.ndarray, stats: dict[str, Any]) -> np.ndarray:
    """q01/q99 bounds -> [-1, 1] (clipped) on the masked dims; the rest unchanged."""
    lo, hi, mask = (np.asarray(stats[k]) for k in ("q01", "q99", "mask"))
    scaled = np.clip(2 * (actions - lo) / (hi - lo + 1e-8) - 1, -1, 1)
    return np.where(mask.astype(bool), scaled, actions).astype(np.float32)


class Episode:
    """One demonstration: ``frames`` (T x H x W x 3 uint8), ``actions`` (T x A, gripper in [0, 1]), instruction."""

    def __init__(self, frames: np.ndarray, actions: np.ndarray, instruction: str, source: str) -> None:
        if len(frames) != len(actions) or len(actions) == 0:
            raise ValueError(f"{source}: {len(frames)} frames for {len(actions)} actions (need equal, non-zero)")
        self.frames, self.actions, self.instruction, self.source = frames, actions, instruction, source


def _instruction(f: Any, path: Path) -> str:
    info = f["data"].attrs.get("problem_info")
    if info is not None:
        return json.loads(info)["language_instruction"]
    # LIBERO's file names are the instruction: 'pick_up_the_black_bowl..._demo.hdf5' (a scene prefix in CAPS)
    words = re.sub(r"^([A-Z0-9_]+_)+", "", path.stem.removesuffix("_demo")).split("_")
    return " ".join(words)


def read_libero_file(path: str | os.PathLike, camera: str = "agentview_rgb") -> list[Episode]:
    """Every demo of one LIBERO HDF5 file; a missing key or a truncated demo raises an error naming the file."""
    import h5py

    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise layout_error(f"cannot read {path} as HDF5 ({e})", name="LIBERO", tree=LIBERO_TREE,
                           source=LIBERO_SOURCE) from e
    with f:
        if "data" not in f:
            raise layout_error(f"{path} has no 'data' group", name="LIBERO", tree=LIBERO_TREE, source=LIBERO_SOURCE)
        instruction = _instruction(f, path)
        out = []
        for name in sorted(f["data"], key=lambda n: int(n.split("_")[-1]) if n.split("_")[-1].isdigit() else 0):
            g = f["data"][name]
            missing = [k for k in ("actions", f"obs/{camera}") if k not in g]
            if missing:
                raise layout_error(f"{path}:{name} lacks {', '.join(missing)}", name="LIBERO", tree=LIBERO_TREE,
                                   source=LIBERO_SOURCE)
            actions = np.asarray(g["actions"], dtype=np.float64)
            actions = np.concatenate([actions[:, :-1], gripper_to_unit(actions[:, -1:])], axis=1)
            out.append(Episode(np.asarray(g[f"obs/{camera}"]), actions, instruction, f"{path}:{name}"))
    return out


class WindowDataset(Dataset):
    """Multi-frame windows over episodes (module docstring).

    Args:
        episodes: the episodes.
        stats: action statistics (q01 / q99 / mask) used to normalise.
        prompt: tokenizer (instruction -> ids).
        num_frames: M.
        chunk_len: T.
        image_size: frames resized to this (bilinear, antialiased); None keeps them.
    """

    def __init__(self, episodes: Sequence[Episode], stats: dict[str, Any], prompt: Any, num_frames: int,
                 chunk_len: int, image_size: int | None = None) -> None:
        self.episodes, self.num_frames, self.chunk_len, self.image_size = list(episodes), num_frames, chunk_len, \
            image_size
        self.norm = [normalize_actions(e.actions, stats) for e in self.episodes]
        self.ids = {e.instruction: prompt(e.instruction) for e in self.episodes}
        self.pad_id = getattr(prompt, "pad_id", 0)
        self.index = [(i, t) for i, e in enumerate(self.episodes) for t in range(len(e.actions))]

    def __len__(self) -> int:
        return len(self.index)

    def frames(self, ep: Episode, steps: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(ep.frames[steps]).permute(0, 3, 1, 2).float() / 255
        if self.image_size and x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True,
                              align_corners=False)
        return x

    def __getitem__(self, i: int) -> dict[str, Any]:
        e, t = self.index[i]
        ep = self.episodes[e]
        n = len(ep.actions)
        past = np.clip(np.arange(t - self.num_frames + 1, t + 1), 0, None)
        future = np.clip(np.arange(t, t + self.chunk_len), None, n - 1)
        return {"pixels": self.frames(ep, past), "actions": torch.from_numpy(self.norm[e][future]),
                "input_ids": torch.tensor(self.ids[ep.instruction]), "instruction": ep.instruction}

    def collate(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-pads the prompts (the cognition feature is read at the last non-pad position)."""
        width = max(len(it["input_ids"]) for it in items)
        ids = torch.full((len(items), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros(len(items), width, dtype=torch.long)
        for j, it in enumerate(items):
            ids[j, :len(it["input_ids"])] = it["input_ids"]
            mask[j, :len(it["input_ids"])] = 1
        return {"pixels": torch.stack([it["pixels"] for it in items]),
                "actions": torch.stack([it["actions"] for it in items]), "input_ids": ids, "attention_mask": mask,
                "instruction": [it["instruction"] for it in items]}


class LiberoDataModule(SplitDataModule):
    """LIBERO-layout HDF5 demos (real LIBERO or the PyBullet ones) as CronusVLA windows.

    Args:
        root: folder of ``*_demo.hdf5`` files.
        num_frames: M, frames per window (the model's ``num_frames``).
        chunk_len: T, actions per window (the model's ``chunk_len``).
        image_size: frames resized to this (the model's input size).
        camera: observation key (``agentview_rgb``; ``eye_in_hand_rgb`` for the wrist view).
        tokenizer: 'bytes' (tiny models) or a local Hugging Face tokenizer folder.
        cognition_suffix: ids appended after the prompt (None: EOS for 'bytes'; the paper LLMs need theirs).
        val_demos: the last ``val_demos`` demos of every file are held out (validation and test).
        batch_size: windows per batch.
        num_workers: loader workers.
        tasks: file stems to use (None: all).
        write_demos: when > 0 and ``root`` is absent or empty, first record this many PyBullet expert demos per task
            there (``datamodules.robot_sim``, labelled synthetic; the demo configs).
    """

    def __init__(self, root: str = "runs/cronusvla/demos", num_frames: int = 3, chunk_len: int = 4,
                 image_size: int | None = 28, camera: str = "agentview_rgb", tokenizer: str = "bytes",
                 cognition_suffix: list[int] | None = None, val_demos: int = 2, batch_size: int = 16,
                 num_workers: int = 0, tasks: list[str] | None = None, write_demos: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.root, self.num_frames, self.chunk_len, self.image_size = root, num_frames, chunk_len, image_size
        self.camera, self.val_demos, self.batch_size, self.num_workers = camera, val_demos, batch_size, num_workers
        self.tasks, self.write_demos = tasks, write_demos
        self.prompt = make_prompt(tokenizer, cognition_suffix)
        self.splits: dict[str, WindowDataset] = {}
        self._stats: dict[str, Any] | None = None

    def files(self) -> list[Path]:
        if self.write_demos and not any(Path(self.root).glob("*.hdf5")):
            from .robot_sim import write_libero_demos

            write_libero_demos(self.root, episodes=self.write_demos)
        root = require_dataset(self.root, name="LIBERO", tree=LIBERO_TREE, source=LIBERO_SOURCE,
                               required=["*.hdf5"])
        files = sorted(root.glob("*.hdf5"))
        if self.tasks:
            files = [f for f in files if f.stem.removesuffix("_demo") in self.tasks]
            if not files:
                raise layout_error(f"no file of tasks {self.tasks} in {root}", name="LIBERO", tree=LIBERO_TREE,
                                   source=LIBERO_SOURCE, root=root)
        return files

    def prepare_data(self) -> None:
        self.files()

    def _episodes(self) -> tuple[list[Episode], list[Episode]]:
        train, held = [], []
        for f in self.files():
            eps = read_libero_file(f, self.camera)
            k = min(self.val_demos, len(eps) - 1)
            train += eps[:len(eps) - k]
            held += eps[len(eps) - k:]
        return train, held

    @property
    def action_stats(self) -> dict[str, Any]:
        """q01 / q99 / mask of the training actions (read from disk on first use)."""
        if self._stats is None:
            train, _ = self._episodes()
            self._stats = action_stats(np.concatenate([e.actions for e in train]))
        return self._stats

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        train, held = self._episodes()
        self._stats = action_stats(np.concatenate([e.actions for e in train]))
        args = (self._stats, self.prompt, self.num_frames, self.chunk_len, self.image_size)
        self.splits = {"train": WindowDataset(train, *args), "val": WindowDataset(held, *args)}
        self.splits["test"] = self.splits["val"]

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self.splits[split]
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=ds.collate, drop_last=shuffle and len(ds) > self.batch_size)
