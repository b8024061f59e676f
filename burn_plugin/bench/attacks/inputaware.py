"""Input-Aware Dynamic Backdoor (Nguyen & Tran 2020, "Input-Aware Dynamic Backdoor Attack"; BackdoorBench's
``inputaware``, the BURN paper's "Dynamic"): every image gets its own trigger, made from the image itself.

Two small encoder-decoder nets make it: a pattern generator ``G`` (image -> pattern, C channels) and a
mask generator ``M`` (image -> one-channel mask). Both end in ``tanh(h) / (2 + 1e-7) + 0.5`` (values in
[0, 1]); the mask is then sharpened with ``threshold(m) = tanh(20 m - 10) / (2 + 1e-7) + 0.5``. The
poisoned image is ``x' = x + t(M(x)) * (G(x) - x)`` (in pixel space; BackdoorBench composes in normalised
space, where the same formula gives the same image). A *cross* sample gets the pattern and mask made
from another image: ``x + t(M(x2)) * (G(x2) - x)``, and keeps its own label, so the model learns that
only an image's own trigger means the target.

The nets, as BackdoorBench builds them (``InputAwareGenerator``): the input normalised with the
dataset's mean/std; ``steps`` times two 3x3 conv + BatchNorm (momentum 0.05) + ReLU blocks and a 2x2
max-pool, the channels starting at ``width`` and doubling per step; one middle block; ``steps`` times a
bilinear x2 upsampling and two blocks, halving the channels, the last block to the output channels with
no ReLU. BackdoorBench uses ``width = 16, steps = 2`` for mnist and ``32, 3`` otherwise; here the
one-channel datasets (mnist, fashionmnist) get the first and every other dataset the second (an output
whose size a pool rounded off is resized to the input's).

Training, in two phases, with BackdoorBench's losses and optimisers:

1. mask (``clean_train_epochs`` epochs; BackdoorBench 25): ``M`` alone, Adam (``lr_M``, betas 0.5, 0.9;
   lr x0.1 after epochs 10 and 20) on pairs of batches drawn by two independent shuffles, minimising
   ``lambda_norm * mean(relu(t(M(x1)) - mask_density)) + lambda_div * div(x1, x2, t(M(x1)), t(M(x2)))``;
2. joint (``generator_epochs`` epochs): ``M`` frozen, ``G`` (Adam, ``lr_G``, betas 0.5, 0.9) and a
   classifier ``C`` of the record's architecture (SGD, ``lr_C``, momentum 0.9, weight decay 5e-4)
   together (their x0.1 steps come after 100 and 200 epochs); in every batch the first
   ``int(pratio * b)`` images get their own trigger and the backdoor label, the next
   ``int(cross_ratio * that)`` a cross trigger from the second shuffle and their own label, the rest
   stay clean; the loss is ``CE + lambda_div * div(x1, x2, G(x1), G(x2))`` over the backdoor images and
   their partners.

``div(a1, a2, b1, b2) = mean over the batch of d(a1, a2) / (d(b1, b2) + EPSILON)`` with ``d`` the root
mean square difference per sample: small when different inputs give different patterns (masks). As in
BackdoorBench, images and patterns enter it normalised with the dataset's mean/std, masks as they are.

Which training samples: as BackdoorBench saves its training set (index order, batch by batch of
``batch_size``): in each batch the first ``int(pratio * b)`` samples are backdoored and relabelled, the
next ``int(cross_ratio * int(pratio * b))`` get a cross trigger and keep their label, all flagged as
poisoned; a batch with ``pratio * b < 1`` gets one backdoored sample with probability ``pratio * b``
(BackdoorBench's ``generalize_to_lower_pratio``; here drawn with ``random_seed``). BackdoorBench pairs
each cross sample with a random image of a shuffled loader; here its partner is another visible
training image drawn with a generator seeded by ``random_seed`` and the sample's index (reproducible).
Test: every poisoned test image (each non-target image for all-to-one) gets its own trigger.

Deviations, fitting the attack to this framework's static records:

- BackdoorBench's record holds the classifier it trained jointly with ``G`` for all of its ``epochs``.
  Here ``prepare`` trains ``M`` and ``G`` (with a throwaway classifier of the record's architecture,
  seeded with ``random_seed``, on the visible training images) for a few epochs, then the poisoned
  training set is fixed, as BackdoorBench saves it, and the record's model is trained on it as it
  stands (as for ``wanet``). The defaults ``clean_train_epochs = 1`` and ``generator_epochs = 1``
  (BackdoorBench: 25 mask epochs, then ``epochs`` joint ones) keep ``prepare`` for a 60,000-image
  Fashion-MNIST run near ten minutes on a 2-core CPU. ``G`` and ``M`` are cached beside the record
  (``.attack_cache``) keyed by the data, seed, settings and these parameters.
- ``cross_ratio`` is this framework's name (WaNet's); BackdoorBench's inputaware makes as many cross
  samples as backdoor samples (``cross_ratio = 1``, the default; the original release's ``p_cross`` is
  0.1 like ``p_attack``).
- BackdoorBench's mask loss multiplies the diversity term by ``lambda_div`` twice (the same at its
  default 1); here once. BackdoorBench trains ``G``, ``M`` and ``C`` on its augmented training loader;
  here the images are used as they are. It evaluates the nets on the test set after every epoch; not
  here.
- Grayscale datasets: ``G`` and ``M`` see and make one channel (BackdoorBench's mnist nets), which the
  classifier sees tied on 3 channels; the poisoned image is written as one gray channel.
- Poisoned images are truncated to uint8 (``floor(255 x')``, as ``ToPILImage``).
"""
from __future__ import annotations

