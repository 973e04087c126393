"""Worker for tests/test_ddp.py: several training runs on two CPU processes (gloo), in one launch.

    python tests/ddp_multi_worker.py OUT_DIR RS_DATA_DIR RUN [RUN ...]

RUN: ``<task>-<strategy>``; task ``grpo``, ``grpo_pg`` (GRPO with the Prefix Grouper forward) or ``uni``
(Uni-Encoder), strategy ``ddp``, ``fsdp`` (Lightning's FSDPStrategy, FSDP1) or ``fsdp2`` (ModelParallelStrategy);
or a shipped config through the CLI, unchanged but for the run length (``CLI_RUNS``: ``dens3r-ddp``, ``pepsi-ddp``).
The runs share one 2-process launch, which pays the start-up (imports) once: Lightning's launcher re-executes this
command for rank 1, and later Trainers find the process group already up. Rank 0 writes OUT_DIR/<run>.json (per-rank
losses, RNG draws, parameter checksums, no-grad LM-head calls, FSDP units, metrics), OUT_DIR/<run>.ckpt (the
Trainer's checkpoint) and OUT_DIR/<run>_params.pt (the full parameters gathered independently of the checkpoint code:
summon_full_params / DTensor.full_tensor).

GRPO: rank 0's LM head gets a large ``<eos>`` bias in no-grad calls, so its rollouts and greedy validation stop after
one token while rank 1 decodes to the cap: the ranks run different numbers of decode forwards (under FSDP each forward
gathers shards, so this would hang without the task's handling).
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl
import torch
import torch.distributed as dist
from pytorch_lightning.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

from datamodules.llm_prompts import PromptDataModule
from datamodules.llm_response_selection import ResponseSelectionDataModule
from tasks.llm.grpo import GRPOTask
from tasks.llm.uni_encoder import UniEncoderTask

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = timedelta(seconds=90)  # a collective mismatch fails fast instead of the 30 min default
LLAMA = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
         "num_key_value_heads": 2}
BERT = {"family": "bert", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64}


class CPUFSDPStrategy(FSDPStrategy):
    """Lightning's FSDPStrategy on CPU processes, for tests only.

    Lightning refuses ``strategy='fsdp'`` without a GPU ("The strategy `fsdp` requires a GPU accelerator") and, on CPU,
    hands FSDP1 ``device_id=None``, which it rejects ("FSDP needs a non-CPU accelerator device, but no accelerator
    device is detected"); with ``device_id=cpu`` FSDP1 runs on gloo. The LLM tasks wrap their own units inside this
    context (``configure_model``), so the root-wrapping path is not used.
    """

    @contextmanager
    def model_sharded_context(self):
        from torch.distributed.fsdp import FullyShardedDataParallel
        from torch.distributed.fsdp.wrap import enable_wrap

        with enable_wrap(wrapper_cls=FullyShardedDataParallel, cpu_offload=self.cpu_offload,
                         mixed_precision=self.mixed_precision_config, sharding_strategy=self.sharding_strategy,
                         device_id=torch.device("cpu"), **self.kwargs):
            yield

    # Full state dicts without ``offload_to_cpu``. Lightning asks FSDP1 for ``FullStateDictConfig(offload_to_cpu=True)``;
    # on CPU processes (the parameters already live on the CPU) torch 2.11 then segfaults cloning the unsharded
    # parameters in FSDP's post-state-dict hook (``_full_post_state_dict_hook.param_hook``; seen on the H200 image,
    # torch 2.11.0 + Lightning 2.6.6; torch 2.14.1 does not). Turning the offload off is exact here: nothing moves.
    def lightning_module_state_dict(self):
        with _no_cpu_offload():
            return super().lightning_module_state_dict()

    def optimizer_state(self, optimizer):
        with _no_cpu_offload():
            return super().optimizer_state(optimizer)


@contextmanager
def _no_cpu_offload():
    import pytorch_lightning.strategies.fsdp as pl_fsdp

    original = pl_fsdp._get_full_state_dict_context

    def full_state_dict_context(module, world_size, rank0_only=True):
        from torch.distributed.fsdp import FullOptimStateDictConfig, FullStateDictConfig, StateDictType
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        return FSDP.state_dict_type(module, StateDictType.FULL_STATE_DICT,
                                    FullStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only),
                                    FullOptimStateDictConfig(offload_to_cpu=False, rank0_only=rank0_only))

    pl_fsdp._get_full_state_dict_context = full_state_dict_context
    try:
        yield
    finally:
        pl_fsdp._get_full_state_dict_context = original


def strategy(kind: str):
    if kind == "ddp":
        return DDPStrategy(timeout=TIMEOUT)
    if kind == "fsdp":
        return CPUFSDPStrategy(timeout=TIMEOUT, state_dict_type="full")
    return ModelParallelStrategy(data_parallel_size=2, tensor_parallel_size=1, save_distributed_checkpoint=False,
                                 timeout=TIMEOUT)


class Losses(pl.Callback):
    def __init__(self) -> None:
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses.append(float(loss))


def full_params(task: pl.LightningModule) -> dict[str, torch.Tensor]:
    """Full parameters by the sharding library's own gather (not the checkpoint code path)."""
    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp._common_utils import clean_tensor_name
    from torch.distributed.tensor import DTensor

    if any(isinstance(m, FullyShardedDataParallel) for m in task.modules()):
        with FullyShardedDataParallel.summon_full_params(task, writeback=False):
            return {clean_tensor_name(n): p.detach().clone() for n, p in task.named_parameters()}
    return {n: (p.full_tensor() if isinstance(p, DTensor) else p).detach().clone() for n, p in task.named_parameters()}


NOGRAD_HEAD_CALLS = [0]  # LM-head calls without grad on this rank (rollout and validation decode steps)


def fsdp_units(task: pl.LightningModule) -> list[str]:
    """Class names of the modules that are FSDP units (FSDP1 wrappers' inner modules, FSDP2 ``fully_shard`` modules)."""
    from torch.distributed.fsdp import FSDPModule, FullyShardedDataParallel

    names = [type(m.module).__name__ for m in task.modules() if isinstance(m, FullyShardedDataParallel)]
    names += [type(m).__name__.removeprefix("FSDP") for m in task.modules() if isinstance(m, FSDPModule)]
    return sorted(names)


def eos_bias_on_rank0(task: GRPOTask, eos_id: int) -> None:
    def hook(module, args, out):
        if torch.is_grad_enabled():
            return out
        NOGRAD_HEAD_CALLS[0] += 1
        if dist.get_rank() != 0:
            return out
        out = out.clone()
        out[..., eos_id] += 50.0
        return out

    task.policy.get_output_embeddings().register_forward_hook(hook)


def trainer(kind: str, out: Path, run: str, losses: Losses, **kw) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=2, strategy=strategy(kind), logger=False, enable_progress_bar=False,
                      enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
                      default_root_dir=str(out / run), callbacks=[losses], **kw)


