"""BURN (the paper's method, :mod:`burn_plugin.core.burn`) as a defense: the record's poisoned training
set in, the defended model, ``detection_info.csv`` (BackdoorBench's detection format) and ``scores.npz``
(l(x), adversarial labels, BD, PD, S and every round's selections) out; the checkpoint after every
round and the boundary analysis's cache are files beside the result."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..bench.detection import confusion_row, detection_report
from ..bench.metrics import METRIC_COLUMNS
from ..bench.records import AttackRecord
from ..core.burn import BurnData, check_resumable, run_burn
from ..core.config import BurnConfig
from ..fileio import FileBoundaryCache, FileCheckpoint, boundary_cache_folder, save_csv, save_npz
from .registry import defense

log = logging.getLogger("burn")


def output_name(config) -> str:
    """``burn``, plus ``_<detector>`` when BURN ranks with another detector than the paper's and
    ``_<detection_model>`` when it reads another detection model than the infected one, so that such runs
    sit side by side."""
    parts = ["burn"]
    detector = getattr(config, "detector", "boundary")
    if detector != "boundary":
        parts.append(detector)
    detection_model = getattr(config, "detection_model", "infected")
    if detection_model != "infected":
        parts.append(detection_model)
    return "_".join(parts)


def check_resume(saved: dict, config) -> None:
    """``--resume``: a checkpoint made with other settings is reported before any work (``run_burn``
    checks the model and data again when it starts)."""
    if isinstance(config, BurnConfig):
        check_resumable(saved, config, saved.get("run_key", ""))


def summary_lines(summary: dict) -> list[str]:
    """The detection quality, for ``burn defend``'s printout."""
    det = summary.get("detection")
    if not det:
        return []

    def f(v):
        return "n/a" if v is None else f"{v:.4f}"
    lines = [f"  detection: AUROC l(x) {f(det['auroc_distance_poison'])} (label-flipped "
             f"{f(det['auroc_distance_flipped'])}), AUROC S {f(det['auroc_score_poison'])}"]
    if det.get("detector", "boundary") != "boundary":
        lines.append(f"  detector {det['detector']}: AUROC {f(det.get('auroc_detector_poison'))} (label-flipped "
                     f"{f(det.get('auroc_detector_flipped'))})")
    last = det["rounds"][-1] if det["rounds"] else None
    if last:
        ps = last["poison_set"]
        lines.append(f"  final poison set: precision {f(ps['precision'])} recall {f(ps['recall'])}, restored-label "
                     f"accuracy {f(last['restored_label_accuracy'])}; clean set purity {f(last['clean_set_purity'])}")
    lines.append(f"  observations: mean l clean {f(det['mean_distance_clean'])} vs poison "
                 f"{f(det['mean_distance_poison'])}; adv label = true label for "
                 f"{f(det['poison_adv_label_is_true_label'])} of flipped poison; clean adv-label entropy "
                 f"{f(det.get('clean_adv_label_entropy_ratio'))} of max")
    return lines


#: BURN's schedule settings (paper section 5.2) that a table name shows where a run changed them
_SCHEDULE = ("rounds", "k_p0", "k_pT", "k_c0", "k_cT", "w0", "wT", "epochs", "lr")


