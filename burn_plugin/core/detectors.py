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

Detectors that read the model itself
------------------------------------
These look at the *detection model* (``BurnConfig.detection_model``: the infected model by default,
or a copy trained further with SGD or SAM, or a SAM model trained from scratch; ``core/sam.py``).

``disagreement``: the detection model's ``u_i = 1 - p_det(y_i | x_i)`` on every training sample, ranked
from the suspect side. Which side is suspect depends on how the detection model met the poison: one
that refuses to fit the trigger (SAM is meant to) gives poison a *high* loss, one that fits the
shortcut before the clean features gives it a *low* loss. The side is read from unlabelled evidence
(:func:`disagreement_evidence`): ``d_i = p_inf(y_i) - p_det(y_i)``, how much less the detection model
agrees with the given label than the infected model; each label is split in two along ``d``, and a
coherent part whose mean ``d`` lies far above the whole set's median votes "high loss", far below
"low loss" (weighted by its size and squared departure; a label without a coherent group splits
into two parts on either side of the median, whose votes cancel). With the infected model as the
detection model ``d = 0``, and the low side is used: the infected model's own loss, lowest on the
samples it fitted most readily (the poison, Li et al. 2021's ABL premise).

``ibd_psc`` (Hou et al., ICML 2024, IBD-PSC). The learnt scale and shift of the last ``i`` batch-norm
layers (execution order, nearest the head first) are multiplied by ``omega = 1.5`` (Eq. 2); a
poisoned input keeps its prediction under this amplification, a clean one loses it. Layer selection
(Eq. 3, Algorithm 1): ``k`` is the smallest ``i in 1..L`` whose error rate ``eta(i)`` exceeds ``xi =
0.6``, and ``L`` when none does; the score (Eq. 4) is the mean probability of the unamplified
prediction under ``F_k .. F_{k+n-1}``, ``n = 5`` (those up to ``L``). Taken from the equations, not
from the released code (which, as the issue reports, starts its ensemble one layer deeper than Eq. (4)
and can return ``None`` for ``k``). No clean data: ``eta`` is measured on up to
``IBD_REFERENCE`` = 2000 training images (a seeded subset) against the unamplified prediction instead
of a true label; poison is a minority there and keeps its prediction, so it can only lower ``eta``
by its share. Needs batch-norm layers with affine parameters.

``flare`` (Hou et al., TIFS 2025, FLARE; written from the paper's abstract and the issue's account,
the method section was not available). Per batch-norm layer and sample, the most abnormal activation
of the layer's input against its running statistics, ``max |a - mu| / sqrt(var + eps)``
(:func:`abnormal_activations`); each layer's column robustly standardised over the training set, so
every layer weighs alike; the *whole* training set (not per label: all-to-all and untargeted attacks
spread their poison over every label) split in two by 2-means on the layers ``s .. L-1``, every ``s``
tried and the range with the best silhouette kept (:func:`flare_split`); the suspect cluster is the
more stable, i.e. tighter, one. Needs batch-norm layers with running statistics. A model without
batch norm is refused up front by both, naming the detectors that fit (:func:`check_detector_fits`).

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
- ``suspect_side: adv_entropy`` (``side_rule``): the part whose adversarial labels (the boundary
  analysis's) spread over more classes, by entropy with the Miller-Madow correction; then the rules
  above on a tie. An all-to-one poison part holds images of many source classes whose nearest boundary
  leads back towards their own classes, while a clean label's samples cross into the few classes that
  neighbour it. On four 20,000-image records SCAn split the target label almost perfectly, and the
  l(x) rule chose the clean part on two (WaNet, where poison lies nearer the boundary than clean, and
  BadNets made with target 3 and ratio 0.05: SCAn's AUROC 0.37 and 0.07); the poison part's
  adversarial-label entropy was the higher on all four. It fails where the split is not poison
  against clean: on a SIG record whose target label was 94% poison (clean-label SIG poisons the target
  class itself) SCAn with this rule ranked the poison at AUROC 0.09, where the l(x) rule had 0.97.

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

import logging
from functools import partial
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from ..errors import BadInputError, ConfigError, ShapeMismatchError
from ..registry import Registry
from .scores import boundary_score
from .tensors import PixelSpaceModel, batches, find_classifier, predict, to_float

log = logging.getLogger("burn.core")

__all__ = ["DetectorContext", "DetectorSpec", "DETECTORS", "register_detector", "list_detectors",
           "detector_scores", "penultimate_features", "normalise_across_labels", "robust_z_per_label",
           "unit_rank", "suspect_side", "ScanLabel", "scan_labels", "scan_poison_estimate", "COMBINED_PARTNER",
           "AC_DIMS", "SCAN_DIMS", "MAD_SCALE",
           "batchnorm_layers", "check_detector_fits", "disagreement_evidence", "ibd_psc", "IbdPscResult",
           "abnormal_activations", "flare_split", "FlareSplit", "IBD_OMEGA", "IBD_N", "IBD_XI", "IBD_REFERENCE"]

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

def suspect_side(part: np.ndarray, boundary: np.ndarray | None, adv: np.ndarray | None = None,
                 rule: str | None = None) -> bool:
    """Whether the part ``part`` (bool mask over one label's samples) is the suspect one (else the rest).

    ``rule`` (default: ``adv_entropy`` when ``adv`` is given, else ``boundary``):

    - ``adv_entropy``: the part whose adversarial labels (``adv``, from the boundary analysis) spread over
      more classes (higher entropy, :func:`adv_entropy`). An all-to-one poison part holds images of many
      source classes, and the nearest boundary leads each back towards its own class; a clean label's
      samples cross into the few classes that neighbour it. On an exact tie: ``boundary``.
    - ``boundary``: the part with the larger mean within-label rank of ``l`` (``boundary``; the paper's
      observation 1).
    - ``decisive``: the one of those two whose evidence is the stronger, each measured as a z statistic
      under "the two parts do not differ" (:func:`side_evidence`); ``adv_entropy`` on a tie.

    Without the evidence a rule needs, or on an exact tie: the smaller part (Chen et al.'s relative size;
    ties -> ``part``).
    """
    part = np.asarray(part, dtype=bool)
    n_a, n_b = int(part.sum()), int((~part).sum())
    if n_a == 0 or n_b == 0:
        return n_b == 0
    rule = rule or ("adv_entropy" if adv is not None else "boundary")
    z_ent, z_rank = side_evidence(part, boundary, adv if rule != "boundary" else None)
    if rule == "decisive" and abs(z_rank) > abs(z_ent):
        z_ent = 0.0
    for z in (z_ent, z_rank):
        if z != 0:
            return z > 0
    return n_a <= n_b


def side_evidence(part: np.ndarray, boundary: np.ndarray | None,
                  adv: np.ndarray | None) -> tuple[float, float]:
    """``(z_entropy, z_rank)``: how strongly the adversarial labels and ``l(x)`` say ``part`` (rather than
    the rest of the label) is the suspect part, each as a z statistic under "the two parts do not differ";
    0 where that evidence is missing.

    ``z_entropy = (H_a - H_b) / sqrt(v_a + v_b)``, with ``H`` the Miller-Madow entropy of a part's
    adversarial labels and ``v = (sum p ln^2 p - H^2) / n`` the delta-method variance of the plug-in
    entropy (infinite when both parts are single-class and differ). ``z_rank`` is the Mann-Whitney
    statistic of ``l``: the difference of the parts' mean ranks over its standard deviation under random
    assignment, ``sqrt(N (N + 1) / 12 (1/n_a + 1/n_b))`` (NaN distances rank lowest)."""
    z_ent = z_rank = 0.0
    if adv is not None:
        a = np.asarray(adv).astype(np.int64)
        (ea, va), (eb, vb) = _entropy_and_variance(a[part]), _entropy_and_variance(a[~part])
        if ea != eb:
            se = float(np.sqrt(va + vb))
            z_ent = (ea - eb) / se if se > 0 else float(np.sign(ea - eb)) * np.inf
    if boundary is not None:
        from scipy.stats import rankdata

        b = np.asarray(boundary, dtype=np.float64).copy()
        b[np.isnan(b)] = -np.inf
        r = rankdata(b, method="average")
        n, n_a = len(r), int(part.sum())
        diff = float(r[part].mean() - r[~part].mean())
        if diff != 0:
            z_rank = diff / float(np.sqrt(n * (n + 1) / 12.0 * (1.0 / n_a + 1.0 / (n - n_a))))
    return z_ent, z_rank


def _entropy_and_variance(labels: np.ndarray) -> tuple[float, float]:
    """:func:`adv_entropy` and the delta-method variance of the plug-in entropy, ``(sum p ln^2 p - H^2) / n``."""
    if len(labels) == 0:
        return 0.0, 0.0
    c = np.bincount(labels)
    p = c[c > 0] / len(labels)
    h = float(-(p * np.log(p)).sum())
    var = max(float((p * np.log(p) ** 2).sum()) - h * h, 0.0) / len(labels)
    return h + (len(p) - 1) / (2 * len(labels)), var


def adv_entropy(labels: np.ndarray) -> float:
    """Entropy (nats) of the class counts of ``labels`` with the Miller-Madow correction
    ``(K - 1) / (2 n)`` (K classes seen), which removes the plug-in estimate's first-order bias towards
    lower entropy in the smaller of two parts."""
    return _entropy_and_variance(np.asarray(labels).astype(np.int64))[0]


#: how the feature detectors choose a label's suspect part (``BurnConfig.suspect_side``)
SIDE_RULES = ("boundary", "adv_entropy", "decisive")


# ------------------------------------------------------------------------------------------------
# registry

@dataclass
class DetectorContext:
    """What a detector gets: the frozen model (normalised input), images, labels and BURN's signals.

    ``features`` is computed on first use and kept (:func:`penultimate_features`). ``model`` is the
    detection model (``BurnConfig.detection_model``; the infected model itself by default) and
    ``reference_model`` the infected model when they differ (``None``: the same model).
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
    reference_model: nn.Module | None = field(default=None, repr=False)
    side_rule: str = "boundary"   # how a label's suspect part is chosen (SIDE_RULES)
    notes: dict = field(default_factory=dict)   # what a detector says besides its scores ("poison_estimate")

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
    needs_batchnorm: str = ""   # "statistics" / "affine": reads batch-norm running statistics / scale and shift

    @property
    def summary(self) -> str:
        return (self.fn.__doc__ or "").strip().splitlines()[0] if self.fn.__doc__ else ""


DETECTORS: Registry[DetectorSpec] = Registry("detector")


def register_detector(name: str, *, needs_boundary: bool, needs_features: bool, needs_batchnorm: str = ""):
    """Decorator: register ``fn(ctx: DetectorContext) -> scores`` (float64, length N, in [0, 1]) as ``name``.

    ``needs_batchnorm``: ``"statistics"`` (the detector reads batch-norm running statistics) or ``"affine"``
    (it also changes their learnt scale and shift); a model without such layers is refused up front
    (:func:`check_detector_fits`)."""
    if needs_batchnorm not in ("", "statistics", "affine"):
        raise ValueError(f"needs_batchnorm must be '', 'statistics' or 'affine', got {needs_batchnorm!r}")

    def deco(fn):
        if name in DETECTORS:
            raise ValueError(f"detector {name!r} is registered twice")
        DETECTORS.register(name, DetectorSpec(name, fn, bool(needs_boundary), bool(needs_features), needs_batchnorm))
        return fn
    return deco


def batchnorm_layers(model: nn.Module | None, *, affine: bool = False) -> list[nn.Module]:
    """``model``'s batch-norm layers with running statistics (``affine``: only those with a learnt scale
    and shift), in definition order."""
    if model is None:
        return []
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            and m.running_mean is not None and m.running_var is not None
            and (not affine or (m.weight is not None and m.bias is not None))]


def check_detector_fits(name: str, model: nn.Module | None) -> None:
    """Raise a one-line :class:`~burn_plugin.errors.ConfigError` when detector ``name`` cannot read ``model``
    (a batch-norm detector on a model without batch-norm layers), naming the detectors that fit it."""
    spec = DETECTORS.entries.get(name)
    if spec is None or not spec.needs_batchnorm or model is None:
        return
    affine = spec.needs_batchnorm == "affine"
    if not batchnorm_layers(model, affine=affine):
        fit = [n for n in list_detectors() if not DETECTORS[n].needs_batchnorm]
        what = "batch-norm layers with a learnt scale and shift" if affine else "batch-norm layers with running statistics"
        raise ConfigError(f"detector {name} needs {what}; {type(model).__name__} has none; detectors that fit "
                          f"this model: {', '.join(fit)}")


def list_detectors() -> list[str]:
    return DETECTORS.names()


def detector_scores(name: str, model: nn.Module | None, x: torch.Tensor | None, y: torch.Tensor, *,
                    mean: Sequence[float] = (), std: Sequence[float] = (),
                    boundary_distance: torch.Tensor | None = None, adv_label: torch.Tensor | None = None,
                    device="cpu", batch_size: int = 256, seed: int = 0,
                    features: torch.Tensor | None = None, reference_model: nn.Module | None = None,
                    side_rule: str = "boundary", notes: dict | None = None) -> torch.Tensor:
    """Suspicion score of every training sample under detector ``name``: float64 ``(N,)`` in [0, 1],
    higher = more likely poisoned.

    ``model`` takes normalised input (``mean``/``std``) and is on ``device``; ``x`` the ``(N, C, H, W)``
    images (uint8 or float in [0, 1]); ``y`` the given labels; ``boundary_distance`` the boundary
    analysis's ``l(x)`` (required by ``boundary`` and ``combined``; the feature detectors use it to
    choose the suspect part of a label when given); ``features`` precomputed
    :func:`penultimate_features` (skips the forward passes); ``reference_model`` the infected model
    when ``model`` is a separate detection model (``disagreement`` compares the two); ``side_rule`` how the
    feature detectors choose a label's suspect part (:func:`suspect_side`; ``adv_entropy`` needs
    ``adv_label``); ``notes``, when given, receives what the detector says besides its scores
    (``poison_estimate``: how many samples are poisoned, from the detectors of
    ``core.config.POISON_ESTIMATORS``). An unknown name is a
    :class:`~burn_plugin.errors.ConfigError` listing the known ones; a batch-norm detector on a model
    without batch norm another, naming the detectors that fit (:func:`check_detector_fits`).
    """
    spec = DETECTORS.get(name)   # an unknown name: UnknownNameError (a ConfigError) listing the known ones
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
    if spec.needs_batchnorm:
        if model is None or x is None:
            raise BadInputError(f"detector {name!r} needs the model and the images")
        check_detector_fits(name, model)
    ctx = DetectorContext(model, x, y, mean, std, boundary_distance, adv_label, device, batch_size, seed,
                          None if features is None else torch.as_tensor(features).float().reshape(n, -1),
                          reference_model=reference_model, side_rule=side_rule)
    s = torch.as_tensor(spec.fn(ctx)).reshape(-1)
    if notes is not None:
        notes.update(ctx.notes)
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
    """``(positions of one label, side)`` per label, ``side(part) -> bool`` the :func:`suspect_side` rule
    chosen by ``ctx.side_rule`` on that label's evidence."""
    y = ctx.labels_np()
    bd = ctx.boundary_np()
    adv = None
    if ctx.side_rule != "boundary":
        if ctx.adv_label is None:
            raise ConfigError(f"suspect_side {ctx.side_rule} needs the boundary analysis's adversarial labels")
        adv = _as_np(ctx.adv_label).ravel()
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        yield idx, partial(suspect_side, boundary=None if bd is None else bd[idx],
                           adv=None if adv is None else adv[idx], rule=ctx.side_rule)


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
    for idx, side in _label_groups(ctx):
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
        suspect = upper if side(upper) else ~upper
        clean = ~suspect
        raw[idx] = (p - np.median(p[clean])) ** 2
        ref[idx] = clean
    return normalise_across_labels(raw, ctx.labels_np(), reference=ref)


