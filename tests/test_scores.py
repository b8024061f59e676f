"""Scores, schedules and selections on hand-made arrays (paper section 5.2)."""
import pytest
import torch

from burn_plugin.core.config import BurnConfig
from burn_plugin.core.scores import (boundary_score, composite_score, count_of, linear_schedule,
                                     prediction_divergence, select)
from burn_plugin.errors import ConfigError, EmptySelectionError


def test_paper_schedules():
    cfg = BurnConfig()
    assert (cfg.rounds, cfg.k_p0, cfg.k_pT, cfg.k_c0, cfg.k_cT, cfg.w0, cfg.wT) == (20, 0.5, 1.0, 2.5, 5.0, 0.3, 0.6)
    assert (cfg.epochs, cfg.lr, cfg.adam_betas) == (5, 5e-5, (0.9, 0.999))
    assert linear_schedule(0.5, 1.0, 0, 20) == 0.5
    assert linear_schedule(0.5, 1.0, 10, 20) == pytest.approx(0.75)
    assert linear_schedule(0.5, 1.0, 20, 20) == pytest.approx(1.0)
    assert linear_schedule(0.3, 0.6, 5, 20) == pytest.approx(0.375)
    assert linear_schedule(2.5, 5.0, 1, 20) == pytest.approx(2.625)


def test_bd_is_distance_over_max():
    bd = boundary_score(torch.tensor([1.0, 2.0, 4.0]))
    assert torch.allclose(bd, torch.tensor([0.25, 0.5, 1.0], dtype=torch.float64))
    assert torch.equal(boundary_score(torch.zeros(3)), torch.zeros(3, dtype=torch.float64))


def test_pd_is_one_minus_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    b = torch.tensor([[1.0, 0.0], [1.0, 0.0], [3.0, 0.0]])
    pd = prediction_divergence(a, b)
    assert torch.allclose(pd, torch.tensor([0.0, 1 - 2 ** -0.5, 1.0], dtype=torch.float64))


def test_composite_score_mixes():
    s = composite_score(torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0]), 0.3)
    assert torch.allclose(s, torch.tensor([0.7, 0.3]))


def test_select_top_and_bottom_disjoint_and_ordered():
    score = torch.tensor([0.5, 0.9, 0.1, 0.7, 0.3, 0.2, 0.8, 0.0])
    top, bottom = select(score, 3, 2)
    assert top.tolist() == [1, 6, 3]
    assert sorted(bottom.tolist()) == [2, 7]
    assert not set(top.tolist()) & set(bottom.tolist())
    with pytest.raises(ConfigError):
        select(score, 5, 4)


def test_counts_round_and_empty_selection_is_an_error():
    assert count_of(0.5, 60000, "k_p") == 300
    assert count_of(5.0, 60000, "k_c") == 3000
    with pytest.raises(EmptySelectionError, match="0 samples"):
        count_of(0.5, 50, "k_p")


def test_config_rejects_unknown_and_bad_values():
    with pytest.raises(ConfigError, match="'k_q0'"):
        BurnConfig.from_mapping({"k_q0": 1})
    with pytest.raises(ConfigError, match="k_p0"):
        BurnConfig.from_mapping({"k_p0": "lots"})
    with pytest.raises(ConfigError, match="pd_output"):
        BurnConfig(pd_output="features")
    with pytest.raises(ConfigError, match="w0"):
        BurnConfig(w0=1.5)
    cfg = BurnConfig.from_mapping({"rounds": "3", "augment": "false", "adam_betas": [0.8, 0.9]})
    assert (cfg.rounds, cfg.augment, cfg.adam_betas) == (3, False, (0.8, 0.9))


