"""The figures one defense run draws beside its results when it finishes, each saved as PNG (150 dpi)
and PDF, and the figure helpers :mod:`burn_plugin.report.plots` (the figures across runs) shares.

- :func:`plot_roc`: the paper's Fig. 5: ROC of the boundary distance l(x) (and of BURN's final score
  S) as a poison detector against the record's poison flags, AUROC in the legend.
- :func:`plot_distance_histogram`: l(x) of clean vs poisoned training samples.
- :func:`plot_rounds`: ACC / ASR / RA per BURN round (``burn_df.csv``) and the sizes of the selected sets.
- :func:`plot_defense_folder`: the three for a ``defense/<name>/`` folder, written beside it.

Figures are built with :class:`matplotlib.figure.Figure` (no ``pyplot``, no global backend switch, the
Agg canvas renders them), with fonts of at least 10 pt so that they stay readable in print. Every
function returns a :class:`Plot`: the written paths, the numbers drawn, and the figure itself.
"""
from __future__ import annotations

import logging
import math
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from ..errors import BadInputError, CorruptFileError, RecordNotFoundError
from ..fileio import atomic_write
from .runs import read_run_json

log = logging.getLogger("burn")

STYLE = {
    "font.size": 11,
    "axes.titlesize": 12,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "figure.titlesize": 13,
    "axes.grid": True,
    "grid.alpha": 0.35,
    "pdf.fonttype": 42,  # embed TrueType, editable text in the PDF
}
DPI = 150
#: colour-blind-safe palette (Okabe & Ito)
COLORS = {"acc": "#0072B2", "asr": "#D55E00", "ra": "#009E73", "clean": "#0072B2", "poison": "#D55E00",
          "kept": "#CC79A7", "score": "#009E73", "chance": "0.5"}


class Plot(NamedTuple):
    """What a plot function made: the files (PNG, PDF), the numbers shown, and the figure."""

    paths: list[Path]
    values: dict
    figure: Any


# ------------------------------------------------------------------------------------------------
# helpers

def new_figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def plot_style():
    import matplotlib

    return matplotlib.rc_context(STYLE)


def save_figure(fig, out_stem: str | os.PathLike) -> list[Path]:
    """``<out_stem>.png`` and ``<out_stem>.pdf``, each written atomically."""
    stem = Path(out_stem)
    if stem.suffix.lower() in (".png", ".pdf"):
        stem = stem.with_suffix("")
    paths = [stem.parent / f"{stem.name}.{fmt}" for fmt in ("png", "pdf")]
    with plot_style():
        for path in paths:
            atomic_write(path, lambda p: fig.savefig(p, format=path.suffix[1:], dpi=DPI))
    return paths


def load_scores(scores) -> dict[str, np.ndarray]:
    """``scores.npz`` (path) or a mapping of arrays -> dict of numpy arrays (no pickle allowed)."""
    if isinstance(scores, Mapping):
        return {k: np.asarray(v) for k, v in scores.items()}
    path = Path(scores)
    if not path.is_file():
        raise RecordNotFoundError(f"scores file not found: {path} (BURN writes scores.npz beside its results)")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptFileError(f"{path} is not a readable .npz file ({exc}); re-run the defense") from exc


def require_arrays(arrays: dict, *keys: str, where: str = "scores") -> None:
    missing = [k for k in keys if k not in arrays]
    if missing:
        raise BadInputError(f"{where} lacks {', '.join(missing)} (needs BURN's scores.npz)")


def finite_scores(x) -> np.ndarray:
    """Scores with +inf above every finite value and NaN/-inf below (order kept), for ROC computations."""
    x = np.asarray(x, dtype=float).copy()
    fin = np.isfinite(x)
    if fin.all():
        return x
    lo, hi = (x[fin].min(), x[fin].max()) if fin.any() else (0.0, 0.0)
    span = max(hi - lo, 1.0)
    x[np.isposinf(x)] = hi + span
    x[np.isneginf(x) | np.isnan(x)] = lo - span
    return x