@register_detector("activation_clustering", needs_boundary=False, needs_features=True)
def _activation_clustering(ctx: DetectorContext) -> torch.Tensor:
    """Activation clustering: 2-means on 10 PCA components per label, weighted by the split's silhouette."""
    f = _f64(ctx.features)
    raw = np.zeros(ctx.n)
    for idx, side in _label_groups(ctx):
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
        suspect = lab if side(lab) else ~lab
        raw[idx] = w * np.where(suspect, 1.0 + sil, 1.0 - sil) / 2.0
    return unit_rank(raw)


def _whitener(cov: np.ndarray) -> np.ndarray:
    """``W`` with ``W^T cov W = I`` (eigenvalues floored at 1e-6 of their mean)."""
    ev, vec = np.linalg.eigh((cov + cov.T) / 2)
    floor = 1e-6 * max(float(ev.mean()), 1e-300)
    return vec / np.sqrt(np.maximum(ev, floor))


@dataclass(frozen=True)
class ScanLabel:
    """SCAn's two-identity split of one label: the label's positions, its suspect identity (a mask over
    them), the statistic ``J`` and the posterior of the suspect identity per sample."""

    idx: np.ndarray
    suspect: np.ndarray
    j: float
    posterior: np.ndarray


def scan_labels(ctx: DetectorContext) -> list[ScanLabel]:
    """SCAn's untangling of every label with at least ``_MIN_LABEL`` samples and a non-trivial split."""
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
    out = []
    for idx, side in groups:
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
        suspect = lab if side(lab) else ~lab
        mu_s, mu_o = u[suspect].mean(axis=0), u[~suspect].mean(axis=0)
        pi_s = float(suspect.mean())
        j = pi_s * (1.0 - pi_s) * float(np.sum((mu_s - mu_o) ** 2))
        logit = (u - (mu_s + mu_o) / 2) @ (mu_s - mu_o) + np.log(pi_s / (1.0 - pi_s))
        post = 0.5 * (1.0 + np.tanh(logit / 2.0))  # the logistic function without overflow
        out.append(ScanLabel(idx, suspect, j, post))
    return out


