"""``burn sweep``: BackdoorBench's own defenses (and BURN) over attack records; the command line then
runs ``burn compare`` on them (:mod:`burn_plugin.cli` composes the two).

    burn sweep --bb-root ~/BackdoorBench --attacks badnet_fm --fast
    burn sweep --bb-root ~/BackdoorBench --attacks badnet_fm,blended_fm --defenses fp,sau,burn --device cuda
    burn sweep --bb-root ~/BackdoorBench --attacks badnet_fm --dry-run        # print the commands only

For every (attack, defense) pair one subprocess, run from the BackdoorBench root:

- BackdoorBench's defenses (``fp``, ``nad``, ``anp``, ``i-bau``, ``ft-sam``, ``sau``, ``ft``) run
  *unmodified*, as ``<bb python> <package>/backdoorbench/bb_runner.py --fix ... defense/<name>.py
  --result_file <attack> --yaml_path ./config/defense/<name>/<dataset or cifar10>.yaml --dataset <ds>
  --dataset_path ./data --model <record's model> --device <dev> --num_workers 0 --pin_memory False
  --amp False --random_seed <seed> --index <file>`` (+ the ``--fast`` settings). ``bb_runner.py``
  applies in memory only the run-time fixes that defense needs on current torch / numpy (its
  docstring gives each one and why; :func:`fixes_for` says which defense gets which) and records in
  a report which of them acted. Nothing is written into BackdoorBench's files.
- The plugin's methods (``burn``; ``ulrl``) run as ``burn defend --attack_folder <R>/record/<attack>
  --method <name>`` with this interpreter.

Every defense that uses clean data gets the *same* clean-subset index file: ``--index FILE``, or one
the sweep writes once per attack to ``record/<attack>/sweep/clean_index.txt`` (one integer per
line, as ``config/defense/index/cifar10_index.txt``; read by BackdoorBench with ``np.loadtxt``):
``random.sample(range(N), int(N * ratio))`` seeded with ``--random-seed``, which is the subset
BackdoorBench's ``choose_index`` would draw itself after ``fix_random(seed)``. BURN uses no clean
data (it works on the poisoned training set).

Per run, in ``record/<attack>/defense/<name>/``: ``sweep_log.txt`` (the subprocess's stdout and
stderr), ``sweep_fixes.json`` (the runner's report) and ``sweep_run.json`` (command, fixes asked for
and those that acted, fast settings, index, start / end, ``wall_s``, return code, status). For
BackdoorBench's defenses the sweep also writes ``run.json`` with ``wall_seconds`` and ``data_used``,
which is where ``burn compare`` reads wall time; BackdoorBench writes no file of that name, and one
not written by the sweep is never replaced. BURN's own ``run.json`` is left as ``burn defend`` wrote it.

A run is finished when ``defense_result.pt`` holds a non-empty dict (BackdoorBench writes an empty
one when a loss became NaN). Finished runs are skipped, so an interrupted sweep can be resumed;
``--rerun`` runs them again. Before a BackdoorBench defense runs again, its old folder is moved to
``defense/.sweep_previous/<name>-<timestamp>/`` (the compare walk skips folders starting with ``.``).
A failed run does not stop the sweep; it is reported with the end of its log and the exit status is 1.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Sequence

from ..bench.datasets import (backdoorbench_datasets, choose_clean_index, get_spec, index_text, known_dataset,
                              list_datasets)
from ..bench.runs import find_attack_folders, read_run_json
from ..defenses import all_defenses
from ..errors import BadInputError, BurnError, RecordNotFoundError, UnknownNameError, UntrustedFileError
from ..fileio import (finish_run, finished_here, folder_lock, load_settings_file, save_json, save_text, start_run,
                      started_here, torch_load)
from ..registry import Registry
from .register import resolve_bb_root

#: the standalone runner launched with BackdoorBench's interpreter
RUNNER = Path(__file__).resolve().with_name("bb_runner.py")

#: how the plugin's own methods are launched (``burn`` with this interpreter)
PLUGIN_COMMAND: list[str] = [sys.executable, "-m", "burn_plugin"]

BACKDOORBENCH, PLUGIN = "backdoorbench", "plugin"

#: the YAML per dataset that BackdoorBench ships (others fall back to cifar10.yaml)
YAML_FALLBACK = "cifar10"


@dataclass(frozen=True)
class SweepDefense:
    """How the sweep runs one defense (the plugin's own facts are in :mod:`burn_plugin.defenses`)."""

    name: str
    runner: str                 # BACKDOORBENCH or PLUGIN
    fast: tuple                 # command-line settings added by --fast
    uses_clean_index: bool = True


#: every defense the sweep can run; ``fast`` starts from running-here.md's cost knobs, smaller still
DEFENSES: Registry[SweepDefense] = Registry("defense for the sweep", sort=False)
for _spec in (
    # fp prunes 1% of the last layer's inputs per step and evaluates the test sets after each one until
    # ACC falls 10%; on mobilenet_v3_large (960 inputs) that is up to ~96 evaluations, so 5% steps
    SweepDefense("fp", BACKDOORBENCH, ("--epochs", "2", "--once_prune_ratio", "0.05")),
    SweepDefense("nad", BACKDOORBENCH, ("--te_epochs", "2")),           # teacher and student epochs
    SweepDefense("anp", BACKDOORBENCH, ("--nb_iter", "50", "--print_every", "25")),
    SweepDefense("i-bau", BACKDOORBENCH, ("--n_rounds", "2")),
    SweepDefense("ft-sam", BACKDOORBENCH, ("--epochs", "2")),
    SweepDefense("sau", BACKDOORBENCH, ("--n_rounds", "2")),
    SweepDefense("ft", BACKDOORBENCH, ("--epochs", "2")),
):
    DEFENSES.register(_spec.name, _spec)


def _add_plugin_defenses() -> None:
    """The plugin's defenses (:mod:`burn_plugin.defenses`; run through ``burn defend``), after BackdoorBench's
    own: a plugin defense of the same name as one of BackdoorBench's (``ft``) leaves BackdoorBench's in place."""
    for d in all_defenses():
        if d.name not in DEFENSES:
            DEFENSES.register(d.name, SweepDefense(d.name, PLUGIN, tuple(d.fast), uses_clean_index=d.uses_clean_data))


_add_plugin_defenses()
DEFAULT_DEFENSES = ("fp", "nad", "anp", "i-bau", "ft-sam", "sau", "burn")


def fixes_for(defense: str, dataset: str, model: str, *, trusted: bool = False) -> list[str]:
    """The ``bb_runner.py`` fixes a BackdoorBench defense gets (none for the plugin's methods).

    Every defense: ``np-infty`` (NumPy 2; the plot helper FP, ANP, I-BAU and SAU call) and
    ``torch-load`` (torch >= 2.6 cannot read ``attack_result.pt`` with plain ``weights_only=True``;
    the fix allows the numpy types a record holds and nothing else), or ``torch-load-trusted`` (the
    full unpickler) for a record the user trusts (``--trust-record``).
    I-BAU: ``cuda-fallback`` (its hard-coded ``device='cuda'``) and, on MobileNetV3, ``hardsigmoid``
    (no double backward). FT-SAM: ``ftsam-index`` (it ignores ``--index``). ``mnist``: ``mnist-rgb``
    and ``mnist-denorm``. The runner's report says which of them actually acted.
    """
    if DEFENSES[defense].runner != BACKDOORBENCH:
        return []
    fixes = ["np-infty", "torch-load-trusted" if trusted else "torch-load"]
    if defense == "i-bau":
        fixes.append("cuda-fallback")
        if str(model).startswith("mobilenet_v3"):
            fixes.append("hardsigmoid")
    if defense == "ft-sam":
        fixes.append("ftsam-index")
    if dataset == "mnist":
        fixes += ["mnist-rgb", "mnist-denorm"]
    return fixes


# ------------------------------------------------------------------------------------------------
# what a sweep does

@dataclass
class AttackInfo:
    name: str
    folder: Path
    dataset: str
    model: str
    n_train: int | None
    index: Path | None = None          # the clean-subset index file (absolute)
    index_text: str | None = None      # what the sweep will write there (None: given or already there)
    index_samples: int | None = None
    index_sha256: str | None = None


@dataclass
class SweepRun:
    attack: AttackInfo
    defense: str
    command: list[str]
    cwd: Path
    out_dir: Path
    fixes: list[str]
    fast: list[str]
    state: str                          # result before the run: ok / empty / missing / unreadable
    action: str                         # run / skip
    env: dict = field(default_factory=dict)
    status: str = "pending"             # ok / failed / skipped / interrupted / dry-run
    returncode: int | None = None
    wall_s: float | None = None
    fixes_acted: dict = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.attack.name} / {self.defense}"

    @property
    def log(self) -> Path:
        return self.out_dir / "sweep_log.txt"

    @property
    def report(self) -> Path:
        return self.out_dir / "sweep_fixes.json"

    @property
    def runner(self) -> str:
        return DEFENSES[self.defense].runner

    def command_line(self) -> str:
        return shlex.join(str(c) for c in self.command)


