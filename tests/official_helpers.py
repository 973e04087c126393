"""Shared by the tests that run an official implementation beside ours (``benchmarks/*_official.py``): its pinned
wheels installed into a site folder of their own, and the harness run in a clean environment (no other site on the
path, offline, one thread)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def install_site(wheels: list[Path], site: Path, timeout: int = 180) -> Path:
    """``pip install --no-index --no-deps --target site`` of ``wheels``; returns ``site``."""
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *map(str, wheels)], check=True, capture_output=True, timeout=timeout)
    return site


def run_harness(script: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python benchmarks/<script> --device cpu --tiny <args>`` with OMP_NUM_THREADS=1, HF_HUB_OFFLINE=1 and only
    PYTHONPATH / HOME kept from this environment."""
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--device", "cpu", "--tiny", *args],
                          capture_output=True, text=True, timeout=timeout,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                               **{k: os.environ[k] for k in ("PYTHONPATH", "HOME") if k in os.environ}})
