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

import contextlib
import functools
import math
import os
import warnings
from typing import Callable

import numpy as np

from ...core.config import integer_setting
from ...errors import ConfigError, CorruptFileError, EmptySelectionError
from ...registry import Registry

#: the largest trigger/mask image accepted, per side: the image is resized to the dataset's (at most
#: 64x64 here) anyway, and a bigger header is a mistake or a decompression bomb
MAX_TRIGGER_SIDE = 4096

ATTACKS: Registry[type] = Registry("attack")
_ATTACKS = ATTACKS.entries


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
            if v is not None and typ is int:   # bounded up front: --encoder_steps 1e23 is refused, not run
                v = integer_setting(k, v, flag=f"--{k}")
            try:
                v = typ(v) if v is not None else None
            except (TypeError, ValueError, OverflowError):
                raise ConfigError(f"--{k} must be a {typ.__name__}, got {v!r:.40}") from None
            if typ is float and v is not None and not math.isfinite(v):
                raise ConfigError(f"--{k} must be a finite number, got {v}")
            setattr(self, k, v)

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
        cls.name = name
        return ATTACKS.register(name, cls)
    return deco


def list_attacks() -> list[str]:
    return ATTACKS.names()


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
    if len(set(map(repr, defaults.values()))) == 1:
        return f"default {next(iter(defaults.values()))}"
    return "default " + ", ".join(f"{a} {v}" for a, v in defaults.items())


def get_attack(name: str, **kwargs):
    return ATTACKS.get(name)(**kwargs)


def _load_image(path: str, h: int, w: int, c: int) -> np.ndarray:
    """The trigger/mask image ``path`` as an ``(h, w, c)`` (``(h, w)`` for ``c == 1``) uint8 array,
    read-only; decoded once per size (attacks ask for it per poisoned sample)."""
    path = os.fspath(path)
    try:
        st = os.stat(path)
        stamp = (st.st_mtime_ns, st.st_size)
    except OSError:  # open_image names the problem
        stamp = None
    return _decoded_image(path, stamp, h, w, c)


@functools.lru_cache(maxsize=8)
def _decoded_image(path: str, stamp, h: int, w: int, c: int) -> np.ndarray:
    with open_image(path, "trigger image") as im:
        im = im.convert("RGB" if c == 3 else "L").resize((w, h))
        arr = np.asarray(im, dtype=np.uint8).copy()
    arr.setflags(write=False)
    return arr


def check_image(path: str, what: str = "trigger image") -> None:
    """Refuse, up front and from its header alone, an image that cannot be a trigger (see :func:`open_image`)."""
    with open_image(path, what):
        pass


@contextlib.contextmanager
def open_image(path, what: str):
    """``PIL.Image.open(path)`` for an image file the user names: a missing file, a file that is not an
    image, a header larger than ``MAX_TRIGGER_SIDE`` per side (a decompression bomb: the pixels are never
    decoded) or a file that fails to decode is one :class:`BadInputError` line naming the file."""
    from PIL import Image, UnidentifiedImageError

    p = os.fspath(path)
    if not os.path.isfile(p):
        raise ConfigError(f"{what} {p} not found (or not a file); check the path")
    try:
        with warnings.catch_warnings():   # the bound below decides, from the header, before any decoding
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(p)
    except Image.DecompressionBombError:
        raise ConfigError(f"{what} {p} declares far too many pixels to be a trigger (a decompression bomb?); "
                          f"use an image of at most {MAX_TRIGGER_SIDE}x{MAX_TRIGGER_SIDE}") from None
    except (UnidentifiedImageError, ValueError, SyntaxError, OSError) as exc:
        raise CorruptFileError(f"{what} {p} is not an image PIL can read ({type(exc).__name__}); give a PNG or "
                               f"JPEG file") from None
    try:
        w, h = im.size
        if not (0 < w <= MAX_TRIGGER_SIDE and 0 < h <= MAX_TRIGGER_SIDE):
            raise ConfigError(f"{what} {p} is {w}x{h} pixels; use an image of at most "
                              f"{MAX_TRIGGER_SIDE}x{MAX_TRIGGER_SIDE} (it is resized to the dataset's size anyway)")
        try:
            yield im
        except (OSError, ValueError, SyntaxError) as exc:  # decoding: a truncated or damaged file
            raise CorruptFileError(f"{what} {p} cannot be decoded ({type(exc).__name__}: {str(exc)[:80]}); the "
                                   f"file is truncated or damaged") from None
    finally:
        im.close()


def load_npy(path, flag: str, *, shape_ok: Callable[[tuple], bool], expected: str) -> np.ndarray:
    """The uint8 array in the ``.npy`` file ``path`` given with ``--flag``: its header is read first
    (the magic, dtype and shape; ``shape_ok(shape)`` must accept the shape), so that an ``.npz``
    archive, a pickle, another dtype or a wrong or huge shape is one line before any data is read;
    pickles are never loaded. ``expected`` describes the accepted shape for the message."""
    p = os.fspath(path)
    fmt = np.lib.format
    if not os.path.isfile(p):
        raise ConfigError(f"--{flag} {p} not found (or not a file); check the path")
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
            fh.seek(0)
            if head[:4] == b"PK\x03\x04":
                raise CorruptFileError(f"--{flag} {p} is an .npz archive, not a .npy array; save the array with "
                                       f"numpy.save (one array per .npy file)")
            try:
                version = fmt.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = fmt.read_array_header_1_0(fh)
                elif version == (2, 0):
                    shape, _, dtype = fmt.read_array_header_2_0(fh)
                else:
                    raise ValueError(f"unsupported .npy version {version}")
            except (ValueError, SyntaxError, EOFError) as exc:
                raise CorruptFileError(f"--{flag} {p} is not a .npy array file ({str(exc)[:80]}); save the array "
                                       f"with numpy.save") from None
    except OSError as exc:
        raise CorruptFileError(f"--{flag} {p} cannot be read ({exc.strerror or exc})") from None
    if dtype != np.uint8:
        raise ConfigError(f"--{flag} {p}: expected uint8 values (0..255), got {dtype}")
    if not shape_ok(tuple(shape)):
        raise ConfigError(f"--{flag} {p}: expected {expected}, got shape {tuple(shape)}")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise CorruptFileError(f"--{flag} {p} cannot be read as a .npy array ({str(exc)[:80]}); the file is "
                               f"truncated or damaged") from None
    if not isinstance(arr, np.ndarray) or arr.dtype != np.uint8 or tuple(arr.shape) != tuple(shape):
        raise CorruptFileError(f"--{flag} {p} does not hold the array its header describes; the file is damaged")
    return arr


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


