"""Fully-sharded data parallel for the LLM tasks: each task shards its own blocks in ``configure_model``.

Two Lightning strategies are supported:

* ``trainer.strategy: fsdp`` (Lightning's ``FSDPStrategy``, PyTorch FSDP1, ``configs/_base/fsdp.yaml``): the task wraps
  each transformer block (the classes in the HF model's ``_no_split_modules``), then each module it calls on its own.
  Lightning then leaves the LightningModule unwrapped. Two reasons to do this instead of Lightning's root wrap: GRPO
  calls ``manual_backward`` inside ``training_step``, which FSDP1 does not allow inside the root module's forward
  (Lightning issues #19626 / #19685: ``Expects BACKWARD_PRE or BACKWARD_POST state but got
  HandleTrainingState.FORWARD``); and GRPO runs the decoder and the LM head as two separate calls, so each of them
  has to gather its own parameters.
* ``ModelParallelStrategy(data_parallel_size=N, tensor_parallel_size=1)`` (FSDP2, ``fully_shard``,
  ``configs/_base/fsdp2.yaml``): the same units, sharded over the data-parallel mesh.

Every parameter must end up in one unit (a parameter outside all units would get no gradient reduction).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn


def fsdp_kind(trainer) -> str | None:
    """``'fsdp'`` (FSDP1, ``FSDPStrategy``), ``'fsdp2'`` (``ModelParallelStrategy``) or None for ``trainer``."""
    if trainer is None:
        return None
    from pytorch_lightning.strategies import FSDPStrategy, ModelParallelStrategy

    if isinstance(trainer.strategy, FSDPStrategy):
        return "fsdp"
    if isinstance(trainer.strategy, ModelParallelStrategy):
        return "fsdp2"
    return None


def _is_sharded(module: nn.Module) -> bool:
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.tensor import DTensor

    return any(isinstance(m, FullyShardedDataParallel) for m in module.modules()) or any(
        isinstance(p, DTensor) for p in module.parameters()
    )


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(root.get_submodule(parent) if parent else root, leaf, new)


def shard_units(task, root: nn.Module, block_classes: Iterable[str], tops: Sequence[str]) -> bool:
    """Shard ``root`` (a submodule of ``task``) for the trainer's strategy; no-op without FSDP or when done already.

    Args:
        task: the LightningModule (its trainer decides the strategy; ``device_mesh`` for FSDP2).
        root: the module to shard.
        block_classes: class names of the repeated blocks, each its own unit (HF ``_no_split_modules``).
        tops: dotted paths (relative to ``root``; ``""`` is ``root`` itself) of the modules the task calls on their
            own, wrapped after the blocks, in this order; together they must hold every parameter of ``root``.

    Returns:
        True when ``root`` is sharded.
    """
    kind = fsdp_kind(task._trainer)
    if kind is None:
        return False
    if _is_sharded(root):
        return True  # configure_model runs again for every trainer call (fit, then test, ...)
    if kind == "fsdp" and "" in tops:
        raise ValueError("FSDP1 replaces each unit in its parent: pass the parent as root, not root itself in tops")
    owned = [{id(p) for p in root.get_submodule(t).parameters()} for t in tops]
    if sum(map(len, owned)) != len(set().union(*owned)):
        raise NotImplementedError(f"FSDP units {list(tops)} share parameters (tied input/output embeddings?)")
    covered = set().union(*owned)
    missing = [n for n, p in root.named_parameters() if id(p) not in covered]
    if missing:
        raise ValueError(f"FSDP units {list(tops)} leave parameters outside every unit: {missing[:5]}")
    names = set(block_classes)
    blocks = [n for n, m in root.named_modules() if type(m).__name__ in names and n not in tops]
    if kind == "fsdp":
        from torch.distributed.fsdp.wrap import wrap  # inside Lightning's model_sharded_context (enable_wrap)

        for n in sorted(blocks, key=lambda s: -s.count(".")):  # innermost first
            _set_submodule(root, n, wrap(root.get_submodule(n)))
        for t in tops:
            _set_submodule(root, t, wrap(root.get_submodule(t)))
        return True
    from torch.distributed.fsdp import fully_shard

    mesh = task.device_mesh
    if mesh["tensor_parallel"].size() > 1:
        raise NotImplementedError("the LLM tasks shard data-parallel only: set tensor_parallel_size=1")
    for n in sorted(blocks, key=lambda s: -s.count(".")):
        fully_shard(root.get_submodule(n), mesh=mesh["data_parallel"])
    for t in tops:
        fully_shard(root.get_submodule(t), mesh=mesh["data_parallel"])
    return True


@torch.no_grad()
def clip_sharded_grad_norm_(parameters: Iterable[nn.Parameter], max_norm: float, strategy) -> torch.Tensor:
    """Global-norm clipping of FSDP1 gradients (``use_orig_params``: each rank holds disjoint shards of them).

    Lightning's ``FSDPPrecision`` refuses norm clipping, and ``FullyShardedDataParallel.clip_grad_norm_`` covers one
    root only (the LLM tasks have one root per separately called module). Returns the total norm.
    """
    import torch.distributed as dist
    from torch.distributed.fsdp import ShardingStrategy

    if strategy.sharding_strategy not in (ShardingStrategy.FULL_SHARD, ShardingStrategy.SHARD_GRAD_OP):
        raise NotImplementedError(f"gradient norm clipping with {strategy.sharding_strategy}")
    grads = [p.grad for p in parameters if p.grad is not None and p.grad.numel()]
    device = strategy.root_device
    sq = torch.zeros((), dtype=torch.float32, device=device)
    for g in grads:
        sq += g.detach().float().pow(2).sum()
    dist.all_reduce(sq)
    total = sq.sqrt()
    coef = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(coef.to(g.dtype))
    return total
