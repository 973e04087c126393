"""Test-suite settings: offline, CPU, quiet."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SHAREZOO_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The default suite is CPU-only: GPUs are hidden unless SHAREZOO_TEST_GPU=1 (`make test-gpu`), which also runs the
# tests marked `gpu` with the GPU visible.
GPU_RUN = os.environ.get("SHAREZOO_TEST_GPU") == "1"
if not GPU_RUN:
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# Fixtures wider than one test (module/session scope: the trained tiny reference LM, its tokenised corpus) run before
# the per-test cache below is set: they use this content-keyed cache under the temp dir, never the user's
# ~/.cache/sharezoo, and later runs on the same machine reuse what it holds.
os.environ["SHAREZOO_CACHE"] = str(Path(tempfile.gettempdir()) / f"sharezoo-test-cache-{os.getuid()}")

import pytest  # noqa: E402
import torch  # noqa: E402

# tiny test models gain nothing from intra-op threads, and on a shared 2-core machine extra threads thrash
torch.set_num_threads(1)



@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own empty weight cache, one intra-op thread and a fixed seed."""
    monkeypatch.setenv("SHAREZOO_CACHE", str(tmp_path / "sharezoo-cache"))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Under SHAREZOO_TEST_GPU=1 a `gpu` test that finds no CUDA device fails instead of skipping: a GPU run whose GPU
    tests all skip would be green for nothing."""
    if not GPU_RUN:
        return
    if not torch.cuda.is_available():
        raise pytest.UsageError("SHAREZOO_TEST_GPU=1 but torch sees no CUDA device (CUDA_VISIBLE_DEVICES="
                                f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r})")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Count the GPU-marked tests that really ran (the GPU run's report quotes this line)."""
    counts: dict[str, int] = {}
    named: list[str] = []  # every xfailed / xpassed / failed test, GPU-marked or not: the run's report names them
    for outcome in ("passed", "failed", "skipped", "xfailed", "xpassed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            if outcome in ("xfailed", "xpassed", "failed", "error") and getattr(rep, "when", "call") in ("call", "setup"):
                named.append(f"{outcome.upper()} {rep.nodeid}")
            if getattr(rep, "when", "call") in ("call", "setup") and "gpu" in getattr(rep, "keywords", {}):
                if outcome == "passed" and rep.when != "call":
                    continue
                counts[outcome] = counts.get(outcome, 0) + 1
    if GPU_RUN:
        for line in named:
            terminalreporter.write_line(line)
    if counts or GPU_RUN:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        terminalreporter.write_line(f"gpu-marked tests ({device}, torch {torch.__version__}): "
                                    + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none ran"))
