"""Detectors that read the model itself (core/detectors.py: disagreement, ibd_psc, flare) and the
detection model that run_burn trains for them (BurnConfig.detection_model).

The models are built by hand so that what each detector must find follows from the algebra, not from a
training run: the planted groups are ranked first by construction, on any CPU and thread count.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn
from sklearn.metrics import roc_auc_score

from burn_plugin.core.burn import BurnData, analyse_boundary, result_key, run_burn
from burn_plugin.core.config import BurnConfig
from burn_plugin.core.detectors import (DETECTORS, abnormal_activations, check_detector_fits, detector_scores,
                                        disagreement_evidence, flare_split, ibd_psc, list_detectors)
from burn_plugin.errors import ConfigError


def auroc(flags, s) -> float:
    return float(roc_auc_score(flags, np.asarray(s)))


def check_scores(s: torch.Tensor, n: int) -> None:
    assert s.dtype == torch.float64 and s.shape == (n,)
    assert torch.isfinite(s).all() and s.min() >= 0 and s.max() <= 1


def test_registry_knows_the_model_detectors():
    for name in ("disagreement", "ibd_psc", "flare"):
        assert name in list_detectors() and DETECTORS[name].summary
        assert not DETECTORS[name].needs_boundary and not DETECTORS[name].needs_features
    assert DETECTORS["ibd_psc"].needs_batchnorm == "affine" and DETECTORS["flare"].needs_batchnorm == "statistics"
    assert not DETECTORS["disagreement"].needs_batchnorm and not DETECTORS["boundary"].needs_batchnorm


# ------------------------------------------------------------------------------------------------
# disagreement: two hand-made models read their logits straight from the pixels

K, PER = 5, 200
DMEAN, DSTD = (0.5,), (0.05,)        # pixel 0.5 + 0.05 * logit  <->  logit


def _head(first: bool) -> nn.Module:
    """Flatten -> Linear(2K -> K) that picks the first (detection) or the last (infected) K inputs."""
    lin = nn.Linear(2 * K, K, bias=False)
    with torch.no_grad():
        lin.weight.zero_()
        cols = slice(0, K) if first else slice(K, 2 * K)
        lin.weight[:, cols] = torch.eye(K)
    return nn.Sequential(nn.Flatten(), lin).eval()


def _logit_images(det: np.ndarray, inf: np.ndarray) -> torch.Tensor:
    z = np.concatenate([det, inf], axis=1)
    assert np.abs(z).max() < 10          # the pixels stay inside [0, 1]
    return torch.from_numpy((DMEAN[0] + DSTD[0] * z).reshape(len(z), 1, 1, 2 * K).astype(np.float32))


def disagreement_data(mode: str, share: float = 0.3, seed: int = 0):
    """``(x, y, poison)``. ``high``: the detection model predicts the poison's true class (it did not learn
    the trigger) while the infected model fits the target; ``low``: the detection model fits the poison
    (the trigger) confidently and the clean data only weakly. Clean data: the infected model fits it."""
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(K), PER)
    orig = y.copy()
    poison = np.zeros(len(y), dtype=bool)
    idx = np.flatnonzero(y == 0)[:int(round(share * PER))]
    poison[idx] = True
    orig[idx] = 1 + np.arange(len(idx)) % (K - 1)          # their true classes
    eye = np.eye(K)
    inf = 5.0 * eye[y] + rng.normal(0, 0.5, (len(y), K))
    if mode == "high":
        det = 3.0 * eye[orig] + rng.normal(0, 1.0, (len(y), K))   # clean: fits y (= orig); poison: its true class
    else:
        det = 1.0 * eye[y] + rng.normal(0, 1.0, (len(y), K))
        det[poison] = 6.0 * eye[0] + rng.normal(0, 0.5, (int(poison.sum()), K))
    return _logit_images(det, inf), torch.from_numpy(y), poison


@pytest.mark.parametrize("share", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("mode", ["high", "low"])
def test_disagreement_picks_the_suspect_side_from_the_data(mode, share):
    x, y, poison = disagreement_data(mode, share)
    s = detector_scores("disagreement", _head(True), x, y, mean=DMEAN, std=DSTD, reference_model=_head(False))
    check_scores(s, len(y))
    assert auroc(poison, s) >= 0.95
    # the side really came from the evidence: the other side ranks the poison last
    p_det = torch.softmax(_head(True)(((x - 0.5) / 0.05)).double(), 1).gather(1, y[:, None])[:, 0].detach()
    p_inf = torch.softmax(_head(False)(((x - 0.5) / 0.05)).double(), 1).gather(1, y[:, None])[:, 0].detach()
    e = disagreement_evidence(p_det, p_inf, y)
    assert (e > 0) == (mode == "high")
    assert auroc(poison, (1 - p_det) if mode == "low" else p_det) < 0.05


def test_disagreement_without_a_second_model_ranks_the_models_own_fit():
    """The infected model as detection model: d = 0, evidence 0, and the low-loss side (poison fitted best)."""
    x, y, poison = disagreement_data("low")
    det = _head(True)
    a = detector_scores("disagreement", det, x, y, mean=DMEAN, std=DSTD)
    b = detector_scores("disagreement", det, x, y, mean=DMEAN, std=DSTD, reference_model=det)
    assert torch.equal(a, b) and auroc(poison, a) >= 0.95
    assert disagreement_evidence(np.full(7, 0.3), np.full(7, 0.3), np.zeros(7)) == 0.0


def test_disagreement_evidence_by_hand():
    # label 0: three samples at d = 0.9 and seven at 0; label 1: ten at 0. median 0.
    # label 0 splits into {0.9 x3} (departure 0.9) and {0 x7}; label 1 does not split (one value).
    p_inf = np.ones(20)
    p_det = 1 - np.array([0.9] * 3 + [0.0] * 17)
    y = np.array([0] * 10 + [1] * 10)
    assert abs(disagreement_evidence(p_det, p_inf, y) - 3 * 0.81 / 20) < 1e-12
    # the mirror image (a coherent group the detection model fits better than the infected one) is negative
    assert abs(disagreement_evidence(p_inf, p_det, y) + 3 * 0.81 / 20) < 1e-12
    # a label spread evenly on both sides of the median: its two parts cancel
    d = np.array([-0.2, -0.2, 0.2, 0.2, 0.0, 0.0, 0.0, 0.0])
    assert abs(disagreement_evidence(-d, np.zeros(8), np.array([0, 0, 0, 0, 1, 1, 1, 1]))) < 1e-12


# ------------------------------------------------------------------------------------------------
# IBD-PSC on a hand-made network with three batch-norm layers
#
# Channels 0..3 carry the class evidence f (identity everywhere); channel 4 is a "ghost" logit. BN2 puts
# the constant c on channel 4 (gamma 0, beta c) and BN3 takes it away again (running mean c), so the
# unamplified ghost logit is 0. Amplifying the last i layers by omega:
#   i = 1 (BN3):        class logits omega f,    ghost omega (c - c) = 0          -> no prediction changes
#   i = 2 (BN2, BN3):   class logits omega^2 f,  ghost omega (omega c - c)        -> flips iff max f < (omega-1) c / omega
#   i = 3 (all):        class logits omega^3 f,  ghost omega (omega - 1) c        -> flips iff max f < (omega-1) c / omega^2
# With omega = 1.5 and c = 15 the thresholds are 5 and 3.33: clean samples (max f about 2-3) flip at i = 2,
# poisoned ones (f_0 >= 8) never do. Algorithm 1 stops at k = 2 (eta(1) = 0, eta(2) = the clean share).

IMEAN, ISTD = (0.0,), (0.08,)     # pixel 0.08 * f  <->  f in [0, 12.5]
OMEGA, C = 1.5, 15.0


def ibd_model(c: float = C) -> nn.Module:
    torch.manual_seed(0)
    d = 5
    layers: list[nn.Module] = [nn.Flatten()]
    for j in range(3):
        lin = nn.Linear(d, d, bias=False)
        bn = nn.BatchNorm1d(d, eps=0.0)
        with torch.no_grad():
            lin.weight.copy_(torch.eye(d))
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0)
            bn.weight.fill_(1.0)
            bn.bias.zero_()
            if j == 0:
                bn.weight[4] = 0.0
            if j == 1:
                bn.weight[4], bn.bias[4] = 0.0, c
            if j == 2:
                bn.running_mean[4] = c
        layers += [lin, bn, nn.ReLU()]
    head = nn.Linear(d, d, bias=False)
    with torch.no_grad():
        head.weight.copy_(torch.eye(d))
    return nn.Sequential(*layers, head).double().eval()


def ibd_data(n_per=200, share=0.1, seed=0):
    rng = np.random.RandomState(seed)
    y = np.repeat(np.arange(4), n_per)
    f = np.zeros((len(y), 5))
    f[np.arange(len(y)), y] = 2.0
    f[:, :4] += 0.5 * np.abs(rng.normal(0, 1, (len(y), 4)))
    poison = np.zeros(len(y), dtype=bool)
    poison[rng.choice(np.flatnonzero(y != 0), int(share * len(y)), replace=False)] = True
    f[poison, 0] += 8.0
    y[poison] = 0
    x = np.clip(f * ISTD[0], 0, 1).reshape(len(y), 1, 1, 5)
    return torch.from_numpy(x), torch.from_numpy(y), poison, np.clip(f, 0, 1 / ISTD[0])


def _softmax_np(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def test_ibd_psc_follows_its_equations_on_the_hand_model():
    x, y, poison, f = ibd_data()
    model = ibd_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = ibd_psc(model, x, mean=IMEAN, std=ISTD)
    assert res.layers == 3
    assert res.error_rates[0] == 0.0                                  # pure scaling: nothing flips
    assert abs(res.error_rates[1] - (1 - poison.mean())) < 1e-12      # every clean sample flips, no poison
    assert res.start == 2 and len(res.error_rates) == 2               # k = min{i : eta(i) > 0.6} (Eq. 3)
    assert res.members == [2, 3]                                      # Eq. 4: k .. k+n-1, clamped at L = 3
    # PSC by hand from the closed form above
    y0 = f[:, :4].argmax(1)
    ghost = OMEGA * (OMEGA - 1) * C
    psc = np.zeros(len(f))
    for i in (2, 3):
        logits = np.concatenate([OMEGA ** i * f[:, :4], np.full((len(f), 1), ghost)], axis=1)
        psc += _softmax_np(logits)[np.arange(len(f)), y0] / 2
    # float32 logits (|logit| < 60): rounding below 1e-5 in every probability
    assert np.abs(res.psc - psc).max() < 1e-5
    assert res.psc[poison].min() > 0.99 and res.psc[~poison].max() < 0.5
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k                           # the model is restored exactly


def test_ibd_psc_ranks_the_planted_group_first():
    x, y, poison, _ = ibd_data(share=0.1)
    s = detector_scores("ibd_psc", ibd_model(), x, y, mean=IMEAN, std=ISTD)
    check_scores(s, len(y))
    assert auroc(poison, s) == 1.0


def test_ibd_psc_without_a_crossing_takes_all_layers():
    """No amplification depth breaks the clean predictions (c = 0: pure scaling): k = L, one member, no None."""
    x, _, _, _ = ibd_data()
    res = ibd_psc(ibd_model(c=0.0), x, mean=IMEAN, std=ISTD)
    assert res.error_rates == [0.0, 0.0, 0.0] and res.start == 3 and res.members == [3]
    assert np.isfinite(res.psc).all()


def test_ibd_psc_reference_subset_and_threshold():
    x, _, poison, _ = ibd_data()
    clean_only = torch.from_numpy(np.flatnonzero(~poison)[:50])
    res = ibd_psc(ibd_model(), x, mean=IMEAN, std=ISTD, reference=clean_only)
    assert res.error_rates == [0.0, 1.0] and res.start == 2
    # with xi above every error rate Algorithm 1 runs to L
    res = ibd_psc(ibd_model(), x, mean=IMEAN, std=ISTD, xi=1.0)
    assert res.start == 3 and len(res.error_rates) == 3


# ------------------------------------------------------------------------------------------------
# FLARE on a hand-made network with two batch-norm layers

FMEAN, FSTD = (0.5,), (0.05,)
D_F, TRIGGER = 8, 5


def flare_model_and_data(share=0.1, seed=0):
    """Class evidence plus noise in 8 channels; the planted group (all-to-all: its labels are spread over
    every class) carries one trigger in channel 5, far outside the running statistics and nearly the
    same in every sample. The running statistics are the clean samples' (as a trained model's are,
    mostly)."""
    rng = np.random.RandomState(seed)
    n = 4 * 200
    y = np.repeat(np.arange(4), 200)
    f = rng.normal(0, 1, (n, D_F))
    f[np.arange(n), y] += 1.5
    poison = np.zeros(n, dtype=bool)
    poison[rng.choice(n, int(share * n), replace=False)] = True
    f[poison, TRIGGER] = 7.0 + rng.normal(0, 0.1, int(poison.sum()))
    y[poison] = (y[poison] + 1) % 4
    x = torch.from_numpy(np.clip(FMEAN[0] + FSTD[0] * f, 0, 1).reshape(n, 1, 1, D_F).astype(np.float32))
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(D_F, D_F, bias=False), nn.Linear(D_F, D_F, bias=False)
    with torch.no_grad():
        lin1.weight.copy_(torch.eye(D_F))
        lin2.weight.copy_(torch.eye(D_F))
    bn1, bn2 = nn.BatchNorm1d(D_F, momentum=None), nn.BatchNorm1d(D_F, momentum=None)
    model = nn.Sequential(nn.Flatten(), lin1, bn1, nn.ReLU(), lin2, bn2, nn.ReLU(), nn.Linear(D_F, 4))
    model.train()
    with torch.no_grad():                 # running statistics = the clean samples' (cumulative average)
        model((x[torch.from_numpy(~poison)] - FMEAN[0]) / FSTD[0])
    return model.eval(), x, torch.from_numpy(y), poison


def test_flare_ranks_the_planted_group_first():
    model, x, y, poison = flare_model_and_data()
    s = detector_scores("flare", model, x, y, mean=FMEAN, std=FSTD)
    check_scores(s, len(y))
    assert auroc(poison, s) == 1.0
    rep = abnormal_activations(model, x, mean=FMEAN, std=FSTD)
    assert rep.shape == (len(y), 2)
    assert (rep[poison].min(axis=0) > rep[~poison].max(axis=0)).all()    # abnormal in both layers


def test_abnormal_activation_by_hand():
    model, x, _, _ = flare_model_and_data()
    rep = abnormal_activations(model, x[:3], mean=FMEAN, std=FSTD)
    bn1 = model[2]
    a = ((x[:3] - FMEAN[0]) / FSTD[0]).flatten(1).double()
    z = (a - bn1.running_mean.double()) / torch.sqrt(bn1.running_var.double() + bn1.eps)
    assert np.allclose(rep[:, 0], z.abs().max(1).values.numpy(), rtol=1e-5, atol=1e-5)


def test_flare_tries_every_layer_range():
    """Shallow layers split the clean data (a content feature: 30% of it far out, farther than the group); only the deep layers show
    the planted group. A loop that stopped at the full range would cut the clean data; the full loop finds
    the group."""
    rng = np.random.RandomState(0)
    n, big_l = 1000, 6
    poison = np.zeros(n, dtype=bool)
    poison[:100] = True
    content = (rng.rand(n) < 0.3) & ~poison
    rep = rng.normal(0, 1, (n, big_l))
    rep[content, :3] += 12.0
    rep[poison, :3] = rng.normal(0, 0.2, (100, 3))
    rep[poison, 3:] = 10.0 + rng.normal(0, 0.2, (100, 3))
    res = flare_split(rep, seed=0)
    assert len(res.qualities) == big_l and res.start >= 3
    assert np.array_equal(res.suspect, poison)
    assert auroc(poison, res.score) == 1.0
    # the full range (start 0) on its own cuts along the clean content feature, not the planted group
    from burn_plugin.core.detectors import _standardise_columns, _two_means

    lab = _two_means(_standardise_columns(rep), 0)
    assert not (np.array_equal(lab, poison) or np.array_equal(~lab, poison))


def test_flare_suspects_the_smaller_cluster_even_when_it_is_the_looser_one():
    """A planted group that varies more than the clean majority (the BadNets case where the old 'tighter
    cluster' rule chose the clean side and ranked the group last)."""
    rng = np.random.RandomState(1)
    poison = np.zeros(1000, dtype=bool)
    poison[:150] = True
    rep = rng.normal(0, 0.3, (1000, 4))
    rep[poison] = 8.0 + rng.normal(0, 1.0, (150, 4))
    res = flare_split(rep, seed=0)
    assert np.array_equal(res.suspect, poison) and auroc(poison, res.score) == 1.0


# ------------------------------------------------------------------------------------------------
# a model without batch norm: one line naming the detectors that fit

@pytest.mark.parametrize("name", ["ibd_psc", "flare"])
def test_batchnorm_detectors_refuse_a_model_without_batchnorm(name):
    x, y, _ = disagreement_data("high")
    with pytest.raises(ConfigError) as ei:
        detector_scores(name, _head(True), x, y, mean=DMEAN, std=DSTD)
    msg = str(ei.value)
    assert "\n" not in msg and name in msg and "batch-norm" in msg
    fit = msg.split("fit this model:")[1]
    for other in ("boundary", "spectral", "disagreement"):
        assert other in fit
    assert "ibd_psc" not in fit and "flare" not in fit


def test_ibd_psc_needs_affine_batchnorm_flare_does_not():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 4), nn.BatchNorm1d(4, affine=False), nn.Linear(4, 2))
    with pytest.raises(ConfigError, match="scale and shift"):
        check_detector_fits("ibd_psc", model)
    check_detector_fits("flare", model)
    check_detector_fits("boundary", _head(True))


