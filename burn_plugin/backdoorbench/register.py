"""Install the plugin's defenses (BURN, ULRL, ...) into a BackdoorBench checkout (``burn register``) and take
them out again.

BackdoorBench has no registry (interface.md section 9): a defense *is* a script
``defense/<name>.py`` plus ``config/defense/<name>/{config,cifar10,cifar100,gtsrb,tiny}.yaml``.
:func:`register` copies, for each method of :func:`methods` (the defenses of the registry,
:mod:`burn_plugin.defenses`, that run as BackdoorBench scripts: ``burn``, then ``ulrl``), the plugin's one
generic entry script (``defense/entry.py``, package ``burn_plugin.bb_scripts``) as ``defense/<method>.py``
and ``bb_configs/<method>/*.yaml`` (package ``burn_plugin.bb_configs``) to those places. Each method has its own manifest in its config
folder (``config/defense/burn/.burn_plugin_manifest.json``, ``config/defense/ulrl/...``), so BURN's
files and manifest are exactly what they were before ULRL existed; the rules below hold for each.

Safety rules:

- The target must look like a BackdoorBench checkout (:func:`check_bb_root`): it holds the folders
  ``defense/`` and ``config/defense/``, and at least one of ``utils/``, ``record/`` or ``attack/``.
- Every installed file is listed with its sha256 in ``config/defense/burn/.burn_plugin_manifest.json``
  (:data:`MANIFEST`), together with the folders ``register`` had to create.
- A file that exists and was not written by ``register`` (not in the manifest), or that was changed
  after ``register`` wrote it (hash differs from the manifest), is never replaced without ``force``.
  All conflicts (of every method) are found before anything is written, so a refused run changes
  nothing.
- Running ``register`` again is a no-op when nothing changed, and updates files this plugin wrote
  (and nobody edited) when the packaged copies are newer.
- :func:`unregister` removes exactly the files in the manifest whose hash still matches (others only
  with ``force``, again checked before anything is removed), the manifest, and then the folders
  ``register`` created if they are empty.
- The manifest is a file in the checkout that anyone could have edited, so :func:`unregister` trusts
  none of its paths: every file it names must be one that ``register`` installs for that method
  (:func:`managed_files`), every folder one that ``register`` creates (:func:`config_dir`), and each
  must lie inside the checkout once symbolic links are resolved. One entry that is not refuses the
  whole uninstall before anything is removed, ``force`` or not (``force`` only allows removing
  register's own files that were changed since).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from .. import __version__
from ..errors import ConfigError, CorruptFileError, NotBackdoorBenchRootError, OutputExistsError
from ..fileio import atomic_write, save_json
from ..settings import defense_yaml_dir, package_data_dir
# Imports of torch-heavy modules sit inside the functions that need them: this module stays free of torch and
# pandas so that `burn --help` and argument errors answer at once (tests/test_import_cycles.py holds it to that).


def methods() -> tuple[str, ...]:
    """The defenses ``burn register`` installs, in this order: the registry's with a BackdoorBench script."""
    from ..defenses import all_defenses

    return tuple(d.name for d in all_defenses() if d.backdoorbench_script)


MANIFEST_NAME = ".burn_plugin_manifest.json"


def script_path(method: str) -> Path:
    """``defense/<method>.py``, relative to the checkout."""
    return Path("defense") / f"{method}.py"


def config_dir(method: str) -> Path:
    """``config/defense/<method>``, relative to the checkout."""
    return Path("config/defense") / method


def manifest_path(method: str) -> Path:
    """``config/defense/<method>/.burn_plugin_manifest.json``, relative to the checkout."""
    return config_dir(method) / MANIFEST_NAME


MANIFEST = manifest_path("burn")


def installed_configs() -> tuple[str, ...]:
    """BackdoorBench's per-defense YAML set (interface.md 6.1): ``config`` and one per dataset it ships a
    YAML for (the dataset registry's ``bb_defense_yaml``); the others stay in the package
    (defense/burn.py falls back to the bundled copies)."""
    from ..bench.datasets import get_spec, list_datasets

    return ("config",) + tuple(n for n in list_datasets() if get_spec(n).bb_defense_yaml)


