"""Where results lie in a record folder: the attack folders under a record root, each attack's
``defense/<name>/`` folders, a run's ``run.json``, and the model a run saved (:func:`load_defense_model`,
which ``burn compare`` re-evaluates with :func:`burn_plugin.bench.metrics.evaluate_model`). Read by the runs that write there (the sweep
decides what is done from them) and by the report that tables them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import CorruptFileError, RecordNotFoundError, ShapeMismatchError
from ..fileio import torch_load
from .models import build_model, load_weights


def find_attack_folders(root: str | os.PathLike) -> list[Path]:
    """Attack folders under ``root`` (``root`` itself if it holds ``attack_result.pt``), sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise RecordNotFoundError(f"record folder not found: {root} (give BackdoorBench's record/ folder, "
                                  f"the one holding <attack>/attack_result.pt)")
    if (root / "attack_result.pt").is_file():
        return [root]
    found = sorted(d for d in root.iterdir()
                   if d.is_dir() and not d.name.startswith(".") and (d / "attack_result.pt").is_file())
    if not found:
        raise RecordNotFoundError(f"no attack folders under {root}: none of its sub-folders holds attack_result.pt "
                                  f"(give BackdoorBench's record/ folder)")
    return found


def find_defense_folders(attack_folder: Path) -> list[Path]:
    """``<attack>/defense/<name>/`` folders, names starting with ``.`` skipped, sorted by name."""
    d = Path(attack_folder) / "defense"
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")) if d.is_dir() else []


def attack_dir(root: Path, attack: str) -> Path:
    """The folder of ``attack`` under the record root ``root`` (``root`` itself when it is that record)."""
    return root if (root / "attack_result.pt").is_file() and root.name == attack else root / attack


def read_run_json(defense_dir: Path) -> dict:
    """A run's ``run.json`` as a dict ({} when it is missing or unreadable)."""
    f = Path(defense_dir) / "run.json"
    if not f.is_file():
        return {}
    try:
        obj = json.loads(f.read_text())
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def load_defense_model(defense_dir: Path, record, *, trusted: bool = False):
    """``(model, model_name)`` from ``defense_result.pt`` (a plain ``nn.Module``, weights loaded).

    Raises a :class:`~burn_plugin.errors.BurnError` saying why when it cannot be rebuilt.
    """
    path = Path(defense_dir) / "defense_result.pt"
    obj = torch_load(path, trusted=trusted, what="defense result")
    if not isinstance(obj, dict) or not obj:
        raise CorruptFileError(f"{path} is empty (BackdoorBench writes an empty dict when the defense's loss "
                               f"became NaN/Inf)")
    sd = obj.get("model")
    if not isinstance(sd, dict) or not sd:
        raise CorruptFileError(f"{path} has no state dict under 'model'")
    name = obj.get("model_name") or record.model_name
    k = obj.get("num_classes", record.num_classes)
    try:
        k = int(k)
    except (TypeError, ValueError):
        raise CorruptFileError(f"{path}: num_classes is {k!r}") from None
    if k != record.num_classes:
        raise ShapeMismatchError(f"{path} is a {k}-class model but the record has {record.num_classes} classes")
    model = build_model(str(name), k)
    try:
        return load_weights(model, sd, model_name=str(name), source=str(path)), str(name)
    except (RuntimeError, TypeError, ValueError, AttributeError) as exc:
        raise ShapeMismatchError(f"{path}: state dict cannot be loaded into {name!r} ({exc})") from exc
