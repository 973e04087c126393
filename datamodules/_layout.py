"""The one dataset-layout error of every datamodule: a missing or empty root, or a missing entry, prints the
expected folder tree and where the data comes from (licence, agreement, URL). Licensed data is never downloaded.

A datamodule keeps its layout as data (``tree``: the folder tree with ``<root>`` standing for the root; ``source``:
where to obtain it) and calls :func:`require_dataset` in ``prepare_data`` / ``setup``, or :func:`layout_error` for
a problem only it can see (an empty split list, a folder without images).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

__all__ = ["DatasetLayoutError", "layout_error", "require_dataset"]


class DatasetLayoutError(FileNotFoundError):
    """The dataset is not where the datamodule looks: the message names the problem, prints the expected tree and
    says where to get the data."""


def layout_error(problem: str, *, name: str, tree: str, source: str, root: str | os.PathLike | None = None,
                 notes: str = "") -> DatasetLayoutError:
    """The error for ``problem`` in dataset ``name``; ``<root>`` in ``tree`` becomes ``root`` when given.

    Args:
        problem: what is wrong, one sentence naming the path.
        name: the dataset (or datamodule) name the message starts with.
        tree: the expected folder tree.
        source: where the data is obtained (URL, licence, agreement).
        root: the root the datamodule was given.
        notes: extra remarks printed last.
    """
    shown = tree.replace("<root>", str(root)) if root is not None else tree
    msg = f"{name}: {problem}\nExpected layout:\n{shown}\nWhere to get it: {source}"
    if notes:
        msg += f"\nNotes: {notes}"
    return DatasetLayoutError(msg)


def require_dataset(root: str | os.PathLike, *, name: str, tree: str, source: str, required: Sequence[str] = (),
                    notes: str = "") -> Path:
    """Check that ``root`` is a non-empty folder holding every ``required`` entry; returns it as a ``Path``.

    Args:
        root: the dataset root.
        name: the dataset name (starts the message).
        tree: the expected folder tree (``<root>`` stands for the root).
        source: where the data is obtained (URL, licence, agreement).
        required: entries that must exist under ``root``; glob patterns (``scene*``) need one match.
        notes: extra remarks printed last.

    Raises:
        DatasetLayoutError: the root is missing, is not a folder, is empty, or lacks a required entry.
    """
    path = Path(root).expanduser()

    def fail(problem: str) -> DatasetLayoutError:
        return layout_error(problem, name=name, tree=tree, source=source, root=path, notes=notes)

    holds = f" (it should hold {', '.join(required)})" if required else ""
    if not path.exists():
        raise fail(f"dataset root {path} does not exist{holds}.")
    if not path.is_dir():
        raise fail(f"dataset root {path} is not a folder.")
    if next(path.iterdir(), None) is None:
        raise fail(f"dataset root {path} is empty{holds}.")
    missing = [r for r in required if not (next(path.glob(r), None) if _is_pattern(r) else (path / r).exists())]
    if missing:
        raise fail(f"{path} lacks {', '.join(missing)}.")
    return path


def _is_pattern(entry: str) -> bool:
    return any(c in entry for c in "*?[")
