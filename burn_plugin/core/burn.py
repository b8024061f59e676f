"""BURN's two-phase loop (paper Algorithm 1), framework-free.

Inputs: a classifier that takes *normalised* images, the (poisoned) training set as one image tensor
``x`` (uint8 or float in [0, 1]) with its given labels ``y``, the normalisation ``mean``/``std``, and a
:class:`~burn_plugin.core.config.BurnConfig`. No poison flag is ever an input.

Phase 1: boundary analysis of every training sample on the frozen infected model gives l(x) and the
adversarial label; the top k_p^0 % by l are relabelled to their adversarial label and the model is
fine-tuned on them. Phase 2, t = 1..T: PD from the current model against the frozen model's outputs
(computed once), S = (1 - w_t) BD + w_t PD, top k_p^t % relabelled, bottom k_c^t % kept as clean,
fine-tune on their union. A checkpoint after every round makes a killed run resumable; every
round's shuffling/augmentation is seeded from ``(random_seed, round)``, so a resumed run equals an
uninterrupted one. A checkpoint carries the settings that shape the result and a hash of the infected
model and the training data; resuming from one made with anything else is refused.

A separate *detection model* (``BurnConfig.detection_model`` other than ``"infected"``) is trained first,
from a copy of the infected weights or from scratch (:func:`detection_model`); the boundary analysis
and the poison detector then look at it, while PD and the unlearning still concern the infected model.

No file I/O here: checkpoints and the boundary cache are objects the caller passes in
(:class:`Checkpoint`, :class:`BoundaryCache`; ``burn_plugin.fileio`` has the on-disk ones).
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable, Protocol

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import NonFiniteLossError, ResumeMismatchError
from .boundary import BoundaryResult, boundary_distances
from .config import BurnConfig
from .detectors import check_detector_fits, detector_scores
from .distributed import Group, chunk_size, current_group
from .sam import reinitialise, train_detection_model
from .scores import (PoisonSelection, boundary_score, composite_score, count_of, linear_schedule,
                     prediction_divergence, select)
from .tensors import Normalize, PixelSpaceModel, predict, set_channels_last, state_hash, to_float
from .train import NonFiniteLoss, train_epochs

log = logging.getLogger("burn.core")


@dataclass
class BurnData:
    """The training set as BURN sees it: images, given labels, normalisation, flip augmentation."""

    x: torch.Tensor
    y: torch.Tensor
    mean: tuple
    std: tuple
    hflip: bool = False

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class BurnResult:
    model: nn.Module                      # the purified classifier (normalised input), on CPU
    boundary: BoundaryResult              # l(x) and adversarial labels on the frozen model
    bd: torch.Tensor                      # BD of every sample
    final_pd: torch.Tensor                # PD of every sample in the last round scored
    final_score: torch.Tensor             # S of every sample in the last round scored
    selections: list[PoisonSelection]
    history: list[dict]
    timings: dict
    stopped_early: str | None = None
    completed_rounds: int = 0
    detector: str = "boundary"           # whose score BD is (BurnConfig.detector)
    poison_estimate: int | None = None   # the detector's estimate of the poisoned count, where it makes one


class Checkpoint(Protocol):
    """Where a run keeps its last round: ``load()`` gives the saved state (or ``None``), ``save(state)``
    replaces it whole."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


class BoundaryCache(Protocol):
    """Boundary analyses by key: ``get(key)`` gives ``BoundaryResult.to_dict()`` or ``None``."""

    def get(self, key: str) -> dict | None: ...

    def put(self, key: str, value: dict) -> None: ...


