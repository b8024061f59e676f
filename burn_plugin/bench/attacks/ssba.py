"""SSBA (Li et al. 2021, "Invisible Backdoor Attack with Sample-Specific Triggers"), BackdoorBench's
``ssba`` (``SSBA`` in info.pickle): a dirty-label attack whose trigger is a fixed secret bit string
hidden in each image by a StegaStamp-style encoder. The encoder adds a residual that depends on the
image, so every poisoned image carries a different, near-invisible change; what they share is that a
decoder reads the same bits out of all of them.

What the paper and BackdoorBench do: a StegaStamp encoder/decoder (Tancik et al. 2020; U-Net encoder,
secret through a dense layer reshaped to a map and concatenated with the image; decoder with a
spatial transformer) is trained on the dataset with *random* secrets per batch, a bit cross-entropy
for the decoder and image losses (L2, LPIPS, a critic) whose weights ramp up from zero; then one fixed
secret is embedded in every poisoned image (BackdoorBench's torch resource, after Yu et al.'s
fingerprinting code: 100-bit fingerprints, 20 epochs, batch 64, the L2 weight held at 0 for 1000
steps and ramped over the next 3000; the secret "abcd" BCH-coded, one fingerprint for all images).
BackdoorBench ships the results as arrays of the encoded training and test sets
(``attack_train_replace_imgs_path``, ``attack_test_replace_imgs_path``, indexed by sample); those can be
given here too. Poisoning: ``round(pratio * N)`` training samples by BackdoorBench's index rule get the
encoded image and the target label; test: every non-target image (all-to-one) encoded, labelled target.

What is done here when no arrays are given (no pre-trained encoder can be fetched), in ``prepare``:

- Encoder: image (its ``C`` raw channels, shifted to [-0.5, 0.5]) + secret map (the ``secret_bits``
  bits as +-1 through one linear layer to 4 maps of ``ceil(H/4) x ceil(W/4)``, nearest-upsampled to
  H x W), concatenated; conv 3x3 (16) -> conv 3x3 stride 2 (32) -> conv 3x3 (32) -> upsample, concat
  with the first layer's maps -> conv 1x1 (16) -> conv 3x3 (C); ReLU between (small on purpose: on a
  CPU the full-resolution convolutions' backward pass is the cost). The residual is
  ``residual_bound/255 * tanh(.)``, so it never exceeds ``residual_bound`` grey levels in any pixel;
  the encoded image is ``clip(x + residual, 0, 1)``, stored rounded to uint8. A grayscale image is
  encoded on its one channel (the model sees it replicated on 3 channels, so the residual is tied
  across them); an RGB image gets an RGB residual.
- Decoder: conv 3x3 stride 2 (16) -> conv 3x3 stride 2 (32) -> conv 3x3 (32) -> flatten -> 128 ->
  ``secret_bits`` logits. No spatial transformer and no simulated print/photo distortions (the
  images stay digital); uniform noise of +-0.5/255 is added before decoding to mimic the rounding to
  uint8.
- Training: ``encoder_steps`` Adam steps (lr ``encoder_lr``) on batches of ``encoder_batch_size``
  clean training images drawn from the samples the model is trained on, each with a fresh random
  secret; loss ``BCE(decoder(x'), bits) + w(t) * mean((x' - x)^2)`` with
  ``w(t) = l2_loss_scale * clip((t - l2_loss_await) / l2_loss_ramp, 0, 1)``; plain L2 on [0, 1]
  pixels (no LPIPS, no critic, no YUV weighting). Seeded by ``random_seed``; the trained pair is cached
  beside the record (``.attack_cache``), keyed by dataset, training samples, seed and these params.
- The secret is one fixed bit string drawn with ``random_seed`` (no BCH code: nothing here has to
  correct read errors, the classifier only needs a consistent trigger). 32 bits by default, not
  StegaStamp's 100: a 28x28 grayscale image has 784 values against StegaStamp's 400x400x3, and fewer
  bits train to a high bit accuracy in far fewer steps on a CPU.
- All poisoned training and test images are encoded once, in batches; ``apply`` looks them up. The
  decoder's bit accuracy on the poisoned test images (never trained on) and the residual's size (mean
  and max |x' - x| in grey levels, PSNR) are logged and kept in ``self.stats``.

Cost (Fashion-MNIST, defaults, one CPU thread shared with two other jobs): about 0.18 s a step, 2000
steps in 6 minutes, bit accuracy 0.98 on held-out test images (0.9 after about 1000 steps; clean images
read at 0.48, chance), mean |residual| 7.5 grey levels (max 16), PSNR 28.5 dB; encoding 15,000 images
about 15 s. A model trained 5 epochs on 20,000 of its images (2,000 poisoned) reached ASR 0.99.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...core.tensors import state_hash
from ...errors import ConfigError
from .base import Attack, load_npy, register_attack

log = logging.getLogger("burn.attack")

SECRET_MAPS, WIDTH, HIDDEN = 4, 16, 128


class Encoder(nn.Module):
    """``(x in [0, 1] (N, C, H, W), bits (N, n) of 0/1) -> residual`` bounded by ``bound`` (in [0, 1] units)."""

    def __init__(self, channels: int, height: int, width: int, bits: int, bound: float):
        super().__init__()
        self.size, self.bound = (height, width), float(bound)
        self.grid = (math.ceil(height / 4), math.ceil(width / 4))
        self.secret = nn.Linear(bits, SECRET_MAPS * self.grid[0] * self.grid[1])
        self.c1 = nn.Conv2d(channels + SECRET_MAPS, WIDTH, 3, padding=1)
        self.c2 = nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(2 * WIDTH, 2 * WIDTH, 3, padding=1)
        self.c4 = nn.Conv2d(3 * WIDTH, WIDTH, 1)
        self.out = nn.Conv2d(WIDTH, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
        s = self.secret(2 * bits - 1).view(len(x), SECRET_MAPS, *self.grid)
        s = F.interpolate(s, size=self.size, mode="nearest")
        a = F.relu(self.c1(torch.cat([x - 0.5, s], dim=1)))
        b = F.relu(self.c3(F.relu(self.c2(a))))
        b = F.interpolate(b, size=self.size, mode="nearest")
        c = F.relu(self.c4(torch.cat([b, a], dim=1)))
        return self.bound * torch.tanh(self.out(c))


class Decoder(nn.Module):
    """``x in [0, 1] (N, C, H, W) -> (N, n)`` bit logits."""

    def __init__(self, channels: int, height: int, width: int, bits: int):
        super().__init__()
        self.c1 = nn.Conv2d(channels, WIDTH, 3, stride=2, padding=1)
        self.c2 = nn.Conv2d(WIDTH, 2 * WIDTH, 3, stride=2, padding=1)
        self.c3 = nn.Conv2d(2 * WIDTH, 2 * WIDTH, 3, padding=1)
        h, w = math.ceil(math.ceil(height / 2) / 2), math.ceil(math.ceil(width / 2) / 2)
        self.fc1 = nn.Linear(2 * WIDTH * h * w, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, bits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x - 0.5))))))
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def image_loss_weight(step: int, scale: float, wait: int, ramp: int) -> float:
    """The L2 weight at ``step``: 0 until ``wait``, then linear to ``scale`` over ``ramp`` steps."""
    if ramp <= 0:
        return float(scale) if step >= wait else 0.0
    return float(scale) * min(max((step - wait) / ramp, 0.0), 1.0)


def stego_loss(logits: torch.Tensor, bits: torch.Tensor, encoded: torch.Tensor, clean: torch.Tensor,
               l2_weight: float) -> tuple[torch.Tensor, float, float]:
    """``(total, bit BCE, image L2)``: ``BCE(logits, bits) + l2_weight * mean((encoded - clean)^2)``."""
    bce = F.binary_cross_entropy_with_logits(logits, bits)
    l2 = ((encoded - clean) ** 2).mean()
    return bce + l2_weight * l2, float(bce.detach()), float(l2.detach())


def bit_accuracy(logits: torch.Tensor, bits: torch.Tensor) -> float:
    """Share of bits read right (logit > 0 reads as 1)."""
    return float(((logits > 0).float() == bits).float().mean())


def fixed_secret(n: int, seed: int) -> torch.Tensor:
    """The attack's one secret: ``n`` bits (0/1 floats) drawn with ``seed``."""
    return torch.from_numpy(np.random.RandomState(seed).randint(0, 2, n).astype(np.float32))


