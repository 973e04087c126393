"""PPGFlowECG's fixed-batch sampler (issue 24 item 3): static buffers equal the eager sampler; the CUDA graph too."""
from __future__ import annotations

import pytest
import torch

from zoo.ppgflowecg import StaticSampler, ppgflowecg_tiny


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return ppgflowecg_tiny(flow_pos_init_std=1.0).eval()


def _eager(net, ppg, seed, **kw):
    return net.sample_ecg(ppg, steps=3, generator=torch.Generator().manual_seed(seed), **kw)


def test_static_loop_equals_eager_sampler(net):
    """fp32, N == batch: bit for bit the eager sampler's output with the same generator (posterior ε and initial
    noise drawn in the same order); the posterior-mean option too."""
    ppg = torch.randn(3, 1, net.seq_len)
    s = StaticSampler(net, batch=3, steps=3)
    assert not s.graphed  # no capture off CUDA: the same static-buffer code eagerly
    got = s(ppg, generator=torch.Generator().manual_seed(5))
    assert torch.equal(got, _eager(net, ppg, 5))
    assert torch.equal(s(ppg, generator=torch.Generator().manual_seed(5)), got)  # buffers reused
    mean = net.static_sampler(3, steps=3, sample_posterior=False)(ppg, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(mean, _eager(net, ppg, 5, sample_posterior=False), atol=0, rtol=0)


def test_static_sampler_chunks_and_pads(net):
    """5 windows through a batch-2 sampler (chunks 2, 2, 1 padded): each window as in one eager call."""
    ppg = torch.randn(5, 1, net.seq_len)
    got = StaticSampler(net, batch=2, steps=3)(ppg, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(got, _eager(net, ppg, 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        StaticSampler(net, batch=2, steps=3)(torch.randn(2, 1, net.seq_len + 1))


def test_static_sampler_bf16_within_bound(net):
    """bf16 autocast (Euler state fp32): within 5% relative (L2) of the fp32 sampler on the tiny model."""
    ppg = torch.randn(2, 1, net.seq_len)
    ref = _eager(net, ppg, 2)
    got = StaticSampler(net, batch=2, steps=3, dtype=torch.bfloat16)(ppg, generator=torch.Generator().manual_seed(2))
    assert got.dtype == torch.float32
    assert ((got - ref).norm() / ref.norm()).item() < 0.05


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graph_sampler_equals_eager(net):
    """The captured call replayed: fp32 equals the eager sampler on the GPU (same kernels, TF32 off), twice."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    gpu = ppgflowecg_tiny(flow_pos_init_std=1.0).eval().cuda()
    gpu.load_state_dict(net.state_dict())
    ppg = torch.randn(4, 1, gpu.seq_len, device="cuda")
    s = StaticSampler(gpu, batch=4, steps=3)
    assert s.graphed
    for _ in range(2):  # the first call captures, the second replays
        got = s(ppg, generator=torch.Generator("cuda").manual_seed(3))
        ref = gpu.sample_ecg(ppg, steps=3, generator=torch.Generator("cuda").manual_seed(3))
        torch.testing.assert_close(got, ref, atol=1e-4, rtol=1e-4)
    bf16 = StaticSampler(gpu, batch=4, steps=3, dtype=torch.bfloat16)
    bf = bf16(ppg, generator=torch.Generator("cuda").manual_seed(3))
    assert ((bf - ref).norm() / ref.norm()).item() < 0.05


def test_noise_argument_equals_generator_draws(net):
    ppg = torch.randn(2, 1, net.seq_len)
    g = torch.Generator().manual_seed(4)
    eps, x0 = (torch.randn(2, *net.latent_shape, generator=g) for _ in range(2))
    s = StaticSampler(net, batch=2, steps=3)
    assert torch.equal(s(ppg, noise=(eps, x0)), s(ppg, generator=torch.Generator().manual_seed(4)))


@pytest.mark.script
def test_speed2b_script_tiny_mode(tmp_path):
    """``benchmarks/speed2b_h200.sh tiny``: APE with the graph backend and decode rows, PPGFlowECG's StaticSampler
    rows beside eager fp32, on the CPU at tiny sizes."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    r = subprocess.run(["bash", str(root / "benchmarks/speed2b_h200.sh"), "tiny", str(tmp_path)], cwd=root,
                       capture_output=True, text=True, timeout=600,
                       env={"PATH": f"{root / '.venv/bin'}:/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                            "CUDA_VISIBLE_DEVICES": "", "HOME": str(tmp_path), "PYTHON": sys.executable,
                            **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}})
    assert r.returncode == 0, r.stdout + r.stderr
    ape = [json.loads(x) for x in (tmp_path / "ape_speed2b.jsonl").read_text().splitlines()]
    assert ape[-1]["kind"] == "done"
    assert [x for x in ape if x["kind"] == "parity_graph"][0]["argmax_agreement"] == 1.0
    pt = [x for x in ape if x["kind"] == "point"][0]
    assert pt["ape_query_graph_s"] > 0 and pt["decode_ms_per_token_graph"] > 0 and pt["decode_tokens_match_graph"]
    ppg = [json.loads(x) for x in (tmp_path / "ppgflowecg_speed2b.jsonl").read_text().splitlines()]
    modes = {x["mode"]: x for x in ppg if x.get("bench") == "sample"}
    assert set(modes) == {"eager-fp32", "sampler-fp32", "sampler-bf16"}
    assert modes["sampler-fp32"]["max_abs_diff"] == 0 and modes["sampler-fp32"]["windows_per_s"] > 0
    assert 0 < modes["sampler-bf16"]["max_abs_diff"] < 0.5