def poison_scores(frozen: nn.Module, data: BurnData, cfg: BurnConfig, boundary: BoundaryResult, *,
                  device="cpu", reference: nn.Module | None = None, notes: dict | None = None) -> torch.Tensor:
    """BD: the chosen detector's score of every training sample, in [0, 1] (``cfg.detector``;
    ``boundary`` is the paper's ``l / l_max`` itself). ``frozen`` is the model the detector reads (the
    detection model), ``reference`` the infected model when that is another one; ``notes`` receives what
    the detector says besides (``detector_scores``)."""
    if cfg.detector == "boundary":
        return boundary_score(boundary.distance)
    return detector_scores(cfg.detector, frozen, data.x, data.y, mean=data.mean, std=data.std,
                           boundary_distance=boundary.distance, adv_label=boundary.adv_label, device=device,
                           batch_size=cfg.boundary_batch_size, seed=cfg.random_seed,
                           reference_model=reference, side_rule=cfg.suspect_side, notes=notes)


def schedule_counts(cfg: BurnConfig, n: int, k_pT: float | None = None) -> list[tuple[float, float, int, int]]:
    """``(k_p, k_c, n_p, n_c)`` of every round ``0..rounds``: the linear schedules from ``k_p0`` to ``k_pT``
    (``cfg.k_pT`` unless given) and from ``k_c0`` to ``k_cT`` (no clean set in round 0)."""
    k_pT = cfg.k_pT if k_pT is None else k_pT
    counts = []
    for t in range(cfg.rounds + 1):
        kp, kc = linear_schedule(cfg.k_p0, k_pT, t, cfg.rounds), linear_schedule(cfg.k_c0, cfg.k_cT, t, cfg.rounds)
        counts.append((kp, kc, count_of(kp, n, "k_p"), count_of(kc, n, "k_c") if t > 0 else 0))
    return counts


def estimated_k_pT(cfg: BurnConfig, estimate: int, n: int) -> float:
    """``k_pT`` from the detector's estimate of the poisoned count (``cfg.k_pT_estimate`` times its share
    in %), at least ``k_p0`` and at most ``100 - k_cT``."""
    return min(max(cfg.k_pT_estimate * 100.0 * estimate / n, cfg.k_p0), 100.0 - cfg.k_cT)


#: offset of the detection model's shuffling/augmentation stream from the rounds' (seed * 1_000_003 + round)
_DETECTION_STREAM = 500_000


def detection_model(infected: nn.Module, data: BurnData, cfg: BurnConfig, *, device="cpu",
                    group: Group | None = None) -> nn.Module:
    """The detection model of ``cfg.detection_model``: a copy of ``infected`` trained ``cfg.detection_epochs``
    on the (poisoned) training set with SGD (``sgd``) or SAM (``sam``), or a fresh initialisation of the
    same architecture (seeded by ``random_seed``) trained with SAM (``sam_scratch``); returned frozen, in
    eval mode, on ``device``. ``infected`` itself for ``infected``. Rank 0 trains; the others receive its
    weights."""
    if cfg.detection_model == "infected":
        return infected
    group = group or Group()
    det = copy.deepcopy(infected)
    if cfg.detection_model == "sam_scratch":
        det = reinitialise(det, cfg.random_seed)
    det = det.to(device)
    for p in det.parameters():
        p.requires_grad_(True)
    if group.is_main:
        pm = PixelSpaceModel(det, data.mean, data.std, channels_last=_cl(cfg, data)).to(device)
        gen = torch.Generator().manual_seed(cfg.random_seed * 1_000_003 + _DETECTION_STREAM)
        try:
            train_detection_model(pm, data.x, data.y, method="sgd" if cfg.detection_model == "sgd" else "sam",
                                  epochs=cfg.detection_epochs, lr=cfg.detection_lr, rho=cfg.sam_rho,
                                  batch_size=cfg.batch_size, device=device, augment_padding=4 if cfg.augment else 0,
                                  hflip=data.hflip and cfg.augment, generator=gen)
        except NonFiniteLoss as exc:
            raise NonFiniteLossError(f"training the detection model ({cfg.detection_model}): {exc}; lower "
                                     f"--detection_lr") from None
    det.eval()
    for p in det.parameters():
        p.requires_grad_(False)
    if group.sharded:
        group.broadcast_model(det)
    return det


