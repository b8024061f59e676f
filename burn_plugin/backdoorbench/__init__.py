"""A real BackdoorBench checkout: BURN as one of its defenses.

- :mod:`.defense`: :class:`Burn`, the defense class in BackdoorBench's style (``add_arguments``,
  ``set_result``, ``set_logger``, ``mitigation``, ``defense``), :func:`make_defense_class` and the
  ``main`` of the installed ``defense/burn.py`` script;
- :mod:`.register`: ``burn register [--uninstall] --bb-root PATH`` (copy the script and YAMLs in, with a
  hash manifest, and take them out again);
- :mod:`.doctor`: ``burn doctor --bb-root PATH`` (installed files, data, records, packages);
- :mod:`.commands`: the two subcommands for :mod:`burn_plugin.cli`.

Nothing here imports BackdoorBench's code at import time; the names below load on first use.
"""
from __future__ import annotations

# (``register``/``unregister`` stay in :mod:`.register`: a package attribute ``register`` would be
# shadowed by the submodule of that name)
_EXPORTS = {"Burn": "defense", "make_defense_class": "defense", "check_bb_root": "register",
            "diagnose": "doctor"}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
