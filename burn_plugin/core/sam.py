"""Sharpness-aware minimisation (SAM) and the detection model it trains.

SAM (Foret, Kleiner, Mobahi & Neyshabur, "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021) minimises ``max_{||e|| <= rho} L(w + e)``. Its first-order step
(the paper's Algorithm 1 with p = 2):

1. ``g = grad L(w)`` on the batch;
2. ``e = rho * g / ||g||_2`` (the norm over *all* parameters together), the ascent to ``w + e``;
3. ``g_sam = grad L(w + e)`` on the same batch;
4. back to ``w`` and one step of the base optimiser with ``g_sam``.

Re-implemented from the paper's text; no code was copied. A zero gradient (``||g|| = 0``) gives no
ascent (``e = 0``), so the step is the base optimiser's plain step.

Batch normalisation: the second forward pass (at ``w + e``) leaves the running statistics alone
(their momentum is 0 for that pass), so they keep tracking the weights the model actually has; the
paper is silent on this and it changes nothing for models without batch norm.

Usage::

    opt = SAM(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), rho=0.05)
    def closure():
        return F.cross_entropy(model(xb), yb)
    loss = opt.step(closure)          # two forward/backward passes, one base step

The detection model (``BurnConfig.detection_model``) is trained by :func:`train_detection_model`: plain
SGD (``"sgd"``, the control) or SAM over SGD (``"sam"`` from the infected weights, ``"sam_scratch"`` from
a fresh initialisation), both with momentum ``DETECTION_MOMENTUM`` and weight decay
``DETECTION_WEIGHT_DECAY`` (Foret et al.'s CIFAR base optimiser), so the control differs from SAM in
the ascent step alone.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .tensors import augment, to_float
from .train import NonFiniteLoss

__all__ = ["SAM", "train_detection_model", "reinitialise", "DETECTION_MOMENTUM", "DETECTION_WEIGHT_DECAY",
           "DETECTION_METHODS"]

#: SGD momentum of the detection model's optimiser (plain SGD and SAM's base optimiser alike)
DETECTION_MOMENTUM = 0.9
#: weight decay of the detection model's optimiser (Foret et al.'s CIFAR setting)
DETECTION_WEIGHT_DECAY = 5e-4
#: the ways ``BurnConfig.detection_model`` trains a detection model (``"infected"`` trains none)
DETECTION_METHODS = ("sgd", "sam", "sam_scratch")

_BN = (nn.modules.batchnorm._BatchNorm,)


class SAM:
    """One SAM step around a base optimiser (``step(closure)``): ascend to ``w + rho g / ||g||``, take the
    gradient there, come back to ``w`` and let ``base`` step with it.

    ``params`` are the parameters the base optimiser updates; ``closure()`` computes the batch loss
    (no ``backward``; this class calls it twice, and zeroes the gradients itself). ``bn_modules``:
    batch-norm layers whose running statistics must not move during the second pass (default: none).
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], base: torch.optim.Optimizer, *, rho: float = 0.05,
                 bn_modules: Iterable[nn.Module] = ()):
        if not (isinstance(rho, (int, float)) and math.isfinite(rho) and rho >= 0):
            raise ValueError(f"rho must be a finite number >= 0, got {rho!r}")
        self.params = [p for p in params if p.requires_grad]
        self.base = base
        self.rho = float(rho)
        self.bn_modules = list(bn_modules)

    @property
    def param_groups(self):
        return self.base.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()

    def step(self, closure: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Both passes and the base step; returns the loss at ``w`` (the first pass), detached."""
        self.zero_grad()
        loss = closure()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise NonFiniteLoss(f"loss became {value}")
        loss.backward()
        grads = [p.grad for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g.detach().double()) for g in grads])) \
            if grads else torch.zeros((), dtype=torch.float64)
        scale = self.rho / float(norm) if float(norm) > 0 else 0.0
        moved = []   # (parameter, its value at w): restored by copy, so no rounding is left behind
        with torch.no_grad():
            for p in self.params:
                if p.grad is None or scale == 0.0:
                    continue
                moved.append((p, p.detach().clone()))
                p.add_(p.grad.detach() * scale)
        self.zero_grad()
        saved = [(m, m.momentum) for m in self.bn_modules]
        try:
            for m, _ in saved:
                m.momentum = 0.0   # running = (1 - 0) running + 0 * batch: unchanged
            closure().backward()
        finally:
            for m, mom in saved:
                m.momentum = mom
            with torch.no_grad():
                for p, w in moved:
                    p.copy_(w)
        self.base.step()
        return loss.detach()


def reinitialise(model: nn.Module, seed: int) -> nn.Module:
    """``model`` with every module's ``reset_parameters()`` run (its construction-time initialisation),
    seeded by ``seed`` on the CPU without touching the global random state; batch-norm running
    statistics are reset too. Returns the model, on the CPU."""
    model = model.cpu()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in model.modules():
            if isinstance(m, _BN):
                m.reset_running_stats()
            if hasattr(m, "reset_parameters") and callable(m.reset_parameters):
                m.reset_parameters()
    return model


def train_detection_model(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, method: str, epochs: int,
                          lr: float, rho: float, batch_size: int = 128, device="cpu", augment_padding: int = 0,
                          hflip: bool = False, generator: torch.Generator | None = None) -> list[dict]:
    """Train the pixel-space ``model`` in place on ``(x, y)`` for ``epochs``: plain SGD (``method="sgd"``) or
    SAM over SGD (``"sam"``, ``"sam_scratch"``; the caller re-initialises the weights for the latter).
    Returns per-epoch ``{"epoch", "loss", "train_acc"}`` (loss and accuracy of the first pass at ``w``).

    Batches, shuffling and augmentation as :func:`~burn_plugin.core.train.train_epochs` (one permutation
    per epoch from ``generator``); a non-finite loss raises
    :class:`~burn_plugin.core.train.NonFiniteLoss`.
    """
    if method not in DETECTION_METHODS:
        raise ValueError(f"method must be one of {', '.join(DETECTION_METHODS)}, got {method!r}")
    params = [p for p in model.parameters() if p.requires_grad]
    base = torch.optim.SGD(params, lr=lr, momentum=DETECTION_MOMENTUM, weight_decay=DETECTION_WEIGHT_DECAY)
    sam = SAM(params, base, rho=rho, bn_modules=[m for m in model.modules() if isinstance(m, _BN)]) \
        if method != "sgd" else None
    history = []
    n = len(x)
    for epoch in range(epochs if n else 0):
        model.train()
        order = torch.randperm(n, generator=generator)
        tot, correct, nb = 0.0, 0, 0
        for s in range(0, n, batch_size):
            b = order[s:s + batch_size]
            xb = to_float(augment(x[b], padding=augment_padding, hflip=hflip, generator=generator)).to(device)
            yb = y[b].to(device)
            first: list = []

            def closure():
                out = model(xb)
                if not first:
                    first.append(out.detach())
                return F.cross_entropy(out, yb)
            if sam is not None:
                loss = sam.step(closure)
            else:
                base.zero_grad(set_to_none=True)
                loss = closure()
                if not math.isfinite(float(loss.detach())):
                    raise NonFiniteLoss(f"loss became {float(loss.detach())} in epoch {epoch + 1}")
                loss.backward()
                base.step()
            tot += float(loss.detach())
            correct += int((first[0].argmax(1) == yb).sum())
            nb += 1
        history.append({"epoch": epoch, "loss": tot / max(nb, 1), "train_acc": correct / n})
    model.eval()
    return history
