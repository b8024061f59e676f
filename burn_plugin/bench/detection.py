"""Detection quality and the paper's two observations, measured against a record's poison flags: metric
arithmetic beside the one evaluator (:mod:`.metrics`), which a defense run keeps in its ``run.json``.

The flags are read here, for the report only; the defense never sees them. Everything is reported
twice: against all poisoned samples, and against *label-flipped* poison only (``label !=
original_label``), because all-to-one draws include target-class samples and some attacks
(WaNet's noise samples, clean-label attacks) flag samples whose label was kept.
"""
from __future__ import annotations

import math

import numpy as np


def _auroc(scores: np.ndarray, positive: np.ndarray) -> float | None:
    from sklearn.metrics import roc_auc_score

    positive = np.asarray(positive, dtype=bool)
    if positive.all() or (~positive).all():
        return None
    return float(roc_auc_score(positive, scores))


def _prf(selected: np.ndarray, positive: np.ndarray) -> dict:
    tp = int(positive[selected].sum())
    precision = tp / len(selected) if len(selected) else None
    recall = tp / int(positive.sum()) if positive.sum() else None
    return {"selected": int(len(selected)), "true_poison": tp, "precision": precision, "recall": recall}


def detection_report(result, flags: dict) -> dict:
    """All detection numbers for a :class:`~burn_plugin.core.burn.BurnResult`.

    ``flags`` has numpy arrays ``poison``, ``label`` (given), ``original_label``.
    """
    poison = np.asarray(flags["poison"], dtype=bool)
    flipped = poison & (np.asarray(flags["label"]) != np.asarray(flags["original_label"]))
    orig = np.asarray(flags["original_label"])
    dist = result.boundary.distance.numpy().astype(float)
    adv = result.boundary.adv_label.numpy()
    score = result.final_score.numpy().astype(float)
    out: dict = {"n_train": int(len(poison)), "n_poison": int(poison.sum()), "n_label_flipped_poison": int(flipped.sum())}
    bd = result.bd.numpy().astype(float)
    out["detector"] = getattr(result, "detector", "boundary")
    for name, pos in (("poison", poison), ("flipped", flipped)):
        out[f"auroc_distance_{name}"] = _auroc(dist, pos)
        out[f"auroc_detector_{name}"] = _auroc(bd, pos)   # BD: l / l_max, or the chosen detector's score
        out[f"auroc_score_{name}"] = _auroc(score, pos)
    rounds = []
    for s in result.selections:
        p = s.poison.numpy()
        c = s.clean.numpy()
        r = {"round": s.round, "poison_set": _prf(p, poison), "poison_set_flipped": _prf(p, flipped),
             "clean_set_size": int(len(c)), "clean_set_poison": int(poison[c].sum()) if len(c) else 0,
             "clean_set_purity": float(1 - poison[c].mean()) if len(c) else None}
        tp = p[poison[p]]
        r["restored_label_accuracy"] = float((adv[tp] == orig[tp]).mean()) if len(tp) else None
        rounds.append(r)
    out["rounds"] = rounds
    # observation 1 (paper Table 1): poison samples lie farther from the boundary
    out["mean_distance_clean"] = float(dist[~poison].mean()) if (~poison).any() else None
    out["mean_distance_poison"] = float(dist[poison].mean()) if poison.any() else None
    out["mean_distance_flipped_poison"] = float(dist[flipped].mean()) if flipped.any() else None
    # observation 2 (paper Fig. 2): poison samples' adversarial label reverts to their true label;
    # clean samples' adversarial labels are spread over the classes
    out["poison_adv_label_is_true_label"] = float((adv[flipped] == orig[flipped]).mean()) if flipped.any() else None
    if (~poison).any():
        counts = np.bincount(adv[~poison], minlength=int(max(adv.max(), orig.max()) + 1)).astype(float)
        p_ = counts / counts.sum()
        ent = -np.sum(p_[p_ > 0] * np.log(p_[p_ > 0]))
        out["clean_adv_label_entropy_ratio"] = float(ent / math.log(len(p_))) if len(p_) > 1 else None
        out["clean_adv_label_max_share"] = float(p_.max())
    out["restored_label_accuracy_all_poison"] = float((adv[flipped] == orig[flipped]).mean()) if flipped.any() else None
    return out


def confusion_row(selected: np.ndarray, positive: np.ndarray, scores: np.ndarray, record: str, target) -> dict:
    """One row in BackdoorBench's ``detection_info.csv`` format (``record, TN, FP, FN, TP, TPR, FPR, AUC, target``)."""
    pred = np.zeros(len(positive), dtype=bool)
    pred[selected] = True
    tp = int((pred & positive).sum())
    fp = int((pred & ~positive).sum())
    fn = int((~pred & positive).sum())
    tn = int((~pred & ~positive).sum())
    return {"record": record, "TN": tn, "FP": fp, "FN": fn, "TP": tp,
            "TPR": tp / (tp + fn) if tp + fn else float("nan"), "FPR": fp / (fp + tn) if fp + tn else float("nan"),
            "AUC": _auroc(scores, positive) if _auroc(scores, positive) is not None else float("nan"),
            "target": target if target is not None else "None"}
