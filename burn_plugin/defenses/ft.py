"""FT, plain fine-tuning on a clean subset: BackdoorBench's simplest baseline, written here (no BackdoorBench code).

FT is BackdoorBench's simplest baseline (``defense/ft.py``): SGD (lr 0.01, momentum 0.9, weight decay
5e-4, cosine schedule) on ``ratio`` = 5% of ``clean_train`` drawn with the seed (or the BackdoorBench
``index`` file, one index per line; both keys keep BackdoorBench's names), train augmentation, 100 epochs by default. Its outputs follow BackdoorBench's FT
(``ft_df.csv`` per epoch, ``ft_df_summary.csv``, ``log/index.txt``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..bench.datasets import choose_clean_index, index_text
from ..core.config import ConfigBase, _num, need
from ..core.tensors import PixelSpaceModel
from ..core.train import NonFiniteLoss, train_epochs
from ..errors import NonFiniteLossError
from ..fileio import save_text
from .registry import defense


@dataclass
class FTConfig(ConfigBase):
    """FT's settings: SGD with a cosine schedule on a clean subset of ``clean_train``, as BackdoorBench's FT
    baseline (``defense/ft.py``) runs it; key names are BackdoorBench's."""

    label = "FT"
    _HELP = {
        "epochs": "fine-tuning epochs (cosine learning-rate schedule over them)",
        "lr": "SGD learning rate",
        "sgd_momentum": "SGD momentum",
        "wd": "SGD weight decay",
        "batch_size": "fine-tuning batch size",
        "ratio": "share of the record's clean_train drawn (with random_seed) as the fine-tuning set",
        "index": "file of clean_train indices, one per line, used instead of drawing with ratio (empty: draw)",
        "random_seed": "seed for the clean-subset draw, shuffling and augmentation",
        "eval_every_epoch": "ACC/ASR/RA after every epoch (BackdoorBench's); false: after the last only",
    }

    epochs: int = 100
    lr: float = 0.01
    sgd_momentum: float = 0.9
    wd: float = 5e-4
    batch_size: int = 256
    ratio: float = 0.05
    index: str = ""
    random_seed: int = 0
    eval_every_epoch: bool = True   # ACC/ASR/RA after every epoch (BackdoorBench's); false: after the last only

    def validate(self) -> None:
        need(isinstance(self.epochs, int) and self.epochs >= 0, f"epochs must be an integer >= 0, got {self.epochs!r}")
        for k in ("lr", "sgd_momentum", "wd"):
            need(_num(getattr(self, k)) and getattr(self, k) >= 0, f"{k} must be a number >= 0, got {getattr(self, k)!r}")
        need(_num(self.ratio) and 0 < self.ratio <= 1,
             f"ratio (share of clean_train used) must lie in (0, 1], got {self.ratio!r}")
        need(isinstance(self.batch_size, int) and self.batch_size >= 1,
             f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(isinstance(self.eval_every_epoch, bool), f"eval_every_epoch must be true or false, got "
             f"{self.eval_every_epoch!r}")


@defense("ft", FTConfig, label="FT", fast=("--epochs", "2"), backdoorbench_script=False)
def _ft(*, record, model, config, device, evaluator, out: Path, resume, progress, extra) -> dict:
    cfg = config or FTConfig()
    clean = record.tensors("clean_train")
    idx = choose_clean_index(len(clean), cfg.ratio, cfg.random_seed, cfg.index)
    torch.manual_seed(cfg.random_seed)
    spec = record.spec
    pixel = PixelSpaceModel(model, spec.mean3, spec.std3).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.sgd_momentum, weight_decay=cfg.wd)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1))
    history: list[dict] = []
    timings = {"finetune_s": 0.0, "eval_s": 0.0}

    def on_epoch(rec):
        t0 = time.time()
        row = {"epoch": rec["epoch"], "train_epoch_loss_avg_over_batch": rec["train_epoch_loss_avg_over_batch"],
               "train_acc": rec["train_acc"]}
        if cfg.eval_every_epoch or rec["epoch"] == cfg.epochs - 1:
            row.update(evaluator(pixel))
        history.append(row)
        timings["eval_s"] += time.time() - t0

    t0 = time.time()
    x, y = clean.x[torch.from_numpy(idx)], clean.label[torch.from_numpy(idx)]
    try:
        train_epochs(pixel, x, y, epochs=cfg.epochs, optimizer=opt, scheduler=sched, batch_size=cfg.batch_size,
                     device=device, hflip=spec.hflip, generator=torch.Generator().manual_seed(cfg.random_seed),
                     on_epoch=on_epoch)
    except NonFiniteLoss as exc:
        raise NonFiniteLossError(f"FT: {exc}; lower --lr") from None
    timings["finetune_s"] = time.time() - t0 - timings["eval_s"]
    return {"model": model, "history": history, "timings": timings,
            "files": {"log/index.txt": lambda p: save_text(index_text(idx), p)},
            "data_used": f"{cfg.ratio:.0%} clean subset of clean_train ({len(idx)} samples)"}
