"""ULRL as a second method of ``burn defend`` (``--method ulrl``) and of ``defense/ulrl.py``.

The algorithm is :mod:`burn_plugin.core.ulrl`; this module picks its clean data from an attack record
and turns the result into the files :func:`burn_plugin.defend.defend` writes
(``ulrl_df.csv`` with one row per epoch of both phases, ``ulrl_df_summary.csv``, ``defense_result.pt``,
``run.json``) plus the clean indices.

Clean data (``clean_source``):

- ``clean_train`` (default, the authors' setting): ``ratio`` (1%) of the record's clean training set,
  drawn as BackdoorBench's ``choose_index`` draws it (``random.sample(range(N), int(N * ratio))`` after
  seeding Python's ``random`` with ``random_seed``), or the indices in the BackdoorBench ``index`` file
  (one integer per line). The indices are written to ``index.txt`` (as the authors' code writes
  ``record/<attack>/defense/ulrl/index.txt``), so ``--index <out>/index.txt`` repeats the draw.
- ``burn``: no clean data at all: ULRL's "clean" set is BURN's final bottom-k_c selection of the
  *poisoned* training set with its given labels, read from an existing BURN result's ``scores.npz``
  (``burn_result``; default ``<attack_folder>/defense/burn/scores.npz``; arrays ``round{t}_clean`` hold
  positions into ``bd_train``, the largest ``t`` is used). Their positions go to ``burn_clean_index.txt``
  (positions into ``bd_train``, *not* clean_train indices, hence not ``index.txt``). How many of them
  are truly poisoned is counted from the record's poison flags, for the report only.
- ``burn_balanced``: as ``burn``, the same number of samples, but class-balanced: the lowest final
  BURN scores (``final_score``) within each given label, an equal share per class. BURN's bottom-k_c
  is nearly pure but skewed towards the classes that lie close to the boundary (few trousers and
  bags on Fashion-MNIST), and ULRL relearns every class from it.
"""
from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path

import numpy as np
import torch

from ..bench.datasets import choose_clean_index, index_text
from ..bench.metrics import METRIC_COLUMNS
from ..core.ulrl import ULRLConfig, run_ulrl
from ..errors import BadInputError, CorruptFileError, EmptySelectionError
from ..fileio import finished_here, save_text
from .registry import defense

log = logging.getLogger("burn.ulrl")


def burn_clean_positions(path: Path, n_train: int, labels: np.ndarray | None = None, *,
                         balanced: bool = False) -> tuple[np.ndarray, int]:
    """``(positions into bd_train, round t)`` of BURN's last bottom-k_c set in ``scores.npz``.

    ``balanced``: as many positions, the lowest ``final_score`` of each given label in equal shares.
    """
    if path.is_dir():
        path = path / "scores.npz"
    if not path.is_file():
        raise BadInputError(f"no BURN result at {path}; run `burn defend` first on this record (or point "
                            f"--burn_result at a BURN scores.npz)")
    try:
        with np.load(path, allow_pickle=False) as z:
            rounds = sorted(int(m.group(1)) for k in z.files if (m := re.fullmatch(r"round(\d+)_clean", k)))
            if not rounds:
                raise CorruptFileError(f"{path} holds no round<t>_clean arrays; it is not a BURN scores.npz "
                                       f"(rerun `burn defend`)")
            t = rounds[-1]
            pos = np.asarray(z[f"round{t}_clean"]).astype(np.int64).ravel()
            their_labels = np.asarray(z["label"]) if "label" in z.files else None
            if balanced:
                if their_labels is None or "final_score" not in z.files:
                    raise CorruptFileError(f"{path} lacks 'label' or 'final_score', which a class-balanced pick "
                                           f"needs (rerun `burn defend`, or use --clean_source burn)")
                pos = _balanced_bottom(np.asarray(z["final_score"]), their_labels, len(pos))
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptFileError(f"{path} cannot be read as a BURN scores.npz ({exc}); rerun `burn defend`") from None
    if their_labels is not None and (len(their_labels) != n_train or
                                     (labels is not None and not np.array_equal(their_labels, labels))):
        raise BadInputError(f"{path} belongs to another record (its {len(their_labels)} training labels do not "
                            f"match this record's {n_train}); point --burn_result at this record's BURN result")
    if len(pos) == 0:
        raise EmptySelectionError(f"BURN's round {t} clean set in {path} is empty; ULRL needs a few samples")
    if pos.min() < 0 or pos.max() >= n_train:
        raise BadInputError(f"{path} has positions outside 0..{n_train - 1} of this record's bd_train; it "
                            f"belongs to another record")
    return pos, t