@dataclass
class SweepPlan:
    root: Path
    python: str
    device: str
    fast: bool
    attacks: list[AttackInfo]
    defenses: list[str]
    runs: list[SweepRun]
    ratio: float
    seed: int
    trusted: bool = False


# ------------------------------------------------------------------------------------------------
# checks and planning (everything is validated before any work)

def parse_defenses(value) -> list[str]:
    _add_plugin_defenses()   # defenses registered since this module was imported
    names = _split(value) or list(DEFAULT_DEFENSES)
    unknown = [n for n in names if n not in DEFENSES]
    if unknown:
        raise UnknownNameError(f"unknown defense(s) {', '.join(unknown)}; the sweep runs "
                               f"{', '.join(DEFENSES)} (check --defenses)")
    return list(dict.fromkeys(names))


def _split(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.split(",")
    return [v.strip() for v in value if v and v.strip()]


def resolve_python(python: str | None, root: Path) -> str:
    """``--python``, else the checkout's ``.venv``/``venv`` interpreter, else this one."""
    if python:
        p = shutil.which(python) if os.sep not in python and "/" not in python else python
        path = Path(p).expanduser() if p else Path(python)
        if not path.is_file() or not os.access(path, os.X_OK):
            raise BadInputError(f"python interpreter not found: {python}; pass --python the interpreter of "
                                f"BackdoorBench's environment (e.g. {root / '.venv' / 'bin' / 'python'})")
        return str(path.absolute())
    for cand in (root / ".venv" / "bin" / "python", root / "venv" / "bin" / "python"):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand.absolute())
    return sys.executable


