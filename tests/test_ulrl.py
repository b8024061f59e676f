"""ULRL, the second defense: neuron selection, the unlearning stop rule, relearning, config, the CLI
(``burn defend --method ulrl``, ``clean_source: burn``) and its BackdoorBench script (``defense/ulrl.py``).

Everything runs on tiny data (the session's 40-image synthetic mnist record, a few epochs), in seconds.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from burn_plugin.core.ulrl import (MAD_SCALE, ULRLConfig, find_classifier, relearn, run_ulrl,
                                   select_suspicious_neurons, unlearn)
from burn_plugin.errors import ConfigError, CorruptFileError, ShapeMismatchError
from burn_plugin.cli import main as burn_main

METRICS = ["test_acc", "test_asr", "test_ra", "clean_test_loss_avg_over_batch", "bd_test_loss_avg_over_batch",
           "ra_test_loss_avg_over_batch"]
# a few epochs only: the record has 40 training images
FAST = ["--unlearning_epochs", "3", "--relearn_epochs", "2", "--ratio", "0.25", "--device", "cpu"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny tensors: one thread is ~100x faster than two on a shared, busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def weights_with_changes(changes, width: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """(before, after) whose row r moved by a summed |change| of ``changes[r]`` (split over signs)."""
    # integer-valued start so that float32 differences are exact
    before = torch.randint(-3, 4, (len(changes), width), generator=torch.Generator().manual_seed(0)).float()
    delta = torch.zeros_like(before)
    for r, c in enumerate(changes):
        delta[r, 0] = c / 2
        delta[r, 1] = -c / 2  # negative moves count by their size
    return before, before + delta


# ------------------------------------------------------------------------------------------------
# suspicious-neuron selection (pure function)

def test_z_scores_use_the_lower_median_and_mad():
    changes = [1, 2, 3, 4, 5, 6, 7, 8, 9, 100]
    idx, z, c = select_suspicious_neurons(*weights_with_changes(changes))
    assert c.tolist() == pytest.approx(changes, abs=1e-5)
    # torch.median of 10 values is the 5th smallest (5), not 5.5; MAD = lower median of |c - 5| = 2
    dev = np.abs(np.array(changes, dtype=float) - 5)
    assert z.tolist() == pytest.approx((dev / (MAD_SCALE * 2)).tolist(), rel=1e-5)
    assert z[4] == 0 and z[9] == pytest.approx(95 / 2.9652, rel=1e-5)
    assert idx == [9]


def test_rows_below_the_median_are_never_suspicious():
    changes = [0, 10, 10.5, 11, 11.5, 12, 12.5, 13, 13.5, 14]  # row 0 has z = 11.5 / 1.4826 but moved least
    idx, z, _ = select_suspicious_neurons(*weights_with_changes(changes))
    assert z[0] == pytest.approx(11.5 / MAD_SCALE, rel=1e-5) and z[0] > 3.5
    assert idx == []


def test_cap_keeps_the_first_rows_in_class_order_not_the_largest():
    changes = [50, 1, 2, 3, 4, 5, 6, 7, 40, 100]  # rows 0, 8, 9 pass; 9 has the largest z
    idx, z, _ = select_suspicious_neurons(*weights_with_changes(changes), max_neurons=2)
    assert all(z[i] > 3.5 for i in (0, 8, 9))
    assert idx == [0, 8]
    assert select_suspicious_neurons(*weights_with_changes(changes), max_neurons=5)[0] == [0, 8, 9]
    assert select_suspicious_neurons(*weights_with_changes(changes), max_neurons=0)[0] == []
    # the threshold is strict: z exactly at it does not pass
    assert select_suspicious_neurons(*weights_with_changes(changes), z_threshold=float(z[8]))[0] == [0, 9]


def test_no_row_passing_gives_an_empty_list():
    idx, z, _ = select_suspicious_neurons(*weights_with_changes(list(np.linspace(1, 2, 10))))
    assert idx == [] and float(z.max()) < 3.5


def test_zero_mad_selects_every_row_above_the_median():
    idx, z, _ = select_suspicious_neurons(*weights_with_changes([1.0] * 9 + [3.0]))
    assert idx == [9] and math.isinf(z[9]) and float(z[:9].abs().max()) == 0


def test_selection_rejects_mismatched_shapes():
    with pytest.raises(ShapeMismatchError):
        select_suspicious_neurons(torch.zeros(10, 4), torch.zeros(10, 5))


# ------------------------------------------------------------------------------------------------
# unlearning

class Scripted(nn.Module):
    """Predicts a scripted share of its batch correctly in each training forward (one batch = one epoch).

    The label is encoded in the image (pixel value label/10) so the model can be right or wrong on purpose."""

    def __init__(self, accs, k: int = 10):
        super().__init__()
        self.accs, self.k, self.calls = list(accs), k, 0
        self.linear = nn.Linear(1, k)

    def forward(self, x):
        y = (x[:, 0, 0, 0] * 10).round().long()
        acc = self.accs[min(self.calls, len(self.accs) - 1)] if self.training else 1.0
        if self.training:
            self.calls += 1
        n_right = round(acc * len(y))
        pred = torch.where(torch.arange(len(y)) < n_right, y, (y + 1) % self.k)
        return self.linear(x[:, :1, 0, 0]) * 0 + 50 * F.one_hot(pred, self.k).float()


def scripted_data(n: int = 20):
    y = torch.arange(n) % 10
    return (y.float() / 10).view(n, 1, 1, 1).expand(n, 3, 2, 2).contiguous(), y


def fast_cfg(**kw) -> ULRLConfig:
    base = dict(augment=False, batch_size=64)
    base.update(kw)
    return ULRLConfig(**base)


def test_unlearning_stops_after_the_first_epoch_at_or_below_the_threshold():
    x, y = scripted_data()
    seen = []
    model, hist, stopped = unlearn(Scripted([0.9, 0.6, 0.3, 0.15, 0.05]), x, y, fast_cfg(clean_threshold=0.2),
                                   evaluate=lambda m: seen.append(1) or {"test_acc": 0.5})
    assert stopped == 4 and len(hist) == 4
    assert [r["train_acc"] for r in hist] == pytest.approx([0.9, 0.6, 0.3, 0.15])
    assert hist[-1]["unlearn_stop"] is True and "unlearn_stop" not in hist[0]
    assert len(seen) == 4 and hist[0]["test_acc"] == 0.5
    # accuracy exactly at the threshold stops (<=, as the authors' code)
    _, hist, stopped = unlearn(Scripted([0.9, 0.2, 0.1]), x, y, fast_cfg(clean_threshold=0.2))
    assert stopped == 2 and len(hist) == 2


def test_unlearning_runs_every_epoch_when_accuracy_stays_above_the_threshold():
    x, y = scripted_data()
    _, hist, stopped = unlearn(Scripted([0.9, 0.6, 0.3, 0.15, 0.15]), x, y,
                               fast_cfg(clean_threshold=0.1, unlearning_epochs=5, steplr_milestones=(2, 3)))
    assert stopped is None and len(hist) == 5
    # MultiStepLR stepped once per epoch: x0.1 after epochs 2 and 3
    assert [r["lr"] for r in hist] == pytest.approx([0.01, 0.01, 0.001, 0.0001, 0.0001])


def small_classifier(seed: int = 0, steps: int = 150):
    """A small MLP trained (``steps`` Adam steps) to high accuracy on 10 separable classes of 3x2x2 'images'."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(100) % 10
    centers = torch.rand(10, 12, generator=g)
    x = (centers[y] + 0.02 * torch.randn(100, 12, generator=g)).clamp(0, 1).view(100, 3, 2, 2)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 10))
    if not steps:
        return model, x, y
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    assert steps < 100 or (model(x).argmax(1) == y).float().mean() > 0.95
    return model, x, y


