#!/usr/bin/env python
"""Time a whole ``burn defend`` and show where the time and the memory go.

Record mode (default): ``burn_plugin.defend.defend(record, config=BurnConfig(rounds, epochs), output_dir=tmp)``
on an attack record and print the split {boundary_s, scoring_s, finetune_s, eval_s} of the returned
summary, its wall time, the process's peak RSS and, on CUDA, the peak GPU memory.
The record is never written to: it is mirrored into a temporary BackdoorBench root (``record/<name>/``
with a rewritten ``attack_result.pt`` and links to the poisoned PNGs and ``data/``), so BURN's boundary
cache (the user's folder, ``~/.cache/burn-plugin/boundary`` or ``$BURN_HOME/boundary``) and the results land in the temporary folder and every run
recomputes the boundary analysis. ``--train-subset N`` keeps a stratified subset of N bd_train samples
in the mirror (through BackdoorBench's own ``original_index_array``), so that a CPU run takes minutes;
``--train-subset 0`` keeps all.

``--synthetic-tiny``: memory check for a Tiny-ImageNet-sized training set (100,000 images 3x64x64
uint8 = 1.23 GB as one tensor, 200 classes), built synthetically: ``boundary_distances`` on a small
slice through a small random model, then the scoring pass ``burn_plugin.core.tensors.predict`` over all
of it. Prints the peak RSS of each phase against the data size (a float32 copy of the whole set would be
4.6 GiB more).

Run ``python benchmarks/burn_end_to_end.py --help``; see benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

GB = 1024 ** 3


# ------------------------------------------------------------------------------------------------
# memory

def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def rss_gb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024 ** 2


def peak_rss_gb() -> float:
    """Peak RSS since the last :func:`reset_peak` (VmHWM), else since the process started (getrusage)."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS)
        r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return r / (GB if sys.platform == "darwin" else 1024 ** 2)
    return kb / 1024 ** 2


