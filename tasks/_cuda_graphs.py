"""Whole-step CUDA graphs for a task with static shapes: ``class MyTask(CudaGraphSteps, ZooTask)``.

The training step (forward, loss, backward and a fused optimiser step) is captured once into a CUDA graph and
replayed for every later batch of the same shape; eval/predict forwards replay one graph per input shape. It removes
the host and kernel-launch overhead of a step, which dominates small and medium networks on a fast GPU.

A task opts in by mixing :class:`CudaGraphSteps` in before ``ZooTask``, taking a ``cuda_graphs: bool | str`` init
argument that it hands to :meth:`CudaGraphSteps.init_cuda_graphs` (before ``ZooTask.__init__``), and defining

- :meth:`~CudaGraphSteps.graph_inputs`: the batch tensors the step reads (static buffers are made like them);
- :meth:`~CudaGraphSteps.graph_loss`: ``(loss, stats)`` from those inputs; ``stats`` is a tensor of logged values
  (a copy of the graph's static output is returned, so logging needs no host synchronisation);
- :meth:`~CudaGraphSteps.graph_forward`: the eval forward (for :meth:`~CudaGraphSteps.graphed_forward`);

and a fused optimiser on CUDA in ``configure_optimizers``. Its ``training_step`` calls
:meth:`~CudaGraphSteps.graphed_training_step` when ``automatic_optimization`` is False. ``tasks.reid.ReIDTask`` is
the example.

How it works (``cuda_graphs=True``):
    - Training switches to manual optimisation. The first ``graph_warmup_steps`` (3) steps of a batch shape run
      eagerly on a side stream (momentum buffers, cuDNN autotuning, compilation), then the step is captured.
    - Learning rate: at capture each param group's lr becomes a 0-d fp32 tensor on the GPU that the captured fused
      optimiser reads on every replay; a schedule fills that tensor in place (no recapture); a float assigned to a
      group's lr is copied into it before the next replay; a change of any other hyper-parameter recaptures.
      Schedulers are stepped by this class (``interval`` 'epoch' at the epoch end, 'step' after each step), as
      Lightning does in automatic optimisation.
    - ``trainer.global_step``: the raw optimiser runs inside the graph, not ``LightningOptimizer.step()``, so each
      replay advances Lightning's manual-optimisation step counter (``max_steps``, logging and checkpoint names
      behave as in automatic optimisation).
    - A batch of another shape takes an eager step and the graph is kept. BatchNorm statistics are updated in place
      by the replays; eval runs its own graphs. Moving the module (``.to()``) drops all graphs.
    - Off CUDA it warns once and every step is eager. ``'auto'``: on where the run allows it (one CUDA device,
      32-true or bf16-mixed, no gradient clipping or accumulation, no inductor CUDA-graph compile mode), else the
      plain automatic-optimisation path, said once at fit start.
    - Not supported: compile modes with inductor's own CUDA graphs (reduce-overhead, max-autotune), 16-mixed
      (GradScaler's skip-step check is not capturable), several devices, gradient clipping and accumulation
      (Lightning refuses both in manual optimisation). Hooks around ``backward()``/``optimizer.step()`` run on
      eager steps only.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any, ClassVar

import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

__all__ = ["CudaGraphSteps", "graph_autocast", "inductor_cudagraphs"]


def inductor_cudagraphs(compile_mode: bool | str) -> bool:
    """True for the ``torch.compile`` modes whose inductor output runs under inductor's own CUDA graphs."""
    return isinstance(compile_mode, str) and ("reduce-overhead" in compile_mode or compile_mode == "max-autotune")


def graph_autocast() -> torch.autocast:
    """The current CUDA autocast state with autocast's cast cache off, around every call on the CUDA-graph path.

    A cast cached before a capture (same autocast region) would be read by the graph instead of recomputed: stale
    weights, or memory freed when the region ends. With the cache off every replay casts the live fp32 weights. All
    calls on the graph path (warm-up, capture, eager fallbacks) use this same state, so ``torch.compile``'s guards
    (which include the cache flag) see one global state and nothing recompiles during a capture.
    """
    return torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), enabled=torch.is_autocast_enabled("cuda"),
                          cache_enabled=False)


