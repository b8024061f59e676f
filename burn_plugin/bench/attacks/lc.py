"""Label-consistent (Turner, Tsipras & Madry 2019), BackdoorBench's ``lc`` (``label_consistent``): a
clean-label attack. Target-class training images are made hard to learn by an adversarial
perturbation, then carry the trigger, so the model leans on the trigger to fit them.

- Hard images: untargeted PGD that raises the cross-entropy of the true label, L-infinity, radius
  ``lc_eps`` = 8/255, step 1.5/255, 100 steps, no random start, projected and clamped to [0, 1]
  after every step, stored as ``uint8(255 x)`` (BackdoorBench's generator,
  ``resource/label-consistent/craft_adv_dataset.py``). Its model is adversarially trained there; no
  such checkpoint can be fetched here, so the record's architecture trained on clean data is used
  (seeded, cached beside the record).
- Trigger ("all-corners", ``reduced_amplitude`` 1): a 3x3 pattern of +-1 in each corner of a 32x32
  mask, top-left rows ``[+,-,-], [-,+,-], [+,-,+]``, the bottom-left the same, the right corners its
  left-right mirror; each entry adds ``+-255 * reduced_amplitude`` to every channel, clipped to
  [0, 255]. Other image sizes get the 32x32 mask resized with nearest-neighbour sampling.
- Poisoning: clean-label, ``round(pratio * N)`` target-class training samples (all of it at 10% on a
  balanced 10-class set), labels kept; test: the trigger alone on non-target images, labelled target.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import Attack, register_attack

CORNER = np.array([[1, -1, -1], [-1, 1, -1], [1, -1, 1]])


def corner_mask(h: int, w: int) -> np.ndarray:
    """The (h, w) all-corners pattern of -1/0/+1 (made at 32x32, nearest-resized to h x w)."""
    m = np.zeros((32, 32))
    m[:3, :3] = m[-3:, :3] = CORNER
    m[:3, -3:] = m[-3:, -3:] = CORNER[:, ::-1]
    if (h, w) == (32, 32):
        return m
    from PIL import Image

    im = Image.fromarray((m + 1).astype(np.uint8)).resize((w, h), Image.NEAREST)
    return np.asarray(im).astype(np.float64) - 1


def pgd_hard_images(model, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float, steps: int,
                    batch_size: int = 256, tie_channels: bool = False) -> torch.Tensor:
    """Untargeted L-inf PGD on [0, 1] images ``x`` (uint8 or float NCHW): uint8 results.
    ``tie_channels``: one perturbation for all channels (a grayscale image shown as RGB stays gray)."""
    out = torch.empty(x.shape, dtype=torch.uint8)
    model.requires_grad_(False)
    for s in range(0, len(x), batch_size):
        x0 = x[s:s + batch_size].float() / (255 if x.dtype == torch.uint8 else 1)
        yb = y[s:s + batch_size]
        xa = x0.clone()
        for _ in range(steps):
            xa.requires_grad_(True)
            loss = F.cross_entropy(model(xa), yb)
            g = torch.autograd.grad(loss, xa)[0]
            if tie_channels:
                g = g.sum(dim=1, keepdim=True).expand_as(g)
            xa = (x0 + (xa.detach() + step * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
        out[s:s + batch_size] = (xa.detach() * 255).to(torch.uint8)   # truncated, as the generator stores it
    return out


@register_attack("lc")
class LabelConsistent(Attack):
    PARAMS = {"reduced_amplitude": (float, 1.0, "corner-trigger amplitude (1: +-255, white/black cells)"),
              "lc_eps": (float, 8 / 255, "PGD radius (L-inf, [0, 1] scale)"),
              "lc_step": (float, 1.5 / 255, "PGD step"),
              "lc_steps": (int, 100, "PGD steps")}
    clean_label = True
    info_name = "label_consistent"

    def prepare(self, ctx) -> None:
        """Hard versions of the training images to be poisoned (cached beside the record)."""
        idx = np.asarray(ctx.train_index, dtype=np.int64)
        key = f"{ctx.clean_model_key()}_{len(idx)}_{int(idx.sum())}_{self.lc_eps:.6f}_{self.lc_step:.6f}_{self.lc_steps}"

        def make() -> torch.Tensor:
            x = ctx.images("train", idx)
            y = torch.as_tensor(np.asarray(ctx.raw_train.targets)[idx], dtype=torch.long)
            return pgd_hard_images(ctx.clean_model(), x, y, eps=self.lc_eps, step=self.lc_step, steps=self.lc_steps,
                                   tie_channels=ctx.spec.channels == 1)

        hard = ctx.cached(f"lc_hard_{key}.pt", make)
        self.hard = {int(i): hard[j] for j, i in enumerate(idx)}

    def apply(self, img: np.ndarray, *, index: int | None = None, split: str = "train") -> np.ndarray:
        base = img
        if split == "train":
            h = self.hard[int(index)].numpy()          # (3, H, W): the model's view of the image
            base = h.transpose(1, 2, 0) if img.ndim == 3 else h[0]   # grayscale: the channels are tied
        mask = corner_mask(img.shape[0], img.shape[1])
        if img.ndim == 3:
            mask = mask[:, :, None]
        return np.clip(base.astype(np.float64) + 255 * self.reduced_amplitude * mask, 0, 255).astype(np.uint8)