@register_detector("scan", needs_boundary=False, needs_features=True)
def _scan(ctx: DetectorContext) -> torch.Tensor:
    """SCAn: two-identity untangling per label under the other labels' within-label covariance."""
    raw = np.zeros(ctx.n)
    labels = scan_labels(ctx)
    for lab in labels:
        raw[lab.idx] = lab.j * lab.posterior
    ctx.notes["poison_estimate"] = scan_poison_estimate(labels)
    return unit_rank(raw)


def scan_poison_estimate(labels: list[ScanLabel]) -> int:
    """How many samples are poisoned, as SCAn sees it: the suspect identity of the label with the largest
    ``J`` (one target label, the all-to-one attack; 0 when no label split)."""
    if not labels:
        return 0
    return int(max(labels, key=lambda lab: lab.j).suspect.sum())


@register_detector("combined", needs_boundary=True, needs_features=True)
def _combined(ctx: DetectorContext) -> torch.Tensor:
    """Rank average of boundary and activation_clustering."""
    partner = DETECTORS[COMBINED_PARTNER].fn(ctx)
    return (unit_rank(boundary_score(ctx.boundary_distance)) + unit_rank(partner)) / 2.0


# ------------------------------------------------------------------------------------------------
# detectors that read the model itself: disagreement, IBD-PSC, FLARE

