"""The defense registry: one module per defense, each registering one :class:`DefenseSpec`.

A defense is a run function and a config dataclass, registered with :func:`defense`::

    @defense("ft", FTConfig, label="FT", uses_clean_data=True, fast=("--epochs", "2"), backdoorbench_script=False)
    def run(*, record, model, config, device, evaluator, out, resume, progress, extra) -> dict: ...

Everything else derives from the registry: ``burn defend --method`` and its flags (the config's fields,
also YAML keys, defaults in ``bb_configs/<name>/``), the files ``burn register`` installs into a
BackdoorBench checkout (``defense/<name>.py``, one generic entry script, and
``config/defense/<name>/*.yaml``, for specs with ``backdoorbench_script``), the BackdoorBench defense
classes (:mod:`burn_plugin.backdoorbench.defense`), and the plugin's rows of ``burn sweep``.

The run function returns ``{"model", "history" (rows for <name>_df.csv), "timings", "summary",
"files" ({name: writer(path)}), "data_used", optionally "after"}``; :func:`burn_plugin.defend.defend`
evaluates, writes and times it. A new defense is one module here (imported below by discovery); its
YAML files are written by ``python -m burn_plugin.docgen``.
"""
from __future__ import annotations

import importlib
import pkgutil

from .registry import _DEFENSES, DefenseSpec, all_defenses, defense, get_defense, list_defenses  # noqa: F401

#: every module of this package but the registry, imported (which registers its defense): a new defense
#: is one new module here and nothing else
MODULES = tuple(importlib.import_module(f"{__name__}.{m.name}") for m in pkgutil.iter_modules(__path__)
                if m.name != "registry")
