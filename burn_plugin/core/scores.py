"""BURN's scores, schedules and selections (paper section 5.2).

- ``BD(x) = l(x) / l_max``                      :func:`boundary_score`
- ``PD(x) = 1 - cos(f(x; theta_0), f(x; theta_t))``  :func:`prediction_divergence`
- ``S(x) = (1 - w_t) BD(x) + w_t PD(x)``         :func:`composite_score`
- linear schedules ``v_t = v_0 + t/T (v_T - v_0)`` for ``k_p``, ``k_c`` and ``w``   :func:`linear_schedule`
- top ``k_p^t`` % -> poison set (relabelled), bottom ``k_c^t`` % -> clean set (label kept)  :func:`select`
  (``clean_selection = "per_label"``: the bottom of each given label, in proportion to its size;
  ``clean_veto``: the detector's top never enters a clean set)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import ConfigError, EmptySelectionError


def linear_schedule(start: float, end: float, t: int, total: int) -> float:
    """``start + t / total * (end - start)``; ``t`` runs from 0 (phase 1) to ``total`` (last round)."""
    if total <= 0:
        return float(end)
    return float(start + (t / total) * (end - start))


def boundary_score(distance: torch.Tensor) -> torch.Tensor:
    """``BD = l / l_max`` (all zeros if every distance is zero)."""
    d = distance.double()
    m = d.max() if len(d) else torch.tensor(0.0)
    return d / m if m > 0 else torch.zeros_like(d)


def prediction_divergence(frozen: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """``PD = 1 - cos(f(x; theta_0), f(x; theta_t))`` row-wise."""
    return 1.0 - F.cosine_similarity(frozen.double(), current.double(), dim=1, eps=1e-12)


def composite_score(bd: torch.Tensor, pd: torch.Tensor, w: float) -> torch.Tensor:
    """``S = (1 - w) BD + w PD``."""
    return (1.0 - w) * bd + w * pd


def count_of(percent: float, n: int, what: str) -> int:
    """``round(percent% of n)``; zero samples is an :class:`EmptySelectionError`."""
    k = int(round(percent / 100.0 * n))
    if k <= 0:
        raise EmptySelectionError(f"{what} of {percent}% of {n} training samples is 0 samples; the training set "
                                  f"is too small for this percentage (raise it or use more data)")
    return k


@dataclass
class PoisonSelection:
    """One round's selection (positions into the training set)."""

    round: int
    poison: torch.Tensor   # top k_p: relabelled to the adversarial label
    clean: torch.Tensor    # bottom k_c: keep their label
    k_p: float
    k_c: float
    w: float


def select(score: torch.Tensor, n_poison: int, n_clean: int,
           labels: torch.Tensor | None = None, clean_score: torch.Tensor | None = None,
           veto: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the ``n_poison`` highest and ``n_clean`` lowest scores (disjoint; ties by index).

    With ``labels`` the clean set is drawn per given label, each label's lowest scores in proportion to
    its size (largest remainders fill the rounding), so that it keeps the class mix of the training
    set; the poison set is still the global top. With ``clean_score`` the clean set is the lowest of
    *that* score among the samples not in the poison set. ``veto`` (bool mask) marks samples that are
    never clean; the poison set ignores it. A label whose quota outruns its candidates gives what it has.
    """
    n = len(score)
    if n_poison + n_clean > n:
        raise ConfigError(f"k_p + k_c select {n_poison + n_clean} samples but the training set has {n}")
    order = torch.argsort(score, descending=True, stable=True)
    poison = order[:n_poison].clone()
    if not n_clean:
        return poison, order[:0].clone()
    if clean_score is None and veto is None:
        rest = order[n_poison:]
    else:
        keep = torch.ones(n, dtype=torch.bool) if veto is None else ~veto.bool()
        keep[poison] = False
        cand = torch.nonzero(keep).flatten()
        ranked = score if clean_score is None else clean_score
        rest = cand[torch.argsort(ranked[cand], descending=True, stable=True)]
        if len(rest) < n_clean:
            raise EmptySelectionError(f"clean_veto leaves {len(rest)} candidates for a clean set of {n_clean}; "
                                      f"lower clean_veto or k_cT")
    if labels is None:
        return poison, rest[len(rest) - n_clean:].flip(0).clone()
    classes, counts = torch.unique(labels, return_counts=True)
    quota = counts.double() * n_clean / n
    take = quota.floor().long()
    short = n_clean - int(take.sum())
    if short:
        take[torch.argsort(quota - take, descending=True, stable=True)[:short]] += 1
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        mine = rest[labels[rest] == c]
        picked.append(mine[len(mine) - min(k, len(mine)):].flip(0))
    return poison, torch.cat(picked)