#: IBD-PSC's amplification factor, ensemble size and error-rate threshold (Hou et al. 2024, section 5.1)
IBD_OMEGA, IBD_N, IBD_XI = 1.5, 5, 0.6
#: training samples IBD-PSC's layer selection measures the error rate on (a seeded subset; all when fewer)
IBD_REFERENCE = 2000


def _pixel_model(model: nn.Module, ctx: DetectorContext) -> PixelSpaceModel:
    """``model`` behind the normalisation, in the model's own train/eval mode (so ``predict`` restores it)."""
    pm = PixelSpaceModel(model, ctx.mean, ctx.std)
    pm.normalize.to(ctx.device)
    pm.train(model.training)
    return pm


def _label_probability(model: nn.Module | None, ctx: DetectorContext) -> np.ndarray:
    """``p(y_i | x_i)`` under ``model`` (softmax in float64, eval mode) for every training sample."""
    if model is None or ctx.x is None:
        raise BadInputError("this detector needs the model and the images")
    logits = predict(_pixel_model(model, ctx), ctx.x, batch_size=ctx.batch_size, device=ctx.device)
    y = ctx.y.long()
    if ctx.n and int(y.max()) >= logits.shape[1]:
        raise ShapeMismatchError(f"label {int(y.max())} but the model has {logits.shape[1]} outputs")
    return torch.softmax(logits.double(), dim=1).gather(1, y[:, None])[:, 0].numpy()