# ------------------------------------------------------------------------------------------------
# run_burn with a detection model

@pytest.fixture(scope="module")
def small_problem():
    from conftest import burn_problem

    return burn_problem(96)


def cfg(**kw):
    base = dict(rounds=1, epochs=1, k_p0=5, k_pT=10, k_c0=10, k_cT=20, batch_size=32, boundary_batch_size=64,
                max_iter=5, lr=1e-3, detection_epochs=1, detection_lr=0.01)
    base.update(kw)
    return BurnConfig(**base)


class DictCache:
    def __init__(self):
        self.store, self.gets = {}, 0

    def get(self, key):
        self.gets += 1
        return self.store.get(key)

    def put(self, key, value):
        self.store[key] = value


def _same_result(a, b):
    assert torch.equal(a.boundary.distance, b.boundary.distance) and torch.equal(a.bd, b.bd)
    assert torch.equal(a.final_score, b.final_score) and torch.equal(a.final_pd, b.final_pd)
    for sa, sb in zip(a.selections, b.selections):
        assert torch.equal(sa.poison, sb.poison) and torch.equal(sa.clean, sb.clean)
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert sorted(a.timings) == sorted(b.timings)


@pytest.mark.parametrize("detector", ["boundary", "spectral"])
def test_detection_model_infected_is_todays_default_bit_for_bit(small_problem, detector):
    model, data = small_problem
    default = BurnConfig(**{k: v for k, v in cfg(detector=detector).to_dict().items()
                            if not k.startswith("detection") and k != "sam_rho"})
    explicit = cfg(detector=detector, detection_model="infected", detection_epochs=7, detection_lr=0.5, sam_rho=0.3)
    a = run_burn(copy.deepcopy(model), data, default, progress=False)
    b = run_burn(copy.deepcopy(model), data, explicit, progress=False)
    _same_result(a, b)
    assert "detection_model_s" not in a.timings
    # the idle detection settings leave the run key (and so checkpoints) as they were
    assert result_key(model, data, default) == result_key(model, data, explicit)