class _CudaGraphs:
    """A task's captured CUDA graphs and their static buffers; a copy or an unpickled task starts empty."""

    def __init__(self) -> None:
        self.warned = False  # the off-CUDA warning was shown
        self.captures = self.train_replays = self.infer_replays = 0  # totals, kept across reset()
        self.reset()

    def reset(self) -> None:
        """Drop the graphs (the module moved: Lightning's teardown moves it to the CPU after fit, for one)."""
        self.stream: torch.cuda.Stream | None = None  # warm-up side stream
        self.train: dict[str, Any] | None = None  # the training-step graph: key, graph, static inputs/stats, lrs
        self.train_warmup: dict[tuple, int] = {}  # eager warm-up steps done per batch signature
        self.infer: dict[tuple, dict[str, Any]] = {}  # eval-forward graphs per input signature
        self.infer_seen: dict[tuple, int] = {}

    def __getstate__(self) -> dict[str, Any]:
        return {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__()

    def __deepcopy__(self, memo: dict) -> _CudaGraphs:
        return _CudaGraphs()


def _signature(inputs: dict[str, torch.Tensor]) -> tuple:
    return tuple((k, tuple(v.shape), v.dtype) for k, v in inputs.items())


class CudaGraphSteps:
    """Mixin (before ``ZooTask``) that runs whole training steps and eval forwards as captured CUDA graphs; see the
    module docstring for the contract and the behaviour."""

    #: eager steps (on a side stream) of a batch shape before its training step is captured
    graph_warmup_steps: ClassVar[int] = 3
    #: eval-forward graphs kept (one per input shape); further shapes run eagerly
    max_infer_graphs: ClassVar[int] = 4

    # ------------------------------------------------------------------------------------------ to implement
    def graph_inputs(self, batch: Any) -> dict[str, torch.Tensor]:
        """The tensors of a training batch that :meth:`graph_loss` reads (a key absent here is absent there)."""
        raise NotImplementedError

    def graph_loss(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, stats)`` of the training step on ``inputs``; ``stats`` is a tensor (the values to log)."""
        raise NotImplementedError

    def graph_forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The eval forward on ``inputs`` (one output tensor)."""
        raise NotImplementedError

    def graph_static_like(self, name: str, x: torch.Tensor) -> torch.Tensor:
        """The static buffer an input is copied into before each replay (override for a memory format)."""
        return torch.empty_like(x)

    # ------------------------------------------------------------------------------------------------ option
    def init_cuda_graphs(self, cuda_graphs: bool | str, compile: bool | str) -> None:
        """Check and store the option; call it in the task's ``__init__`` before ``ZooTask.__init__``."""
        if cuda_graphs not in (True, False, "auto"):
            raise ValueError(f"cuda_graphs must be true, false or 'auto', not {cuda_graphs!r}")
        if cuda_graphs is True and inductor_cudagraphs(compile):
            raise ValueError(f"cuda_graphs=True captures whole steps itself and cannot contain inductor's CUDA graphs "
                             f"(compile={compile!r}): use compile=True or 'max-autotune-no-cudagraphs'")
        self.cuda_graphs: bool | str = cuda_graphs
        self._graphs = _CudaGraphs()

    @property
    def automatic_optimization(self) -> bool:  # type: ignore[override]
        """False while CUDA graphs may be used: the task then runs the optimiser itself (inside the captured graph)."""
        return not self._graphs_enabled()

    def _graphs_enabled(self) -> bool:
        if self.cuda_graphs == "auto":
            return self._auto_graphs_off_reason() is None
        return bool(self.cuda_graphs)

    def _auto_graphs_off_reason(self) -> str | None:
        """Why ``cuda_graphs='auto'`` stays off for this run (the attached Trainer's settings; without a Trainer,
        the network's device), or None when it is on."""
        if inductor_cudagraphs(self.compile_mode):
            return f"compile={self.compile_mode!r} uses inductor's own CUDA graphs"
        t = self._trainer
        if t is None:
            return None if self.device.type == "cuda" else f"the network is on {self.device}"
        from pytorch_lightning.accelerators import CUDAAccelerator

        if not isinstance(t.accelerator, CUDAAccelerator):
            return f"the accelerator is {type(t.accelerator).__name__}, not CUDA"
        if t.world_size > 1:
            return f"{t.world_size} devices (CUDA graphs run on one GPU)"
        if t.precision not in ("32-true", "bf16-mixed"):
            return f"precision {t.precision} (32-true or bf16-mixed only)"
        if t.gradient_clip_val:
            return "gradient clipping (not available in manual optimisation)"
        if t.accumulate_grad_batches > 1:
            return "gradient accumulation (not available in manual optimisation)"
        return None

    # ------------------------------------------------------------------------------------------ Lightning hooks
    def on_fit_start(self) -> None:
        name = type(self).__name__
        if self.cuda_graphs == "auto":
            reason = self._auto_graphs_off_reason()
            rank_zero_info(f"{name}(cuda_graphs='auto'): " + ("whole-step CUDA graphs on" if reason is None else
                                                              f"off, automatic optimisation ({reason})"))
            return
        if not (self.cuda_graphs and self.device.type == "cuda"):
            return
        if self.trainer.world_size > 1:
            raise ValueError(f"{name}(cuda_graphs=True) runs on one GPU; for multi-device training drop cuda_graphs "
                             "or set it to 'auto' (off where it cannot run)")
        if self.trainer.precision == "16-mixed":
            raise ValueError(f"{name}(cuda_graphs=True) supports precision 32-true or bf16-mixed, not "
                             f"{self.trainer.precision} (GradScaler's skip-step check cannot be captured)")

    def on_train_epoch_end(self) -> None:
        if not self.automatic_optimization:  # Lightning steps the schedulers itself only in automatic optimisation
            self._step_schedulers("epoch")

    def _step_schedulers(self, interval: str) -> None:
        for cfg in self.trainer.lr_scheduler_configs:
            if cfg.interval == interval:
                self.lr_scheduler_step(cfg.scheduler, None)  # the task's hook (timm schedulers take an epoch)

    def _apply(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # .to()/.cuda()/.float() may give parameters new storage that a captured graph would not see
        graphs = self.__dict__.get("_graphs")
        if graphs is not None and (graphs.train is not None or graphs.infer):
            self._drop_train_graph()
            graphs.reset()
        return super()._apply(fn, *args, **kwargs)  # type: ignore[misc]

    # ------------------------------------------------------------------------------------------------ training
    def graphed_training_step(self, batch: Any) -> torch.Tensor:
        """The manual-optimisation training step (inside ``Trainer.fit``): returns the step's ``stats``."""
        stats = self._manual_step(batch, self.optimizers())
        self._step_schedulers("step")
        return stats

    def _graph_path(self) -> bool:
        """Whether this call may use CUDA graphs: the option is on, the network is on a GPU, no ``eager_network()``."""
        if not self._graphs_enabled() or self._eager:
            return False
        if self.device.type == "cuda":
            return True
        if not self._graphs.warned:
            self._graphs.warned = True
            rank_zero_warn(f"{type(self).__name__}(cuda_graphs=True): the network is on {self.device}, not a CUDA "
                           "device; every step runs eagerly (this warning is shown once)")
        return False

    @contextlib.contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Run the block on a side stream that waits for the current stream's work and is waited for after it."""
        g = self._graphs
        if g.stream is None:
            g.stream = torch.cuda.Stream(self.device)
        main = torch.cuda.current_stream(self.device)
        g.stream.wait_stream(main)
        try:
            with torch.cuda.stream(g.stream):
                yield
        finally:
            main.wait_stream(g.stream)

    def _train_key(self, inputs: dict[str, torch.Tensor]) -> tuple:
        return (_signature(inputs), self.net.training,  # type: ignore[union-attr]
                torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))

    @staticmethod
    def _hyper(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
        """The param groups' hyper-parameters a captured optimiser step has baked in (all but params and lr)."""
        return [{k: v for k, v in g.items() if k not in ("params", "lr") and not isinstance(v, torch.Tensor)}
                for g in opt.param_groups]

    def _manual_step(self, batch: Any, opt: Any) -> torch.Tensor:
        """One optimiser step in manual optimisation: a replay of the captured training graph when the batch matches
        it, else an eager step (before the capture: the warm-up steps, on a side stream). ``opt`` is the
        ``LightningOptimizer`` inside ``Trainer.fit`` or a torch optimiser (benchmark). Returns the step's
        statistics (see ``graph_loss``), owned by the caller."""
        lightning = isinstance(opt, LightningOptimizer)
        raw = opt.optimizer if lightning else opt
        inputs = self.graph_inputs(batch)
        if not self._graph_path():
            return self._eager_step(inputs, opt, raw, lightning)
        g = self._graphs
        key = self._train_key(inputs)
        if g.train is None:
            done = g.train_warmup.get(key, 0)
            if done < self.graph_warmup_steps:  # momentum buffers, cuDNN autotuning, compilation before the capture
                g.train_warmup[key] = done + 1
                with self._side_stream(), graph_autocast():
                    return self._eager_step(inputs, opt, raw, lightning)
            self._capture_train(inputs, raw, key)
        elif g.train["key"] != key:  # another batch shape: eager, the graph is kept
            with graph_autocast():
                return self._eager_step(inputs, opt, raw, lightning)
        return self._replay_train(inputs, raw, lightning)

    def _eager_step(self, inputs: dict[str, torch.Tensor], opt: Any, raw: torch.optim.Optimizer, lightning: bool
                    ) -> torch.Tensor:
        raw.zero_grad(set_to_none=self._graphs.train is None)  # a captured graph keeps its gradient buffers
        loss, stats = self.graph_loss(inputs)
        if lightning:
            self.manual_backward(loss)
            opt.step()  # LightningOptimizer: Lightning's hooks, and it counts the step
        else:
            loss.backward()
            raw.step()
        return stats

    def _capture_train(self, inputs: dict[str, torch.Tensor], raw: torch.optim.Optimizer, key: tuple) -> None:
        """Capture forward + loss + backward + optimiser step on static inputs of the batch's signature."""
        name = type(self).__name__
        if not all(grp.get("fused") for grp in raw.param_groups):
            raise RuntimeError(f"{name}(cuda_graphs=True) captures the optimiser step and needs a fused optimiser "
                               "(build it with fused=True on CUDA in configure_optimizers())")
        lrs = []
        for grp in raw.param_groups:  # the schedule fills these in place; the captured kernel reads them
            lr = grp["lr"]
            if not (isinstance(lr, torch.Tensor) and lr.is_cuda and lr.dtype == torch.float32 and lr.dim() == 0):
                lr = torch.tensor(float(lr), dtype=torch.float32, device=self.device)
            grp["lr"] = lr
            lrs.append(lr)
        static = {k: self.graph_static_like(k, v) for k, v in inputs.items()}
        raw.zero_grad(set_to_none=True)  # backward allocates the gradients in the graph's memory pool
        graph = torch.cuda.CUDAGraph()
        t0 = time.perf_counter()
        # thread_local: DataLoader pin-memory threads may call CUDA while this thread captures
        with graph_autocast(), torch.cuda.graph(graph, capture_error_mode="thread_local"):
            loss, stats = self.graph_loss(static)
            loss.backward()
            raw.step()
        self._graphs.train = {"key": key, "graph": graph, "static": static, "stats": stats, "lrs": lrs,
                              "hyper": self._hyper(raw)}
        self._graphs.captures += 1
        shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
        warm = self._graphs.train_warmup.get(key, 0)
        rank_zero_info(f"{name}(cuda_graphs): captured the training step ({shapes}, {warm} eager warm-up steps, "
                       f"{time.perf_counter() - t0:.2f} s)")

    def _replay_train(self, inputs: dict[str, torch.Tensor], raw: torch.optim.Optimizer, lightning: bool
                      ) -> torch.Tensor:
        t = self._graphs.train
        assert t is not None
        for grp, lr in zip(raw.param_groups, t["lrs"]):
            if grp["lr"] is not lr:  # a float (or another tensor) was assigned: the graph reads `lr`
                lr.fill_(grp["lr"])
                grp["lr"] = lr
        if self._hyper(raw) != t["hyper"]:
            rank_zero_info(f"{type(self).__name__}(cuda_graphs): optimiser hyper-parameters changed; recapturing the "
                           "training step")
            self._drop_train_graph()
            self._capture_train(inputs, raw, t["key"])
            t = self._graphs.train
        for k, v in t["static"].items():
            v.copy_(inputs[k], non_blocking=True)
        t["graph"].replay()
        self._graphs.train_replays += 1
        if lightning:
            # The raw optimiser stepped inside the graph, not LightningOptimizer.step(), which is what counts
            # Lightning's manual-optimisation steps: count this one so that trainer.global_step (max_steps,
            # log_every_n_steps, checkpoint names) advances as with opt.step().
            progress = self.trainer.fit_loop.epoch_loop.manual_optimization.optim_step_progress
            progress.increment_ready()
            progress.increment_completed()
        return t["stats"].clone()  # the next replay overwrites the static outputs

    def _drop_train_graph(self) -> None:
        if self._graphs.train is not None:
            self._graphs.train = None
            self.net.zero_grad(set_to_none=True)  # type: ignore[union-attr]  # the gradients live in its pool

    # ---------------------------------------------------------------------------------------------- inference
    def graphed_forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The eval forward as a CUDA-graph replay (a copy of the static output): the first call of a shape runs
        eagerly (warm-up), the second captures, later ones replay; up to ``max_infer_graphs`` shapes."""
        g = self._graphs
        key = (_signature(inputs), torch.is_inference_mode_enabled(), torch.is_autocast_enabled("cuda"),
               torch.get_autocast_dtype("cuda"))
        entry = g.infer.get(key)
        if entry is None:
            seen = g.infer_seen.get(key, 0)
            g.infer_seen[key] = seen + 1
            if seen == 0 or len(g.infer) >= self.max_infer_graphs:  # first sight (the warm-up): eager
                with self._side_stream(), graph_autocast():
                    return self.graph_forward(inputs)
            entry = {"static": {k: self.graph_static_like(k, v) for k, v in inputs.items()},
                     "graph": torch.cuda.CUDAGraph()}
            with graph_autocast(), torch.cuda.graph(entry["graph"], capture_error_mode="thread_local"):
                entry["out"] = self.graph_forward(entry["static"])
            g.infer[key] = entry
            g.captures += 1
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in inputs.items())
            rank_zero_info(f"{type(self).__name__}(cuda_graphs): captured the eval forward ({shapes})")
        for k, v in entry["static"].items():
            v.copy_(inputs[k], non_blocking=True)
        entry["graph"].replay()
        g.infer_replays += 1
        return entry["out"].clone()

    def cuda_graph_counts(self) -> dict[str, int]:
        """Graphs captured and replayed so far (``sharezoo bench`` records them; tests check the path taken)."""
        g = self._graphs
        return {"captures": g.captures, "train_replays": g.train_replays, "infer_replays": g.infer_replays}