def disagreement_evidence(p_det, p_inf, labels) -> float:
    """Which side of the detection model's loss is suspect: > 0 the high side, <= 0 the low side.

    ``d_i = p_inf(y_i) - p_det(y_i)``: how much less the detection model agrees with the given label than
    the infected model does. Each label is split in two along ``d`` (exact 1-D 2-means); every part ``P``
    adds ``|P| * dep_P * |dep_P|`` with ``dep_P = mean_P d - median(d)``, its departure from the whole
    set's typical ``d`` (the clean majority's). Returns the sum over ``N``. A coherent group (a part of
    hundreds of samples of one label) keeps its full departure, while a label without one splits into
    two parts on either side of the median whose terms cancel; the sign says whether the coherent
    minority sits above (poison the detection model refuses to fit: high loss) or below (poison it fits
    more readily than clean data: low loss). Identical models give ``d = 0`` and 0.
    """
    d = _as_np(p_inf).ravel() - _as_np(p_det).ravel()
    y = _as_np(labels).ravel()
    if len(d) == 0:
        return 0.0
    med = float(np.median(d))
    e = 0.0
    for c in np.unique(y):
        dc = d[y == c]
        upper = _split_1d(dc) if len(dc) >= _MIN_LABEL else None
        for part in ((upper, ~upper) if upper is not None else (np.ones(len(dc), dtype=bool),)):
            dep = float(dc[part].mean()) - med
            e += int(part.sum()) * dep * abs(dep)
    return e / len(d)


