"""WaNet (Nguyen & Tran 2021, "WaNet - Imperceptible warping-based backdoor attack"): the trigger is a
smooth, fixed image warp.

The warping field, as BackdoorBench builds it (``attack/wanet.py``; H the image side):
``ins ~ U(-1, 1)`` of shape ``(2, k, k)``, divided by its mean absolute value, upsampled bicubically
to ``H x H`` (``align_corners``); the backdoor grid is ``clamp((identity + s * ins / H) * grid_rescale,
-1, 1)`` with ``identity`` the ``linspace(-1, 1, H)`` grid, applied with bilinear ``grid_sample``
(``align_corners``). "Noise" (cross) samples get the grid plus ``U(-1, 1) / H`` per sample and keep
their label, so the model learns that only *this* warp means the target. BackdoorBench's defaults:
``k = 4``, ``s = 0.5``, ``grid_rescale = 1``, ``cross_ratio = 2``.

Which training samples: BackdoorBench poisons fresh positions in every shuffled batch while it trains,
and afterwards saves a training set rebuilt in index order, batch by batch (``batch_size``): in each
batch the first ``int(pratio * b)`` samples are warped and relabelled, the next
``int(cross_ratio * int(pratio * b))`` noise-warped with their own label, all flagged as poisoned.
This record is that saved set, and the model is trained on it as it stands (a static version of the
training-time poisoning; the warp, the noise samples and their shares are BackdoorBench's).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import Attack, register_attack


def warping_grid(h: int, k: int, s: float, grid_rescale: float, seed: int) -> torch.Tensor:
    """The backdoor grid ``(1, h, h, 2)`` for ``grid_sample`` (x, y in [-1, 1])."""
    g = torch.Generator().manual_seed(seed)
    ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
    ins = ins / ins.abs().mean()
    noise = F.interpolate(ins, size=h, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    line = torch.linspace(-1, 1, h)
    rows, cols = torch.meshgrid(line, line, indexing="ij")
    identity = torch.stack((cols, rows), dim=2)[None]
    return torch.clamp((identity + s * noise / h) * grid_rescale, -1, 1)


def warp(img: np.ndarray, grid: torch.Tensor) -> np.ndarray:
    """``img`` (H, W[, C] uint8) resampled bilinearly at ``grid``; truncated to uint8 (as ToPILImage)."""
    x = torch.from_numpy(img.astype(np.float32) / 255)
    x = x[None, None] if img.ndim == 2 else x.permute(2, 0, 1)[None]
    out = F.grid_sample(x, grid, mode="bilinear", align_corners=True)[0]
    out = out[0] if img.ndim == 2 else out.permute(1, 2, 0)
    return (out.clamp(0, 1) * 255).to(torch.uint8).numpy()


def batch_positions(n: int, batch_size: int, pratio: float, cross_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(warped, noise) positions among ``n`` samples in index order, batch by batch."""
    warped, noise = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        n_bd = int(pratio * b)
        n_cross = int(cross_ratio * n_bd)
        warped.extend(range(start, start + n_bd))
        noise.extend(range(start + n_bd, min(start + n_bd + n_cross, start + b)))
    return np.asarray(warped, dtype=np.int64), np.asarray(noise, dtype=np.int64)


@register_attack("wanet")
class WaNet(Attack):
    PARAMS = {"k": (int, 4, "control grid size of the warp"),
              "s": (float, 0.5, "warp strength"),
              "grid_rescale": (float, 1.0, "scale of the warped grid"),
              "cross_ratio": (float, 2.0, "noise (cross) samples per warped sample, labels kept")}

    def __init__(self, **params):
        super().__init__(**params)
        self.seed, self.noise = 0, set()

    def prepare(self, ctx) -> None:
        self.seed = int(ctx.settings.random_seed)
        self.grid = warping_grid(ctx.spec.height, self.k, self.s, self.grid_rescale, self.seed)

    def train_indices(self, visible: np.ndarray, labels: np.ndarray, settings) -> np.ndarray:
        warped, noise = batch_positions(len(visible), settings.batch_size, settings.pratio, self.cross_ratio)
        self.noise = set(visible[noise].tolist())
        return np.sort(visible[np.concatenate([warped, noise])])

    def train_label(self, index: int, label: int, backdoor_label: int) -> int:
        return label if index in self.noise else backdoor_label

    def apply(self, img: np.ndarray, *, index: int | None = None, split: str = "train") -> np.ndarray:
        grid = self.grid
        if split == "train" and index in self.noise:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(index))
            grid = torch.clamp(grid + (torch.rand(grid.shape, generator=g) * 2 - 1) / grid.shape[1], -1, 1)
        return warp(img, grid)
