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


@pytest.fixture()
def run_notebook():
    """``run_notebook(name, cwd, env=None, edit=None)`` executes ``notebooks/<name>`` in a python3 Jupyter kernel
    (offline, CPU, one thread, the repository importable) and returns the code cells' outputs; the test is skipped
    when no kernel is installed. ``edit(nb)`` may change the notebook before it runs."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def run(name, cwd, env=None, edit=None, timeout=300):
        nbformat = pytest.importorskip("nbformat")
        nbclient = pytest.importorskip("nbclient")
        try:
            from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

            KernelSpecManager().get_kernel_spec("python3")
        except (ImportError, NoSuchKernel) as e:
            pytest.skip(f"no python3 Jupyter kernel (pip install ipykernel): {e}")
        nb = nbformat.read(root / "notebooks" / name, as_version=4)
        if edit is not None:
            edit(nb)
        # MPLBACKEND is dropped so the kernel's inline backend renders the figures
        kernel_env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
        kernel_env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", NO_ALBUMENTATIONS_UPDATE="1",
                          **({} if GPU_RUN else {"CUDA_VISIBLE_DEVICES": ""}),
                          PYTHONPATH=os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")])))
        kernel_env.update(env or {})
        nbclient.NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                resources={"metadata": {"path": str(cwd)}}).execute(env=kernel_env)
        return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]

    return run


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
    for outcome in ("passed", "failed", "skipped", "xfailed", "xpassed", "error"):
        for rep in terminalreporter.stats.get(outcome, []):
            if getattr(rep, "when", "call") in ("call", "setup") and "gpu" in getattr(rep, "keywords", {}):
                if outcome == "passed" and rep.when != "call":
                    continue
                counts[outcome] = counts.get(outcome, 0) + 1
    if counts or GPU_RUN:
        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device"
        terminalreporter.write_line(f"gpu-marked tests ({device}, torch {torch.__version__}): "
                                    + (", ".join(f"{n} {k}" for k, n in sorted(counts.items())) or "none ran"))