def _outputs(model: nn.Module, x, cfg: BurnConfig, device, group: Group | None = None) -> torch.Tensor:
    group = group or Group()

    def rows(s: slice) -> dict:
        return {"logits": predict(model, x[s], batch_size=cfg.boundary_batch_size, device=device)}

    logits = group.map_rows(rows, len(x), chunk_size(cfg.boundary_batch_size, len(x)))["logits"]
    return F.softmax(logits.double(), dim=1) if cfg.pd_output == "softmax" else logits.double()


def analyse_boundary(model: nn.Module, data: BurnData, cfg: BurnConfig, *, device="cpu", progress=None,
                     cache: BoundaryCache | None = None, group: Group | None = None) -> BoundaryResult:
    """l(x), adversarial labels etc. of every training sample on ``model`` (looked up in / stored to
    ``cache`` if given, keyed by the weights, the images and the settings that shape the result).

    The set is analysed in chunks of :func:`~burn_plugin.core.distributed.chunk_size` samples, each
    with its own refilling pool, split over the ranks of ``group`` (rank 0 alone reads and writes the
    cache; every rank gets the whole result)."""
    group = group or Group()
    chunk = chunk_size(cfg.boundary_batch_size, len(data))
    key = None
    if cache is not None:
        settings = (cfg.candidates, cfg.overshoot, cfg.max_iter, cfg.distance_space, cfg.box_aware,
                    tuple(data.mean), tuple(data.std)) + ((cfg.candidate_mode,) if cfg.candidate_mode != "fixed" else ()) \
            + ((cfg.boundary_method, cfg.search_iter) if cfg.boundary_method != "deepfool" else ()) \
            + (("chunk", chunk) if len(data) > chunk else ()) \
            + (("detection", cfg.detection_model, cfg.detection_epochs, cfg.detection_lr)
               + ((cfg.sam_rho,) if cfg.detection_model != "sgd" else ()) if cfg.detection_model != "infected" else ())
        key = state_hash(model.state_dict(), data.x, extra=repr(settings))
        hit = group.broadcast_object(_cached(cache, key, len(data)) if group.is_main else None)
        if hit is not None:
            log.info("boundary analysis loaded from cache (%s)", key)
            return hit
    if cfg.distance_space == "pixel":
        attacked, clip, pre = PixelSpaceModel(model, data.mean, data.std, channels_last=_cl(cfg, data)), (0.0, 1.0), None
    else:
        attacked, clip, pre = model, None, Normalize(data.mean, data.std)
    attacked = attacked.to(device)
    x = data.x if pre is None else _NormalizedView(data.x, pre)

    def rows(s: slice) -> dict:
        return boundary_distances(attacked, x[s], candidates=cfg.candidates, overshoot=cfg.overshoot,
                                  max_iter=cfg.max_iter, batch_size=cfg.boundary_batch_size, clip=clip,
                                  grad_mode=cfg.grad_mode, device=device, progress=progress, box_aware=cfg.box_aware,
                                  candidate_mode=cfg.candidate_mode, method=cfg.boundary_method,
                                  search_iter=cfg.search_iter).to_dict()

    res = BoundaryResult(**group.map_rows(rows, len(data), chunk))
    if key is not None and group.is_main:
        cache.put(key, res.to_dict())
    return res


def _cached(cache: BoundaryCache, key: str, n: int) -> BoundaryResult | None:
    """The cache's entry under ``key`` if it is a whole analysis of ``n`` samples (else ``None``)."""
    hit = cache.get(key)
    if hit is None:
        return None
    try:
        res = BoundaryResult(**hit)
    except TypeError:  # a cache entry of another shape is recomputed
        return None
    return res if len(res) == n else None


class _NormalizedView:
    """``x`` normalised lazily per slice (input-space distances without materialising floats)."""

    def __init__(self, x, norm: Normalize):
        self.x, self.norm = x, norm

    def __len__(self):
        return len(self.x)

    def __getitem__(self, s):
        with torch.no_grad():
            return self.norm(to_float(self.x[s]))


def _cl(cfg: BurnConfig, data: BurnData) -> bool:
    return bool(cfg.channels_last) and data.x.dim() == 4


