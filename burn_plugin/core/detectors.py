"""Poison detectors: one registry of per-sample suspicion scores that can stand where BURN uses BD.

Every detector maps (frozen model, training images ``x``, given labels ``y``) to a float64 score per
sample, higher = more likely poisoned, finite and in [0, 1] over the whole training set, so BURN can
use it wherever the paper uses ``BD = l / l_max`` (phase 1's ranking, BD in phase 2's ``S``). The
relabelling keeps using the boundary analysis's adversarial label. Re-implemented from the papers'
descriptions; no code was copied.

Usage::

    from burn_plugin.core.detectors import detector_scores, list_detectors
    s = detector_scores("activation_clustering", model, x_uint8, y, mean=mean, std=std,
                        boundary_distance=l)          # l optional here, see "cluster choice"

Detectors (``list_detectors()``)
--------------------------------
``boundary`` (default, the paper's): ``scores.boundary_score(l)`` = ``l / l_max``, bit for bit.

``spectral`` (Tran, Li & Madry 2018, Spectral Signatures). Per given label: centre the penultimate
features, take the top right singular vector ``v``, project ``p_i = (f_i - mean) . v``. Tran's score
is ``p_i^2``; centred at the label mean it is symmetric in the two groups, so it is at chance when
poison is half the label and ranks the *clean* part first when poison is the majority (the issue's
probe measured 0.52-0.56 on the demo record, where poison is about half of the target label). Here
the label is split along ``v`` (exact 1-D 2-means on ``p``), the suspect side is chosen by the
cluster rule below, and the score is the squared projection measured from the median of the other
(presumed clean) side: ``tau_i = (p_i - median_R p)^2``. When poison is a small minority this is
Tran's score with the centre moved from the label mean to the clean part's median (same order on
the poison side). Made comparable across labels by :func:`normalise_across_labels` with the
presumed-clean side as reference.

``activation_clustering`` (Chen et al. 2018). Per given label: PCA of the centred features to
``AC_DIMS`` = 10 dimensions (the paper uses ICA/PCA to 10), 2-means (k-means++, ``n_init`` 10,
seeded). Split quality = mean *simplified* silhouette ``s_i = (b_i - a_i) / max(a_i, b_i)`` with
``a_i``/``b_i`` the distances to the own/other centroid (O(n) instead of the O(n^2) full
silhouette; the same ordering for two compact clusters). Score ``w_c * m_i`` with label weight
``w_c = max(0, mean s)`` (a label with a weak split scores low everywhere) and membership in the
suspect cluster ``m_i = (1 + s_i) / 2`` inside it, ``(1 - s_i) / 2`` outside (continuous at the
cluster border).

``scan`` (Tang et al. 2021, SCAn, "Demon in the Variant"). Features ``r = mu_label + eps`` with
``eps ~ N(0, S_eps)`` shared by all labels. All features are reduced by one global PCA to
``SCAN_DIMS`` = 64 dimensions; for label ``c``, ``S_eps`` is the pooled within-label covariance of
the *other* labels (leave-one-label-out, so a label's own poison cannot hide itself; with many
samples per label this is the maximum-likelihood ``S_eps`` SCAn's EM converges to). Whitened by it,
the label is untangled into two identities by 2-means (Euclidean in whitened space = Mahalanobis
under ``S_eps``). Label statistic ``J_c = pi_1 pi_2 ||mu_1 - mu_2||^2``: the per-sample drop of the
Gaussian log-likelihood (x2) from one identity to two, SCAn's likelihood-ratio statistic under a
known ``S_eps``. Score ``J_c * P(suspect identity | r_i)``, the posterior of the two-identity model
(equal covariance, priors = identity shares).

``combined``: ``(rank(boundary) + rank(activation_clustering)) / 2`` (ranks scaled to [0, 1]).
Activation clustering is the partner because it is the only feature-space method with real-record
evidence here: the issue's probe split the target class of a Blended record into 5,984 samples that
are 99.9% poison and 5,433 that are 0.4% poison, while spectral scored 0.52-0.56.

Why SCAn rather than SPECTRE
----------------------------
SPECTRE (Hayase et al. 2021) whitens each label with a *robust* covariance estimate and scores with
QUE; the robust estimate needs the poison share as a parameter and breaks down at 50%: with 10%
all-to-one poisoning poison is about half the target label, and then SPECTRE estimates the poison's
covariance and flags the clean part. SCAn's decomposition is symmetric in the two components, so
its label statistic is as strong at 70% as at 30%; its covariance comes from the other labels, which
all-to-one attacks leave clean; it needs no poison-share parameter; and ``J_c`` is a label-level
evidence on one scale for all labels, which is exactly what ranking the whole training set needs.
It is a few d x d eigendecompositions per label in numpy.

Cluster choice (which part of a label is suspect)
-------------------------------------------------
Used by ``spectral``, ``activation_clustering`` and ``scan`` (:func:`suspect_side`).
- With boundary distances ``l(x)`` given: the part whose distances are larger on average is suspect,
  compared by mean within-label rank of ``l`` (the Mann-Whitney statistic, so a few extreme
  distances cannot decide). Why: BURN's premise is that the trigger is a robust shortcut, so a
  poisoned sample needs a larger perturbation to leave its label than a clean one; that holds per
  sample however many carry the trigger, so the rule holds for any poison share. Averaged over a
  cluster of hundreds of samples it is decisive even where ``l`` ranks single samples weakly (AUROC
  0.63 on BadNets): the tests give distances with a per-sample AUROC of 0.74-0.78 and get >= 0.95.
- Without them: the smaller part is suspect (Chen et al.'s relative size). This is right only while
  poison is under half of its label; with all-to-one poisoning at 10% it is often wrong (AUROC 0.28
  on the issue's Blended record). Pass ``boundary_distance`` whenever the boundary analysis ran.

Normalisation across labels
---------------------------
BURN ranks the whole training set, so per-label statistics must be on one scale.
:func:`normalise_across_labels` standardises each label robustly, ``z = (s - median_R) / (1.4826 MAD_R)``
with the median and MAD taken over a *reference* part of the label (default the whole label; spectral
passes the presumed-clean side, since a median taken inside a poison majority would call the poison
normal), then maps ``z`` over the whole set to [0, 1] by average rank, ``(rank - 1) / (N - 1)``
(:func:`unit_rank`). Ranks make the output scale-free and robust to huge outliers, bounded and
finite, uniform like a percentile (``l / l_max`` would let one outlier squash all other scores
towards 0 in phase 2's ``S``). ``activation_clustering`` and ``scan`` build their raw score as
label evidence x membership, already on one scale for all labels (silhouette, ``J_c`` in units of
the common ``S_eps``), and take only the rank step: a per-label z-score there would give a clean
label's arbitrary split the same weight as a real poison split.

Features: :func:`penultimate_features`, the input of the model's final ``nn.Linear`` (for a model
without one, such as SqueezeNet, the input of its last parametrised layer, averaged over space).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import BadInputError, ConfigError, ShapeMismatchError
from .scores import boundary_score
from .tensors import PixelSpaceModel, batches, find_classifier, to_float

__all__ = ["DetectorContext", "DetectorSpec", "DETECTORS", "register_detector", "list_detectors",
           "detector_scores", "penultimate_features", "normalise_across_labels", "robust_z_per_label",
           "unit_rank", "suspect_side", "COMBINED_PARTNER", "AC_DIMS", "SCAN_DIMS", "MAD_SCALE"]

#: ``1.4826 * MAD`` estimates the standard deviation of a normal sample
MAD_SCALE = 1.4826
#: mean absolute deviation -> standard deviation for a normal sample (fallback when MAD is 0)
MEAN_AD_SCALE = 1.2533
#: PCA dimensions for activation clustering (Chen et al.)
AC_DIMS = 10
#: global PCA dimensions before SCAn's covariance estimates
SCAN_DIMS = 64
#: the feature-space detector ``combined`` rank-averages with ``boundary``
COMBINED_PARTNER = "activation_clustering"
_MIN_LABEL = 4  # labels with fewer samples carry no evidence (score 0 before ranking)


# ------------------------------------------------------------------------------------------------
# penultimate features

def _last_parametrised(pm: nn.Module, example: torch.Tensor, device) -> nn.Module:
    """The parametrised leaf module that finished last in a forward pass of ``pm``."""
    order: list[nn.Module] = []
    leaves = [m for m in pm.model.modules()
              if not list(m.children()) and any(True for _ in m.parameters(recurse=False))]
    hooks = [m.register_forward_hook(lambda mod, inp, out: order.append(mod)) for m in leaves]
    try:
        with torch.no_grad():
            pm(to_float(example[:2]).to(device))
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise ShapeMismatchError(f"{type(pm.model).__name__} has no parametrised layer to take features from")
    return order[-1]


@torch.no_grad()
def penultimate_features(model: nn.Module, x: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                         batch_size: int = 256, device="cpu") -> torch.Tensor:
    """``(N, D)`` float32 on CPU: the input of ``model``'s final ``nn.Linear`` for every image of ``x``.

    ``model`` takes normalised input (as :func:`~burn_plugin.core.burn.run_burn`'s) and must already be on
    ``device``; ``x`` is ``(N, C, H, W)`` uint8 or float in [0, 1] and is normalised with ``mean``/``std``.
    The layer is the ``nn.Linear`` whose output is the logits
    (:func:`~burn_plugin.core.tensors.find_classifier`); its input is captured by a forward pre-hook in
    eval mode and flattened to 2-D. For a model that ends in no ``nn.Linear`` (SqueezeNet: a 1x1
    convolution, ReLU and average pooling) it is the input of the last parametrised layer, averaged
    over its spatial dimensions. The model's train/eval mode is restored.
    """

    pm = PixelSpaceModel(model, mean, std)
    pm.normalize.to(device)
    n = len(x)
    if n == 0:
        raise ShapeMismatchError("penultimate_features needs at least one image, got none")
    was_training = model.training
    pm.eval()  # the wrapper too: find_classifier restores the wrapper's mode, and that sets the model's
    try:
        try:
            _, layer = find_classifier(pm, x[:2], "auto", device=device)
            pool = False
        except ShapeMismatchError:
            layer, pool = _last_parametrised(pm, x, device), True
        captured: list = [None]

        def grab(mod, args):
            captured[0] = args[0]
        hook = layer.register_forward_pre_hook(grab)
        out = None
        try:
            for b in batches(n, batch_size):
                captured[0] = None
                pm(to_float(x[b]).to(device))
                f = captured[0]
                if f is None or f.shape[0] != len(b):
                    raise ShapeMismatchError(f"the feature layer of {type(model).__name__} did not see the batch "
                                             f"({None if f is None else tuple(f.shape)} for {len(b)} images)")
                f = f.mean(dim=tuple(range(2, f.dim()))) if (pool and f.dim() > 2) else f.flatten(1)
                f = f.detach().float().cpu()
                if out is None:
                    out = torch.empty(n, f.shape[1])
                out[b] = f
        finally:
            hook.remove()
    finally:
        model.train(was_training)
    return out


# ------------------------------------------------------------------------------------------------
# normalisation across labels

def _as_np(t) -> np.ndarray:
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().double().numpy()
    return np.asarray(t, dtype=np.float64)


def unit_rank(raw) -> torch.Tensor:
    """Average rank of each score over the whole set, ``(rank - 1) / (N - 1)``: float64 in [0, 1].

    Ties share their mean rank; NaN counts as the least suspicious; ``N = 1`` gives 0.
    """
    from scipy.stats import rankdata

    r = _as_np(raw).ravel().copy()
    n = len(r)
    if n <= 1:
        return torch.zeros(n, dtype=torch.float64)
    r[np.isnan(r)] = -np.inf
    return torch.from_numpy((rankdata(r, method="average") - 1.0) / (n - 1))


def _robust_location_scale(v: np.ndarray) -> tuple[float, float]:
    """``(median, 1.4826 MAD)``; the scale falls back to ``1.2533 * mean |v - median|`` when the MAD is 0
    and is 0 when the values are equal up to rounding."""
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return 0.0, 0.0
    med = float(np.median(v))
    dev = np.abs(v - med)
    scale = MAD_SCALE * float(np.median(dev))
    tiny = 1e-12 * max(abs(med), float(np.max(np.abs(v))))
    if scale <= tiny:
        scale = MEAN_AD_SCALE * float(np.mean(dev))
    return med, (scale if scale > tiny else 0.0)


def robust_z_per_label(raw, labels, *, reference=None) -> np.ndarray:
    """Per label ``(s - median_R) / (1.4826 MAD_R)`` over the label's ``reference`` samples (bool mask,
    default all). A label whose reference scores are all equal gets z = 0 there (no evidence) and
    +-inf for scores off that value."""
    s = _as_np(raw).ravel()
    y = _as_np(labels).ravel()
    ref = np.ones(len(s), dtype=bool) if reference is None else _as_np(reference).ravel().astype(bool)
    if not (len(s) == len(y) == len(ref)):
        raise ShapeMismatchError(f"scores ({len(s)}), labels ({len(y)}) and reference ({len(ref)}) differ in length")
    z = np.zeros(len(s))
    for c in np.unique(y):
        idx = y == c
        r = idx & ref
        med, scale = _robust_location_scale(s[r] if r.any() else s[idx])
        d = s[idx] - med
        if scale > 0:
            z[idx] = d / scale
        else:
            z[idx] = np.where(d > 0, np.inf, np.where(d < 0, -np.inf, 0.0))
    return z


def normalise_across_labels(raw, labels, *, reference=None) -> torch.Tensor:
    """Per-label robust z-score (:func:`robust_z_per_label`), then the global rank (:func:`unit_rank`).

    Makes per-label statistics comparable when BURN ranks the whole training set: a label whose scores
    are 1000x larger ranks like the others. float64 in [0, 1].
    """
    return unit_rank(robust_z_per_label(raw, labels, reference=reference))


# ------------------------------------------------------------------------------------------------
# cluster choice

def suspect_side(part: np.ndarray, boundary: np.ndarray | None) -> bool:
    """Whether the part ``part`` (bool mask over one label's samples) is the suspect one (else the rest).

    With ``boundary`` (the label's ``l(x)``): the part with the larger mean within-label rank of ``l``.
    Without it, or on an exact tie: the smaller part (Chen et al.'s relative size; ties -> ``part``).
    """
    part = np.asarray(part, dtype=bool)
    n_a, n_b = int(part.sum()), int((~part).sum())
    if n_a == 0 or n_b == 0:
        return n_b == 0
    if boundary is not None:
        from scipy.stats import rankdata

        b = np.asarray(boundary, dtype=np.float64).copy()
        b[np.isnan(b)] = -np.inf
        r = rankdata(b, method="average")
        ma, mb = float(r[part].mean()), float(r[~part].mean())
        if ma != mb:
            return ma > mb
    return n_a <= n_b


# ------------------------------------------------------------------------------------------------
# registry

@dataclass
class DetectorContext:
    """What a detector gets: the frozen model (normalised input), images, labels and BURN's signals.

    ``features`` is computed on first use and kept (:func:`penultimate_features`).
    """

    model: nn.Module | None
    x: torch.Tensor | None
    y: torch.Tensor
    mean: Sequence[float] = ()
    std: Sequence[float] = ()
    boundary_distance: torch.Tensor | None = None
    adv_label: torch.Tensor | None = None
    device: str | torch.device = "cpu"
    batch_size: int = 256
    seed: int = 0
    _features: torch.Tensor | None = field(default=None, repr=False)

    @property
    def features(self) -> torch.Tensor:
        if self._features is None:
            if self.model is None or self.x is None:
                raise BadInputError("this detector needs the model and the images (penultimate features)")
            self._features = penultimate_features(self.model, self.x, mean=self.mean, std=self.std,
                                                  batch_size=self.batch_size, device=self.device)
        return self._features

    @property
    def n(self) -> int:
        return len(self.y)

    def labels_np(self) -> np.ndarray:
        return self.y.detach().cpu().numpy().astype(np.int64)

    def boundary_np(self) -> np.ndarray | None:
        return None if self.boundary_distance is None else _as_np(self.boundary_distance).ravel()


@dataclass(frozen=True)
class DetectorSpec:
    name: str
    fn: Callable[[DetectorContext], torch.Tensor]
    needs_boundary: bool
    needs_features: bool

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


DETECTORS: dict[str, DetectorSpec] = {}


def register_detector(name: str, *, needs_boundary: bool, needs_features: bool):
    """Decorator: register ``fn(ctx: DetectorContext) -> scores`` (float64, length N, in [0, 1]) as ``name``."""
    def deco(fn):
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is registered twice")
        DETECTORS[name] = DetectorSpec(name, fn, bool(needs_boundary), bool(needs_features))
        return fn
    return deco


def list_detectors() -> list[str]:
    return sorted(DETECTORS)


def detector_scores(name: str, model: nn.Module | None, x: torch.Tensor | None, y: torch.Tensor, *,
                    mean: Sequence[float] = (), std: Sequence[float] = (),
                    boundary_distance: torch.Tensor | None = None, adv_label: torch.Tensor | None = None,
                    device="cpu", batch_size: int = 256, seed: int = 0,
                    features: torch.Tensor | None = None) -> torch.Tensor:
    """Suspicion score of every training sample under detector ``name``: float64 ``(N,)`` in [0, 1],
    higher = more likely poisoned.

    ``model`` takes normalised input (``mean``/``std``) and is on ``device``; ``x`` the ``(N, C, H, W)``
    images (uint8 or float in [0, 1]); ``y`` the given labels; ``boundary_distance`` the boundary
    analysis's ``l(x)`` (required by ``boundary`` and ``combined``; the feature detectors use it to
    choose the suspect part of a label when given); ``features`` precomputed
    :func:`penultimate_features` (skips the forward passes). An unknown name is a
    :class:`~burn_plugin.errors.ConfigError` listing the known ones.
    """
    spec = DETECTORS.get(name)
    if spec is None:
        raise ConfigError(f"unknown detector {name!r}; choose one of: {', '.join(list_detectors())}")
    y = torch.as_tensor(y).reshape(-1).long()
    n = len(y)
    if x is not None and len(x) != n:
        raise ShapeMismatchError(f"{len(x)} images but {n} labels")
    if boundary_distance is not None:
        boundary_distance = torch.as_tensor(boundary_distance).reshape(-1)
        if len(boundary_distance) != n:
            raise ShapeMismatchError(f"{len(boundary_distance)} boundary distances but {n} labels")
    elif spec.needs_boundary:
        raise ConfigError(f"detector {name!r} needs the boundary distances l(x); run the boundary analysis and "
                          f"pass boundary_distance")
    if features is not None and len(features) != n:
        raise ShapeMismatchError(f"{len(features)} feature rows but {n} labels")
    ctx = DetectorContext(model, x, y, mean, std, boundary_distance, adv_label, device, batch_size, seed,
                          None if features is None else torch.as_tensor(features).float().reshape(n, -1))
    s = torch.as_tensor(spec.fn(ctx)).reshape(-1)
    if s.dtype != torch.float64:
        s = s.double()
    if len(s) != n or not bool(torch.isfinite(s).all()) or (n and (s.min() < 0 or s.max() > 1)):
        raise BadInputError(f"detector {name!r} gave scores outside [0, 1] or not finite (boundary distances "
                            f"must be finite and >= 0)")
    return s


# ------------------------------------------------------------------------------------------------
# detectors

def _f64(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _pca(a: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Rows of ``a`` (centred here) projected on their top ``k`` principal directions (exact SVD when small)."""
    a = a - a.mean(axis=0)
    k = max(1, min(k, a.shape[0], a.shape[1]))
    if min(a.shape) <= 512:
        _, _, vt = np.linalg.svd(a, full_matrices=False)
    else:
        from sklearn.utils.extmath import randomized_svd

        _, _, vt = randomized_svd(a, k, n_iter=7, random_state=seed)
    return a @ vt[:k].T


def _two_means(z: np.ndarray, seed: int) -> np.ndarray | None:
    """2-means labels (bool, True = cluster 1) or None when the rows have fewer than 2 distinct values."""
    from sklearn.cluster import KMeans

    if len(z) < 2 or np.allclose(z, z[0]):
        return None
    km = KMeans(n_clusters=2, n_init=10, random_state=seed).fit(z)
    lab = km.labels_.astype(bool)
    return lab if 0 < lab.sum() < len(lab) else None


def _split_1d(p: np.ndarray) -> np.ndarray | None:
    """Exact 1-D 2-means: the threshold on sorted ``p`` with the least within-group sum of squares."""
    n = len(p)
    if n < 2:
        return None
    order = np.argsort(p, kind="stable")
    s = p[order]
    if s[0] == s[-1]:
        return None
    c1, c2 = np.cumsum(s), np.cumsum(s * s)
    k = np.arange(1, n)  # left group = first k
    left = c2[k - 1] - c1[k - 1] ** 2 / k
    rs, rs2 = c1[-1] - c1[k - 1], c2[-1] - c2[k - 1]
    right = rs2 - rs ** 2 / (n - k)
    cost = left + right
    cost[s[k - 1] == s[k]] = np.inf  # never split between equal values
    j = int(np.argmin(cost)) + 1
    upper = np.zeros(n, dtype=bool)
    upper[order[j:]] = True
    return upper


def _label_groups(ctx: DetectorContext):
    y = ctx.labels_np()
    bd = ctx.boundary_np()
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        yield idx, (None if bd is None else bd[idx])


@register_detector("boundary", needs_boundary=True, needs_features=False)
def _boundary(ctx: DetectorContext) -> torch.Tensor:
    """The paper's BD = l(x) / l_max (scores.boundary_score), bit for bit."""
    return boundary_score(ctx.boundary_distance)


@register_detector("spectral", needs_boundary=False, needs_features=True)
def _spectral(ctx: DetectorContext) -> torch.Tensor:
    """Spectral signatures: squared projection on the label's top singular vector, from its clean part."""
    f = _f64(ctx.features)
    raw = np.zeros(ctx.n)
    ref = np.ones(ctx.n, dtype=bool)
    for idx, bd in _label_groups(ctx):
        if len(idx) < _MIN_LABEL:
            continue
        a = f[idx] - f[idx].mean(axis=0)
        if not np.any(a):
            continue
        if min(a.shape) <= 512:
            _, _, vt = np.linalg.svd(a, full_matrices=False)
        else:
            from sklearn.utils.extmath import randomized_svd

            _, _, vt = randomized_svd(a, 1, n_iter=7, random_state=ctx.seed)
        p = a @ vt[0]
        upper = _split_1d(p)
        if upper is None:
            continue
        suspect = upper if suspect_side(upper, bd) else ~upper
        clean = ~suspect
        raw[idx] = (p - np.median(p[clean])) ** 2
        ref[idx] = clean
    return normalise_across_labels(raw, ctx.labels_np(), reference=ref)


@register_detector("activation_clustering", needs_boundary=False, needs_features=True)
def _activation_clustering(ctx: DetectorContext) -> torch.Tensor:
    """Activation clustering: 2-means on 10 PCA components per label, weighted by the split's silhouette."""
    f = _f64(ctx.features)
    raw = np.zeros(ctx.n)
    for idx, bd in _label_groups(ctx):
        if len(idx) < _MIN_LABEL:
            continue
        z = _pca(f[idx], AC_DIMS, ctx.seed)
        lab = _two_means(z, ctx.seed)
        if lab is None:
            continue
        cent = np.stack([z[~lab].mean(axis=0), z[lab].mean(axis=0)])
        own = np.linalg.norm(z - cent[lab.astype(int)], axis=1)
        other = np.linalg.norm(z - cent[1 - lab.astype(int)], axis=1)
        den = np.maximum(own, other)
        sil = np.divide(other - own, den, out=np.zeros_like(den), where=den > 0)
        w = max(0.0, float(sil.mean()))
        suspect = lab if suspect_side(lab, bd) else ~lab
        raw[idx] = w * np.where(suspect, 1.0 + sil, 1.0 - sil) / 2.0
    return unit_rank(raw)


def _whitener(cov: np.ndarray) -> np.ndarray:
    """``W`` with ``W^T cov W = I`` (eigenvalues floored at 1e-6 of their mean)."""
    ev, vec = np.linalg.eigh((cov + cov.T) / 2)
    floor = 1e-6 * max(float(ev.mean()), 1e-300)
    return vec / np.sqrt(np.maximum(ev, floor))


@register_detector("scan", needs_boundary=False, needs_features=True)
def _scan(ctx: DetectorContext) -> torch.Tensor:
    """SCAn: two-identity untangling per label under the other labels' within-label covariance."""
    f = _f64(ctx.features)
    y = ctx.labels_np()
    z = _pca(f, SCAN_DIMS, ctx.seed)
    d = z.shape[1]
    groups = list(_label_groups(ctx))
    scatter, means = {}, {}
    for idx, _ in groups:
        means[idx[0]] = z[idx].mean(axis=0)
        r = z[idx] - means[idx[0]]
        scatter[idx[0]] = r.T @ r
    total = sum(scatter.values()) if scatter else np.zeros((d, d))
    k = len(groups)
    raw = np.zeros(ctx.n)
    for idx, bd in groups:
        n_c = len(idx)
        if n_c < _MIN_LABEL:
            continue
        dof = len(y) - n_c - (k - 1)
        if k > 1 and dof > 0:
            cov = (total - scatter[idx[0]]) / dof
        else:
            cov = scatter[idx[0]] / max(n_c - 1, 1)
        u = (z[idx] - means[idx[0]]) @ _whitener(cov)
        lab = _two_means(u, ctx.seed)
        if lab is None:
            continue
        suspect = lab if suspect_side(lab, bd) else ~lab
        mu_s, mu_o = u[suspect].mean(axis=0), u[~suspect].mean(axis=0)
        pi_s = float(suspect.mean())
        j = pi_s * (1.0 - pi_s) * float(np.sum((mu_s - mu_o) ** 2))
        logit = (u - (mu_s + mu_o) / 2) @ (mu_s - mu_o) + np.log(pi_s / (1.0 - pi_s))
        post = 0.5 * (1.0 + np.tanh(logit / 2.0))  # the logistic function without overflow
        raw[idx] = j * post
    return unit_rank(raw)


@register_detector("combined", needs_boundary=True, needs_features=True)
def _combined(ctx: DetectorContext) -> torch.Tensor:
    """Rank average of boundary and activation_clustering."""
    partner = DETECTORS[COMBINED_PARTNER].fn(ctx)
    return (unit_rank(boundary_score(ctx.boundary_distance)) + unit_rank(partner)) / 2.0