def test_per_label_clean_selection_keeps_the_class_mix():
    from burn_plugin.core.scores import select

    # 3 labels of 40, 40, 20 samples; every label-2 score is below every other, as a per-label detector gives
    labels = torch.tensor([0] * 40 + [1] * 40 + [2] * 20)
    score = torch.cat([torch.linspace(0.5, 1.0, 40), torch.linspace(0.4, 0.9, 40), torch.linspace(0.0, 0.1, 20)])
    poison, clean_global = select(score, 5, 10)
    assert set(labels[clean_global].tolist()) == {2}                    # the paper's global bottom: one class
    poison_pl, clean = select(score, 5, 10, labels=labels)
    assert torch.equal(poison_pl, poison)                               # the poison set is unchanged
    assert torch.bincount(labels[clean], minlength=3).tolist() == [4, 4, 2]   # 10 in proportion 40:40:20
    assert not set(clean.tolist()) & set(poison.tolist())
    for c in range(3):   # within each label: its lowest scores
        mine = clean[labels[clean] == c]
        rest = torch.tensor([i for i in range(100) if labels[i] == c and i not in set(clean.tolist())
                             and i not in set(poison.tolist())])
        assert float(score[mine].max()) <= float(score[rest].min())
    _, odd = select(score, 0, 7, labels=labels)                         # 2.8, 2.8, 1.4 -> 3, 3, 1 (largest remainders)
    assert torch.bincount(labels[odd], minlength=3).tolist() == [3, 3, 1] and len(odd) == 7


def test_select_with_its_own_clean_score():
    score = torch.tensor([0.9, 0.1, 0.5, 0.8, 0.2, 0.3])
    clean_score = torch.tensor([0.0, 0.9, 0.1, 0.2, 0.8, 0.05])   # sample 0 is lowest here, but in the poison set
    poison, clean = select(score, 2, 2, clean_score=clean_score)
    assert poison.tolist() == [0, 3]                                 # top by score
    assert clean.tolist() == [5, 2]                                  # lowest clean_score among the rest, lowest first
    assert set(poison.tolist()).isdisjoint(clean.tolist())
    # the same score for both gives the plain selection, per label too
    labels = torch.tensor([0, 0, 1, 1, 0, 1])
    for lab in (None, labels):
        a = select(score, 2, 3, labels=lab)
        b = select(score, 2, 3, labels=lab, clean_score=score)
        assert all(torch.equal(u, v) for u, v in zip(a, b))


def test_veto_keeps_suspects_out_of_every_clean_set():
    g = torch.Generator().manual_seed(3)
    score = torch.rand(200, generator=g, dtype=torch.float64)
    labels = torch.arange(200) % 4
    veto = torch.zeros(200, dtype=torch.bool)
    veto[torch.argsort(score)[:30]] = True          # the 30 lowest scores: what a plain bottom would keep
    for kw in ({}, {"labels": labels}, {"clean_score": -score}, {"labels": labels, "clean_score": score}):
        plain_poison, _ = select(score, 10, 40, **kw)
        poison, clean = select(score, 10, 40, veto=veto, **kw)
        assert torch.equal(poison, plain_poison)      # the veto never touches the poison set
        assert len(clean) == 40 and not veto[clean].any()
        assert not set(clean.tolist()) & set(poison.tolist())
    # without a veto the clean set is exactly today's
    assert torch.equal(select(score, 10, 40, veto=torch.zeros(200, dtype=torch.bool))[1], select(score, 10, 40)[1])
    # per label, the veto still leaves each label its quota when it can
    _, clean = select(score, 10, 40, labels=labels, veto=veto)
    assert torch.bincount(labels[clean], minlength=4).tolist() == [10, 10, 10, 10]
    with pytest.raises(EmptySelectionError, match="clean_veto"):
        select(score, 10, 170, veto=veto)


def test_clean_veto_is_a_percentage():
    BurnConfig(clean_veto=12.5).validate()
    for bad in (-1, 100, float("nan"), True):
        with pytest.raises(ConfigError, match="clean_veto"):
            BurnConfig(clean_veto=bad).validate()
