"""BURN as a BackdoorBench defense class, in the style of ``defense/ft.py`` & co. (interface.md 1.2).

Run from a BackdoorBench root after ``burn register``::

    python defense/burn.py --attack_folder badnet_0_1 --dataset cifar10 \\
        --yaml_path config/defense/burn/cifar10.yaml --device cuda:0

or from Python, with the working directory at that root::

    from burn_plugin.backdoorbench.defense import Burn, build_parser
    args = build_parser().parse_args(["--dataset", "cifar10", "--device", "cpu"])
    summary = Burn(args).defense("badnet_0_1")

The contract is BackdoorBench's: ``add_arguments(parser)`` (called on the class), ``__init__(args)`` merges the YAML
with the command line, ``set_result(result_file)`` fixes ``save_path = record/<attack>/defense/burn/``,
``set_logger()``, ``mitigation()`` runs the defense, ``defense(result_file)`` does all three. Unlike the
upstream scripts there is no module-level ``args``: everything lives on the instance.

Settings: the YAML (``--yaml_path``; default ``config/defense/burn/<dataset>.yaml`` under the working
directory, else the copy bundled with the plugin, else ``config.yaml``) overridden by the flags *given*
on the command line only (every flag defaults to "not given", so BackdoorBench's trap of argparse
defaults beating the YAML, interface.md 1.4, cannot happen). BackdoorBench's common keys that BURN
has no use for (``amp``, ``num_workers``, ``ratio``, ``index`` ...) are accepted and listed as ignored
in ``run.json``; any other unknown key is a one-line error naming it, before any work.

The work itself is :func:`burn_plugin.defend.defend` (the plugin's own safe record loader; BackdoorBench's
``load_attack_result`` fails on torch >= 2.6, interface.md 10); results land in ``save_path`` with the
file and column names the other defenses use (``defense_result.pt``, ``burn_df.csv``,
``burn_df_summary.csv``, ``detection_info.csv``, ``log/``) plus ``scores.npz`` and ``run.json``.

Nothing here imports BackdoorBench. :func:`make_defense_class` returns a subclass of BackdoorBench's
``defense.base.defense`` when that is importable (inside a checkout, whose root the script puts on
``sys.path`` as the upstream scripts do), and :class:`Burn` itself otherwise.

Every other defense of the registry (:mod:`burn_plugin.defenses`; ULRL, ...) gets the same class shape
from :func:`defense_class`, differing only in ``name``/``label``/``resume_help``/``config_class()``:
``defense/<name>.py`` (the one generic entry script) calls ``main(method=<name>)``, its YAML is
``config/defense/<name>/<dataset>.yaml`` and its results go to ``record/<attack>/defense/<name>/``.
Its settings' keys are not among its ignored keys (ULRL's ``ratio`` and ``index`` are its clean subset).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from pathlib import Path
from typing import Any

from ..bench.records import record_dataset, resolve_attack_folder
from ..defend import default_output_name, defend, print_summary, refuse_finished
from ..defenses import get_defense
from ..errors import BadInputError, quiet_rank, run_reporting_errors
from ..flags import OneLineErrorParser, add_algorithm_flags, flag
from ..settings import IGNORED_BB_KEYS, RUN_KEYS, merge_settings, resolve_yaml

METHOD = "burn"
# BackdoorBench's common defense flags (interface.md 1.3) that BURN accepts and ignores
_PLUMBING = ("result_file", "attack_folder", "yaml_path")
COMPAT_KEYS = tuple(k for k in IGNORED_BB_KEYS if k not in _PLUMBING)
_SHORT = {"pin_memory": "-pm", "non_blocking": "-nb", "prefetch": "-pf"}

log = logging.getLogger("burn.backdoorbench")


# ------------------------------------------------------------------------------------------------
class Burn:
    """BURN in BackdoorBench's defense-class shape; see the module docstring.

    Attributes after ``__init__``: ``args`` (the merged settings as a Namespace, like upstream's
    ``args.__dict__``), ``config`` (:class:`~burn_plugin.core.config.BurnConfig`), ``run_options``
    (device, dataset, model, dataset_path), ``yaml_path``, ``ignored_keys``. After ``set_result``:
    ``attack_folder``, ``save_path`` (``record/<attack>/defense/burn/``, trailing slash as upstream),
    ``save_dir`` (the same as a Path). After ``mitigation``: ``summary`` (what ``run.json`` holds).
    """

    name = METHOD
    label = "BURN"
    resume_help = "continue an interrupted run from its last round checkpoint"

    @classmethod
    def config_class(cls) -> type:
        """The dataclass of this defense's settings (its registry entry's; BURN's is
        :class:`~burn_plugin.core.config.BurnConfig`)."""
        return get_defense(cls.name).config_class

    @classmethod
    def compat_keys(cls) -> tuple:
        """BackdoorBench's common keys this defense accepts and ignores (those that are not its settings)."""
        own = set(cls.config_class().keys())
        return tuple(k for k in COMPAT_KEYS if k not in own)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """BackdoorBench's common defense flags plus one flag per setting (all default to "not given")."""
        flag(parser, "attack_folder", dest="result_file", default=None, metavar="NAME",
              help="attack record: a folder name under ./record/ (BackdoorBench) or a path to the folder holding "
                   "attack_result.pt")
        flag(parser, "result_file", default=None, metavar="NAME",
              help="the same as --attack_folder (BackdoorBench's name)")
        flag(parser, "yaml_path", default=None,
              help=f"YAML settings (default: config/defense/{cls.name}/<dataset>.yaml if present, else the copy "
                   f"bundled with burn_plugin); flags given on the command line override it")
        for k, (typ, _default, hlp) in RUN_KEYS.items():
            flag(parser, k, type=typ, default=argparse.SUPPRESS, help=hlp + " (YAML key too)")
        flag(parser, "trust_record", action="store_true",
              help="allow the full unpickler for attack_result.pt (runs code in the file; only for records you "
                   "made or trust, e.g. RAM-mode records)")
        flag(parser, "output_dir", default=None, help=f"where to write (default record/<attack>/defense/{cls.name}/)")
        parser.add_argument("--overwrite", action="store_true",
                            help=f"replace an existing {cls.label} result (without it an existing result is never "
                                 f"touched)")
        parser.add_argument("--resume", action="store_true", help=cls.resume_help)
        parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
        # BURN's include BackdoorBench's --epochs, --batch_size, --lr, --wd, --random_seed
        add_algorithm_flags(parser, cls.config_class())
        group = parser.add_argument_group(f"BackdoorBench common settings (accepted for compatibility, "
                                          f"ignored by {cls.label})")
        for k in cls.compat_keys():
            flag(group, k, *([_SHORT[k]] if k in _SHORT else []), default=argparse.SUPPRESS, metavar="VALUE",
                  help=argparse.SUPPRESS if k == "cos_t_max" else None)
        return parser

    # --------------------------------------------------------------------------------------------
    def __init__(self, args: argparse.Namespace | None = None, *, cwd: str | os.PathLike | None = None):
        self.cli = vars(args).copy() if args is not None else {}
        self.cwd = Path(cwd) if cwd is not None else Path.cwd()
        self.attack_folder: Path | None = None
        self.save_dir: Path | None = None
        self.save_path: str | None = None
        self.summary: dict | None = None
        self.logger = log
        dataset = self._given("dataset")
        folder = self.cli.get("result_file") or self.cli.get("attack_folder")
        if folder:
            self.attack_folder = resolve_attack_folder(folder, self.cwd)
            dataset = dataset or record_dataset(self.attack_folder)
        self._merge(dataset)
        if self.attack_folder is not None:
            self.set_result(str(folder))

    def _given(self, key: str) -> Any:
        v = self.cli.get(key)
        return None if v is argparse.SUPPRESS else v

    def _merge(self, dataset: str | None) -> None:
        """YAML <- flags given; split into the config (BurnConfig / ULRLConfig) / run options / ignored keys
        (errors name the key)."""
        config_cls = type(self).config_class()
        explicit = self._given("yaml_path")
        # --yaml_path under cwd (an absolute path stays as given), else config/defense/<name>/<dataset>.yaml under
        # cwd, else the defense's own, else config.yaml
        yaml_path = self.cwd / explicit if explicit else resolve_yaml(self.name, dataset, self.cwd)
        self._yaml_was_default = not explicit
        self._yaml_dataset = dataset
        keys = list(config_cls.keys()) + list(RUN_KEYS) + list(type(self).compat_keys())
        given = {k: self.cli[k] for k in keys if self._given(k) is not None}
        self.config, self.run_options, self.ignored_keys, merged = merge_settings(config_cls, yaml_path, given,
                                                                                  shown=explicit or None)
        self.yaml_path = yaml_path
        self.cli_overrides = sorted(given)
        flags = {k: self.cli.get(k) for k in ("trust_record", "output_dir", "overwrite", "resume", "quiet", "debug")}
        self.args = argparse.Namespace(**{**merged, **flags, "yaml_path": str(yaml_path) if yaml_path else None,
                                          "result_file": self.cli.get("result_file")})

    # --------------------------------------------------------------------------------------------
    def set_result(self, result_file: str | os.PathLike) -> None:
        """Resolve the record (``record/<name>`` or a path) and ``save_path``; refuse an existing result early."""
        folder = resolve_attack_folder(result_file, self.cwd)
        self.attack_folder = folder
        if self._yaml_was_default and not self._given("dataset") and self._yaml_dataset is None:
            ds = record_dataset(folder)
            if ds:
                self._merge(ds)  # the dataset's own default YAML, now that the record says which
        if not self._given("dataset"):  # a YAML's dataset: is a default, the record decides (interface.md 1.4)
            self.args.dataset = record_dataset(folder) or self.args.dataset

        out = self._given("output_dir")
        # --output_dir under cwd (an absolute path stays as given)
        self.save_dir = self.cwd / out if out else folder / "defense" / default_output_name(self.name, self.config)
        self.save_path = str(self.save_dir) + os.sep
        self.args.result_file = str(result_file)
        self.args.save_path = self.save_path
        self.args.log = str(self.save_dir / "log") + os.sep
        refuse_finished(self.save_dir, self.name, bool(self.cli.get("overwrite")))

    def set_logger(self) -> None:
        """A one-line header on stdout (warnings go to stderr). The log file ``log/<timestamp>.log`` and
        ``run.json`` (every merged setting) are written by the run itself, so one run is one log file."""
        self.logger = logging.getLogger("burn.backdoorbench")
        if not self.cli.get("quiet") and not quiet_rank():  # under torchrun, rank 0 alone
            over = f" + {len(self.cli_overrides)} command-line setting(s)" if self.cli_overrides else ""
            print(f"{self.name}: {self.attack_folder} with {self.yaml_path or 'built-in defaults'}{over} on "
                  f"{self.run_options.get('device') or 'cpu'} -> {self.save_path}", flush=True)

    def mitigation(self) -> dict:
        """Run BURN on the record and write every result file; returns the run summary."""
        if self.attack_folder is None:
            raise BadInputError("no record given; pass --attack_folder NAME (a folder under record/) or call "
                                "defense(NAME)")
        run = self.run_options
        self.summary = defend(
            self.attack_folder, method=self.name, config=self.config, device=run.get("device") or "cpu",
            dataset=self._given("dataset"), model_name=run.get("model"), dataset_path=run.get("dataset_path"),
            trusted=bool(self.cli.get("trust_record")), output_dir=self.save_dir,
            overwrite=bool(self.cli.get("overwrite")), resume=bool(self.cli.get("resume")),
            progress=not self.cli.get("quiet"),
            run_info={"entry": "backdoorbench", "yaml_path": str(self.yaml_path) if self.yaml_path else None,
                      "command_line_settings": self.cli_overrides, "ignored_keys": self.ignored_keys,
                      "result_file": self.args.result_file, "save_path": self.save_path})
        return self.summary

    def defense(self, result_file: str | os.PathLike | None = None) -> dict:
        """``set_result`` + ``set_logger`` + ``mitigation``, as every BackdoorBench defense does."""
        target = result_file or self.args.result_file or self.attack_folder
        if not target:
            raise BadInputError("no record given; pass --attack_folder NAME (a folder under record/)")
        self.set_result(target)
        self.set_logger()
        return self.mitigation()


