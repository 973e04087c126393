"""Verifiable rewards for GRPO: ``reward(completions, answers) -> list[float]`` (one per completion)."""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence


def exact_match(completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """1 when the completion (stripped) equals the answer, else 0."""
    return [float(c.strip() == a.strip()) for c, a in zip(completions, answers)]


def digit_match(completions: Sequence[str], answers: Sequence[str]) -> list[float]:
    """Exact match plus partial credit: the fraction of answer characters right in place, scaled to [0, 0.5]
    (length mismatch counts against it). Denser than exact match for a policy trained from scratch."""
    out = []
    for c, a in zip(completions, answers):
        c, a = c.strip(), a.strip()
        if c == a:
            out.append(1.0)
            continue
        hits = sum(x == y for x, y in zip(c, a))
        out.append(0.5 * hits / max(len(a), len(c), 1))
    return out


def resolve_reward(name: str | Callable) -> Callable:
    """A reward callable from ``name``: a short name in this module or a dotted path ``pkg.mod.fn``."""
    if callable(name):
        return name
    if "." not in name:
        return globals()[name]
    mod, _, fn = name.rpartition(".")
    return getattr(importlib.import_module(mod), fn)
