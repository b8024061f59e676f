"""One error type per kind of user mistake.

Every error the plugin raises on purpose derives from :class:`BurnError`. The CLI catches it at the
top, prints ``error: <message>`` on one line (the message always names the problem and the fix) and
exits with the error's ``exit_code``: 2 for bad input (the user can fix it by changing what they
pass), 1 for a runtime failure. ``--debug`` shows the traceback instead.
"""
from __future__ import annotations

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


class UnknownNameError(BadInputError):
    """An unknown model, dataset, attack or defense name."""


class ShapeMismatchError(BadInputError):
    """Class count, image size or state-dict keys of a record disagree with the model/dataset."""


class DataNotFoundError(BadInputError):
    """The clean dataset files are not where the record or the flags say."""


class ConfigError(BadInputError):
    """A YAML/CLI setting is unknown, of the wrong type or out of range."""


class EmptySelectionError(BadInputError):
    """A percentage of the training set rounds to zero samples."""


class NotBackdoorBenchRootError(BadInputError):
    """A path given as a BackdoorBench checkout does not look like one."""


class OutputExistsError(BadInputError):
    """The output folder already holds results and overwriting was not asked for."""


class ResumeMismatchError(BadInputError):
    """``--resume`` was asked for with a checkpoint of another run (settings, model or data differ)."""


class OutputNotWritableError(BurnError):
    """The output folder is read-only or the disk is full."""


class NonFiniteLossError(BurnError):
    """The training loss became NaN or Inf."""


def run_reporting_errors(fn: Callable[[], int | None], *, debug: bool = False) -> int:
    """Run ``fn``; a :class:`BurnError` becomes one ``error: ...`` line on stderr and its exit code
    (the traceback only with ``debug``); Ctrl-C exits 130 with a note that written files are whole."""
    try:
        return int(fn() or 0)
    except BurnError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted; files already written are complete (results are written atomically)",
              file=sys.stderr)
        return 130
