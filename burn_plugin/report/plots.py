"""Figures for the comparison and for one BURN run, each saved as PNG (150 dpi) and PDF.

- :func:`plot_radar`: the paper's Fig. 4 for one attack: ACC and ASR of every defense as two radar
  panels (solid: defended model; dashed: the model without defense). With fewer than three defenses a
  radar has no area, so the same two panels are drawn as horizontal bars with a dashed no-defense line.
- :func:`plot_roc`: the paper's Fig. 5: ROC of the boundary distance l(x) (and of BURN's final score
  S) as a poison detector against the record's poison flags, AUROC in the legend.
- :func:`plot_radar_by_defense`: Fig. 4 as the paper draws it: one radar per defense, the attacks as
  axes, ACC and ASR solid after the defense and dashed without.
- :func:`plot_roc_by_attack`: Fig. 5 over attacks: every attack's ROC of l(x) in one figure.
- :func:`plot_distance_histogram`: l(x) of clean vs poisoned training samples.
- :func:`plot_rounds`: ACC / ASR / RA per BURN round (``burn_df.csv``) and the sizes of the selected sets.
- :func:`plot_defense_folder`: the last three for a ``defense/<name>/`` folder, written beside it.

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
from .runs import NO_DEFENSE, display_name, order_defenses

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

def _figure(**kwargs):
    from matplotlib.figure import Figure

    return Figure(layout="constrained", **kwargs)


def _style():
    import matplotlib

    return matplotlib.rc_context(STYLE)


def save_figure(fig, out_stem: str | os.PathLike) -> list[Path]:
    """``<out_stem>.png`` and ``<out_stem>.pdf``, each written atomically."""
    from ..fileio import atomic_write

    stem = Path(out_stem)
    if stem.suffix.lower() in (".png", ".pdf"):
        stem = stem.with_suffix("")
    paths = []
    for fmt in ("png", "pdf"):
        target = stem.parent / f"{stem.name}.{fmt}"
        with _style():
            atomic_write(target, lambda p, fmt=fmt: fig.savefig(p, format=fmt, dpi=DPI))
        paths.append(target)
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


def _need(arrays: dict, *keys: str, where: str = "scores") -> None:
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


def _roc_axes(ax, title: str) -> None:
    """A ROC panel's chance line, unit square, labels, title and legend."""
    ax.plot([0, 1], [0, 1], ":", color=COLORS["chance"], lw=1.3, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (clean flagged)")
    ax.set_ylabel("True positive rate (poison found)")
    ax.set_title(title)
    ax.legend(loc="lower right")


def _percent(v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return float("nan")
    return 100 * f


# ------------------------------------------------------------------------------------------------
# Fig. 4: radar per attack

def plot_radar(table, out_stem: str | os.PathLike, *, title: str | None = None) -> Plot:
    """ACC and ASR per defense for one attack; ``table`` is the attack's rows of the tidy comparison
    table (a DataFrame or list of dicts with ``defense``, ``test_acc``, ``test_asr``; a ``no_defense``
    row gives the dashed reference)."""
    import pandas as pd


    df = pd.DataFrame(table)
    if df.empty or "defense" not in df.columns:
        raise BadInputError("plot_radar needs rows with a 'defense' column")
    attack = str(df["attack"].iloc[0]) if "attack" in df.columns else ""
    base = df[df["defense"] == NO_DEFENSE]
    rows = df[df["defense"] != NO_DEFENSE]
    defenses = [d for d in order_defenses(rows["defense"])
                if rows[rows["defense"] == d][["test_acc", "test_asr"]].notna().any(axis=None)]
    if not defenses:
        raise BadInputError(f"no defense of {attack or 'this attack'} has ACC/ASR numbers to plot")
    vals = {m: [_percent(rows[rows["defense"] == d][m].iloc[0]) for d in defenses] for m in ("test_acc", "test_asr")}
    ref = {m: (_percent(base[m].iloc[0]) if len(base) else float("nan")) for m in ("test_acc", "test_asr")}
    labels = [display_name(d) for d in defenses]
    kind = "radar" if len(defenses) >= 3 else "bar"
    panels = (("test_acc", "ACC (%), higher is better", COLORS["acc"]),
              ("test_asr", "ASR (%), lower is better", COLORS["asr"]))
    with _style():
        fig = _figure(figsize=(11, 5.4) if kind == "radar" else (10, 1.6 + 0.7 * len(defenses)))
        for i, (m, panel_title, color) in enumerate(panels):
            if kind == "radar":
                _radar_panel(fig.add_subplot(1, 2, i + 1, projection="polar"), labels, vals[m], ref[m], color,
                             panel_title)
            else:
                _bar_panel(fig.add_subplot(1, 2, i + 1), labels, vals[m], ref[m], color, panel_title)
        fig.suptitle(title or (f"{attack}: " if attack else "") + "defended (solid) vs no defense (dashed)")
        paths = save_figure(fig, out_stem)
    values = {"kind": kind, "defenses": defenses, "acc": vals["test_acc"], "asr": vals["test_asr"],
              "no_defense": {"acc": ref["test_acc"], "asr": ref["test_asr"]}}
    return Plot(paths, values, fig)


def _polar_frame(ax, labels, *, pad: float) -> np.ndarray:
    """A radar's frame: one spoke per label (the first at the top, then clockwise), 0-100 with rings at
    25/50/75/100 whose labels sit between the first two spokes; returns the spokes' angles."""
    n = len(labels)
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    ax.set_xticks(ang)
    ax.set_xticklabels(labels)
    ax.set_ylim(0, 100)
    ax.set_yticks([25, 50, 75, 100])
    ax.set_yticklabels(["25", "50", "75", "100"])
    for t in ax.get_yticklabels():
        t.set_bbox({"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 1})
    ax.set_theta_offset(np.pi / 2)
    ax.set_theta_direction(-1)
    ax.set_rlabel_position(180 / n if n else 0)
    ax.tick_params(axis="x", pad=pad)
    # a long name centred on its spoke runs over the outer ring: names on the right start at the spoke,
    # names on the left end there, so that every name grows away from the circle
    for a, text in zip(ang, ax.get_xticklabels()):
        side = np.sin(a)
        text.set_horizontalalignment("left" if side > 0.2 else "right" if side < -0.2 else "center")
    return ang


def _radar_panel(ax, labels, values, ref, color, panel_title):
    ang = _polar_frame(ax, labels, pad=8)
    closed = np.append(ang, ang[0])
    v = np.nan_to_num(np.asarray(values, dtype=float), nan=0.0)
    ax.plot(closed, np.append(v, v[0]), "-o", color=color, lw=2, ms=6, label="defended")
    ax.fill(closed, np.append(v, v[0]), color=color, alpha=0.15)
    if math.isfinite(ref):
        circle = np.linspace(0, 2 * np.pi, 200)
        ax.plot(circle, np.full_like(circle, ref), "--", color="0.2", lw=1.6, label=f"no defense ({ref:.1f})")
    ax.set_title(panel_title, pad=18)
    ax.legend(loc="upper right", bbox_to_anchor=(1.25, 1.12), frameon=False)


def _bar_panel(ax, labels, values, ref, color, panel_title):
    y = np.arange(len(labels))
    v = np.asarray(values, dtype=float)
    ax.barh(y, np.nan_to_num(v), color=color, alpha=0.85, height=0.55, label="defended")
    for yi, vi in zip(y, v):
        if not math.isfinite(vi):
            ax.text(1, yi, "n/a", va="center", fontsize=10)
        elif vi >= 15:  # inside the bar's end, clear of the dashed reference line
            ax.text(vi - 1, yi, f"{vi:.1f}", va="center", ha="right", fontsize=10, color="white", fontweight="bold")
        else:
            ax.text(vi + 1, yi, f"{vi:.1f}", va="center", ha="left", fontsize=10)
    if math.isfinite(ref):
        ax.axvline(ref, ls="--", color="0.2", lw=1.6, label=f"no defense ({ref:.1f})")
    ax.set_yticks(y)
    ax.set_yticklabels(labels)
    ax.set_xlim(0, 112)
    ax.set_xlabel("%")
    ax.invert_yaxis()
    ax.set_title(panel_title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32 if len(labels) < 2 else -0.2), ncol=2, frameon=False)


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
    _need(arrays, "distance", "report_poison_flag")
    poison = np.asarray(arrays["report_poison_flag"]).astype(bool)
    if poison.all() or not poison.any():
        raise BadInputError("ROC needs both clean and poisoned samples; report_poison_flag has only one kind")
    curves = [("distance", "boundary distance l(x)", COLORS["poison"])]
    if "final_score" in arrays and len(arrays["final_score"]) == len(poison):
        curves.append(("final_score", "final score S (BD + PD)", COLORS["score"]))
    aurocs, point = {}, None
    with _style():
        fig = _figure(figsize=(5.6, 5.2))
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
        _roc_axes(ax, title or f"Poison detection ({int(poison.sum())} of {len(poison)} poisoned)")
        paths = save_figure(fig, out_stem)
    return Plot(paths, {"auroc": aurocs, "selection_point": point, "n_poison": int(poison.sum()),
                        "n": int(len(poison))}, fig)


# ------------------------------------------------------------------------------------------------
# across attacks: Fig. 4 as the paper draws it (one radar per defense) and Fig. 5 (every attack's ROC)

#: one colour per attack in the cross-attack ROC (Okabe & Ito, then matplotlib's tab10)
SERIES = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442",
          "#8c564b", "#7f7f7f", "#bcbd22", "#17becf"]


def plot_radar_by_defense(table, out_stem: str | os.PathLike, *, title: str | None = None) -> Plot:
    """The paper's Fig. 4: one radar per defense whose axes are the attacks, ACC (blue) and ASR (orange)
    in percent, solid after the defense and dashed with no defense. ``table`` is the tidy comparison
    table (``attack``, ``defense``, ``test_acc``, ``test_asr``; ``no_defense`` rows give the dashed
    lines). Needs three or more attacks (a radar of two axes has no area)."""
    import pandas as pd


    df = pd.DataFrame(table)
    if df.empty or not {"attack", "defense"} <= set(df.columns):
        raise BadInputError("plot_radar_by_defense needs rows with 'attack' and 'defense' columns")
    attacks = list(dict.fromkeys(df["attack"]))
    if len(attacks) < 3:
        raise BadInputError(f"a radar over attacks needs three or more attacks, got {len(attacks)}")
    defenses = [d for d in order_defenses(df[df["defense"] != NO_DEFENSE]["defense"])
                if df[df["defense"] == d][["test_acc", "test_asr"]].notna().any(axis=None)]
    if not defenses:
        raise BadInputError("no defense has ACC/ASR numbers to plot")

    def series(defense, metric):
        out = []
        for a in attacks:
            r = df[(df["attack"] == a) & (df["defense"] == defense)]
            out.append(_percent(r[metric].iloc[0]) if len(r) else float("nan"))
        return out

    base = {m: series(NO_DEFENSE, m) for m in ("test_acc", "test_asr")}
    values = {d: {m: series(d, m) for m in ("test_acc", "test_asr")} for d in defenses}
    ncols = min(3, len(defenses))
    nrows = math.ceil(len(defenses) / ncols)
    ang = np.linspace(0, 2 * np.pi, len(attacks), endpoint=False)
    closed = np.append(ang, ang[0])

    def ring(v):
        v = np.asarray(v, dtype=float)
        return np.append(v, v[0])

    with _style():
        # names on the side spokes grow outwards (see _polar_frame): widen each panel by the longest name
        # beyond ten characters, so the circle keeps its size
        wide = 0.08 * max(0, max(len(str(a)) for a in attacks) - 10)
        fig = _figure(figsize=((4.6 + wide) * ncols, 4.4 * nrows + 0.8))
        for i, d in enumerate(defenses):
            ax = fig.add_subplot(nrows, ncols, i + 1, projection="polar")
            for m, color, name in (("test_acc", COLORS["acc"], "ACC"), ("test_asr", COLORS["asr"], "ASR")):
                ax.plot(closed, ring(base[m]), "--", color=color, lw=1.4, alpha=0.9, label=f"{name}, no defense")
                ax.plot(closed, ring(values[d][m]), "-o", color=color, lw=2, ms=5, label=f"{name}, defended")
            _polar_frame(ax, attacks, pad=6)
            ax.set_title(display_name(d), pad=14, fontweight="bold")
        handles, labels = fig.axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=4, frameon=False)
        fig.suptitle(title or "ACC and ASR (%) per attack: defended (solid) vs no defense (dashed)")
        paths = save_figure(fig, out_stem)
    return Plot(paths, {"attacks": attacks, "defenses": defenses, "values": values, "no_defense": base}, fig)


def plot_roc_by_attack(scores_by_attack: Mapping[str, Any], out_stem: str | os.PathLike, *,
                       title: str | None = None) -> Plot:
    """The paper's Fig. 5: the ROC of the boundary distance l(x) as a poison detector, one curve per
    attack (``attack -> scores.npz`` or arrays with ``distance`` and ``report_poison_flag``), AUROC in
    the legend. Attacks whose flags hold only one kind are skipped (logged)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    aurocs: dict[str, float] = {}
    with _style():
        fig = _figure(figsize=(6.2, 5.6))
        ax = fig.add_subplot(1, 1, 1)
        for i, (attack, scores) in enumerate(scores_by_attack.items()):
            arrays = load_scores(scores)
            _need(arrays, "distance", "report_poison_flag", where=f"{attack}'s scores")
            poison = np.asarray(arrays["report_poison_flag"]).astype(bool)
            if poison.all() or not poison.any():
                log.warning("%s: only one kind of sample; left out of the ROC", attack)
                continue
            s = finite_scores(arrays["distance"])
            fpr, tpr, _ = roc_curve(poison, s)
            aurocs[attack] = float(roc_auc_score(poison, s))
            ax.plot(fpr, tpr, color=SERIES[i % len(SERIES)], lw=2, label=f"{attack}: AUROC {aurocs[attack]:.3f}")
        if not aurocs:
            raise BadInputError("no attack has both clean and poisoned samples to draw a ROC")
        _roc_axes(ax, title or "Boundary distance l(x) as a poison detector, per attack")
        paths = save_figure(fig, out_stem)
    return Plot(paths, {"auroc": aurocs}, fig)


# ------------------------------------------------------------------------------------------------
# distance histograms

def plot_distance_histogram(scores, out_stem: str | os.PathLike, *, bins: int = 50, log_x: bool | None = None,
                            title: str | None = None) -> Plot:
    """Density histograms of l(x) for clean and poisoned training samples (label-flipped poison and
    poison whose label was kept drawn apart when both occur). ``log_x=None`` picks a log axis for
    heavy-tailed positive distances."""
    arrays = load_scores(scores)
    _need(arrays, "distance", "report_poison_flag")
    dist = np.asarray(arrays["distance"], dtype=float)
    poison = np.asarray(arrays["report_poison_flag"]).astype(bool)
    groups = [("clean", ~poison, COLORS["clean"])]
    if "label" in arrays and "report_original_label" in arrays:
        flipped = poison & (np.asarray(arrays["label"]) != np.asarray(arrays["report_original_label"]))
        kept = poison & ~flipped
        if flipped.any() and kept.any():
            groups += [("poison, label flipped", flipped, COLORS["poison"]),
                       ("poison, label kept", kept, COLORS["kept"])]
        else:
            groups.append(("poison", poison, COLORS["poison"]))
    else:
        groups.append(("poison", poison, COLORS["poison"]))
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
    with _style():
        fig = _figure(figsize=(7, 5.0))
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
    with _style():
        fig = _figure(figsize=(11 if sizes else 6.5, 5.0))
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
        ax.set_xlabel("Round (0 = phase 1)" if xcol == "round" else xcol.capitalize())
        ax.set_ylabel("%")
        ax.set_title("Test metrics per round")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3, frameon=False)
        _integer_ticks(ax)
        if sizes:
            ax2 = fig.add_subplot(1, 2, 2)
            for c, color, lab in (("n_poison", COLORS["poison"], "poison set (relabelled)"),
                                  ("n_clean", COLORS["clean"], "clean set (label kept)")):
                if c in df.columns:
                    ax2.plot(df[xcol], pd.to_numeric(df[c], errors="coerce"), "-s", color=color, lw=2, ms=6,
                             label=lab)
                    values[c] = [float(v) for v in pd.to_numeric(df[c], errors="coerce")]
            ax2.set_xlabel("Round (0 = phase 1)" if xcol == "round" else xcol.capitalize())
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
    import json

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
        before = None
        run = ddir / "run.json"
        if run.is_file():
            try:
                obj = json.loads(run.read_text())
                before = obj.get("before") if isinstance(obj, dict) else None
            except (OSError, ValueError):
                before = None
        try:
            made["rounds"] = plot_rounds(df_csv, out / f"{prefix}rounds", before=before if isinstance(before, dict)
                                         else None)
        except BadInputError as exc:  # e.g. no evaluated round yet
            log.warning("%s: no rounds plot (%s)", ddir, exc)
    return made