def run_burn(model: nn.Module, data: BurnData, cfg: BurnConfig | None = None, *, device="cpu",
             evaluate: Callable[[nn.Module], dict] | None = None, progress: bool = True,
             checkpoint: Checkpoint | None = None, resume: bool = False,
             cache: BoundaryCache | None = None, on_round: Callable[[dict], None] | None = None) -> BurnResult:
    """Run BURN on ``model`` (modified in place and returned in the result, on CPU).

    ``evaluate(pixel_space_model) -> dict`` is called after every round for reporting only (its
    numbers never influence the defense). ``checkpoint`` keeps the state after every round;
    ``resume`` continues from the state it holds, which must have been made with the same
    result-shaping settings, model and data (else :class:`~burn_plugin.errors.ResumeMismatchError`,
    raised before any work).

    Under ``torch.distributed`` (a process group is up) the boundary analysis and the scoring passes
    are split over the ranks (:mod:`~burn_plugin.core.distributed`); rank 0 alone selects, fine-tunes
    and broadcasts the weights, evaluates, calls ``on_round``, saves checkpoints and shows progress.
    Its result is the run's; the other ranks return the same model.
    """
    from tqdm.auto import tqdm

    cfg = cfg or BurnConfig()
    n = len(data)
    if n == 0:
        raise ValueError("empty training set")
    timings = {"boundary_s": 0.0, "scoring_s": 0.0, "finetune_s": 0.0, "eval_s": 0.0}
    torch.manual_seed(cfg.random_seed)
    # sizes first: an empty selection is an input error and must fail before any work
    counts = schedule_counts(cfg, n)
    if cfg.detector != "boundary":   # a detector that cannot read this model: one line, before any work
        check_detector_fits(cfg.detector, model)
    group = current_group(device)
    progress = progress and group.is_main
    if not group.is_main:
        evaluate = on_round = checkpoint = None
    run_key = result_key(model, data, cfg)
    saved = checkpoint.load() if (resume and checkpoint is not None) else None
    if saved is not None:
        check_resumable(saved, cfg, run_key)

    model = model.to(device)
    cl = _cl(cfg, data)
    if cl:
        set_channels_last(model)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    pixel_model = PixelSpaceModel(model, data.mean, data.std, channels_last=cl).to(device)
    pixel_frozen = PixelSpaceModel(frozen, data.mean, data.std, channels_last=cl).to(device)
    detect = frozen   # the model the boundary analysis and the detector look at
    if cfg.detection_model != "infected":
        t0 = time.time()
        detect = detection_model(frozen, data, cfg, device=device, group=group)
        timings["detection_model_s"] = time.time() - t0

    t0 = time.time()
    mine = sum(b - a for a, b in group.chunk_ranges(n, chunk_size(cfg.boundary_batch_size, n)))  # rank 0's share
    bar = tqdm(total=mine, desc="boundary analysis" + (f" (rank 0 of {group.world})" if group.sharded else ""),
               unit="img", disable=not progress, leave=False)
    boundary = analyse_boundary(detect, data, cfg, device=device, progress=bar, cache=cache, group=group)
    bar.close()
    timings["boundary_s"] += time.time() - t0
    if (~boundary.converged).any():
        log.warning("%d of %d samples did not cross a boundary within max_iter=%d; their last norm is used",
                    int((~boundary.converged).sum()), n, cfg.max_iter)
    t0 = time.time()
    # only rank 0 selects (it fine-tunes alone), so only it needs BD
    notes: dict = {}
    bd = poison_scores(detect, data, cfg, boundary, device=device, reference=None if detect is frozen else frozen,
                       notes=notes) if group.is_main else torch.zeros(n, dtype=torch.float64)
    if cfg.detector != "boundary":
        timings["detector_s"] = time.time() - t0
    poison_estimate = notes.get("poison_estimate")
    if cfg.k_pT_estimate > 0:   # the last round's share from the detector's estimate (rank 0's, for every rank)
        poison_estimate = group.broadcast_object(poison_estimate) if group.sharded else poison_estimate
        counts = schedule_counts(cfg, n, estimated_k_pT(cfg, poison_estimate, n))
    adv_label = boundary.adv_label

    t0 = time.time()
    frozen_out = _outputs(pixel_frozen, data.x, cfg, device, group)
    timings["scoring_s"] += time.time() - t0

    history: list[dict] = []
    selections: list[PoisonSelection] = []
    start_round = 0
    if saved is not None:
        ck = saved
        model.load_state_dict(ck["model"])
        history = ck["history"]
        selections = [PoisonSelection(**s) for s in ck["selections"]]
        start_round = ck["round"] + 1
        torch.set_rng_state(ck["torch_rng"])
        log.info("resuming after round %d", ck["round"])
    if group.sharded:
        start_round = group.broadcast_object(start_round)
        group.broadcast_model(model)

    # the clean set's BD: the detector's (default) or the paper's l / l_max whatever the detector
    bd_clean = boundary_score(boundary.distance) if cfg.clean_ranking == "boundary" else None
    veto = None
    if cfg.clean_veto > 0:   # the detector's phase-1 top is never clean
        veto = torch.zeros(n, dtype=torch.bool)
        veto[torch.argsort(bd, descending=True, stable=True)[:int(round(cfg.clean_veto / 100.0 * n))]] = True
    pd = torch.zeros(n, dtype=torch.float64)
    score = bd.clone()
    stopped = None
    opt = None
    rounds_bar = tqdm(range(start_round, cfg.rounds + 1), desc="BURN rounds", disable=not progress,
                      initial=start_round, total=cfg.rounds + 1)
    for t in rounds_bar:
        kp, kc, n_p, n_c = counts[t]
        w = linear_schedule(cfg.w0, cfg.wT, t, cfg.rounds)
        t0 = time.time()
        if t == 0:
            score = bd.clone()
            poison_idx, clean_idx = select(score, n_p, 0)
        else:
            if cfg.distance_model == "current":
                bd = boundary_score(analyse_boundary(model, data, cfg, device=device, group=group).distance)
                bd_clean = bd if bd_clean is not None else None
            pd = prediction_divergence(frozen_out, _outputs(pixel_model, data.x, cfg, device, group))
            score = composite_score(bd, pd, w)
            poison_idx, clean_idx = select(score, n_p, n_c,
                                           labels=data.y if cfg.clean_selection == "per_label" else None,
                                           clean_score=composite_score(bd_clean, pd, w) if bd_clean is not None
                                           else None, veto=veto)
        timings["scoring_s"] += time.time() - t0
        sel = PoisonSelection(round=t, poison=poison_idx, clean=clean_idx, k_p=kp, k_c=kc, w=w if t else 0.0)

        idx = torch.cat([poison_idx, clean_idx])
        labels = torch.cat([adv_label[poison_idx], data.y[clean_idx]])
        before = copy.deepcopy(model.state_dict())
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.random_seed * 1_000_003 + t)
        if cfg.reset_optimizer or opt is None:
            opt = _optimizer(model, cfg)
        hist = []
        try:
            if group.is_main:
                hist = train_epochs(pixel_model, data.x[idx], labels, epochs=cfg.epochs, optimizer=opt,
                                    batch_size=cfg.batch_size, device=device, augment_padding=4 if cfg.augment else 0,
                                    hflip=data.hflip and cfg.augment, generator=gen)
        except NonFiniteLoss as exc:
            model.load_state_dict(before)
            stopped = (f"{exc}; stopped in round {t} and kept the model of round {t - 1} "
                       f"(lower --lr or check the data)")
            log.error(stopped)
        if group.sharded:  # rank 0's weights (and its verdict) for the next scoring pass
            stopped = group.broadcast_object(stopped)
            group.broadcast_model(model)
        timings["finetune_s"] += time.time() - t0
        if stopped:
            break
        selections.append(sel)
        row = {"round": t, "k_p": kp, "k_c": kc, "w": sel.w, "n_poison": len(poison_idx), "n_clean": len(clean_idx),
               "n_relabelled": int((adv_label[poison_idx] != data.y[poison_idx]).sum()),
               "train_epoch_loss_avg_over_batch": hist[-1]["train_epoch_loss_avg_over_batch"] if hist else None,
               "train_acc": hist[-1]["train_acc"] if hist else None}
        if evaluate is not None and (cfg.eval_every_round or t == cfg.rounds):
            t0 = time.time()
            row.update(evaluate(pixel_model))
            timings["eval_s"] += time.time() - t0
        history.append(row)
        rounds_bar.set_postfix(poison=len(poison_idx), clean=len(clean_idx),
                               **({"asr": f"{row['test_asr']:.3f}"} if row.get("test_asr") is not None else {}))
        if on_round is not None:
            on_round(row)
        if checkpoint is not None:
            checkpoint.save({"round": t, "model": model.state_dict(), "history": history,
                             "selections": [_sel_dict(s) for s in selections], "torch_rng": torch.get_rng_state(),
                             "config": result_settings(cfg), "run_key": run_key})
    rounds_bar.close()
    model.eval()
    set_channels_last(model, False)   # hand back ordinary contiguous weights
    return BurnResult(model=model.cpu(), boundary=boundary, bd=bd, final_pd=pd, final_score=score,
                      selections=selections, history=history, timings=timings, stopped_early=stopped,
                      completed_rounds=len(history), detector=cfg.detector, poison_estimate=poison_estimate)


