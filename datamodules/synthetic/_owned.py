"""Folders the synthetic writers own: labelled by a marker file, never shared with anyone else's files.

A writer :func:`claim`\\ s each folder it writes into: the folder must be absent, empty or already labelled by
:data:`MARKER` (written by a writer of this project); then it is created and labelled. Every file goes through
:func:`fresh`, which refuses to replace an existing file. So a writer pointed at a user's (partial) dataset refuses
with a clear error instead of adding synthetic files beside real ones or overwriting them.
"""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["MARKER", "SyntheticDataError", "claim", "fresh", "is_synthetic", "owned_or_empty"]

#: the marker file in every folder a synthetic writer creates
MARKER = "SYNTHETIC.md"

_TEXT = """# Synthetic data

Everything in this folder was written by sharezoo's synthetic writers (`datamodules.synthetic`): generated stand-in
data laid out in a real dataset's on-disk format, for tests and demos. It is NOT the real dataset, and numbers
measured on it say nothing about the real one. Delete the folder to remove it.

Written by:
"""


class SyntheticDataError(FileExistsError):
    """A synthetic writer was pointed at a folder or file it does not own; nothing was written there."""


def is_synthetic(folder: str | os.PathLike) -> bool:
    """True when ``folder`` carries the synthetic-data marker."""
    return (Path(folder) / MARKER).is_file()


def owned_or_empty(folder: str | os.PathLike) -> bool:
    """True when ``folder`` is absent, an empty folder, or labelled synthetic (a writer may write into it)."""
    p = Path(folder)
    if not p.exists():
        return True
    return p.is_dir() and (is_synthetic(p) or next(p.iterdir(), None) is None)


def claim(folder: str | os.PathLike, writer: str) -> Path:
    """Create (or reuse) ``folder`` for synthetic files written by ``writer`` and label it with :data:`MARKER`.

    Raises:
        SyntheticDataError: ``folder`` is a file, or a folder holding files no synthetic writer created.
    """
    p = Path(folder)
    if not owned_or_empty(p):
        kind = "is a file" if p.is_file() else f"holds files that no synthetic writer created (no {MARKER})"
        raise SyntheticDataError(
            f"{writer}: refusing to write synthetic data into {p}: it {kind}. Synthetic data is written only into "
            f"an absent or empty folder, or one labelled {MARKER}; pass another folder (nothing was written).")
    p.mkdir(parents=True, exist_ok=True)
    marker = p / MARKER
    text = marker.read_text() if marker.is_file() else _TEXT
    line = f"- `{writer}`\n"
    if line not in text:
        marker.write_text(text + line)
    return p


def fresh(path: str | os.PathLike, writer: str = "a synthetic writer") -> Path:
    """``path`` if no file is there yet (its folder created); synthetic writers never overwrite.

    Raises:
        SyntheticDataError: ``path`` exists.
    """
    p = Path(path)
    if p.exists():
        raise SyntheticDataError(f"{writer}: refusing to overwrite {p} (synthetic writers never replace a file; "
                                 f"write into a new folder)")
    p.parent.mkdir(parents=True, exist_ok=True)
    return p