# a checkout has all of REQUIRED_DIRS and at least one of MARKER_DIRS
REQUIRED_DIRS = ("defense", "config/defense")
MARKER_DIRS = ("utils", "record", "attack")
ROOT_ENV = "BACKDOORBENCH_ROOT"


# ------------------------------------------------------------------------------------------------
# where the packaged files are

def bundled_script(name: str = "entry.py") -> Path:
    """The packaged generic BackdoorBench entry script (``burn_plugin.bb_scripts``, the repo's ``defense/``);
    installed once per defense as ``defense/<name>.py``, it runs the defense it is named after."""
    d = package_data_dir("burn_plugin.bb_scripts", "defense")
    if d is None or not (d / name).is_file():
        raise ConfigError(f"the packaged script {name} is missing from this burn_plugin installation; "
                          f"reinstall burn-plugin")
    return d / name


def managed_files(method: str = "burn") -> dict[Path, Path]:
    """Relative path in the checkout -> packaged source file, for one method of :func:`methods`."""
    files = {script_path(method): bundled_script()}
    d = defense_yaml_dir(method)
    for name in installed_configs():
        src = d / f"{name}.yaml"
        if not src.is_file():
            raise ConfigError(f"the config {src} of defense {method} is missing; reinstall burn-plugin (or give "
                              f"the defense its YAMLs)")
        files[config_dir(method) / f"{name}.yaml"] = src
    return files


# ------------------------------------------------------------------------------------------------
# the checkout

def resolve_bb_root(bb_root: str | os.PathLike | None) -> Path:
    """``--bb-root``, else ``$BACKDOORBENCH_ROOT``; checked with :func:`check_bb_root`."""
    value = bb_root if bb_root not in (None, "") else os.environ.get(ROOT_ENV)
    if not value:
        raise NotBackdoorBenchRootError(f"no BackdoorBench checkout given; pass --bb-root PATH or set {ROOT_ENV}")
    return check_bb_root(value)


def check_bb_root(path: str | os.PathLike) -> Path:
    """Return the resolved root, or raise :class:`NotBackdoorBenchRootError` saying what is missing."""
    root = Path(path).expanduser()
    if not root.exists():
        raise NotBackdoorBenchRootError(f"BackdoorBench checkout {root} does not exist; pass the folder that "
                                        f"holds defense/, config/defense/ and utils/")
    if not root.is_dir():
        raise NotBackdoorBenchRootError(f"{root} is a file, not a BackdoorBench checkout folder")
    problems = []
    missing = [d + "/" for d in REQUIRED_DIRS if not (root / d).is_dir()]
    if missing:
        problems.append(f"has no {' and no '.join(missing)}")
    if not any((root / d).is_dir() for d in MARKER_DIRS):
        problems.append(f"has none of {', '.join(d + '/' for d in MARKER_DIRS)}")
    if problems:
        raise NotBackdoorBenchRootError(
            f"{root} does not look like a BackdoorBench checkout: it {' and '.join(problems)} (a checkout holds "
            f"defense/, config/defense/ and utils/ or record/); pass the checkout's root folder with --bb-root")
    return root.resolve()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_manifest(root: Path, method: str = "burn") -> dict | None:
    """The manifest of a previous ``register`` for ``method`` (None if there is none)."""
    path = root / manifest_path(method)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        files = data["files"]
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("files must map paths to hashes")
        data.setdefault("created_dirs", [])
        return data
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CorruptFileError(f"{path} is not a readable burn register manifest ({exc}); delete it "
                               f"and the files it listed, or run burn register --force") from None


def _write_manifest(root: Path, files: dict[str, str], created_dirs: list[str], method: str = "burn") -> None:
    data = {"tool": "burn_plugin", "version": __version__, "files": dict(sorted(files.items())),
            "created_dirs": sorted(set(created_dirs))}
    path = root / manifest_path(method)
    try:
        if json.loads(path.read_text()) == data:
            return  # a repeated register leaves every file untouched
    except (OSError, ValueError):
        pass
    save_json(data, path)