@register_detector("disagreement", needs_boundary=False, needs_features=False)
def _disagreement(ctx: DetectorContext) -> torch.Tensor:
    """Detection model's 1 - p(given label), high or low side chosen against the infected model."""
    p_det = _label_probability(ctx.model, ctx)
    ref = ctx.reference_model
    p_inf = p_det if ref is None or ref is ctx.model else _label_probability(ref, ctx)
    e = disagreement_evidence(p_det, p_inf, ctx.labels_np())
    log.info("disagreement: evidence %.3g -> suspect %s loss", e, "high" if e > 0 else "low")
    return unit_rank(1.0 - p_det if e > 0 else p_det)


def _execution_order(pm: nn.Module, layers: list[nn.Module], ctx: DetectorContext) -> list[nn.Module]:
    """``layers`` in the order a forward pass (eval mode, two images) first calls them; uncalled ones dropped."""
    seen: list[nn.Module] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args: seen.append(mod) if all(mod is not s for s in seen)
                                         else None) for m in layers]
    was = pm.training
    pm.eval()
    try:
        with torch.no_grad():
            pm(to_float(ctx.x[:2]).to(ctx.device))
    finally:
        for h in hooks:
            h.remove()
        pm.train(was)
    return seen


class _Amplified:
    """Context: ``set(count)`` makes the first ``count`` of ``layers`` (nearest the head first) scale and
    shift by ``omega`` times their own (IBD-PSC's Eq. 2), the rest their own; the originals come back on
    exit, copied, so no rounding drifts into the model."""

    def __init__(self, layers: list[nn.Module], omega: float):
        self.layers, self.omega = layers, omega

    def __enter__(self):
        self.saved = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in self.layers]
        return self

    @torch.no_grad()
    def set(self, count: int) -> None:
        for j, (m, (w, b)) in enumerate(zip(self.layers, self.saved)):
            f = self.omega if j < count else 1.0
            m.weight.copy_(w * f)
            m.bias.copy_(b * f)

    def __exit__(self, *exc):
        self.set(0)
        return False


@dataclass
class IbdPscResult:
    psc: np.ndarray          # PSC(x) of every sample, Eq. (4)
    start: int               # k: the first number of amplified layers whose error rate exceeds xi (else L)
    members: list[int]       # the layer counts averaged: k .. k + n - 1, at most L
    error_rates: list[float]  # eta(1), eta(2), ... as far as Algorithm 1 went
    layers: int              # L: the amplifiable batch-norm layers


