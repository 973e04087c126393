"""Test-suite settings: offline, CPU, quiet."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("SHAREZOO_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
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
