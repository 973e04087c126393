"""Capture one fixed-shape call as a CUDA graph: the warm-up / side-stream / capture sequence that every graphed path
here shares (NEO's static decode step, PPGFlowECG's ``StaticSampler``, APE's fixed-shape decoder)."""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch


class CapturedCall:
    """``fn`` (no arguments; static input/output tensors) captured as a CUDA graph after ``warmup`` eager calls on a
    side stream; calling the object replays the graph and returns the tensors ``fn`` returned at capture.

    Args:
        fn: the call to capture; it reads and writes only tensors that live as long as this object.
        device: the CUDA device.
        warmup: eager calls before the capture (at least one: lazy initialisation and autotuning happen there).
        reset: called before each warm-up call and before the capture, e.g. to put state that ``fn`` advances back
            where the real calls start (capture records ``fn`` without running it).
        context: a factory of a context entered around the warm-up calls and the capture (e.g. an autocast with its
            weight-cast cache off, so that every replay casts the live weights).
    """

    def __init__(self, fn: Callable[[], Any], device: torch.device, warmup: int = 1,
                 reset: Callable[[], None] | None = None,
                 context: Callable[[], contextlib.AbstractContextManager] | None = None) -> None:
        reset = reset or (lambda: None)
        context = context or contextlib.nullcontext
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream), context():
            for _ in range(max(warmup, 1)):
                reset()
                fn()
        torch.cuda.current_stream(device).wait_stream(stream)
        torch.cuda.synchronize(device)
        reset()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, capture_error_mode="thread_local"), context():
            self.out = fn()
        torch.cuda.synchronize(device)

    def __call__(self) -> Any:
        self.graph.replay()
        return self.out
