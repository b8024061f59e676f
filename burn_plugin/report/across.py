"""BURN across attacks: the paper's Table 1 and its detection numbers, for every BURN run of a comparison.

:func:`detection_table` reads the detection report each BURN run keeps in its ``run.json``
(:func:`burn_plugin.bench.detection.detection_report`, computed against the record's poison flags),
one row per (attack, BURN run):

- observation 1 (paper Table 1): mean boundary distance l(x) of clean and of poisoned training
  samples, their ratio, and the AUROC of l(x) as a poison detector (all poison, and label-flipped
  poison only);
- the ranking BURN used (``detector``; l(x)/l_max for the paper's ``boundary``) and its AUROC, and
  the precision of phase 1's relabelled set (round 0);
- observation 2 (paper Fig. 2): the share of label-flipped poisoned samples whose adversarial label
  is their true label, and how evenly clean samples' adversarial labels spread over the classes
  (entropy / log K; 1 = uniform) with the largest single class's share;
- ACC / ASR / RA after that run, from the comparison table.

The paper's Table 1 averages 1,000 clean and 1,000 poisoned samples; these are means over the whole
training set. :func:`roc_inputs` picks, per attack, the run whose ``scores.npz`` holds l(x) for the
paper's Fig. 5 (every attack's ROC in one figure).
"""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from ..bench.runs import attack_dir, read_run_json
from .runs import NO_DEFENSE, md_escape, plain_text

log = logging.getLogger("burn")

DETECTION_COLUMNS = ["attack", "defense", "detector", "n_train", "n_poison", "mean_l_clean", "mean_l_poison",
                     "l_ratio", "auroc_l", "auroc_l_flipped", "auroc_detector", "phase1_precision",
                     "poison_adv_is_true", "clean_adv_entropy", "clean_adv_max_share", "test_acc", "test_asr",
                     "test_ra"]

#: Markdown headers of :data:`DETECTION_COLUMNS` (after attack and defense)
HEADERS = {"detector": "detector", "n_poison": "poisoned", "mean_l_clean": "mean l clean",
           "mean_l_poison": "mean l poison", "l_ratio": "ratio", "auroc_l": "AUROC l(x)",
           "auroc_l_flipped": "AUROC l(x), flipped", "auroc_detector": "AUROC ranking",
           "phase1_precision": "phase-1 precision", "poison_adv_is_true": "poison adv = true label",
           "clean_adv_entropy": "clean adv-label entropy", "test_acc": "ACC", "test_asr": "ASR", "test_ra": "RA"}


def _ratio(a, b):
    return a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None


def detection_table(df: pd.DataFrame, root: str | Path) -> pd.DataFrame:
    """One row per BURN run in the comparison table ``df`` (tidy, with a ``folder`` column) whose
    ``run.json`` holds a detection report; columns :data:`DETECTION_COLUMNS`."""
    rows = []
    for _, r in df[df["defense"] != NO_DEFENSE].iterrows():
        run = read_run_json(attack_dir(Path(root), r["attack"]) / "defense" / r["folder"])
        det = run.get("detection")
        if not isinstance(det, dict) or "mean_distance_clean" not in det:
            continue
        # a stranger's file: only a dict is a round or a poison set, only a short one-line text a detector's name
        rounds = det.get("rounds") if isinstance(det.get("rounds"), list) else []
        first = rounds[0] if rounds and isinstance(rounds[0], dict) else {}
        poison_set = first.get("poison_set") if isinstance(first.get("poison_set"), dict) else {}
        phase1 = poison_set.get("precision")
        rows.append({"attack": r["attack"], "defense": r["defense"],
                     "detector": plain_text(det.get("detector", "boundary")) or "-",
                     "n_train": det.get("n_train"), "n_poison": det.get("n_poison"),
                     "mean_l_clean": det.get("mean_distance_clean"), "mean_l_poison": det.get("mean_distance_poison"),
                     "l_ratio": _ratio(det.get("mean_distance_poison"), det.get("mean_distance_clean")),
                     "auroc_l": det.get("auroc_distance_poison"), "auroc_l_flipped": det.get("auroc_distance_flipped"),
                     "auroc_detector": det.get("auroc_detector_poison"), "phase1_precision": phase1,
                     "poison_adv_is_true": det.get("poison_adv_label_is_true_label"),
                     "clean_adv_entropy": det.get("clean_adv_label_entropy_ratio"),
                     "clean_adv_max_share": det.get("clean_adv_label_max_share"),
                     "test_acc": r["test_acc"], "test_asr": r["test_asr"], "test_ra": r["test_ra"]})
    out = pd.DataFrame(rows, columns=DETECTION_COLUMNS)
    for c in DETECTION_COLUMNS[3:]:
        out[c] = pd.to_numeric(out[c], errors="coerce")
    return out


def render_detection_markdown(table: pd.DataFrame) -> str:
    """The detection table as Markdown: distances with 3 decimals, AUROC and shares with 3, ACC/ASR/RA
    in percent; a missing number is ``-``."""
    cols = [c for c in HEADERS if c in table.columns]
    lines = ["| attack | defense | " + " | ".join(HEADERS[c] for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for _, r in table.iterrows():
        cells = [_detection_cell(c, r[c]) for c in cols]
        lines.append(f"| {md_escape(str(r['attack']))} | {md_escape(str(r['defense']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _detection_cell(column: str, v) -> str:
    if column == "detector":
        return str(v)
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    if column in ("test_acc", "test_asr", "test_ra"):
        return f"{100 * v:.2f}"
    return f"{int(v)}" if column == "n_poison" else f"{v:.3f}"


def roc_inputs(df: pd.DataFrame, root: str | Path) -> dict[str, Path]:
    """attack -> the ``scores.npz`` of a BURN run with the paper's ranking (``boundary``), holding l(x) and
    the poison flags, for the ROC of every attack in one figure; attacks without one are left out (logged).

    Where an attack has several such runs (say ``burn[box-aware]`` and the paper's DeepFool), the one is
    taken whose name in the table most attacks share, so that the curves compare one setting across
    attacks; where the chosen names still differ, each key names its run: ``sig_fm (burn_default)``."""
    candidates: dict[str, list[tuple[str, Path]]] = {}
    for attack in dict.fromkeys(df["attack"]):
        sub = df[(df["attack"] == attack) & (df["defense"] != NO_DEFENSE)]
        for name, folder in zip(sub["defense"], sub["folder"]):
            ddir = attack_dir(Path(root), attack) / "defense" / folder
            run = read_run_json(ddir)
            config = run.get("config") if isinstance(run.get("config"), dict) else {}
            if run.get("method") == "burn" and config.get("detector", "boundary") == "boundary" \
                    and (ddir / "scores.npz").is_file():
                candidates.setdefault(attack, []).append((str(name), ddir / "scores.npz"))
        if attack not in candidates:
            log.info("%s: no BURN run with the boundary ranking; left out of the cross-attack ROC", attack)
    shared = Counter(name for runs in candidates.values() for name in dict(runs))
    chosen = {attack: max(runs, key=lambda run: shared[run[0]]) for attack, runs in candidates.items()}
    alike = len({name for name, _ in chosen.values()}) <= 1
    return {(attack if alike else f"{attack} ({name})"): path for attack, (name, path) in chosen.items()}
