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

import contextlib
import errno
import io
import json
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import CorruptFileError, OutputNotWritableError, RecordNotFoundError, UntrustedFileError
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
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise RecordNotFoundError(f"cannot read {what} {path}: {exc.strerror} (check permissions)") from exc
    if trusted:
        try:
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - anything a broken pickle raises
            raise CorruptFileError(f"{what} {path} is corrupt or truncated ({type(exc).__name__}: "
                                   f"{_first_line(exc)}); re-create it") from exc
    try:
        with torch.serialization.safe_globals(numpy_safe_globals()), warnings.catch_warnings():
            # a plain (non-zip) pickle makes torch warn about its protocol on the way to our own error
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if "Unsupported global" in msg or "not an allowed global" in msg or "GLOBAL" in msg:
            needed = _unsafe_globals(data)
            raise UntrustedFileError(
                f"{what} {path} contains objects that only the full unpickler can build "
                f"({', '.join(needed) or 'non-allow-listed globals'}), which would run code from the file; "
                f"if you made this file yourself or trust its source, pass {trust_flag}") from exc
        raise CorruptFileError(f"{what} {path} is corrupt or truncated ({_first_line(exc)}); re-create it") from exc
    except Exception as exc:  # noqa: BLE001 - whatever else a damaged file makes the loader raise (struct.error ...)
        raise CorruptFileError(f"{what} {path} is corrupt or truncated ({type(exc).__name__}: "
                               f"{_first_line(exc)}); re-create it") from exc


def _unsafe_globals(data: bytes) -> list[str]:
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # noqa: BLE001
        return []
    allowed = {"numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
               "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "numpy.ndarray", "numpy.dtype"}
    return sorted(n for n in names if n not in allowed and not n.startswith("numpy.dtypes."))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for ``info.pickle``-style files: builtins and numpy scalars/arrays only."""

    _ALLOWED = {
        ("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "int", "float", "str",
                                  "bool", "bytes", "complex", "slice", "range")
    } | {("collections", "OrderedDict")}

    def find_class(self, module: str, name: str):  # noqa: D401
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("_reconstruct", "scalar"):
            return super().find_class("numpy._core.multiarray", name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return super().find_class(module, name)
        if module == "numpy.dtypes":
            return super().find_class(module, name)
        raise _NotAllowed(f"{module}.{name}")


class _NotAllowed(pickle.UnpicklingError):
    """A plain pickle asked for a global outside the allow-list (code would run to build it)."""


def load_settings_file(path: str | os.PathLike, *, trusted: bool = False) -> dict:
    """Read BackdoorBench's ``info.pickle`` (a ``torch.save``-d ``args.__dict__``) safely.

    BackdoorBench writes it with ``torch.save``; older copies are plain pickles. Both are tried. In
    safe mode a file that asks for anything but plain data is refused with
    :class:`UntrustedFileError`, never executed.
    """
    path = Path(path)
    try:
        obj = torch_load(path, trusted=trusted, what="settings file")
    except CorruptFileError:
        try:
            with open(path, "rb") as fh:
                obj = pickle.load(fh) if trusted else _RestrictedUnpickler(fh).load()
        except _NotAllowed as exc:
            raise UntrustedFileError(f"settings file {path} contains objects that only the full unpickler can build "
                                     f"({exc}), which would run code from the file; if you made this file yourself "
                                     f"or trust its source, pass --trust-record") from exc
        except Exception as exc:  # noqa: BLE001
            raise CorruptFileError(f"settings file {path} cannot be read ({_first_line(exc)})") from exc
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
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, tuple)):
        return list(o)
    return str(o)


# ----------------------------------------------------------------------------------------------
# the on-disk checkpoint and boundary cache that ``defend`` hands to the core loop

class FileCheckpoint:
    """``<folder>/last.pt``: a run's state after its last finished round, read safely (a checkpoint is
    never trusted: it holds tensors and plain data only) and replaced atomically."""

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
            self._loaded = obj
        return self._loaded

    def save(self, state: dict) -> None:
        save_torch(state, self.path)
        self._loaded = state


class FileBoundaryCache:
    """``<folder>/boundary_<key>.pt``: boundary analyses keyed by weights, data and settings. A broken
    or unreadable entry is a miss (it is recomputed and replaced)."""

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
