"""Plots: radar (Fig. 4), ROC with AUROC (Fig. 5), distance histograms, per-round curves, one defense folder."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

from burn_plugin.errors import BadInputError, RecordNotFoundError
from burn_plugin.bench.figures import finite_scores, plot_defense_folder, plot_distance_histogram, plot_roc, plot_rounds
from burn_plugin.report.plots import plot_radar, plot_radar_by_defense, plot_roc_by_attack


def _scores(n=400, n_poison=40, seed=0) -> dict:
    rng = np.random.default_rng(seed)
    poison = np.zeros(n, dtype=bool)
    poison[rng.choice(n, n_poison, replace=False)] = True
    dist = np.where(poison, rng.normal(3.0, 0.8, n), rng.normal(1.0, 0.6, n)).clip(0.01)
    label = rng.integers(0, 10, n)
    orig = label.copy()
    pidx = np.flatnonzero(poison)
    label[pidx] = 0                                   # all-to-one target 0
    orig[pidx] = rng.integers(0, 10, n_poison)        # some of them are of class 0 already (label kept)
    orig[pidx[:3]] = 0
    orig[pidx[3:]] = np.where(orig[pidx[3:]] == 0, 1, orig[pidx[3:]])
    final = 0.6 * dist / dist.max() + 0.4 * rng.random(n)
    order = np.argsort(-final)
    return {"distance": dist.astype(np.float32), "adv_label": rng.integers(0, 10, n), "final_score": final,
            "report_poison_flag": poison, "report_original_label": orig, "label": label, "bd": dist / dist.max(),
            "final_pd": rng.random(n), "round0_poison": order[:20], "round2_poison": order[:36],
            "round2_clean": order[-100:]}


def _burn_df() -> pd.DataFrame:
    return pd.DataFrame({"epoch": [0, 1, 2], "round": [0, 1, 2], "k_p": [5, 8, 10], "n_poison": [20, 28, 36],
                         "n_clean": [300, 250, 200], "test_acc": [0.81, 0.84, 0.86], "test_asr": [0.40, 0.12, 0.03],
                         "test_ra": [0.50, 0.75, 0.83]})


def _valid_files(paths, min_size=(500, 300)):
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    png, pdf = paths
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] >= min_size[0] and im.size[1] >= min_size[1]
    data = pdf.read_bytes()
    assert data[:5] == b"%PDF-" and b"%%EOF" in data[-64:]


def _fonts_readable(fig):
    from matplotlib.text import Text

    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
    assert texts
    small = [(t.get_text(), t.get_fontsize()) for t in texts if t.get_fontsize() < 10]
    assert not small, small


def test_plot_roc_auroc_equals_sklearn(tmp_path):
    s = _scores()
    res = plot_roc(s, tmp_path / "roc")
    _valid_files(res.paths)
    _fonts_readable(res.figure)
    assert res.values["auroc"]["distance"] == roc_auc_score(s["report_poison_flag"], s["distance"].astype(float))
    assert res.values["auroc"]["final_score"] == roc_auc_score(s["report_poison_flag"], s["final_score"])
    assert res.values["auroc"]["distance"] > 0.9
    # operating point of the final poison set (round 2, the highest stored)
    sel = np.zeros(400, dtype=bool)
    sel[s["round2_poison"]] = True
    p = s["report_poison_flag"]
    assert res.values["selection_point"] == ((sel & ~p).sum() / (~p).sum(), (sel & p).sum() / p.sum())


def test_plot_roc_reads_npz_and_handles_infinite_distances(tmp_path):
    s = _scores()
    s["distance"][np.flatnonzero(s["report_poison_flag"])[:2]] = np.inf
    s["distance"][np.flatnonzero(~s["report_poison_flag"])[:2]] = np.nan
    np.savez(tmp_path / "scores.npz", **s)
    res = plot_roc(tmp_path / "scores.npz", tmp_path / "roc.png")  # suffix is dropped
    assert [p.name for p in res.paths] == ["roc.png", "roc.pdf"]
    d = s["distance"].astype(float)
    d = np.where(np.isposinf(d), 1e9, np.where(np.isnan(d), -1e9, d))
    assert res.values["auroc"]["distance"] == pytest.approx(roc_auc_score(s["report_poison_flag"], d), abs=1e-12)
    fs = finite_scores([1.0, np.inf, -np.inf, np.nan, 2.0])
    assert np.isfinite(fs).all() and fs[1] > 2.0 and fs[2] < 1.0 and fs[3] < 1.0


def test_plot_roc_needs_both_classes(tmp_path):
    s = _scores()
    s["report_poison_flag"] = np.zeros(400, dtype=bool)
    with pytest.raises(BadInputError, match="both"):
        plot_roc(s, tmp_path / "roc")
    with pytest.raises(BadInputError, match="report_poison_flag"):
        plot_roc({"distance": np.ones(3)}, tmp_path / "roc")
    with pytest.raises(RecordNotFoundError):
        plot_roc(tmp_path / "absent.npz", tmp_path / "roc")


def test_distance_histogram_groups(tmp_path):
    s = _scores()
    res = plot_distance_histogram(s, tmp_path / "hist")
    _valid_files(res.paths)
    _fonts_readable(res.figure)
    p = s["report_poison_flag"]
    flipped = p & (s["label"] != s["report_original_label"])
    kept = p & ~flipped
    assert res.values["n"] == {"clean": int((~p).sum()), "poison, label flipped": int(flipped.sum()),
                               "poison, label kept": 3}
    assert res.values["mean"]["clean"] == pytest.approx(float(s["distance"][~p].mean()), rel=1e-6)
    assert res.values["mean"]["poison, label kept"] == pytest.approx(float(s["distance"][kept].mean()), rel=1e-6)
    # without the label arrays: clean vs poison
    res2 = plot_distance_histogram({k: s[k] for k in ("distance", "report_poison_flag")}, tmp_path / "hist2")
    assert set(res2.values["n"]) == {"clean", "poison"}


def test_plot_rounds_from_csv(tmp_path):
    df = _burn_df()
    df.to_csv(tmp_path / "burn_df.csv", index=False)
    res = plot_rounds(tmp_path / "burn_df.csv", tmp_path / "rounds", before={"test_acc": 0.9, "test_asr": 0.97})
    _valid_files(res.paths)
    _fonts_readable(res.figure)
    assert res.values["x"] == [0, 1, 2]
    assert res.values["test_asr"] == [0.40, 0.12, 0.03]
    assert res.values["n_poison"] == [20, 28, 36]
    labels = [t.get_text() for t in res.figure.axes[0].get_legend().get_texts()]
    assert labels == ["ACC", "ASR", "RA", "ACC no defense", "ASR no defense"]
    with pytest.raises(BadInputError):
        plot_rounds(pd.DataFrame({"round": [0, 1], "n_poison": [1, 2]}), tmp_path / "x")


def test_plot_radar_kinds(tmp_path):
    rows = [("no_defense", 0.92, 0.97), ("burn", 0.90, 0.01), ("sau", 0.85, 0.02), ("ft", 0.90, 0.20),
            ("anp", float("nan"), float("nan"))]
    df = pd.DataFrame([{"attack": "badnet", "defense": d, "test_acc": a, "test_asr": s} for d, a, s in rows])
    res = plot_radar(df, tmp_path / "radar")
    _valid_files(res.paths)
    _fonts_readable(res.figure)
    assert res.values["kind"] == "radar"
    assert res.values["defenses"] == ["ft", "sau", "burn"]  # known order, BURN last; anp has no numbers
    assert res.values["acc"] == pytest.approx([90.0, 85.0, 90.0])
    assert res.values["asr"] == pytest.approx([20.0, 2.0, 1.0])
    assert res.values["no_defense"] == pytest.approx({"acc": 92.0, "asr": 97.0})
    two = plot_radar(df[df["defense"].isin(["no_defense", "burn", "sau"])], tmp_path / "radar2")
    assert two.values["kind"] == "bar"
    _fonts_readable(two.figure)
    with pytest.raises(BadInputError):
        plot_radar(df[df["defense"] == "no_defense"], tmp_path / "radar3")


def test_plot_defense_folder(tmp_path):
    d = tmp_path / "record" / "badnet" / "defense" / "burn"
    d.mkdir(parents=True)
    np.savez_compressed(d / "scores.npz", **_scores())
    _burn_df().to_csv(d / "burn_df.csv", index=False)
    (d / "run.json").write_text(json.dumps({"before": {"test_acc": 0.9, "test_asr": 0.97, "test_ra": 0.02}}))
    made = plot_defense_folder(d)
    assert set(made) == {"roc", "distance", "rounds"}
    for name in ("roc", "distance_histogram", "rounds"):
        assert (d / f"{name}.png").is_file() and (d / f"{name}.pdf").is_file()
    labels = [t.get_text() for t in made["rounds"].figure.axes[0].get_legend().get_texts()]
    assert "ASR no defense" in labels
    # elsewhere, with a prefix; a folder without scores gives only the rounds plot
    out = tmp_path / "out"
    (d / "scores.npz").unlink()
    made2 = plot_defense_folder(d, out_dir=out, prefix="badnet_burn_")
    assert set(made2) == {"rounds"}
    assert sorted(p.name for p in out.iterdir()) == ["badnet_burn_rounds.pdf", "badnet_burn_rounds.png"]
    with pytest.raises(RecordNotFoundError):
        plot_defense_folder(tmp_path / "nope")


def test_plot_radar_by_defense(tmp_path):
    rows = []
    for a, (acc0, asr0) in {"badnet": (0.9, 0.97), "blended": (0.88, 0.99), "sig": (0.87, 0.95)}.items():
        rows += [{"attack": a, "defense": "no_defense", "test_acc": acc0, "test_asr": asr0},
                 {"attack": a, "defense": "burn", "test_acc": acc0 - 0.02, "test_asr": 0.01},
                 {"attack": a, "defense": "ft", "test_acc": acc0 - 0.01, "test_asr": asr0 / 2}]
    df = pd.DataFrame(rows[:-1])                                   # ft has no row for sig: a gap, not an error
    res = plot_radar_by_defense(df, tmp_path / "radar")
    _valid_files(res.paths)
    _fonts_readable(res.figure)
    assert res.values["attacks"] == ["badnet", "blended", "sig"] and res.values["defenses"] == ["ft", "burn"]
    assert res.values["values"]["burn"]["test_acc"] == pytest.approx([88.0, 86.0, 85.0])
    assert res.values["values"]["ft"]["test_asr"][:2] == pytest.approx([48.5, 49.5])
    assert np.isnan(res.values["values"]["ft"]["test_asr"][2])
    assert res.values["no_defense"]["test_asr"] == pytest.approx([97.0, 99.0, 95.0])
    assert len(res.figure.axes) == 2 and [ax.get_title() for ax in res.figure.axes] == ["FT", "BURN"]
    with pytest.raises(BadInputError):
        plot_radar_by_defense(df[df["attack"] != "sig"], tmp_path / "radar2")   # two axes have no area


def test_radar_attack_names_stay_outside_the_outer_ring(tmp_path):
    names = ["badnet_fm", "inputaware10g5_fm", "sig_fm", "trojannn_with_a_long_name_fm", "lf_fm"]
    rows = [{"attack": a, "defense": d, "test_acc": 0.85, "test_asr": 0.5}
            for a in names for d in ("no_defense", "burn")]
    fig = plot_radar_by_defense(pd.DataFrame(rows), tmp_path / "radar").figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    centre = ax.transData.transform((0.0, 0.0))
    radius = np.linalg.norm(ax.transData.transform((0.3, 100.0)) - centre)
    for text in ax.get_xticklabels():
        box = text.get_window_extent(renderer)
        # the point of the name's box nearest the centre lies beyond the ring
        nearest = np.clip(centre, [box.x0, box.y0], [box.x1, box.y1])
        assert np.linalg.norm(nearest - centre) > radius, text.get_text()


def test_plot_roc_by_attack_aurocs_equal_sklearn(tmp_path):
    a, b = _scores(seed=0), _scores(seed=1)
    b["distance"] = np.random.default_rng(5).random(len(b["distance"]))        # a detector at chance
    np.savez(tmp_path / "b.npz", **b)
    res = plot_roc_by_attack({"badnet": a, "blended": tmp_path / "b.npz"}, tmp_path / "roc")
    _valid_files(res.paths)
    _fonts_readable(res.figure)
    for name, s in (("badnet", a), ("blended", b)):
        assert res.values["auroc"][name] == pytest.approx(roc_auc_score(s["report_poison_flag"], s["distance"]))
    labels = [t.get_text() for t in res.figure.axes[0].get_legend().get_texts()]
    assert labels[:2] == [f"badnet: AUROC {res.values['auroc']['badnet']:.3f}",
                          f"blended: AUROC {res.values['auroc']['blended']:.3f}"]
    with pytest.raises(BadInputError):
        plot_roc_by_attack({"x": {"distance": np.ones(3), "report_poison_flag": np.zeros(3, bool)}}, tmp_path / "r")
