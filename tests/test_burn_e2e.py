"""End to end on synthetic data: a planted BadNets-style trigger is found by the boundary analysis and
BURN removes it (issue 3, "a small end-to-end test on synthetic data where a planted trigger is found
and ASR falls").

The core is used only through its public API: a plain ``nn.Module`` trained here with
``core.train.train_epochs``, then ``run_burn(model, BurnData(x, y, mean, std), BurnConfig(...))``. No
BackdoorBench, no record. The ground truth (which samples are poisoned, their true labels) is kept
in the test for the assertions only and never reaches ``run_burn``.

The data are built so that the paper's premise holds: the clean signal is weak (each class adds a
fixed random pattern of amplitude 0.04 to a dark, noisy background), so a clean sample lies close to
the decision boundary and a 1.5k-parameter conv net reaches ~0.9 clean accuracy, while the trigger (a white
3x3 corner patch, 10% of the training set, all-to-one to class 0 as BadNets) is a strong, easily
learned feature. The comments by each threshold give the range observed over data/model seeds 0-15
(and seed 0's value, the seed fixed here); every threshold sits below the worst of those 16 seeds.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from burn_plugin.core.burn import BurnData, analyse_boundary, run_burn
from burn_plugin.core.config import BurnConfig
from burn_plugin.core.tensors import PixelSpaceModel, predict
from burn_plugin.core.train import train_epochs

SEED = 0
SIZE, CLASSES, TARGET = 8, 4, 0
N_TRAIN, N_TEST, POISON_RATE = 4000, 400, 0.1
BACKGROUND, NOISE, CLASS_AMPLITUDE = 0.3, 0.1, 0.04
PATCH = 3                                    # trigger: bottom-right PATCH x PATCH square set to white
MEAN, STD = (0.5,), (0.25,)


def burn_config() -> BurnConfig:
    """The paper's algorithm (phase 1 + T rounds of S-ranked selection, Adam (0.9, 0.999), 5 epochs a
    round, linear schedules with k_c = 5 k_p and w 0.3 -> 0.6) with the settings a 4000-image,
    1.5k-parameter problem needs. Deviations from the paper defaults, and why:

    - ``rounds=5`` (paper 20): keeps the test at a few seconds; on this problem ASR is ~0 after round 1-2.
    - ``lr=1e-3`` (paper 5e-5): the paper's lr is for ResNets fine-tuned on 50k-image sets; here a round
      fine-tunes on 240-480 images (a few Adam steps). At 5e-5 the backdoor survives (ASR 0.66-1.00 on
      seeds 0-3 even with the paper's 20 rounds), and with the backdoor intact PD ranks unstable clean
      samples above the poison (final-round poison precision down to 0.025).
    - ``k_p`` 1% -> 2%, ``k_c`` 5% -> 10% (paper 0.5 -> 1 and 2.5 -> 5): twice the paper's shares,
      keeping its 1:5 ratio and k_p^T far below the 10% poison rate. At the paper's shares (20 + 100
      images in round 1) ASR still falls (<= 0.033 on seeds 0-7) but the fine-tuning sets are too small
      for this net: clean accuracy fell by more than 4 points on 5 of 8 seeds (up to 20.5).
    - ``batch_size=64`` (default 128, BackdoorBench's batch for 50k-image sets): a round's set of
      240-480 images then gives 4-8 Adam steps an epoch rather than 2-4; at 128 one of 8 seeds lost
      9.5 points of clean accuracy (otherwise the same picture).
    - ``augment=False`` (default True: pad-4 random crop): on 8x8 images a crop shifted by up to 4
      pixels moves half the image and the corner trigger out of place; the infected model here was
      trained without augmentation, so fine-tuning uses the same (test-time) view.

    Everything else is the default (candidates 10, clamped to the 4 classes; overshoot 0.02; max_iter
    50; pixel-space distances, box-aware; l(x) once on the frozen model; softmax PD; fresh Adam a round).
    """
    return BurnConfig(rounds=5, lr=1e-3, k_p0=1.0, k_pT=2.0, k_c0=5.0, k_cT=10.0, batch_size=64, augment=False,
                      random_seed=SEED)


def add_trigger(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, :, -PATCH:, -PATCH:] = 255
    return x


def make_poisoned_data(seed: int) -> dict:
    """uint8 (N, 1, 8, 8) images; class k = background + CLASS_AMPLITUDE * pattern_k + noise."""
    rng = np.random.RandomState(seed)
    patterns = rng.randn(CLASSES, 1, SIZE, SIZE)
    patterns[:, :, -PATCH:, -PATCH:] = 0.0                  # the trigger's corner carries no class signal
    patterns /= np.sqrt((patterns ** 2).mean(axis=(1, 2, 3), keepdims=True))

    def draw(n):
        y = rng.randint(0, CLASSES, n)
        x = BACKGROUND + CLASS_AMPLITUDE * patterns[y] + NOISE * rng.randn(n, 1, SIZE, SIZE)
        return torch.from_numpy(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)), torch.from_numpy(y)

    x_train, y_true = draw(N_TRAIN)
    x_test, y_test = draw(N_TEST)
    # BadNets all-to-one: poison drawn from the non-target classes, trigger added, label set to the target
    poison_idx = rng.choice(np.flatnonzero(y_true.numpy() != TARGET), int(POISON_RATE * N_TRAIN), replace=False)
    is_poison = torch.zeros(N_TRAIN, dtype=torch.bool)
    is_poison[torch.from_numpy(poison_idx)] = True
    x_train[is_poison] = add_trigger(x_train[is_poison])
    y_given = y_true.clone()
    y_given[is_poison] = TARGET
    nontarget = y_test != TARGET
    return {"x": x_train, "y": y_given,                               # what the defense sees
            "is_poison": is_poison, "y_true": y_true,                 # ground truth, assertions only
            "x_test": x_test, "y_test": y_test,
            "x_bd": add_trigger(x_test[nontarget]), "y_bd_true": y_test[nontarget]}


class TinyConvNet(nn.Module):
    """1.5k parameters; takes normalised 1x8x8 input."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                 nn.Flatten(), nn.Linear(16 * (SIZE // 4) ** 2, CLASSES))

    def forward(self, x):
        return self.net(x)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(PixelSpaceModel(model, MEAN, STD), x).argmax(1) == y).float().mean())


