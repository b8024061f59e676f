"""Tensor plumbing shared by the core: pixel-space models, batched inference, augmentation on tensors.

Images travel as one ``uint8`` tensor ``(N, C, H, W)`` (or float in [0, 1]); a model that expects
normalised input is wrapped with :class:`PixelSpaceModel` so that everything above this layer works
in pixel space, the space the boundary distances are measured in by default.
"""
from __future__ import annotations

from typing import Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, as torchvision's ``Normalize`` but as a differentiable layer."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class PixelSpaceModel(nn.Module):
    """``model(Normalize(x))``: takes images in [0, 1]; shares parameters with ``model``.

    ``channels_last=True`` feeds 4-D input to the model in ``torch.channels_last`` memory format
    (same values; oneDNN/cuDNN convolutions are faster on it). Convert the model's weights with
    :func:`set_channels_last` too.
    """

    def __init__(self, model: nn.Module, mean: Sequence[float], std: Sequence[float], *, channels_last: bool = False):
        super().__init__()
        self.normalize = Normalize(mean, std)
        self.model = model
        self.channels_last = channels_last

    def forward(self, x):
        x = self.normalize(x)
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return logits_of(self.model(x))


def set_channels_last(model: nn.Module, on: bool = True) -> nn.Module:
    """Convert ``model``'s 4-D parameters and buffers to channels_last (``on``) or back to contiguous."""
    return model.to(memory_format=torch.channels_last if on else torch.contiguous_format)


def logits_of(out):
    """Plain logits from models that return tuples in train mode (googlenet, inception_v3)."""
    return out if isinstance(out, torch.Tensor) else out[0]


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1]; floating input is returned unchanged."""
    if x.dtype == torch.uint8:
        return x.float().div_(255.0)
    return x if x.is_floating_point() else x.float()


def batches(n: int, batch_size: int, *, order: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    idx = torch.arange(n) if order is None else order
    for s in range(0, n, batch_size):
        yield idx[s:s + batch_size]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, *, batch_size: int = 512, device="cpu") -> torch.Tensor:
    """Logits of ``model`` (pixel-space) for every image of ``x``, on CPU, in eval mode."""
    was_training = model.training
    model.eval()
    out = None
    for b in batches(len(x), batch_size):
        logits = model(to_float(x[b]).to(device)).float().cpu()
        if out is None:  # preallocated: no list of chunks concatenated at the end (no doubled peak)
            out = torch.empty(len(x), *logits.shape[1:])
        out[b] = logits
    model.train(was_training)
    return out if out is not None else torch.empty(0)


def augment(x: torch.Tensor, *, padding: int = 4, hflip: bool = False,
            generator: torch.Generator | None = None) -> torch.Tensor:
    """BackdoorBench's train augmentation on a batch of images, each sample drawn independently.

    ``RandomCrop(size, padding=padding)`` with zero fill, then ``RandomHorizontalFlip`` if ``hflip``.
    Works on uint8 or float ``(B, C, H, W)`` tensors and returns the same dtype.
    """
    if padding <= 0 and not hflip:
        return x
    b, c, h, w = x.shape
    dev = x.device
    out = x
    if padding > 0:
        padded = F.pad(x, (padding, padding, padding, padding))
        oy = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * padding + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev)[None, :])  # (B, H)
        cols = (ox[:, None] + torch.arange(w, device=dev)[None, :])  # (B, W)
        bi = torch.arange(b, device=dev)[:, None, None]
        out = padded.permute(0, 2, 3, 1)[bi, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip:
        flip = (torch.rand(b, generator=generator) < 0.5).to(dev)
        out = torch.where(flip[:, None, None, None], out.flip(-1), out)
    return out.contiguous()