def reset_peak() -> bool:
    """Reset the kernel's peak-RSS mark (Linux ``/proc/self/clear_refs`` 5); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def gpu_line(device: str) -> str:
    if not str(device).startswith("cuda"):
        return "GPU memory: n/a (cpu run)"
    return (f"GPU memory: peak allocated {torch.cuda.max_memory_allocated() / GB:.2f} GiB, "
            f"peak reserved {torch.cuda.max_memory_reserved() / GB:.2f} GiB")


def load_str() -> str:
    try:
        return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())
    except OSError:
        return "n/a"


def header(name: str, device: str) -> None:
    print(f"# {name}  {time.strftime('%Y-%m-%d %H:%M:%S')}")
    print(f"python {platform.python_version()}  torch {torch.__version__}  device {device}  threads "
          f"{torch.get_num_threads()} (cpu_count {os.cpu_count()})  load avg {load_str()}")


# ------------------------------------------------------------------------------------------------
# record mode

def mirror_record(src: Path, root: Path, train_subset: int, seed: int) -> tuple[Path, dict]:
    """``<root>/record/<name>/`` mirroring ``src``; bd_train cut to ``train_subset`` samples (stratified)."""
    from burn_plugin.fileio import save_torch, torch_load

    src = Path(src).resolve()
    dst = root / "record" / src.name
    dst.mkdir(parents=True)
    for item in src.iterdir():
        if item.name == "defense":
            continue
        if item.is_dir():
            (dst / item.name).symlink_to(item, target_is_directory=True)
        elif item.name != "attack_result.pt":
            shutil.copy2(item, dst / item.name)
    data = src.parent.parent / "data"
    if data.exists():
        (root / "data").symlink_to(data, target_is_directory=True)
    obj = torch_load(src / "attack_result.pt", what="attack record")
    info = {"train_total": len(obj["bd_train"]["original_index_array"])}
    if train_subset and train_subset < info["train_total"]:
        st = obj["bd_train"]
        oi = np.asarray(st["original_index_array"], dtype=np.int64)
        flag = np.asarray(st["poison_indicator"])[oi] == 1
        rng = np.random.RandomState(seed)
        n_p = int(round(train_subset * flag.mean()))
        keep = np.concatenate([rng.choice(np.flatnonzero(flag), n_p, replace=False),
                               rng.choice(np.flatnonzero(~flag), train_subset - n_p, replace=False)])
        st["original_index_array"] = np.sort(oi[keep])
    info["train_used"] = len(obj["bd_train"]["original_index_array"])
    save_torch(obj, dst / "attack_result.pt")
    return dst, info


def run_record(args) -> int:
    from burn_plugin.bench.records import find_record_file, require_record_argument
    from burn_plugin.core.config import BurnConfig
    from burn_plugin.defend import defend

    find_record_file(require_record_argument(args.record))  # a missing record is one line, before any work
    device = args.device
    header("burn_end_to_end (record)", device)
    base_rss = rss_gb()
    values = {"rounds": args.rounds, "epochs": args.epochs, "grad_mode": args.grad_mode}
    for item in args.set:
        key, _, value = item.partition("=")
        values[key.strip()] = value.strip()
    cfg = BurnConfig.from_mapping(values, source="--set")
    with tempfile.TemporaryDirectory(prefix="burn_e2e_") as tmp:
        tmp = Path(tmp)
        folder, info = mirror_record(Path(args.record), tmp / "bb", args.train_subset, args.seed)
        print(f"record {Path(args.record).resolve()} mirrored to {folder}; bd_train {info['train_used']} of "
              f"{info['train_total']} samples ({'stratified subset, seed %d' % args.seed if info['train_used'] < info['train_total'] else 'all'})")
        print(f"config: rounds {cfg.rounds}, epochs {cfg.epochs}, boundary batch {cfg.boundary_batch_size}, "
              f"grad_mode {cfg.grad_mode}, box_aware {cfg.box_aware} (paper: 20 rounds x 5 epochs)")
        if str(device).startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        summary = defend(folder, config=cfg, device=device, output_dir=tmp / "out", progress=False)
        wall = time.perf_counter() - t0
    t = summary.get("timings", {})
    total = summary.get("wall_seconds", wall)
    print(f"\nwall {total:.1f} s (defend's wall_seconds; {wall:.1f} s around the call), load avg {load_str()}")
    accounted = 0.0
    for k in ("boundary_s", "scoring_s", "finetune_s", "eval_s"):
        v = float(t.get(k, 0.0))
        accounted += v
        print(f"  {k:<11} {v:8.1f} s  {100 * v / total:5.1f} %")
    for k, v in t.items():
        if k not in ("boundary_s", "scoring_s", "finetune_s", "eval_s"):
            accounted += float(v)
            print(f"  {k:<11} {float(v):8.1f} s  {100 * float(v) / total:5.1f} %")
    print(f"  {'other':<11} {total - accounted:8.1f} s  {100 * (total - accounted) / total:5.1f} %  "
          f"(loading, before/after evaluation, writing)")
    b = summary.get("boundary") or {}
    if b:
        n = max(1, b.get("samples", 1))
        print(f"boundary: {b.get('samples')} samples, {b.get('samples', 0) / max(t.get('boundary_s', 0), 1e-9):.1f} "
              f"samples/s, mean iterations {b.get('mean_iterations', 0):.2f}, not converged "
              f"{b.get('not_converged', 0)} ({100 * b.get('not_converged', 0) / n:.2f} %)")
    bf, af = summary.get("before", {}), summary.get("after") or {}
    print("metrics: " + "  ".join(f"{k} {bf.get(k, float('nan')):.4f} -> {af.get(k, float('nan')):.4f}"
                                  for k in ("test_acc", "test_asr", "test_ra")))
    det = summary.get("detection") or {}
    if det:
        def f4(v):
            return "n/a" if v is None else f"{v:.4f}"
        print(f"detection: AUROC l(x) {f4(det.get('auroc_distance_poison'))}, AUROC S {f4(det.get('auroc_score_poison'))}")
    print(f"peak RSS {peak_rss_gb():.2f} GiB (process, incl. the record's tensors; {base_rss:.2f} GiB after imports)")
    print(gpu_line(device))
    return 0


# ------------------------------------------------------------------------------------------------
# synthetic Tiny-ImageNet memory check

class MicroNet(nn.Module):
    """Two strided convs and a linear head (~12k parameters at 200 classes): cheap enough to score 100k 64x64 images on CPU."""

    def __init__(self, num_classes: int):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.linear = nn.Linear(32, num_classes)

    def forward(self, x):
        return self.linear(self.features(x))


def run_tiny(args) -> int:
    from burn_plugin.core.boundary import boundary_distances
    from burn_plugin.core.tensors import PixelSpaceModel, predict

    device = args.device
    header("burn_end_to_end --synthetic-tiny", device)
    torch.manual_seed(args.seed)
    n, classes = args.tiny_n, 200
    resettable = reset_peak()
    base = rss_gb()
    print(f"RSS after imports {base:.2f} GiB; per-phase peaks {'reset via /proc/self/clear_refs' if resettable else 'cumulative (no clear_refs)'}")

    def phase(name, t0, extra=""):
        peak = peak_rss_gb()
        print(f"  {name:<34} {time.perf_counter() - t0:7.1f} s   peak RSS {peak:5.2f} GiB = imports {base:.2f} + data "
              f"{data_gb:.2f} + {peak - base - data_gb:+.2f} GiB{extra}", flush=True)
        return peak

    data_gb = 0.0
    t0 = time.perf_counter()
    x = torch.empty(n, 3, 64, 64, dtype=torch.uint8)
    x.random_(0, 256, generator=torch.Generator().manual_seed(args.seed))  # in place: no int64 temporary
    data_gb = x.numel() / GB
    print(f"data: {n} x 3 x 64 x 64 uint8 = {x.numel() * x.element_size() / 1e9:.2f} GB ({data_gb:.2f} GiB) as one "
          f"tensor; a float32 copy would be {4 * data_gb:.2f} GiB")
    phase("build uint8 set", t0)

    if args.tiny_model == "smallresnet":
        from burn_plugin.bench.models import build_model

        net = build_model("smallresnet", classes)
    else:
        net = MicroNet(classes)
    model = PixelSpaceModel(net, (0.480, 0.448, 0.398), (0.277, 0.269, 0.282)).to(device).eval()
    params = sum(p.numel() for p in model.parameters())
    print(f"model: {args.tiny_model} (random init, seed {args.seed}, {params} parameters), {classes} classes")

    reset_peak()
    t0 = time.perf_counter()
    sl = x[:args.tiny_slice]
    res = boundary_distances(model, sl, candidates=10, max_iter=50, batch_size=args.batch_size, device=device)
    s = res.summary()
    phase(f"boundary_distances on {len(sl)}", t0, f"  ({s['mean_iterations']:.2f} iters, {s['not_converged']} not "
          f"converged, {len(sl) / (time.perf_counter() - t0):.1f} samples/s)")

    reset_peak()
    t0 = time.perf_counter()
    logits = predict(model, x, batch_size=args.predict_batch, device=device)
    dt = time.perf_counter() - t0
    phase(f"predict over {n} (batch {args.predict_batch})", t0,
          f"  ({n / dt:.0f} images/s; logits {logits.numel() * 4 / 1e6:.0f} MB)")
    print(f"peak RSS over the whole process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2:.2f} GiB "
          f"(getrusage), load avg {load_str()}")
    print(gpu_line(device))
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--record", default=None, help="attack record folder (BackdoorBench layout); without it, the "
                    "script names the command that makes a small one")
    ap.add_argument("--rounds", type=int, default=2, help="BURN refinement rounds (paper: 20)")
    ap.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs per round (paper: 5)")
    ap.add_argument("--train-subset", type=int, default=3000,
                    help="stratified bd_train samples kept in the mirrored record (0 = all)")
    ap.add_argument("--grad-mode", default="loop", choices=("loop", "batched"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="any other BurnConfig setting, e.g. --set k_p0=1 (repeatable)")
    ap.add_argument("--synthetic-tiny", action="store_true", help="the Tiny-ImageNet-sized memory check instead")
    ap.add_argument("--tiny-n", type=int, default=100_000, help="images in the synthetic set")
    ap.add_argument("--tiny-slice", type=int, default=128, help="images given to boundary_distances")
    ap.add_argument("--tiny-model", default="micro", choices=("micro", "smallresnet"))
    ap.add_argument("--batch-size", type=int, default=256, help="boundary batch (synthetic mode)")
    ap.add_argument("--predict-batch", type=int, default=512, help="scoring batch (synthetic mode)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    return run_tiny(args) if args.synthetic_tiny else run_record(args)


if __name__ == "__main__":
    from burn_plugin.errors import run_reporting_errors

    sys.exit(run_reporting_errors(main))
