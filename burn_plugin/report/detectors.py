"""Detector tables, rendered from the JSON that ``benchmarks/detectors.py --json`` writes.

One JSON file holds a list of records, each with its detection model and, per detector, AUROC against all
poison and against label-flipped poison, phase 1's precision and (where BURN ran) ACC / ASR / RA after it.

- :func:`detector_table`: one row per record x detector (the benchmark's printout);
- :func:`detector_matrix`: one table per record, the detectors down and the detection models across,
  each cell ``AUROC all / flipped (phase-1 precision)``: which detector ranks the poison, read by which model;
- :func:`detectors_page`: both, for ``docs/results/<folder>/detectors.md`` (``burn results``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from ..errors import BadInputError

#: how a table names a measurement made before the JSON recorded its commit
OLD = "before 8121241 (FLARE's old side rule, the tighter cluster)"
#: the detection models in the order the matrix shows them
MODELS = ("infected", "sgd", "sam", "sam_scratch")


def fmt(v) -> str:
    return "  -  " if v is None else f"{v:.3f}"


def record_name(result: dict) -> str:
    """The record's folder name, as the tables print it."""
    return result["record"].rstrip("/").split("/")[-1]


def read_results(paths) -> list[dict]:
    """The records of every JSON file in ``paths`` (in that order); a file that is not the benchmark's
    output is one :class:`BadInputError` naming it."""
    results: list[dict] = []
    for path in paths:
        try:
            loaded = json.loads(Path(path).read_text())
            if not (isinstance(loaded, list) and all(isinstance(r, dict) and "detectors" in r for r in loaded)):
                raise ValueError("not a list of records with their detectors")
        except (OSError, ValueError) as exc:
            raise BadInputError(f"{path}: cannot read it as the output of `benchmarks/detectors.py --json` ({exc}); "
                                f"give a file written by --json") from None
        results += loaded
    return results


def _pct(m) -> str:
    return " / ".join(f"{100 * m[k]:.2f}" for k in ("test_acc", "test_asr", "test_ra")) if m else "-"


def _seconds(v, boundary=None) -> str:
    """Wall seconds, and the boundary analysis's share where it ran (not read from the cache)."""
    if v is None:
        return "-"
    return f"{v:,.0f}" + (f" ({boundary:,.0f} boundary)" if boundary and boundary >= 1 else "")


def detector_table(results: list[dict]) -> str:
    """One row per record x detector: AUROC, phase-1 precision, BURN's result with it, the seconds."""
    lines = ["| record | detector | AUROC (all / flipped) | phase-1 precision (all / flipped) | ACC / ASR / RA after BURN "
             "| BURN s | detector s |", "|---|---|---|---|---|---|---|"]
    for r in results:
        name = record_name(r) + ("" if r.get("detection_model", "infected") == "infected"
                                 else f" ({r['detection_model']} detection model)")
        if r.get("before"):
            lines.append(f"| {name} | no defense | | | {_pct(r['before'])} | | |")
        for d in r["detectors"]:
            lines.append(f"| {name} | {d['detector']} | {fmt(d['auroc_poison'])} / {fmt(d['auroc_flipped'])} | "
                         f"{fmt(d['phase1_precision'])} / "
                         # older --json files wrote 0 where the record has no label-flipped poison
                         f"{fmt(d['phase1_precision_flipped'] if d['auroc_flipped'] is not None else None)} | "
                         f"{_pct(d.get('after'))} | "
                         f"{_seconds(d.get('defend_seconds'), d.get('defend_boundary_seconds'))} | "
                         f"{d['seconds'] + (r['features_seconds'] if d['uses_features'] else 0):.1f} |")
        if r.get("oracle"):
            lines.append(f"| {name} | oracle (diagnostic) | 1 / 1 | 1 / - | {_pct(r['oracle'].get('after'))} | "
                         f"{_seconds(r['oracle'].get('defend_seconds'), r['oracle'].get('defend_boundary_seconds'))} | |")
    trained = [f"{record_name(r)} {r['detection_model']} {r['detection_model_seconds']:,.0f} s" for r in results
               if r.get("detection_model", "infected") != "infected"]
    if trained:
        lines += ["", "Detection model training (read by the boundary analysis and every detector): "
                  + ", ".join(trained) + "."]
    boundary = [f"{record_name(r)} {r['boundary_seconds']:,.0f} s" for r in results
                if r.get("boundary_seconds", 0) >= 1]
    if boundary:
        lines += ["", "Boundary analysis for the detectors (not read from the cache): " + ", ".join(boundary) + "."]
    variants = [(record_name(r), v) for r in results for v in r.get("boundary_variants", [])]
    if variants:
        lines += ["", "| record | boundary analysis | samples | AUROC of l(x) | not converged | s / 1000 images |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {name} | {v['variant']} | {v['samples']} | {v['auroc_poison']:.3f} | {v['not_converged']} | "
                  f"{v['seconds_per_1000']:.1f} |" for name, v in variants]
    return "\n".join(lines) + "\n"