def find_bb_attack(root: Path, name: str) -> Path:
    folder = root / "record" / name
    if not (folder / "attack_result.pt").is_file():
        rec = root / "record"
        have = sorted(d.name for d in rec.iterdir() if (d / "attack_result.pt").is_file()) if rec.is_dir() else []
        raise RecordNotFoundError(
            f"attack record {name!r} not found: {folder / 'attack_result.pt'} does not exist; available under "
            f"{rec}: {', '.join(have) or 'none'} (check --attacks, or make the record with BackdoorBench's "
            f"attack script first)")
    return folder


def read_attack_info(folder: Path, *, dataset: str | None, model: str | None, trusted: bool) -> AttackInfo:
    """Dataset, model name and clean-train size of a record, from ``info.pickle`` / ``attack_result.pt``."""
    def refuse(path: Path) -> UntrustedFileError:
        # BackdoorBench's defenses would unpickle the file in full and run that code: refuse the record
        return UntrustedFileError(
            f"record {folder.name}: {path} holds objects only the full unpickler can build, so BackdoorBench's "
            f"defenses would run code from it; pass --trust-record only if you made the record or trust its source")

    obj, problem = None, None
    try:
        obj = torch_load(folder / "attack_result.pt", trusted=trusted, what="attack record")
    except UntrustedFileError:
        raise refuse(folder / "attack_result.pt") from None
    except BurnError as exc:
        problem = str(exc)
    if obj is not None and not isinstance(obj, dict):
        obj, problem = None, f"{folder / 'attack_result.pt'} is not an attack record dict"
    rec_dataset = None
    info = folder / "info.pickle"
    if info.is_file():
        try:
            v = load_settings_file(info, trusted=trusted).get("dataset")
            rec_dataset = v if isinstance(v, str) else None
        except UntrustedFileError:
            raise refuse(info) from None
        except BurnError:
            pass
    if obj is not None and isinstance(obj.get("clean_data"), str):
        rec_dataset = obj["clean_data"]  # what load_attack_result itself uses
    rec_model = obj.get("model_name") if obj is not None and isinstance(obj.get("model_name"), str) else None
    if dataset and rec_dataset and dataset != rec_dataset:
        raise BadInputError(f"--dataset {dataset} disagrees with record {folder.name}, which was made on "
                            f"{rec_dataset}; drop --dataset or pass --dataset {rec_dataset}")
    if model and rec_model and model != rec_model:
        raise BadInputError(f"--model {model} disagrees with record {folder.name}, whose model is {rec_model}; "
                            f"drop --model or pass --model {rec_model}")
    if rec_dataset is not None and not known_dataset(rec_dataset):
        raise BadInputError(f"record {folder.name} names dataset {rec_dataset!r:.80}, which is no dataset the plugin or "
                            f"BackdoorBench knows; the record is damaged or hostile (pass --dataset to override)")
    ds, mdl = dataset or rec_dataset, model or rec_model
    if not ds or not mdl:
        lacking = [w for w, v in (("dataset", ds), ("model", mdl)) if not v]
        why = f" ({problem})" if problem else ""
        raise BadInputError(f"cannot tell the {' and '.join(lacking)} of record {folder.name} from its files{why}; "
                            f"pass {' and '.join('--' + w for w in lacking)}, or --trust-record if you made the record "
                            f"yourself")
    n_train = None
    if obj is not None and isinstance(obj.get("bd_train"), dict):
        with contextlib.suppress(TypeError):   # no length: left to the dataset's size below
            n_train = len(obj["bd_train"].get("poison_indicator"))
    if n_train is None:   # no bd_train state to read it from: the dataset's full training split
        n_train = _train_size(ds)
    return AttackInfo(folder.name, folder, ds, mdl, n_train)


