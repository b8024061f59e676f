"""Supervised training/fine-tuning on tensors, shared by attacks, BURN and the baselines.

Data are one uint8 image tensor plus labels; augmentation runs on tensors
(:func:`burn_plugin.core.tensors.augment`). A non-finite loss stops training with
:class:`NonFiniteLoss` so the caller can keep its last good state.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tensors import augment, to_float


class NonFiniteLoss(RuntimeError):
    """Raised when the training loss becomes NaN or Inf."""


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, optimizer,
                 batch_size: int = 128, scheduler=None, device="cpu", augment_padding: int = 4,
                 hflip: bool = False, generator: torch.Generator | None = None, drop_last: bool = False,
                 loss_fn: Callable | None = None, on_epoch: Callable | None = None, progress=None,
                 collect_preds: bool = False, ascent: bool = False, grad_clip_norm: float = 0.0) -> list[dict]:
    """Train the pixel-space ``model`` for ``epochs`` on ``(x, y)``; returns per-epoch loss/accuracy.

    ``scheduler`` is stepped once per epoch. ``loss_fn(logits, y)`` defaults to cross-entropy.
    ``progress`` is an optional tqdm-like object updated per batch. With ``collect_preds`` each
    epoch's record holds ``preds``: the training-pass prediction of every sample (-1 if skipped).
    ``ascent`` maximises the loss (``(-loss).backward()``); ``grad_clip_norm > 0`` clips the gradient
    norm before each step. Each epoch's record has the ``lr`` it started with; ``on_epoch`` returning
    True stops training after that epoch.
    """
    loss_fn = loss_fn or F.cross_entropy
    history = []
    n = len(x)
    if n == 0:
        return history
    for epoch in range(epochs):
        model.train()  # on_epoch may have evaluated the model in eval mode
        lr = optimizer.param_groups[0]["lr"]
        order = torch.randperm(n, generator=generator)
        tot_loss, tot_correct, seen, nb = 0.0, 0, 0, 0
        preds = torch.full((n,), -1, dtype=torch.long) if collect_preds else None
        for s in range(0, n, batch_size):
            b = order[s:s + batch_size]
            if drop_last and len(b) < batch_size and n >= batch_size:
                continue
            xb = augment(x[b], padding=augment_padding, hflip=hflip, generator=generator)
            xb, yb = to_float(xb).to(device), y[b].to(device)
            out = model(xb)
            loss = loss_fn(out, yb)
            loss_value = loss.item()
            if not math.isfinite(loss_value):
                raise NonFiniteLoss(f"loss became {loss_value} in epoch {epoch + 1}")
            optimizer.zero_grad(set_to_none=True)
            (-loss if ascent else loss).backward()
            if grad_clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=grad_clip_norm, norm_type=2)
            optimizer.step()
            tot_loss += loss_value
            pred = out.argmax(1)
            tot_correct += int((pred == yb).sum())
            if preds is not None:
                preds[b] = pred.cpu()
            seen += len(b)
            nb += 1
            if progress is not None:
                progress.update(len(b))
        if scheduler is not None:
            scheduler.step()
        rec = {"epoch": epoch, "lr": lr, "train_epoch_loss_avg_over_batch": tot_loss / max(nb, 1),
               "train_acc": tot_correct / max(seen, 1)}
        if preds is not None:
            rec["preds"] = preds
        history.append(rec)
        if on_epoch is not None and on_epoch(rec):
            break
    return history
