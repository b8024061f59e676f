"""SIG (Barni, Kallas & Tondi 2019, "A new backdoor attack in CNNs by training set corruption without
label poisoning"): a clean-label attack with a horizontal sinusoidal signal as the trigger.

    x'[i, j] = clip(x[i, j] + delta * sin(2 pi j f / m), 0, 255)      (every row i and channel)

with ``m`` the image width, ``delta = 40`` and ``f = 6`` (BackdoorBench's ``sig_delta`` and ``sig_f``).
Only target-class training samples are poisoned and keep their label; at test time the signal is
added to non-target images, whose backdoor label is the target.
"""
from __future__ import annotations

import numpy as np

from .base import Attack, register_attack


def sig_signal(h: int, w: int, delta: float, f: float) -> np.ndarray:
    """The ``(h, w)`` signal ``delta * sin(2 pi j f / w)`` for column ``j`` (constant down each column)."""
    j = np.arange(w, dtype=np.float64)
    return np.broadcast_to(delta * np.sin(2 * np.pi * j * f / w), (h, w)).copy()


@register_attack("sig")
class SIG(Attack):
    PARAMS = {"sig_delta": (float, 40.0, "amplitude of the sinusoidal signal (pixel values, 0-255)"),
              "sig_f": (float, 6.0, "frequency of the signal: periods across the image width")}
    clean_label = True

    def apply(self, img: np.ndarray, **_) -> np.ndarray:
        v = sig_signal(img.shape[0], img.shape[1], self.sig_delta, self.sig_f)
        if img.ndim == 3:
            v = v[:, :, None]
        return np.clip(img.astype(np.float64) + v, 0, 255).astype(np.uint8)