import hashlib
import logging

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.tensors import PixelSpaceModel
from ...errors import EmptySelectionError
from ..models import build_model
from .base import Attack, bd_label_fn, register_attack

log = logging.getLogger("burn.attack")

MASK_MILESTONES, GEN_MILESTONES, CLS_MILESTONES, LR_GAMMA = (10, 20), (200, 300, 400, 500), (100, 200, 300, 400), 0.1
ADAM_BETAS = (0.5, 0.9)
HALF = 2 + 1e-7     # tanh(.) / HALF + 0.5 maps to (0, 1)


def _block(cin: int, cout: int, relu: bool = True) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout, momentum=0.05)]
    return layers + [nn.ReLU(inplace=True)] if relu else layers


class TriggerNet(nn.Module):
    """Encoder-decoder ``(N, c_in, H, W)`` in [0, 1] -> ``(N, c_out, H, W)`` in [0, 1] (module docstring)."""

    def __init__(self, c_in: int, c_out: int, *, width: int, steps: int, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)[:c_in], dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)[:c_in], dtype=torch.float32).view(1, -1, 1, 1))
        layers: list[nn.Module] = []
        ch, prev = width, c_in
        for _ in range(steps):
            layers += _block(prev, ch) + _block(ch, ch) + [nn.MaxPool2d(2)]
            prev, ch = ch, ch * 2
        ch = prev
        layers += _block(ch, ch)
        for s in range(steps):
            last = s == steps - 1
            nxt = c_out if last else ch // 2
            layers += [nn.Upsample(scale_factor=2, mode="bilinear")] + _block(ch, ch) + _block(ch, nxt, relu=not last)
            ch = nxt
        self.body = nn.Sequential(*layers)

    def normalize(self, x):
        return (x - self.mean) / self.std

    def forward(self, x):
        h = self.body(self.normalize(x))
        if h.shape[-2:] != x.shape[-2:]:
            h = F.interpolate(h, size=x.shape[-2:], mode="bilinear")
        return torch.tanh(h) / HALF + 0.5


def make_nets(channels: int, mean, std) -> tuple[TriggerNet, TriggerNet]:
    """``(G, M)`` for images of ``channels`` channels (1: BackdoorBench's mnist nets, else its default)."""
    width, steps = (16, 2) if channels == 1 else (32, 3)
    return (TriggerNet(channels, channels, width=width, steps=steps, mean=mean, std=std),
            TriggerNet(channels, 1, width=width, steps=steps, mean=mean, std=std))


def threshold(m: torch.Tensor) -> torch.Tensor:
    """The sharpened mask ``tanh(20 m - 10) / (2 + 1e-7) + 0.5``."""
    return torch.tanh(m * 20 - 10) / HALF + 0.5