def test_unlearning_is_gradient_ascent_with_clipping_and_leaves_the_input_model_alone():
    model, x, y = small_classifier(steps=0)  # untrained: large gradients
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss0 = F.cross_entropy(model(x), y).item()
    one_step = dict(unlearning_epochs=1, sgd_momentum=0.0, wd=0.0, unlearning_lr=0.1, clean_threshold=0.0,
                    batch_size=128)  # one batch: one step
    small, _, _ = unlearn(model, x, y, fast_cfg(grad_clip_norm=0.01, **one_step))
    free, _, _ = unlearn(model, x, y, fast_cfg(grad_clip_norm=0.0, **one_step))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())

    def moved(m):
        return torch.cat([(p.detach() - before[k]).flatten() for k, p in m.state_dict().items()]).norm().item()
    assert moved(small) <= 0.1 * 0.01 * 1.0001  # one SGD step of a gradient clipped to norm 0.01
    assert moved(free) > 10 * moved(small)
    assert F.cross_entropy(free(x), y).item() > loss0  # the loss went up


def test_unlearning_a_trained_model_reaches_the_threshold():
    model, x, y = small_classifier(steps=20)  # (a very confident model barely moves: CE gradients vanish)
    _, hist, stopped = unlearn(model, x, y, fast_cfg(batch_size=16))
    assert stopped is not None and stopped <= 20
    assert hist[-1]["train_acc"] <= 0.2 and all(r["train_acc"] > 0.2 for r in hist[:-1])