def test_sam_detection_model_looks_while_the_infected_model_is_repaired(small_problem):
    model, data = small_problem
    cache = DictCache()
    # no fine-tuning at all (epochs 0): the repaired model must come back as the infected one, untouched
    inf = run_burn(copy.deepcopy(model), data, cfg(rounds=0, epochs=0), progress=False, cache=cache)
    sam = run_burn(copy.deepcopy(model), data, cfg(rounds=0, epochs=0, detection_model="sam"), progress=False,
                   cache=cache)
    assert "detection_model_s" in sam.timings and sam.timings["detection_model_s"] > 0
    assert len(cache.store) == 2                      # the infected model's analysis was not reused
    assert not torch.equal(inf.boundary.distance, sam.boundary.distance)
    ref = model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in sam.model.state_dict().items())
    again = run_burn(copy.deepcopy(model), data, cfg(rounds=0, epochs=0, detection_model="sam"), progress=False,
                     cache=cache)
    assert len(cache.store) == 2 and torch.equal(again.boundary.distance, sam.boundary.distance)


def test_boundary_cache_key_names_the_detection_model(small_problem):
    model, data = small_problem
    keys = {}
    for name, c in {"infected": cfg(), "sgd": cfg(detection_model="sgd"), "sam": cfg(detection_model="sam"),
                    "sam_rho": cfg(detection_model="sam", sam_rho=0.2),
                    "sgd_rho": cfg(detection_model="sgd", sam_rho=0.2)}.items():
        cache = DictCache()
        analyse_boundary(copy.deepcopy(model).eval(), data, c, cache=cache)
        (keys[name],) = cache.store
    assert len({keys["infected"], keys["sgd"], keys["sam"], keys["sam_rho"]}) == 4
    assert keys["sgd"] == keys["sgd_rho"]             # rho does not shape an SGD detection model


