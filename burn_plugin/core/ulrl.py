"""ULRL (UnLearn and ReLearn, Min, Pham & Sun, arXiv 2405.14781) as its authors' code runs it, framework-free.

A second defense beside BURN, re-implemented from the facts in ``field-notes.md`` section 2 (the
authors' ``defense/ulrl.py`` and ``utils/trainer_cls.py`` in ``NayMyatMin/ULRL`` @ ``094debf``):

1. **Unlearning** (:func:`unlearn`): gradient *ascent* on a small clean set (backward of ``-CE``),
   gradient-norm clipping at 20, SGD (lr 0.01, momentum 0.9, weight decay 5e-4), MultiStepLR
   ([10, 20], gamma 0.1) stepped per epoch, at most 20 epochs; it stops after the first epoch whose
   training accuracy on the clean set (the predictions of that epoch's forward passes, made before
   each step, as the authors' trainer counts them) is <= ``clean_threshold`` (0.2). The weights
   after that epoch's updates are the unlearned weights.
2. **Suspicious neurons** (:func:`select_suspicious_neurons`): in the final linear layer, per output
   row (one per class) the summed absolute weight change; robust z-score
   ``|c - median| / (1.4826 * MAD)``; rows with ``z > 3.5`` *and* ``c > median``; the first
   ``max_neurons`` = 2 of them *in class-index order* (the authors' cap keeps the list's first two,
   not the two largest). ``median`` and ``MAD`` are ``torch.median``, which for an even count is the
   *lower* of the two middle values (10 classes: the 5th smallest), not their mean.
3. **Relearning** (:func:`relearn`): back to the original backdoored weights; with ``init`` the
   selected rows are re-drawn uniform in ``+-sqrt(2 / fan_in)`` and their biases set to 0; then
   *all* parameters are trained with SGD (lr ``relearn_lr``, momentum 0.9, no weight decay,
   CosineAnnealingLR over ``relearn_epochs``) on ``CE + relearn_alpha * sum_r cos(W[r], W_orig[r])``,
   which penalises similarity to the original suspicious rows.

When no row passes the z-score rule the authors' code carries on with an empty list: nothing is
re-initialised, the cosine term is an empty sum, and relearning is plain fine-tuning of all
parameters on the clean set. :func:`run_ulrl` does the same and says so in ``ULRLResult.note``.

Both phases read the clean set with the dataset's train augmentation (random crop with 4-pixel
padding, plus horizontal flip where the dataset flips), as BackdoorBench's ``clean_train`` with its
train transform does; ``augment: False`` turns it off. The authors' AMP is a CUDA speed option and
is not reproduced. Models here are *pixel-space* (they take images in [0, 1]; wrap a model that
expects normalised input with :class:`~burn_plugin.core.tensors.PixelSpaceModel`), except
:func:`run_ulrl`, which takes the normalised-input model plus ``mean``/``std`` like
:func:`~burn_plugin.core.burn.run_burn`.

Usage::

    from burn_plugin.core.ulrl import ULRLConfig, run_ulrl
    res = run_ulrl(model, x_clean_uint8, y_clean, mean, std, ULRLConfig(relearn_epochs=10))
    res.model, res.neurons, res.z_scores, res.history
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import NonFiniteLossError, ShapeMismatchError
from .config import MAX_PASSES, ConfigBase, _num, need
from .tensors import PixelSpaceModel, find_classifier, inner_model as _inner, to_float  # noqa: F401
from .train import NonFiniteLoss, train_epochs

log = logging.getLogger("burn.core.ulrl")

#: the authors' MAD consistency constant (``1.4826 * MAD`` estimates the standard deviation)
MAD_SCALE = 1.4826


# ------------------------------------------------------------------------------------------------
@dataclass
class ULRLConfig(ConfigBase):
    """Every ULRL setting; defaults are the authors' CIFAR-10 values (``config/defense/ulrl/cifar10.yaml``
    and the constants hard-coded in their ``defense/ulrl.py`` / ``utils/trainer_cls.py``).

    Key names follow the authors' YAML wherever it has one (``ratio``, ``index``, ``unlearning_lr``,
    ``sgd_momentum``, ``wd``, ``steplr_milestones``, ``steplr_gamma``, ``clean_threshold``, ``init``,
    ``relearn_*``, ``linear_name``, ``batch_size``, ``random_seed``), so the same YAML lines work here.
    """

    # clean data (BackdoorBench's choose_index: `ratio` of clean_train drawn with the seed, or `index`)
    ratio: float = 0.01
    index: str = ""                 # file of clean_train indices, one per line ("" = draw with `ratio`)
    clean_source: str = "clean_train"  # or "burn": BURN's final bottom-k_c set of the poisoned train set;
    # "burn_balanced": as many, the lowest final BURN scores per given label in equal shares
    burn_result: str = ""           # BURN's scores.npz ("" = <attack_folder>/defense/burn/scores.npz)
    # unlearning (gradient ascent)
    unlearning_epochs: int = 20
    unlearning_lr: float = 0.01
    sgd_momentum: float = 0.9
    wd: float = 5e-4
    steplr_milestones: tuple = (10, 20)
    steplr_gamma: float = 0.1
    grad_clip_norm: float = 20.0    # hard-coded max_norm=20 in the authors' UnlearningTrainer; 0 = off
    clean_threshold: float = 0.2
    batch_size: int = 128
    augment: bool = True
    # suspicious-neuron selection (hard-coded in the authors' defense/ulrl.py)
    z_threshold: float = 3.5
    max_neurons: int = 2
    linear_name: str = "auto"       # the classifier layer; "auto" = the nn.Linear that produces the output
    # relearning
    init: bool = True
    relearn_epochs: int = 20
    relearn_lr: float = 0.005
    relearn_alpha: float = 0.7
    relearn_momentum: float = 0.9   # hard-coded in the authors' relearning SGD (no weight decay)
    # run
    random_seed: int = 0
    eval_every_epoch: bool = True   # ACC/ASR/RA after every epoch of both phases (reporting only)

    label = "ULRL"
    _CHOICES = {"clean_source": ("clean_train", "burn", "burn_balanced")}
    _HELP = {
        "ratio": "share of the record's clean_train drawn (with random_seed) as the clean set, as BackdoorBench's "
                 "choose_index draws it",
        "index": "file of clean_train indices, one per line, used instead of drawing with ratio (empty: draw)",
        "clean_source": "the clean set: clean_train (the authors'), burn (BURN's final bottom-k_c selection of the "
                        "poisoned training set: no clean data), burn_balanced (as many samples, the lowest final "
                        "BURN scores of each given label in equal shares)",
        "burn_result": "BURN result (its scores.npz or its folder) for clean_source burn/burn_balanced; empty: "
                       "<attack_folder>/defense/burn/scores.npz, if burn finished that run",
        "unlearning_epochs": "at most this many epochs of gradient ascent (unlearning stops after the first epoch "
                             "whose clean accuracy is at most clean_threshold)",
        "unlearning_lr": "SGD learning rate of unlearning",
        "sgd_momentum": "SGD momentum of unlearning",
        "wd": "SGD weight decay of unlearning",
        "steplr_milestones": "epochs at which the unlearning learning rate is multiplied by steplr_gamma (MultiStepLR)",
        "steplr_gamma": "factor of each MultiStepLR step",
        "grad_clip_norm": "gradient-norm clip during unlearning (0: off)",
        "clean_threshold": "unlearning stops after the first epoch whose training accuracy on the clean set is at "
                           "most this",
        "batch_size": "batch size of both phases",
        "augment": "the dataset's train augmentation in both phases",
        "z_threshold": "robust z-score of a classifier row's weight change above which the row (a neuron) is "
                       "suspicious",
        "max_neurons": "at most this many suspicious rows, the first ones in class order",
        "linear_name": "the classifier layer (a module name as in BackdoorBench: linear, fc, classifier.6); auto: "
                       "the nn.Linear that produces the output",
        "init": "re-draw the suspicious rows (biases 0) before relearning",
        "relearn_epochs": "epochs of relearning (all parameters, cosine schedule)",
        "relearn_lr": "SGD learning rate of relearning",
        "relearn_alpha": "weight of the cosine penalty against the original suspicious rows",
        "relearn_momentum": "SGD momentum of relearning (no weight decay)",
        "random_seed": "seed for the clean-set draw, shuffling and augmentation",
        "eval_every_epoch": "ACC/ASR/RA after every epoch of both phases (reporting only; off: only at the end)",
    }
    _OPTIONAL_STR = ("index", "burn_result")  # YAML null / "None" mean "not given"

    def validate(self) -> None:
        def is_int(v):
            return isinstance(v, int) and not isinstance(v, bool)

        need(_num(self.ratio) and 0 < self.ratio <= 1,
             f"ratio (share of clean_train used) must lie in (0, 1], got {self.ratio!r}")
        for k in self._OPTIONAL_STR:
            v = getattr(self, k)
            if v is None:
                setattr(self, k, "")
            need(isinstance(getattr(self, k), str), f"{k} must be a file path (or empty), got {v!r:.60}")
        self._check_choices()
        for k, lo in (("unlearning_epochs", 1), ("relearn_epochs", 0)):
            v = getattr(self, k)
            need(is_int(v) and v >= lo, f"{k} must be an integer >= {lo}, got {v!r}")
        for k in ("unlearning_lr", "relearn_lr"):
            v = getattr(self, k)
            need(_num(v) and v > 0, f"{k} must be > 0, got {v!r}")
        for k in ("sgd_momentum", "relearn_momentum"):
            v = getattr(self, k)
            need(_num(v) and 0 <= v < 1, f"{k} must lie in [0, 1), got {v!r}")
        need(_num(self.wd) and self.wd >= 0, f"wd must be >= 0, got {self.wd!r}")
        need(_num(self.steplr_gamma) and 0 < self.steplr_gamma <= 1,
             f"steplr_gamma must lie in (0, 1], got {self.steplr_gamma!r}")
        ms = self.steplr_milestones
        need(isinstance(ms, (tuple, list)) and len(ms) <= MAX_PASSES
             and all(_num(m) and float(m).is_integer() and 1 <= m <= MAX_PASSES for m in ms),
             f"steplr_milestones must be a list of epoch numbers in [1, {MAX_PASSES:,}], got {ms!r:.60}")
        self.steplr_milestones = tuple(int(m) for m in ms)
        need(list(self.steplr_milestones) == sorted(self.steplr_milestones),
             f"steplr_milestones must be increasing, got {list(self.steplr_milestones)}")
        need(_num(self.grad_clip_norm) and self.grad_clip_norm >= 0,
             f"grad_clip_norm must be >= 0 (0 turns clipping off), got {self.grad_clip_norm!r}")
        need(_num(self.clean_threshold) and 0 <= self.clean_threshold <= 1,
             f"clean_threshold (training accuracy that stops unlearning) must lie in [0, 1], "
             f"got {self.clean_threshold!r}")
        need(is_int(self.batch_size) and self.batch_size >= 1,
             f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        need(_num(self.z_threshold) and self.z_threshold >= 0,
             f"z_threshold must be >= 0, got {self.z_threshold!r}")
        need(is_int(self.max_neurons) and self.max_neurons >= 0,
             f"max_neurons must be an integer >= 0, got {self.max_neurons!r}")
        need(isinstance(self.linear_name, str) and self.linear_name.strip() != "",
             f"linear_name must be a module name such as 'linear', or 'auto', got {self.linear_name!r:.60}")
        need(_num(self.relearn_alpha) and self.relearn_alpha >= 0,
             f"relearn_alpha must be >= 0, got {self.relearn_alpha!r}")
        for k in ("augment", "init", "eval_every_epoch"):
            need(isinstance(getattr(self, k), bool), f"{k} must be true or false, got {getattr(self, k)!r}")
        need(is_int(self.random_seed) and 0 <= self.random_seed < 2 ** 32,
             f"random_seed must be an integer in [0, 2**32), got {self.random_seed!r:.60}")


# ------------------------------------------------------------------------------------------------
# the classifier layer

def _module(model: nn.Module, name: str) -> nn.Module:
    return dict(_inner(model).named_modules())[name]


# ------------------------------------------------------------------------------------------------
# phase 1: unlearning

def _check_data(x: torch.Tensor, y: torch.Tensor) -> None:
    if len(x) != len(y):
        raise ShapeMismatchError(f"{len(x)} clean images but {len(y)} labels")
    if len(x) == 0:
        raise ShapeMismatchError("the clean set is empty; ULRL needs a few clean samples")


def _finish_row(row: dict, model, evaluate, cfg, history: list, on_epoch) -> None:
    """Add the evaluation (if asked), record the row, pass it on."""
    if evaluate is not None and cfg.eval_every_epoch:
        row.update(evaluate(model))
    history.append(row)
    if on_epoch is not None:
        on_epoch(row)


def _epoch_rows(phase: str, rec: dict) -> dict:
    return {"phase": phase, "phase_epoch": rec["epoch"] + 1, "lr": rec["lr"],
            "train_epoch_loss_avg_over_batch": rec["train_epoch_loss_avg_over_batch"], "train_acc": rec["train_acc"]}


def unlearn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, cfg: ULRLConfig, *, device="cpu",
            hflip: bool = False, generator: torch.Generator | None = None,
            evaluate: Callable[[nn.Module], dict] | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict], int | None]:
    """Gradient ascent on the clean set ``(x, y)``; returns ``(model_after, history, stopped_epoch)``.

    ``model`` (pixel-space) is not changed: a copy is trained. Each epoch: shuffle, for each batch
    ``(-CE).backward()``, clip the gradient norm at ``cfg.grad_clip_norm``, SGD step; then the
    MultiStepLR step. ``history`` has one row per epoch run (``phase_epoch`` from 1, loss, the epoch's
    training accuracy, and ``evaluate(model)``'s metrics if given and ``cfg.eval_every_epoch``).
    ``stopped_epoch`` is the epoch whose training accuracy was ``<= cfg.clean_threshold`` (training
    stops after it), or ``None`` when all ``cfg.unlearning_epochs`` ran.
    """
    _check_data(x, y)
    model = copy.deepcopy(model).to(device)
    generator = generator if generator is not None else torch.Generator().manual_seed(cfg.random_seed)
    opt = torch.optim.SGD(model.parameters(), lr=cfg.unlearning_lr, momentum=cfg.sgd_momentum, weight_decay=cfg.wd)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.steplr_milestones), gamma=cfg.steplr_gamma)
    history: list[dict] = []
    stopped = None

    def on(rec: dict) -> bool:
        nonlocal stopped
        row = _epoch_rows("unlearn", rec)
        if rec["train_acc"] <= cfg.clean_threshold:
            stopped = rec["epoch"] + 1
            row["unlearn_stop"] = True
        _finish_row(row, model, evaluate, cfg, history, on_epoch)
        return stopped is not None

    try:
        train_epochs(model, x, y, epochs=cfg.unlearning_epochs, optimizer=opt, scheduler=sched,
                     batch_size=cfg.batch_size, device=device, augment_padding=4 if cfg.augment else 0,
                     hflip=hflip and cfg.augment, generator=generator, on_epoch=on, ascent=True,
                     grad_clip_norm=cfg.grad_clip_norm)
    except NonFiniteLoss as exc:  # gradient ascent: maximise the loss on clean data
        raise NonFiniteLossError(f"ULRL unlearning: {exc}; lower --unlearning_lr or --grad_clip_norm") from None
    return model, history, stopped


# ------------------------------------------------------------------------------------------------
# suspicious neurons

def select_suspicious_neurons(w_before: torch.Tensor, w_after: torch.Tensor, z_threshold: float = 3.5,
                              max_neurons: int = 2) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """Rows of the classifier weight that unlearning moved abnormally far: ``(indices, z_scores, changes)``.

    ``changes[r] = sum_j |w_after[r, j] - w_before[r, j]|`` (float64);
    ``z[r] = |changes[r] - med| / (1.4826 * MAD)`` with ``med = median(changes)`` and
    ``MAD = median(|changes - med|)``, both ``torch.median`` (the lower middle value for an even count).
    A row is suspicious when ``z > z_threshold`` and ``changes > med``; ``indices`` are the first
    ``max_neurons`` of those in increasing row (class) order, as the authors' cap takes them.
    With ``MAD = 0`` the authors' division gives ``inf`` for rows off the median (and NaN on it):
    here ``z`` is ``inf`` off the median and 0 on it, which selects the same rows.
    """
    if w_before.shape != w_after.shape or w_before.dim() != 2:
        raise ShapeMismatchError(f"weight matrices must be 2-D and of one shape, got {tuple(w_before.shape)} "
                                 f"and {tuple(w_after.shape)}")
    changes = (w_after.detach().double().cpu() - w_before.detach().double().cpu()).abs().sum(dim=1)
    med = torch.median(changes)   # the lower of the two middle values for an even count, as the authors' code
    dev = (changes - med).abs()
    mad = torch.median(dev)
    if mad > 0:
        z = dev / (MAD_SCALE * mad)
    else:
        z = torch.where(dev > 0, torch.full_like(dev, math.inf), torch.zeros_like(dev))
    passing = torch.nonzero((z > z_threshold) & (changes > med)).flatten().tolist()
    return passing[:max_neurons], z, changes


# ------------------------------------------------------------------------------------------------
# phase 2: relearning

def relearn(model_infected: nn.Module, rows, x: torch.Tensor, y: torch.Tensor, cfg: ULRLConfig, *,
            linear_name: str | None = None, device="cpu", hflip: bool = False,
            generator: torch.Generator | None = None, evaluate: Callable[[nn.Module], dict] | None = None,
            on_epoch: Callable[[dict], None] | None = None) -> tuple[nn.Module, list[dict]]:
    """Re-initialise ``rows`` of the classifier of (a copy of) ``model_infected`` and train all parameters;
    returns ``(model, history)``.

    ``model_infected`` (pixel-space) is not changed. With ``cfg.init`` each row in ``rows`` is drawn
    uniform in ``+-sqrt(2 / fan_in)`` (its bias set to 0). The loss is
    ``CE + cfg.relearn_alpha * sum_r cos(W[r], W_orig[r])`` over ``rows`` (no term when ``rows`` is
    empty); SGD (``relearn_lr``, momentum ``relearn_momentum``, no weight decay) with a cosine
    schedule over ``relearn_epochs``.
    """
    _check_data(x, y)
    rows = [int(r) for r in rows]
    model = copy.deepcopy(model_infected).to(device)
    name = linear_name or find_classifier(model, x, cfg.linear_name, device=device)[0]
    linear = _module(model, name)
    if not isinstance(linear, nn.Linear):
        raise ShapeMismatchError(f"ULRL needs {name!r} to be one nn.Linear, it is {type(linear).__name__}")
    if rows and (min(rows) < 0 or max(rows) >= linear.out_features):
        raise ShapeMismatchError(f"neuron rows {rows} outside 0..{linear.out_features - 1} of {name!r}")
    generator = generator if generator is not None else torch.Generator().manual_seed(cfg.random_seed + 1)
    idx = torch.tensor(rows, dtype=torch.long, device=linear.weight.device)
    w_orig = linear.weight.detach()[idx].clone()
    if cfg.init and rows:
        bound = math.sqrt(2.0 / linear.in_features)
        with torch.no_grad():
            fresh = torch.rand((len(rows), linear.in_features), generator=generator) * (2 * bound) - bound
            linear.weight[idx] = fresh.to(linear.weight)
            if linear.bias is not None:
                linear.bias[idx] = 0.0
    opt = torch.optim.SGD(model.parameters(), lr=cfg.relearn_lr, momentum=cfg.relearn_momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.relearn_epochs, 1))
    history: list[dict] = []

    def loss_fn(out, yb):
        loss = F.cross_entropy(out, yb)
        if rows and cfg.relearn_alpha:
            loss = loss + cfg.relearn_alpha * F.cosine_similarity(linear.weight[idx], w_orig, dim=1).sum()
        return loss

    def on(rec: dict) -> None:
        row = _epoch_rows("relearn", rec)
        if rows:
            with torch.no_grad():
                row["cos_to_original"] = float(F.cosine_similarity(linear.weight[idx], w_orig, dim=1).mean())
        _finish_row(row, model, evaluate, cfg, history, on_epoch)

    try:
        train_epochs(model, x, y, epochs=cfg.relearn_epochs, optimizer=opt, scheduler=sched,
                     batch_size=cfg.batch_size, device=device, augment_padding=4 if cfg.augment else 0,
                     hflip=hflip and cfg.augment, generator=generator, on_epoch=on, loss_fn=loss_fn)
    except NonFiniteLoss as exc:
        raise NonFiniteLossError(f"ULRL relearning: {exc}; lower --relearn_lr") from None
    return model, history


# ------------------------------------------------------------------------------------------------
@dataclass
class ULRLResult:
    model: nn.Module                 # the relearned classifier (normalised input, as given), on CPU
    history: list[dict]              # one row per epoch, unlearning then relearning (``phase`` column)
    neurons: list[int]               # the re-initialised rows (classes) of the classifier
    z_scores: list[float]            # robust z-score of every row
    changes: list[float]             # summed |weight change| of every row during unlearning
    median: float
    mad: float
    stopped_epoch: int | None        # unlearning epoch that reached the threshold (None: ran them all)
    unlearn_epochs_run: int
    unlearn_final_train_acc: float
    linear_name: str
    note: str | None = None          # set when no neuron passed the rule
    timings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def num(v):
            return v if math.isfinite(v) else str(v)
        return {"suspicious_neurons": list(self.neurons), "neuron_z_scores": [num(z) for z in self.z_scores],
                "neuron_changes": self.changes, "change_median": self.median, "change_mad": self.mad,
                "unlearn_stopped_epoch": self.stopped_epoch, "unlearn_epochs_run": self.unlearn_epochs_run,
                "unlearn_final_train_acc": self.unlearn_final_train_acc, "classifier_layer": self.linear_name,
                "neuron_note": self.note}


NO_NEURON_NOTE = ("no suspicious neuron found (no classifier row has z > {z} with a change above the median); "
                  "relearning fine-tunes all parameters without re-initialisation or cosine term, as the "
                  "authors' code does with an empty neuron list")


def run_ulrl(model: nn.Module, x_clean: torch.Tensor, y_clean: torch.Tensor, mean, std, cfg: ULRLConfig | None = None,
             *, evaluate: Callable[[nn.Module], dict] | None = None, device="cpu", hflip: bool = False,
             on_epoch: Callable[[dict], None] | None = None) -> ULRLResult:
    """Unlearn, select, relearn: ULRL on a classifier that takes normalised images.

    ``x_clean``: uint8 ``(N, C, H, W)`` (or float in [0, 1]) clean images, ``y_clean`` their labels;
    ``mean``/``std`` the normalisation the model expects; ``hflip`` whether the train augmentation flips.
    ``evaluate(pixel_model) -> dict`` (optional) adds metrics to each epoch's row. ``model`` is not
    changed. History rows carry ``epoch`` (1, 2, ... across both phases), ``phase`` and ``phase_epoch``.
    """
    cfg = cfg or ULRLConfig()
    _check_data(x_clean, y_clean)
    timings = {"unlearn_s": 0.0, "relearn_s": 0.0, "eval_s": 0.0}
    original = PixelSpaceModel(copy.deepcopy(model), mean, std).to(device)
    name, linear = find_classifier(original, x_clean, cfg.linear_name, device=device)
    w_before = linear.weight.detach().cpu().clone()

    def timed_eval(m):
        t0 = time.time()
        out = evaluate(m)
        timings["eval_s"] += time.time() - t0
        return out

    ev = timed_eval if evaluate is not None else None
    t0 = time.time()
    unlearned, u_hist, stopped = unlearn(original, x_clean, y_clean, cfg, device=device, hflip=hflip,
                                         generator=torch.Generator().manual_seed(cfg.random_seed),
                                         evaluate=ev, on_epoch=on_epoch)
    w_after = _module(unlearned, name).weight.detach().cpu().clone()
    neurons, z, changes = select_suspicious_neurons(w_before, w_after, cfg.z_threshold, cfg.max_neurons)
    del unlearned
    timings["unlearn_s"] = time.time() - t0
    note = NO_NEURON_NOTE.format(z=cfg.z_threshold) if not neurons else None
    if note:
        log.warning(note)
    log.info("suspicious neurons %s (z %s)", neurons, [round(float(z[i]), 3) for i in neurons])
    eval_before = timings["eval_s"]
    t0 = time.time()
    relearned, r_hist = relearn(original, neurons, x_clean, y_clean, cfg, linear_name=name, device=device,
                                hflip=hflip, generator=torch.Generator().manual_seed(cfg.random_seed + 1),
                                evaluate=ev, on_epoch=on_epoch)
    if evaluate is not None and (not cfg.eval_every_epoch or not r_hist):
        final = ev(relearned)
        if r_hist:
            r_hist[-1].update(final)
        else:
            r_hist.append({"phase": "relearn", "phase_epoch": 0, **final})
    timings["relearn_s"] = time.time() - t0 - (timings["eval_s"] - eval_before)
    timings["unlearn_s"] -= eval_before
    history = [{"epoch": i, **row} for i, row in enumerate(u_hist + r_hist, start=1)]
    med = float(torch.median(changes))
    mad = float(torch.median((changes - med).abs()))
    return ULRLResult(model=relearned.model.cpu(), history=history, neurons=neurons, z_scores=z.tolist(),
                      changes=changes.tolist(), median=med, mad=mad, stopped_epoch=stopped,
                      unlearn_epochs_run=len(u_hist), unlearn_final_train_acc=u_hist[-1]["train_acc"],
                      linear_name=name, note=note, timings=timings)
