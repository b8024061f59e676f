"""Where results lie in a record folder: the attack folders under a record root, each attack's
``defense/<name>/`` folders, and a run's ``run.json``. Read by the runs that write there (the sweep
decides what is done from them) and by the report that tables them."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import RecordNotFoundError


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
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


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