def _train_size(bb_name: str | None) -> int | None:
    sizes = {get_spec(n).bb_name: get_spec(n).train_size for n in list_datasets() if get_spec(n).bb_name}
    return sizes.get(bb_name)


def choose_yaml(root: Path, defense: str, dataset: str) -> str:
    """``./config/defense/<name>/<dataset>.yaml`` if the checkout has it, else ``cifar10.yaml``
    (then ``config.yaml``)."""
    base = root / "config" / "defense" / defense
    for stem in (dataset, YAML_FALLBACK, "config"):
        if (base / f"{stem}.yaml").is_file():
            return f"./config/defense/{defense}/{stem}.yaml"
    raise BadInputError(f"{base} holds no {dataset}.yaml, {YAML_FALLBACK}.yaml or config.yaml; the checkout "
                        f"is incomplete (check --bb-root)")


def plan_index(info: AttackInfo, *, index: str | None, ratio: float, seed: int) -> None:
    """Fill ``info.index*``: the given ``--index`` (checked) or the sweep's own file (drawn, not written yet)."""
    import numpy as np

    if index:
        path = Path(index).expanduser().absolute()
        idx = choose_clean_index(info.n_train if info.n_train is not None else 10**12, ratio, seed, str(path))
        info.index = path
        text = path.read_bytes()
    else:
        if info.n_train is None:
            raise BadInputError(f"the size of {info.name}'s clean training set is unknown (dataset {info.dataset}); "
                                f"pass --index FILE with the clean-subset indices")
        idx = choose_clean_index(info.n_train, ratio, seed)
        info.index = info.folder / "sweep" / "clean_index.txt"
        new = index_text(idx)
        old = info.index.read_text() if info.index.is_file() else None
        info.index_text = None if old == new else new
        text = new.encode()
    info.index_samples = int(np.asarray(idx).size)
    info.index_sha256 = hashlib.sha256(text).hexdigest()


