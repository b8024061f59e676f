#!/usr/bin/env python
"""Boundary-analysis (batched DeepFool) throughput and agreement against Foolbox 3 and torchattacks.

One process, one model, one set of inputs; every attack sees the same [0, 1]-pixel model
(``PixelSpaceModel``) and the same images:

- ours, ``box_aware=False``: Foolbox/LTS4 semantics (clip after each step), the reference for the
  agreement table;
- ours, ``box_aware=True`` (the default BURN uses), reported separately;
- Foolbox 3 ``L2DeepFoolAttack(steps=50, candidates=10, overshoot=0.02)`` through
  ``fb.PyTorchModel(model, bounds=(0, 1))`` with ``epsilons=None`` (minimal perturbation) and the
  clean *prediction* as the Misclassification label (the reference class of LTS4 and of ours);
- torchattacks ``DeepFool(model, steps=50, overshoot=0.02)``: a per-image Python loop with a full
  Jacobian per step, so it runs on the first ``--ta-n`` samples only and its throughput is per sample.
  It is given the clean prediction as label (it uses the given label as reference class) and its
  distance is ``||x_adv - x||_2``; samples whose prediction did not flip are marked not converged.

Then our own settings one at a time (grad_mode loop/batched x box_aware True/False, pool refill on/off).

Counts: a wrapper around the model counts forward rows (images pushed through a forward) and, through an
identity autograd function on the input, backward rows (images whose input gradient was computed, one
per backward call per image). Under ``grad_mode="batched"`` the c-1 gradients are vmapped into one
call that the counter cannot see, so its backward count is left out.

Run ``python benchmarks/boundary_speed.py --help``; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from burn_plugin.core.boundary import boundary_distances
from burn_plugin.core.tensors import PixelSpaceModel, set_channels_last, to_float



# ------------------------------------------------------------------------------------------------
# counting

class _CountGrad(torch.autograd.Function):
    """Identity whose backward adds the number of images to the owner's backward counter."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, counter):
        return x.view_as(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.counter = inputs[1]

    @staticmethod
    def backward(ctx, g):
        ctx.counter.backward_rows += g.shape[0]
        ctx.counter.backward_calls += 1
        return g, None


class Counted(nn.Module):
    """``model(x)`` that counts forward rows/calls and input-gradient (backward) rows/calls."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        self.reset()

    def reset(self):
        self.forward_rows = self.forward_calls = self.backward_rows = self.backward_calls = 0

    def forward(self, x):
        self.forward_rows += x.shape[0]
        self.forward_calls += 1
        if x.requires_grad and torch.is_grad_enabled():
            x = _CountGrad.apply(x, self)
        return self.model(x)


class Bf16Autocast(nn.Module):
    """The model's forward under bf16 autocast (CPU or CUDA), logits returned in float32."""

    def __init__(self, model: nn.Module, device_type: str):
        super().__init__()
        self.model, self.device_type = model, device_type

    def forward(self, x):
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return self.model(x).float()


# ------------------------------------------------------------------------------------------------
# data and model

def stratified_sample(poison: torch.Tensor, n: int, poison_frac: float, seed: int) -> torch.Tensor:
    """``n`` indices, ``round(n * poison_frac)`` of them poisoned, drawn with ``seed``, in random order."""
    g = torch.Generator().manual_seed(seed)
    p_idx = torch.nonzero(poison, as_tuple=True)[0]
    c_idx = torch.nonzero(~poison, as_tuple=True)[0]
    n_p = min(len(p_idx), int(round(n * poison_frac)))
    n_c = min(len(c_idx), n - n_p)
    pick = torch.cat([p_idx[torch.randperm(len(p_idx), generator=g)[:n_p]],
                      c_idx[torch.randperm(len(c_idx), generator=g)[:n_c]]])
    return pick[torch.randperm(len(pick), generator=g)]


def build_pixel_model(rec, name: str | None, train_steps: int, seed: int, device: str, data) -> tuple[nn.Module, str]:
    """The record's model (its weights) or ``name`` freshly built (seeded), optionally briefly trained."""
    spec = rec.spec
    if name is None or name == rec.model_name:
        model = rec.build_model()
        return PixelSpaceModel(model, spec.mean3, spec.std3).to(device).eval(), f"{rec.model_name} (record weights)"
    from burn_plugin.bench.models import build_model

    torch.manual_seed(seed)
    model = build_model(name, rec.num_classes)
    pm = PixelSpaceModel(model, spec.mean3, spec.std3).to(device)
    desc = f"{name} (random init, seed {seed})"
    if train_steps > 0:
        g = torch.Generator().manual_seed(seed)
        opt = torch.optim.Adam(pm.parameters(), lr=1e-3)
        pm.train()
        t0 = time.perf_counter()
        for _ in range(train_steps):
            b = torch.randint(0, len(data.x), (128,), generator=g)
            loss = nn.functional.cross_entropy(pm(to_float(data.x[b]).to(device)), data.label[b].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()
        desc = (f"{name} (seed {seed}, trained {train_steps} Adam steps of 128 bd_train images, lr 1e-3, "
                f"{time.perf_counter() - t0:.0f} s, last loss {loss.item():.3f})")
    return pm.eval(), desc


# ------------------------------------------------------------------------------------------------
# the attacks; each returns distance, adv_label, converged (CPU) and optionally iterations

def run_ours(model, x, *, box_aware: bool, grad_mode: str, batch_size: int, device, chunked: bool = False,
             max_iter: int = 50, candidates: int = 10, overshoot: float = 0.02, candidate_mode: str = "fixed",
             method: str = "deepfool"):
    def call(xs):
        return boundary_distances(model, xs, candidates=candidates, overshoot=overshoot, max_iter=max_iter,
                                  batch_size=batch_size, clip=(0.0, 1.0), grad_mode=grad_mode, device=device,
                                  box_aware=box_aware, candidate_mode=candidate_mode, method=method)
    if chunked:  # no refilling across chunks: each call's pool only shrinks, as in a plain batched attack
        from burn_plugin.core.boundary import BoundaryResult

        r = BoundaryResult.cat([call(x[s:s + batch_size]) for s in range(0, len(x), batch_size)])
    else:
        r = call(x)
    return {"distance": r.distance, "adv_label": r.adv_label, "converged": r.converged,
            "iterations": r.iterations.float()}


def run_foolbox(model, x, clean, *, batch_size: int, device, steps=50, candidates=10, overshoot=0.02):
    import foolbox as fb

    fmodel = fb.PyTorchModel(model, bounds=(0, 1), device=device)
    attack = fb.attacks.L2DeepFoolAttack(steps=steps, candidates=candidates, overshoot=overshoot)
    dist, adv, succ = [], [], []
    for s in range(0, len(x), batch_size):
        xb = to_float(x[s:s + batch_size]).to(device)
        lab = clean[s:s + batch_size].to(device)
        _, xadv, ok = attack(fmodel, xb, fb.criteria.Misclassification(lab), epsilons=None)
        with torch.no_grad():
            adv.append(model(xadv).argmax(1).cpu())
        dist.append((xadv - xb).flatten(1).norm(dim=1).float().cpu())
        succ.append(ok.cpu())
    return {"distance": torch.cat(dist), "adv_label": torch.cat(adv), "converged": torch.cat(succ)}


def run_torchattacks(model, x, clean, *, batch_size: int, device, steps=50, overshoot=0.02):
    import torchattacks

    attack = torchattacks.DeepFool(model, steps=steps, overshoot=overshoot)
    dist, adv = [], []
    for s in range(0, len(x), batch_size):
        xb = to_float(x[s:s + batch_size]).to(device)
        xadv = attack(xb, clean[s:s + batch_size].to(device))
        with torch.no_grad():
            adv.append(model(xadv).argmax(1).cpu())
        dist.append((xadv - xb).flatten(1).norm(dim=1).float().cpu())
    adv_label = torch.cat(adv)
    return {"distance": torch.cat(dist), "adv_label": adv_label, "converged": adv_label != clean[:len(adv_label)]}


# ------------------------------------------------------------------------------------------------
# metrics

def auroc(score: torch.Tensor, poison: torch.Tensor) -> float | None:
    from sklearn.metrics import roc_auc_score

    y = poison.numpy().astype(int)
    if y.min() == y.max():
        return None
    return float(roc_auc_score(y, score.numpy()))


def agreement(ref: dict, other: dict) -> dict:
    n = len(other["distance"])
    dr, do = ref["distance"][:n], other["distance"]
    rel = (do - dr).abs() / dr.clamp_min(1e-12)
    both = ref["converged"][:n] & other["converged"]
    return {"n": n,
            "median_rel_diff": float(rel.median()),
            "median_rel_diff_both_converged": float(rel[both].median()) if both.any() else None,
            "p90_rel_diff": float(rel.quantile(0.9)),
            "same_adv_label": float((ref["adv_label"][:n] == other["adv_label"]).float().mean()),
            "same_adv_label_both_converged": float((ref["adv_label"][:n] == other["adv_label"])[both].float().mean())
            if both.any() else None,
            "both_converged": float(both.float().mean())}


def fmt(v, spec=".3f"):
    return "n/a" if v is None else format(v, spec)


def load_str() -> str:
    try:
        a, b, c = os.getloadavg()
        return f"{a:.2f} {b:.2f} {c:.2f}"
    except OSError:
        return "n/a"


# ------------------------------------------------------------------------------------------------

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--record", default=None, help="attack record folder (BackdoorBench layout); without it, the "
                    "script names the command that makes a small one")
    ap.add_argument("--model", default=None, help="evaluate the record's data with this architecture instead of the "
                    "record's model (random init; see --train-steps)")
    ap.add_argument("--train-steps", type=int, default=0, help="with --model: Adam steps (batch 128) on bd_train first")
    ap.add_argument("-n", type=int, default=128, help="samples (stratified: see --poison-frac)")
    ap.add_argument("--poison-frac", type=float, default=0.25,
                    help="share of poisoned samples in the -n drawn (the record's own rate is typically 0.1; "
                         "oversampling gives AUROC enough positives)")
    ap.add_argument("--ta-n", type=int, default=32, help="samples for torchattacks (per-image loop; first of the -n)")
    ap.add_argument("--batch-size", type=int, default=256, help="batch of ours and of Foolbox")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads")
    ap.add_argument("--skip", default="", help="comma list of runs to skip: foolbox, torchattacks, grid (our "
                    "batched/refill runs), boxoff (our box_aware=False runs; also drops the agreement table)")
    ap.add_argument("--batch-sweep", default="", help="comma list of extra batch sizes for ours (box_aware=True, "
                    "loop), e.g. 32,128,512; use -n larger than the batches")
    ap.add_argument("--adaptive", default="", help="comma list of candidate counts c: for each, ours with the c-1 "
                    "rivals re-ranked every iteration (candidate_mode=adaptive) and with fixed clean top-c, "
                    "box_aware=True, e.g. 3,5")
    ap.add_argument("--sdf", default="", help="comma list of max_iter budgets for extra runs of ours with "
                    "boundary_method=superdeepfool (box_aware=True, fixed top-10), e.g. 12,50: their cost and "
                    "distances against DeepFool's")
    ap.add_argument("--variants", default="", help="comma list of model variants for ours (box_aware=True): "
                    "channels_last, bf16 (autocast)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved timing rounds (fastest kept; results are "
                    "deterministic, only the time differs)")
    ap.add_argument("--repeat-torchattacks", action="store_true", help="repeat torchattacks too (slow)")
    ap.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    args = ap.parse_args(argv)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}

    torch.set_num_threads(args.threads)
    device = args.device
    from burn_plugin.bench.records import load_record, require_record_argument

    t_load = time.perf_counter()
    rec = load_record(require_record_argument(args.record))
    data = rec.tensors("bd_train")
    idx = stratified_sample(data.poison, args.n, args.poison_frac, args.seed)
    x, poison = data.x[idx], data.poison[idx]
    model, model_desc = build_pixel_model(rec, args.model, args.train_steps, args.seed, device, data)
    for p in model.parameters():
        p.requires_grad_(False)  # every attack gets the same frozen model (no weight gradients)
    counted = Counted(model).eval()
    with torch.no_grad():
        clean = torch.cat([model(to_float(x[s:s + 512]).to(device)).argmax(1).cpu() for s in range(0, len(x), 512)])
    acc_given = float((clean == data.label[idx]).float().mean())

    print(f"# boundary_speed  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  device {device}  threads "
          f"{torch.get_num_threads()} (cpu_count {os.cpu_count()})  load avg {load_str()}")
    versions = {}
    for mod in ("foolbox", "eagerpy", "torchattacks"):
        try:
            versions[mod] = __import__(mod).__version__
        except Exception as exc:  # noqa: BLE001 - optional peers
            versions[mod] = f"unavailable ({type(exc).__name__}: {exc})"
    print("peers: " + "  ".join(f"{k} {v}" for k, v in versions.items()))
    print(f"record {rec.folder} ({rec.settings.get('attack', '?')}, {rec.dataset}, {tuple(x.shape[1:])}); "
          f"model {model_desc}")
    print(f"samples: {len(x)} from bd_train (seed {args.seed}), {int(poison.sum())} poisoned; prediction == given "
          f"label on {acc_given:.3f}; "
          + ("torchattacks skipped" if "torchattacks" in skip else
             f"torchattacks on the first {min(args.ta_n, len(x))} ({int(poison[:args.ta_n].sum())} poisoned)")
          + f"; setup {time.perf_counter() - t_load:.1f} s")
    print("settings: steps/max_iter 50, candidates 10, overshoot 0.02, batch "
          f"{args.batch_size}; reference class = clean prediction for every attack\n")

    runs: dict[str, dict] = {}

    plan = []  # (name, fn(k), n, count_backward, counter)

    def add(name, fn, n, count_backward=True, counter=None):
        plan.append((name, fn, n, count_backward, counter or counted))

    n = len(x)
    if "boxoff" not in skip:
        add("ours box_aware=False", lambda k: run_ours(counted, x[:k], box_aware=False, grad_mode="loop",
                                                      batch_size=args.batch_size, device=device), n)
    add("ours box_aware=True", lambda k: run_ours(counted, x[:k], box_aware=True, grad_mode="loop",
                                                 batch_size=args.batch_size, device=device), n)
    peer_errors = {}
    for mod in ("foolbox", "torchattacks"):
        if not versions[mod][:1].isdigit():
            peer_errors[mod] = versions[mod]
    if "foolbox" not in skip and "foolbox" not in peer_errors:
        add("foolbox L2DeepFool", lambda k: run_foolbox(counted, x[:k], clean[:k], batch_size=args.batch_size,
                                                        device=device), n)
    ta_n = min(args.ta_n, n)
    if "torchattacks" not in skip and "torchattacks" not in peer_errors and ta_n > 0:
        add("torchattacks DeepFool", lambda k: run_torchattacks(counted, x[:k], clean[:k],
                                                                batch_size=args.batch_size, device=device), ta_n)
    for bs in [int(v) for v in args.batch_sweep.split(",") if v.strip()]:
        add(f"ours box_aware=True b{bs}", lambda k, bs=bs: run_ours(counted, x[:k], box_aware=True, grad_mode="loop",
                                                                    batch_size=bs, device=device), n)
    if "grid" not in skip:
        add("ours batched box_aware=True", lambda k: run_ours(counted, x[:k], box_aware=True, grad_mode="batched",
                                                              batch_size=args.batch_size, device=device), n,
            count_backward=False)
        if "boxoff" not in skip:
            add("ours batched box_aware=False", lambda k: run_ours(counted, x[:k], box_aware=False,
                                                                   grad_mode="batched", batch_size=args.batch_size,
                                                                   device=device), n, count_backward=False)
        small = max(8, min(32, n // 4))
        add(f"ours box_aware=True b{small} refill", lambda k: run_ours(counted, x[:k], box_aware=True,
                                                                        grad_mode="loop", batch_size=small,
                                                                        device=device), n)
        add(f"ours box_aware=True b{small} chunked", lambda k: run_ours(counted, x[:k], box_aware=True,
                                                                         grad_mode="loop", batch_size=small,
                                                                         device=device, chunked=True), n)

    for c in [int(v) for v in args.adaptive.split(",") if v.strip()]:
        for mode in ("adaptive", "fixed"):
            add(f"ours {mode} c{c}", lambda k, c=c, mode=mode: run_ours(
                counted, x[:k], box_aware=True, grad_mode="loop", batch_size=args.batch_size, device=device,
                candidates=c, candidate_mode=mode), n)
    for m in [int(v) for v in args.sdf.split(",") if v.strip()]:
        add(f"ours superdeepfool it{m}", lambda k, m=m: run_ours(
            counted, x[:k], box_aware=True, grad_mode="loop", batch_size=args.batch_size, device=device,
            max_iter=m, method="superdeepfool"), n)
    import copy

    for v in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if v not in ("channels_last", "bf16", "channels_last_boxoff"):
            ap.error(f"--variants: unknown {v!r} (channels_last, channels_last_boxoff, bf16)")
        # channels_last: BURN's own switch (PixelSpaceModel + set_channels_last) on a copy of the model
        inner = Bf16Autocast(model, torch.device(device).type) if v == "bf16" else PixelSpaceModel(
            set_channels_last(copy.deepcopy(model.model)), rec.spec.mean3, rec.spec.std3, channels_last=True).eval()
        vc = Counted(inner).eval()
        add(f"ours {v}", lambda k, vc=vc, v=v: run_ours(vc, x[:k], box_aware=v != "channels_last_boxoff",
                                                        grad_mode="loop", batch_size=args.batch_size,
                                                        device=device), n, counter=vc)

    print(f"timing: {args.repeat} interleaved round(s), the fastest kept; an untimed warm-up on 4 samples first")
    for name, fn, k, _, _ in plan:
        fn(4)
    for rnd in range(args.repeat):
        for name, fn, k, count_backward, counter in plan:
            if rnd > 0 and name == "torchattacks DeepFool" and not args.repeat_torchattacks:
                continue
            counter.reset()
            load0 = load_str()
            t0 = time.perf_counter()
            out = fn(k)
            dt = time.perf_counter() - t0
            prev = runs.get(name)
            if prev is not None:
                prev["all_seconds"].append(dt)
                if dt < prev["seconds"]:
                    prev.update(seconds=dt, per_s=k / dt, load=load0)
                print(f"  round {rnd + 1} {name:<32} {k:5d} samples in {dt:8.1f} s  ({k / dt:8.2f} samples/s)  "
                      f"load {load0}", flush=True)
                continue
            out.update(name=name, n=k, seconds=dt, per_s=k / dt, load=load0, all_seconds=[dt],
                       forward_rows=counter.forward_rows, forward_calls=counter.forward_calls,
                       backward_rows=counter.backward_rows if count_backward else None,
                       backward_calls=counter.backward_calls if count_backward else None)
            runs[name] = out
            print(f"  round {rnd + 1} {name:<32} {k:5d} samples in {dt:8.1f} s  ({k / dt:8.2f} samples/s)  "
                  f"load {load0}", flush=True)
    for k, v in peer_errors.items():
        print(f"  {k}: not run ({v})")

    # -- results ---------------------------------------------------------------------------------
    ref = runs.get("ours box_aware=False")
    print(f"\nthroughput (load avg at end {load_str()}):")
    print(f"  {'run':<32} {'n':>5} {'seconds':>9} {'samples/s':>10} {'fwd rows/s':>10} {'bwd rows/s':>10} "
          f"{'mean iters':>10} {'converged':>9} {'median l2':>9} {'AUROC':>6} {'fwd batch':>9} {'bwd batch':>9}")
    for name, r in runs.items():
        it = r.get("iterations")
        fr = r["forward_rows"] / r["n"]
        br = None if r["backward_rows"] is None else r["backward_rows"] / r["n"]
        print(f"  {name:<32} {r['n']:5d} {r['seconds']:9.1f} {r['per_s']:10.2f} {fr:10.1f} {fmt(br, '.1f'):>10} "
              f"{fmt(None if it is None else float(it.mean()), '.2f'):>10} "
              f"{float(r['converged'].float().mean()):9.3f} {float(r['distance'].median()):9.4f} "
              f"{fmt(auroc(r['distance'], poison[:r['n']])):>6} "
              f"{r['forward_rows'] / max(1, r['forward_calls']):9.1f} "
              f"{fmt(None if r['backward_rows'] is None else r['backward_rows'] / max(1, r['backward_calls']), '.1f'):>9}")
    print("  (fwd/bwd rows/s = images pushed through a forward / an input-gradient backward, per sample attacked;\n"
          "   fwd/bwd batch = mean images per forward call / per backward call; AUROC = poison vs clean by distance)")

    print("\nspeed-up (samples/s of ours / samples/s of the peer; same inputs, same process):")
    ours_f, ours_t = ref, runs["ours box_aware=True"]
    for peer in ("foolbox L2DeepFool", "torchattacks DeepFool"):
        if peer in runs:
            p = runs[peer]
            note = f" (peer timed on {p['n']} samples, scaled per sample)" if p["n"] != n else ""
            f_ratio = "n/a" if ours_f is None else f"{ours_f['per_s'] / p['per_s']:8.2f}x"
            print(f"  vs {peer:<22} ours box_aware=False {f_ratio}   "
                  f"ours box_aware=True {ours_t['per_s'] / p['per_s']:8.2f}x{note}")
            for name in ("ours channels_last_boxoff", "ours channels_last"):
                if name in runs:
                    print(f"  vs {peer:<22} {name} {runs[name]['per_s'] / p['per_s']:8.2f}x")

    print("\nagreement with ours box_aware=False (Foolbox semantics; relative |d - d_ours| / d_ours):"
          + (" not run (--skip boxoff)" if ref is None else ""))
    if ref is not None:
        print(f"  {'run':<30} {'n':>5} {'med rel':>8} {'med rel(both conv)':>18} {'p90 rel':>8} {'same adv':>8} "
              f"{'same adv(both)':>14} {'both conv':>9}")
    agree = {}
    for name in [] if ref is None else ("foolbox L2DeepFool", "torchattacks DeepFool", "ours box_aware=True",
                                        "ours batched box_aware=False", "ours channels_last_boxoff"):
        if name in runs:
            a = agreement(ref, runs[name])
            agree[name] = a
            print(f"  {name:<30} {a['n']:5d} {a['median_rel_diff']:8.4f} {fmt(a['median_rel_diff_both_converged'], '.4f'):>18} "
                  f"{a['p90_rel_diff']:8.4f} {a['same_adv_label']:8.3f} {fmt(a['same_adv_label_both_converged']):>14} "
                  f"{a['both_converged']:9.3f}")

    print("\neach setting's effect (ours; throughput ratio to the default loop/box_aware=True/batch "
          f"{args.batch_size}):")
    for name, r in runs.items():
        if name.startswith("ours"):
            print(f"  {name:<32} {r['per_s']:8.2f} samples/s  x{r['per_s'] / ours_t['per_s']:.2f}")
    variants = [k for k in runs if k.startswith(("ours adaptive", "ours fixed c", "ours channels_last", "ours bf16",
                                                 "ours superdeepfool"))
                and not k.endswith("boxoff")]
    if variants:
        print("\nagreement of the candidate modes and model variants with the default (ours box_aware=True, fixed "
              "top-10, float32):")
        print(f"  {'run':<32} {'med rel':>8} {'p90 rel':>8} {'same adv':>8} {'AUROC':>6} {'default AUROC':>13}")
        for name in variants:
            a = agreement(ours_t, runs[name])
            agree[f"{name} vs default"] = a
            print(f"  {name:<32} {a['median_rel_diff']:8.4f} {a['p90_rel_diff']:8.4f} {a['same_adv_label']:8.3f} "
                  f"{fmt(auroc(runs[name]['distance'], poison[:n])):>6} {fmt(auroc(ours_t['distance'], poison[:n])):>13}")
    chunk = [k for k in runs if k.endswith("chunked")]
    if chunk:
        refill = chunk[0].replace("chunked", "refill")
        print(f"  pool refill vs chunked calls at that batch: x{runs[refill]['per_s'] / runs[chunk[0]]['per_s']:.2f}")
    if "ours batched box_aware=True" in runs:
        same = bool(torch.equal(runs["ours batched box_aware=True"]["iterations"], ours_t["iterations"]))
        dd = float((runs["ours batched box_aware=True"]["distance"] - ours_t["distance"]).abs().max())
        print(f"  loop vs batched (box_aware=True): identical iterations {same}, max |distance diff| {dd:.2e}")

    if args.json:
        def clean_run(r):
            return {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in r.items()}
        payload = {"args": vars(args), "versions": {"torch": torch.__version__, **versions}, "model": model_desc,
                   "index": idx.tolist(), "poison": poison.tolist(), "runs": {k: clean_run(v) for k, v in runs.items()},
                   "agreement": agree}
        Path(args.json).write_text(json.dumps(payload, indent=1))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    from burn_plugin.errors import run_reporting_errors

    sys.exit(run_reporting_errors(main))
