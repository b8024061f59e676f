"""Safe reading and atomic writing of every file the plugin touches.

Reading: ``.pt`` files are opened with ``torch.load(weights_only=True)`` plus an explicit allow-list
of the numpy types BackdoorBench records contain (arrays, dtypes, scalars, under both the numpy-1
``numpy.core`` and numpy-2 ``numpy._core`` module names). Anything else a pickle asks for (PIL images
in RAM-mode records, arbitrary callables) is refused with :class:`UntrustedFileError` unless the
caller passes ``trusted=True`` (the user's ``--trust-record``), and only then does the full
unpickler run.

Writing: every result goes to a temporary file in the target folder and is renamed into place, so
a killed run never leaves a half-written file behind.
"""
from __future__ import annotations

import builtins
import collections
import contextlib
import errno
import fcntl
import functools
import hashlib
import io
import json
import os
import pickle
import secrets
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import (CorruptFileError, OutputBusyError, OutputNotWritableError, RecordNotFoundError,
                     ResumeMismatchError, UntrustedFileError)
from .safe_globals import numpy_safe_globals


def torch_load(path: str | os.PathLike, *, trusted: bool = False, what: str = "file",
               trust_flag: str = "--trust-record") -> Any:
    """Load a ``.pt`` file without running pickle code unless ``trusted``.

    Raises :class:`RecordNotFoundError` (missing/unreadable), :class:`CorruptFileError`
    (truncated/not a torch file) or :class:`UntrustedFileError` (needs the full unpickler).
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise RecordNotFoundError(f"{what} not found: {path} (check the path)")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise RecordNotFoundError(f"cannot read {what} {path}: {exc.strerror} (check permissions)") from exc
    try:
        if trusted:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
            # a plain (non-zip) pickle makes torch warn about its protocol on the way to our own error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - anything a damaged file makes the loader raise (struct.error ...)
        detail = f"{type(exc).__name__}: {first_line(exc)}"
        if not trusted and isinstance(exc, pickle.UnpicklingError):   # the weights-only unpickler said no
            msg = str(exc)
            if "Unsupported global" in msg or "not an allowed global" in msg or "GLOBAL" in msg:
                raise UntrustedFileError(
                    f"{what} {path} contains objects that only the full unpickler can build "
                    f"({', '.join(_unsafe_globals(data)) or 'non-allow-listed globals'}), which would run code "
                    f"from the file; if you made this file yourself or trust its source, pass {trust_flag}") from exc
            detail = first_line(exc)
        raise CorruptFileError(f"{what} {path} is corrupt or truncated ({detail}); re-create it") from exc


def _unsafe_globals(data: bytes) -> list[str]:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # noqa: BLE001
        return []
    allowed = {f"{module}.{name}" for module, name in _allowed_globals()}
    return sorted(n for n in names if n not in allowed)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 200 characters), else its type's name."""
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


@functools.cache
def _allowed_globals() -> dict[tuple[str, str], Any]:
    """The exact ``(module, name)`` pairs a plain-pickle record file may name, and the objects they stand
    for: plain containers and scalars, and the numpy arrays, dtypes and scalars of
    :func:`~burn_plugin.safe_globals.numpy_safe_globals` (the very list ``torch_load`` allows), under
    the names a pickle gives them. No name is looked up by walking attributes, and no module is allowed
    as a whole: a pair not in this table is refused, whatever the module. Built once."""
    table: dict[tuple[str, str], Any] = {
        ("builtins", n): getattr(builtins, n)
        for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str", "bool", "bytes",
                  "bytearray", "complex")
    }
    table[("collections", "OrderedDict")] = collections.OrderedDict
    for entry in numpy_safe_globals():
        obj, name = entry if isinstance(entry, tuple) else (entry, f"{entry.__module__}.{entry.__qualname__}")
        module, _, attr = name.rpartition(".")
        table[(module, attr)] = obj
    return table


class _RecordUnpickler(pickle.Unpickler):
    """The one unpickler for plain pickles inside a record (``info.pickle`` and the like): only the exact
    names of :func:`_allowed_globals`; persistent ids are refused."""

    def find_class(self, module: str, name: str):  # noqa: D401
        obj = _allowed_globals().get((module, name))
        if obj is None:
            raise _NotAllowed(f"{module}.{name}"[:120])
        return obj

    def persistent_load(self, pid):  # noqa: D401
        raise _NotAllowed("a persistent id")


class _NotAllowed(pickle.UnpicklingError):
    """A plain pickle asked for a global outside the allow-list (code would run to build it)."""


def load_pickle_bytes(data: bytes, *, trusted: bool = False, encoding: str = "ASCII", what: str = "pickle") -> Any:
    """Unpickle ``data`` with :class:`_RecordUnpickler` (``trusted``: the full unpickler). A global outside
    the allow-list raises :class:`UntrustedFileError`; ``encoding`` as :class:`pickle.Unpickler`'s (Python-2
    pickles of numpy arrays need ``latin1``)."""
    if trusted:
        return pickle.loads(data, encoding=encoding)
    try:
        return _RecordUnpickler(io.BytesIO(data), encoding=encoding).load()
    except _NotAllowed as exc:
        raise UntrustedFileError(f"{what} contains objects that only the full unpickler can build ({exc}), which "
                                 f"would run code from the file; if you made this file yourself or trust its "
                                 f"source, pass --trust-record") from None


