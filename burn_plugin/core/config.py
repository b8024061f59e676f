"""``BurnConfig``: every BURN setting with the paper's defaults, validated up front.

The paper (section 5.2, Algorithm 1) fixes: T = 20 rounds; k_p 0.5% -> 1%; k_c 2.5% -> 5%;
w 0.3 -> 0.6; 5 fine-tuning epochs per round with Adam (0.9, 0.999) at a fixed lr of 5e-5. It leaves
the rest open; each open choice is a key here, with the default and its reason:

- ``pd_output = "softmax"``: f in PD is the softmax output. Probabilities are non-negative, so
  1 - cos lies in [0, 1], the same range as BD, which is what a convex mix (1-w)BD + wPD assumes;
  logits (``"logits"``) can be negative and put PD on [0, 2].
- ``distance_model = "frozen"``: l(x) is computed once, on the frozen infected model (Algorithm 1 computes
  l in phase 1 and reuses it; section 5 says boundary analysis is applied "to the frozen infected
  model"). ``"current"`` recomputes it each round on the model being purified (20x the cost).
- ``candidates = 10``, ``overshoot = 0.02``, ``max_iter = 50``: DeepFool's own defaults (LTS4), also
  Foolbox's; 10 candidates cover every class of 10-class datasets. ``candidate_mode = "fixed"``: the
  rival classes are the clean top-c (LTS4/Foolbox); ``"adaptive"`` re-ranks them by the current logits
  each iteration, which lets a small ``candidates`` (fewer backward passes) follow the boundary the
  iterate actually approaches.
- ``boundary_method = "deepfool"``: the paper's section 2.3 attack. ``"superdeepfool"`` (the paper's
  reference [1]) adds projection steps that make the perturbation orthogonal to the boundary, and a
  final binary line search of ``search_iter = 10`` halvings (SuperDeepFool's own default); it gives
  shorter, more nearly minimal distances at the price of more gradient evaluations per sample
  (``max_iter`` then bounds DeepFool steps and projections together). On our Fashion-MNIST BadNets
  record with ``max_iter = 12`` it took 1136 s against DeepFool's 255 s, raised AUROC of l from 0.63
  to 0.67 and did not change BURN's outcome, so DeepFool stays the default.
- ``distance_space = "pixel"``: distances in [0, 1] pixel space with clipping to [0, 1], the space the
  paper's Table 1 magnitudes and every attack library use; ``"input"`` measures in the normalised
  model-input space instead (no clipping).
- ``box_aware = False`` (the paper's DeepFool as LTS4 and Foolbox implement it: a plain linear step,
  clipped to [0, 1] after it). ``True`` makes the step ignore gradient components that point out of
  the box at pixels already on a bound: on images with saturated backgrounds plain clipping stalls
  (an early Fashion-MNIST BadNets record: 26 iterations per sample on average, 21% never crossing within ``max_iter``,
  against 2.2 and 0.4% box-aware; 256 samples). It was our default until it was measured on nine
  attack records (``benchmarks/detectors.py --boundary-variants 2000``): the paper's mode ranked
  poison better on eight of them (AUROC of l(x) +0.002 to +0.026, mean +0.011; SIG -0.013), at 1.4-6.4x
  the boundary analysis's time. ``True`` stays available as the fast option.
- ``batch_size = 128``: fine-tuning batch (BackdoorBench's attack batch); ``boundary_batch_size = 256``.
- ``augment = True``: fine-tuning uses the dataset's train augmentation (the issue's and
  BackdoorBench's training convention); scoring always uses the test transform.
- ``reset_optimizer = True``: each round's Fine-tune(theta_t, D_t) starts a fresh Adam, reading
  Algorithm 1's Fine-tune as a self-contained procedure.
- ``channels_last = False``: ``True`` holds images and convolution weights in channels-last memory
  format during the run (same arithmetic up to float rounding; weights are handed back contiguous).
  On this project's 2-core CPU it was not a reliable win (boundary analysis x1.34 in one benchmark
  run, x0.87 in another; inference x1.15; training x1.0), so it is off; it is meant for CUDA.
- ``detector = "boundary"``: the paper's BD = l(x) / l_max ranks the samples. Another name from
  ``core/detectors.py`` (spectral signatures, activation clustering, SCAn, or ``combined``) puts its
  score, normalised to [0, 1], wherever the paper uses BD (phase 1's ranking and BD in phase 2's S,
  the paper's own suggested next step, section 7); the relabelling still uses the boundary analysis's
  adversarial label, and the feature detectors use l(x) to decide which part of a label is suspect,
  so the boundary analysis always runs.
- ``clean_selection = "global"``: phase 2's clean set is the bottom k_c % of the whole training set by
  S (Algorithm 1). ``"per_label"`` takes the bottom of each given label in proportion to its size. A
  detector whose evidence is per label (SCAn, activation clustering) ranks whole labels low, and a
  global bottom then holds a few classes only: on our Fashion-MNIST BadNets record SCAn's round-1
  clean set had no sample of 4 of the 10 classes, and fine-tuning on it cost 30 points of ACC.
- ``clean_ranking = "detector"``: phase 2's clean set is the bottom by S, with the chosen detector's
  score as BD (for ``boundary`` the paper's S itself). ``"boundary"`` keeps the detector for the
  relabelled (top) set only and takes the clean set from the bottom of the paper's S (BD = l / l_max),
  the samples nearest the decision boundary, whatever the detector. On the Fashion-MNIST BadNets
  record spectral signatures made every relabelled set 100% poison and every clean set 100% clean,
  yet ACC fell from 86.3 to 78.6, while the oracle diagnostic (the same clean sets as the paper's,
  near the boundary) kept it. With ``boundary`` BURN[spectral] ended at ACC 84.09 / ASR 22.36 on
  BadNets and 87.63 / 18.93 on Blended (no defense 86.26 / 97.16 and 87.00 / 99.92): ACC kept, ASR
  cut but not removed; two records, so the default stays the paper's.
- ``clean_veto = 0``: no veto (the paper). A positive value keeps the top ``clean_veto`` % of the
  training set by the detector's phase-1 score out of every phase-2 clean set, so that a clean set
  taken near the boundary (``clean_ranking: boundary``) and per label (``clean_selection: per_label``)
  cannot hold what the detector suspects, even where the detector's top is larger than k_p.
- ``k_pT_estimate = 0``: the last round relabels ``k_pT`` % (the paper). A positive factor ``m`` replaces
  ``k_pT`` by ``m`` times the detector's own estimate of the poisoned share (SCAn only: the suspect
  identity of the label with the largest ``J``, which assumes one target label), never below ``k_p0``
  and never above ``100 - k_cT``. A fixed ``k_pT`` is a guess at the poison ratio: 10 % relabelled
  1,172 clean samples on a record poisoned at 5 % and missed 15 % of the label-flipped poison on one
  poisoned at 12 %.
- ``suspect_side = "boundary"``: the feature detectors (spectral, activation clustering, SCAn) split each
  label in two and call the part with the larger l(x) suspect; ``"adv_entropy"`` calls suspect the part
  whose adversarial labels spread over more classes; ``"decisive"`` takes whichever of the two is the
  stronger evidence on that label, each as a z statistic (``core/detectors.py``, "Cluster choice").
- ``detection_model = "infected"``: the boundary analysis and every detector look at the infected model
  itself (the paper). Another choice trains a separate *detection model* on the poisoned training set
  first and lets it do the looking, while the unlearning still repairs the infected model:
  ``"sgd"`` fine-tunes a copy of the infected weights with SGD (momentum 0.9, weight decay 5e-4) for
  ``detection_epochs`` at ``detection_lr`` (the control), ``"sam"`` does the same with sharpness-aware
  minimisation over that SGD (Foret et al. 2021, ascent radius ``sam_rho``; ``core/sam.py``), and
  ``"sam_scratch"`` trains with SAM from a fresh initialisation (seeded by ``random_seed``). The
  training uses the fine-tuning's batch size and augmentation; its time is its own timing
  (``detection_model_s``). ``detection_epochs = 2``, ``detection_lr = 0.01`` and ``sam_rho = 0.1`` are
  starting points, not measured optima (Foret et al. use rho 0.05 and 0.1 on CIFAR). A detection model
  needs ``distance_model: frozen`` (l(x) is computed once, on it). The ``disagreement`` detector
  compares the detection model with the infected one (``core/detectors.py``).
- ``random_seed = 0``: BackdoorBench's default seed.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from typing import Any

from ..errors import ConfigError
# Imports of torch-heavy modules sit inside the functions that need them: this module stays free of torch and
# pandas so that `burn --help` and argument errors answer at once (tests/test_import_cycles.py holds it to that).

#: detectors that estimate the poisoned share (``BurnConfig.k_pT_estimate``; core/detectors.py writes it)
POISON_ESTIMATORS = ("scan",)
#: the largest value an integer setting may take (batch sizes, iterations, neurons ...): far above any
#: useful run, small enough that a slip such as ``1e23`` is refused at once instead of running forever
MAX_INT_SETTING = 1_000_000
#: tighter bounds for settings that count whole passes over the data
MAX_PASSES = 10_000
#: per-key maxima of integer settings shared by the methods' configs (others: ``MAX_INT_SETTING``)
INT_MAXIMA = {"rounds": MAX_PASSES, "epochs": MAX_PASSES, "unlearning_epochs": MAX_PASSES,
              "relearn_epochs": MAX_PASSES, "candidates": MAX_PASSES, "search_iter": 1_000,
              "detection_epochs": MAX_PASSES,
              "random_seed": 2 ** 32 - 1}


def show_int(v: int) -> str:
    """``v`` for a message: its digits when short, else its size (Python refuses to print an int of
    more than 4300 digits, and a 60-digit number says less than ``about 1e59``)."""
    if -10 ** 15 < v < 10 ** 15:
        return str(v)
    return f"{'-' if v < 0 else ''}about 1e{round(math.log10(abs(v)))}"


def integer_setting(key: str, value: Any, *, maximum: int | None = None, flag: str = "", source: str = "") -> int:
    """``value`` as the integer setting ``key``: an int, or a float or numeric string with an integral
    value (``1e3`` -> 1000, exactly), at most ``maximum`` (default :func:`int_maximum`); anything else,
    a fraction, NaN, Inf or a huge value, is one :class:`ConfigError` naming the key and the bound."""
    name = (flag or key) + (f" in {source}" if source else "")
    hi = int_maximum(key) if maximum is None else maximum
    v = value
    if isinstance(v, str):
        s = v.strip()
        try:
            v = int(s)
        except ValueError:
            try:
                v = float(s)
            except ValueError:
                raise ConfigError(f"{name} must be an integer, got {value!r:.60}") from None
    if isinstance(v, float) and not (math.isfinite(v) and v.is_integer()):
        raise ConfigError(f"{name} must be a whole number, got {value!r:.60}")
    try:
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__index__"):
            raise TypeError
        v = int(v)
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{name} must be an integer, got {value!r:.60}") from None
    if v > hi:
        raise ConfigError(f"{name} must be at most {hi:,}, got {show_int(v)}; use a smaller value")
    return v


def int_maximum(key: str) -> int:
    """The largest value integer setting ``key`` may take."""
    return INT_MAXIMA.get(key, MAX_INT_SETTING)


class ConfigBase:
    """Shared behaviour of the methods' config dataclasses (BURN, FT, ULRL): field names are the YAML
    keys and flags; ``from_mapping`` rejects unknown keys and converts types with one clear error."""

    label = "BURN"
    _OPTIONAL_STR: tuple = ()  # string keys where YAML null / "None" mean "not given"
    _CHOICES: dict = {}        # key -> allowed string values
    _HELP: dict = {}           # key -> one line for --help (and the docs' configuration page)
    _PAPER: dict = {}          # key -> the value the method's paper sets (docs only; absent: the paper is silent)

    def __post_init__(self):
        self._check_int_bounds()
        self.validate()

    def _check_int_bounds(self) -> None:
        """Every integer setting at most its maximum (:func:`int_maximum`), before anything else looks at
        it: a ``rounds`` of ``1e23`` is refused here, not run (each config checks types and minima)."""
        for f in fields(self):
            v = getattr(self, f.name)
            if (type(f.default) is int and isinstance(v, int) and not isinstance(v, bool)
                    and v > int_maximum(f.name)):
                integer_setting(f.name, v)  # raises, naming the bound

    def validate(self) -> None:  # each config checks its own fields
        raise NotImplementedError

    @classmethod
    def choices_of(cls, key: str) -> tuple | None:
        """The allowed string values of ``key`` (None: any value of its type)."""
        return cls._CHOICES.get(key)

    def _check_choices(self) -> None:
        for k in self.keys():
            choices = self.choices_of(k)
            if choices is not None:
                v = getattr(self, k)
                need(v in choices, f"{k} must be one of {', '.join(choices)}, got {v!r:.60}")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_mapping(cls, values: dict[str, Any], *, source: str = "config"):
        """Build from a dict, rejecting unknown keys and converting types with one clear error."""
        if not isinstance(values, dict):
            raise ConfigError(f"{source} must be a mapping of {cls.label} settings, got {type(values).__name__}")
        known = {f.name: f for f in fields(cls)}
        unknown = [k for k in values if k not in known]
        if unknown:
            raise ConfigError(f"unknown {cls.label} setting(s) {', '.join(map(repr, unknown))} in {source}; "
                              f"known: {', '.join(known)}")
        kwargs = {}
        for k, v in values.items():
            if k in cls._OPTIONAL_STR and (v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null"))):
                v = ""
            kwargs[k] = _coerce(k, v, known[k], source)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


@dataclass
class BurnConfig(ConfigBase):
    """Every BURN setting. Where the paper sets a value, that value is the default; every other default is
    an open choice, whose reason the docstring of :mod:`burn_plugin.core.config` gives."""

    # schedule (paper)
    rounds: int = 20
    k_p0: float = 0.5
    k_pT: float = 1.0
    k_c0: float = 2.5
    k_cT: float = 5.0
    w0: float = 0.3
    wT: float = 0.6
    # fine-tuning (paper)
    epochs: int = 5
    lr: float = 5e-5
    adam_betas: tuple = (0.9, 0.999)
    wd: float = 0.0
    batch_size: int = 128
    augment: bool = True
    reset_optimizer: bool = True
    # boundary analysis (open in the paper; see module docstring)
    boundary_method: str = "deepfool"
    candidates: int = 10
    candidate_mode: str = "fixed"
    overshoot: float = 0.02
    max_iter: int = 50
    search_iter: int = 10
    boundary_batch_size: int = 256
    distance_space: str = "pixel"
    distance_model: str = "frozen"
    box_aware: bool = False
    grad_mode: str = "loop"
    channels_last: bool = False
    # scores
    detector: str = "boundary"
    clean_selection: str = "global"
    clean_ranking: str = "detector"
    clean_veto: float = 0.0
    k_pT_estimate: float = 0.0
    suspect_side: str = "boundary"
    pd_output: str = "softmax"
    # detection model (not in the paper; see module docstring)
    detection_model: str = "infected"
    detection_epochs: int = 2
    detection_lr: float = 0.01
    sam_rho: float = 0.1
    # run
    random_seed: int = 0
    eval_every_round: bool = True

    _HELP = {
        "rounds": "T, the number of phase-2 rounds",
        "k_p0": "%% of training samples relabelled in phase 1 (top by l) ...",
        "k_pT": "... rising linearly to this %% in the last round (top by S)",
        "k_c0": "%% kept as clean (bottom by S) in round 1 ...",
        "k_cT": "... rising linearly to this %%",
        "w0": "weight of PD in S = (1-w) BD + w PD in round 0 ...",
        "wT": "... rising linearly to this",
        "epochs": "fine-tuning epochs per round",
        "lr": "Adam learning rate (fixed)",
        "adam_betas": "Adam betas",
        "wd": "Adam weight decay",
        "batch_size": "fine-tuning batch size",
        "augment": "the dataset's train augmentation while fine-tuning (scoring never augments)",
        "reset_optimizer": "a fresh Adam every round",
        "boundary_method": "boundary attack for l(x): DeepFool (paper) or SuperDeepFool",
        "candidates": "rival classes considered per sample (top-c by logit)",
        "candidate_mode": "rivals fixed from the clean logits, or re-ranked every iteration",
        "overshoot": "DeepFool overshoot",
        "max_iter": "gradient evaluations per sample before giving up (reported as not converged)",
        "search_iter": "SuperDeepFool's final line-search halvings",
        "boundary_batch_size": "images per batch in boundary analysis and scoring",
        "distance_space": "measure l(x) in [0,1] pixel space (clipped) or in the normalised input space",
        "distance_model": "l(x) once on the frozen infected model, or recomputed every round on the current one",
        "box_aware": "true: DeepFool step ignores gradient parts pointing out of [0,1] at saturated pixels "
                     "(faster); false: clip after each step (the paper's, Foolbox)",
        "grad_mode": "class gradients by a loop of backward passes or one batched call",
        "channels_last": "channels-last memory format during the run (speed only)",
        "detector": "poison detector whose score stands where the paper uses BD (phase 1's ranking, BD in S): "
                    "boundary (the paper's l/l_max) or another registered poison detector (core/detectors.py)",
        "clean_selection": "phase 2's clean set: the bottom k_c %% of the whole set by S (paper), or of each given "
                           "label in proportion to its size (keeps every class in the fine-tuning set)",
        "clean_ranking": "BD in the S that picks phase 2's clean set: the detector's score (paper, for the boundary "
                         "detector) or boundary, l / l_max whatever the detector (the clean set nearest the boundary)",
        "clean_veto": "%% of the training set with the highest detector score (phase 1's ranking) never kept as "
                      "clean in phase 2 (0: no veto, the paper)",
        "k_pT_estimate": "0: the last round relabels k_pT %% (the paper); m > 0: k_pT = m times the detector's "
                         "estimate of the poisoned share (detector scan: the suspect part of the label with the "
                         "largest J, one target label), at least k_p0",
        "suspect_side": "how spectral, activation clustering and SCAn choose a label's suspect part: larger l(x) "
                        "(boundary), adversarial labels spread over more classes (adv_entropy), or whichever of the two is "
                        "the stronger evidence on the label (decisive)",
        "pd_output": "f in PD: softmax outputs or logits",
        "detection_model": "the model the boundary analysis and the detectors look at: the infected model (paper), or "
                           "a copy trained further on the poisoned training set with SGD (sgd, the control) or SAM "
                           "(sam), or trained with SAM from scratch (sam_scratch); the infected model is repaired",
        "detection_epochs": "epochs of training for the detection model (not used with detection_model infected)",
        "detection_lr": "SGD learning rate of the detection model's training (momentum 0.9, weight decay 5e-4)",
        "sam_rho": "SAM's ascent radius rho (detection_model sam and sam_scratch)",
        "random_seed": "seed for shuffling and augmentation",
        "eval_every_round": "ACC/ASR/RA after every round (reporting only; off: only at the end)",
    }
    # the paper's value of each setting it fixes (section 5.2, Algorithm 1, section 2.3); the docs'
    # configuration page shows it beside the default
    _PAPER = {
        "rounds": "20 (T, §5.2)",
        "k_p0": "0.5 (§5.2)",
        "k_pT": "1.0 (§5.2)",
        "k_c0": "2.5 (§5.2)",
        "k_cT": "5.0 (§5.2)",
        "w0": "0.3 (§5.2)",
        "wT": "0.6 (§5.2)",
        "epochs": "5 (§5.2)",
        "lr": "5e-05, fixed (§5.2)",
        "adam_betas": "[0.9, 0.999] (§5.2)",
        "boundary_method": "deepfool (§2.3)",
        "distance_model": "frozen (Algorithm 1: l(x) computed once, in phase 1)",
        "box_aware": "false (§2.3's plain DeepFool step; the clip to [0, 1] after it is LTS4's and Foolbox's)",
        "detector": "boundary (BD = l / l_max, §5.2)",
        "clean_selection": "global (Algorithm 1: bottom k_c % of the training set)",
        "clean_ranking": "detector (S with the paper's BD)",
        "clean_veto": "0 (Algorithm 1 keeps the bottom by S, nothing else)",
        "k_pT_estimate": "0 (k_pT fixed, §5.2)",
    }
    #: settings that change what is reported, never the purified model (left out of a checkpoint's key)
    REPORTING_ONLY = ("eval_every_round",)
    _CHOICES = {"distance_space": ("pixel", "input"), "distance_model": ("frozen", "current"),
                "grad_mode": ("loop", "batched"),
                "candidate_mode": ("fixed", "adaptive"), "boundary_method": ("deepfool", "superdeepfool"),
                "pd_output": ("softmax", "logits"), "clean_selection": ("global", "per_label"),
                "clean_ranking": ("detector", "boundary"),
                "suspect_side": ("boundary", "adv_entropy", "decisive"),
                "detection_model": ("infected", "sgd", "sam", "sam_scratch")}

    @classmethod
    def choices_of(cls, key: str) -> tuple | None:
        if key == "detector":   # the detector registry, including detectors registered after import
            from .detectors import list_detectors

            return tuple(list_detectors())
        return super().choices_of(key)

    def validate(self) -> None:
        need(isinstance(self.rounds, int) and self.rounds >= 0, f"rounds must be an integer >= 0, got {self.rounds!r}")
        for k in ("k_p0", "k_pT", "k_c0", "k_cT"):
            v = getattr(self, k)
            need(_num(v) and 0 <= v <= 100, f"{k} is a percentage in [0, 100], got {v!r}")
        need(_num(self.clean_veto) and 0 <= self.clean_veto < 100,
             f"clean_veto is a percentage in [0, 100), got {self.clean_veto!r}")
        need(_num(self.k_pT_estimate) and 0 <= self.k_pT_estimate <= 10,
             f"k_pT_estimate is a factor in [0, 10] (0: k_pT fixed), got {self.k_pT_estimate!r}")
        for k in ("w0", "wT"):
            v = getattr(self, k)
            need(_num(v) and 0 <= v <= 1, f"{k} must lie in [0, 1], got {v!r}")
        need(isinstance(self.epochs, int) and self.epochs >= 0, f"epochs must be an integer >= 0, got {self.epochs!r}")
        need(_num(self.lr) and self.lr > 0, f"lr must be > 0, got {self.lr!r}")
        need(isinstance(self.adam_betas, (tuple, list)) and len(self.adam_betas) == 2
             and all(_num(b) and 0 <= b < 1 for b in self.adam_betas),
             f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        self.adam_betas = tuple(float(b) for b in self.adam_betas)
        need(_num(self.wd) and self.wd >= 0, f"wd must be >= 0, got {self.wd!r}")
        for k in ("batch_size", "boundary_batch_size", "candidates", "max_iter"):
            v = getattr(self, k)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, f"{k} must be an integer >= 1, got {v!r}")
        need(self.candidates >= 2, f"candidates must be >= 2 (the predicted class and one other), got {self.candidates}")
        need(isinstance(self.search_iter, int) and not isinstance(self.search_iter, bool) and self.search_iter >= 0,
             f"search_iter must be an integer >= 0, got {self.search_iter!r}")
        need(_num(self.overshoot) and self.overshoot >= 0, f"overshoot must be >= 0, got {self.overshoot!r}")
        self._check_choices()
        need(self.k_pT_estimate == 0 or self.detector in POISON_ESTIMATORS,
             f"k_pT_estimate needs a detector that estimates the poisoned share ({', '.join(POISON_ESTIMATORS)}), "
             f"got detector {self.detector}; set k_pT_estimate: 0 or choose one of those")
        need(self.detector == "boundary" or self.distance_model == "frozen",
             f"detector {self.detector} scores the frozen infected model; use distance_model: frozen with it")
        need(isinstance(self.detection_epochs, int) and not isinstance(self.detection_epochs, bool)
             and self.detection_epochs >= 1, f"detection_epochs must be an integer >= 1, got {self.detection_epochs!r}")
        need(_num(self.detection_lr) and self.detection_lr > 0, f"detection_lr must be > 0, got {self.detection_lr!r}")
        need(_num(self.sam_rho) and self.sam_rho >= 0, f"sam_rho must be >= 0, got {self.sam_rho!r}")
        need(self.detection_model == "infected" or self.distance_model == "frozen",
             f"detection_model {self.detection_model} computes l(x) once, on the detection model; use "
             f"distance_model: frozen with it")
        need(isinstance(self.random_seed, int) and 0 <= self.random_seed < 2 ** 32,
             f"random_seed must be an integer in [0, 2**32), got {self.random_seed!r:.60}")


def need(cond, msg: str) -> None:
    """Raise :class:`ConfigError` with ``msg`` unless ``cond``."""
    if not cond:
        raise ConfigError(msg)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _coerce(key: str, value: Any, f: dataclasses.Field, source: str) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else None
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "1", "yes", "false", "0", "no"):
                return value.lower() in ("true", "1", "yes")
            raise ValueError
        if isinstance(default, int):  # 1e3 (a string to YAML 1.1) or 1.0e+3 -> 1000; 1e23 refused
            return integer_setting(key, value, source=source)
        if isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if isinstance(default, tuple):
            if isinstance(value, str):
                value = [v for v in value.replace("[", "").replace("]", "").replace("(", "").replace(")", "").split(",")]
            return tuple(float(v) for v in value)
        if isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError
            return value
    except (TypeError, ValueError, OverflowError):
        raise ConfigError(f"{key} in {source} must be a {type(default).__name__}, got {value!r:.60}") from None
    return value
