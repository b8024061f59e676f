"""Poison detectors inside BURN, side by side on attack records: how well each ranks the poison, what
it costs beside the boundary analysis, and (``--defend``) what BURN achieves with it.

For every record and every detector in ``--detectors`` (default: all of ``core/detectors.py``):

- AUROC of the detector's score against all poisoned samples and against label-flipped poison only
  (the record's poison flags are read here, for the report; no detector sees them);
- phase 1's precision: the share of poison (and of label-flipped poison) in the top ``k_p0`` % of
  training samples by the score, the set BURN relabels first;
- wall time: the boundary analysis (shared by all detectors: the relabelling needs its adversarial
  labels, and the feature detectors use l(x) to choose the suspect part of a label), the penultimate
  features (shared by the feature detectors) and the detector itself;
- ``--defend``: ACC / ASR / RA after ``burn defend`` with the paper's settings (``--set`` changes them)
  and that detector, written to ``<record>/defense/burn_<detector>/`` (``burn/`` for ``boundary``), and
  beside them the oracle diagnostic (``benchmarks/oracle_distance.py``: BD ranks every poisoned
  sample first; not a defense, it peeks at the flags);
- ``--runs``: the same column from BURN runs already finished under ``<record>/defense/`` (nothing is
  run): for each detector, the run whose ``run.json`` has that detector and otherwise exactly the
  ``--set`` settings (the paper's by default), whatever its folder is called, or none ("-"); with
  ``--from-json`` too;
- ``--boundary-variants N``: the boundary detector's own settings on a stratified subsample of N
  training samples: ``box_aware`` true (the fast step) and false (plain clip-after-step DeepFool, the
  paper's and Foolbox's, the default), and SuperDeepFool (box-aware): AUROC of l(x) and seconds per 1,000 images.

    python benchmarks/detectors.py --record record/badnet_fm --record record/blended_fm \\
        [--detectors boundary,activation_clustering] [--defend] [--boundary-variants 2000] \\
        [--set eval_every_round=false] [--json out.json] [--markdown out.md]
    python benchmarks/detectors.py --from-json badnet.json --from-json blended.json --markdown all.md
    python benchmarks/detectors.py --from-json badnet.json --runs --set box_aware=true --markdown all.md

The boundary analysis is cached in the user's folder (``$BURN_HOME/boundary``, as ``burn defend`` caches it),
so a second run, and the ``--defend`` runs, reuse it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from burn_plugin.report.detectors import detector_matrix, detector_table, fmt, read_results


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--record", action="append", default=[], help="attack record folder (repeatable); without "
                    "one, the script names the command that makes a small one")
    ap.add_argument("--detectors", default=None, help="comma list (default: every registered detector)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="a BurnConfig setting for the analysis and --defend runs (repeatable); default: the paper's")
    ap.add_argument("--defend", action="store_true", help="also run BURN with each detector, and the oracle")
    ap.add_argument("--runs", action="store_true", help="fill 'after BURN' from finished BURN runs under "
                    "<record>/defense/ with that detector and the --set settings (nothing is run)")
    ap.add_argument("--overwrite", action="store_true", help="with --defend: replace earlier results")
    ap.add_argument("--no-oracle", action="store_true", help="with --defend: leave out the oracle diagnostic run")
    ap.add_argument("--boundary-variants", type=int, default=0, metavar="N",
                    help="compare box_aware true/false and SuperDeepFool on N stratified training samples")
    ap.add_argument("--sdf-max-iter", type=int, default=12, help="SuperDeepFool's budget in the variants")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write every number here")
    ap.add_argument("--markdown", default=None, help="write the table here")
    ap.add_argument("--from-json", action="append", default=[], metavar="FILE",
                    help="measure nothing: print (and with --markdown write) the tables of earlier --json files, "
                    "one after another (repeatable)")
    return ap.parse_args(argv)


def auroc(score, positive):
    from sklearn.metrics import roc_auc_score

    positive = positive.numpy().astype(bool)
    if positive.all() or not positive.any():
        return None
    return float(roc_auc_score(positive, score.double().numpy()))


def precision_at(score, positive, k: int):
    import torch

    if not k or not positive.any():     # no such poison on this record (clean-label attacks: no flipped poison)
        return None
    top = torch.argsort(score, descending=True, stable=True)[:k]
    return float(positive[top].float().mean())


def register_oracle(poison, distance):
    """The oracle diagnostic as a detector: BD = l / l_max after every poisoned sample's l(x) is raised
    above every clean one's (exactly ``oracle_distance.py``'s distances)."""
    from burn_plugin.core.detectors import DETECTORS, register_detector
    from burn_plugin.core.scores import boundary_score

    DETECTORS.pop("oracle", None)

    @register_detector("oracle", needs_boundary=True, needs_features=False)
    def _oracle(ctx):
        """DIAGNOSTIC: peeks at the poison flags."""
        return boundary_score(distance + poison.float() * (float(distance.max()) + 1.0))


def boundary_variants(rec, data, cfg, poison, n: int, sdf_max_iter: int, device: str) -> list[dict]:
    import dataclasses

    import torch

    from burn_plugin.core import burn as core

    g = torch.Generator().manual_seed(0)
    pos, neg = poison.nonzero().flatten(), (~poison).nonzero().flatten()
    n_pos = min(len(pos), max(1, int(round(n * float(poison.float().mean())))))
    idx = torch.cat([pos[torch.randperm(len(pos), generator=g)[:n_pos]],
                     neg[torch.randperm(len(neg), generator=g)[:n - n_pos]]])
    sub = core.BurnData(x=data.x[idx], y=data.y[idx], mean=data.mean, std=data.std, hflip=data.hflip)
    rows = []
    # each variant names its box_aware setting, whatever the default and --set say (SuperDeepFool box-aware,
    # as it was measured when box-aware was the default)
    for name, change in (("box_aware=True (fast)", {"box_aware": True}),
                         ("box_aware=False (paper, Foolbox; the default)", {"box_aware": False}),
                         (f"superdeepfool max_iter={sdf_max_iter}",
                          {"boundary_method": "superdeepfool", "max_iter": sdf_max_iter, "box_aware": True})):
        c = dataclasses.replace(cfg, **change)
        t0 = time.time()
        res = core.analyse_boundary(rec.build_model().to(device), sub, c, device=device)
        sec = time.time() - t0
        rows.append({"variant": name, "box_aware": c.box_aware, "boundary_method": c.boundary_method,
                     "samples": len(idx), "auroc_poison": auroc(res.distance, poison[idx]),
                     "not_converged": int((~res.converged).sum()), "seconds_per_1000": 1000 * sec / len(idx)})
        print(f"  {name:46s} AUROC {rows[-1]['auroc_poison']:.3f}  not converged {rows[-1]['not_converged']:4d}  "
              f"{rows[-1]['seconds_per_1000']:.1f} s / 1000 images", flush=True)
    return rows


HERE = Path(__file__).resolve().parent


def _commit() -> str | None:
    """The checkout's commit (with ``+changes`` when the tree differs from it), so that a table can say
    which code measured a row; None outside a git checkout."""
    import subprocess

    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True, text=True,
                             check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=HERE,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return rev + ("+changes" if dirty else "")


def measure_record(folder, args, cfg, names) -> dict:
    from burn_plugin.bench.records import load_record
    from burn_plugin.core import burn as core
    from burn_plugin.core.detectors import DETECTORS, detector_scores, penultimate_features
    from burn_plugin.core.scores import count_of
    from burn_plugin.defend import default_output_name, defend
    from burn_plugin.fileio import FileBoundaryCache, boundary_cache_folder

    rec = load_record(folder)
    train = rec.tensors("bd_train")
    data = core.BurnData(x=train.x, y=train.label, mean=rec.spec.mean3, std=rec.spec.std3, hflip=rec.spec.hflip)
    poison = train.poison.bool()
    flipped = poison & (train.label != train.original_label)
    infected = rec.build_model().to(args.device).eval()
    print(f"\nrecord {rec.folder}: {len(poison)} training samples, {int(poison.sum())} poisoned "
          f"({int(flipped.sum())} label-flipped)", flush=True)
    t0 = time.time()
    model = core.detection_model(infected, data, cfg, device=args.device)   # the infected model by default
    detection_s = time.time() - t0
    if cfg.detection_model != "infected":
        print(f"  detection model {cfg.detection_model}: trained in {detection_s:.0f} s", flush=True)
    t0 = time.time()
    boundary = core.analyse_boundary(model, data, cfg, device=args.device,
                                     cache=FileBoundaryCache(boundary_cache_folder(rec.folder / "defense" / "burn")))
    boundary_s = time.time() - t0
    t0 = time.time()
    features = penultimate_features(model, data.x, mean=data.mean, std=data.std, batch_size=cfg.boundary_batch_size,
                                    device=args.device)
    features_s = time.time() - t0
    k = count_of(cfg.k_p0, len(poison), "k_p0")
    out = {"record": str(rec.folder), "n_train": len(poison), "n_poison": int(poison.sum()),
           "detection_model": cfg.detection_model, "detection_model_seconds": detection_s,
           "boundary_seconds": boundary_s, "features_seconds": features_s, "k_p0_samples": k, "commit": _commit(),
           "detectors": []}
    print(f"  boundary analysis {boundary_s:.0f} s (0 s when cached), penultimate features {features_s:.1f} s; "
          f"phase 1 relabels the top {k}", flush=True)
    for name in names:
        t0 = time.time()
        s = detector_scores(name, model, data.x, data.y, mean=data.mean, std=data.std,
                            boundary_distance=boundary.distance, adv_label=boundary.adv_label, device=args.device,
                            batch_size=cfg.boundary_batch_size, seed=cfg.random_seed,
                            features=features if DETECTORS[name].needs_features else None,
                            reference_model=infected if model is not infected else None,
                            side_rule=cfg.suspect_side)
        row = {"detector": name, "seconds": time.time() - t0,
               "uses_features": DETECTORS[name].needs_features,
               "auroc_poison": auroc(s, poison), "auroc_flipped": auroc(s, flipped),
               "phase1_precision": precision_at(s, poison, k), "phase1_precision_flipped": precision_at(s, flipped, k)}
        out["detectors"].append(row)
        print(f"  {name:22s} AUROC {fmt(row['auroc_poison'])} (flipped {fmt(row['auroc_flipped'])})  phase-1 "
              f"precision {fmt(row['phase1_precision'])} (flipped {fmt(row['phase1_precision_flipped'])})  "
              f"{row['seconds']:.1f} s", flush=True)
    if args.boundary_variants:
        print(f"  boundary settings on {args.boundary_variants} stratified samples:", flush=True)
        out["boundary_variants"] = boundary_variants(rec, data, cfg, poison, args.boundary_variants,
                                                     args.sdf_max_iter, args.device)
    if args.defend:
        import dataclasses

        register_oracle(poison, boundary.distance)
        runs = list(out["detectors"])
        if not args.no_oracle:
            out["oracle"] = {"detector": "oracle"}
            runs.append(out["oracle"])
        try:
            for row in runs:
                c = dataclasses.replace(cfg, detector=row["detector"])
                t0 = time.time()
                summary = defend(rec.folder, config=c, device=args.device, overwrite=args.overwrite, progress=False,
                                 output_dir=rec.folder / "defense" / default_output_name("burn", c))
                out["before"], row["after"], row["defend_seconds"] = summary["before"], summary["after"], time.time() - t0
                row["defend_boundary_seconds"] = (summary.get("timings") or {}).get("boundary_s")
                a = row["after"]
                print(f"  BURN[{row['detector']}]: ACC {a['test_acc']:.4f}  ASR {a['test_asr']:.4f}  "
                      f"RA {a['test_ra']:.4f}  ({row['defend_seconds']:.0f} s)", flush=True)
        finally:
            DETECTORS.pop("oracle", None)
    return out


def attach_runs(result: dict, cfg) -> list[str]:
    """Fill each detector row's ``after`` and ``defend_seconds`` (and the record's ``before``) from finished
    BURN runs under ``<record>/defense/``: a run counts for a detector when its ``run.json`` names that
    detector and every other setting equals ``cfg``'s (a setting the run's version did not know yet is
    skipped). Where several runs match, the first folder by name counts. Returns one line per detector:
    which folder filled it, or that none did."""
    from pathlib import Path

    want = {k: v for k, v in cfg.to_dict().items() if k != "detector"}   # as run.json writes its config
    matches: dict[str, list[tuple[str, dict]]] = {}
    for path in sorted((Path(result["record"]) / "defense").glob("*/run.json")):
        try:
            run = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        config = run.get("config") if isinstance(run.get("config"), dict) else {}
        if run.get("method") != "burn" or not isinstance(run.get("after"), dict):
            continue
        if any(k in config and config[k] != v for k, v in want.items()):
            continue
        matches.setdefault(config.get("detector", "boundary"), []).append((path.parent.name, run))
    lines = []
    for row in result["detectors"]:
        found = matches.get(row["detector"], [])
        if not found:
            for key in ("after", "defend_seconds", "defend_boundary_seconds", "run_folder"):
                row.pop(key, None)
            lines.append(f"{row['detector']}: no finished run with these settings")
            continue
        folder, run = found[0]
        row["after"], row["defend_seconds"], row["run_folder"] = run["after"], run.get("wall_seconds"), folder
        row["defend_boundary_seconds"] = (run.get("timings") or {}).get("boundary_s")
        result.setdefault("before", run.get("before"))
        lines.append(f"{row['detector']}: defense/{folder}" + (f" (also {', '.join(f for f, _ in found[1:])})"
                                                               if len(found) > 1 else ""))
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    from burn_plugin.bench.records import require_record_argument
    from burn_plugin.core.config import BurnConfig
    from burn_plugin.core.detectors import list_detectors
    from burn_plugin.errors import ConfigError

    if args.runs and args.defend:
        raise ConfigError("--runs reads finished BURN runs and --defend makes new ones: give one of them")
    values = {k.strip(): v.strip() for k, v in (item.partition("=")[::2] for item in args.set)}
    cfg = BurnConfig.from_mapping(values, source="--set")
    if args.from_json:
        return _write_tables(read_results(args.from_json), args, cfg)
    records = [require_record_argument(r) for r in (args.record or [None])]
    names = [n.strip() for n in args.detectors.split(",")] if args.detectors else list_detectors()
    unknown = [n for n in names if n not in list_detectors()]
    if unknown:
        raise ConfigError(f"unknown detector(s) {', '.join(unknown)}; choose from {', '.join(list_detectors())}")
    results = [measure_record(r, args, cfg, names) for r in records]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return _write_tables(results, args, cfg)


def _write_tables(results: list[dict], args, cfg) -> int:
    if args.runs:
        for r in results:
            print(f"{r['record']}: BURN runs read", *attach_runs(r, cfg), sep="\n  ")
    table = detector_matrix(results) + "\n" + detector_table(results)
    print("\n" + table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    return 0


if __name__ == "__main__":
    from burn_plugin.errors import run_reporting_errors

    sys.exit(run_reporting_errors(main))