#: a settings file larger than this is not BackdoorBench's ``args.__dict__`` (a few KB)
MAX_SETTINGS_BYTES = 16 * 1024 * 1024


def load_settings_file(path: str | os.PathLike, *, trusted: bool = False) -> dict:
    """Read BackdoorBench's ``info.pickle`` (a ``torch.save``-d ``args.__dict__``) safely.

    Every read of a record's ``info.pickle`` goes through here. BackdoorBench writes it with
    ``torch.save`` (read by :func:`torch_load`'s allow-list); older copies are plain pickles (read by
    :class:`_RecordUnpickler`'s exact allow-list). In safe mode a file that asks for anything but plain
    data is refused with :class:`UntrustedFileError`, never executed.
    """
    path = Path(path)
    try:
        if path.stat().st_size > MAX_SETTINGS_BYTES:
            raise CorruptFileError(f"settings file {path} is {path.stat().st_size} bytes, far more than a settings "
                                   f"dict; it is not BackdoorBench's info.pickle (delete or replace it)")
    except OSError as exc:
        raise RecordNotFoundError(f"cannot read settings file {path}: {exc.strerror} (check the path)") from exc
    try:
        obj = torch_load(path, trusted=trusted, what="settings file")
    except CorruptFileError:
        try:
            obj = load_pickle_bytes(path.read_bytes(), trusted=trusted, what=f"settings file {path}")
        except UntrustedFileError:
            raise
        except Exception as exc:  # noqa: BLE001 - whatever a damaged pickle makes the unpickler raise
            raise CorruptFileError(f"settings file {path} cannot be read ({first_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise CorruptFileError(f"settings file {path} holds a {type(obj).__name__}, expected a dict")
    return obj


# ----------------------------------------------------------------------------------------------
# atomic writing

@contextlib.contextmanager
def atomic_path(target: str | os.PathLike):
    """Yield a temporary path beside ``target``; rename it onto ``target`` only on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give results the usual permissions
        os.replace(tmp, target)
    except OSError as exc:
        raise _write_error(target, exc) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_error(target: Path, exc: OSError) -> OutputNotWritableError:
    if exc.errno == errno.ENOSPC:
        return OutputNotWritableError(f"disk full while writing {target}; free space and run again "
                                      f"(files already written are kept)")
    return OutputNotWritableError(f"cannot write {target}: {exc.strerror or exc}; choose a writable "
                                  f"output folder")


def atomic_write(target: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Call ``writer(tmp_path)`` and move the result onto ``target`` atomically."""
    with atomic_path(target) as tmp:
        writer(tmp)
    return Path(target)


def save_torch(obj: Any, target: str | os.PathLike) -> Path:
    import torch

    return atomic_write(target, lambda p: torch.save(obj, p))


def save_text(text: str, target: str | os.PathLike) -> Path:
    return atomic_write(target, lambda p: p.write_text(text))


def save_json(obj: Any, target: str | os.PathLike) -> Path:
    return save_text(json.dumps(obj, indent=2, default=_json_default) + "\n", target)


def save_csv(df, target: str | os.PathLike, **kwargs) -> Path:
    return atomic_write(target, lambda p: df.to_csv(p, **kwargs))


def save_npz(target: str | os.PathLike, **arrays) -> Path:
    def _w(p: Path) -> None:
        with open(p, "wb") as fh:
            np.savez_compressed(fh, **arrays)
    return atomic_write(target, _w)


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)   # Path and anything else


# ----------------------------------------------------------------------------------------------
# the on-disk checkpoint and boundary cache that ``defend`` hands to the core loop

