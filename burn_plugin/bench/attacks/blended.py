"""Blended (Chen et al. 2017): ``(1 - alpha) * img + alpha * pattern`` truncated to uint8, alpha 0.2;
the pattern is an image file (e.g. BackdoorBench's ``hello_kitty.jpeg``) or, by default, seeded noise."""
from __future__ import annotations

import numpy as np

from ...errors import ConfigError
from .base import Attack, _load_image, register_attack


@register_attack("blended")
class Blended(Attack):
    """Blended trigger: ``(1 - alpha) * img + alpha * pattern`` (alpha 0.2 as BackdoorBench)."""

    def __init__(self, alpha: float = 0.2, trigger_image: str | None = None, pattern_seed: int = 12345, **_):
        if not 0 < alpha <= 1:
            raise ConfigError(f"blend alpha must be in (0, 1], got {alpha}")
        self.alpha, self.trigger_image, self.pattern_seed = alpha, trigger_image, pattern_seed

    def trigger(self, h: int, w: int, c: int) -> np.ndarray:
        if self.trigger_image:
            return _load_image(self.trigger_image, h, w, c)
        rng = np.random.RandomState(self.pattern_seed)
        return rng.randint(0, 256, size=(h, w, c) if c > 1 else (h, w)).astype(np.uint8)

    def apply(self, img: np.ndarray, **_) -> np.ndarray:
        t = self.trigger(img.shape[0], img.shape[1], img.shape[2] if img.ndim == 3 else 1).astype(np.float64)
        out = (1 - self.alpha) * img.astype(np.float64) + self.alpha * t
        return np.clip(out, 0, 255).astype(np.uint8)