@dataclass
class Action:
    path: str       # relative to the checkout
    action: str     # installed / updated / unchanged / replaced / removed / kept / missing
    note: str = ""

    def line(self) -> str:
        return f"{self.action:9} {self.path}" + (f"  ({self.note})" if self.note else "")


# ------------------------------------------------------------------------------------------------
def register(bb_root: str | os.PathLike | None, *, force: bool = False) -> list[Action]:
    """Install (or update) ``defense/<method>.py`` and ``config/defense/<method>/*.yaml`` for every method
    of :func:`methods`; see the module doc."""
    root = resolve_bb_root(bb_root)
    per_method, conflicts = [], []
    for method in methods():
        manifest = read_manifest(root, method) or {"files": {}, "created_dirs": []}
        known: dict[str, str] = dict(manifest["files"])
        plan = []
        for rel, src in managed_files(method).items():
            dest, key, new = root / rel, rel.as_posix(), sha256(src)
            if not dest.exists():
                plan.append((rel, src, new, "installed"))
            elif dest.is_dir() or dest.is_symlink():
                conflicts.append(f"{key} (a {'folder' if dest.is_dir() else 'symbolic link'})")
                if not dest.is_dir():
                    plan.append((rel, src, new, "replaced"))
            else:
                cur = sha256(dest)
                if cur == new:
                    plan.append((rel, src, new, "unchanged"))
                elif known.get(key) == cur:
                    plan.append((rel, src, new, "updated"))
                else:
                    why = "changed since burn register wrote it" if key in known else "not written by burn register"
                    conflicts.append(f"{key} ({why})")
                    plan.append((rel, src, new, "replaced"))
        per_method.append((method, manifest, known, plan))
    hard = [c for c in conflicts if c.endswith("(a folder)")]
    if hard:
        raise OutputExistsError(f"cannot install over {', '.join(hard)} in {root}; move it away first")
    if conflicts and not force:
        raise OutputExistsError(f"refusing to overwrite {', '.join(conflicts)} in {root}; nothing was changed; "
                                f"pass --force to replace them")
    actions = []
    for method, manifest, known, plan in per_method:
        created = list(manifest["created_dirs"])
        if not (root / config_dir(method)).exists():
            created.append(config_dir(method).as_posix())
        for rel, src, new, what in plan:
            dest = root / rel
            if what != "unchanged":
                if dest.is_symlink():
                    dest.unlink()
                atomic_write(dest, lambda tmp: shutil.copyfile(src, tmp))
            note = "identical copy was already there; now managed" if what == "unchanged" and \
                rel.as_posix() not in known else ""
            known[rel.as_posix()] = new
            actions.append(Action(rel.as_posix(), what, note))
        _write_manifest(root, known, created, method)
        actions.append(Action(manifest_path(method).as_posix(), "manifest", "sha256 of every installed file"))
    return actions


def _inside(root: Path, rel: str, *, folder: bool = False) -> bool:
    """Whether ``root / rel`` stays inside ``root`` (resolved) once symbolic links are followed: every
    component for a ``folder``; for a file all but the last (removing a link removes the link, not its
    target)."""
    path = root / rel
    try:
        real = path.resolve() if folder else path.parent.resolve() / path.name
    except (OSError, RuntimeError):  # a symlink loop
        return False
    return root in real.parents