# ------------------------------------------------------------------------------------------------
_BY_NAME: dict[str, type] = {}


def defense_class(name: str) -> type:
    """The BackdoorBench defense class of registered defense ``name``: :class:`Burn` for ``burn``, else a
    subclass of it carrying the registry's name, label and settings (made once, then reused)."""
    spec = get_defense(name)
    if name == Burn.name:
        return Burn
    if name not in _BY_NAME:
        _BY_NAME[name] = type(spec.display, (Burn,), {
            "__module__": __name__, "__qualname__": spec.display, "name": name, "label": spec.display,
            "resume_help": spec.resume_help,
            "__doc__": f"{spec.display} (:mod:`burn_plugin.defenses.{name}`) in the BackdoorBench defense-class "
                       f"shape of :class:`Burn`: defense/{name}.py, config/defense/{name}/*.yaml, results in "
                       f"record/<attack>/defense/{name}/."})
    return _BY_NAME[name]


def __getattr__(attr: str):
    if attr == "ULRL":   # the class of the registry's ``ulrl``, as earlier versions named it
        return defense_class("ulrl")
    raise AttributeError(attr)


_CLASSES: dict = {}


def make_defense_class(base: type | None = None, cls: type = Burn) -> type:
    """``cls`` (:class:`Burn` or a :func:`defense_class`), made a subclass of BackdoorBench's ``defense.base.defense``
    when importable.

    ``base`` overrides the lookup. The lookup imports ``defense.base`` from ``sys.path`` (the upstream
    scripts put the checkout root there) and falls back to plain ``cls`` on any failure.
    Upstream's base ``__init__`` only prints ``1`` and is not called.
    """
    if base is None:
        try:
            base = getattr(importlib.import_module("defense.base"), "defense", None)
        except Exception:  # noqa: BLE001 - not inside a checkout, or its base does not import: stand alone
            base = None
    if not isinstance(base, type) or issubclass(cls, base):
        return cls
    key = base if cls is Burn else (cls, base)
    if key not in _CLASSES:
        _CLASSES[key] = type(cls.__name__, (cls, base), {"__module__": __name__, "__doc__": cls.__doc__,
                                                         "__qualname__": cls.__name__})
    return _CLASSES[key]


