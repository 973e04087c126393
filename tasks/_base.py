"""``ZooTask``: the LightningModule base every task builds on.

It owns the network built through :func:`zoo.create_model`, the ``compile`` switch (the compiled wrapper is
kept outside the module tree so checkpoints keep clean keys; ``compile="regional"`` compiles the model's repeated
blocks in place instead, a fraction of the cold-compile time), and the data links: model kwargs such as
``num_classes`` that, when the config leaves them out, are read from the datamodule in ``setup`` and written
back into the hyperparameters so ``load_from_checkpoint`` needs no config; and ``init_from``, the earlier stage's
checkpoint a training stage starts from.
"""
from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from torch import nn

import zoo

# set while ``load_from_checkpoint`` rebuilds a task: the checkpoint holds every weight, so ``init_from`` is not read
_RESTORING: contextvars.ContextVar[bool] = contextvars.ContextVar("sharezoo_task_restoring", default=False)


class ZooTask(pl.LightningModule):
    """Base task.

    Args:
        model: registered model name (``zoo.list_models()``), ``name.tag``, ``hf-hub:`` or ``local-dir:``.
        pretrained: False, True, a weight tag, or a local weight file/folder.
        model_kwargs: constructor overrides for the model.
        compile: compile the network with ``torch.compile``: False, True, a mode such as 'max-autotune', or
            'regional' — compile each block the model lists in ``compile_regions()`` (its transformer blocks) in
            place, leaving the rest eager; blocks of one class share one compiled graph, so the cold compile costs
            about one block's instead of the whole forward + backward's (PyTorch's regional-compilation recipe).
        init_from: an earlier stage's checkpoint loaded into the network when it is built (after ``pretrained``): a
            sharezoo Lightning ``.ckpt``, a safetensors file or folder, or an upstream checkpoint (through the
            family's converter); keys under ``init_exclude`` are kept. Not read by ``load_from_checkpoint``.
    """

    #: model kwargs that are taken from the datamodule (same attribute name) when not given
    data_links: ClassVar[tuple[str, ...]] = ()
    #: model key prefixes that ``init_from`` neither loads nor requires (what this stage trains from scratch)
    init_exclude: ClassVar[tuple[str, ...]] = ()
    #: the task's config key for ``init_from`` (named in its errors)
    init_key: ClassVar[str] = "init_from"

    def __init__(
        self,
        model: str,
        pretrained: bool | str = False,
        model_kwargs: dict[str, Any] | None = None,
        compile: bool | str = False,
        init_from: str | None = None,
    ) -> None:
        super().__init__()
        self.model_name = model
        self.pretrained = pretrained
        self.init_from = init_from
        self.model_kwargs = dict(model_kwargs or {})
        self.compile_mode = compile
        self.net: nn.Module | None = None
        object.__setattr__(self, "_compiled", None)
        object.__setattr__(self, "_regions", [])  # modules compiled in place by compile="regional"
        self._eager = False  # inside ``eager_network()``
        if all(k in self.model_kwargs for k in self.data_links):
            self._build()

    # ----------------------------------------------------------------------------------------------- build
    def _build(self) -> None:
        self.net = self.create_network()
        if self.init_from and not _RESTORING.get():
            self.load_init()
        if self.compile_mode == "regional":
            object.__setattr__(self, "_regions", [m for m in self.compile_regions() if m is not None])
            for m in self._regions:  # nn.Module.compile: in place, so parameter names and checkpoints are unchanged
                m.compile()
        elif self.compile_mode:
            mode = None if self.compile_mode is True else str(self.compile_mode)
            object.__setattr__(self, "_compiled", torch.compile(self.net, mode=mode))
        self.on_net_built()

    def create_network(self) -> nn.Module:
        """Build the network (hook: the LLM tasks build causal LMs from a spec here)."""
        return zoo.create_model(self.model_name, pretrained=self.pretrained, **self.model_kwargs)

    def compile_regions(self) -> list[nn.Module]:
        """The blocks ``compile='regional'`` compiles in place: the model's ``compile_regions()``."""
        regions = getattr(self.net, "compile_regions", None)
        if regions is None:
            raise ValueError(f"compile='regional': {self.model_name} ({type(self.net).__name__}) lists no "
                             "compile_regions(); use compile: true to compile the whole network")
        return list(regions())

    def load_init(self) -> None:
        """Load ``init_from`` into the network (all keys but ``init_exclude``'s, strictly)."""
        path = Path(self.init_from)  # type: ignore[arg-type]
        if not (path.is_file() or (path / "model.safetensors").is_file()):
            raise FileNotFoundError(
                f"{type(self).__name__}: {self.init_key}={self.init_from!s} does not exist (the earlier stage's "
                f"checkpoint this stage starts from, e.g. <stage-1 run>/checkpoints/last.ckpt): set "
                f"--model.init_args.{self.init_key} to that file, or null to start from `pretrained`"
            )
        zoo.load_checkpoint(self.net, path, exclude=self.init_exclude)  # type: ignore[arg-type]

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        """Lightning's ``load_from_checkpoint``; the network is built without reading ``init_from`` (the checkpoint
        holds every weight, and that earlier file may be gone). The file is unpickled with ``weights_only=True``
        unless a caller says otherwise."""
        kwargs.setdefault("weights_only", True)
        token = _RESTORING.set(True)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            _RESTORING.reset(token)

    def on_net_built(self) -> None:
        """Hook for subclasses: build what depends on the network (metrics sized by num_classes, EMA, ...)."""

    def setup(self, stage: str) -> None:
        if self.net is None:
            dm = self.trainer.datamodule if self._trainer is not None else None
            missing = [k for k in self.data_links if k not in self.model_kwargs]
            if dm is None or any(not hasattr(dm, k) for k in missing):
                raise ValueError(
                    f"{type(self).__name__} needs model_kwargs {missing} or a datamodule that provides them"
                )
            for k in missing:
                self.model_kwargs[k] = getattr(dm, k)
            if "model_kwargs" in self.hparams:
                self.hparams["model_kwargs"] = dict(self.model_kwargs)
            self._build()

    @property
    def network(self) -> nn.Module:
        """The network to call: the compiled wrapper when ``compile`` is on, else the plain module."""
        if self.net is None:
            raise RuntimeError("the network is built in setup(); pass the data-linked model_kwargs to build it now")
        if self._compiled is not None and not self._eager:
            return self._compiled
        return self.net

    @contextlib.contextmanager
    def eager_network(self) -> Iterator[nn.Module]:
        """Within the block ``network`` is the plain module, not the ``torch.compile`` wrapper, and a task skips its
        own CUDA graphs: for FLOP counting (a ``TorchDispatchMode`` must not see the first compilation), profiling
        or debugging. Yields the plain module."""
        if self.net is None:
            raise RuntimeError("the network is built in setup(); pass the data-linked model_kwargs to build it now")
        previous, self._eager = self._eager, True
        # regions compiled in place run eagerly inside the block (nn.Module.compile keeps the compiled callable in
        # _compiled_call_impl; without it a module calls its forward directly)
        stashed = [(m, m._compiled_call_impl) for m in self._regions]
        for m, _ in stashed:
            m._compiled_call_impl = None
        try:
            yield self.net
        finally:
            self._eager = previous
            for m, fn in stashed:
                m._compiled_call_impl = fn

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.network(*args, **kwargs)

    # ------------------------------------------------------------------------------------- benchmark hooks
    def example_batch(self, batch_size: int) -> Any:
        """A synthetic training batch of the real shapes for ``training_step`` (used by ``sharezoo bench``)."""
        raise NotImplementedError(f"{type(self).__name__} does not define example_batch() for benchmarking")

    def example_inputs(self, batch_size: int) -> tuple:
        """Synthetic positional inputs of the real shapes for ``self.network(*inputs)`` (inference benchmark)."""
        raise NotImplementedError(f"{type(self).__name__} does not define example_inputs() for benchmarking")
