"""Poison detectors (core/detectors.py): planted subpopulations, normalisation, registry, feature hook.

The synthetic training set is built directly in feature space: a tiny fixed model ``Flatten -> Linear``
whose penultimate features (the Linear's input) are the normalised pixels, so the images *are* the
features. Five labels of 200 samples, 16 dimensions, class means N(0, 2^2), noise of standard
deviation 1 (1.5 along two axes); the planted group is a share of label 0 shifted by a fixed vector
of norm 8. Boundary distances: |N(1, 0.25)| for clean samples and |N(2, 0.25)| for planted ones
("farther"), or a weak version (planted N(1.3, 0.3) against N(1, 0.3), per-sample AUROC 0.74-0.80).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from burn_plugin.core.detectors import (DETECTORS, detector_scores, list_detectors, normalise_across_labels,
                                        penultimate_features, register_detector, robust_z_per_label,
                                        suspect_side, unit_rank)
from burn_plugin.core.detectors import adv_entropy, side_evidence
from burn_plugin.core.scores import boundary_score
from burn_plugin.errors import ConfigError

K, PER, D, TARGET, SHIFT = 5, 200, 16, 0, 8.0
MEAN, STD = (0.5,), (0.05,)  # pixel 0.5 + 0.05 * f  <->  feature f
SHARES = (0.05, 0.3, 0.7)
BAR = 0.95  # the bar


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(D, K))


@lru_cache(maxsize=None)
def planted(share: float, seed: int = 0):
    """``(x, y, l_strong, l_weak, poison)``: images (N, 1, 4, 4) float32 in [0, 1], labels, distances, flags."""
    rng = np.random.RandomState(seed)
    n = K * PER
    y = np.repeat(np.arange(K), PER)
    sd = np.ones(D)
    sd[:2] = 1.5
    f = rng.normal(0, 2.0, (K, D))[y] + rng.normal(0, 1, (n, D)) * sd
    shift = rng.normal(0, 1, D)
    shift *= SHIFT / np.linalg.norm(shift)
    poison = np.zeros(n, dtype=bool)
    poison[np.flatnonzero(y == TARGET)[:int(round(share * PER))]] = True
    f[poison] += shift
    x = np.clip(MEAN[0] + STD[0] * f, 0, 1).reshape(n, 1, 4, 4).astype(np.float32)
    l_strong = np.abs(rng.normal(1.0, 0.25, n) + 1.0 * poison)
    l_weak = np.abs(rng.normal(1.0, 0.3, n) + 0.3 * poison)
    return (torch.from_numpy(x), torch.from_numpy(y), torch.from_numpy(l_strong), torch.from_numpy(l_weak), poison)


def auroc(poison, s: torch.Tensor) -> float:
    return float(roc_auc_score(poison, s.numpy()))


def check_scores(s: torch.Tensor, n: int) -> None:
    assert s.dtype == torch.float64 and s.shape == (n,)
    assert torch.isfinite(s).all() and s.min() >= 0 and s.max() <= 1


# ------------------------------------------------------------------------------------------------
# every detector finds the planted group

def test_registry_lists_the_detectors():
    assert list_detectors() == sorted(["boundary", "spectral", "activation_clustering", "scan", "combined",
                                       "disagreement", "ibd_psc", "flare"])   # the last three: test_detectors_model_only
    assert DETECTORS["boundary"].needs_boundary and not DETECTORS["boundary"].needs_features
    assert DETECTORS["combined"].needs_boundary and DETECTORS["combined"].needs_features
    for name in ("spectral", "activation_clustering", "scan"):
        assert DETECTORS[name].needs_features and not DETECTORS[name].needs_boundary
        assert DETECTORS[name].summary


@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("name", ["boundary", "spectral", "activation_clustering", "scan", "combined"])
def test_detector_ranks_planted_group_first(name, share, device):
    x, y, l, _, poison = planted(share)
    s = detector_scores(name, tiny_model().to(device), x, y, mean=MEAN, std=STD, boundary_distance=l, device=device)
    check_scores(s, len(y))
    assert auroc(poison, s) >= BAR


@pytest.mark.parametrize("share", [0.3, 0.7])
@pytest.mark.parametrize("name", ["spectral", "activation_clustering", "scan"])
def test_cluster_mean_of_weak_distances_picks_the_poisoned_part(name, share):
    """l(x) alone ranks single samples weakly, but averaged over a cluster it decides, even for a majority."""
    x, y, _, l_weak, poison = planted(share)
    assert auroc(poison, l_weak.double()) < 0.85
    s = detector_scores(name, tiny_model(), x, y, mean=MEAN, std=STD, boundary_distance=l_weak)
    assert auroc(poison, s) >= BAR


@pytest.mark.parametrize("share", [0.05, 0.3])
@pytest.mark.parametrize("name", ["spectral", "activation_clustering", "scan"])
def test_without_distances_the_smaller_part_is_suspect(name, share):
    x, y, _, _, poison = planted(share)
    s = detector_scores(name, tiny_model(), x, y, mean=MEAN, std=STD)
    check_scores(s, len(y))
    assert auroc(poison, s) >= BAR


def test_feature_detectors_are_deterministic_and_take_precomputed_features():
    x, y, l, _, _ = planted(0.3)
    model = tiny_model()
    feats = penultimate_features(model, x, mean=MEAN, std=STD)
    for name in ("spectral", "activation_clustering", "scan", "combined"):
        a = detector_scores(name, model, x, y, mean=MEAN, std=STD, boundary_distance=l, seed=3)
        b = detector_scores(name, None, None, y, boundary_distance=l, seed=3, features=feats)
        assert torch.equal(a, b)


@pytest.mark.parametrize("share", SHARES)
def test_scan_estimates_the_planted_count(share):
    """SCAn's estimate of the poisoned count is the suspect identity of the label with the largest J: the
    planted group, whose shift (norm 8) is 8 noise standard deviations, so at most one sample in a
    hundred of the target label lands on the wrong side."""
    from burn_plugin.core.config import POISON_ESTIMATORS

    x, y, l, _, poison = planted(share)
    notes = {}
    detector_scores("scan", tiny_model(), x, y, mean=MEAN, std=STD, boundary_distance=l, notes=notes)
    assert abs(notes["poison_estimate"] - int(poison.sum())) <= PER // 100
    for name in POISON_ESTIMATORS:   # every detector named there writes the estimate
        notes = {}
        detector_scores(name, tiny_model(), x, y, mean=MEAN, std=STD, boundary_distance=l, notes=notes)
        assert isinstance(notes.get("poison_estimate"), int)


def test_weak_split_labels_score_low():
    """A label without a planted group never outranks the planted group (activation clustering / SCAn)."""
    x, y, l, _, poison = planted(0.3)
    for name in ("activation_clustering", "scan"):
        s = detector_scores(name, tiny_model(), x, y, mean=MEAN, std=STD, boundary_distance=l)
        assert s[poison].min() > s[y != TARGET].max()


# ------------------------------------------------------------------------------------------------
# boundary = today's BD

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_boundary_is_boundary_score_bit_for_bit(dtype):
    g = torch.Generator().manual_seed(0)
    l = torch.rand(500, generator=g, dtype=torch.float64).to(dtype) * 3
    y = torch.randint(0, 10, (500,), generator=g)
    s = detector_scores("boundary", None, None, y, boundary_distance=l)
    ref = boundary_score(l)
    assert s.dtype == ref.dtype and torch.equal(s, ref)
    zeros = torch.zeros(7, dtype=dtype)
    assert torch.equal(detector_scores("boundary", None, None, torch.zeros(7), boundary_distance=zeros),
                       boundary_score(zeros))


# ------------------------------------------------------------------------------------------------
# normalisation across labels, on hand-made scores

def test_robust_z_by_hand():
    z = robust_z_per_label(np.array([1.0, 2, 3, 4, 100]), np.zeros(5))
    # median 3, |dev| = 2 1 0 1 97 -> MAD 1 -> scale 1.4826
    assert np.allclose(z, np.array([-2, -1, 0, 1, 97]) / 1.4826)
    # MAD 0: the mean absolute deviation (4/5) * 1.2533 is the scale
    z = robust_z_per_label(np.array([5.0, 5, 5, 5, 9]), np.zeros(5))
    assert np.allclose(z, [0, 0, 0, 0, 4 / (0.8 * 1.2533)])
    # all equal: no evidence
    assert np.array_equal(robust_z_per_label(np.full(4, 2.0), np.zeros(4)), np.zeros(4))
    # reference: location and scale from the reference samples only (a majority cannot call itself normal)
    z = robust_z_per_label(np.array([0.0, 1, 2, 50, 51, 52, 53]), np.zeros(7),
                           reference=np.array([1, 1, 1, 0, 0, 0, 0], dtype=bool))
    assert np.allclose(z, (np.array([0.0, 1, 2, 50, 51, 52, 53]) - 1) / 1.4826)


def test_labels_on_scales_1000x_apart_rank_comparably():
    base = np.array([0.10, 0.30, 0.20, 0.50, 0.40, 0.25, 0.35, 0.15, 3.0])  # last: the outlier
    raw = np.concatenate([base, 1000.0 * base + 5000.0])
    y = np.repeat([0, 1], len(base))
    s = normalise_across_labels(raw, y)
    check_scores(s, len(raw))
    n = len(raw)
    # matched samples get the same z, so their global ranks are equal or adjacent
    assert torch.all((s[:len(base)] - s[len(base):]).abs() <= 1.0 / (n - 1) + 1e-12)
    # both labels' outliers are the top two; without the per-label step label 1 would take the whole top half
    assert set(torch.argsort(s, descending=True)[:2].tolist()) == {len(base) - 1, n - 1}
    plain = unit_rank(raw)
    assert plain[len(base):].min() > plain[:len(base)].max()


def test_unit_rank_ties_range_and_edge_cases():
    s = unit_rank(np.array([3.0, 1.0, 1.0, 2.0, np.nan]))
    assert s.tolist() == [1.0, 0.375, 0.375, 0.75, 0.0]  # ranks 5, 2.5, 2.5, 4, 1 -> (r - 1) / 4
    assert unit_rank(np.array([7.0])).tolist() == [0.0]
    assert unit_rank(np.full(3, 1.0)).tolist() == [0.5, 0.5, 0.5]
    assert len(unit_rank(np.array([]))) == 0


def test_suspect_side_rule():
    part = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    assert suspect_side(part, None)            # no distances: the smaller part
    assert not suspect_side(~part, None)
    far = np.array([5.0, 6, 7, 1, 2, 3, 4, 0.5])
    assert suspect_side(part, far) and not suspect_side(~part, far)
    # the larger part is suspect when its distances are larger: 70% of a label can be the poison
    assert suspect_side(~part, -far)
    # a single huge distance does not decide (ranks, not values)
    one = np.array([1.0, 2, 3, 4, 5, 6, 7, 1e9])
    assert suspect_side(~part, one)


def test_adv_entropy_side_rule():
    part = np.array([1] * 40 + [0] * 60, dtype=bool)
    adv = np.where(part, np.arange(100) % 4, 1)          # the part crosses into 4 classes, the rest into 1
    assert suspect_side(part, None, adv) and not suspect_side(~part, None, adv)
    far = np.where(part, 0.0, 1.0)                        # l(x) says the other way; the entropy decides
    assert suspect_side(part, far, adv)
    # equal entropies: l(x) decides, then the size
    same = np.zeros(100, dtype=int)
    assert not suspect_side(part, far, same) and suspect_side(part, None, same)
    # Miller-Madow: a part of 3 samples in 3 classes is not taken for more spread than 97 in 3 classes
    assert adv_entropy(np.array([0, 1, 2])) > adv_entropy(np.array([0, 1, 2] * 32 + [0]))


def test_decisive_side_rule_follows_the_stronger_evidence():
    rng = np.random.RandomState(0)
    part = np.arange(2000) < 1800                          # SIG-like: the poison is 90% of the label
    spread = rng.randint(0, 5, 2000)                       # both parts cross into the same 5 classes
    far = np.where(part, 2.0, 1.0) + 0.5 * rng.rand(2000)  # and the poison lies further from the boundary
    z_ent, z_rank = side_evidence(part, far, spread)
    assert abs(z_ent) < abs(z_rank) and z_rank > 0
    assert suspect_side(part, far, spread, rule="decisive") and not suspect_side(~part, far, spread, rule="decisive")
    # WaNet-like: the poison spreads over 9 classes, the clean part crosses into 1, and l(x) mildly disagrees
    adv = np.where(part, rng.randint(1, 10, 2000), 0)
    near = np.where(part, 0.0, 0.1) + rng.rand(2000)
    z_ent, z_rank = side_evidence(part, near, adv)
    assert z_ent > abs(z_rank) and z_rank < 0
    assert suspect_side(part, near, adv, rule="decisive")
    assert not suspect_side(part, near, adv, rule="boundary")
    # evidence that is missing counts as none: the size decides
    assert suspect_side(~part, None, None, rule="decisive")


@pytest.mark.parametrize("n_a, n_b", [(500, 1500), (1000, 1000)])
def test_side_evidence_is_standard_normal_when_the_parts_do_not_differ(n_a, n_b):
    """Both z statistics are N(0, 1) under random assignment (Mann-Whitney exactly in mean and variance;
    the entropy's delta method for large parts). 400 draws: the standard deviation's own standard error
    is about 1 / sqrt(800) = 0.035, so 0.15 is over four of them."""
    rng = np.random.RandomState(1)
    probs = np.array([0.5, 0.2, 0.15, 0.1, 0.05])
    zs = np.array([side_evidence(rng.permutation(n_a + n_b) < n_a, rng.rand(n_a + n_b),
                                 rng.choice(5, n_a + n_b, p=probs)) for _ in range(400)])
    assert np.all(np.abs(zs.mean(axis=0)) < 0.2)        # the mean's standard error is 0.05
    assert np.all(np.abs(zs.std(axis=0) - 1.0) < 0.15)


@pytest.mark.parametrize("share", [0.3, 0.7])
@pytest.mark.parametrize("name", ["spectral", "activation_clustering", "scan"])
def test_adv_entropy_side_survives_misleading_distances(name, share):
    """The planted group lies *nearer* the boundary (as WaNet's poison did), and its adversarial labels spread
    over the other classes while the clean part of the label crosses into one neighbour: the l(x) rule
    picks the clean part, the adversarial-label rule the poison."""
    x, y, l_strong, _, poison = planted(share)
    misleading = torch.from_numpy(np.where(poison, 0.5, 1.5) + 0.1 * np.random.RandomState(1).rand(len(y)))
    rng = np.random.RandomState(2)
    adv = np.where(poison, rng.randint(1, K, len(y)), (y + 1) % K)
    kw = dict(mean=MEAN, std=STD, boundary_distance=misleading, adv_label=torch.from_numpy(adv))
    assert auroc(poison, detector_scores(name, tiny_model(), x, y, **kw)) < BAR   # the l(x) rule is misled
    for rule in ("adv_entropy", "decisive"):
        s = detector_scores(name, tiny_model(), x, y, side_rule=rule, **kw)
        check_scores(s, len(y))
        assert auroc(poison, s) >= BAR, rule
    with pytest.raises(ConfigError, match="adversarial labels"):
        detector_scores(name, tiny_model(), x, y, mean=MEAN, std=STD, side_rule="adv_entropy")


# ------------------------------------------------------------------------------------------------
# errors

def test_unknown_detector_is_one_line_config_error():
    with pytest.raises(ConfigError) as ei:
        detector_scores("nope", None, None, torch.zeros(3), boundary_distance=torch.ones(3))
    msg = str(ei.value)
    assert "\n" not in msg and "'nope'" in msg
    for name in list_detectors():
        assert name in msg


def test_boundary_detectors_need_distances():
    for name in ("boundary", "combined"):
        with pytest.raises(ConfigError, match="boundary_distance"):
            detector_scores(name, None, None, torch.zeros(3))


def test_register_detector_adds_one_function():
    @register_detector("_test_constant", needs_boundary=False, needs_features=False)
    def _constant(ctx):
        """Every sample 0.5."""
        return torch.full((ctx.n,), 0.5, dtype=torch.float64)
    try:
        assert "_test_constant" in list_detectors()
        assert detector_scores("_test_constant", None, None, torch.zeros(4)).tolist() == [0.5] * 4
        with pytest.raises(ValueError):
            register_detector("_test_constant", needs_boundary=False, needs_features=False)(_constant)
    finally:
        DETECTORS.pop("_test_constant")


# ------------------------------------------------------------------------------------------------
# penultimate features

def test_tiny_model_features_are_the_normalised_pixels_and_mode_is_restored():
    x, _, _, _, _ = planted(0.05)
    model = tiny_model().train()
    feats = penultimate_features(model, x, mean=MEAN, std=STD, batch_size=64)
    assert model.training
    assert feats.dtype == torch.float32 and feats.shape == (len(x), D)
    assert torch.allclose(feats, ((x - MEAN[0]) / STD[0]).flatten(1), atol=1e-5)
    u8 = (x * 255).round().to(torch.uint8)
    assert torch.allclose(penultimate_features(model, u8, mean=MEAN, std=STD),
                          ((u8.float() / 255 - MEAN[0]) / STD[0]).flatten(1), atol=1e-5)


def _zoo():
    from burn_plugin.bench.models import list_models

    return [m for m in list_models() if m != "small"]  # "small" is an alias of smallresnet


# the smallest dataset image size each model runs at (28: mnist, 32: cifar/gtsrb, 64: tiny); inception_v3
# runs at none of them, 75 is the smallest torchvision allows
_SIZE = {"alexnet": 64, "inception_v3": 75, "smallresnet": 28}


@pytest.mark.parametrize("name", _zoo())
def test_penultimate_features_for_every_zoo_model(name):
    from burn_plugin.bench.models import build_model
    from burn_plugin.core.tensors import Normalize, find_classifier, logits_of

    torch.manual_seed(0)
    model = build_model(name, 10).eval()
    size = _SIZE.get(name, 32)
    mean, std = (0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)
    x = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    feats = penultimate_features(model, x, mean=mean, std=std)
    assert feats.dim() == 2 and feats.shape[0] == 2 and torch.isfinite(feats).all()
    with torch.no_grad():
        logits = logits_of(model(Normalize(mean, std)(x)))
        if name == "squeezenet1_0":  # no final Linear: the last 1x1 conv's input (1x1 map at 32 px)
            conv = model.classifier[1]
            assert feats.shape == (2, conv.in_channels)
            again = torch.relu(conv(feats[:, :, None, None])).flatten(1)
        else:
            _, lin = find_classifier(model, x)
            assert feats.shape == (2, lin.in_features)
            again = lin(feats)
    scale = float(logits.abs().max()) + 1.0
    assert torch.allclose(again, logits, rtol=1e-4, atol=1e-5 * scale)
