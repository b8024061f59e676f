"""Figures across runs for the comparison, each saved as PNG (150 dpi) and PDF; the figures of one run
(ROC, distance histogram, per-round curves) and the shared helpers are :mod:`burn_plugin.bench.figures`.

- :func:`plot_radar`: the paper's Fig. 4 for one attack: ACC and ASR of every defense as two radar
  panels (solid: defended model; dashed: the model without defense). With fewer than three defenses a
  radar has no area, so the same two panels are drawn as horizontal bars with a dashed no-defense line.
- :func:`plot_radar_by_defense`: Fig. 4 as the paper draws it: one radar per defense, the attacks as
  axes, ACC and ASR solid after the defense and dashed without.
- :func:`plot_roc_by_attack`: Fig. 5 over attacks: every attack's ROC of l(x) in one figure.
"""
from __future__ import annotations

import logging
import math
import os
from typing import Any, Mapping

import numpy as np

from ..bench.figures import (COLORS, Plot, finite_scores, load_scores, new_figure, plot_style, require_arrays,
                             roc_axes, save_figure)
from ..errors import BadInputError
from .runs import NO_DEFENSE, labels_of, order_defenses

log = logging.getLogger("burn")

# ------------------------------------------------------------------------------------------------
# helpers

def _percent(v) -> float:
    try:
        return 100 * float(v)
    except (TypeError, ValueError):
        return float("nan")


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
    names = labels_of(rows)
    labels = [names[d] for d in defenses]
    kind = "radar" if len(defenses) >= 3 else "bar"
    panels = (("test_acc", "ACC (%), higher is better", COLORS["acc"]),
              ("test_asr", "ASR (%), lower is better", COLORS["asr"]))
    with plot_style():
        fig = new_figure(figsize=(11, 5.4) if kind == "radar" else (10, 1.6 + 0.7 * len(defenses)))
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
        rows = [df[(df["attack"] == a) & (df["defense"] == defense)] for a in attacks]
        return [_percent(r[metric].iloc[0]) if len(r) else float("nan") for r in rows]

    base = {m: series(NO_DEFENSE, m) for m in ("test_acc", "test_asr")}
    values = {d: {m: series(d, m) for m in ("test_acc", "test_asr")} for d in defenses}
    names = labels_of(df)
    ncols = min(3, len(defenses))
    nrows = math.ceil(len(defenses) / ncols)
    ang = np.linspace(0, 2 * np.pi, len(attacks), endpoint=False)
    closed = np.append(ang, ang[0])

    def ring(v):
        v = np.asarray(v, dtype=float)
        return np.append(v, v[0])

    with plot_style():
        # names on the side spokes grow outwards (see _polar_frame): widen each panel by the longest name
        # beyond ten characters, so the circle keeps its size
        wide = 0.08 * max(0, max(len(str(a)) for a in attacks) - 10)
        fig = new_figure(figsize=((4.6 + wide) * ncols, 4.4 * nrows + 0.8))
        for i, d in enumerate(defenses):
            ax = fig.add_subplot(nrows, ncols, i + 1, projection="polar")
            for m, color, name in (("test_acc", COLORS["acc"], "ACC"), ("test_asr", COLORS["asr"], "ASR")):
                ax.plot(closed, ring(base[m]), "--", color=color, lw=1.4, alpha=0.9, label=f"{name}, no defense")
                ax.plot(closed, ring(values[d][m]), "-o", color=color, lw=2, ms=5, label=f"{name}, defended")
            _polar_frame(ax, attacks, pad=6)
            ax.set_title(names[d], pad=14, fontweight="bold")
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
    with plot_style():
        fig = new_figure(figsize=(6.2, 5.6))
        ax = fig.add_subplot(1, 1, 1)
        for i, (attack, scores) in enumerate(scores_by_attack.items()):
            arrays = load_scores(scores)
            require_arrays(arrays, "distance", "report_poison_flag", where=f"{attack}'s scores")
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
        roc_axes(ax, title or "Boundary distance l(x) as a poison detector, per attack")
        paths = save_figure(fig, out_stem)
    return Plot(paths, {"auroc": aurocs}, fig)