def result_state(defense_dir: Path) -> str:
    """``ok`` (a non-empty dict), ``empty`` (BackdoorBench's NaN marker or a 0-byte file),
    ``missing`` or ``unreadable``."""
    f = Path(defense_dir) / "defense_result.pt"
    if not f.is_file():
        return "missing"
    if f.stat().st_size == 0:
        return "empty"
    try:
        obj = torch_load(f, what="defense result")
    except UntrustedFileError:
        return "ok"  # holds objects beyond tensors, but something is there
    except BurnError:
        return "unreadable"
    return "ok" if isinstance(obj, dict) and obj else "empty"


def settings_key(command: Sequence) -> list[str]:
    """What a run's command says about its settings: the command without the flags that only say how
    to treat an earlier result (``--overwrite``, ``--resume``)."""
    return [str(c) for c in command if str(c) not in ("--overwrite", "--resume")]


def is_done(out: Path, command: Sequence) -> bool:
    """A finished result counts as done only when this tool made it (:func:`~burn_plugin.fileio.finished_here`:
    a record can ship ``defense/<name>/`` with any files in it) and the sweep that made it used the
    settings this one would use (its ``sweep_run.json`` command); anything else is run again."""
    if not finished_here(out):
        return False
    try:
        rec = json.loads((Path(out) / "sweep_run.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(rec, dict) and rec.get("status") == "ok" and \
        isinstance(rec.get("command"), list) and settings_key(rec["command"]) == settings_key(command)


def build_command(plan_root: Path, python: str, info: AttackInfo, defense: str, *, device: str, fast: bool,
                  seed: int, trusted: bool, state: str, rerun: bool) -> tuple[list[str], list[str], list[str]]:
    """(command, fixes, fast settings) for one run."""
    spec = DEFENSES[defense]
    fast_args = list(spec.fast) if fast else []
    if spec.runner == BACKDOORBENCH:
        fixes = fixes_for(defense, info.dataset, info.model, trusted=trusted)
        cmd = [python, str(RUNNER), "--root", str(plan_root),
               "--report", str(info.folder / "defense" / defense / "sweep_fixes.json")]
        if fixes:
            cmd += ["--fix", ",".join(fixes)]
        cmd += [f"defense/{defense}.py", "--result_file", info.name,
                "--yaml_path", choose_yaml(plan_root, defense, info.dataset), "--dataset", info.dataset,
                "--dataset_path", "./data", "--model", info.model, "--device", device, "--num_workers", "0",
                "--pin_memory", "False", "--amp", "False", "--random_seed", str(seed)]
        if spec.uses_clean_index:
            cmd += ["--index", str(info.index)]
        return cmd + fast_args, fixes, fast_args
    cmd = [*PLUGIN_COMMAND, "-q", "defend", "--attack_folder", str(info.folder), "--method", defense,
           "--device", device, "--random_seed", str(seed)]
    if spec.uses_clean_index:
        cmd += ["--index", str(info.index)]
    if trusted:
        cmd.append("--trust_record")
    out = info.folder / "defense" / defense
    if rerun or state != "missing":
        cmd.append("--overwrite")  # asked for again, or a broken result: `burn defend` never replaces one silently
    elif started_here(out) and (out / "checkpoint" / "last.pt").is_file():
        cmd.append("--resume")  # an interrupted run this tool started continues from its last round checkpoint
    return cmd + fast_args, [], fast_args


def plan_sweep(bb_root, *, attacks=None, defenses=None, device: str = "cpu", fast: bool = False,
               python: str | None = None, dataset: str | None = None, model: str | None = None,
               ratio: float = 0.05, index: str | None = None, seed: int = 0, rerun: bool = False,
               trusted: bool = False) -> SweepPlan:
    """Check everything and decide every run (nothing is written)."""
    names = parse_defenses(defenses)  # a bad name is reported before the checkout is even looked at
    root = resolve_bb_root(bb_root)
    if not 0 < ratio <= 1:
        raise BadInputError(f"--ratio must be in (0, 1], got {ratio}")
    bb_names = [n for n in names if DEFENSES[n].runner == BACKDOORBENCH]
    for n in bb_names:
        if not (root / "defense" / f"{n}.py").is_file():
            raise BadInputError(f"{root / 'defense' / (n + '.py')} does not exist: this BackdoorBench checkout "
                                f"has no {n} defense (drop it from --defenses or update the checkout)")
    py = resolve_python(python, root) if bb_names else sys.executable
    attack_names = _split(attacks)
    folders = ([find_bb_attack(root, a) for a in dict.fromkeys(attack_names)] if attack_names
               else find_attack_folders(root / "record"))
    infos = []
    for folder in folders:
        info = read_attack_info(folder, dataset=dataset, model=model, trusted=trusted)
        if bb_names and info.dataset not in backdoorbench_datasets():
            raise BadInputError(f"record {info.name} is on dataset {info.dataset!r}, which BackdoorBench's defenses "
                                f"do not know ({', '.join(backdoorbench_datasets())}); make the record with BackdoorBench "
                                f"(Fashion-MNIST is served as 'mnist') or sweep only burn")
        if any(DEFENSES[n].uses_clean_index for n in names):
            plan_index(info, index=index, ratio=ratio, seed=seed)
        for n in bb_names:
            choose_yaml(root, n, info.dataset)
        infos.append(info)
    runs = []
    for info in infos:
        for n in names:
            out = info.folder / "defense" / n
            state = result_state(out)
            cmd, fixes, fast_args = build_command(root, py, info, n, device=device, fast=fast, seed=seed,
                                                  trusted=trusted, state=state, rerun=rerun)
            action = "skip" if not rerun and state == "ok" and is_done(out, cmd) else "run"
            env = {"PYTHONUNBUFFERED": "1"}
            if DEFENSES[n].runner == BACKDOORBENCH:
                env["PYTHONDONTWRITEBYTECODE"] = "1"  # no __pycache__ inside the checkout
            runs.append(SweepRun(info, n, cmd, root, out, fixes, fast_args, state, action, env=env))
    return SweepPlan(root, py, device, fast, infos, names, runs, ratio, seed, trusted)


# ------------------------------------------------------------------------------------------------
# running

def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _tail(path: Path, n: int = 15) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64_000))
            data = fh.read().decode("utf-8", "replace")
    except OSError:
        return []
    # progress bars rewrite a line with \r: keep what the line finally said
    lines = [ln.rsplit("\r", 1)[-1] for ln in data.replace("\r\n", "\n").split("\n")]
    return [ln for ln in lines if ln.strip()][-n:]


