"""`python -m compresslab.train` for the DDP test, with one callback more in every fit: each rank
saves its trained weights to $DDP_WEIGHTS_DIR/rank<r>.pt, so the test can compare the ranks.
Lightning starts the other rank by running this same script again."""

from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
import torch

from compresslab import training


class SaveWeights(pl.Callback):
    def on_train_end(self, trainer, pl_module):
        out = Path(os.environ["DDP_WEIGHTS_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"global_step": trainer.global_step,
                    "state_dict": {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}},
                   out / f"rank{trainer.global_rank}.pt")


_make_trainer = training.make_trainer


def make_trainer(cfg, out_dir, epochs, loggers=(), checkpoints=True, has_val=True, callbacks=()):
    return _make_trainer(cfg, out_dir, epochs, loggers, checkpoints, has_val, [*callbacks, SaveWeights()])


training.make_trainer = make_trainer

if __name__ == "__main__":
    from compresslab.train import main

    main()