def run_grpo(kind: str, out: Path, prefix_grouper: bool = False) -> tuple[pl.Trainer, pl.LightningModule, Losses]:
    pl.seed_everything(0)
    dm = PromptDataModule(batch_size=4, val_batch_size=8, steps_per_epoch=40)
    task = GRPOTask(model="llama", model_kwargs=dict(LLAMA, vocab_size=dm.vocab_size), group_size=3, max_new_tokens=4,
                    sft_warmup_steps=2,
                    lr=3e-3, sft_lr=3e-3, max_grad_norm=0.05, prefix_grouper=prefix_grouper,  # clipping active
                    reward="digit_match")  # partial credit: the group rewards vary, GRPO gradients are not zero
    eos_bias_on_rank0(task, dm.tokenizer.eos_id)
    losses = Losses()
    name = "grpo_pg" if prefix_grouper else "grpo"
    tr = trainer(kind, out, f"{name}-{kind}", losses, max_steps=4, val_check_interval=2, limit_val_batches=1)
    tr.fit(task, datamodule=dm)
    return tr, task, losses


def run_uni(kind: str, out: Path, data: str) -> tuple[pl.Trainer, pl.LightningModule, Losses]:
    pl.seed_everything(0)
    dm = ResponseSelectionDataModule(data, batch_size=4, max_context_len=32, max_response_len=8)
    task = UniEncoderTask(model_kwargs={"backbone": BERT}, lr=2e-3)
    losses = Losses()
    tr = trainer(kind, out, f"uni-{kind}", losses, max_steps=3, val_check_interval=3, limit_val_batches=1)
    tr.fit(task, datamodule=dm)
    return tr, task, losses