def detector_matrix(results: list[dict]) -> str:
    """Per record, detectors down and detection models across: ``AUROC all / flipped (phase-1 precision)``;
    the best AUROC of each column in bold."""
    by_record: dict[str, dict[str, dict]] = {}
    for r in results:
        by_record.setdefault(record_name(r), {})[r.get("detection_model", "infected")] = r
    out = []
    for rec, models in by_record.items():
        cols = [m for m in MODELS if m in models] + sorted(set(models) - set(MODELS))
        names = list(dict.fromkeys(d["detector"] for m in cols for d in models[m]["detectors"]))
        cell = {(m, d["detector"]): d for m in cols for d in models[m]["detectors"]}
        best = {m: max((d["auroc_poison"] for d in models[m]["detectors"] if d["auroc_poison"] is not None),
                       default=None) for m in cols}
        first = models[cols[0]]
        out += [f"### {rec}", "", f"{first['n_train']:,} training samples, {first['n_poison']:,} poisoned. "
                "Cells: AUROC against all poison / label-flipped poison (phase-1 precision).", "",
                "| detector | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
        for name in names:
            cells = []
            for m in cols:
                d = cell.get((m, name))
                if d is None:
                    cells.append("")
                    continue
                a = fmt(d["auroc_poison"])
                a = f"**{a}**" if d["auroc_poison"] is not None and d["auroc_poison"] == best[m] else a
                cells.append(f"{a} / {fmt(d['auroc_flipped'])} ({fmt(d['phase1_precision'])})")
            out.append(f"| {name} | " + " | ".join(cells) + " |")
        trained = [f"{m} {models[m]['detection_model_seconds']:,.0f} s" for m in cols if m != "infected"]
        if trained:
            out += ["", "Detection model training: " + ", ".join(trained) + "."]
        out += ["", "Measured by commit: " + ", ".join(f"{m} {models[m].get('commit') or OLD}" for m in cols) + "."]
        out.append("")
    return "\n".join(out)


def detectors_page(folder: str | os.PathLike, title: str) -> str:
    """``<folder>/detectors.md`` from every ``<folder>/*.json`` (sorted by name)."""
    folder = Path(folder)
    paths = sorted(folder.glob("*.json"))
    if not paths:
        raise BadInputError(f"{folder} holds no *.json from `benchmarks/detectors.py --json`")
    results = read_results(paths)
    return (f"# {title}\n\n<!-- rendered by `burn results` from {folder.name}/*.json; do not edit by hand -->\n\n"
            "Written by `python benchmarks/detectors.py --record R --set detection_model=M --json F`, one file per "
            "record and detection model. No detector sees the poison flags; they are read for these numbers only.\n\n"
            "## By record\n\n" + detector_matrix(results) + "\n## Every row\n\n" + detector_table(results))
