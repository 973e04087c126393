"""zoo.layers.CapturedCall: warm-up calls start from the reset state, the capture does not advance it, and each replay
runs the call once on the live tensors (NEO's decode step, PPGFlowECG's StaticSampler and APE's decoder use it)."""
from __future__ import annotations

import pytest
import torch

from zoo.layers import CapturedCall

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def test_capture_replays_on_live_state_and_resets_before_capture():
    dev = torch.device("cuda")
    count = torch.zeros((), device=dev)
    x = torch.arange(4.0, device=dev)
    out = torch.empty(4, device=dev)
    seen = []

    def fn() -> torch.Tensor:
        count.add_(1)
        out.copy_(x * count)
        return out

    def reset() -> None:
        seen.append(float(count))
        count.zero_()

    call = CapturedCall(fn, dev, warmup=3, reset=reset)
    assert seen == [0.0, 1.0, 1.0, 1.0]  # each warm-up call began from zero; so did the capture
    assert float(count) == 0.0  # capture recorded fn without running it
    x.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0], device=dev))
    torch.testing.assert_close(call(), torch.tensor([1.0, 2.0, 3.0, 4.0], device=dev))
    torch.testing.assert_close(call(), torch.tensor([2.0, 4.0, 6.0, 8.0], device=dev))
    assert call() is out


def test_context_wraps_warmup_and_capture():
    dev = torch.device("cuda")
    a = torch.randn(8, 8, device=dev)
    dtypes = []

    def fn() -> torch.Tensor:
        y = a @ a
        dtypes.append(y.dtype)
        return y

    call = CapturedCall(fn, dev, warmup=1,
                        context=lambda: torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False))
    assert dtypes == [torch.bfloat16, torch.bfloat16]
    a.copy_(torch.eye(8, device=dev))
    torch.testing.assert_close(call().float(), torch.eye(8, device=dev))
