"""The defense registry itself (:class:`DefenseSpec`, :func:`defense`), apart from the package that
imports every defense module, so that a defense module imports the registry and nothing imports back."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..registry import Registry


@dataclass(frozen=True)
class DefenseSpec:
    """Every fact about one defense."""

    name: str                         # method name = output folder = defense/<name>.py = bb_configs/<name>/
    config_class: type                # its settings (dataclass: fields are flags and YAML keys)
    run: Callable = field(repr=False)
    label: str = ""                   # name in tables and help texts
    uses_clean_data: bool = True      # trains on a clean subset (burn sweep plans a clean index for it)
    fast: tuple = ()                  # command-line settings `burn sweep --fast` adds
    backdoorbench_script: bool = True  # `burn register` installs it into a BackdoorBench checkout
    resume_help: str = "continue an unfinished run from its checkpoint"
    distributed: bool = False         # splits its work over torchrun's processes (else refuses torchrun)
    #: folder of its YAMLs (``config.yaml``, ``<dataset>.yaml``); None: the packaged ``bb_configs/<name>/``
    yaml_dir: str | None = None
    # hooks the generic runner (defend.py) calls, None for the generic behaviour:
    output_name: Callable | None = field(default=None, repr=False)    # (config) -> <record>/defense/<this>/; None: name
    check_resume: Callable | None = field(default=None, repr=False)   # (saved checkpoint, config): raise if it differs
    summary_lines: Callable | None = field(default=None, repr=False)  # (summary) -> lines printed after the metrics
    describe: Callable | None = field(default=None, repr=False)       # (config dict) -> settings a table names

    @property
    def display(self) -> str:
        return self.label or self.name

    def named_settings(self, config: dict) -> list[str]:
        """The settings a results table shows beside the name, e.g. ``["scan", "veto 20%"]`` for
        ``burn[scan, veto 20%]``: where a run differs from the defense's reference (its ``describe`` hook);
        none for a defense without one. ``config`` is a run's settings as ``run.json`` holds them."""
        return [str(p) for p in self.describe(config)] if self.describe else []

    def folder_name(self, config) -> str:
        return self.output_name(config) if self.output_name else self.name


DEFENSES: Registry[DefenseSpec] = Registry("defense method", order=lambda n: (n != "burn", n))  # BURN first
_DEFENSES = DEFENSES.entries


def defense(name: str, config_class: type, **facts):
    """Register the decorated run function as defense ``name`` (see the module docstring)."""
    def deco(fn):
        DEFENSES.register(name, DefenseSpec(name, config_class, fn, **facts))
        return fn
    return deco


def list_defenses() -> list[str]:
    """Registered defense names, BURN first."""
    return DEFENSES.names()


def get_defense(name: str) -> DefenseSpec:
    return DEFENSES.get(name)


def all_defenses() -> list[DefenseSpec]:
    return DEFENSES.values()
