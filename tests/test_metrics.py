"""Metrics: ACC/ASR/RA and losses on hand-computed cases, DER/RIR, BackdoorBench's summary rows."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from burn_plugin.bench.metrics import METRIC_COLUMNS, accuracy, as_metric_row, der, evaluate, rir, summarize
from burn_plugin.bench.records import SplitTensors, load_record, read_summary


class LookupModel(nn.Module):
    """Returns preset logits per sample; the sample id is the value of every pixel (a pixel-space model)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table, dtype=torch.float32))
        self.calls = []

    def forward(self, x):
        assert x.is_floating_point() and float(x.max()) <= 1.0  # sees [0, 1] pixels, not uint8
        ids = (x[:, 0, 0, 0] * 255).round().long()
        self.calls.append(ids.tolist())
        return self.table[ids]


def split(ids, label, original_label=None):
    x = torch.zeros(len(ids), 3, 4, 4, dtype=torch.uint8)
    for j, i in enumerate(ids):
        x[j] = i
    label = torch.tensor(label, dtype=torch.long)
    orig = label.clone() if original_label is None else torch.tensor(original_label, dtype=torch.long)
    return SplitTensors(x=x, label=label, original_index=torch.arange(len(ids)),
                        poison=torch.zeros(len(ids), dtype=torch.bool), original_label=orig)


def ce(logits, y):
    """Cross-entropy of one sample, by hand."""
    return math.log(sum(math.exp(v) for v in logits)) - logits[y]


TABLE = [[2, 0, 0], [0, 3, 0], [1, 0, 0], [0, 0, 1], [0, 1, 0],   # clean ids 0..4
         [5, 0, 0], [0, 0, 4], [3, 0, 0]]                          # backdoor ids 5..7


def test_evaluate_hand_computed():
    model = LookupModel(TABLE)
    model.train()
    clean = split([0, 1, 2, 3, 4], [0, 1, 2, 0, 1])      # preds 0 1 0 2 1 -> 3 of 5 right
    bd = split([5, 6, 7], [0, 0, 0], [1, 2, 1])           # preds 0 2 0 -> ASR 2/3, RA 1/3
    m = evaluate(model, clean, bd, batch_size=2)
    assert list(m) == list(METRIC_COLUMNS)
    assert m["test_acc"] == pytest.approx(0.6)
    assert m["test_asr"] == pytest.approx(2 / 3)
    assert m["test_ra"] == pytest.approx(1 / 3)
    # losses: mean over batches of each batch's mean (batches of 2, 2, 1 and 2, 1), not the sample mean
    cl = [ce(TABLE[i], y) for i, y in zip(range(5), [0, 1, 2, 0, 1])]
    batch_avg = ((cl[0] + cl[1]) / 2 + (cl[2] + cl[3]) / 2 + cl[4]) / 3
    assert m["clean_test_loss_avg_over_batch"] == pytest.approx(batch_avg, rel=1e-6)
    assert batch_avg != pytest.approx(sum(cl) / 5, rel=1e-3)  # the two averages really differ here
    bl = [ce(TABLE[i], 0) for i in (5, 6, 7)]
    assert m["bd_test_loss_avg_over_batch"] == pytest.approx(((bl[0] + bl[1]) / 2 + bl[2]) / 2, rel=1e-6)
    rl = [ce(TABLE[i], y) for i, y in zip((5, 6, 7), (1, 2, 1))]
    assert m["ra_test_loss_avg_over_batch"] == pytest.approx(((rl[0] + rl[1]) / 2 + rl[2]) / 2, rel=1e-6)
    assert model.training  # mode restored
    assert [0, 1] in model.calls and [4] in model.calls


def test_evaluate_empty_bd_test_gives_none():
    model = LookupModel(TABLE)
    m = evaluate(model, split([0, 1], [0, 1]), split([], []), batch_size=4)
    assert m["test_acc"] == 1.0
    for k in ("test_asr", "test_ra", "bd_test_loss_avg_over_batch", "ra_test_loss_avg_over_batch"):
        assert m[k] is None
    row = as_metric_row(m)
    assert set(row) == {"test_acc", "clean_test_loss_avg_over_batch"}


class Constant(nn.Module):
    def __init__(self, cls, k=10):
        super().__init__()
        self.cls, self.k = cls, k

    def forward(self, x):
        out = torch.zeros(len(x), self.k)
        out[:, self.cls] = 1.0
        return out


