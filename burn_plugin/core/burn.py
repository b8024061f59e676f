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
uninterrupted one.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .boundary import BoundaryResult, boundary_distances
from .config import BurnConfig
from .scores import (PoisonSelection, boundary_score, composite_score, count_of, linear_schedule,
                     prediction_divergence, select)
from .tensors import Normalize, PixelSpaceModel, predict, set_channels_last
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


def state_hash(*tensors_or_dicts, extra: str = "") -> str:
    """A stable hash of tensors / state dicts / strings (for cache keys)."""
    h = hashlib.sha256()
    for obj in tensors_or_dicts:
        items = sorted(obj.items()) if isinstance(obj, dict) else [("", obj)]
        for k, v in items:
            h.update(str(k).encode())
            if isinstance(v, torch.Tensor):
                t = v.detach().cpu().contiguous()
                h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
                h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            else:
                h.update(repr(v).encode())
    h.update(extra.encode())
    return h.hexdigest()[:20]


def _outputs(model: nn.Module, x, cfg: BurnConfig, device) -> torch.Tensor:
    logits = predict(model, x, batch_size=cfg.boundary_batch_size, device=device)
    return F.softmax(logits.double(), dim=1) if cfg.pd_output == "softmax" else logits.double()


def analyse_boundary(model: nn.Module, data: BurnData, cfg: BurnConfig, *, device="cpu", progress=None,
                     cache_dir: Path | None = None) -> BoundaryResult:
    """l(x), adversarial labels etc. of every training sample on ``model`` (cached on disk if asked)."""
    key = None
    if cache_dir is not None:
        settings = (cfg.candidates, cfg.overshoot, cfg.max_iter, cfg.distance_space, cfg.box_aware,
                    tuple(data.mean), tuple(data.std)) + ((cfg.candidate_mode,) if cfg.candidate_mode != "fixed" else ()) \
            + ((cfg.boundary_method, cfg.search_iter) if cfg.boundary_method != "deepfool" else ())
        key = state_hash(model.state_dict(), data.x, extra=repr(settings))
        f = Path(cache_dir) / f"boundary_{key}.pt"
        if f.is_file():
            try:
                d = torch.load(f, map_location="cpu", weights_only=True)
                log.info("boundary analysis loaded from cache %s", f)
                return BoundaryResult(**d)
            except Exception:  # noqa: BLE001 - a broken cache file is recomputed
                pass
    if cfg.distance_space == "pixel":
        attacked, clip, pre = PixelSpaceModel(model, data.mean, data.std, channels_last=_cl(cfg, data)), (0.0, 1.0), None
    else:
        attacked, clip, pre = model, None, Normalize(data.mean, data.std)
    attacked = attacked.to(device)
    x = data.x if pre is None else _NormalizedView(data.x, pre)
    res = boundary_distances(attacked, x, candidates=cfg.candidates, overshoot=cfg.overshoot, max_iter=cfg.max_iter,
                             batch_size=cfg.boundary_batch_size, clip=clip, grad_mode=cfg.grad_mode, device=device,
                             progress=progress, box_aware=cfg.box_aware, candidate_mode=cfg.candidate_mode,
                             method=cfg.boundary_method, search_iter=cfg.search_iter)
    if key is not None:
        from ..fileio import save_torch

        save_torch(res.to_dict(), Path(cache_dir) / f"boundary_{key}.pt")
    return res


class _NormalizedView:
    """``x`` normalised lazily per slice (input-space distances without materialising floats)."""

    def __init__(self, x, norm: Normalize):
        self.x, self.norm = x, norm

    def __len__(self):
        return len(self.x)

    def __getitem__(self, s):
        from .tensors import to_float

        with torch.no_grad():
            return self.norm(to_float(self.x[s]))


def _cl(cfg: BurnConfig, data: BurnData) -> bool:
    return bool(cfg.channels_last) and data.x.dim() == 4