def ibd_psc(model: nn.Module, x: torch.Tensor, *, mean: Sequence[float], std: Sequence[float], omega: float = IBD_OMEGA,
            n: int = IBD_N, xi: float = IBD_XI, reference: torch.Tensor | None = None, batch_size: int = 256,
            device="cpu") -> IbdPscResult:
    """IBD-PSC (Hou et al., ICML 2024) on every image of ``x``, with no clean data.

    The ``L`` batch-norm layers with affine parameters are ordered from the head backwards (execution
    order, reversed). ``F_i``: the model with the last ``i`` of them scaling ``gamma, beta`` by ``omega``
    (Eq. 2). Layer selection (Eq. 3, Algorithm 1): ``eta(i)`` = the share of the ``reference`` images
    (indices into ``x``; default all) whose prediction under ``F_i`` differs from the unamplified
    prediction ``y'``; ``k = min{i in 1..L : eta(i) > xi}``, and ``k = L`` when no ``i`` crosses (the
    value Algorithm 1 holds at its loop's end). Score (Eq. 4): ``PSC(x) = mean_{i=k}^{min(k+n-1, L)}
    softmax(F_i(x))[y']``; poisoned inputs keep their prediction (high PSC). The model is restored
    exactly afterwards.
    """
    layers = batchnorm_layers(model, affine=True)
    if not layers:
        raise ConfigError(f"IBD-PSC needs batch-norm layers with a learnt scale and shift; {type(model).__name__} "
                          f"has none")
    ctx = DetectorContext(model, x, torch.zeros(len(x), dtype=torch.long), mean, std, device=device,
                          batch_size=batch_size)
    pm = _pixel_model(model, ctx)
    ordered = _execution_order(pm, layers, ctx)[::-1]
    big_l = len(ordered)
    y0 = predict(pm, x, batch_size=batch_size, device=device).argmax(1)
    ref = torch.arange(len(x)) if reference is None else torch.as_tensor(reference).long()
    etas: list[float] = []
    start = big_l
    with _Amplified(ordered, omega) as amp:
        for i in range(1, big_l + 1):
            amp.set(i)
            pred = predict(pm, x[ref], batch_size=batch_size, device=device).argmax(1)
            etas.append(float((pred != y0[ref]).double().mean()) if len(ref) else 0.0)
            if etas[-1] > xi:
                start = i
                break
        members = [i for i in range(start, start + n) if i <= big_l]
        psc = torch.zeros(len(x), dtype=torch.float64)
        for i in members:
            amp.set(i)
            logits = predict(pm, x, batch_size=batch_size, device=device)
            psc += torch.softmax(logits.double(), dim=1).gather(1, y0[:, None])[:, 0]
        psc /= len(members)
    return IbdPscResult(psc.numpy(), start, members, etas, big_l)


@register_detector("ibd_psc", needs_boundary=False, needs_features=False, needs_batchnorm="affine")
def _ibd_psc(ctx: DetectorContext) -> torch.Tensor:
    """IBD-PSC: mean probability of the own prediction under amplified batch-norm layers (high = kept)."""
    ref = None
    if ctx.n > IBD_REFERENCE:
        ref = torch.randperm(ctx.n, generator=torch.Generator().manual_seed(ctx.seed))[:IBD_REFERENCE].sort().values
    res = ibd_psc(ctx.model, ctx.x, mean=ctx.mean, std=ctx.std, reference=ref, batch_size=ctx.batch_size,
                  device=ctx.device)
    log.info("IBD-PSC: %d batch-norm layers, error rates %s, start k = %d, ensemble %s", res.layers,
             ", ".join(f"{e:.2f}" for e in res.error_rates), res.start, res.members)
    return unit_rank(res.psc)


@torch.no_grad()
def abnormal_activations(model: nn.Module, x: torch.Tensor, *, mean: Sequence[float], std: Sequence[float],
                         batch_size: int = 256, device="cpu") -> np.ndarray:
    """``(N, L)`` float64: for every image and every batch-norm layer (execution order), the layer's most
    abnormal activation, ``max_c max_position |a - mu_c| / sqrt(var_c + eps)`` over the layer's input ``a``
    measured against its running statistics (the training set's own, in eval mode)."""
    layers = batchnorm_layers(model)
    if not layers:
        raise ConfigError(f"FLARE needs batch-norm layers with running statistics; {type(model).__name__} has none")
    ctx = DetectorContext(model, x, torch.zeros(len(x), dtype=torch.long), mean, std, device=device,
                          batch_size=batch_size)
    pm = _pixel_model(model, ctx)
    ordered = _execution_order(pm, layers, ctx)
    col = {id(m): j for j, m in enumerate(ordered)}
    out = np.zeros((len(x), len(ordered)))
    current: dict[int, torch.Tensor] = {}

    def grab(mod, args):
        a = args[0].detach().float()
        shape = (1, -1) + (1,) * (a.dim() - 2)
        z = ((a - mod.running_mean.float().view(shape)) / torch.sqrt(mod.running_var.float().view(shape) + mod.eps)).abs()
        v = z.flatten(1).amax(1) if z.dim() > 1 else z
        j = col[id(mod)]
        current[j] = v if j not in current else torch.maximum(current[j], v)
    hooks = [m.register_forward_pre_hook(grab) for m in ordered]
    was = pm.training
    pm.eval()
    try:
        for b in batches(len(x), batch_size):
            current.clear()
            pm(to_float(x[b]).to(device))
            for j, v in current.items():
                out[b.numpy(), j] = v.double().cpu().numpy()
    finally:
        for h in hooks:
            h.remove()
        pm.train(was)
    return out