@pytest.mark.parametrize("detection", ["sgd", "sam_scratch"])
def test_detectors_read_the_detection_model(small_problem, detection):
    model, data = small_problem
    res = run_burn(copy.deepcopy(model), data, cfg(detector="disagreement", detection_model=detection),
                   progress=False)
    check_scores(res.bd, len(data))
    assert res.detector == "disagreement" and len(res.history) == 2


def test_a_batchnorm_detector_on_a_model_without_batchnorm_stops_before_any_work():
    x, y, _ = disagreement_data("high")
    cache = DictCache()
    data = BurnData(x, y, DMEAN, DSTD)
    with pytest.raises(ConfigError, match="ibd_psc needs batch-norm"):
        run_burn(_head(True), data, cfg(detector="ibd_psc"), progress=False, cache=cache)
    assert cache.gets == 0


# ------------------------------------------------------------------------------------------------
# the settings

def test_detection_settings_are_checked_up_front():
    c = BurnConfig()
    assert (c.detection_model, c.detection_epochs, c.detection_lr, c.sam_rho) == ("infected", 2, 0.01, 0.1)
    for key in ("detection_model", "detection_epochs", "detection_lr", "sam_rho"):
        assert BurnConfig._HELP[key]
    for bad, match in (({"detection_model": "adam"}, "infected, sgd, sam, sam_scratch"),
                       ({"detection_epochs": 0}, "detection_epochs must be an integer >= 1"),
                       ({"detection_lr": 0.0}, "detection_lr must be > 0"),
                       ({"sam_rho": -0.1}, "sam_rho must be >= 0"),
                       ({"sam_rho": float("nan")}, "sam_rho"),
                       ({"detection_model": "sam", "distance_model": "current"}, "distance_model: frozen")):
        with pytest.raises(ConfigError, match=match):
            BurnConfig(**bad)
    assert BurnConfig.from_mapping({"detection_epochs": "1e1", "detection_model": "sam_scratch"}).detection_epochs == 10
    with pytest.raises(ConfigError, match="at most 10,000"):
        BurnConfig.from_mapping({"detection_epochs": "1e23"})