# ------------------------------------------------------------------------------------------------
# relearning and the whole run

def test_relearn_reinitialises_only_the_chosen_rows():
    model, x, y = small_classifier()
    lin = model[3]
    bound = math.sqrt(2 / 16)
    out, hist = relearn(model, [0, 2], x, y, fast_cfg(relearn_epochs=0))
    new = out[3]
    assert hist == []
    assert torch.equal(new.weight[1], lin.weight[1]) and new.bias[1] == lin.bias[1]
    for r in (0, 2):
        assert not torch.equal(new.weight[r], lin.weight[r])
        assert float(new.weight.detach()[r].abs().max()) <= bound and float(new.bias.detach()[r]) == 0
    assert torch.equal(out[1].weight, model[1].weight)
    same, _ = relearn(model, [0, 2], x, y, fast_cfg(relearn_epochs=0, init=False))
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), model.state_dict().values()))


def test_relearn_pushes_the_chosen_rows_away_from_their_old_direction():
    # From a fresh row (init=True, ULRL's setting) the penalty alpha * cos(W[r], W_orig[r]) has a
    # non-zero gradient, so gradient descent lowers the cosine: against the same run without the
    # penalty (same seed, so the same fresh row and batches), it must end lower, and fall over the
    # epochs. (With init=False the row starts exactly at W_orig, a stationary point of the cosine,
    # where whether it moves at all depends on float rounding: not a property to test.)
    model, x, y = small_classifier()
    kw = dict(relearn_epochs=15, relearn_lr=0.05, init=True)
    _, hist = relearn(model, [1], x, y, fast_cfg(relearn_alpha=5.0, **kw))
    _, free = relearn(model, [1], x, y, fast_cfg(relearn_alpha=0.0, **kw))
    assert hist[0]["cos_to_original"] > hist[-1]["cos_to_original"]
    assert hist[-1]["cos_to_original"] < free[-1]["cos_to_original"]
    assert [r["phase_epoch"] for r in hist] == list(range(1, 16))


def test_run_ulrl_reports_no_neuron_plainly():
    model, x, y = small_classifier()
    res = run_ulrl(model, x, y, (0.0,) * 3, (1.0,) * 3,
                   fast_cfg(unlearning_epochs=2, relearn_epochs=1, z_threshold=1e9),
                   evaluate=lambda m: {"test_acc": 0.0, "test_asr": 1.0})
    assert res.neurons == [] and "no suspicious neuron found" in res.note
    assert res.summary()["neuron_note"] == res.note
    assert [r["phase"] for r in res.history] == ["unlearn", "unlearn", "relearn"]
    assert [r["epoch"] for r in res.history] == [1, 2, 3]
    assert res.linear_name == "3" and len(res.z_scores) == 10
    assert isinstance(res.model, nn.Sequential)  # the classifier itself, not the pixel-space wrapper


class EndsInReLU(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(12, 3)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.fc(x.flatten(1)))


@pytest.mark.parametrize("model, needle", [
    (EndsInReLU(), "ends in ReLU 'act'"),
    (nn.Sequential(nn.Conv2d(3, 3, 2), nn.Flatten()), "ends in Flatten '1'"),
])
def test_a_model_whose_last_layer_is_not_linear_is_one_clear_error(model, needle):
    x = torch.rand(4, 3, 2, 2)
    with pytest.raises(ShapeMismatchError) as err:
        run_ulrl(model, x, torch.zeros(4, dtype=torch.long), (0.0,) * 3, (1.0,) * 3, fast_cfg())
    msg = str(err.value)
    assert "\n" not in msg and "last layer is one nn.Linear" in msg and needle in msg
    with pytest.raises(ShapeMismatchError, match="no module 'linear'"):
        find_classifier(EndsInReLU(), x, "linear")