def _standardise_columns(r: np.ndarray) -> np.ndarray:
    """Each column as a robust z-score over the rows (median, 1.4826 MAD; a constant column becomes 0)."""
    out = np.zeros_like(r, dtype=np.float64)
    for j in range(r.shape[1]):
        med, scale = _robust_location_scale(r[:, j])
        if scale > 0:
            out[:, j] = (r[:, j] - med) / scale
    return out


def _silhouette(z: np.ndarray, lab: np.ndarray) -> np.ndarray:
    """Simplified silhouette ``(b - a) / max(a, b)`` of every row (distances to the own / other centroid)."""
    cent = np.stack([z[~lab].mean(axis=0), z[lab].mean(axis=0)])
    own = np.linalg.norm(z - cent[lab.astype(int)], axis=1)
    other = np.linalg.norm(z - cent[1 - lab.astype(int)], axis=1)
    den = np.maximum(own, other)
    return np.divide(other - own, den, out=np.zeros_like(den), where=den > 0)


@dataclass
class FlareSplit:
    start: int                # first layer (0-based, execution order) of the chosen range start .. L-1
    qualities: list[float]    # mean silhouette of the 2-cluster split of every range start .. L-1
    suspect: np.ndarray       # bool per sample: in the suspect (smaller) cluster
    score: np.ndarray         # position along the line from the other cluster's centre to the suspect's


def flare_split(rep: np.ndarray, seed: int = 0) -> FlareSplit:
    """FLARE's clustering of the whole training set on its ``(N, L)`` abnormal activations (columns in
    execution order, robustly standardised here so every layer weighs alike).

    Layer range: for every start ``s`` the rows restricted to layers ``s .. L-1`` (the deep end kept,
    shallow layers dropped one at a time) are split in two by 2-means; the range with the best mean
    silhouette is kept (ties: the one with more layers). Every start is tried: a backdoor that shows
    in the deep layers only is found even where the full range splits along something else.
    Suspect cluster: the smaller one. FLARE calls the poisoned cluster the more stable one; its authors'
    code (BackdoorBox) splits the largest HDBSCAN branch and marks everything but the largest cluster
    poisoned, so in effect the larger cluster is clean. (Our first reading, the cluster with the
    smaller spread, picked the clean cluster on a BadNets record that FLARE split perfectly: AUROC
    0.005.) Score: the position along the
    line between the centres, ``(v - (c_s + c_o) / 2) . (c_s - c_o)`` (linear, so it keeps ordering the
    samples beyond either centre, where a difference of distances saturates).
    """
    n, big_l = rep.shape
    z = _standardise_columns(rep)
    qualities: list[float] = []
    best = None
    for s in range(big_l):
        v = z[:, s:]
        lab = _split_1d(v[:, 0]) if v.shape[1] == 1 else _two_means(v, seed)
        q = float(_silhouette(v, lab).mean()) if lab is not None else -np.inf
        qualities.append(q)
        if lab is not None and (best is None or q > best[0]):
            best = (q, s, lab)
    if best is None:
        return FlareSplit(0, qualities, np.zeros(n, dtype=bool), np.zeros(n))
    _, s, lab = best
    v = z[:, s:]
    cent = {True: v[lab].mean(axis=0), False: v[~lab].mean(axis=0)}
    side = bool(lab.sum() <= (~lab).sum())
    suspect = lab if side else ~lab
    score = (v - (cent[side] + cent[not side]) / 2) @ (cent[side] - cent[not side])
    return FlareSplit(s, qualities, suspect, score)


@register_detector("flare", needs_boundary=False, needs_features=False, needs_batchnorm="statistics")
def _flare(ctx: DetectorContext) -> torch.Tensor:
    """FLARE: abnormal activations of every batch-norm layer, two clusters, the smaller one suspect."""
    if ctx.model is None or ctx.x is None:
        raise BadInputError("this detector needs the model and the images")
    rep = abnormal_activations(ctx.model, ctx.x, mean=ctx.mean, std=ctx.std, batch_size=ctx.batch_size,
                               device=ctx.device)
    res = flare_split(rep, ctx.seed)
    log.info("FLARE: %d batch-norm layers, range from layer %d, %d samples in the suspect cluster", rep.shape[1],
             res.start, int(res.suspect.sum()))
    return unit_rank(res.score)