_SHORT = ["--trainer.devices=2", "--trainer.accelerator=cpu", "--trainer.max_steps=4", "--trainer.limit_val_batches=1",
          "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false", "--trainer.logger=false",
          "--trainer.enable_checkpointing=false"]
CLI_RUNS = {
    "dens3r-ddp": ["--config", str(ROOT / "configs/dens3r/demo.yaml"), "--trainer.strategy=ddp",
                   "--trainer.val_check_interval=4", *_SHORT],
    # two optimisers stepping on parts of the module (GAN): the task turns on DDP's search for unused parameters
    # itself, so plain `ddp` (the configs/_base/ddp.yaml fragment) works
    "pepsi-ddp": ["--config", str(ROOT / "configs/pepsi/demo.yaml"),
                  "--trainer.strategy=ddp", "--trainer.check_val_every_n_epoch=1",
                  "--trainer.val_check_interval=2", *_SHORT],
}


def run_cli(run: str, out: Path) -> tuple[pl.Trainer, pl.LightningModule, Losses]:
    from tasks._lightning_cli import lightning_cli

    cli = lightning_cli(["fit", *CLI_RUNS[run], f"--trainer.default_root_dir={out / run}"])
    return cli.trainer, cli.model, Losses()


def main() -> None:
    out, data, runs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
    torch.set_num_threads(1)
    for run in runs:
        start = time.perf_counter()
        name, kind = run.split("-")
        NOGRAD_HEAD_CALLS[0] = 0
        if run in CLI_RUNS:
            tr, task, losses = run_cli(run, out)
        elif name == "uni":
            tr, task, losses = run_uni(kind, out, data)
        else:
            tr, task, losses = run_grpo(kind, out, prefix_grouper=name == "grpo_pg")
        tr.save_checkpoint(out / f"{run}.ckpt")  # collective: every rank calls it, rank 0 writes the full state
        params = full_params(task)
        checksum = float(sum(p.double().sum() * (i + 1) for i, p in enumerate(params.values())))
        draws = torch.rand(3).tolist()  # the global RNG after training (GRPO offsets it per rank)
        gathered: list = [None] * tr.world_size
        dist.all_gather_object(gathered, {"losses": losses.losses, "draws": draws, "checksum": checksum,
                                          "nograd_head_calls": NOGRAD_HEAD_CALLS[0]})
        if tr.is_global_zero:
            metrics = {k: float(v) for k, v in tr.callback_metrics.items()}
            finite = (all(math.isfinite(x) for r in gathered for x in r["losses"])
                      and all(math.isfinite(v) for v in metrics.values())
                      and all(bool(p.isfinite().all()) for p in params.values()))
            result = {"world_size": tr.world_size, "global_step": tr.global_step, "ranks": gathered,
                      "units": fsdp_units(task), "seconds": time.perf_counter() - start,
                      "metrics": metrics, "finite": finite}
            (out / f"{run}.json").write_text(json.dumps(result))
            torch.save(params, out / f"{run}_params.pt")
        tr.strategy.barrier()


if __name__ == "__main__":
    main()