#: detection-model settings that shape nothing while their ``detection_model`` is the key's value
_IDLE_DETECTION = {"infected": ("detection_model", "detection_epochs", "detection_lr", "sam_rho"), "sgd": ("sam_rho",)}


def result_settings(cfg: BurnConfig) -> dict:
    """The settings that shape a run's result (all but the reporting-only ones, and the detection-model
    settings that the chosen ``detection_model`` does not use: a run on the infected model has the key
    and checkpoint settings it had before detection models existed)."""
    idle = _IDLE_DETECTION.get(cfg.detection_model, ())
    return {k: v for k, v in cfg.to_dict().items() if k not in BurnConfig.REPORTING_ONLY and k not in idle}


def result_key(model: nn.Module, data: BurnData, cfg: BurnConfig) -> str:
    """Hash of what a run starts from: the infected weights, the training images and labels, the
    normalisation and the result-shaping settings."""
    return state_hash(model.state_dict(), data.x, data.y,
                      extra=repr((tuple(data.mean), tuple(data.std), data.hflip, sorted(result_settings(cfg).items()))))


def check_resumable(saved: dict, cfg: BurnConfig, run_key: str) -> None:
    """Raise :class:`ResumeMismatchError` (one line) unless ``saved`` continues this very run."""
    if not isinstance(saved, dict) or "run_key" not in saved or "round" not in saved:
        raise ResumeMismatchError("the checkpoint holds no record of the settings it was made with (an older or "
                                  "foreign file); delete it, or run again with --overwrite instead of --resume")
    then, now = saved.get("config") or {}, result_settings(cfg)
    diff = [f"{k} {then.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(then) | set(now)) if then.get(k) != now.get(k)]
    if diff:
        raise ResumeMismatchError(f"the checkpoint was made with other settings ({'; '.join(diff[:4])}"
                                  f"{'; ...' if len(diff) > 4 else ''}); resume with its settings, or run again "
                                  f"with --overwrite instead of --resume")
    if saved["run_key"] != run_key:
        raise ResumeMismatchError("the checkpoint was made from another model or training set; run again with "
                                  "--overwrite instead of --resume, or choose another --output_dir")


def _sel_dict(s: PoisonSelection) -> dict:
    return {"round": s.round, "poison": s.poison, "clean": s.clean, "k_p": s.k_p, "k_c": s.k_c, "w": s.w}


def _optimizer(model: nn.Module, cfg: BurnConfig):
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.wd)
