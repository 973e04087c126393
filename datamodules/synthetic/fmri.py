"""Synthetic multi-subject fMRI (SYNTHETIC, labelled so): several subjects whose voxels are different random linear
mappings of ONE shared latent per category, written in the OpenfMRI layout that :class:`datamodules.haxby.
HaxbyDataModule` reads (4-D NIfTI per run, per-condition onset files, condition and scan keys).

It tests the cross-subject claim in miniature: a shared network plus per-subject adapters should fit all subjects,
and a new subject should be learnable by training only its adapter. It says nothing about real brains.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._owned import claim, fresh

__all__ = ["write_openfmri_subjects"]

_WRITER = "datamodules.synthetic.fmri.write_openfmri_subjects"


def write_openfmri_subjects(root: str | os.PathLike, voxels: Sequence[int] = (40, 60, 50), categories: int = 4,
                            runs: int = 4, blocks_per_category: int = 1, block_volumes: int = 4, rest_volumes: int = 2,
                            latent_dim: int = 8, noise: float = 0.5, tr: float = 2.5, seed: int = 0) -> Path:
    """Write subjects ``sub001..`` (one per entry of ``voxels``) into ``root`` in the OpenfMRI layout.

    Every category has one latent vector z_c (shared by all subjects); a volume in a block of category c is
    A_s z_c + noise for subject s, A_s a random (V_s, latent_dim) matrix different per subject; rest volumes are
    noise. Blocks are ordered at random per run; the tree is labelled ``SYNTHETIC.md``.

    Args:
        root: an absent, empty or synthetic-labelled folder.
        voxels: voxel count per subject.
        categories: number of conditions.
        runs: runs per subject.
        blocks_per_category: blocks of each category per run.
        block_volumes: volumes per block.
        rest_volumes: rest volumes before each block and at the end.
        latent_dim: shared latent width.
        noise: noise standard deviation (the signal has unit scale).
        tr: repetition time (seconds).
        seed: random seed.
    """
    import nibabel as nib

    rng = np.random.default_rng(seed)
    root = claim(root, _WRITER)
    latents = rng.standard_normal((categories, latent_dim))
    fresh(root / "scan_key.txt", _WRITER).write_text(f"TR {tr}\n")
    claim(root / "models" / "model001", _WRITER)
    fresh(root / "models" / "model001" / "condition_key.txt", _WRITER).write_text(
        "".join(f"task001 cond{c + 1:03d} category{c + 1}\n" for c in range(categories)))
    for s, nvox in enumerate(voxels, 1):
        sub = f"sub{s:03d}"
        mapping = rng.standard_normal((nvox, latent_dim)) / np.sqrt(latent_dim)
        for r in range(1, runs + 1):
            order = rng.permutation(np.repeat(np.arange(categories), blocks_per_category))
            series, onsets = [], {c: [] for c in range(categories)}
            t = 0
            for c in order:
                series += [rng.standard_normal(nvox) * noise for _ in range(rest_volumes)]
                t += rest_volumes
                onsets[c].append((t * tr, block_volumes * tr))
                series += [mapping @ latents[c] + rng.standard_normal(nvox) * noise for _ in range(block_volumes)]
                t += block_volumes
            series += [rng.standard_normal(nvox) * noise for _ in range(rest_volumes)]
            data = (np.stack(series, -1) * 100 + 1000).astype(np.float32).reshape(nvox, 1, 1, -1)
            run_dir = claim(root / sub / "BOLD" / f"task001_run{r:03d}", _WRITER)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(fresh(run_dir / "bold.nii.gz", _WRITER)))
            onset_dir = claim(root / sub / "model" / "model001" / "onsets" / f"task001_run{r:03d}", _WRITER)
            for c, blocks in onsets.items():
                fresh(onset_dir / f"cond{c + 1:03d}.txt", _WRITER).write_text(
                    "".join(f"{o:.1f}\t{d:.1f}\t1\n" for o, d in blocks))
    return root
