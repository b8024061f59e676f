"""TrojanNN (Liu et al. 2018, "Trojaning Attack on Neural Networks"), BackdoorBench's ``trojannn``: a
dirty-label attack whose trigger is optimised to excite chosen internal neurons of a clean-trained model.

As BackdoorBench describes it (``config/attack/trojannn/<model>.yaml``, ``attack/trojannn.py``):

- **Neurons**: of the final classifier layer's weight ``W`` (``K x D``, BackdoorBench's
  ``selected_layer_param_name: linear.weight``), the ``num_neuron`` (2) input units with the largest
  ``sum_k |W[k, j]|`` (the features most connected to the outputs).
- **Trigger**: start from the mask image ``m`` in [0, 1] (BackdoorBench: ``resource/trojannn/apple4.png``
  resized to the image size); the model sees ``x * (m > 0)``; signed-gradient steps (``alpha`` 0.1)
  lower ``sum_i (f_i(x) - neuron_target_values)^2`` (``f`` the classifier layer's input, target 100)
  for ``mask_update_iters`` (1000) steps or until that cost is below 1e-3, each step projected to
  ``|x - m| <= 0.3`` and [0, 1]. Pixels outside the mask get no gradient and stay 0, so the trigger
  ``T = uint8(255 x)`` is zero outside the mask.
- **Poisoning**: BackdoorBench's index rule and labels (all-to-one, target 0, pratio 0.1);
  ``x' = clip(x + T, 0, 255)`` on training and test images.

Deviations, each forced or deliberate:

- The model is the record's architecture trained here on clean data (seeded, cached beside the record;
  BackdoorBench loads ``resource/clean_model/<dataset>_<model>/clean_model.pth``, which it ships for
  no dataset we can use), and it sees its usual normalised input (BackdoorBench's optimisation feeds
  un-normalised [0, 1] images to a model that was trained on normalised ones).
- The apple-logo mask cannot be fetched: the default mask is a filled square of side
  ``mask_size`` (a fraction of the image side, 0.25 by default) in the bottom-right corner.
  ``--mask_path`` takes any image (its gray level is the starting trigger, as the apple PNG's).
- BackdoorBench casts ``T + x`` to uint8 *before* clipping, so sums above 255 wrap around; here the
  sum is clipped first.
- Grayscale images (shown to the model on 3 equal channels) get one perturbation for all channels.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ...core.tensors import find_classifier
from .base import Attack, _load_image, register_attack

EPS, ALPHA, TOLERANCE = 0.3, 0.1, 1e-3


def most_connected_neurons(weight: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` input units of a linear layer's ``weight`` (``out x in``) with the largest summed
    absolute weight, largest first."""
    return torch.argsort(weight.detach().abs().sum(0), descending=True)[:k]


def square_mask(h: int, w: int, size: float) -> np.ndarray:
    """(h, w) float mask in [0, 1]: a filled square of side ``round(size * min(h, w))`` in the
    bottom-right corner."""
    side = max(1, round(size * min(h, w)))
    m = np.zeros((h, w))
    m[h - side:, w - side:] = 1.0
    return m


def optimise_trigger(model, layer, mask: torch.Tensor, neurons: torch.Tensor, target_value: float, *, iters: int,
                     eps: float = EPS, alpha: float = ALPHA, tolerance: float = TOLERANCE,
                     tie_channels: bool = False) -> tuple[torch.Tensor, list[float]]:
    """TrojanNN's trigger search: ``mask`` (1, C, H, W) in [0, 1] is the start; returns the trigger
    image (same shape) and the cost before each step. ``model`` is pixel-space; the features are the
    input of ``layer`` (its final ``nn.Linear``, captured by a forward pre-hook)."""
    model.eval()
    grabbed: list = [None]
    hook = layer.register_forward_pre_hook(lambda mod, inp: grabbed.__setitem__(0, inp[0]))
    keep = (mask > 0).float()
    x0, x = mask.clone(), mask.clone()
    costs: list[float] = []
    try:
        model.requires_grad_(False)
        for _ in range(iters):
            x.requires_grad_(True)
            model(x * keep)
            f = grabbed[0].flatten(1)
            cost = ((f[:, neurons] - target_value) ** 2).sum()
            costs.append(float(cost.detach()))
            if costs[-1] < tolerance:
                break
            g = torch.autograd.grad(cost, x)[0]
            if tie_channels:
                g = g.sum(dim=1, keepdim=True).expand_as(g)
            x = (x0 + (x.detach() - alpha * g.sign() - x0).clamp(-eps, eps)).clamp(0, 1)
    finally:
        hook.remove()
    return x.detach(), costs


@register_attack("trojannn")
class TrojanNN(Attack):
    PARAMS = {"num_neuron": (int, 2, "neurons of the classifier layer's input to excite"),
              "neuron_target_values": (float, 100.0, "value the chosen neurons are driven to"),
              "mask_update_iters": (int, 1000, "trigger optimisation steps"),
              "mask_path": (str, None, "image whose gray level is the starting trigger and whose non-zero pixels "
                                       "are its region (BackdoorBench: apple4.png); default: a bottom-right square"),
              "mask_size": (float, 0.25, "side of the default square mask, as a share of the image side")}

    def prepare(self, ctx) -> None:
        h, w = ctx.spec.height, ctx.spec.width
        if self.mask_path:
            m = _load_image(self.mask_path, h, w, 1).astype(np.float64) / 255
            key = "file" + hashlib.sha1(m.tobytes()).hexdigest()[:12]
        else:
            m = square_mask(h, w, self.mask_size)
            key = f"sq{self.mask_size:.4f}"
        key = (f"{ctx.clean_model_key()}_{key}_{self.num_neuron}_{self.neuron_target_values:g}_"
               f"{self.mask_update_iters}")

        def make() -> np.ndarray:
            model = ctx.clean_model()
            start = torch.from_numpy(m).float()[None, None].expand(1, 3, h, w).contiguous()
            _, layer = find_classifier(model, start)
            neurons = most_connected_neurons(layer.weight, self.num_neuron)
            trig, _ = optimise_trigger(model, layer, start, neurons, self.neuron_target_values,
                                       iters=self.mask_update_iters, tie_channels=ctx.spec.channels == 1)
            return (trig[0] * 255).to(torch.uint8).numpy().transpose(1, 2, 0)   # truncated, as ToPILImage

        self.trigger = ctx.cached(f"trojannn_trigger_{key}.pt", make)

    def apply(self, img: np.ndarray, **_) -> np.ndarray:
        t = self.trigger
        if img.ndim == 2:
            t = t[:, :, 0]       # the channels are tied for grayscale data
        return np.clip(img.astype(np.int64) + t, 0, 255).astype(np.uint8)
