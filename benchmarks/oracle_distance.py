"""DIAGNOSTIC, NOT A DEFENSE: BURN's loop on a record as if the paper's observation 1 held perfectly.

It peeks at the record's poison flags: every poisoned training sample's l(x) is raised above every
clean sample's (AUROC of l = 1); the adversarial labels, the frozen model's outputs and every other
setting stay as BURN computes them. Then ``run_burn`` runs with the given settings (the paper's by
default) and the script prints ACC/ASR/RA and the purity of the relabelled and clean sets per round,
beside the same run with the real distances.

What it separates: if BURN fails on a record but succeeds here, the detection (observation 1) is what
fails; if it fails here too, the unlearning loop itself (observation 2, the k_p budget, the lr) falls
short. Nothing is written into the record; ``--cache-dir`` reuses/stores the boundary analysis.

    python benchmarks/oracle_distance.py --record record/blended_fm [--real] [--set lr=1e-3 ...]
"""
from __future__ import annotations

import argparse
import copy
import json
import sys
import time


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", default=None, help="attack record folder (holds attack_result.pt); without it, "
                    "the script names the command that makes a small one")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a BurnConfig setting, e.g. --set rounds=5 (repeatable); default: the paper's")
    ap.add_argument("--real", action="store_true", help="also run with the real distances, for comparison")
    ap.add_argument("--cache-dir", default=None, help="folder to cache the boundary analysis in")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the per-round rows here")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from burn_plugin.bench.metrics import evaluate
    from burn_plugin.bench.records import load_record, require_record_argument
    from burn_plugin.core import burn as core
    from burn_plugin.core.config import BurnConfig
    from burn_plugin.core.tensors import PixelSpaceModel

    values = dict(item.partition("=")[::2] for item in args.set)
    cfg = BurnConfig.from_mapping({k.strip(): v.strip() for k, v in values.items()}, source="--set")
    rec = load_record(require_record_argument(args.record))
    train = rec.tensors("bd_train")
    data = core.BurnData(x=train.x, y=train.label, mean=rec.spec.mean3, std=rec.spec.std3, hflip=rec.spec.hflip)
    poison = train.poison.bool()
    clean_test, bd_test = rec.tensors("clean_test"), rec.tensors("bd_test")
    from burn_plugin.fileio import FileBoundaryCache

    cache = FileBoundaryCache(args.cache_dir) if args.cache_dir else None
    real = core.analyse_boundary(rec.build_model(), data, cfg, device=args.device, cache=cache)
    oracle = copy.deepcopy(real)
    oracle.distance = real.distance + poison.float() * (float(real.distance.max()) + 1.0)

    def evaluator(model):
        return evaluate(model, clean_test, bd_test, device=args.device)

    before = evaluator(PixelSpaceModel(rec.build_model(), rec.spec.mean3, rec.spec.std3))
    print(f"record {rec.folder}: {len(poison)} training samples, {int(poison.sum())} poisoned; before: "
          f"ACC {before['test_acc']:.4f} ASR {before['test_asr']:.4f} RA {before['test_ra']:.4f}")
    out = {"before": before}
    real_fn = core.analyse_boundary
    for name in (["oracle", "real"] if args.real else ["oracle"]):
        result = oracle if name == "oracle" else real
        core.analyse_boundary = lambda *a, _r=result, **k: copy.deepcopy(_r)
        try:
            t0 = time.time()
            res = core.run_burn(rec.build_model(), data, cfg, device=args.device, evaluate=evaluator, progress=False)
        finally:
            core.analyse_boundary = real_fn
        print(f"\n{name} distances (AUROC of l {'1.0' if name == 'oracle' else 'as measured'}); "
              f"{time.time() - t0:.0f} s")
        rows = []
        for h, sel in zip(res.history, res.selections):
            # with eval_every_round false only the last round has test metrics (None in the others)
            row = {"round": h["round"], **{k: h.get(k) for k in ("test_acc", "test_asr", "test_ra")},
                   "relabelled_poison_share": float(poison[sel.poison].float().mean()) if len(sel.poison) else None,
                   "clean_set_poison": int(poison[sel.clean].sum())}
            rows.append(row)
            share = row["relabelled_poison_share"]
            metrics = "  ".join(f"{k} {'  -   ' if row[key] is None else format(row[key], '.4f')}"
                                for k, key in (("ACC", "test_acc"), ("ASR", "test_asr"), ("RA", "test_ra")))
            print(f"  round {row['round']:2d}  {metrics}  relabelled set poison "
                  f"{'-' if share is None else f'{share:.3f}'}  poisoned in clean set {row['clean_set_poison']}")
        out[name] = rows
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0


if __name__ == "__main__":
    from burn_plugin.errors import run_reporting_errors

    sys.exit(run_reporting_errors(main))
