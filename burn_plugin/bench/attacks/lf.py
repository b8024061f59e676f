"""Low Frequency (Zeng et al. 2021, "Rethinking the backdoor attacks' triggers: a frequency perspective"):
a dirty-label attack whose trigger is a smooth universal adversarial perturbation.

The pattern is made as BackdoorBench's resource generator describes (``resource/lowFrequency``): on a
model trained on clean data, a universal perturbation ``v`` (HWC, [0, 1] scale) is grown over 100
random training images. For each image that ``v`` does not yet move, a *targeted* DeepFool step
``dr`` towards the attack target (overshoot 0.02, at most 200 iterations) is added and the sum is
low-pass filtered and rescaled::

    v <- N(G(v + G(dr))),   G: Gaussian low-pass (std 6 px, 30 taps, zero padding) over H and W,
                            N: min-max rescale to [0, 0.2]

Passes over the 100 images repeat while the fooling rate on 10 test images per class (the share whose
prediction ``v`` changes) is below 0.2, at most 50 passes, stopping early when the last 5 rates lie
within 0.01. The trigger is ``T = uint8(255 v)`` (0..51, as BackdoorBench's shipped patterns), applied
as ``x' = uint8(clip(x + T, 0, 255))`` to train and test images. A BackdoorBench pattern file can be
given instead (``--lowFrequencyPatternPath``, a ``.npy`` of (H, W, 3) or (1, H, W, 3)). The pattern is
cached beside the record (``.attack_cache``) with the clean model it came from.

Deviations: BackdoorBench's generator feeds the network un-normalised [0, 1] images; here the clean
model sees its usual normalised input (``PixelSpaceModel``). For a grayscale dataset the pattern is
the channel mean of the RGB perturbation (the model sees the gray image replicated on 3 channels).
"""
from __future__ import annotations

import numpy as np
import torch

from ...errors import ConfigError
from .base import Attack, load_npy, register_attack

SMOOTH_STD, SMOOTH_TAPS, SCALE_MAX = 6.0, 30, 0.2
N_IMAGES, TARGET_RATE, MAX_PASSES, TEST_PER_CLASS = 100, 0.2, 50, 10


def low_pass(v: np.ndarray, std: float = SMOOTH_STD, taps: int = SMOOTH_TAPS) -> np.ndarray:
    """Separable Gaussian low-pass over the first two axes of ``v`` (H, W[, C]), zero padding."""
    from scipy.ndimage import gaussian_filter1d

    truncate = (taps / 2) / std
    out = gaussian_filter1d(v, std, axis=0, mode="constant", truncate=truncate)
    return gaussian_filter1d(out, std, axis=1, mode="constant", truncate=truncate)


def rescale(v: np.ndarray, top: float = SCALE_MAX) -> np.ndarray:
    """Min-max rescale to ``[0, top]`` (zeros when ``v`` is constant)."""
    lo, hi = float(v.min()), float(v.max())
    return np.zeros_like(v) if hi <= lo else top * (v - lo) / (hi - lo)


def targeted_deepfool(model, x: torch.Tensor, target: int, *, overshoot: float = 0.02,
                      max_iter: int = 200) -> tuple[torch.Tensor, bool]:
    """The smallest step (L2, linearised) that moves ``x`` (1, C, H, W in [0, 1]) into class ``target``:
    ``(dr, converged)``."""
    r = torch.zeros_like(x)
    for _ in range(max_iter):
        xa = (x + (1 + overshoot) * r).clamp(0, 1).requires_grad_(True)
        out = model(xa)[0]
        k = int(out.argmax())
        if k == target:
            return (1 + overshoot) * r, True
        diff = out[target] - out[k]
        w = torch.autograd.grad(diff, xa)[0]
        norm2 = float((w * w).sum())
        if norm2 == 0:
            break
        r = r + (abs(float(diff.detach())) + 1e-4) / norm2 * w
    return (1 + overshoot) * r, False