def build_parser(prog: str | None = None, cls: type = Burn) -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog=prog or f"defense/{cls.name}.py",
        description=f"{cls.label} backdoor defense, BackdoorBench style: run from the BackdoorBench root; "
                    f"results go to record/<attack>/defense/{cls.name}/.")
    cls.add_arguments(parser)
    return parser


def main(argv=None, cls: type | None = None, method: str | None = None) -> int:
    """Entry point of ``defense/<method>.py`` (default ``burn``): one-line ``error: ...`` and exit 2 (bad
    input) or 1 on failure."""
    cls = cls or defense_class(method or METHOD)
    args = build_parser(cls=cls).parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")

    def run() -> int:
        if not (args.result_file or getattr(args, "attack_folder", None)):
            raise BadInputError("no record given; pass --attack_folder NAME (a folder under record/, or a path)")
        summary = make_defense_class(cls=cls)(args).defense()
        if summary is not None:  # torchrun's other ranks leave the summary to rank 0
            print_summary(summary)
        return 0
    return run_reporting_errors(run, debug=args.debug)


def ulrl_main(argv=None) -> int:
    """Entry point of ``defense/ulrl.py`` (as earlier entry scripts call it)."""
    return main(argv, method="ulrl")


if __name__ == "__main__":
    sys.exit(main())