def _balanced_bottom(score: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """``n`` positions: the lowest ``score`` per label, equal shares (the remainder to the first labels)."""
    classes = np.unique(labels)
    share, extra = divmod(n, len(classes))
    picked = []
    for i, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        order = members[np.argsort(score[members], kind="stable")]
        picked.append(order[:share + (1 if i < extra else 0)])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _write_ints(values: np.ndarray):
    return lambda p: save_text(index_text(values), p)


def burn_result_folder(burn_result: object) -> str:
    """The name of the BURN result folder a ULRL run read: ``burn`` (the default, ``defense/burn/``), or the
    folder of the ``scores.npz`` it was given. ``run.json`` holds the validated config, where ULRLConfig has
    already turned a YAML null or "None" into "" (its ``_OPTIONAL_STR``)."""
    if not isinstance(burn_result, str) or not burn_result:
        return "burn"
    path = Path(burn_result)
    return (path.parent if path.suffix == ".npz" else path).name or "burn"


def describe(config: dict) -> list[str]:
    """The settings a results table names beside ``ulrl``: trained on BURN's selection instead of clean
    data, ``ulrl[on burn]`` (``[on burn, balanced]``), or ``ulrl[on <folder>]`` when it read another
    BURN result than ``defense/burn/`` (``burn_result``)."""
    if config.get("clean_source") not in ("burn", "burn_balanced"):
        return []
    parts = [f"on {burn_result_folder(config.get('burn_result'))}"]
    return parts + (["balanced"] if config["clean_source"] == "burn_balanced" else [])


@defense("ulrl", ULRLConfig, label="ULRL", fast=("--unlearning_epochs", "2", "--relearn_epochs", "2"),
         resume_help="accepted for symmetry: ULRL keeps no checkpoints and runs again from the start",
         describe=describe)
def _ulrl(*, record, model, config, device, evaluator, out: Path, resume: bool, progress: bool, extra: dict) -> dict:
    cfg = config or ULRLConfig()
    if resume:
        log.warning("ULRL keeps no checkpoints (a run takes minutes); --resume starts it again from the beginning")
    summary: dict = {"clean_source": cfg.clean_source}
    files = {}
    if cfg.clean_source in ("burn", "burn_balanced"):
        bd = record.tensors("bd_train")
        if cfg.burn_result:   # the user's word: a file they chose
            path = Path(cfg.burn_result).expanduser()
        else:   # the record's own BURN result, only if this tool made it (a record can ship one)
            path = record.folder / "defense" / "burn" / "scores.npz"
            if path.is_file() and not finished_here(path.parent):
                raise BadInputError(f"{path} was not written by a BURN run that burn finished here (a record can ship "
                                    f"one); run `burn defend` on this record first (--overwrite replaces that "
                                    f"folder), or pass --burn_result with a result you trust")
        pos, t = burn_clean_positions(path, len(bd), bd.label.numpy(), balanced=cfg.clean_source == "burn_balanced")
        sel = torch.from_numpy(pos)
        x, y = bd.x[sel], bd.label[sel]
        poison = bd.poison[sel].bool()
        flipped = poison & (bd.label[sel] != bd.original_label[sel])
        summary.update(burn_result=str(path), burn_round=t, clean_samples=len(pos),
                       clean_set_poisoned=int(poison.sum()), clean_set_label_flipped=int(flipped.sum()),
                       clean_set_poison_share=float(poison.float().mean()))
        files["burn_clean_index.txt"] = _write_ints(pos)
        data_used = ("BURN's bottom-k_c of the poisoned training set" + (", class-balanced" if
                     cfg.clean_source == "burn_balanced" else "") + " (no clean data)")
    else:
        clean = record.tensors("clean_train")
        idx = choose_clean_index(len(clean), cfg.ratio, cfg.random_seed, cfg.index)
        sel = torch.from_numpy(idx)
        x, y = clean.x[sel], clean.label[sel]
        summary.update(clean_samples=len(idx), clean_index_file=cfg.index or None,
                       clean_set_poisoned=int(clean.poison[sel].bool().sum()))
        files["index.txt"] = _write_ints(idx)
        data_used = (f"clean_train samples listed in {cfg.index} ({len(idx)} samples)" if cfg.index else
                     f"{cfg.ratio * 100:g}% clean subset of clean_train ({len(idx)} samples)")
    log.info("ULRL clean set: %s", data_used)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.unlearning_epochs + cfg.relearn_epochs, desc="ulrl", unit="epoch", leave=False)

    def on_epoch(row: dict) -> None:
        log.info("%s epoch %s: %s", row["phase"], row["phase_epoch"], json.dumps(row, default=str))
        if bar is not None:
            bar.set_postfix_str(row["phase"])
            bar.update(1)

    spec = record.spec
    try:
        res = run_ulrl(model, x, y, spec.mean3, spec.std3, cfg, evaluate=evaluator, device=device, hflip=spec.hflip,
                       on_epoch=on_epoch)
    finally:
        if bar is not None:
            bar.close()
    summary.update(res.summary())
    target = record.attack_target()
    summary.update(attack_target=target, target_neuron_selected=(target in res.neurons) if target is not None else None)
    zs = ", ".join(f"{i} (z {res.z_scores[i]:.2f})" for i in res.neurons) or "none"
    stop = (f"stopped at epoch {res.stopped_epoch}" if res.stopped_epoch is not None else
            f"ran all {res.unlearn_epochs_run} epochs without reaching {cfg.clean_threshold}")
    print(f"ulrl: {data_used}; unlearning {stop} (clean train acc {res.unlearn_final_train_acc:.3f}); "
          f"suspicious neurons: {zs}")
    if res.note:
        print(f"warning: {res.note}", file=sys.stderr)
    last = res.history[-1] if res.history else {}
    after = {k: last.get(k) for k in METRIC_COLUMNS} if "test_acc" in last else None
    return {"model": res.model, "history": res.history, "timings": res.timings, "summary": {"ulrl": summary},
            "after": after, "files": files, "data_used": data_used}
