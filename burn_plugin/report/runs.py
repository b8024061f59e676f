"""What the report layer knows about a defense result folder before reading its numbers: the names and
order of defenses in tables, a run's ``run.json``, where an attack's folder is. Imported by the table
(:mod:`.compare`), the across-attacks tables (:mod:`.across`) and the plots (:mod:`.plots`), which
import nothing of each other's but what they need."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

NO_DEFENSE = "no_defense"

#: Column order of known defenses (the paper's order; BURN last); others follow alphabetically.
DEFENSE_ORDER = ("ft", "fp", "nad", "anp", "i-bau", "ft-sam", "sau", "ulrl", "burn")
DISPLAY_NAMES = {NO_DEFENSE: "No defense", "ft": "FT", "fp": "FP", "nad": "NAD", "anp": "ANP", "i-bau": "i-BAU",
                 "ft-sam": "FT-SAM", "sau": "SAU", "ulrl": "ULRL", "burn": "BURN"}


def order_defenses(names: Iterable[str]) -> list[str]:
    """Known defenses in :data:`DEFENSE_ORDER`, then the rest alphabetically."""
    names = list(dict.fromkeys(names))
    known = [n for n in DEFENSE_ORDER if n in names]
    return known + sorted(n for n in names if n not in DEFENSE_ORDER)


def display_name(defense: str) -> str:
    return DISPLAY_NAMES.get(defense, defense)


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


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")


def attack_dir(root: Path, attack: str) -> Path:
    """The folder of ``attack`` under the record root ``root`` (``root`` itself when it is that record)."""
    return root if (root / "attack_result.pt").is_file() and root.name == attack else root / attack
