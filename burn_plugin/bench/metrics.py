"""BackdoorBench's metrics, as fractions, with its column names (interface.md section 5).

- ``test_acc``: top-1 accuracy on the full clean test split.
- ``test_asr``: accuracy on ``bd_test`` against the backdoor labels (all-to-one ``bd_test`` holds only
  non-target-class originals, so this is the attack success rate).
- ``test_ra``: accuracy on ``bd_test`` against the original labels (robust accuracy).
- ``*_loss_avg_over_batch``: cross-entropy summed over batches divided by the number of batches.
- DER and RIR as in BackdoorBench's ``utils/metric.py`` (the simplified forms).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..core.tensors import PixelSpaceModel, batches, to_float

METRIC_COLUMNS = ("test_acc", "test_asr", "test_ra", "clean_test_loss_avg_over_batch",
                  "bd_test_loss_avg_over_batch", "ra_test_loss_avg_over_batch")


def accuracy(preds, labels) -> float | None:
    """Share of ``preds == labels``; ``None`` for empty input (as BackdoorBench's ``all_acc``)."""
    preds, labels = np.asarray(preds), np.asarray(labels)
    return float((preds == labels).mean()) if len(labels) else None


def der(acc_bd: float, acc_def: float, asr_bd: float, asr_def: float) -> float:
    """Defense effectiveness rate: ``(max(0, ASR_bd - ASR_def) - max(0, ACC_bd - ACC_def) + 1) / 2``."""
    return (max(0.0, asr_bd - asr_def) - max(0.0, acc_bd - acc_def) + 1) / 2


def rir(acc_bd: float, acc_def: float, ra_bd: float, ra_def: float) -> float:
    """Robust improvement rate: ``(max(0, RA_def - RA_bd) - max(0, ACC_bd - ACC_def) + 1) / 2``."""
    return (max(0.0, ra_def - ra_bd) - max(0.0, acc_bd - acc_def) + 1) / 2


@torch.no_grad()
def _pass(model, x, labels_list, batch_size, device):
    """One forward pass over ``x``; per label vector: (correct count, sum of batch-mean losses, batches)."""
    correct = [0] * len(labels_list)
    loss_sum = [0.0] * len(labels_list)
    n_batches = 0
    for b in batches(len(x), batch_size):
        out = model(to_float(x[b]).to(device)).float().cpu()
        pred = out.argmax(1)
        for j, labels in enumerate(labels_list):
            y = labels[b]
            correct[j] += int((pred == y).sum())
            loss_sum[j] += float(F.cross_entropy(out, y))
        n_batches += 1
    return correct, loss_sum, n_batches


def evaluate(model, clean_test, bd_test, *, batch_size: int = 256, device="cpu") -> dict:
    """ACC/ASR/RA and the three losses of a pixel-space ``model`` on materialised test splits.

    ``clean_test``/``bd_test`` are :class:`~burn_plugin.bench.records.SplitTensors`-like objects with
    ``x``, ``label`` and ``original_label``.
    """
    was_training = model.training
    model.eval()
    out: dict = {}
    c, l, nb = _pass(model, clean_test.x, [clean_test.label], batch_size, device)
    out["test_acc"] = c[0] / len(clean_test) if len(clean_test) else None
    out["clean_test_loss_avg_over_batch"] = l[0] / nb if nb else None
    if len(bd_test):
        c, l, nb = _pass(model, bd_test.x, [bd_test.label, bd_test.original_label], batch_size, device)
        out["test_asr"], out["test_ra"] = c[0] / len(bd_test), c[1] / len(bd_test)
        out["bd_test_loss_avg_over_batch"], out["ra_test_loss_avg_over_batch"] = l[0] / nb, l[1] / nb
    else:
        out.update(test_asr=None, test_ra=None, bd_test_loss_avg_over_batch=None, ra_test_loss_avg_over_batch=None)
    model.train(was_training)
    return {k: out[k] for k in METRIC_COLUMNS}


def summarize(df):
    """BackdoorBench's ``Metric_Aggregator.summary()``: rows ``last``, ``valid_max``, ``exist_nan_value``.

    ``last`` is each column's last non-missing value, ``valid_max`` its numeric maximum (strings
    skipped), ``exist_nan_value`` whether any entry is the string ``nan_value``.
    """
    import pandas as pd

    def col_summary(col):
        present = col[~col.isna()]
        return pd.Series({
            "last": present.iloc[-1] if len(present) else None,
            "valid_max": pd.to_numeric(col, errors="coerce").max(),
            "exist_nan_value": any(v == "nan_value" for v in col),
        })
    return df.apply(col_summary)


def as_metric_row(values: dict) -> dict:
    """Drop ``None`` and store NaN (not Inf) as ``"nan_value"``, as BackdoorBench's aggregator does."""
    return {k: "nan_value" if isinstance(v, (float, np.floating)) and math.isnan(v) else v
            for k, v in values.items() if v is not None}


def evaluate_model(model, record, *, device: str = "cpu", batch_size: int = 256) -> dict:
    """ACC/ASR/RA of a normalised-input ``model`` on the record's ``clean_test``/``bd_test`` (the one evaluator)."""
    pixel = PixelSpaceModel(model, record.spec.mean3, record.spec.std3).to(device)
    m = evaluate(pixel, record.tensors("clean_test"), record.tensors("bd_test"), batch_size=batch_size, device=device)
    model.cpu()
    return {k: (float("nan") if m.get(k) is None else float(m[k])) for k in ("test_acc", "test_asr", "test_ra")}
