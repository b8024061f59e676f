"""One error type per kind of user mistake.

Every error the plugin raises on purpose derives from :class:`BurnError`. The CLI catches it at the
top, prints ``error: <message>`` on one line (the message always names the problem and the fix) and
exits with the error's ``exit_code``: 2 for bad input (the user can fix it by changing what they
pass), 1 for a runtime failure. ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

import errno
import os
import sys
from typing import Callable


class BurnError(Exception):
    """Base of every error the plugin raises deliberately."""

    exit_code = 1


class BadInputError(BurnError):
    """Something the user passed is wrong; fixable by changing the input."""

    exit_code = 2


class RecordNotFoundError(BadInputError):
    """The attack folder or its ``attack_result.pt`` does not exist or cannot be read."""


class CorruptFileError(BadInputError):
    """A ``.pt``/pickle/CSV file is truncated, corrupt or not what it claims to be."""


class UntrustedFileError(BadInputError):
    """A file needs the full (code-running) unpickler and the user has not marked it trusted."""


class ShapeMismatchError(BadInputError):
    """Class count, image size or state-dict keys of a record disagree with the model/dataset."""


class DataNotFoundError(BadInputError):
    """The clean dataset files are not where the record or the flags say."""


class ConfigError(BadInputError):
    """A YAML/CLI setting is unknown, of the wrong type or out of range."""


class UnknownNameError(ConfigError):
    """An unknown model, dataset, attack, detector or defense name (every registry raises this one)."""


class EmptySelectionError(BadInputError):
    """A percentage of the training set rounds to zero samples."""


class NotBackdoorBenchRootError(BadInputError):
    """A path given as a BackdoorBench checkout does not look like one."""


class OutputExistsError(BadInputError):
    """The output folder already holds results and overwriting was not asked for."""


class OutputBusyError(BadInputError):
    """Another run holds the lock on the output folder (or the sweep's ledger)."""


class ResumeMismatchError(BadInputError):
    """``--resume`` was asked for with a checkpoint of another run (settings, model or data differ)."""


class OutputNotWritableError(BurnError):
    """The output folder is read-only or the disk is full."""


class NonFiniteLossError(BurnError):
    """The training loss became NaN or Inf."""


class RankFailedError(BurnError):
    """One process of a ``torchrun`` run failed; ``torchrun`` then stops the others."""


#: set by torchrun (``torch.distributed.run``) in every process it starts; ``WORLD_SIZE``/``RANK`` without
#: it were left in the environment by hand (an ``export`` in a shell) and make no multi-process run
TORCHRUN_MARK = "TORCHELASTIC_RUN_ID"
#: seconds a rank waits for the others to join the process group (override with this variable)
RENDEZVOUS_TIMEOUT_VAR = "BURN_RENDEZVOUS_TIMEOUT"
DEFAULT_RENDEZVOUS_TIMEOUT = 60.0


def started_by_torchrun() -> bool:
    """True if torchrun started this process (its ``TORCHELASTIC_RUN_ID`` is set)."""
    return bool(os.environ.get(TORCHRUN_MARK))


def stray_torchrun_variables() -> list[str]:
    """torchrun's variables set to a multi-process value in a process torchrun did not start (they are
    ignored: the run is one process)."""
    if started_by_torchrun():
        return []
    return [k for k, one in (("WORLD_SIZE", "1"), ("RANK", "0")) if os.environ.get(k, one).strip() not in ("", one)]


def _env_int(name: str, lo: int, hi: int, fix: str) -> int:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        raise ConfigError(f"{name} is not set although torchrun's {TORCHRUN_MARK} is; {fix}")
    try:
        v = int(raw.strip())
    except ValueError:
        v = None
    if v is None or not lo <= v <= hi:
        raise ConfigError(f"{name}={one_line(raw)[:40]!r} is not an integer in [{lo}, {hi}]; {fix}")
    return v


def torchrun_env() -> dict:
    """``{world, rank, local_rank, master_addr, master_port, timeout}`` of this process: one rank of one
    outside torchrun; under torchrun every variable it sets, checked (``MASTER_ADDR``/``MASTER_PORT`` and
    the rendezvous timeout only for more than one process)."""
    if not started_by_torchrun():
        return {"world": 1, "rank": 0, "local_rank": 0}
    fix = "start the run with torchrun (which sets it), or unset TORCHELASTIC_RUN_ID for one process"
    world = _env_int("WORLD_SIZE", 1, 1 << 16, fix)
    env = {"world": world, "rank": _env_int("RANK", 0, world - 1, fix),
           "local_rank": _env_int("LOCAL_RANK", 0, world - 1, fix)}
    if world > 1:
        addr = os.environ.get("MASTER_ADDR", "").strip()
        if not addr:
            raise ConfigError(f"MASTER_ADDR is not set; {fix}")
        env.update(master_addr=addr, master_port=_env_int("MASTER_PORT", 1, 65535, "pass torchrun a free "
                                                          "--master_port (1..65535), or leave it to --standalone"),
                   timeout=rendezvous_timeout())
    return env


def rendezvous_timeout() -> float:
    """Seconds a rank waits for the others to join (``$BURN_RENDEZVOUS_TIMEOUT``, default 60)."""
    raw = os.environ.get(RENDEZVOUS_TIMEOUT_VAR, "").strip()
    if not raw:
        return DEFAULT_RENDEZVOUS_TIMEOUT
    try:
        v = float(raw)
    except ValueError:
        v = float("nan")
    if not 0 < v <= 86400:  # also NaN
        raise ConfigError(f"{RENDEZVOUS_TIMEOUT_VAR}={one_line(raw)[:40]!r} must be a number of seconds in "
                          f"(0, 86400]; unset it for the default {DEFAULT_RENDEZVOUS_TIMEOUT:g}")
    return v


def quiet_rank() -> bool:
    """True in every process but the first of a multi-process ``torchrun`` run: the input errors that
    every rank finds alike are reported once, by rank 0 (a :class:`RankFailedError` by its own rank).
    Never outside torchrun, whatever ``WORLD_SIZE``/``RANK`` a shell left behind."""
    try:
        env = torchrun_env()
    except ConfigError:  # reporting that very error: every rank says it
        return False
    return env["world"] > 1 and env["rank"] != 0


#: errno values that mean "the path you gave is wrong" (exit 2), not "the machine failed" (exit 1)
_BAD_PATH_ERRNOS = {errno.ENAMETOOLONG, errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}


def os_error_line(exc: OSError) -> str:
    """One line naming what the operating system refused, the path, and the fix."""
    where = f" ({exc.filename})" if exc.filename else ""
    if exc.errno == errno.ENAMETOOLONG:
        return f"a path component is longer than the file system allows{where}; use shorter folder or file names"
    if exc.errno in _BAD_PATH_ERRNOS:
        return f"{exc.strerror or exc}{where}; check the path"
    if exc.errno == errno.ENOSPC:
        return f"disk full{where}; free space and run again (files already written are kept)"
    return f"{exc.strerror or exc}{where}; check permissions and free space"


def one_line(message: str) -> str:
    """``message`` as one printable line: control characters (a newline or record separator inside a
    path or value the user typed) are shown escaped, as Python writes them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(message))


def _quiet_stdout() -> None:
    """The reader of our stdout has gone (``burn info R | head -1``): send the rest nowhere, so that
    the flush at exit raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (captured output)
        pass


def run_reporting_errors(fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``fn``; a :class:`BurnError` becomes one ``error: ...`` line on stderr and its exit code
    (the traceback only with ``debug``), and so does an ``OSError`` (exit 2 for a bad path, else 1);
    a closed pipe on stdout ends the run quietly (exit 0: the reader took what it wanted); Ctrl-C
    exits 130 with a note that written files are whole."""
    try:
        code = int(fn() or 0)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 0
    except BurnError as exc:
        if debug:
            raise
        if not quiet_rank() or isinstance(exc, RankFailedError):
            print(f"error: {one_line(exc)}", file=sys.stderr)
        else:  # rank 0 found the same; torchrun stops every rank when one exits, so let it speak first
            import time

            time.sleep(3)
        return exc.exit_code
    except OSError as exc:
        if debug:
            raise
        print(f"error: {one_line(os_error_line(exc))}", file=sys.stderr)
        return 2 if exc.errno in _BAD_PATH_ERRNOS else 1
    except KeyboardInterrupt:
        print("error: interrupted; files already written are complete (results are written atomically)",
              file=sys.stderr)
        return 130
