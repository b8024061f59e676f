"""What the report layer knows about defenses before reading their numbers: their names and order in
tables (where results lie is :mod:`burn_plugin.bench.runs`). Imported by the table (:mod:`.compare`),
the across-attacks tables (:mod:`.across`) and the plots (:mod:`.plots`), which import nothing of each
other's but what they need."""
from __future__ import annotations

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


def labels_of(df) -> dict[str, str]:
    """defense -> its name in tables and figures: the tidy table's ``label`` (from the run's ``run.json``),
    else :func:`display_name` (BackdoorBench's own defenses, and tables written before labels were)."""
    out = {}
    for d in dict.fromkeys(df["defense"]):
        given = df[df["defense"] == d]["label"] if "label" in df.columns else []
        out[d] = next((v for v in given if isinstance(v, str) and v), "") or display_name(d)
    return out


def plain_text(value, limit: int = 80) -> str | None:
    """``value`` if it is a one-line text of at most ``limit`` characters, else None: a ``run.json`` is read
    as a stranger's file, and what it says becomes table headers, cells, figure titles and data-used lines."""
    return value if isinstance(value, str) and 0 < len(value) <= limit and value.isprintable() else None


def md_escape(s: str) -> str:
    return str(s).replace("|", "\\|")
