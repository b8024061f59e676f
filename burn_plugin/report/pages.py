"""The results pages, rendered from committed data: ``burn results``.

Every number on them comes from ``docs/results/comparison.csv``, the tidy table ``burn compare`` writes
(one row per attack x defense: ``test_acc``, ``test_asr``, ``test_ra`` as fractions, ``wall_seconds``,
``data_used``). :func:`render_pages` turns it into

- ``docs/results/comparison.md``: one cell per defense (ACC / ASR / RA in %), the defenses in one table
  and BURN with each poison detector in another, the mean over records as the last row;
- ``docs/results/index.md``: what each results file is and which command wrote it;
- ``docs/results/summary.png`` (and ``.pdf``): ASR against the change of ACC, one panel per defense;
- the README's blocks between ``<!-- verdict:begin -->`` / ``<!-- verdict:end -->`` (a verdict counted
  from the rows) and ``<!-- results:begin -->`` / ``<!-- results:end -->`` (the defenses' table).

``burn results --check`` renders into memory and exits 1 naming every page that differs from the
committed one (the test suite runs it), so a page cannot drift from its data.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..errors import BadInputError
from .detectors import detectors_page

#: the defenses of the main table, in order: (name in comparison.csv, column heading)
MAIN = (("no_defense", "No defense"), ("ft", "FT"), ("ulrl", "ULRL"), ("burn[box-aware]", "BURN"),
        ("burn_default", "BURN, paper's DeepFool"), ("ulrl[on burn]", "ULRL on BURN"))
#: the BURN runs with another poison detector (``--detector``) than the paper's l(x)
DETECTORS = (("burn[box-aware]", "l(x) (paper)"), ("burn[spectral, box-aware]", "spectral"),
             ("burn[activation_clustering, box-aware]", "activation clustering"),
             ("burn[scan, box-aware]", "SCAn"), ("burn[combined, box-aware]", "combined"))
#: "the backdoor is removed": ASR at most this (%), and ACC at most this many points below no defense
REMOVED_ASR, KEPT_ACC = 5.0, 2.0
#: folders of another set of records' ``burn compare --out`` (``comparison.csv``), each rendered into its
#: ``comparison.md``: (title, what the records are)
ROUND_PAGES = {
    "burn_20k": ("BURN on records of 20,000 training images",
                 "Fashion-MNIST records of 20,000 training images (15 epochs, `smallresnet`, CPU) made by "
                 "`burn attack --train_subset 20000 --epochs 15`: nine attacks with target 0 and poison ratio 0.1 "
                 "(0.09 for the clean-label SIG and LC, which can poison only the target class), and records made "
                 "again with another target, ratio and seed (the `_r` rows)"),
}
#: folders of ``benchmarks/detectors.py --json`` files, each rendered into its ``detectors.md``
DETECTOR_PAGES = {
    "detection_models": "Detectors read from each detection model: three small records (3,000 training images)",
    "detectors_20k": "Detectors read from each detection model: records of 20,000 training images, the box-aware "
                     "boundary analysis (`--set box_aware=true`)",
}
FIGURE = "summary"


@dataclass
class Page:
    path: Path
    text: str


def read_comparison(path: str | os.PathLike) -> pd.DataFrame:
    """``comparison.csv`` with the columns the pages need, metrics in %."""
    path = Path(path)
    try:
        df = pd.read_csv(path)
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read {path} ({exc}); write it with `burn compare RECORD_ROOT --out "
                            f"{path.parent}`") from None
    need = {"attack", "defense", "test_acc", "test_asr", "test_ra"}
    if not need <= set(df.columns):
        raise BadInputError(f"{path} lacks column(s) {', '.join(sorted(need - set(df.columns)))}; it is not the "
                            f"table `burn compare` writes")
    df = df.copy()
    for m in ("test_acc", "test_asr", "test_ra"):
        df[m] = pd.to_numeric(df[m], errors="coerce") * 100
    return df


def _cell(row) -> str:
    if row is None:
        return "–"
    vals = [getattr(row, m) for m in ("test_acc", "test_asr", "test_ra")]
    return " / ".join("–" if pd.isna(v) else f"{v:.2f}" for v in vals)


def _lookup(df: pd.DataFrame) -> dict:
    return {(r.attack, r.defense): r for r in df.itertuples(index=False)}


def _removed(row, base) -> bool:
    return (row is not None and base is not None and row.test_asr <= REMOVED_ASR
            and base.test_acc - row.test_acc <= KEPT_ACC)


def cell_table(df: pd.DataFrame, columns, *, bold_removed: bool = True) -> str:
    """Rows = attacks, one ``ACC / ASR / RA`` cell per defense; a cell where the backdoor is removed
    (:data:`REMOVED_ASR`, :data:`KEPT_ACC`) in bold; the mean over the records that have every column
    as the last row."""
    at = _lookup(df)
    attacks = list(dict.fromkeys(df["attack"]))
    cols = [(name, head) for name, head in columns if any((a, name) in at for a in attacks)]
    lines = ["| attack | " + " | ".join(h for _, h in cols) + " |", "|---" + "|---" * len(cols) + "|"]
    for a in attacks:
        base = at.get((a, "no_defense"))
        cells = []
        for name, _ in cols:
            row = at.get((a, name))
            text = _cell(row)
            cells.append(f"**{text}**" if bold_removed and name != "no_defense" and _removed(row, base) else text)
        lines.append(f"| {a} | " + " | ".join(cells) + " |")
    means = []
    for name, _ in cols:
        rows = [at[(a, name)] for a in attacks if (a, name) in at]
        if len(rows) == len(attacks):
            means.append(" / ".join(f"{sum(getattr(r, m) for r in rows) / len(rows):.2f}"
                                    for m in ("test_acc", "test_asr", "test_ra")))
        else:
            means.append(f"({len(rows)} of {len(attacks)} records)")
    lines.append("| **mean** | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def removed_on(df: pd.DataFrame, defense: str) -> list[str]:
    """The records on which ``defense`` removed the backdoor (ASR <= 5 %, ACC within 2 points)."""
    at = _lookup(df)
    return [a for a in dict.fromkeys(df["attack"]) if _removed(at.get((a, defense)), at.get((a, "no_defense")))]


def verdict(df: pd.DataFrame) -> str:
    n = df["attack"].nunique()

    def said(name):
        got = removed_on(df, name)
        return f"{len(got)} of {n}" + (f" ({', '.join(got)})" if got else "")
    most = max(len(removed_on(df, name)) for name, _ in DETECTORS)
    at = _lookup(df)
    kept = [(at[(a, "burn[box-aware]")].test_asr, a, at[(a, "burn[box-aware]")].test_acc - at[(a, "no_defense")].test_acc)
            for a in dict.fromkeys(df["attack"]) if (a, "burn[box-aware]") in at and (a, "no_defense") in at
            and at[(a, "no_defense")].test_acc - at[(a, "burn[box-aware]")].test_acc <= KEPT_ACC]
    closest = f" (closest: {min(kept)[1]}, ASR {min(kept)[0]:.2f} with ACC {min(kept)[2]:+.2f})" if kept else ""
    return (f"**Verdict.** With no clean data, BURN (the paper's loop) removes the backdoor (ASR <= {REMOVED_ASR:g}%, "
            f"ACC within {KEPT_ACC:g} points of no defense) on {said('burn[box-aware]')} records of 60,000 training "
            f"images{closest}; with another "
            f"poison detector on at most {most} of {n}. With clean data, FT (5%) does on "
            f"{said('ft')}, ULRL (1%) on {said('ulrl')}. Detection is where BURN fails: "
            f"[detectors](docs/results/detectors_20k/detectors.md).\n")


def _data_used(df: pd.DataFrame, columns) -> str:
    if "data_used" not in df.columns:
        return ""
    out = []
    for name, head in columns:
        vals = sorted({str(v) for v in df.loc[df["defense"] == name, "data_used"].dropna()})
        if vals:
            out.append(f"- {head}: {'; '.join(vals)}")
    return "\n".join(out) + "\n" if out else ""


def comparison_page(df: pd.DataFrame, source: str) -> str:
    n = df["attack"].nunique()
    return (
        "# Results: defenses side by side\n\n"
        f"Rendered by `burn results` from [`{source}`]({source}) ({n} records; Fashion-MNIST, `smallresnet`, "
        "CPU). Each cell is ACC / ASR / RA in %, BackdoorBench's metrics as `burn compare` evaluates them; "
        f"**bold**: the backdoor is removed (ASR <= {REMOVED_ASR:g}%, ACC within {KEPT_ACC:g} points of no "
        "defense). BURN here is the paper's loop and settings with the box-aware DeepFool step "
        "(`box_aware: true`); \"BURN, paper's DeepFool\" is `box_aware: false`, run on the records named.\n\n"
        "## Defenses\n\n" + cell_table(df, MAIN) + "\nData each defense used:\n\n" + _data_used(df, MAIN)
        + "\n## BURN with each poison detector (`--detector`)\n\n" + cell_table(df, DETECTORS)
        + "\nThe wide table for machines: `burn compare --out DIR` writes `comparison.csv`; per-detector AUROC "
          "and phase-1 precision, read from each detection model: [detectors_20k/detectors.md](detectors_20k/detectors.md).\n")


def round_page(df: pd.DataFrame, title: str, what: str) -> str:
    """Every defense of ``df`` as a column (in the order ``burn compare`` wrote them), one row per record,
    and on which records each removed the backdoor."""
    names = list(dict.fromkeys(df["defense"]))
    columns = [(d, "No defense" if d == "no_defense" else d) for d in names]
    n = df["attack"].nunique()
    got = {d: removed_on(df, d) for d in names if d != "no_defense"}
    removed = "\n".join(f"- `{d}`: {len(g)} of {n}" + (f" ({', '.join(g)})" if g else "") for d, g in got.items())
    return (f"# {title}\n\n<!-- rendered by `burn results` from comparison.csv; do not edit by hand -->\n\n"
            f"{what}. Each cell is ACC / ASR / RA in %; **bold**: the backdoor is removed (ASR <= {REMOVED_ASR:g}%, "
            f"ACC within {KEPT_ACC:g} points of no defense). Written by `burn compare RECORDS --no-reevaluate "
            "--metrics acc,asr,ra --out` this folder; a column's name says its settings where they differ from "
            "the paper's (`burn[box-aware]` is the paper's loop with the box-aware DeepFool step).\n\n"
            + cell_table(df, columns) + "\nRemoved on:\n\n" + removed + "\n\nData each defense used:\n\n"
            + _data_used(df, columns))


def index_page(df: pd.DataFrame) -> str:
    return (
        "# Results\n\n"
        "Measured on Fashion-MNIST with `smallresnet` on CPU: nine attack records made by `burn attack` "
        "(60,000 training images, poison ratio 0.1, target 0), each defended by BURN, FT, ULRL and BURN "
        "with other poison detectors.\n\n"
        f"![ASR against the change of ACC, one panel per defense]({FIGURE}.png)\n\n"
        "| file | what | written by |\n|---|---|---|\n"
        "| [comparison.md](comparison.md) | every defense on every record, ACC / ASR / RA | `burn results` from `comparison.csv` |\n"
        "| `comparison.csv` | the same, one row per record x defense (for machines) | `burn compare` |\n"
        f"| `{FIGURE}.png` | the figure above | `burn results` from `comparison.csv` |\n"
        "| [detectors_20k/detectors.md](detectors_20k/detectors.md) | each poison detector's AUROC and phase-1 "
        "precision, read from each detection model, on records of 20,000 training images (the JSON beside it) | "
        "`benchmarks/detectors.py --json`, then `burn results` |\n"
        "| [detection_models/detectors.md](detection_models/detectors.md) | every detector read from each detection "
        "model (`detection_model`: infected, sgd, sam, sam_scratch) on three small records (3,000 training images; "
        "the JSON beside it) | `benchmarks/detectors.py --set detection_model=... --json`, then `burn results` |\n\n"
        "`burn results --check` (run by the test suite) fails when a page rendered here differs from its data.\n")


def round_verdict(df: pd.DataFrame, link: str) -> str:
    """One line per BURN configuration of another set of records: where it removed the backdoor."""
    n = df["attack"].nunique()
    lines = []
    for d in dict.fromkeys(df["defense"]):
        if d == "no_defense":
            continue
        ran = df.loc[df["defense"] == d, "attack"].nunique()
        got = removed_on(df, d)
        lines.append(f"- `{d}`: {len(got)} of {ran}" + (f" ({', '.join(got)})" if got else "")
                     + ("" if ran == n else f" (run on {ran} of the {n} records)"))
    return (f"On the records made again at 20,000 training images ([all rows]({link})), the backdoor is removed "
            "(same rule) by:\n\n" + "\n".join(lines) + "\n")


def readme_blocks(df: pd.DataFrame, source: str, rounds: dict[str, tuple[pd.DataFrame, str]] | None = None
                  ) -> dict[str, str]:
    """The README's generated blocks: ``verdict`` (two lines near the top, then one line per configuration
    of each other set of records in ``rounds``: name -> (its comparison, the link to its page)) and
    ``results`` (the table)."""
    note = f"<!-- rendered by `burn results` from {source}; do not edit by hand -->\n"
    extra = "".join("\n" + round_verdict(rdf, link) for rdf, link in (rounds or {}).values())
    return {
        "verdict": note + verdict(df) + extra,
        "results": (note + "\nACC / ASR / RA in % (Fashion-MNIST, `smallresnet`, nine attacks; **bold**: backdoor "
                    "removed). BURN is the paper's loop and settings with the box-aware DeepFool step "
                    "(`--box_aware true`); the default, `false`, is the paper's step: \"BURN, paper's DeepFool\". "
                    "All rows, and BURN with each poison detector: "
                    "[docs/results](docs/results/comparison.md).\n\n" + cell_table(df, MAIN) + "\n"
                    f"![ASR against the change of ACC per defense](docs/results/{FIGURE}.png)\n"),
    }


def fill_blocks(text: str, blocks: dict[str, str], where: str) -> str:
    """``text`` with each ``<!-- NAME:begin -->`` ... ``<!-- NAME:end -->`` block replaced by ``blocks[NAME]``."""
    for name, body in blocks.items():
        begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
        if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
            raise BadInputError(f"{where} needs one '{begin}' line and one '{end}' line (in that order) where the "
                                f"{name} go")
        head, rest = text.split(begin, 1)
        text = head + begin + "\n" + body + end + rest.split(end, 1)[1]
    return text


def plot_summary(df: pd.DataFrame, out_stem: str | os.PathLike) -> list[Path]:
    """One panel per defense of :data:`MAIN`: every record as a point at (ACC change against no defense,
    ASR), one colour and marker per record, the "removed" corner shaded."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    at = _lookup(df)
    attacks = list(dict.fromkeys(df["attack"]))
    cols = [(n, h) for n, h in MAIN if n != "no_defense" and sum((a, n) in at for a in attacks) >= len(attacks)]
    fig, axes = plt.subplots(1, len(cols), figsize=(2.9 * len(cols) + 1.6, 3.1), sharey=True, squeeze=False)
    markers = "ovs^DP*Xh<>p"
    colours = plt.get_cmap("tab10")
    for ax, (name, head) in zip(axes[0], cols):
        ax.add_patch(Rectangle((-KEPT_ACC, -3), 14 + KEPT_ACC, REMOVED_ASR + 3, color="tab:green", alpha=0.2, lw=0))
        for k, a in enumerate(attacks):
            row, base = at.get((a, name)), at.get((a, "no_defense"))
            if row is not None and base is not None:
                ax.scatter(row.test_acc - base.test_acc, row.test_asr, s=26, marker=markers[k % len(markers)],
                           color=colours(k % 10), label=a, zorder=3)
        ax.set_title(f"{head}: {len(removed_on(df, name))} of {len(attacks)} removed", fontsize=9)
        ax.set_xlim(-32, 12)
        ax.set_ylim(-3, 103)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_xlabel("ACC change (points)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0][0].set_ylabel("ASR after the defense (%)", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    handles.append(Rectangle((0, 0), 1, 1, color="tab:green", alpha=0.2, lw=0))
    labels.append(f"removed: ASR <= {REMOVED_ASR:g}%,\nACC within {KEPT_ACC:g} points")
    fig.legend(handles, labels, loc="center right", fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    paths = []
    for ext in ("png", "pdf"):
        p = Path(f"{out_stem}.{ext}")
        fig.savefig(p, dpi=130, metadata={"CreationDate": None} if ext == "pdf" else {"Software": None})
        paths.append(p)
    plt.close(fig)
    return paths


def render_pages(results_dir: str | os.PathLike, readme: str | os.PathLike | None) -> list[Page]:
    """Every text page rendered from ``<results_dir>/comparison.csv`` (nothing is written)."""
    results_dir = Path(results_dir)
    df = read_comparison(results_dir / "comparison.csv")
    pages = [Page(results_dir / "comparison.md", comparison_page(df, "comparison.csv")),
             Page(results_dir / "index.md", index_page(df))]
    pages += [Page(results_dir / sub / "detectors.md", detectors_page(results_dir / sub, title))
              for sub, title in DETECTOR_PAGES.items() if (results_dir / sub).is_dir()]
    rounds = {sub: read_comparison(results_dir / sub / "comparison.csv") for sub in ROUND_PAGES
              if (results_dir / sub / "comparison.csv").is_file()}
    pages += [Page(results_dir / sub / "comparison.md", round_page(rdf, *ROUND_PAGES[sub]))
              for sub, rdf in rounds.items()]
    if readme is not None:
        readme = Path(readme)
        rel = os.path.relpath(results_dir / "comparison.csv", readme.parent)
        linked = {sub: (rdf, os.path.relpath(results_dir / sub / "comparison.md", readme.parent))
                  for sub, rdf in rounds.items()}
        pages.append(Page(readme, fill_blocks(readme.read_text(), readme_blocks(df, rel, linked), str(readme))))
    return pages


def stale_pages(pages: list[Page]) -> list[Path]:
    """The pages whose file on disk differs from the rendering."""
    return [p.path for p in pages if not p.path.is_file() or p.path.read_text() != p.text]