def _move_aside(out_dir: Path) -> Path | None:
    """Move an old BackdoorBench output folder to ``defense/.sweep_previous/<name>-<timestamp>``."""
    if not out_dir.is_dir():
        return None
    dest_root = out_dir.parent / ".sweep_previous"
    dest_root.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    dest = dest_root / f"{out_dir.name}-{stamp}"
    k = 1
    while dest.exists():
        dest = dest_root / f"{out_dir.name}-{stamp}_{k}"
        k += 1
    out_dir.rename(dest)
    return dest


def data_used(run: SweepRun, plan: SweepPlan) -> str | None:
    info = run.attack
    if not DEFENSES[run.defense].uses_clean_index or info.index_samples is None:
        return None
    share = f"{info.index_samples / info.n_train:.1%} " if info.n_train else ""
    return f"{share}clean subset ({info.index_samples} samples, the sweep's shared index)"


def write_run_files(run: SweepRun, plan: SweepPlan, started: str, ended: str) -> None:
    info = run.attack
    record = {
        "written_by": "burn sweep", "attack": info.name, "defense": run.defense, "runner": run.runner,
        "command": [str(c) for c in run.command], "command_line": run.command_line(), "cwd": str(run.cwd),
        "python": plan.python if run.runner == BACKDOORBENCH else PLUGIN_COMMAND[0],
        "dataset": info.dataset, "model": info.model, "device": plan.device, "random_seed": plan.seed,
        "fixes": run.fixes, "fixes_acted": run.fixes_acted, "fast": plan.fast, "fast_settings": run.fast,
        "index": ({"path": str(info.index), "samples": info.index_samples, "sha256": info.index_sha256}
                  if DEFENSES[run.defense].uses_clean_index and info.index else None),
        "started": started, "ended": ended, "wall_s": run.wall_s, "returncode": run.returncode,
        "status": run.status, "result": result_state(run.out_dir), "log": str(run.log),
        "log_tail": run.log_tail if run.status != "ok" else [], "note": run.note,
    }
    save_json(record, run.out_dir / "sweep_run.json")
    if run.runner == BACKDOORBENCH and run.status == "ok":
        existing = run.out_dir / "run.json"
        if not existing.exists() or read_run_json(run.out_dir).get("written_by") == "burn sweep":
            save_json({"written_by": "burn sweep", "method": run.defense, "wall_seconds": run.wall_s,
                       "data_used": data_used(run, plan), "fast": plan.fast, "fast_settings": run.fast,
                       "fixes_acted": run.fixes_acted, "details": "sweep_run.json"}, existing)


