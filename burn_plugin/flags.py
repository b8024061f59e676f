"""Command-line plumbing: ``burn``'s subcommand table, the one-line-error parser, and flags derived from
the settings and config classes (one name per setting: ``--k_p0`` is the YAML key ``k_p0`` is
``BurnConfig.k_p0``). Algorithm flags default to ``SUPPRESS``, so only flags the user gives reach
:func:`burn_plugin.settings.merge_settings`, which lays them over the YAML.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing

from .core.config import BurnConfig
from .errors import one_line

#: ``burn``'s subcommands: name -> (help, fn); filled by :func:`subcommand` in the modules that define
#: them (``cli.py``, ``backdoorbench/commands.py``), read by ``cli.py`` alone. It lives here, below every
#: layer, so that no layer imports ``cli.py``.
SUBCOMMANDS: dict[str, tuple] = {}


def subcommand(name: str, help: str):
    """Register ``fn(args)`` as ``burn <name>``; ``fn.configure(parser)`` adds its arguments."""
    def deco(fn):
        SUBCOMMANDS[name] = (help, fn)
        return fn
    return deco


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one ``error: ...`` line naming the fix (exit 2), not the
    whole usage text: the promise of ``burn`` and of the BackdoorBench entry scripts for bad input."""

    def error(self, message: str):
        self.exit(2, f"error: {one_line(f'{self.prog}: {message}')}; see {self.prog} --help\n")


def flag(parser, name: str, *short: str, **kwargs):
    """Add ``--name`` with a hyphenated alias (``--k_p0`` and ``--k-p0``) and optional short forms;
    ``dest`` is the underscored name unless given."""
    names = [*short, f"--{name}"] + ([f"--{name.replace('_', '-')}"] if "_" in name else [])
    kwargs.setdefault("dest", name)
    return parser.add_argument(*names, **kwargs)


def add_algorithm_flags(parser: argparse.ArgumentParser, config_classes=(BurnConfig,)) -> None:
    """One flag per config key (each name once across ``config_classes``), defaulting to SUPPRESS so
    that only flags the user gives override the YAML."""
    if isinstance(config_classes, type):
        config_classes = (config_classes,)
    seen: set[str] = set()
    for config_cls in config_classes:
        group = parser.add_argument_group(f"{config_cls.__name__} settings (also YAML keys; default from the "
                                          f"YAML, else the value shown)")
        for f in dataclasses.fields(config_cls):
            if f.name in seen:
                continue
            seen.add(f.name)
            default = f.default
            kind = type(default)
            kwargs: dict = {"default": argparse.SUPPRESS}
            if kind is bool:
                kwargs.update(type=_bool, metavar="BOOL")
            elif kind is tuple:
                kwargs.update(type=float, nargs=len(default))
            elif kind in (int, float, str):
                kwargs["type"] = kind
            choices = config_cls.choices_of(f.name) if hasattr(config_cls, "choices_of") else None
            if choices:
                kwargs["metavar"] = "{" + ",".join(choices) + "}"
            what = getattr(config_cls, "_HELP", {}).get(f.name)
            flag(group, f.name, help=f"{what}; default {default!r}" if what else f"default {default!r}", **kwargs)


def flag_fields(settings_cls) -> list:
    """The fields of dataclass ``settings_cls`` that are flags: those with a help text (``help_of``)."""
    return [f for f in dataclasses.fields(settings_cls) if settings_cls.help_of(f.name)]


def add_settings_flags(parser: argparse.ArgumentParser, settings_cls) -> None:
    """One flag per :func:`flag_fields` field of ``settings_cls``, as :func:`add_algorithm_flags` but with the
    field's own default (no YAML comes between; the help says it unless it is None, where the help tells what
    applies), its ``_CHOICES`` and extra spellings ``_ALIASES``; a bool is a switch (off by default)."""
    hints = typing.get_type_hints(settings_cls)
    for f in flag_fields(settings_cls):
        typ = next(t for t in typing.get_args(hints[f.name]) or (hints[f.name],) if t is not type(None))
        what = settings_cls.help_of(f.name)
        kwargs: dict = {"default": f.default, "help": what if f.default is None or typ is bool else
                        f"{what} (default {f.default})"}
        kwargs.update({"action": "store_true"} if typ is bool else {"type": typ})
        if f.name in getattr(settings_cls, "_CHOICES", {}):
            kwargs["choices"] = list(settings_cls._CHOICES[f.name])
        flag(parser, f.name, *getattr(settings_cls, "_ALIASES", {}).get(f.name, ()), **kwargs)


def settings_from_flags(settings_cls, args: argparse.Namespace, **more):
    """``settings_cls`` from the flags :func:`add_settings_flags` added (and ``more``)."""
    return settings_cls(**{f.name: getattr(args, f.name) for f in flag_fields(settings_cls)}, **more)


def _bool(s: str) -> bool:
    if s.lower() in ("true", "1", "yes"):
        return True
    if s.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def given_flags(args: argparse.Namespace, keys) -> dict:
    """The subset of ``keys`` the user actually passed (SUPPRESSed defaults are absent)."""
    return {k: getattr(args, k) for k in keys if hasattr(args, k) and getattr(args, k) is not None}
