"""Worker for tests/test_ddp.py: tiny FusionReID fit / test on CPU processes (gloo), one process or DDP.

    python tests/ddp_reid_worker.py fit|test DATA_ROOT OUT_DIR DEVICES [CKPT]

Lightning's DDP launcher re-executes this command for every extra rank; rank 0 writes OUT_DIR/<mode>_<N>.json.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from datamodules.reid import ReIDDataModule  # noqa: E402
from tasks.reid import ReIDTask  # noqa: E402


def main() -> None:
    mode, root, out, devices = sys.argv[1], sys.argv[2], Path(sys.argv[3]), int(sys.argv[4])
    ckpt = sys.argv[5] if len(sys.argv) > 5 else None
    torch.set_num_threads(1)
    pl.seed_everything(0, workers=True)
    # P x K = 2 x 4 per rank; eval batches of 5 so the distributed eval sampler must pad (and the task de-duplicate)
    dm = ReIDDataModule(root, layout="market1501", image_size=(64, 32), batch_size=8, num_instances=4,
                        test_batch_size=5, num_workers=0, pin_memory=False)
    trainer = pl.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                         max_epochs=2, logger=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, limit_val_batches=0, default_root_dir=str(out / "run"),
                         deterministic=True)  # SyncBatchNorm is GPU-only in PyTorch
    if mode == "fit":
        task = ReIDTask(model="fusionreid_tiny", model_kwargs={"pretrained_backbone": False}, lr=0.02,
                        warmup_epochs=1)
        trainer.fit(task, datamodule=dm)
        trainer.save_checkpoint(out / "ddp.ckpt")  # collective: every rank calls it, rank 0 writes
        result = {"global_step": trainer.global_step, "world_size": trainer.world_size}
    else:
        task = ReIDTask.load_from_checkpoint(ckpt, map_location="cpu")
        result = trainer.test(task, datamodule=dm, verbose=False)[0]
    if trainer.is_global_zero:
        (out / f"{mode}_{devices}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