def test_all2one_bd_test_has_no_target_class(hand_record):
    """A model that always answers the target: ASR 1 and RA 0 because bd_test holds no target-class originals."""
    rec = load_record(hand_record.folder)
    clean, bd = rec.tensors("clean_test"), rec.tensors("bd_test")
    assert not (bd.original_label == 0).any()
    m = evaluate(Constant(0), clean, bd)
    assert m["test_asr"] == 1.0 and m["test_ra"] == 0.0
    assert m["test_acc"] == pytest.approx(float((hand_record.yte == 0).mean()))
    other = int(bd.original_label[0])
    m = evaluate(Constant(other), clean, bd)
    assert m["test_asr"] == 0.0
    assert m["test_ra"] == pytest.approx(float((bd.original_label == other).float().mean()))


def test_accuracy_helper():
    assert accuracy([1, 2, 3], [1, 0, 3]) == pytest.approx(2 / 3)
    assert accuracy([], []) is None


def test_der_rir_hand_numbers():
    assert der(acc_bd=0.9, acc_def=0.85, asr_bd=0.95, asr_def=0.05) == pytest.approx((0.90 - 0.05 + 1) / 2)
    assert rir(acc_bd=0.9, acc_def=0.85, ra_bd=0.02, ra_def=0.80) == pytest.approx((0.78 - 0.05 + 1) / 2)
    # a defense that raises ACC or ASR is not rewarded/penalised beyond the max(0, .) clamps
    assert der(acc_bd=0.8, acc_def=0.9, asr_bd=0.5, asr_def=0.7) == pytest.approx(0.5)
    assert rir(acc_bd=0.8, acc_def=0.9, ra_bd=0.5, ra_def=0.4) == pytest.approx(0.5)
    assert der(1.0, 0.0, 1.0, 0.0) == pytest.approx(0.5)
    assert der(0.9, 0.9, 1.0, 0.0) == pytest.approx(1.0)


def test_as_metric_row_like_backdoorbench():
    row = as_metric_row({"a": None, "b": float("nan"), "c": 0.5, "d": 3, "e": np.float32("nan"), "f": np.float64(0.25)})
    assert row == {"b": "nan_value", "c": 0.5, "d": 3, "e": "nan_value", "f": 0.25}
    # BackdoorBench only turns NaN into 'nan_value' (torch.tensor(v).isnan()); an infinite value is kept
    assert as_metric_row({"g": float("inf")}) == {"g": float("inf")}


def test_summarize_rows(tmp_path):
    rows = [{"epoch": 0, "test_acc": 0.5, "test_asr": 0.9, "loss": 1.0},
            {"epoch": 1, "test_acc": float("nan"), "test_asr": 0.95, "loss": 0.5},
            {"epoch": 2, "test_acc": 0.7, "test_asr": None, "loss": float("nan")}]
    df = pd.DataFrame([as_metric_row(r) for r in rows])
    s = summarize(df)
    assert list(s.index) == ["last", "valid_max", "exist_nan_value"]
    assert list(s.columns) == ["epoch", "test_acc", "test_asr", "loss"]
    assert s.loc["last", "test_acc"] == 0.7 and s.loc["valid_max", "test_acc"] == 0.7
    assert bool(s.loc["exist_nan_value", "test_acc"]) is True
    # missing last value: 'last' is the last value present
    assert s.loc["last", "test_asr"] == 0.95 and s.loc["valid_max", "test_asr"] == 0.95
    assert bool(s.loc["exist_nan_value", "test_asr"]) is False
    # a trailing 'nan_value' string is a present value (BackdoorBench: col[~col.isna()].iloc[-1]); max skips it
    assert s.loc["last", "loss"] == "nan_value" and s.loc["valid_max", "loss"] == 1.0
    assert s.loc["last", "epoch"] == 2 and s.loc["valid_max", "epoch"] == 2
    # written and read back as BackdoorBench's *_df_summary.csv (index as the first, unnamed column)
    s.to_csv(tmp_path / "x_df_summary.csv")
    first_line = (tmp_path / "x_df_summary.csv").read_text().splitlines()[0]
    assert first_line == ",epoch,test_acc,test_asr,loss"
    last = read_summary(tmp_path / "x_df_summary.csv")
    assert last == {"epoch": 2.0, "test_acc": 0.7, "test_asr": 0.95}
    assert read_summary(tmp_path / "x_df_summary.csv", "valid_max")["loss"] == 1.0