def test_classifier_found_in_zoo_models():
    from burn_plugin.bench.models import build_model
    from burn_plugin.core.tensors import PixelSpaceModel

    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    for name, layer in (("smallresnet", "linear"), ("preactresnet18", "linear"), ("vgg19_bn", "classifier.6")):
        m = PixelSpaceModel(build_model(name, 10), (0.5,) * 3, (0.5,) * 3)
        assert find_classifier(m, x)[0] == layer
        assert find_classifier(m, x, layer)[0] == layer


# ------------------------------------------------------------------------------------------------
# config

def test_defaults_are_the_authors_cifar10_values():
    c = ULRLConfig()
    assert (c.ratio, c.unlearning_lr, c.sgd_momentum, c.wd, c.steplr_milestones, c.steplr_gamma) == \
        (0.01, 0.01, 0.9, 5e-4, (10, 20), 0.1)
    assert (c.grad_clip_norm, c.unlearning_epochs, c.clean_threshold, c.batch_size) == (20.0, 20, 0.2, 128)
    assert (c.z_threshold, c.max_neurons, c.init, c.relearn_epochs, c.relearn_lr, c.relearn_alpha,
            c.relearn_momentum) == (3.5, 2, True, 20, 0.005, 0.7, 0.9)
    assert ULRLConfig.from_mapping(c.to_dict()) == c


@pytest.mark.parametrize("values, needle", [
    ({"k_p0": 1}, "unknown ULRL setting(s) 'k_p0'"),
    ({"ratio": 0}, "ratio"),
    ({"ratio": "lots"}, "ratio"),
    ({"clean_threshold": 1.5}, "clean_threshold"),
    ({"clean_source": "imagenet"}, "clean_source must be one of clean_train, burn"),
    ({"steplr_milestones": [10.5]}, "steplr_milestones"),
    ({"steplr_milestones": [20, 10]}, "increasing"),
    ({"unlearning_epochs": 0}, "unlearning_epochs"),
    ({"max_neurons": -1}, "max_neurons"),
    ({"init": "maybe"}, "init"),
    ({"index": 5}, "index"),
    ({"linear_name": ""}, "linear_name"),
])
def test_bad_settings_are_one_line_config_errors(values, needle):
    with pytest.raises(ConfigError) as err:
        ULRLConfig.from_mapping(values, source="test.yaml")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_yaml_spellings_are_accepted():
    c = ULRLConfig.from_mapping({"index": None, "burn_result": "None", "steplr_milestones": "10, 20",
                                 "init": "false", "ratio": "0.05"})
    assert (c.index, c.burn_result, c.steplr_milestones, c.init, c.ratio) == ("", "", (10, 20), False, 0.05)


@pytest.mark.parametrize("name, lr, alpha", [("config", 0.005, 0.7), ("cifar10", 0.005, 0.7),
                                             ("cifar100", 0.001, 0.001), ("gtsrb", 0.001, 0.001),
                                             ("tiny", 0.001, 0.001), ("mnist", 0.005, 0.7),
                                             ("fashionmnist", 0.005, 0.7)])
def test_bundled_yamls_load(name, lr, alpha):
    from burn_plugin.settings import bundled_config_dir, load_yaml, split_settings

    cfg, run, ignored = split_settings(load_yaml(bundled_config_dir() / "ulrl" / f"{name}.yaml"), source=name,
                                       config_cls=ULRLConfig)
    assert (cfg.relearn_lr, cfg.relearn_alpha, cfg.ratio, cfg.index) == (lr, alpha, 0.01, "")
    assert "ratio" not in ignored and "amp" in ignored


def test_ratio_stays_ignored_for_burn():
    from burn_plugin.core.config import BurnConfig
    from burn_plugin.settings import split_settings

    _, _, ignored = split_settings({"ratio": 0.01, "index": "idx.txt"}, source="x", config_cls=BurnConfig)
    assert ignored == ["index", "ratio"]


# ------------------------------------------------------------------------------------------------
# burn defend --method ulrl

def defend(*args: str) -> int:
    return burn_main(["-q", "defend", "--method", "ulrl", *args])


