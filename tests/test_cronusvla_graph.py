"""CronusVLAPolicy(cuda_graphs=True): off CUDA the same eager calls (identical actions); on CUDA the captured VLM
pass and DDIM + CFG sampling replay to the eager actions (fp32), across history padding and a prompt-length change."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.cronusvla_policy import CronusVLAPolicy


def _model(device: str = "cpu") -> torch.nn.Module:
    torch.manual_seed(0)
    model = zoo.create_model("cronusvla_tiny").eval()
    torch.nn.init.normal_(model.decoder.head.weight, std=0.5)  # the zero-initialised head would ignore the features
    return model.to(device)


def _prompt(n: int) -> torch.Tensor:
    ids = torch.randint(3, 250, (1, n))
    ids[:, 0], ids[:, -1] = 1, 2
    return ids


def _episode(policy: CronusVLAPolicy, frames: list[torch.Tensor], prompts: dict[int, torch.Tensor],
             reseed: bool) -> tuple[list[np.ndarray], list[torch.Tensor]]:
    """Actions and normalised chunks over ``frames``; ``prompts[i]`` replaces the prompt before step i."""
    acts, feats = [], []
    for i, img in enumerate(frames):
        if i in prompts:
            policy.set_prompt(prompts[i])
        if reseed:  # CUDA: the device generator draws the noise
            torch.manual_seed(100 + i)
        acts.append(policy.act(img))
        feats.append(policy.history[-1].clone())
    return acts, feats


def test_graph_option_is_eager_off_cuda():
    model = _model()
    torch.manual_seed(1)
    frames = [torch.rand(3, 28, 28) for _ in range(5)]
    prompts = {0: _prompt(9), 3: _prompt(12)}  # steps 0-1 pad the history (M = 3); step 3 changes the prompt length
    ref = CronusVLAPolicy(model, prompts[0], num_steps=3, seed=7)
    pol = CronusVLAPolicy(model, prompts[0], num_steps=3, seed=7, cuda_graphs=True)
    a, fa = _episode(ref, frames, prompts, reseed=False)
    b, fb = _episode(pol, frames, prompts, reseed=False)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    for x, y in zip(fa, fb):
        assert torch.equal(x, y)
    assert pol.captured_graphs == 0  # nothing captured off CUDA
    assert len(set(map(bytes, map(np.ndarray.tobytes, a)))) == len(a)  # padding, then a full cache: all differ


@pytest.mark.gpu
def test_graphed_policy_equals_eager_on_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = _model("cuda")
    torch.manual_seed(1)
    frames = [torch.rand(3, 28, 28) for _ in range(6)]
    prompts = {0: _prompt(9), 3: _prompt(14)}  # the first 3 steps pad the history; step 3 changes the prompt length
    ref = CronusVLAPolicy(model, prompts[0], num_steps=3)
    pol = CronusVLAPolicy(model, prompts[0], num_steps=3, cuda_graphs=True)
    a, fa = _episode(ref, frames, prompts, reseed=True)
    b, fb = _episode(pol, frames, prompts, reseed=True)
    assert pol.captured_graphs == 3  # VLM pass at two prompt lengths, one sampler
    for x, y in zip(fa, fb):
        torch.testing.assert_close(y, x, rtol=1e-3, atol=1e-3)
    for x, y in zip(a, b):
        np.testing.assert_allclose(y, x, rtol=1e-3, atol=1e-3)
    # same prompt, same frame, same generator state: a replay after the capture draws the eager noise again
    torch.manual_seed(5)
    c = ref.sample(ref.features(frames[0]))
    torch.manual_seed(5)
    d = pol.sample(pol.features(frames[0]))
    torch.testing.assert_close(d, c, rtol=1e-3, atol=1e-3)


@pytest.mark.script
def test_bench_step_graph_modes_smoke(tmp_path):
    """bench_cronusvla.py --modes graph on the CPU: rows with the eager-vs-graphed check (no CUDA, so
    nothing is captured and the check is exact)."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "cv.jsonl"
    r = subprocess.run([sys.executable, str(root / "benchmarks/bench_cronusvla.py"), "--device", "cpu", "--tiny",
                        "--benches", "step,train", "--modes", "graph", "--out", str(out)], capture_output=True,
                       text=True, timeout=300, cwd=root,
                       env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1",
                            **{k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}})
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(x["bench"], x["mode"]) for x in rows] == [("step", "graph")]  # train has no graph mode here
    row = rows[0]
    assert row["cuda_graphs"] and row["captured_graphs"] == 0 and row["graph_check_ok"]
    assert row["graph_check_action_max_abs"] == 0 and row["graph_check_action_scale"] > 0