def embed(encoder: Encoder, x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``clip(x + residual, 0, 1)`` for float images ``x`` in [0, 1]."""
    return (x + encoder(x, bits)).clamp(0, 1)


def train_stego(sample, pool: np.ndarray, *, channels: int, height: int, width: int, bits: int, bound: float,
                steps: int, batch_size: int, lr: float, l2_scale: float, l2_wait: int, l2_ramp: int,
                seed: int, log_every: int = 0) -> tuple[Encoder, Decoder, list]:
    """Train an encoder/decoder pair; ``sample(indices)`` gives uint8 ``(N, >=channels, H, W)`` images of
    ``pool``'s samples. Returns the pair (eval mode) and a history of ``(step, bce, l2, bit acc)``."""
    torch.manual_seed(seed)
    enc, dec = Encoder(channels, height, width, bits, bound), Decoder(channels, height, width, bits)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.RandomState(seed)
    history = []
    for step in range(steps):
        idx = pool[rng.randint(0, len(pool), min(batch_size, len(pool)))]
        x = sample(idx)[:, :channels].float() / 255
        b = torch.randint(0, 2, (len(x), bits), generator=gen).float()
        xe = embed(enc, x, b)
        noisy = xe + (torch.rand(xe.shape, generator=gen) - 0.5) / 255   # the rounding to uint8
        logits = dec(noisy)
        loss, bce, l2 = stego_loss(logits, b, xe, x, image_loss_weight(step, l2_scale, l2_wait, l2_ramp))
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log_every and (step % log_every == 0 or step == steps - 1):
            history.append((step, bce, l2, bit_accuracy(logits.detach(), b)))
            log.info("ssba encoder step %d: bce %.4f l2 %.2e bit acc %.3f", *history[-1])
    return enc.eval(), dec.eval(), history


@torch.no_grad()
def encode_images(encoder: Encoder, x: torch.Tensor, secret: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """uint8 ``(N, C, H, W)`` images (``C`` the encoder's channels, taken from the front of ``x``) with
    ``secret`` embedded, rounded to uint8."""
    c = encoder.out.out_channels
    out = torch.empty((len(x), c, *x.shape[2:]), dtype=torch.uint8)
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size, :c].float() / 255
        xe = embed(encoder, xb, secret.expand(len(xb), -1))
        out[s:s + batch_size] = torch.round(xe * 255).to(torch.uint8)
    return out


@torch.no_grad()
def decode_accuracy(decoder: Decoder, x: torch.Tensor, secret: torch.Tensor, batch_size: int = 512) -> float:
    """Mean bit accuracy of ``decoder`` reading ``secret`` from uint8 images ``x`` (``(N, C, H, W)``)."""
    if len(x) == 0:
        return float("nan")
    hits = 0.0
    for s in range(0, len(x), batch_size):
        xb = x[s:s + batch_size].float() / 255
        hits += bit_accuracy(decoder(xb), secret.expand(len(xb), -1)) * len(xb)
    return hits / len(x)


def residual_stats(clean: torch.Tensor, encoded: torch.Tensor) -> dict:
    """Size of ``encoded - clean`` (uint8 tensors, grey levels 0..255): mean and max |.|, PSNR in dB."""
    d = encoded.double() - clean.double()
    mse = float((d ** 2).mean()) if d.numel() else 0.0
    return {"mean_abs": float(d.abs().mean()) if d.numel() else 0.0,
            "max_abs": float(d.abs().max()) if d.numel() else 0.0,
            "psnr": float("inf") if mse == 0 else 10 * math.log10(255 ** 2 / mse)}


@register_attack("ssba")
class SSBA(Attack):
    PARAMS = {
        "attack_train_replace_imgs_path": (str, None, "BackdoorBench's encoded training set (.npy, N x H x W[ x C] "
                                                      "uint8, by sample index); default: made here"),
        "attack_test_replace_imgs_path": (str, None, "BackdoorBench's encoded test set (.npy); given together with "
                                                     "attack_train_replace_imgs_path"),
        "secret_bits": (int, 32, "length of the hidden secret (StegaStamp/BackdoorBench: 100; here 32, "
                                 "for 28x28-32x32 images on a CPU)"),
        "encoder_steps": (int, 2000, "training steps of the encoder/decoder (StegaStamp: 140000 at batch 4; "
                                     "BackdoorBench's resource: 20 epochs at batch 64)"),
        "encoder_batch_size": (int, 64, "encoder/decoder batch size (BackdoorBench's resource: 64)"),
        "encoder_lr": (float, 1e-3, "encoder/decoder Adam learning rate (StegaStamp: 1e-4, for far more steps)"),
        "l2_loss_scale": (float, 10.0, "weight of the image L2 loss once ramped up"),
        "l2_loss_await": (int, 500, "steps before the L2 loss starts (BackdoorBench's resource: 1000)"),
        "l2_loss_ramp": (int, 1000, "steps over which the L2 weight rises to l2_loss_scale (resource: 3000)"),
        "residual_bound": (float, 16.0, "largest change of a pixel, in grey levels 0..255 (tanh bound; "
                                        "StegaStamp has none)"),
    }
    info_name = "SSBA"

    def prepare(self, ctx) -> None:
        tr_path, te_path = self.attack_train_replace_imgs_path, self.attack_test_replace_imgs_path
        if tr_path or te_path:
            if not (tr_path and te_path):
                raise ConfigError("give both --attack_train_replace_imgs_path and --attack_test_replace_imgs_path")
            self.replace = {"train": _load_replace(tr_path, len(ctx.raw_train), ctx.spec,
                                                   "attack_train_replace_imgs_path"),
                            "test": _load_replace(te_path, len(ctx.raw_test), ctx.spec,
                                                  "attack_test_replace_imgs_path")}
            return
        self.replace = None
        for k in ("secret_bits", "encoder_steps", "encoder_batch_size", "residual_bound"):
            if getattr(self, k) <= 0:
                raise ConfigError(f"--{k} must be positive, got {getattr(self, k)}")

        s, spec = ctx.settings, ctx.spec
        hyper = (spec.name, s.random_seed, self.secret_bits, self.encoder_steps, self.encoder_batch_size,
                 self.encoder_lr, self.l2_loss_scale, self.l2_loss_await, self.l2_loss_ramp, self.residual_bound)
        key = state_hash(torch.from_numpy(np.asarray(ctx.visible, dtype=np.int64)), extra=repr(hyper))
        c = spec.channels

        def train() -> dict:
            t0 = time.time()
            enc, dec, hist = train_stego(lambda idx: ctx.images("train", idx), np.asarray(ctx.visible), channels=c,
                                         height=spec.height, width=spec.width, bits=self.secret_bits,
                                         bound=self.residual_bound / 255, steps=self.encoder_steps,
                                         batch_size=self.encoder_batch_size, lr=self.encoder_lr,
                                         l2_scale=self.l2_loss_scale, l2_wait=self.l2_loss_await,
                                         l2_ramp=self.l2_loss_ramp, seed=s.random_seed,
                                         log_every=max(1, self.encoder_steps // 20))
            return {"encoder": enc.state_dict(), "decoder": dec.state_dict(),
                    "history": torch.tensor(hist, dtype=torch.float64), "seconds": time.time() - t0}

        nets = ctx.cached(f"ssba_nets_{key}.pt", train)
        enc = Encoder(c, spec.height, spec.width, self.secret_bits, self.residual_bound / 255)
        dec = Decoder(c, spec.height, spec.width, self.secret_bits)
        enc.load_state_dict(nets["encoder"])
        dec.load_state_dict(nets["decoder"])
        enc.eval(), dec.eval()
        self.secret = fixed_secret(self.secret_bits, s.random_seed)
        t0 = time.time()
        encoded, clean = {}, {}
        for split, idx in (("train", ctx.train_index), ("test", ctx.test_index)):
            idx = np.asarray(idx, dtype=np.int64)
            clean[split] = ctx.images(split, idx)[:, :c]
            encoded[split] = encode_images(enc, clean[split], self.secret)
        enc_seconds = time.time() - t0
        self.encoded = {split: {int(i): encoded[split][j] for j, i in enumerate(np.asarray(idx))}
                        for split, idx in (("train", ctx.train_index), ("test", ctx.test_index))}
        both_clean = torch.cat([clean["train"], clean["test"]])
        both_enc = torch.cat([encoded["train"], encoded["test"]])
        self.stats = {"encoder_train_seconds": float(nets["seconds"]), "encode_seconds": enc_seconds,
                      "bit_acc_test": decode_accuracy(dec, encoded["test"], self.secret),
                      "bit_acc_train": decode_accuracy(dec, encoded["train"], self.secret),
                      "bit_acc_clean_test": decode_accuracy(dec, clean["test"], self.secret),
                      **{f"residual_{k}": v for k, v in residual_stats(both_clean, both_enc).items()}}
        log.info("ssba: %s", ", ".join(f"{k} {v:.4g}" for k, v in self.stats.items()))

    def apply(self, img: np.ndarray, *, index: int | None = None, split: str = "train") -> np.ndarray:
        if self.replace is not None:
            out = self.replace[split][int(index)]
            return out if img.ndim == 3 or out.ndim == 2 else out[:, :, 0]
        e = self.encoded[split][int(index)].numpy()         # (C, H, W), C the raw channels
        if img.ndim == 2:
            return e[0].copy()
        return np.ascontiguousarray(e.transpose(1, 2, 0))


def _load_replace(path: str, n: int, spec, flag: str) -> np.ndarray:
    """A BackdoorBench encoded split (N, H, W[, C]) uint8, checked against the split's size and shape
    from the file's header, before its data are read (:func:`~.base.load_npy`)."""
    def shape_ok(s: tuple) -> bool:
        return (len(s) in (3, 4) and s[0] == n and s[1:3] == (spec.height, spec.width)
                and (len(s) == 3 or s[3] in (1, 3)))

    arr = load_npy(path, flag, shape_ok=shape_ok,
                   expected=f"{n} images of {spec.height}x{spec.width}: ({n}, {spec.height}, {spec.width}[, C])")
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[:, :, :, 0]
    return arr