def roc_axes(ax, title: str) -> None:
    """A ROC panel's chance line, unit square, labels, title and legend."""
    ax.plot([0, 1], [0, 1], ":", color=COLORS["chance"], lw=1.3, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (clean flagged)")
    ax.set_ylabel("True positive rate (poison found)")
    ax.set_title(title)
    ax.legend(loc="lower right")


# ------------------------------------------------------------------------------------------------
# Fig. 5: ROC of the boundary distance

def plot_roc(scores, out_stem: str | os.PathLike, *, title: str | None = None) -> Plot:
    """ROC/AUROC of l(x) (``distance``) and, if present, of S (``final_score``) against ``report_poison_flag``.

    Higher scores mean "more likely poisoned" (poisoned samples lie farther from the boundary). The
    final poison set (the highest ``round<t>_poison``), if stored, is drawn as its operating point.
    ``values["auroc"]`` holds ``{"distance": ..., "final_score": ...}``.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    arrays = load_scores(scores)
    require_arrays(arrays, "distance", "report_poison_flag")
    poison = np.asarray(arrays["report_poison_flag"]).astype(bool)
    if poison.all() or not poison.any():
        raise BadInputError("ROC needs both clean and poisoned samples; report_poison_flag has only one kind")
    curves = [("distance", "boundary distance l(x)", COLORS["poison"])]
    if "final_score" in arrays and len(arrays["final_score"]) == len(poison):
        curves.append(("final_score", "final score S (BD + PD)", COLORS["score"]))
    aurocs, point = {}, None
    with plot_style():
        fig = new_figure(figsize=(5.6, 5.2))
        ax = fig.add_subplot(1, 1, 1)
        for key, label, color in curves:
            s = finite_scores(arrays[key])
            fpr, tpr, _ = roc_curve(poison, s)
            aurocs[key] = float(roc_auc_score(poison, s))
            ax.plot(fpr, tpr, color=color, lw=2, label=f"{label}: AUROC {aurocs[key]:.3f}")
        rounds = sorted(int(k[len("round"):-len("_poison")]) for k in arrays
                        if k.startswith("round") and k.endswith("_poison") and k[5:-7].isdigit())
        if rounds:
            sel = np.zeros(len(poison), dtype=bool)
            sel[np.asarray(arrays[f"round{rounds[-1]}_poison"], dtype=np.int64)] = True
            point = (float((sel & ~poison).sum() / (~poison).sum()), float((sel & poison).sum() / poison.sum()))
            ax.plot(*point, "k*", ms=13, label=f"final poison set (round {rounds[-1]})")
        roc_axes(ax, title or f"Poison detection ({int(poison.sum())} of {len(poison)} poisoned)")
        paths = save_figure(fig, out_stem)
    return Plot(paths, {"auroc": aurocs, "selection_point": point, "n_poison": int(poison.sum()),
                        "n": int(len(poison))}, fig)


# ------------------------------------------------------------------------------------------------
# distance histograms

def plot_distance_histogram(scores, out_stem: str | os.PathLike, *, bins: int = 50, log_x: bool | None = None,
                            title: str | None = None) -> Plot:
    """Density histograms of l(x) for clean and poisoned training samples (label-flipped poison and
    poison whose label was kept drawn apart when both occur). ``log_x=None`` picks a log axis for
    heavy-tailed positive distances."""
    arrays = load_scores(scores)
    require_arrays(arrays, "distance", "report_poison_flag")
    dist = np.asarray(arrays["distance"], dtype=float)
    poison = np.asarray(arrays["report_poison_flag"]).astype(bool)
    groups = [("clean", ~poison, COLORS["clean"]), ("poison", poison, COLORS["poison"])]
    if "label" in arrays and "report_original_label" in arrays:
        flipped = poison & (np.asarray(arrays["label"]) != np.asarray(arrays["report_original_label"]))
        kept = poison & ~flipped
        if flipped.any() and kept.any():   # both kinds: drawn apart
            groups[1:] = [("poison, label flipped", flipped, COLORS["poison"]),
                          ("poison, label kept", kept, COLORS["kept"])]
    groups = [g for g in groups if g[1].any()]
    fin = np.isfinite(dist)
    if not fin.any():
        raise BadInputError("no finite boundary distance to plot")
    d = dist[fin]
    if log_x is None:
        pos = d[d > 0]
        log_x = bool(len(pos) == len(d) and pos.max() / max(np.median(pos), 1e-12) > 50)
    edges = (np.geomspace(d.min(), d.max(), bins + 1) if log_x and d.min() > 0 and d.max() > d.min()
             else np.linspace(d.min(), d.max() if d.max() > d.min() else d.min() + 1, bins + 1))
    means, counts = {}, {}
    with plot_style():
        fig = new_figure(figsize=(7, 5.0))
        ax = fig.add_subplot(1, 1, 1)
        for name, mask, color in groups:
            v = dist[mask & fin]
            means[name], counts[name] = float(v.mean()) if len(v) else float("nan"), int(mask.sum())
            ax.hist(v, bins=edges, density=True, histtype="stepfilled", alpha=0.3, color=color)
            ax.hist(v, bins=edges, density=True, histtype="step", lw=1.8, color=color,
                    label=f"{name} (n={counts[name]}, mean {means[name]:#.3g})")
            if len(v):
                ax.axvline(means[name], ls="--", lw=1.4, color=color)
        if log_x:
            ax.set_xscale("log")
        ax.set_xlabel("Distance to the decision boundary l(x) (L2)")
        ax.set_ylabel("Density")
        ax.set_title(title or "Boundary distance of training samples (dashed: means)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2 if len(groups) > 2 else len(groups),
                  frameon=False)  # below the axes: never over the bars
        paths = save_figure(fig, out_stem)
    return Plot(paths, {"mean": means, "n": counts, "log_x": log_x, "not_finite": int((~fin).sum())}, fig)


# ------------------------------------------------------------------------------------------------
# per-round curves

def plot_rounds(burn_df, out_stem: str | os.PathLike, *, before: Mapping | None = None,
                title: str | None = None) -> Plot:
    """ACC/ASR/RA per round from ``burn_df.csv`` (path or DataFrame; x = ``round``, else ``epoch``).

    ``before`` (e.g. ``run.json["before"]``) adds the no-defense ACC/ASR as dashed lines. A second
    panel shows the sizes of the poison and clean sets when ``n_poison``/``n_clean`` are present.
    """
    import pandas as pd

    if isinstance(burn_df, pd.DataFrame):
        df = burn_df.copy()
    else:
        path = Path(burn_df)
        if not path.is_file():
            raise RecordNotFoundError(f"per-round CSV not found: {path}")
        try:
            df = pd.read_csv(path)
        except Exception as exc:  # noqa: BLE001
            raise CorruptFileError(f"{path} is not a readable CSV ({exc})") from exc
    xcol = "round" if "round" in df.columns else ("epoch" if "epoch" in df.columns else None)
    if xcol is None:
        df = df.reset_index(drop=True)
        df["round"] = np.arange(len(df))
        xcol = "round"
    metrics = [(c, lab, COLORS[k]) for c, lab, k in (("test_acc", "ACC", "acc"), ("test_asr", "ASR", "asr"),
                                                     ("test_ra", "RA", "ra")) if c in df.columns]
    for c, _, _ in metrics:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    if not metrics or df[[c for c, _, _ in metrics]].isna().all(axis=None):
        raise BadInputError("the per-round CSV has no test_acc/test_asr/test_ra values to plot")
    sizes = [c for c in ("n_poison", "n_clean") if c in df.columns]
    values: dict = {"x": [int(v) if float(v).is_integer() else float(v) for v in df[xcol]]}
    xlabel = "Round (0 = phase 1)" if xcol == "round" else xcol.capitalize()
    with plot_style():
        fig = new_figure(figsize=(11 if sizes else 6.5, 5.0))
        ax = fig.add_subplot(1, 2 if sizes else 1, 1)
        for c, lab, color in metrics:
            ok = df[c].notna()
            ax.plot(df.loc[ok, xcol], 100 * df.loc[ok, c], "-o", color=color, lw=2, ms=6, label=lab)
            values[c] = [float(v) for v in df[c]]
        if before:
            for c, lab, color in metrics[:2]:
                v = before.get(c)
                if v is not None and math.isfinite(float(v)):
                    ax.axhline(100 * float(v), ls="--", color=color, lw=1.4, label=f"{lab} no defense")
        ax.set_ylim(-2, 102)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("%")
        ax.set_title("Test metrics per round")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
        _integer_ticks(ax)
        if sizes:
            ax2 = fig.add_subplot(1, 2, 2)
            for c, color, lab in (("n_poison", COLORS["poison"], "poison set (relabelled)"),
                                  ("n_clean", COLORS["clean"], "clean set (label kept)")):
                if c in df.columns:
                    y = pd.to_numeric(df[c], errors="coerce")
                    ax2.plot(df[xcol], y, "-s", color=color, lw=2, ms=6, label=lab)
                    values[c] = [float(v) for v in y]
            ax2.set_xlabel(xlabel)
            ax2.set_ylabel("Samples selected")
            ax2.set_title("Selected sets per round")
            ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=2, frameon=False)
            _integer_ticks(ax2)
        fig.suptitle(title or "BURN rounds")
        paths = save_figure(fig, out_stem)
    return Plot(paths, values, fig)


def _integer_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ------------------------------------------------------------------------------------------------
# one defense folder

def plot_defense_folder(defense_dir: str | os.PathLike, *, out_dir: str | os.PathLike | None = None,
                        prefix: str = "") -> dict[str, Plot]:
    """ROC, distance histogram (from ``scores.npz``) and per-round curves (from ``<name>_df.csv`` with
    ``run.json``'s ``before`` as reference) of one ``defense/<name>/`` folder, written into
    ``out_dir`` (default: the folder itself) as ``<prefix>{roc,distance_histogram,rounds}.{png,pdf}``.
    Inputs that are absent are skipped; returns ``{"roc"|"distance"|"rounds": Plot}`` of what was written.
    """
    ddir = Path(defense_dir)
    if not ddir.is_dir():
        raise RecordNotFoundError(f"defense folder not found: {ddir}")
    out = Path(out_dir) if out_dir is not None else ddir
    made: dict[str, Plot] = {}
    scores = ddir / "scores.npz"
    if scores.is_file():
        arrays = load_scores(scores)
        for key, fn, stem in (("roc", plot_roc, "roc"), ("distance", plot_distance_histogram, "distance_histogram")):
            try:
                made[key] = fn(arrays, out / f"{prefix}{stem}")
            except BadInputError as exc:
                log.warning("%s: no %s plot (%s)", ddir, stem.replace("_", " "), exc)
    df_csv = ddir / f"{ddir.name}_df.csv"
    if df_csv.is_file():
        before = read_run_json(ddir).get("before")
        try:
            made["rounds"] = plot_rounds(df_csv, out / f"{prefix}rounds", before=before if isinstance(before, dict)
                                         else None)
        except BadInputError as exc:  # e.g. no evaluated round yet
            log.warning("%s: no rounds plot (%s)", ddir, exc)
    return made