@register_attack("lf")
class LowFrequency(Attack):
    PARAMS = {"lowFrequencyPatternPath": (str, None, "a BackdoorBench low-frequency pattern (.npy); default: made "
                                                     "here from a clean-trained model")}
    info_name = "lowFrequency"

    def prepare(self, ctx) -> None:
        if self.lowFrequencyPatternPath:
            h, w = ctx.spec.height, ctx.spec.width

            def shape_ok(s: tuple) -> bool:   # (H, W), (H, W, C) or BackdoorBench's (1, H, W, C)
                s = s[1:] if len(s) == 4 and s[0] == 1 else s
                return s[:2] == (h, w) and (len(s) == 2 or (len(s) == 3 and s[2] in (1, 3)))

            t = load_npy(self.lowFrequencyPatternPath, "lowFrequencyPatternPath", shape_ok=shape_ok,
                         expected=f"one {h}x{w} pattern: ({h}, {w}), ({h}, {w}, 3) or (1, {h}, {w}, 3)")
            self.pattern = t[0] if t.ndim == 4 else t
            return
        self.pattern = ctx.cached(f"lf_pattern_{ctx.clean_model_key()}_t{ctx.settings.attack_target}.pt",
                                  lambda: make_pattern(ctx))

    def apply(self, img: np.ndarray, **_) -> np.ndarray:
        t = self.pattern
        if img.ndim == 2:
            t = t.mean(axis=2) if t.ndim == 3 else t
        elif t.ndim == 2:
            t = np.repeat(t[:, :, None], img.shape[2], axis=2)
        if t.shape[:2] != img.shape[:2]:
            raise ConfigError(f"low-frequency pattern is {t.shape[0]}x{t.shape[1]}, images are "
                              f"{img.shape[0]}x{img.shape[1]}")
        return np.clip(img.astype(np.float64) + t, 0, 255).astype(np.uint8)


def make_pattern(ctx) -> np.ndarray:
    """The uint8 (H, W, 3) low-frequency trigger for ``ctx`` (see the module docstring)."""
    model = ctx.clean_model()
    model.requires_grad_(False)
    rng = np.random.RandomState(ctx.settings.random_seed)
    pick = rng.choice(ctx.visible, min(N_IMAGES, len(ctx.visible)), replace=False)
    xs = ctx.images("train", pick).float() / 255
    test_targets = np.asarray(ctx.raw_test.targets)
    probe = np.concatenate([rng.permutation(np.flatnonzero(test_targets == c))[:TEST_PER_CLASS]
                            for c in np.unique(test_targets)])
    xt = ctx.images("test", probe).float() / 255
    with torch.no_grad():
        clean_pred = model(xt).argmax(1)
    h, w = xs.shape[2], xs.shape[3]
    v = np.zeros((h, w, 3))
    rates: list[float] = []
    target = int(ctx.settings.attack_target)
    for _ in range(MAX_PASSES):
        for i in rng.permutation(len(xs)):
            x = xs[i:i + 1]
            vt = torch.from_numpy(v.transpose(2, 0, 1)).float()[None]
            with torch.no_grad():
                moved = int(model((x + vt).clamp(0, 1)).argmax()) != int(model(x).argmax())
            if moved:
                continue
            dr, ok = targeted_deepfool(model, (x + vt).clamp(0, 1), target)
            if ok:
                v = rescale(low_pass(v + low_pass(dr[0].numpy().transpose(1, 2, 0))))
        vt = torch.from_numpy(v.transpose(2, 0, 1)).float()[None]
        with torch.no_grad():
            rate = float((model((xt + vt).clamp(0, 1)).argmax(1) != clean_pred).float().mean())
        rates.append(rate)
        if rate >= TARGET_RATE or (len(rates) >= 5 and max(rates[-5:]) - min(rates[-5:]) < 0.01):
            break
    return np.clip(255 * v, 0, 255).astype(np.uint8)