def describe(config: dict) -> list[str]:
    """The settings a results table names beside ``burn`` where a run differs from the paper's ranking,
    boundary analysis, clean set and schedule: ``burn[spectral]``, ``burn[scan, per_label]``,
    ``burn[box-aware]`` (the box-aware DeepFool step instead of the paper's clip after each step),
    ``burn[scan, veto 20%, k_pT 5]``. ``config`` is a run's settings as ``run.json`` holds them; a key
    it lacks (a run older than the setting) counts as the paper's value."""
    paper = BurnConfig()

    def differs(key):
        return key in config and config[key] != getattr(paper, key)

    detector = config.get("detector", paper.detector)
    feature_detector = isinstance(detector, str) and detector != "boundary"
    parts = [detector] if feature_detector else []
    if differs("boundary_method"):
        parts.append(str(config["boundary_method"]))
    if config.get("box_aware") is True:
        parts.append("box-aware")
    if differs("detection_model"):
        parts.append(f"{config['detection_model']} detection model")
    if config.get("clean_selection") == "per_label":
        parts.append("per_label")
    if config.get("clean_ranking") == "boundary" and feature_detector:
        parts.append("clean by boundary")
    if differs("suspect_side") and feature_detector:
        parts.append(f"{str(config['suspect_side']).replace('_', '-')} side")
    if config.get("clean_veto"):
        parts.append(f"veto {config['clean_veto']:g}%")
    if isinstance(config.get("k_pT_estimate"), (int, float)) and config["k_pT_estimate"] > 0:
        parts.append(f"k_pT {config['k_pT_estimate']:g} x estimate")
    parts += [f"{k} {config[k]:g}" for k in _SCHEDULE if isinstance(config.get(k), (int, float)) and differs(k)]
    return parts


@defense("burn", BurnConfig, label="BURN", uses_clean_data=False, distributed=True,
         fast=("--rounds", "5", "--epochs", "2", "--candidates", "3", "--candidate_mode", "adaptive"),
         output_name=output_name, check_resume=check_resume, summary_lines=summary_lines, describe=describe)
def run(*, record: AttackRecord, model, config, device, evaluator, out: Path, resume: bool, progress: bool,
          extra: dict) -> dict:
    cfg = config or BurnConfig()
    train = record.tensors("bd_train")
    data = BurnData(x=train.x, y=train.label, mean=record.spec.mean3, std=record.spec.std3, hflip=record.spec.hflip)
    res = run_burn(model, data, cfg, device=device, evaluate=evaluator, progress=progress,
                   checkpoint=FileCheckpoint(out / "checkpoint"), resume=resume,
                   cache=FileBoundaryCache(boundary_cache_folder(out)),
                   on_round=lambda row: log.info("round %s: %s", row["round"], json.dumps(row)))
    flags = {"poison": train.poison.numpy(), "label": train.label.numpy(), "original_label": train.original_label.numpy()}
    report = detection_report(res, flags)
    poison = flags["poison"].astype(bool)
    flipped = poison & (flags["label"] != flags["original_label"])
    final_sel = res.selections[-1].poison.numpy() if res.selections else np.array([], dtype=np.int64)
    score = res.final_score.numpy()
    det_rows = [confusion_row(final_sel, poison, score, record.name, record.attack_target()),
                confusion_row(final_sel, flipped, score, f"{record.name}[label-flipped]", record.attack_target())]

    def write_detection(path):
        import pandas as pd

        save_csv(pd.DataFrame(det_rows, columns=["record", "TN", "FP", "FN", "TP", "TPR", "FPR", "AUC", "target"]),
                 path, index=False)

    def write_scores(path):
        arrays = {k: v.numpy() for k, v in res.boundary.to_dict().items()}
        arrays.update(bd=res.bd.numpy(), final_pd=res.final_pd.numpy(), final_score=score,
                      label=flags["label"], original_index=train.original_index.numpy(),
                      report_poison_flag=poison, report_original_label=flags["original_label"])
        for s in res.selections:
            arrays[f"round{s.round}_poison"] = s.poison.numpy()
            arrays[f"round{s.round}_clean"] = s.clean.numpy()
        save_npz(path, **arrays)

    summary = {"detection": report, "boundary": res.boundary.summary(), "stopped_early": res.stopped_early,
               "completed_rounds": res.completed_rounds}
    if res.poison_estimate is not None:   # the detector's estimate of the poisoned count (k_pT_estimate reads it)
        summary["poison_estimate"] = res.poison_estimate
    if res.stopped_early:
        print(f"warning: {res.stopped_early}", file=sys.stderr)
    return {"model": res.model, "history": res.history, "timings": res.timings, "summary": summary,
            "after": {k: res.history[-1].get(k) for k in METRIC_COLUMNS} if res.history and "test_acc" in res.history[-1] else None,
            "files": {"detection_info.csv": write_detection, "scores.npz": write_scores},
            "data_used": "poisoned training set (no clean data)"}