def check_manifest_paths(root: Path, method: str, manifest: dict) -> None:
    """Refuse (:class:`CorruptFileError`, one line) a manifest naming a file ``register`` does not install
    for ``method``, a folder it does not create, or a path that leaves the checkout ``root`` (resolved)."""
    where = root / manifest_path(method)
    fix = (f"nothing was removed; the manifest was not written by burn register (or was edited): delete {where} "
           f"and remove {method}'s files (defense/{method}.py, {config_dir(method).as_posix()}/) by hand")
    own_files = {rel.as_posix() for rel in managed_files(method)}
    own_dirs = {config_dir(method).as_posix()}
    dirs = manifest.get("created_dirs", [])
    if not isinstance(dirs, list):
        raise CorruptFileError(f"{where} has created_dirs {dirs!r}, not a list of folders; {fix}")
    for kind, entries, own in (("file", list(manifest["files"]), own_files), ("folder", dirs, own_dirs)):
        for key in entries:
            if not isinstance(key, str) or key not in own:
                verb = "installs" if kind == "file" else "creates"
                raise CorruptFileError(f"{where} names the {kind} {key!r}, which burn register never {verb} "
                                       f"(its {kind}s for {method}: {', '.join(sorted(own))}); {fix}")
            if not _inside(root, key, folder=kind == "folder"):
                raise CorruptFileError(f"{where} names {key!r}, which leads outside the checkout {root} through "
                                       f"a symbolic link; {fix}")
    if not _inside(root, manifest_path(method).as_posix()):
        raise CorruptFileError(f"{config_dir(method).as_posix()} in {root} leads outside the checkout through a "
                               f"symbolic link; {fix}")


def unregister(bb_root: str | os.PathLike | None, *, force: bool = False) -> list[Action]:
    """Remove what :func:`register` installed, for every method (see the module doc); returns what was done."""
    root = resolve_bb_root(bb_root)
    manifests = [(m, read_manifest(root, m)) for m in methods()]
    for method, manifest in manifests:  # every entry of every manifest is checked before anything is removed
        if manifest is not None:
            check_manifest_paths(root, method, manifest)
    if all(man is None for _, man in manifests):
        return [Action(MANIFEST.as_posix(), "missing", "burn register has not installed anything here; "
                       "nothing removed")]
    changed, plans, actions = [], [], []
    for method, manifest in manifests:
        if manifest is None:
            actions.append(Action(manifest_path(method).as_posix(), "missing",
                                  f"{method} was not installed here; nothing of it removed"))
            continue
        remove = []
        for key, digest in manifest["files"].items():
            path = root / key
            if not path.exists() and not path.is_symlink():
                actions.append(Action(key, "missing", "already gone"))
            elif path.is_dir():
                changed.append(f"{key} (now a folder)")
            elif path.is_symlink() or not path.is_file() or sha256(path) != digest:  # a pipe is not hashed
                changed.append(f"{key} (changed since burn register wrote it)")
                remove.append(key)
            else:
                remove.append(key)
        plans.append((method, manifest, remove))
    hard = [c for c in changed if c.endswith("(now a folder)")]
    if hard or (changed and not force):
        raise OutputExistsError(f"refusing to remove {', '.join(changed)} in {root}; nothing was removed; "
                                + ("move it away first" if hard else "pass --force to remove them anyway"))
    for method, manifest, remove in plans:
        for key in remove:
            (root / key).unlink()
            actions.append(Action(key, "removed"))
        (root / manifest_path(method)).unlink()
        actions.append(Action(manifest_path(method).as_posix(), "removed"))
        for d in sorted(manifest["created_dirs"], key=lambda p: -len(Path(p).parts)):
            path = root / d
            if path.is_dir():
                try:
                    path.rmdir()
                    actions.append(Action(d + "/", "removed", "folder created by burn register"))
                except OSError:
                    actions.append(Action(d + "/", "kept", "not empty: holds files burn register did not write"))
    return actions


def installed_state(root: Path, methods=("burn",)) -> list[tuple[str, str]]:
    """``(path, state)`` for each managed file of ``methods``: current / outdated / modified / foreign / missing.

    BURN's only by default (what ``burn doctor`` checks); ``methods=methods()`` includes the others'."""
    out = []
    for method in methods:
        files = (read_manifest(root, method) or {"files": {}})["files"]
        for rel, src in managed_files(method).items():
            key, dest = rel.as_posix(), root / rel
            if not dest.is_file():
                out.append((key, "missing"))
                continue
            cur = sha256(dest)
            if cur == sha256(src):
                out.append((key, "current"))
            elif key not in files:
                out.append((key, "foreign"))
            else:
                out.append((key, "outdated" if files[key] == cur else "modified"))
    return out