def test_defend_writes_backdoorbench_files(attack_record, tmp_path, capsys):
    folder = attack_record["folder"]
    out = tmp_path / "ulrl"
    assert defend("--attack_folder", str(folder), "--output_dir", str(out), *FAST) == 0
    printed = capsys.readouterr().out
    assert "ulrl: 25% clean subset of clean_train (10 samples)" in printed and "suspicious neurons" in printed
    for name in ("defense_result.pt", "ulrl_df.csv", "ulrl_df_summary.csv", "index.txt", "run.json"):
        assert (out / name).is_file(), name
    assert not (folder / "defense" / "ulrl").exists()

    res = torch.load(out / "defense_result.pt", weights_only=True)
    assert set(res) == {"model_name", "num_classes", "model"} and res["model_name"] == "smallresnet"
    idx = [int(v) for v in (out / "index.txt").read_text().split()]
    assert idx == random.Random(0).sample(range(40), 10)  # BackdoorBench's choose_index after seeding

    run = json.loads((out / "run.json").read_text())
    u = run["ulrl"]
    df = pd.read_csv(out / "ulrl_df.csv", index_col=0)
    assert list(df.columns[:4]) == ["epoch", "phase", "phase_epoch", "lr"] and set(METRICS) <= set(df.columns)
    assert list(df["phase"]) == ["unlearn"] * u["unlearn_epochs_run"] + ["relearn"] * 2
    assert df["epoch"].tolist() == list(range(1, len(df) + 1))
    summary = pd.read_csv(out / "ulrl_df_summary.csv", index_col=0)
    assert list(summary.index) == ["last", "valid_max", "exist_nan_value"] and list(summary.columns) == METRICS
    assert float(summary.loc["last", "test_asr"]) == pytest.approx(run["after"]["test_asr"])
    assert run["method"] == "ulrl" and run["data_used"] == "25% clean subset of clean_train (10 samples)"
    assert run["config"]["relearn_epochs"] == 2 and run["config"]["relearn_lr"] == 0.005  # mnist.yaml
    assert u["clean_samples"] == 10 and u["clean_set_poisoned"] == 0 and u["classifier_layer"] == "linear"
    assert len(u["neuron_z_scores"]) == 10 and len(u["suspicious_neurons"]) <= 2

    # the written index file reproduces the draw
    again = tmp_path / "again"
    assert defend("--attack_folder", str(folder), "--output_dir", str(again), *FAST, "--ratio", "0.9",
                  "--index", str(out / "index.txt")) == 0
    assert (again / "index.txt").read_text() == (out / "index.txt").read_text()
    assert json.loads((again / "run.json").read_text())["data_used"].startswith("clean_train samples listed in")


def test_defend_errors_are_one_line(attack_record, tmp_path, capsys):
    folder = str(attack_record["folder"])
    cases = [(["--ratio", "0.01"], "is 0 samples"),          # 1% of 40 images
             (["--index", str(tmp_path / "none.txt")], "clean index file not found"),
             (["--k_p0", "1"], "unknown setting(s) 'k_p0'"),
             (["--clean_source", "burn", "--burn_result", str(tmp_path / "nope.npz")], "run `burn defend` first")]
    for extra, needle in cases:
        assert defend("--attack_folder", folder, "--output_dir", str(tmp_path / "o"), "--device", "cpu",
                      *extra) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


def test_clean_source_burn_uses_the_last_rounds_bottom_set(attack_record, tmp_path, capsys):
    from burn_plugin.bench.records import load_record

    folder = attack_record["folder"]
    bd = load_record(folder).tensors("bd_train")
    poison = np.flatnonzero(bd.poison.numpy())
    clean = np.flatnonzero(~bd.poison.numpy().astype(bool))
    last = np.concatenate([poison[:2], clean[:10]])
    scores = tmp_path / "scores.npz"
    np.savez(scores, round0_clean=clean[:3], round2_clean=last, round2_poison=poison[2:],
             label=bd.label.numpy())
    out = tmp_path / "from_burn"
    assert defend("--attack_folder", str(folder), "--output_dir", str(out), *FAST, "--clean_source", "burn",
                  "--burn_result", str(scores)) == 0
    run = json.loads((out / "run.json").read_text())
    u = run["ulrl"]
    assert run["data_used"] == "BURN's bottom-k_c of the poisoned training set (no clean data)"
    assert (u["burn_round"], u["clean_samples"], u["clean_set_poisoned"]) == (2, 12, 2)
    assert [int(v) for v in (out / "burn_clean_index.txt").read_text().split()] == last.tolist()
    assert not (out / "index.txt").exists()

    # a scores.npz of another record is refused
    np.savez(scores, round0_clean=clean[:3], label=np.zeros(7, dtype=np.int64))
    assert defend("--attack_folder", str(folder), "--output_dir", str(tmp_path / "x"), *FAST,
                  "--clean_source", "burn", "--burn_result", str(scores)) == 2
    assert "belongs to another record" in capsys.readouterr().err


