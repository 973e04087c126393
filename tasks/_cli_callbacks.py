"""Callbacks the ``sharezoo`` runs add on their own: a progress bar whose header shows a real total."""
from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import RichProgressBar


def train_description(trainer: pl.Trainer) -> str:
    """``Epoch 3/29`` for an epoch-bounded run; ``Epoch 3 · step 120/600`` when ``max_steps`` bounds it (Lightning
    sets ``max_epochs=-1`` then, and its own bar shows ``Epoch 3/-2``)."""
    epoch = trainer.current_epoch
    if trainer.max_steps is not None and trainer.max_steps > 0:
        return f"Epoch {epoch} · step {trainer.global_step}/{trainer.max_steps}"
    if trainer.max_epochs is not None and trainer.max_epochs > 0:
        return f"Epoch {epoch}/{trainer.max_epochs - 1}"
    return f"Epoch {epoch}"


class ZooProgressBar(RichProgressBar):
    """Lightning's rich progress bar with :func:`train_description` as the training bar's header (the step count is
    refreshed after every batch of a step-bounded run)."""

    def _get_train_description(self, current_epoch: int) -> str:  # the one place RichProgressBar builds the header
        text = train_description(self.trainer)
        width = len(self.validation_description)
        return f"{text:{width}}" if len(text) < width else text

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if (trainer.max_steps or 0) > 0 and self.progress is not None and self.train_progress_bar_id is not None \
                and not self.is_disabled:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))


def _rng_states() -> dict[str, Any]:
    import random

    import numpy as np
    import torch

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    # plain tensors, ints and tuples only: checkpoints load with weights_only=True
    states: dict[str, Any] = {"torch": torch.get_rng_state(),
                              "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
                              "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    import random

    import numpy as np
    import torch

    torch.set_rng_state(states["torch"])
    name, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class ExactResume(pl.Callback):
    """Seeded runs resume bit-exactly at epoch boundaries (``sharezoo fit --ckpt_path last``).

    A checkpoint holds the global RNG states (torch, CUDA, NumPy, Python) of the moment it was written; the first
    training epoch after a resume starts from them instead of from the freshly seeded ones. At every training epoch
    start, a training dataset loaded in the main process (``num_workers=0``) that has ``reseed(seed)`` (its own
    augmentation generators, e.g. the albumentations pipeline of ``datamodules.reid``) is reseeded from the global
    torch RNG, so its stream is a function of the restored state too. Worker processes draw their seeds from the
    same global RNG when each epoch's loader starts, so non-persistent workers resume exactly as well; persistent
    workers keep streams that no checkpoint holds, and a resume with them warns that it is not bit-exact.
    Mid-epoch checkpoints (e.g. written on SIGTERM) resume where Lightning can, without this guarantee.
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"rng": _rng_states()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = state_dict.get("rng")

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        import torch

        if self._pending is not None:
            _set_rng_states(self._pending)
            self._pending = None
            if any(getattr(dl, "persistent_workers", False) for dl in _loaders(trainer.train_dataloader)):
                from pytorch_lightning.utilities import rank_zero_warn

                rank_zero_warn("resumed with persistent dataloader workers: their augmentation streams are not in "
                               "the checkpoint, so this resume is not bit-exact (set num_workers=0 or "
                               "persistent_workers=False for an exact one)")
        for dl in _loaders(trainer.train_dataloader):
            ds = getattr(dl, "dataset", None)
            if getattr(dl, "num_workers", 1) == 0 and hasattr(ds, "reseed"):
                ds.reseed(int(torch.randint(0, 2 ** 31 - 1, ()).item()))


def _loaders(obj: Any) -> list[Any]:
    """The DataLoaders inside ``trainer.train_dataloader`` (one, or a list/dict/CombinedLoader of several)."""
    if obj is None:
        return []
    if hasattr(obj, "flattened"):  # CombinedLoader
        return list(obj.flattened)
    if isinstance(obj, dict):
        return [x for v in obj.values() for x in _loaders(v)]
    if isinstance(obj, (list, tuple)):
        return [x for v in obj for x in _loaders(v)]
    return [obj]


#: the checkpoint a SIGTERM leaves (its name starts with ``last``, so ``--ckpt_path last`` resumes from it)
SIGTERM_CHECKPOINT = "last-sigterm.ckpt"


class SigtermCheckpoint(pl.Callback):
    """On SIGTERM (a scheduler's pre-emption, ``kill``), Lightning stops the loop at the next step; this writes
    ``<checkpoint dir>/last-sigterm.ckpt`` first, so ``--ckpt_path last`` resumes from it. ``sharezoo`` then exits
    with status 143 (128 + SIGTERM) instead of Lightning's 0."""

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        from pathlib import Path

        from pytorch_lightning.utilities.exceptions import SIGTERMException
        from pytorch_lightning.utilities.rank_zero import rank_zero_info

        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        ckpt = trainer.checkpoint_callback
        folder = getattr(ckpt, "dirpath", None) or Path(trainer.default_root_dir, "checkpoints")
        path = Path(folder, SIGTERM_CHECKPOINT)
        trainer.save_checkpoint(path)
        rank_zero_info(f"SIGTERM: wrote {path} (epoch {trainer.current_epoch}, step {trainer.global_step}); "
                       f"resume with --ckpt_path last")


class EpochEndLastCheckpoint(pl.Callback):
    """``last.ckpt`` at every training epoch end, written BEFORE that epoch's validation runs.

    Lightning runs an epoch-end validation before ``on_train_epoch_end``, and its ``ModelCheckpoint`` saves after it
    (and, when ``check_val_every_n_epoch != 1``, only after a validation): a run of the paper config (validation
    every 30 epochs) that died in its first validation (a bad file) had no checkpoint at all. This writes the
    ``last`` checkpoint of every ``ModelCheckpoint(save_last=...)`` when an epoch's training is done: as the
    epoch-end validation starts, and at the epoch end of an epoch without validation; through that callback (same
    folder and name, so ``--ckpt_path last`` resumes from it with the next epoch; Lightning does not repeat the
    interrupted validation: ``sharezoo validate --ckpt_path`` runs it). Its top-k and monitored saves stay where they
    were (validation end); mid-epoch validations (``val_check_interval``) are left alone.
    """

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        loop = trainer.fit_loop.epoch_loop
        if not trainer.sanity_checking and loop._num_ready_batches_reached():
            self._save_last(trainer)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._save_last(trainer)

    @staticmethod
    def _save_last(trainer: pl.Trainer) -> None:
        from pytorch_lightning.callbacks import ModelCheckpoint

        for cb in trainer.checkpoint_callbacks:
            if not isinstance(cb, ModelCheckpoint) or not cb.save_last or cb._should_skip_saving_checkpoint(trainer):
                continue  # also: this step is saved already (e.g. at this epoch's validation end)
            saved_step = cb._last_global_step_saved
            cb._save_last_checkpoint(trainer, cb._monitor_candidates(trainer))
            cb._last_global_step_saved = saved_step  # its own saves of this step (validation / epoch end) still happen