class FileCheckpoint:
    """``<folder>/last.pt``: a run's state after its last finished round, read safely (a checkpoint is
    never trusted: it holds tensors and plain data only) and replaced atomically.

    Only a checkpoint this tool wrote for a run it started is resumed: every save carries the run's
    token (:func:`start_run`), kept in the user's own folder, never in the output folder, so a
    checkpoint that came with a downloaded record cannot match it."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.path = self.folder / "last.pt"
        self._loaded: Any = None

    def load(self) -> dict | None:
        if self._loaded is None:
            if not self.path.is_file():
                return None
            try:
                obj = torch_load(self.path, what="checkpoint")
            except (CorruptFileError, UntrustedFileError) as exc:
                why = "is corrupt or truncated" if isinstance(exc, CorruptFileError) else \
                    "holds objects that would run code when loaded"
                raise CorruptFileError(f"checkpoint {self.path} {why}; delete it, or run again with --overwrite "
                                       f"instead of --resume") from None
            if not isinstance(obj, dict):
                raise CorruptFileError(f"checkpoint {self.path} holds a {type(obj).__name__}, not a checkpoint; "
                                       f"delete it, or run again with --overwrite instead of --resume")
            token = run_token(self.folder.parent)
            if token is None or obj.get("started_by") != token:
                raise ResumeMismatchError(f"checkpoint {self.path} was not written by a run that burn started here "
                                          f"(a record can ship one); run without --resume, with --overwrite if a "
                                          f"result is there")
            self._loaded = obj
        return self._loaded

    def save(self, state: dict) -> None:
        out = self.folder.parent
        state = {**state, "started_by": run_token(out) or start_run(out)}
        save_torch(state, self.path)
        self._loaded = state


class FileBoundaryCache:
    """``<folder>/boundary_<key>.pt``: boundary analyses keyed by weights, data and settings. A broken
    or unreadable entry is a miss (it is recomputed and replaced). ``burn defend`` keeps it in the
    user's folder (:func:`boundary_cache_dir`), never in a record folder, whose files a stranger wrote."""

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)

    def get(self, key: str) -> dict | None:
        try:
            obj = torch_load(self.folder / f"boundary_{key}.pt", what="boundary cache entry")
        except (CorruptFileError, UntrustedFileError, RecordNotFoundError):
            return None
        return obj if isinstance(obj, dict) else None

    def put(self, key: str, value: dict) -> None:
        save_torch(value, self.folder / f"boundary_{key}.pt")


def writable_folder(folder: str | os.PathLike) -> bool:
    """True if ``folder`` exists or can be made, and a file can be created in it (the probe is removed)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".write_test.", dir=folder)
        os.close(fd)
        os.unlink(tmp)
        return True
    except OSError:
        return False


# ----------------------------------------------------------------------------------------------
# the user's own folder: caches and the marks of runs this tool started (never inside a record)

def user_dir() -> Path:
    """``$BURN_HOME``, else ``$XDG_CACHE_HOME/burn-plugin``, else ``~/.cache/burn-plugin``."""
    if os.environ.get("BURN_HOME"):
        return Path(os.environ["BURN_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "burn-plugin"


def boundary_cache_dir() -> Path:
    """Where ``burn defend`` caches boundary analyses: ``<user_dir>/boundary``."""
    return user_dir() / "boundary"


def boundary_cache_folder(out: str | os.PathLike) -> Path:
    """Where a run caches boundary analyses: :func:`boundary_cache_dir` (shared by every run of this
    user), never a record folder, whose files a stranger may have written; the run's own output folder
    ``out`` when the user's folder is not writable."""
    shared = boundary_cache_dir()
    return shared if writable_folder(shared) else Path(out) / ".burn_cache"


def _run_mark(out: str | os.PathLike) -> Path:
    key = hashlib.sha256(str(Path(out).resolve()).encode()).hexdigest()[:32]
    return user_dir() / "runs" / f"{key}.json"


def start_run(out: str | os.PathLike) -> str:
    """Mark ``out`` as a run this tool started (a fresh random token in the user's folder) and return
    the token; an earlier mark for the same folder is replaced, so its checkpoints no longer match."""
    token = secrets.token_hex(16)
    save_json({"output_dir": str(Path(out).resolve()), "token": token}, _run_mark(out))
    return token


def _read_mark(out: str | os.PathLike) -> dict:
    try:
        obj = json.loads(_run_mark(out).read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) and isinstance(obj.get("token"), str) else {}


def run_token(out: str | os.PathLike) -> str | None:
    """The token of the run this tool last started in ``out``, or None (never started here)."""
    return _read_mark(out).get("token")


def finish_run(out: str | os.PathLike) -> None:
    """Mark the run this tool started in ``out`` as finished: every file there is its own."""
    mark = _read_mark(out)
    if mark:
        save_json({**mark, "finished": True}, _run_mark(out))


def finished_here(out: str | os.PathLike) -> bool:
    """True if the last run this tool started in ``out`` finished: its results are this tool's, not files
    that came with a record."""
    return _read_mark(out).get("finished") is True


def started_here(out: str | os.PathLike) -> bool:
    """True if this tool started a run in ``out`` (on this machine, for this user)."""
    return run_token(out) is not None


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, *, what: str = "run"):
    """Hold an exclusive lock for writing ``folder`` (a lock file ``.<name>.lock`` beside it); a second
    holder is refused at once with :class:`OutputBusyError` (one line, exit 2), never let in to replace
    the first one's files. The lock goes with the process, so a killed run leaves no lock in force, and
    the file is removed on release (a holder checks that the file it locked is still the one at the path)."""
    folder = Path(folder)
    lock = folder.parent / f".{folder.name}.lock"
    for _ in range(100):
        lock.parent.mkdir(parents=True, exist_ok=True)   # an OSError here is the path's: the CLI reports it in one line
        fh = open(lock, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            raise OutputBusyError(f"another {what} is writing into {folder} right now; wait for it to finish, or "
                                  f"choose another output folder") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fh.fileno()).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        fh.close()   # the holder before us removed this file on release: lock the new one
    else:
        raise OutputBusyError(f"cannot take the lock {lock}; try again")
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock)
        fh.close()
