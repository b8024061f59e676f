"""YAML + the flags given -> one validated set of run settings (the flags themselves: :mod:`burn_plugin.flags`).

Order: the YAML file (``bb_configs/burn/<dataset>.yaml`` or ``--yaml_path``), then *only the flags
the user gave* on the command line (argparse defaults are ``SUPPRESS``ed, so an unset flag never
beats the YAML: BackdoorBench's trap, interface.md 1.4, is avoided). One concept, one name: a flag
``--k_p0`` is the YAML key ``k_p0`` is ``BurnConfig.k_p0``.

Keys BackdoorBench's common defense block carries but BURN has no use for are accepted and listed
as ignored in ``run.json``; any other unknown key is an error naming it.
"""
from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Any

from .core.config import BurnConfig
from .errors import ConfigError, one_line
# Imports of torch-heavy modules sit inside the functions that need them: this module stays free of torch and
# pandas so that `burn --help` and argument errors answer at once (tests/test_import_cycles.py holds it to that).

# run-level keys (not BURN's algorithm): name -> (type, default, help)
RUN_KEYS: dict[str, tuple] = {
    "device": (str, "cpu", "cpu, cuda, cuda:0 ... (the bundled YAMLs set cuda, and cpu for mnist and fashionmnist)"),
    "dataset": (str, None, "dataset name; must agree with the record's (checked)"),
    "model": (str, None, "model name; default: the record's model_name"),
    "dataset_path": (str, None, "folder holding <dataset>/ (default: <R>/data as BackdoorBench)"),
}
# BackdoorBench common-block keys accepted for compatibility and ignored by BURN
IGNORED_BB_KEYS = ("amp", "pin_memory", "non_blocking", "prefetch", "num_workers", "frequency_save",
                   "checkpoint_load", "checkpoint_save", "log", "client_optimizer", "lr_scheduler",
                   "sgd_momentum", "ratio", "index", "steplr_stepsize", "steplr_gamma", "steplr_milestones",
                   "cos_t_max", "result_file", "attack_folder", "yaml_path")


def package_data_dir(package: str, repo_folder: str) -> Path | None:
    """Folder of a data package; falls back to the source tree for editable installs."""
    candidates = []
    try:
        candidates.append(Path(str(resources.files(package))))
    except (ModuleNotFoundError, TypeError, ValueError):
        pass
    import burn_plugin

    pkg = Path(burn_plugin.__file__).resolve().parent
    candidates += [pkg / package.rsplit(".", 1)[-1], pkg.parent / repo_folder]
    return next((c for c in candidates if c.is_dir()), None)


def bundled_config_dir() -> Path:
    """The ``bb_configs/`` folder shipped with the package (or the source tree's, in development)."""
    d = package_data_dir("burn_plugin.bb_configs", "bb_configs")
    if d is None:
        raise ConfigError("the packaged bb_configs/ folder is missing from this burn_plugin installation; "
                          "reinstall burn-plugin")
    return d


def defense_yaml_dir(method: str) -> Path:
    """Where defense ``method``'s YAMLs are: its registry entry's ``yaml_dir``, else the packaged
    ``bb_configs/<method>/``."""
    from .defenses import get_defense

    try:
        own = get_defense(method).yaml_dir
    except ConfigError:   # not a registered defense: the packaged folder (which then holds nothing)
        own = None
    return Path(own) if own else bundled_config_dir() / method


def resolve_yaml(method: str, dataset: str | None, cwd: str | Path | None = None) -> Path | None:
    """The one YAML resolver: defense ``method``'s settings file for ``dataset``.

    First the dataset's own file, then ``config.yaml``; each looked for in a BackdoorBench checkout at
    ``cwd`` (``config/defense/<method>/``, where ``burn register`` installs them and users edit them)
    before the defense's own folder (:func:`defense_yaml_dir`). ``burn defend`` passes no ``cwd``;
    the BackdoorBench entry script passes its working directory. None when there is none.
    """
    if dataset is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", str(dataset)):
        raise ConfigError(f"dataset {str(dataset)!r:.80} is not a dataset name (letters, digits, '_' and '-'); "
                          f"pass --dataset with one of the known names")
    own = defense_yaml_dir(method)
    checkout = Path(cwd) / "config" / "defense" / method if cwd is not None else None
    for folder, stem in ((checkout, dataset), (own, dataset), (checkout, "config"), (own, "config")):
        if folder is not None and stem and (folder / f"{stem}.yaml").is_file():
            return folder / f"{stem}.yaml"
    return None


def merge_settings(config_cls, yaml_path: str | Path | None, given: dict, *, shown: str | None = None):
    """The one settings path: the YAML's keys, then *only* the flags ``given``, split into
    ``(config, run options, ignored keys, merged dict)`` (:func:`split_settings`; errors name the key and
    ``shown``, the YAML as the user knows it)."""
    merged = load_yaml(yaml_path) if yaml_path else {}
    merged.update(given)
    shown = shown or (str(yaml_path) if yaml_path else None)
    source = f"{shown} + command line" if shown else "command line"
    cfg, run, ignored = split_settings(merged, source=source, config_cls=config_cls)
    return cfg, run, ignored, merged


def load_yaml(path: str | Path) -> dict:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"YAML file not found: {p} (check --yaml_path)")
    try:
        data = yaml.safe_load(p.read_text())
    except RecursionError:
        raise ConfigError(f"{p} is nested too deeply to be a settings file; fix the file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p} is not valid YAML{where}; fix the file") from None
    except (ValueError, OverflowError) as exc:  # a value YAML parses but Python refuses (a 5000-digit integer)
        raise ConfigError(f"{p} holds a value that cannot be read ({one_line(exc)[:120]}); fix the file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read YAML {p}: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of settings, not a {type(data).__name__}")
    return data


def split_settings(merged: dict[str, Any], *, source: str, config_cls=BurnConfig) -> tuple[Any, dict, list]:
    """Split merged settings into (algorithm config, run options, ignored keys); unknown keys fail."""
    algo_keys = set(config_cls.keys())
    algo, run, ignored, unknown = {}, {}, [], []
    for k, v in merged.items():
        if v is None:
            continue  # as in BackdoorBench, a YAML null means "not set": the default applies
        if k in algo_keys:
            algo[k] = v
        elif k in RUN_KEYS:
            run[k] = v
        elif k in IGNORED_BB_KEYS:
            ignored.append(k)
        else:
            unknown.append(k)
    if unknown:
        raise ConfigError(f"unknown setting(s) {', '.join(map(repr, unknown))} in {source}; known: "
                          f"{', '.join(sorted(algo_keys | set(RUN_KEYS)))} (BackdoorBench keys "
                          f"{', '.join(IGNORED_BB_KEYS)} are accepted and ignored)")
    for k, v in run.items():
        if v is not None and not isinstance(v, str):
            raise ConfigError(f"{k} in {source} must be a string, got {v!r}")
    return config_cls.from_mapping(algo, source=source), run, sorted(ignored)