def attack_success_rate(model: nn.Module, x_bd: torch.Tensor) -> float:
    return float((predict(PixelSpaceModel(model, MEAN, STD), x_bd).argmax(1) == TARGET).float().mean())


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors on a shared 2-core machine: one thread is fast, and the numbers do not depend on it."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def infected(one_thread):
    d = make_poisoned_data(SEED)
    torch.manual_seed(SEED)
    model = TinyConvNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    train_epochs(PixelSpaceModel(model, MEAN, STD), d["x"], d["y"], epochs=15, optimizer=opt, batch_size=64,
                 augment_padding=0, generator=torch.Generator().manual_seed(SEED))
    model.eval()
    d["acc"], d["asr"] = accuracy(model, d["x_test"], d["y_test"]), attack_success_rate(model, d["x_bd"])
    return model, d


@pytest.fixture(scope="module")
def burned(infected):
    model, d = infected
    data = BurnData(d["x"], d["y"], MEAN, STD)               # no poison flag, no true label
    return run_burn(copy.deepcopy(model), data, burn_config(), progress=False)


def test_backdoor_is_implanted_before_the_defense(infected):
    model, d = infected
    assert sum(p.numel() for p in model.parameters()) < 5000
    assert d["asr"] > 0.95, d["asr"]                     # seeds 0-15: 0.997-1.000 (seed 0: 1.000)
    # weak clean signal: reasonable, but far from perfect, clean accuracy
    assert 0.8 < d["acc"] < 0.97, d["acc"]               # 0.882-0.930 (seed 0: 0.885)


def test_boundary_analysis_separates_poison_and_restores_true_labels(infected, burned):
    model, d = infected
    b = burned.boundary
    poison = d["is_poison"]
    # run_burn's boundary analysis is analyse_boundary on the infected model (up to float rounding:
    # run_burn converts the weights to channels_last first, which can move a sample that lands right
    # on a boundary by one DeepFool iteration)
    direct = analyse_boundary(model, BurnData(d["x"], d["y"], MEAN, STD), burn_config())
    assert ((direct.distance - b.distance).abs() < 1e-4).float().mean() > 0.99
    assert (direct.adv_label == b.adv_label).float().mean() > 0.99
    assert b.converged.float().mean() > 0.99              # >= 0.9998
    # observation 1 (paper Table 1): poison lies much farther from the boundary than clean samples
    auroc = roc_auc_score(poison.numpy(), b.distance.numpy())
    assert auroc >= 0.88, auroc                          # 0.897-0.999, 15 of 16 seeds > 0.92 (seed 0: 0.930)
    ratio = float(b.distance[poison].mean() / b.distance[~poison].mean())
    assert ratio > 2.0, ratio                            # 2.39-4.34 (seed 0: 2.46)
    # observation 2 (paper Fig. 2): the adversarial label of most label-flipped poison samples is their
    # true label (all poison here is label-flipped; chance among the 3 other classes would be 1/3)
    agree = float((b.adv_label[poison] == d["y_true"][poison]).float().mean())
    assert agree > 0.5, agree                            # 0.558-0.920 (seed 0: 0.892)
    # the trigger is found: phase 1's top k_p^0 (1%) by l(x) is mostly poison (10% base rate)
    precision = float(poison[burned.selections[0].poison].float().mean())
    assert precision >= 0.7, precision                   # 0.800-1.000 (seed 0: 0.925)


def test_burn_removes_the_backdoor_and_keeps_clean_accuracy(infected, burned):
    model, d = infected
    res = burned
    assert res.stopped_early is None and res.completed_rounds == burn_config().rounds + 1
    acc, asr = accuracy(res.model, d["x_test"], d["y_test"]), attack_success_rate(res.model, d["x_bd"])
    assert asr < 0.1 and asr < d["asr"] / 2, (d["asr"], asr)       # after: 0.000-0.024 (seed 0: 0.014)
    assert acc >= d["acc"] - 0.05, (d["acc"], acc)                 # change -0.023..+0.018 (seed 0: +0.000)
    # most triggered test images get their true class back, not merely "not the target"
    ra = accuracy(res.model, d["x_bd"], d["y_bd_true"])
    assert ra > 0.5, ra                                            # 0.625-0.931 (seed 0: 0.861)
    # the last round's relabelled set, now ranked by S = (1 - w) BD + w PD, is truly poison
    precision = float(d["is_poison"][res.selections[-1].poison].float().mean())
    assert precision >= 0.9, precision                             # 1.000 on every seed