def _read_fix_report(path: Path) -> dict:
    try:
        rep = json.loads(Path(path).read_text())
        return {k: int(v.get("acted", 0)) for k, v in rep.get("fixes", {}).items()}
    except (OSError, ValueError, AttributeError, TypeError):
        return {}


def execute(run: SweepRun, plan: SweepPlan, *, tick: Callable[[float], None] | None = None,
            poll_s: float = 0.5) -> None:
    """Run one subprocess, its output in ``sweep_log.txt``; fills status, wall time and the fixes that acted.
    A BackdoorBench run holds the output folder's lock (``burn defend`` takes its own) and marks the folder
    as started and finished by this tool."""
    if run.runner != BACKDOORBENCH:
        return _execute(run, plan, tick=tick, poll_s=poll_s)
    with folder_lock(run.out_dir, what=f"run of {run.defense}"):
        _execute(run, plan, tick=tick, poll_s=poll_s)


def _execute(run: SweepRun, plan: SweepPlan, *, tick, poll_s: float) -> None:
    if run.runner == BACKDOORBENCH and run.out_dir.exists() and (run.state != "missing" or any(run.out_dir.iterdir())):
        moved = _move_aside(run.out_dir)
        if moved is not None:
            run.note = f"previous folder moved to {moved}"
    run.out_dir.mkdir(parents=True, exist_ok=True)
    if run.runner == BACKDOORBENCH:
        start_run(run.out_dir)
    if run.report.exists():   # a stale report from an earlier run
        run.report.unlink()
    started, t0 = _now(), time.perf_counter()
    run.status = "running"
    with open(run.log, "wb") as log:
        log.write(f"# burn sweep, {started}\n# cwd: {run.cwd}\n# {run.command_line()}\n\n".encode())
        log.flush()
        proc = subprocess.Popen([str(c) for c in run.command], cwd=run.cwd, env={**os.environ, **run.env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            while True:
                try:
                    proc.wait(timeout=poll_s)
                    break
                except subprocess.TimeoutExpired:
                    if tick is not None:
                        tick(time.perf_counter() - t0)
        except BaseException:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            run.wall_s = round(time.perf_counter() - t0, 3)
            run.returncode, run.status = proc.returncode, "interrupted"
            run.log_tail = _tail(run.log)
            run.fixes_acted = _read_fix_report(run.report)
            write_run_files(run, plan, started, _now())
            raise
    run.wall_s = round(time.perf_counter() - t0, 3)
    run.returncode = proc.returncode
    run.fixes_acted = _read_fix_report(run.report) if run.runner == BACKDOORBENCH else {}
    state = result_state(run.out_dir)
    if proc.returncode == 0 and state == "ok":
        run.status = "ok"
    else:
        run.status = "failed"
        why = []
        if proc.returncode != 0:
            why.append(f"exit status {proc.returncode}")
        if state != "ok":
            why.append({"missing": "no defense_result.pt written",
                        "empty": "defense_result.pt is empty (BackdoorBench writes that when a loss became NaN/Inf)",
                        "unreadable": "defense_result.pt cannot be read"}[state])
        run.note = "; ".join(why + ([run.note] if run.note else []))
        run.log_tail = _tail(run.log)
    write_run_files(run, plan, started, _now())
    if run.runner == BACKDOORBENCH and run.status == "ok":
        finish_run(run.out_dir)


def format_seconds(s: float | None) -> str:
    if s is None:
        return "–"
    return f"{s:.1f} s" if s < 120 else (f"{s / 60:.1f} min" if s < 3600 else f"{s / 3600:.2f} h")


def describe_plan(plan: SweepPlan) -> list[str]:
    """The header lines: what runs where, the fast settings and the shared index."""
    lines = [f"sweep: {len(plan.attacks)} attack(s) x {len(plan.defenses)} defense(s) "
             f"({', '.join(plan.defenses)}) on {plan.device}, BackdoorBench at {plan.root}",
             f"BackdoorBench's python: {plan.python}"]
    if plan.fast:
        lines.append("fast settings (fewer epochs/rounds than the YAMLs): " + "; ".join(
            f"{n} {' '.join(DEFENSES[n].fast)}" for n in plan.defenses))
    for info in plan.attacks:
        idx = (f"clean index {info.index} ({info.index_samples} samples"
               + (", to be written" if info.index_text is not None else "") + ")") if info.index else "no clean index"
        lines.append(f"{info.name}: dataset {info.dataset}, model {info.model}, {idx}")
    return lines


def run_sweep(plan: SweepPlan, *, dry_run: bool = False, progress: bool = True,
              say: Callable[[str], None] | None = None) -> list[SweepRun]:
    """Run (or, with ``dry_run``, print) every planned run; returns the runs with their outcome."""
    say = say or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for line in describe_plan(plan):
        say(line)
    if dry_run:
        for i, run in enumerate(plan.runs, 1):
            skip = " [finished: would be skipped; --rerun runs it again]" if run.action == "skip" else ""
            fixes = f"  (run-time fixes: {', '.join(run.fixes)})" if run.fixes else ""
            print(f"# [{i}/{len(plan.runs)}] {run.label}{skip}{fixes}")
            print(f"cd {shlex.quote(str(run.cwd))} && {run.command_line()}")
            run.status = "dry-run"
        return plan.runs
    for info in plan.attacks:
        if info.index_text is not None:
            save_text(info.index_text, info.index)
    todo = [r for r in plan.runs if r.action == "run"]
    bar = None
    if progress and todo:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo), unit="run", desc="sweep", file=sys.stderr, dynamic_ncols=True)
    out = (lambda m: bar.write(m, file=sys.stderr)) if bar is not None else say
    live = sys.stderr.isatty()
    try:
        k = 0
        for run in plan.runs:
            if run.action == "skip":
                run.status = "skipped"
                out(f"{run.label}: finished before, skipped (--rerun runs it again)")
                continue
            k += 1
            out(f"[{k}/{len(todo)}] {run.label}: running (log {run.log})")
            if bar is not None:
                bar.set_postfix_str(run.label)

            def tick(elapsed: float, run=run) -> None:
                if bar is not None and live:   # a per-run clock only on a terminal, not into log files
                    bar.set_postfix_str(f"{run.label} {format_seconds(elapsed)}", refresh=True)

            execute(run, plan, tick=tick)
            acted = [n for n, c in run.fixes_acted.items() if c]
            extra = f"; run-time fixes that acted: {', '.join(acted)}" if acted else ""
            if run.status == "ok":
                out(f"[{k}/{len(todo)}] {run.label}: done in {format_seconds(run.wall_s)}{extra}")
            else:
                out(f"[{k}/{len(todo)}] {run.label}: FAILED after {format_seconds(run.wall_s)} ({run.note}); "
                    f"log {run.log}{extra}")
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return plan.runs


def summary_lines(runs: Sequence[SweepRun]) -> list[str]:
    """A Markdown table of the runs (status, wall time, fast settings, fixes that acted) and the failures."""
    lines = ["| attack | defense | status | wall time | fast settings | run-time fixes (acted) |",
             "|---|---|---|---:|---|---|"]
    for r in runs:
        fixes = ", ".join(f"{n} ({r.fixes_acted.get(n, 0)})" if r.fixes_acted else n for n in r.fixes) or "–"
        lines.append(f"| {r.attack.name} | {r.defense} | {r.status} | {format_seconds(r.wall_s)} | "
                     f"{' '.join(r.fast) or '–'} | {fixes} |")
    failed = [r for r in runs if r.status in ("failed", "interrupted")]
    if failed:
        lines.append("")
        for r in failed:
            lines.append(f"{r.label} failed: {r.note}; log {r.log}; last lines:")
            lines += [f"    {ln}" for ln in r.log_tail[-10:]]
    return lines

