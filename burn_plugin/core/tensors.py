"""Tensor plumbing shared by the core: pixel-space models, batched inference, augmentation on tensors.

Images travel as one ``uint8`` tensor ``(N, C, H, W)`` (or float in [0, 1]); a model that expects
normalised input is wrapped with :class:`PixelSpaceModel` so that everything above this layer works
in pixel space, the space the boundary distances are measured in by default.
"""
from __future__ import annotations

import hashlib
from typing import Any, Iterator, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import ShapeMismatchError


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


def inner_model(model: nn.Module) -> nn.Module:
    """The wrapped model of a :class:`PixelSpaceModel` (names are given relative to it), else ``model``."""
    return model.model if isinstance(model, PixelSpaceModel) else model


def find_classifier(model: nn.Module, example: torch.Tensor, linear_name: str = "auto", *,
                    device="cpu") -> tuple[str, nn.Linear]:
    """The ``nn.Linear`` whose output *is* the model's output: ``(name, module)``.

    ``model`` is pixel-space, ``example`` one or more images of its input. One forward pass (eval mode,
    no gradients) records every module's output; the classifier is the ``nn.Linear`` whose output
    tensor is returned unchanged as the logits (parameter-free pass-throughs after it, such as
    ``nn.Identity``, are fine). ``linear_name`` (relative to the model a ``PixelSpaceModel`` wraps, as in
    BackdoorBench: ``linear``, ``fc``, ``classifier.6``) names it explicitly and is checked the same way.

    Raises :class:`~burn_plugin.errors.ShapeMismatchError` (one line) when the last layer is not one
    ``nn.Linear``: ULRL's neurons are the rows of that layer, one per class.
    """
    inner = inner_model(model)
    named = dict(inner.named_modules())
    if linear_name != "auto" and linear_name not in named:
        linears = [n for n, m in named.items() if isinstance(m, nn.Linear)]
        raise ShapeMismatchError(f"{type(inner).__name__} has no module {linear_name!r} (linear_name); its "
                                 f"nn.Linear layers: {', '.join(linears) or 'none'}; use linear_name: auto")
    outputs: dict[str, Any] = {}

    def record(name, out):  # keyed in the order of each module's last call
        outputs.pop(name, None)
        outputs[name] = out

    hooks = [m.register_forward_hook(lambda mod, inp, out, n=n: record(n, out)) for n, m in named.items()]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(to_float(example[:2]).to(device))
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    out = logits_of(out)
    # in the order the modules finished: the first is the one that made the tensor, then pass-throughs
    producers = [n for n, o in outputs.items() if o is out]
    linears = [n for n in producers if isinstance(named[n], nn.Linear)]
    if linear_name != "auto":
        if not isinstance(named[linear_name], nn.Linear):
            raise ShapeMismatchError(f"ULRL needs the classifier layer {linear_name!r} to be one nn.Linear (its rows "
                                     f"are the class neurons); it is {type(named[linear_name]).__name__}")
        if linear_name not in producers:
            raise ShapeMismatchError(f"ULRL needs {linear_name!r} to be the model's last layer (its output the "
                                     f"logits), but {type(inner).__name__} computes more after it")
        return linear_name, named[linear_name]
    if not linears:
        made = [n for n in producers if n and not isinstance(named[n], (nn.Sequential, nn.ModuleList))]
        what = (f"{type(named[made[0]]).__name__} {made[0]!r}" if made else
                "an operation outside any module (e.g. a functional call after the classifier)")
        raise ShapeMismatchError(f"ULRL needs a model whose last layer is one nn.Linear (its rows are the class "
                                 f"neurons); {type(inner).__name__} ends in {what}")
    return linears[-1], named[linears[-1]]


def state_hash(*tensors_or_dicts, extra: str = "") -> str:
    """A stable hash of tensors / state dicts / strings (for cache keys)."""
    h = hashlib.sha256()
    for obj in tensors_or_dicts:
        items = sorted(obj.items()) if isinstance(obj, dict) else [("", obj)]
        for k, v in items:
            h.update(str(k).encode())
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu().contiguous()
                h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(v).encode())
    h.update(extra.encode())
    return h.hexdigest()[:20]