def test_balanced_bottom_takes_the_lowest_scores_per_label_in_equal_shares(tmp_path):
    from burn_plugin.defenses.ulrl import burn_clean_positions

    labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])
    score = np.array([.9, .1, .5, .2, .8, .3, .7, .05, .6, .01, .4, .02])
    f = tmp_path / "scores.npz"
    # BURN's own bottom-5 is skewed: three of class 2, none of class 1
    np.savez(f, round3_clean=np.array([9, 11, 7, 1, 3]), label=labels, final_score=score)
    plain, t = burn_clean_positions(f, len(labels), labels)
    assert t == 3 and plain.tolist() == [9, 11, 7, 1, 3]
    pos, _ = burn_clean_positions(f, len(labels), labels, balanced=True)
    # 5 = 2 + 2 + 1: the two lowest of class 0 (1, 3), the two lowest of class 1 (5, 6), the lowest of class 2 (9)
    assert pos.tolist() == [1, 3, 5, 6, 9]
    np.savez(f, round3_clean=np.array([9, 11]), label=labels)    # an old scores.npz without final_score
    with pytest.raises(CorruptFileError, match="final_score"):
        burn_clean_positions(f, len(labels), labels, balanced=True)


# ------------------------------------------------------------------------------------------------
# BackdoorBench: burn register installs defense/ulrl.py, which runs from the checkout root

def test_register_installs_and_removes_ulrl(attack_record, tmp_path, capsys):
    from burn_plugin.backdoorbench import register as R

    root = tmp_path / "bb"
    for d in ("config/defense", "defense", "utils"):
        (root / d).mkdir(parents=True)
    shutil.copytree(attack_record["root"] / "data", root / "data")
    shutil.copytree(attack_record["folder"], root / "record" / "badnet_0_1")
    before = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines[:7]] == ["installed"] * 6 + ["manifest"]
    assert lines[7].split() == ["installed", "defense/ulrl.py"]
    assert (root / "defense/ulrl.py").read_bytes() == (Path(R.__file__).parents[2] / "defense/entry.py").read_bytes()
    manifest = json.loads((root / R.manifest_path("ulrl")).read_text())
    assert set(manifest["files"]) == {"defense/ulrl.py"} | {f"config/defense/ulrl/{n}.yaml" for n in
                                                            ("config", "cifar10", "cifar100", "gtsrb", "tiny")}
    assert manifest["created_dirs"] == ["config/defense/ulrl"]
    burn_manifest = json.loads((root / R.MANIFEST).read_text())
    assert not any("ulrl" in k for k in burn_manifest["files"])

    proc = subprocess.run([sys.executable, "defense/ulrl.py", "--attack_folder", "badnet_0_1", "--dataset", "mnist",
                           "--yaml_path", "config/defense/ulrl/config.yaml", *FAST, "-q"],
                          cwd=root, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "ulrl on" in proc.stdout and "after:" in proc.stdout
    out = root / "record" / "badnet_0_1" / "defense" / "ulrl"
    for name in ("defense_result.pt", "ulrl_df.csv", "ulrl_df_summary.csv", "index.txt", "run.json"):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["device"] == "cpu" and run["entry"] == "backdoorbench" and run["method"] == "ulrl"
    assert "ratio" not in run["ignored_keys"] and "amp" in run["ignored_keys"]
    shutil.rmtree(root / "record" / "badnet_0_1" / "defense")

    assert burn_main(["register", "--bb-root", str(root), "--uninstall"]) == 0
    assert {p.relative_to(root).as_posix() for p in root.rglob("*")} == before


def test_uninstall_of_a_burn_only_registration_still_works(tmp_path, capsys):
    from burn_plugin.backdoorbench import register as R

    root = tmp_path / "bb"
    for d in ("config/defense", "defense", "utils"):
        (root / d).mkdir(parents=True)
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    shutil.rmtree(root / "config/defense/ulrl")  # as an older plugin left it: BURN only
    (root / "defense/ulrl.py").unlink()
    capsys.readouterr()
    assert burn_main(["register", "--bb-root", str(root), "--uninstall"]) == 0
    out = capsys.readouterr().out
    assert "ulrl was not installed here" in out and "removed   defense/burn.py" in out
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == ["config", "config/defense",
                                                                                "defense", "utils"]
    assert R.installed_state(root) == [(k.as_posix(), "missing") for k in R.managed_files()]