def compose(x: torch.Tensor, pattern: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``x + mask * (pattern - x)``: the pattern where the mask is 1, the image where it is 0."""
    return x + mask * (pattern - x)


def _rms(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).pow(2).flatten(1).mean(1).sqrt()


def diversity_loss(x1, x2, p1, p2, eps: float = 1e-7) -> torch.Tensor:
    """Mean over the batch of ``rms(x1 - x2) / (rms(p1 - p2) + eps)``."""
    return (_rms(x1, x2) / (_rms(p1, p2) + eps)).mean()


def norm_loss(mask: torch.Tensor, density: float) -> torch.Tensor:
    """``mean(relu(mask - density))``: zero while no mask value exceeds ``density``."""
    return F.relu(mask - density).mean()


def n_backdoor(pratio: float, b: int, rng: np.random.RandomState) -> int:
    """Backdoor samples in a batch of ``b``: ``int(pratio * b)``, or 0/1 drawn with ``rng`` when below one."""
    if pratio * b >= 1:
        return int(pratio * b)
    return int(rng.uniform(0, 1) < pratio * b)


def batch_positions(n: int, batch_size: int, pratio: float, cross_ratio: float,
                    seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(backdoor, cross) positions among ``n`` samples in index order, batch by batch."""
    rng = np.random.RandomState(seed)
    bd, cross = [], []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        k = n_backdoor(pratio, b, rng)
        c = min(int(cross_ratio * k), b - k)
        bd.extend(range(start, start + k))
        cross.extend(range(start + k, start + k + c))
    return np.asarray(bd, dtype=np.int64), np.asarray(cross, dtype=np.int64)


def partner_position(pos: int, n: int, index: int, seed: int) -> int:
    """Another position than ``pos`` among ``n``, drawn with a generator seeded by ``seed`` and ``index``."""
    p = int(np.random.RandomState((seed * 1_000_003 + index) % 2**32).randint(n - 1))
    return p + 1 if p >= pos else p


def _as_input(img: np.ndarray, channels: int) -> torch.Tensor:
    """(H, W[, C]) uint8 -> (1, channels, H, W) float in [0, 1] (gray tied, or colour averaged)."""
    x = torch.from_numpy(np.array(img, dtype=np.float32)) / 255
    x = x[None] if x.dim() == 2 else x.permute(2, 0, 1)
    if x.shape[0] != channels:
        x = x.mean(0, keepdim=True) if channels == 1 else x[:1].expand(channels, -1, -1)
    return x[None]


def _as_image(x: torch.Tensor, like: np.ndarray) -> np.ndarray:
    """(1, c, H, W) in [0, 1] -> uint8 shaped as ``like`` (truncated, as ToPILImage)."""
    out = (x[0].clamp(0, 1) * 255).to(torch.uint8)
    if like.ndim == 2:
        return (out[0] if len(out) == 1 else out.float().mean(0).to(torch.uint8)).numpy()
    out = out.permute(1, 2, 0)
    if out.shape[2] == 1 and like.shape[2] != 1:
        out = out.expand(-1, -1, like.shape[2])
    elif out.shape[2] != like.shape[2]:
        out = out.float().mean(2, keepdim=True).to(torch.uint8)
    return np.ascontiguousarray(out.numpy())


@torch.no_grad()
def poison_image(img: np.ndarray, g: nn.Module, m: nn.Module, source: np.ndarray | None = None) -> np.ndarray:
    """``img`` with the trigger made from ``source`` (default: from ``img`` itself), nets in eval mode."""
    g.eval(), m.eval()
    channels = int(g.mean.shape[1])
    x = _as_input(img, channels)
    s = x if source is None else _as_input(source, channels)
    return _as_image(compose(x, g(s), threshold(m(s))), img)


def _three(x: torch.Tensor) -> torch.Tensor:
    return x if x.shape[1] == 3 else x.expand(-1, 3, -1, -1)


def _pairs(n: int, batch_size: int, gen: torch.Generator):
    o1, o2 = torch.randperm(n, generator=gen), torch.randperm(n, generator=gen)
    for s in range(0, n, batch_size):
        yield o1[s:s + batch_size], o2[s:s + batch_size]


def train_mask(m: TriggerNet, x: torch.Tensor, a: "InputAware", *, seed: int, batch_size: int, device="cpu",
               progress: bool = False) -> None:
    """Phase 1: ``m`` on the uint8 images ``x`` (N, c, H, W) for ``a.clean_train_epochs`` epochs."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(m.parameters(), a.lr_M, betas=ADAM_BETAS)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(MASK_MILESTONES), LR_GAMMA)
    m.to(device).train()
    with tqdm(total=a.clean_train_epochs * len(x), desc="inputaware mask", unit="img", disable=not progress,
              leave=False) as bar:
        for epoch in range(a.clean_train_epochs):
            for i1, i2 in _pairs(len(x), batch_size, gen):
                x1, x2 = x[i1].to(device).float() / 255, x[i2].to(device).float() / 255
                m1, m2 = threshold(m(x1)), threshold(m(x2))
                loss = a.lambda_norm * norm_loss(m1, a.mask_density) + a.lambda_div * diversity_loss(
                    m.normalize(x1), m.normalize(x2), m1, m2, a.EPSILON)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.update(len(i1))
            sched.step()
            log.info("inputaware mask epoch %d: loss %.4f, mask mean %.4f", epoch, loss.item(), m1.mean().item())
    m.cpu().eval()


def train_generator(g: TriggerNet, m: TriggerNet, classifier: nn.Module, x: torch.Tensor, y: torch.Tensor,
                    to_bd, a: "InputAware", *, seed: int, batch_size: int, pratio: float, device="cpu",
                    progress: bool = False) -> None:
    """Phase 2: ``g`` and the pixel-space ``classifier`` together, ``m`` frozen (module docstring)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    rng = np.random.RandomState(seed)
    opt_c = torch.optim.SGD(classifier.parameters(), a.lr_C, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(g.parameters(), a.lr_G, betas=ADAM_BETAS)
    sched_c = torch.optim.lr_scheduler.MultiStepLR(opt_c, list(CLS_MILESTONES), LR_GAMMA)
    sched_g = torch.optim.lr_scheduler.MultiStepLR(opt_g, list(GEN_MILESTONES), LR_GAMMA)
    m.to(device).eval().requires_grad_(False)
    g.to(device).train()
    classifier.to(device).train()
    with tqdm(total=a.generator_epochs * len(x), desc="inputaware generator", unit="img", disable=not progress,
              leave=False) as bar:
        for epoch in range(a.generator_epochs):
            correct = seen = 0
            for i1, i2 in _pairs(len(x), batch_size, gen):
                b = len(i1)
                k = n_backdoor(pratio, b, rng)
                c = min(int(a.cross_ratio * k), b - k)
                x1, y1 = x[i1].to(device).float() / 255, y[i1].to(device)
                x2 = x[i2].to(device).float() / 255
                x_in, y_in = x1.clone(), y1.clone()
                if k:
                    p1 = g(x1[:k])
                    x_in[:k] = compose(x1[:k], p1, threshold(m(x1[:k])))
                    y_in[:k] = torch.tensor([to_bd(int(v)) for v in y1[:k]], device=device)
                    src = x2[k:k + max(k, c)]
                    p2 = g(src)
                    if c:
                        x_in[k:k + c] = compose(x1[k:k + c], p2[:c], threshold(m(src[:c])))
                    j = min(k, len(src))
                    nz = g.normalize
                    div = diversity_loss(nz(x1[:j]), nz(src[:j]), nz(p1[:j]), nz(p2[:j]), a.EPSILON) if j else 0.0
                else:
                    div = 0.0
                out = classifier(_three(x_in))
                loss = F.cross_entropy(out, y_in) + a.lambda_div * div
                opt_c.zero_grad(set_to_none=True)
                opt_g.zero_grad(set_to_none=True)
                loss.backward()
                opt_c.step()
                opt_g.step()
                correct += int((out.argmax(1)[:k] == y_in[:k]).sum())
                seen += k
                bar.update(b)
            sched_c.step()
            sched_g.step()
            log.info("inputaware generator epoch %d: loss %.4f, train ASR %.3f", epoch, loss.item(),
                     correct / max(seen, 1))
    g.cpu().eval()
    m.cpu()


def _state(net: nn.Module) -> dict:
    return {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}


@register_attack("inputaware")
class InputAware(Attack):
    PARAMS = {"lr_G": (float, 0.01, "Adam learning rate of the pattern generator"),
              "lr_C": (float, 0.01, "SGD learning rate of the classifier trained with the generator"),
              "lr_M": (float, 0.01, "Adam learning rate of the mask generator"),
              "lambda_div": (float, 1.0, "weight of the diversity loss"),
              "lambda_norm": (float, 100.0, "weight of the mask-density loss"),
              "mask_density": (float, 0.032, "mask values above this are penalised"),
              "EPSILON": (float, 1e-7, "added to the pattern/mask distance in the diversity loss"),
              "cross_ratio": (float, 1.0, "cross-trigger samples (labels kept) per backdoor sample; BackdoorBench's "
                                          "inputaware makes as many as backdoor samples (1)"),
              "clean_train_epochs": (int, 1, "epochs of mask-generator training (BackdoorBench 25; 1 here to keep a "
                                             "CPU run short)"),
              "generator_epochs": (int, 1, "epochs of joint pattern-generator/classifier training before the "
                                           "poisoned set is fixed (BackdoorBench trains them together for all "
                                           "its epochs; 1 here)")}

    def __init__(self, **params):
        super().__init__(**params)
        self.seed, self.cross, self.netG, self.netM, self._ctx = 0, {}, None, None, None

    def train_indices(self, visible: np.ndarray, labels: np.ndarray, settings) -> np.ndarray:
        self.seed = int(settings.random_seed)
        bd, cross = batch_positions(len(visible), settings.batch_size, settings.pratio, self.cross_ratio, self.seed)
        if len(bd) == 0:
            raise EmptySelectionError(f"pratio {settings.pratio} of {len(visible)} samples in batches of "
                                      f"{settings.batch_size} poisons no sample; raise --pratio")
        self.cross = {int(visible[p]): int(visible[partner_position(int(p), len(visible), int(visible[p]), self.seed)])
                      for p in cross}
        return np.sort(visible[np.concatenate([bd, cross])])

    def train_label(self, index: int, label: int, backdoor_label: int) -> int:
        return label if index in self.cross else backdoor_label

    def _key(self, ctx, *parts) -> str:
        s = ctx.settings
        extra = repr((parts, s.random_seed, s.batch_size))
        return f"{ctx.spec.name}_{s.model}_{ctx.clean_model_key()}_{hashlib.sha256(extra.encode()).hexdigest()[:12]}"

    def prepare(self, ctx) -> None:
        self._ctx, s, spec = ctx, ctx.settings, ctx.spec
        self.seed = int(s.random_seed)
        ch = 1 if spec.channels == 1 else 3
        mask_params = (self.lr_M, self.lambda_div, self.lambda_norm, self.mask_density, self.EPSILON,
                       self.clean_train_epochs)
        gen_params = mask_params + (self.lr_G, self.lr_C, self.cross_ratio, self.generator_epochs, s.pratio,
                                    s.attack_target, s.attack_label_trans)
        data: dict = {}

        def images() -> torch.Tensor:
            if "x" not in data:
                data["x"] = ctx.images("train", ctx.visible)[:, :ch].contiguous()
            return data["x"]

        def make_mask() -> dict:
            torch.manual_seed(self.seed)
            _, m = make_nets(ch, spec.mean3, spec.std3)
            train_mask(m, images(), self, seed=self.seed, batch_size=s.batch_size, device=s.device,
                       progress=ctx.progress)
            return _state(m)

        def make_generator() -> dict:
            torch.manual_seed(self.seed)
            g, m = make_nets(ch, spec.mean3, spec.std3)
            m.load_state_dict(mask_state)
            classifier = PixelSpaceModel(build_model(s.model, spec.num_classes), spec.mean3, spec.std3)
            y = torch.from_numpy(np.asarray(ctx.raw_train.targets, dtype=np.int64)[ctx.visible])
            train_generator(g, m, classifier, images(), y,
                            bd_label_fn(s.attack_label_trans, s.attack_target, spec.num_classes), self,
                            seed=self.seed, batch_size=s.batch_size, pratio=s.pratio, device=s.device,
                            progress=ctx.progress)
            return _state(g)

        mask_state = ctx.cached(f"inputaware_mask_{self._key(ctx, mask_params)}.pt", make_mask)
        gen_state = ctx.cached(f"inputaware_gen_{self._key(ctx, gen_params)}.pt", make_generator)
        self.netG, self.netM = make_nets(ch, spec.mean3, spec.std3)
        self.netG.load_state_dict(gen_state)
        self.netM.load_state_dict(mask_state)
        self.netG.eval(), self.netM.eval()

    def _train_image(self, index: int) -> np.ndarray:
        t = self._ctx.images("train", [index])[0]     # (3, H, W) uint8; gray images tied on 3 channels
        return t[0].numpy() if int(self.netG.mean.shape[1]) == 1 else t.permute(1, 2, 0).numpy()

    def apply(self, img: np.ndarray, *, index: int | None = None, split: str = "train") -> np.ndarray:
        if self.netG is None:
            raise RuntimeError("inputaware: prepare(ctx) makes the trigger generators; call it before apply")
        source = None
        if split == "train" and index is not None and int(index) in self.cross:
            source = self._train_image(self.cross[int(index)])
        return poison_image(img, self.netG, self.netM, source)
