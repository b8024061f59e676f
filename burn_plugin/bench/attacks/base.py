"""The attack registry, the poison-index rule and the helpers every attack shares.

An attack is a class registered with ``@register_attack(name)``; ``get_attack(name, **settings)``
builds it. It poisons one image at a time: ``apply(img, index=..., split=...)`` takes an ``(H, W, C)``
(or ``(H, W)``) uint8 array and returns the poisoned one (``index`` is the sample's index in its
split, ``split`` ``"train"`` or ``"test"``, for attacks whose trigger differs per sample or split).
``clean_label = True`` marks attacks that poison only target-class training samples and keep their
labels. ``prepare(ctx)``, when an attack defines it, runs once before poisoning with what it needs to
make its trigger (the clean training data, a clean-trained helper model; see ``run.AttackContext``).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ...errors import ConfigError, EmptySelectionError, UnknownNameError

_ATTACKS: dict[str, type] = {}


class Attack:
    """What every attack shares. Subclasses set ``PARAMS`` (BackdoorBench's parameter names: name ->
    ``(type, default, help)``; they become ``burn attack`` flags and ``info.pickle`` keys) and
    implement ``apply``."""

    PARAMS: dict = {}
    clean_label = False   # poison only target-class training samples, keeping their labels
    info_name: str | None = None   # the ``attack`` BackdoorBench writes into info.pickle, where it differs

    def __init__(self, **params):
        for k, (typ, default, _help) in self.PARAMS.items():
            v = params.get(k, default)
            try:
                setattr(self, k, typ(v) if v is not None else None)
            except (TypeError, ValueError):
                raise ConfigError(f"--{k} must be a {typ.__name__}, got {v!r:.40}") from None

    def prepare(self, ctx) -> None:
        """Runs once before poisoning (``ctx``: :class:`~burn_plugin.bench.attacks.run.AttackContext`)."""

    def train_indices(self, visible: np.ndarray, labels: np.ndarray, settings) -> np.ndarray:
        """The training samples this attack changes, as indices into the raw training split; ``visible``
        are the samples trained on and ``labels`` their labels. BackdoorBench's rule
        (:func:`poison_indices`) by default."""
        target = settings.attack_target if self.clean_label else None
        return visible[poison_indices(labels, settings.pratio, settings.random_seed, clean_label_target=target)]

    def train_label(self, index: int, label: int, backdoor_label: int) -> int:
        """The label a changed training sample gets: its own for a clean-label attack, else the backdoor's."""
        return label if self.clean_label else backdoor_label

    def apply(self, img: np.ndarray, *, index: int | None = None, split: str = "train") -> np.ndarray:
        raise NotImplementedError

    def params(self) -> dict:
        return {k: getattr(self, k) for k in self.PARAMS}


def register_attack(name: str):
    def deco(cls):
        _ATTACKS[name] = cls
        cls.name = name
        return cls
    return deco


def list_attacks() -> list[str]:
    return sorted(_ATTACKS)


def attack_params() -> dict:
    """Every attack's parameters for the command line: name -> ``(type, defaults, help, attack names)``,
    ``defaults`` mapping each attack that has the parameter to its own default (two attacks may share a
    name with different defaults, as WaNet's and InputAware's ``cross_ratio``)."""
    out: dict = {}
    for name in list_attacks():
        for k, (typ, default, hlp) in getattr(_ATTACKS[name], "PARAMS", {}).items():
            if k in out:
                out[k][1][name] = default
                out[k] = (*out[k][:3], out[k][3] + (name,))
            else:
                out[k] = (typ, {name: default}, hlp, (name,))
    return out


def describe_defaults(defaults: dict) -> str:
    """``default 2.0``, or per attack where they differ: ``default inputaware 1.0, wanet 2.0``."""
    values = set(map(repr, defaults.values()))
    if len(values) == 1:
        return f"default {next(iter(defaults.values()))}"
    return "default " + ", ".join(f"{a} {v}" for a, v in defaults.items())


def get_attack(name: str, **kwargs):
    try:
        cls = _ATTACKS[name]
    except KeyError:
        raise UnknownNameError(f"unknown attack {name!r}; choose one of: {', '.join(list_attacks())}") from None
    return cls(**kwargs)


def _load_image(path: str, h: int, w: int, c: int) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB" if c == 3 else "L").resize((w, h))
        return np.asarray(im, dtype=np.uint8)


def poison_indices(labels: np.ndarray, pratio: float, seed: int, *, clean_label_target: int | None = None) -> np.ndarray:
    """Indices of training samples to poison (BackdoorBench's rule; see module docstring)."""
    n = round(pratio * len(labels))
    pool = np.arange(len(labels)) if clean_label_target is None else np.flatnonzero(labels == clean_label_target)
    if n <= 0:
        raise EmptySelectionError(f"pratio {pratio} of {len(labels)} samples is {n} samples; raise --pratio")
    if n > len(pool):
        raise ConfigError(f"pratio {pratio} asks for {n} samples but only {len(pool)} can be poisoned")
    rng = np.random.RandomState(seed)
    return np.sort(rng.choice(pool, n, replace=False))


def _subset(n: int, k: int | None, seed: int, what: str) -> np.ndarray:
    """All of ``range(n)``, or ``k`` of them drawn with ``seed`` (sorted); kept in the record as
    BackdoorBench keeps subsets, in ``original_index_array``."""
    if k is None or k >= n:
        return np.arange(n)
    if k <= 0:
        raise ConfigError(f"--{what} must be a positive number of samples, got {k}")
    return np.sort(np.random.RandomState(seed).choice(n, k, replace=False))


def bd_label_fn(label_trans: str, target: int, num_classes: int) -> Callable[[int], int]:
    if label_trans == "all2one":
        return lambda y: int(target)
    if label_trans == "all2all":
        return lambda y: int((y + 1) % num_classes)
    raise ConfigError(f"unknown --attack_label_trans {label_trans!r}; use all2one or all2all")


