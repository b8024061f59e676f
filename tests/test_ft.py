"""Plain fine-tuning (FT) on a clean subset, BackdoorBench's baseline."""
from __future__ import annotations

import json
import math

import pandas as pd
import torch

from burn_plugin.defenses.ft import FTConfig
from burn_plugin.defend import defend


def test_ft_evaluates_every_epoch_or_only_the_last(trained_record, tmp_path):
    rows = {}
    for every in (True, False):
        out = tmp_path / f"ft_{every}"
        summary = defend(trained_record, method="ft", output_dir=out, progress=False,
                         config=FTConfig(epochs=3, ratio=0.25, batch_size=16, eval_every_epoch=every))
        df = pd.read_csv(out / "ft_df.csv")
        assert df["epoch"].tolist() == [0, 1, 2]
        run = json.loads((out / "run.json").read_text())
        assert run["config"]["eval_every_epoch"] is every and run["data_used"].startswith("25% clean subset")
        assert run["versions"]["torch_threads"] == torch.get_num_threads() and isinstance(run["versions"]["cpu"], str)
        assert df["test_acc"].iloc[-1] == summary["after"]["test_acc"]
        rows[every] = df
    assert rows[True]["test_acc"].notna().all()
    assert rows[False]["test_acc"].iloc[:2].isna().all()
    # the same seed and batches: evaluating in between changes nothing of the training
    assert rows[True]["train_epoch_loss_avg_over_batch"].tolist() == rows[False]["train_epoch_loss_avg_over_batch"].tolist()
    assert math.isclose(rows[True]["test_acc"].iloc[-1], rows[False]["test_acc"].iloc[-1])
