"""Side-by-side comparison of every defense on every attack under a BackdoorBench ``record/`` folder.

:func:`gather_results` walks ``<root>/*/`` (folders holding ``attack_result.pt``) and each
``defense/<name>/`` (names starting with ``.`` are skipped, e.g. BURN's ``.burn_cache``) and returns a
tidy table, one row per (attack, defense) plus one ``no_defense`` row per attack:

- Numbers come from **one evaluator** where possible: the saved ``defense_result.pt``
  (``{model_name, num_classes, model}``, interface.md 1.5) is loaded safely and rebuilt from the model
  zoo by :func:`burn_plugin.bench.runs.load_defense_model` and evaluated by
  :func:`burn_plugin.bench.metrics.evaluate_model` on the record's own ``clean_test`` and ``bd_test``
  (source ``re-evaluated``); this module only calls them. The record is loaded once per attack.
- Otherwise (no ``defense_result.pt``, an empty dict as BackdoorBench writes after a NaN loss, an
  unknown model name, a state dict that does not fit, a record that cannot be loaded, or
  ``reevaluate=False``) the defense's own summary CSV is read (source ``csv``) under BackdoorBench's
  file name for that defense (interface.md 1.6, 7): row ``last`` of ``ft_df_summary.csv``,
  ``sau_df_summary.csv``, ``i-bau_df_summary.csv``, ``nad_df_summary.csv``,
  ``finetune_df_summary.csv`` (fp), ``log/d-sam_df_summary.csv`` (ft-sam), generically
  ``<name>_df_summary.csv`` (burn, ulrl, ft); row 0 of ``anp_df_summary.csv`` (a single row).
  The reason for the fallback is kept in the ``note`` column.
- No defense: the attack model re-evaluated, else ``attack_df_summary.csv`` row ``last``.
- DER and RIR (BackdoorBench's simplified forms, :mod:`burn_plugin.bench.metrics`) against the
  attack's no-defense row; wall time from ``run.json`` ``wall_seconds``; the data each defense used
  from ``run.json`` ``data_used`` or the built-in :data:`DATA_USED` table.

:func:`render_markdown`, :func:`render_latex` turn the tidy table into the wide one (attack rows,
defense column groups of ACC / ASR / RA / DER and wall time where known, a mean row, the best
defense per attack and metric in bold, numbers not re-evaluated marked with a dagger). Values in
the tidy table are fractions (BackdoorBench's convention); the rendered tables show percent.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from ..bench.figures import plot_defense_folder
from ..bench.metrics import der, evaluate_model, rir
from ..bench.records import load_record
from ..bench.runs import attack_dir, find_attack_folders, find_defense_folders, load_defense_model, read_run_json
from ..defenses import get_defense, list_defenses
from ..errors import BadInputError, BurnError
from ..fileio import first_line, save_csv, save_text
from . import across
from . import plots as P
# NO_DEFENSE and display_name are also imported from here by tests
from .runs import NO_DEFENSE, display_name, labels_of, md_escape, order_defenses, plain_text  # noqa: F401

log = logging.getLogger("burn")

#: Summary files BackdoorBench's defenses write, relative to ``defense/<name>/``, and the row to read
#: (``"last"`` = the row named ``last``; ``0`` = the first row). ``<name>_df_summary.csv`` row ``last``
#: is always tried after these.
SUMMARY_FILES: dict[str, list[tuple[str, object]]] = {
    "ft": [("ft_df_summary.csv", "last")],
    "sau": [("sau_df_summary.csv", "last")],
    "i-bau": [("i-bau_df_summary.csv", "last")],
    "nad": [("nad_df_summary.csv", "last")],
    "fp": [("finetune_df_summary.csv", "last")],
    "ft-sam": [("log/d-sam_df_summary.csv", "last")],
    "anp": [("anp_df_summary.csv", 0)],
}

#: What BackdoorBench's own defenses train on (their ``ratio: 0.05``); the plugin's defenses say in ``run.json``.
DATA_USED: dict[str, str] = {d: "5% clean subset" for d in ("fp", "nad", "anp", "i-bau", "ft-sam", "sau", "ft")}

#: ``--metrics`` names -> tidy-table columns and headers.
METRICS = {"acc": ("test_acc", "ACC"), "asr": ("test_asr", "ASR"), "ra": ("test_ra", "RA"),
           "der": ("der", "DER"), "rir": ("rir", "RIR"), "time": ("wall_seconds", "Time")}
DEFAULT_METRICS = ("acc", "asr", "ra", "der", "time")
#: which direction is better, per metric (time is never marked)
_HIGHER_IS_BETTER = {"acc": True, "asr": False, "ra": True, "der": True, "rir": True}

TIDY_COLUMNS = ["attack", "defense", "label", "test_acc", "test_asr", "test_ra", "der", "rir", "wall_seconds", "source",
                "baseline_source", "data_used", "model_name", "note", "folder"]


#: the most named settings a run.json may give before they are ignored (BURN's describe names at most 17),
#: and the longest data-used text it may give (ULRL's names its index file's path)
_MAX_SETTINGS, _MAX_DATA_USED = 32, 400


def table_name(folder_name: str, run: dict, taken: set) -> tuple[str, str]:
    """``(name, label)`` of a defense in the table: its folder's name, or, where the run's settings differ
    from its defense's reference, the method with those settings, e.g. ``burn[scan, veto 20%]`` (the
    folder name is kept when two folders of one attack would share a name), so that one configuration
    has one name on every attack. The label is the same with the defense's registered label
    (``BURN[scan, veto 20%]``). Both come from ``run.json`` (``label``, ``named_settings``, written by
    :func:`burn_plugin.defend.defend` from the registry); for an older run, from the registry now."""
    method = run.get("method") if isinstance(run.get("method"), str) else None
    spec = get_defense(method) if method in list_defenses() else None   # a run of a defense not installed now: none
    parts = run.get("named_settings")
    if not (isinstance(parts, list) and len(parts) <= _MAX_SETTINGS and all(map(plain_text, parts))):
        config = run.get("config") if isinstance(run.get("config"), dict) else {}
        parts = spec.named_settings(config) if spec else []
    label = plain_text(run.get("label")) or (spec.display if spec else display_name(folder_name))
    if not parts:
        return folder_name, (label if method and folder_name == method else display_name(folder_name))
    inner = ", ".join(parts)
    name = f"{method or folder_name}[{inner}]"
    if name in taken:
        return f"{folder_name}[{inner}]", f"{folder_name}[{inner}]"
    return name, f"{label}[{inner}]"


# ------------------------------------------------------------------------------------------------
# reading numbers from files

def read_summary_row(path: str | os.PathLike, row: object = "last") -> dict | None:
    """``test_acc/test_asr/test_ra`` from one row of a ``*_df_summary.csv`` (None if absent/unusable).

    ``row="last"`` takes the row named ``last`` (and nothing else: a summary without it is not used);
    an integer takes that row by position (ANP's single row). ``nan_value`` becomes NaN.
    """
    path = Path(path)
    if not path.is_file():
        return None
    try:
        df = pd.read_csv(path, index_col=0)
    except Exception:  # noqa: BLE001 - a broken CSV is treated as absent; the note says so
        return None
    df.index = df.index.astype(str)
    if isinstance(row, int):
        if len(df) <= row:
            return None
        r = df.iloc[row]
    else:
        if str(row) not in df.index:
            return None
        r = df.loc[str(row)]
        if isinstance(r, pd.DataFrame):
            r = r.iloc[-1]
    out = {k: _to_float(r.get(k)) for k in ("test_acc", "test_asr", "test_ra")}
    return None if all(math.isnan(v) for v in out.values()) else out


def _to_float(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def summary_candidates(defense: str) -> list[tuple[str, object]]:
    """Summary files (relative path, row) tried for ``defense``, most specific first."""
    cands = list(SUMMARY_FILES.get(defense, []))
    generic = (f"{defense}_df_summary.csv", "last")
    if generic not in cands and (generic[0], 0) not in cands:
        cands.append(generic)
    return cands


def read_defense_csv(defense_dir: Path, defense: str, method: str | None = None) -> tuple[dict | None, str]:
    """(metrics, description of where they came from) from the defense's own summary CSV. ``method``
    (``run.json``'s, when the folder has another name, e.g. ``burn_spectral``) adds its file names."""
    tried = []
    cands = summary_candidates(defense)
    if method and method != defense:
        cands += [c for c in summary_candidates(method) if c not in cands]
    for rel, row in cands:
        vals = read_summary_row(defense_dir / rel, row)
        if vals is not None:
            return vals, f"{rel} row {row}"
        tried.append(rel)
    return None, f"no usable summary CSV (looked for {', '.join(tried)})"


def data_used_of(defense: str, run: dict) -> str:
    return plain_text(run.get("data_used"), _MAX_DATA_USED) or DATA_USED.get(defense, "")


# ------------------------------------------------------------------------------------------------
# gathering

def _split_names(value) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = value.split(",")
    out = [v.strip() for v in value if v and v.strip()]
    return out or None


def _check_filter(given: list[str] | None, available: Sequence[str], what: str, flag: str) -> None:
    unknown = [g for g in given or [] if g not in available]
    if unknown:
        raise BadInputError(f"{what} {', '.join(unknown)} not found; available: {', '.join(available) or 'none'} "
                            f"(check {flag})")


def gather_results(root: str | os.PathLike, *, attacks=None, defenses=None, reevaluate: bool = True,
                   device: str = "cpu", trusted: bool = False, batch_size: int = 256,
                   dataset_path: str | os.PathLike | None = None,
                   progress: Callable[[str], None] | None = None) -> pd.DataFrame:
    """One tidy row per (attack, defense) and per attack's no-defense baseline; see the module docstring.

    ``attacks``/``defenses``: names (or a comma-separated string) to keep; unknown names are an error.
    ``reevaluate=False`` reads only the CSV files (no model is built, no data loaded).
    Columns: :data:`TIDY_COLUMNS`.
    """
    say = progress or (lambda msg: None)
    attack_dirs = find_attack_folders(root)
    want_attacks = _split_names(attacks)
    want_defenses = _split_names(defenses)
    _check_filter(want_attacks, [d.name for d in attack_dirs], "attack(s)", "--attacks")
    if want_attacks:
        by_name = {d.name: d for d in attack_dirs}
        attack_dirs = [by_name[a] for a in want_attacks]
    all_defenses = order_defenses(p.name for a in attack_dirs for p in find_defense_folders(a))
    _check_filter(want_defenses, all_defenses, "defense(s)", "--defenses")

    rows: list[dict] = []
    for adir in attack_dirs:
        ddirs = find_defense_folders(adir)
        if want_defenses:
            ddirs = [d for d in ddirs if d.name in want_defenses]
        record, record_note = None, ""
        if reevaluate:
            say(f"{adir.name}: loading the record")
            try:
                record = load_record(adir, trusted=trusted, dataset_path=dataset_path)
            except BurnError as exc:
                record_note = f"record not loaded, numbers from CSV files: {exc}"

        # no defense
        base = {"attack": adir.name, "defense": NO_DEFENSE, "label": display_name(NO_DEFENSE), "data_used": "",
                "wall_seconds": float("nan"), "folder": ""}
        vals, source, note = None, "missing", record_note
        if record is not None:
            try:
                say(f"{adir.name}: evaluating the attack model")
                vals = evaluate_model(record.build_model(), record, device=device, batch_size=batch_size)
                source, note = "re-evaluated", ""
                base["model_name"] = record.model_name
            except (BurnError, RuntimeError) as exc:  # e.g. the clean data are missing: no model can be evaluated
                msg = str(exc) if isinstance(exc, BurnError) else first_line(exc)
                note = record_note = f"record not usable, numbers from CSV files: {msg}"
                record = None
        if vals is None:
            csv_vals = read_summary_row(adir / "attack_df_summary.csv", "last")
            if csv_vals is not None:
                vals, source = csv_vals, "csv"
                note = _join(note, "attack_df_summary.csv row last")
            else:
                note = _join(note, "no attack_df_summary.csv")
        base.update(vals or {}, source=source, note=note)
        rows.append(base)

        taken: set = set()
        for ddir in ddirs:
            name = ddir.name
            run = read_run_json(ddir)
            key, label = table_name(name, run, taken)
            row = {"attack": adir.name, "defense": key, "label": label, "data_used": data_used_of(name, run),
                   "wall_seconds": _to_float(run.get("wall_seconds")), "folder": name}
            taken.add(row["defense"])
            vals, source, note = None, "missing", ""
            if record is not None:
                if (ddir / "defense_result.pt").is_file():
                    try:
                        say(f"{adir.name}: evaluating {name}")
                        model, row["model_name"] = load_defense_model(ddir, record, trusted=trusted)
                        vals = evaluate_model(model, record, device=device, batch_size=batch_size)
                        source = "re-evaluated"
                    except BurnError as exc:
                        note = f"not re-evaluated: {exc}"
                    except RuntimeError as exc:  # a model that loads but cannot run on these images
                        note = f"not re-evaluated: evaluation failed ({first_line(exc)})"
                else:
                    note = "no defense_result.pt"
            elif reevaluate:
                note = "record not loaded" if record_note.startswith("record not loaded") else "record not usable"
            if vals is None:
                method = run.get("method")
                csv_vals, where = read_defense_csv(ddir, name, method if isinstance(method, str) else None)
                if csv_vals is not None:
                    vals, source = csv_vals, "csv"
                note = _join(note, where)
            row.update(vals or {}, source=source, note=note)
            rows.append(row)

    df = pd.DataFrame(rows)
    for c in TIDY_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan if c in ("test_acc", "test_asr", "test_ra", "der", "rir", "wall_seconds") else ""
    for c in ("test_acc", "test_asr", "test_ra", "der", "rir", "wall_seconds"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    for c in ("label", "source", "baseline_source", "data_used", "model_name", "note", "folder"):
        df[c] = df[c].fillna("").astype(str)

    # DER / RIR against each attack's no-defense row
    for i, r in df.iterrows():
        if r["defense"] == NO_DEFENSE:
            continue
        b = df[(df["attack"] == r["attack"]) & (df["defense"] == NO_DEFENSE)].iloc[0]
        df.at[i, "baseline_source"] = b["source"]
        if _finite(b["test_acc"], r["test_acc"], b["test_asr"], r["test_asr"]):
            df.at[i, "der"] = der(b["test_acc"], r["test_acc"], b["test_asr"], r["test_asr"])
        if _finite(b["test_acc"], r["test_acc"], b["test_ra"], r["test_ra"]):
            df.at[i, "rir"] = rir(b["test_acc"], r["test_acc"], b["test_ra"], r["test_ra"])
    return df[TIDY_COLUMNS].reset_index(drop=True)


def _finite(*vals) -> bool:
    return all(v is not None and isinstance(v, (int, float, np.floating)) and math.isfinite(v) for v in vals)


def _join(a: str, b: str) -> str:
    return f"{a}; {b}" if a and b else (a or b)


# ------------------------------------------------------------------------------------------------
# the wide table

@dataclass
class Cell:
    value: float          # NaN when missing
    text: str             # formatted, without marks
    best: bool = False    # best defense for this attack and metric
    from_csv: bool = False  # not re-evaluated
    partial: bool = False   # mean over fewer attacks than rows


@dataclass
class Layout:
    """What both renderers print: column groups, rows of cells, and the notes under the table."""

    groups: list[tuple[str, list[str]]]   # (defense, metric keys)
    rows: list[tuple[str, list[Cell]]]    # (attack or "Mean", cells in group order)
    notes: list[str]
    data_used: list[tuple[str, str]]
    problems: list[str]
    labels: dict[str, str]                # defense -> its name in the table (runs.labels_of)

    def name(self, defense: str) -> str:
        return self.labels.get(defense) or display_name(defense)


def parse_metrics(metrics) -> list[str]:
    """``"acc,asr"`` or a list -> validated metric keys (order kept)."""
    names = _split_names(metrics) if metrics is not None else list(DEFAULT_METRICS)
    names = [n.lower() for n in (names or [])]
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise BadInputError(f"unknown metric(s) {', '.join(unknown) or '(none given)'}; choose from "
                            f"{', '.join(METRICS)} (check --metrics)")
    return list(dict.fromkeys(names))


def format_value(metric: str, v: float) -> str:
    if v is None or not math.isfinite(v):
        return "–"
    if metric == "time":
        return f"{v:.0f} s" if v < 120 else (f"{v / 60:.1f} min" if v < 3600 else f"{v / 3600:.1f} h")
    return f"{100 * v:.2f}"


def build_layout(df: pd.DataFrame, metrics=None) -> Layout:
    """Arrange the tidy table for rendering (shared by the Markdown and LaTeX renderers)."""
    keys = parse_metrics(metrics)
    attacks = list(dict.fromkeys(df["attack"]))
    defenses = order_defenses(d for d in df["defense"] if d != NO_DEFENSE)
    groups: list[tuple[str, list[str]]] = []
    base_keys = [k for k in keys if k in ("acc", "asr", "ra")]
    if base_keys and (df["defense"] == NO_DEFENSE).any():
        groups.append((NO_DEFENSE, base_keys))
    empty = []
    for d in defenses:
        sub = df[df["defense"] == d]
        if not sub[["test_acc", "test_asr", "test_ra"]].notna().any(axis=None):
            empty.append(d)  # no number anywhere (e.g. an unfinished run): a note instead of empty columns
            continue
        ks = [k for k in keys if k != "time" or sub["wall_seconds"].notna().any()]
        if ks:
            groups.append((d, ks))

    rows: list[tuple[str, list[Cell]]] = []
    for a in attacks:
        cells = []
        for d, ks in groups:
            m = df[(df["attack"] == a) & (df["defense"] == d)]
            r = None if m.empty else m.iloc[0]
            for k in ks:
                col = METRICS[k][0]
                v = float(r[col]) if r is not None and pd.notna(r[col]) else float("nan")
                csv = False
                if r is not None and math.isfinite(v) and k != "time":
                    csv = r["source"] == "csv" or (k in ("der", "rir") and r["baseline_source"] == "csv")
                cells.append(Cell(v, format_value(k, v), from_csv=csv))
        rows.append((a, cells))
    columns = [(d, k) for d, ks in groups for k in ks]   # (defense, metric) of each cell of a row
    # mean row (over the attacks that have a value); pointless for a single attack
    if len(rows) > 1:
        mean_cells = []
        for j, (_, k) in enumerate(columns):
            vals = [r[1][j].value for r in rows if math.isfinite(r[1][j].value)]
            v = float(np.mean(vals)) if vals else float("nan")
            mean_cells.append(Cell(v, format_value(k, v), partial=bool(vals) and len(vals) < len(rows)))
        rows.append(("Mean", mean_cells))
    # best per row and metric among the defenses (not the no-defense baseline); in the mean row only
    # means over every attack compete
    for _, cells in rows:
        per_metric: dict[str, list[Cell]] = {}
        for (d, k), c in zip(columns, cells):
            if d != NO_DEFENSE and k in _HIGHER_IS_BETTER:
                per_metric.setdefault(k, []).append(c)
        for k, cs in per_metric.items():
            cs = [c for c in cs if not c.partial]
            vals = [c.value for c in cs if math.isfinite(c.value)]
            if len(cs) < 2 or not vals:
                continue
            best = max(vals) if _HIGHER_IS_BETTER[k] else min(vals)
            for c in cs:
                if math.isfinite(c.value) and abs(c.value - best) <= 1e-12:
                    c.best = True

    any_csv = any(c.from_csv for _, cs in rows for c in cs)
    any_partial = any(c.partial for _, cs in rows for c in cs)
    marked = [METRICS[k][1] for k in keys if k in _HIGHER_IS_BETTER]
    any_reeval = (df["source"] == "re-evaluated").any()
    notes = ["Values in % (fractions x 100)" + (", models re-evaluated on their record's clean_test and bd_test "
                                                "with one evaluator." if any_reeval else ".")]
    if marked and len(defenses) >= 2:
        notes.append("Bold: best defense per attack for " + ", ".join(marked) + " (lowest ASR, highest otherwise).")
    if "der" in keys:
        notes.append("DER = (max(0, ASR_nd - ASR_d) - max(0, ACC_nd - ACC_d) + 1) / 2 "
                     "(nd: no defense, d: defended; 50 = no change).")
    if any_csv:
        notes.append("† from the defense's own summary CSV (BackdoorBench's row 'last'; ANP: its single row), "
                     "not re-evaluated; for DER/RIR, either side.")
    if any_partial:
        notes.append("‡ mean over fewer attacks than the table has rows (missing entries skipped; "
                     "not compared for bold).")
    lay = Layout(groups, rows, notes, [], [], labels_of(df))
    if empty:
        notes.append("No numbers for " + ", ".join(lay.name(d) for d in empty) + " (see the sources below).")
    lay.data_used = [(d, str(_first(df[df["defense"] == d]["data_used"]) or "not recorded")) for d in defenses]
    lay.problems = [f"{r['attack']} / {lay.name(r['defense'])}: {r['note']}" for _, r in df.iterrows()
                    if r["source"] != "re-evaluated" and r["note"]]
    return lay


def _first(series):
    vals = [v for v in series if isinstance(v, str) and v]
    return vals[0] if vals else ""


def wide_table(df: pd.DataFrame, metrics=None) -> pd.DataFrame:
    """The numbers of the rendered table as a DataFrame: attack rows (+ ``Mean``), (defense, metric) columns."""
    lay = build_layout(df, metrics)
    cols = pd.MultiIndex.from_tuples([(d, METRICS[k][1]) for d, ks in lay.groups for k in ks],
                                     names=["defense", "metric"])
    return pd.DataFrame([[c.value for c in cells] for _, cells in lay.rows],
                        index=pd.Index([a for a, _ in lay.rows], name="attack"), columns=cols)


# ------------------------------------------------------------------------------------------------
# renderers

def render_markdown(df: pd.DataFrame, metrics=None, *, title: str | None = None) -> str:
    """A GitHub-Markdown table (no extra dependency) with the notes under it."""
    lay = build_layout(df, metrics)
    header = ["Attack"] + [f"{lay.name(d)} {METRICS[k][1]}" for d, ks in lay.groups for k in ks]
    align = ["---"] + ["---:"] * (len(header) - 1)
    lines = []
    if title:
        lines += [f"## {title}", ""]
    lines += ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    for name, cells in lay.rows:
        label = f"**{name}**" if name == "Mean" and len(lay.rows) > 1 else md_escape(name)
        out = [label]
        for c in cells:
            t = c.text + ("†" if c.from_csv else "") + ("‡" if c.partial else "")
            out.append(f"**{t}**" if c.best else t)
        lines.append("| " + " | ".join(out) + " |")
    lines.append("")
    lines += [f"- {n}" for n in lay.notes]
    if lay.data_used:
        lines += ["", "Data used: " + "; ".join(f"{lay.name(d)}: {u}" for d, u in lay.data_used) + "."]
    if lay.problems:
        lines += ["", "Sources not re-evaluated:"] + [f"- {md_escape(_shorten(p))}" for p in lay.problems]
    return "\n".join(lines) + "\n"


def _shorten(s: str, n: int = 300) -> str:
    s = " ".join(str(s).split())
    return s if len(s) <= n else s[: n - 1] + "…"


_TEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(s))


def render_latex(df: pd.DataFrame, metrics=None, *, caption: str | None = None,
                 label: str = "tab:burn-compare") -> str:
    """A ``table`` with a booktabs ``tabular`` (needs ``\\usepackage{booktabs,graphicx}``), written by hand."""
    lay = build_layout(df, metrics)
    spec = "l" + "".join(" " + "r" * len(ks) for _, ks in lay.groups)
    top, rules, sub = [""], [], ["Attack"]
    col = 2
    for d, ks in lay.groups:
        top.append(rf"\multicolumn{{{len(ks)}}}{{c}}{{{latex_escape(lay.name(d))}}}")
        rules.append(rf"\cmidrule(lr){{{col}-{col + len(ks) - 1}}}")
        col += len(ks)
        sub += [METRICS[k][1] for k in ks]

    def cell(c: Cell) -> str:
        t = latex_escape(c.text).replace("–", "--")
        t = rf"\textbf{{{t}}}" if c.best else t
        return t + (r"$^\dagger$" if c.from_csv else "") + (r"$^\ddagger$" if c.partial else "")

    body = []
    for i, (name, cells) in enumerate(lay.rows):
        if name == "Mean" and i == len(lay.rows) - 1 and len(lay.rows) > 1:
            body.append(r"\midrule")
        body.append(" & ".join([latex_escape(name)] + [cell(c) for c in cells]) + r" \\")
    notes = " ".join(latex_escape(n).replace("†", r"$^\dagger$").replace("‡", r"$^\ddagger$") for n in lay.notes)
    if lay.data_used:
        notes += " Data used: " + "; ".join(f"{latex_escape(lay.name(d))}: {latex_escape(u)}"
                                             for d, u in lay.data_used) + "."
    cap = caption or "Defenses against each attack: ACC, ASR, RA and DER in \\%."
    lines = [
        "% generated by `burn compare`; needs \\usepackage{booktabs} and \\usepackage{graphicx}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{cap}}}",
        rf"\label{{{label}}}",
        r"\resizebox{\linewidth}{!}{%",
        rf"\begin{{tabular}}{{{spec}}}",
        r"\toprule",
        " & ".join(top) + r" \\",
        " ".join(rules),
        " & ".join(sub) + r" \\",
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}}",
        rf"\par\smallskip\footnotesize {notes}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------
# writing everything

def write_comparison(df: pd.DataFrame, out_dir: str | os.PathLike, *, metrics=None, plots: bool = True,
                     root: str | os.PathLike | None = None) -> dict[str, list[Path]]:
    """Write ``comparison.csv`` (tidy), ``comparison.md``, ``comparison.tex`` and, with ``plots``, one
    radar figure per attack (``radar_<attack>.png/.pdf``) and BURN's detection/round figures for every
    defense folder with a ``scores.npz``/``<name>_df.csv`` (``<attack>_<folder>_{roc,distance,rounds}``).
    With ``root``: BURN's detection table across attacks (``detection.csv``/``.md``, the paper's Table 1;
    :mod:`.across`) and, with plots over several attacks, ``radar_by_defense`` (Fig. 4 as the paper
    draws it) and ``roc_by_attack`` (Fig. 5). Returns ``{"tables": [...], "plots": [...]}``.
    """
    out = Path(out_dir)
    md = render_markdown(df, metrics)
    tables = [save_csv(df, out / "comparison.csv", index=False), save_text(md, out / "comparison.md"),
              save_text(render_latex(df, metrics), out / "comparison.tex")]
    written: list[Path] = []
    if plots:
        for attack in dict.fromkeys(df["attack"]):
            sub = df[df["attack"] == attack]
            if sub[sub["defense"] != NO_DEFENSE][["test_acc", "test_asr"]].notna().any(axis=None):
                written += P.plot_radar(sub, out / f"radar_{_safe(attack)}").paths
            else:
                log.warning("%s: no radar plot (no defense has ACC/ASR numbers yet)", attack)
        if root is not None:
            for _, r in df[df["defense"] != NO_DEFENSE].iterrows():
                ddir = attack_dir(Path(root), r["attack"]) / "defense" / r["folder"]
                if not (ddir / "scores.npz").is_file():
                    continue
                try:
                    res = plot_defense_folder(ddir, out_dir=out, prefix=f"{_safe(r['attack'])}_{_safe(r['folder'])}_")
                except BurnError as exc:  # a broken scores.npz must not cost the other plots
                    log.warning("%s: no detection plots (%s)", ddir, exc)
                    continue
                written += [path for p in res.values() for path in p.paths]
    if root is not None:
        tables_, plots_ = _write_across_attacks(df, out, Path(root), plots)
        tables += tables_
        written += plots_
    return {"tables": tables, "plots": written}


def _write_across_attacks(df: pd.DataFrame, out: Path, root: Path, plots: bool) -> tuple[list[Path], list[Path]]:
    """BURN's detection table (the paper's Table 1 and more; :mod:`.across`) and, over two or more attacks,
    the paper's Fig. 4 (one radar per defense, the attacks as axes) and Fig. 5 (every attack's ROC of
    l(x) in one figure)."""
    tables, written = [], []
    det = across.detection_table(df, root)
    if len(det):
        tables += [save_csv(det, out / "detection.csv", index=False),
                   save_text(across.render_detection_markdown(det), out / "detection.md")]
    if not plots or df["attack"].nunique() < 2:
        return tables, written

    try:
        written += P.plot_radar_by_defense(df, out / "radar_by_defense").paths
    except BadInputError as exc:
        log.warning("no cross-attack radar: %s", exc)
    inputs = across.roc_inputs(df, root)
    if len(inputs) >= 2:
        try:
            written += P.plot_roc_by_attack(inputs, out / "roc_by_attack").paths
        except BurnError as exc:
            log.warning("no cross-attack ROC: %s", exc)
    return tables, written


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name))
