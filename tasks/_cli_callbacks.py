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