def run_burn(model: nn.Module, data: BurnData, cfg: BurnConfig | None = None, *, device="cpu",
             evaluate: Callable[[nn.Module], dict] | None = None, progress: bool = True,
             checkpoint_dir: str | Path | None = None, resume: bool = False,
             cache_dir: str | Path | None = None, on_round: Callable[[dict], None] | None = None) -> BurnResult:
    """Run BURN on ``model`` (modified in place and returned in the result, on CPU).

    ``evaluate(pixel_space_model) -> dict`` is called after every round for reporting only (its
    numbers never influence the defense). ``checkpoint_dir`` enables per-round checkpoints;
    ``resume`` continues from the last one there.
    """
    from tqdm.auto import tqdm

    cfg = cfg or BurnConfig()
    n = len(data)
    if n == 0:
        raise ValueError("empty training set")
    timings = {"boundary_s": 0.0, "scoring_s": 0.0, "finetune_s": 0.0, "eval_s": 0.0}
    torch.manual_seed(cfg.random_seed)
    # sizes first: an empty selection is an input error and must fail before any work
    counts = []
    for t in range(cfg.rounds + 1):
        kp, kc = linear_schedule(cfg.k_p0, cfg.k_pT, t, cfg.rounds), linear_schedule(cfg.k_c0, cfg.k_cT, t, cfg.rounds)
        counts.append((kp, kc, count_of(kp, n, "k_p"), count_of(kc, n, "k_c") if t > 0 else 0))

    model = model.to(device)
    cl = _cl(cfg, data)
    if cl:
        set_channels_last(model)
    frozen = copy.deepcopy(model).eval()
    for p in frozen.parameters():
        p.requires_grad_(False)
    pixel_model = PixelSpaceModel(model, data.mean, data.std, channels_last=cl).to(device)
    pixel_frozen = PixelSpaceModel(frozen, data.mean, data.std, channels_last=cl).to(device)

    t0 = time.time()
    bar = tqdm(total=n, desc="boundary analysis", unit="img", disable=not progress, leave=False)
    boundary = analyse_boundary(frozen, data, cfg, device=device, progress=bar, cache_dir=cache_dir)
    bar.close()
    timings["boundary_s"] += time.time() - t0
    if (~boundary.converged).any():
        log.warning("%d of %d samples did not cross a boundary within max_iter=%d; their last norm is used",
                    int((~boundary.converged).sum()), n, cfg.max_iter)
    bd = boundary_score(boundary.distance)
    adv_label = boundary.adv_label

    t0 = time.time()
    frozen_out = _outputs(pixel_frozen, data.x, cfg, device)
    timings["scoring_s"] += time.time() - t0

    history: list[dict] = []
    selections: list[PoisonSelection] = []
    start_round = 0
    ckpt_dir = Path(checkpoint_dir) if checkpoint_dir else None
    if resume and ckpt_dir is not None and (ckpt_dir / "last.pt").is_file():
        ck = torch.load(ckpt_dir / "last.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(ck["model"])
        history = ck["history"]
        selections = [PoisonSelection(**s) for s in ck["selections"]]
        start_round = ck["round"] + 1
        torch.set_rng_state(ck["torch_rng"])
        log.info("resuming after round %d", ck["round"])

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
                bd = boundary_score(analyse_boundary(model, data, cfg, device=device).distance)
            pd = prediction_divergence(frozen_out, _outputs(pixel_model, data.x, cfg, device))
            score = composite_score(bd, pd, w)
            poison_idx, clean_idx = select(score, n_p, n_c)
        timings["scoring_s"] += time.time() - t0
        sel = PoisonSelection(round=t, poison=poison_idx, clean=clean_idx, k_p=kp, k_c=kc, w=w if t else 0.0)

        idx = torch.cat([poison_idx, clean_idx])
        labels = torch.cat([adv_label[poison_idx], data.y[clean_idx]])
        before = copy.deepcopy(model.state_dict())
        t0 = time.time()
        gen = torch.Generator().manual_seed(cfg.random_seed * 1_000_003 + t)
        if cfg.reset_optimizer or opt is None:
            opt = _optimizer(model, cfg)
        try:
            hist = train_epochs(pixel_model, data.x[idx], labels, epochs=cfg.epochs, optimizer=opt,
                                batch_size=cfg.batch_size, device=device, augment_padding=4 if cfg.augment else 0,
                                hflip=data.hflip and cfg.augment, generator=gen)
        except NonFiniteLoss as exc:
            model.load_state_dict(before)
            stopped = (f"{exc}; stopped in round {t} and kept the model of round {t - 1} "
                       f"(lower --lr or check the data)")
            log.error(stopped)
            timings["finetune_s"] += time.time() - t0
            break
        timings["finetune_s"] += time.time() - t0
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
        if ckpt_dir is not None:
            from ..fileio import save_torch

            save_torch({"round": t, "model": model.state_dict(), "history": history,
                        "selections": [_sel_dict(s) for s in selections], "torch_rng": torch.get_rng_state()},
                       ckpt_dir / "last.pt")
    rounds_bar.close()
    model.eval()
    set_channels_last(model, False)   # hand back ordinary contiguous weights
    return BurnResult(model=model.cpu(), boundary=boundary, bd=bd, final_pd=pd, final_score=score,
                      selections=selections, history=history, timings=timings, stopped_early=stopped,
                      completed_rounds=len(history))


def _sel_dict(s: PoisonSelection) -> dict:
    return {"round": s.round, "poison": s.poison, "clean": s.clean, "k_p": s.k_p, "k_c": s.k_c, "w": s.w}


def _optimizer(model: nn.Module, cfg: BurnConfig):
    return torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=tuple(cfg.adam_betas), weight_decay=cfg.wd)
