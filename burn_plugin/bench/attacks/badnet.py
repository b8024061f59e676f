"""BadNets (Gu et al. 2017): a patch trigger, BackdoorBench's default a 3x3 white square in the
bottom-right corner, applied as ``img * (trigger == 0) + trigger * (trigger > 0)``."""
from __future__ import annotations

import numpy as np

from .base import Attack, _load_image, register_attack


@register_attack("badnet")
class BadNets(Attack):
    """BadNets patch trigger: a ``size`` x ``size`` white square ``margin`` px from the bottom-right."""

    def __init__(self, size: int = 3, margin: int = 0, trigger_image: str | None = None, **_):
        self.size, self.margin, self.trigger_image = size, margin, trigger_image

    def trigger(self, h: int, w: int, c: int) -> np.ndarray:
        if self.trigger_image:
            return _load_image(self.trigger_image, h, w, c)
        t = np.zeros((h, w, c) if c > 1 else (h, w), dtype=np.uint8)
        t[h - self.margin - self.size: h - self.margin, w - self.margin - self.size: w - self.margin] = 255
        return t

    def apply(self, img: np.ndarray, **_) -> np.ndarray:
        t = self.trigger(img.shape[0], img.shape[1], img.shape[2] if img.ndim == 3 else 1)
        out = img.astype(np.int64) * (t == 0) + t.astype(np.int64) * (t > 0)
        return np.clip(out, 0, 255).astype(np.uint8)
