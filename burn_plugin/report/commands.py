"""``burn compare``: the side-by-side table of every defense on every attack, and its plots;
``burn sweep``: BackdoorBench's own defenses and BURN over a checkout's records, then that table
(:mod:`burn_plugin.report.sweep`).

Imported by :func:`burn_plugin.cli.main` at start-up, which registers the subcommands.

    burn compare record/                       # re-evaluate every model, print Markdown, write record/comparison/
    burn compare record/ --no-reevaluate       # numbers from the defenses' own summary CSVs only (fast)
    burn compare record/ --attacks badnet_0_1 --defenses sau,burn --metrics acc,asr,der --out paper/

Output folder (``--out``, default ``RECORD_ROOT/comparison``): ``comparison.csv`` (tidy: one row per
attack and defense, fractions, with the source of every number), ``comparison.md``,
``comparison.tex``, ``radar_<attack>.{png,pdf}`` and, for every defense folder holding BURN's
``scores.npz``, ``<attack>_<defense>_{roc,distance_histogram,rounds}.{png,pdf}``. The default keeps
the comparison with the records it summarises; the walk never mistakes it for an attack folder
(it holds no ``attack_result.pt``).
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..cli import flag, subcommand


@subcommand("compare", "side-by-side table (attack x defense: ACC / ASR / RA / DER / wall time) and plots "
                       "for every defense result under a BackdoorBench record/ folder")
def cmd_compare(args) -> int:
    from ..defend import resolve_device
    from .compare import DEFAULT_METRICS, gather_results, parse_metrics, render_markdown, write_comparison

    from ..errors import BadInputError

    if args.batch_size < 1:
        raise BadInputError(f"--batch-size must be at least 1, got {args.batch_size}")
    metrics = parse_metrics(args.metrics or ",".join(DEFAULT_METRICS))  # bad names fail before any work
    device = resolve_device(args.device)
    quiet = getattr(args, "quiet", False)

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    df = gather_results(args.record_root, attacks=args.attacks, defenses=args.defenses,
                        reevaluate=not args.no_reevaluate, device=device, trusted=args.trust_record,
                        batch_size=args.batch_size, dataset_path=args.dataset_path, progress=progress)
    root = Path(args.record_root)
    out = Path(args.out) if args.out else root / "comparison"
    print(render_markdown(df, metrics), end="")
    written = write_comparison(df, out, metrics=metrics, plots=not args.no_plots, root=root)
    print(f"\nwritten to {out}: " + ", ".join(p.name for p in written["tables"])
          + (f" and {len(written['plots'])} plot files" if written["plots"] else ""))
    return 0


def _configure_compare(p) -> None:
    p.add_argument("record_root", metavar="RECORD_ROOT",
                   help="BackdoorBench's record/ folder (holding <attack>/attack_result.pt and "
                        "<attack>/defense/<name>/), or one attack folder")
    p.add_argument("--out", default=None, help="folder for comparison.{csv,md,tex} and the plots "
                   "(default RECORD_ROOT/comparison)")
    p.add_argument("--attacks", default=None, help="comma-separated attack folder names to keep (default all)")
    p.add_argument("--defenses", default=None, help="comma-separated defense names to keep (default all)")
    p.add_argument("--metrics", default=None, help="comma-separated columns per defense: acc, asr, ra, der, rir, "
                   "time (default acc,asr,ra,der,time; time only where run.json records it)")
    p.add_argument("--device", default="cpu", help="device for re-evaluation: cpu, cuda, cuda:0 ... (default cpu)")
    flag(p, "batch_size", type=int, default=256, help="evaluation batch size (default 256)")
    flag(p, "trust_record", action="store_true", help="allow the full unpickler for attack_result.pt and "
         "defense_result.pt (runs code in the files; only for results you made or trust)")
    flag(p, "no_reevaluate", action="store_true", help="do not rebuild and evaluate models; read every number "
         "from the defenses' summary CSVs (fast, but each defense's own evaluation)")
    flag(p, "dataset_path", default=None, help="folder holding <dataset>/ if not <R>/data (as for burn defend)")
    flag(p, "no_plots", action="store_true", help="write the tables only")


cmd_compare.configure = _configure_compare


# ------------------------------------------------------------------------------------------------
@subcommand("sweep", "run BackdoorBench's own defenses (fp, nad, anp, i-bau, ft-sam, sau) and BURN on attack "
                     "records from a checkout, unmodified, then print the comparison table")
def cmd_sweep(args) -> int:
    """See :mod:`burn_plugin.report.sweep`."""
    from ..defend import resolve_device
    from ..errors import BurnError
    from .sweep import compare_after, plan_sweep, run_sweep, summary_lines

    quiet = getattr(args, "quiet", False)
    device = resolve_device(args.device)

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    plan = plan_sweep(args.bb_root, attacks=args.attacks, defenses=args.defenses, device=device, fast=args.fast,
                      python=args.python, dataset=args.dataset, model=args.model,
                      ratio=0.05 if args.ratio is None else args.ratio, index=args.index, seed=args.random_seed,
                      rerun=args.rerun, trusted=args.trust_record)
    runs = run_sweep(plan, dry_run=args.dry_run, progress=not quiet,
                     say=lambda m: print(m, file=sys.stderr, flush=True))
    if args.dry_run:
        return 0
    print("\n".join(summary_lines(runs)))
    failed = [r for r in runs if r.status != "ok" and r.status != "skipped"]
    code = 1 if failed else 0
    if not args.no_compare:
        try:
            table, out = compare_after(plan, reevaluate=not args.no_reevaluate, out=args.out,
                                       plots=not args.no_plots, progress=progress)
            print()
            print(table, end="")
            print(f"\ncomparison written to {out}")
        except BurnError as exc:
            print(f"error: comparison failed: {exc}", file=sys.stderr)
            code = 1
    if failed:
        print(f"\n{len(failed)} of {len(runs)} run(s) failed: " + ", ".join(r.label for r in failed)
              + " (see above; run the sweep again to retry them, finished runs are skipped)", file=sys.stderr)
    return code


def _configure_sweep(p) -> None:
    from .sweep import DEFAULT_DEFENSES, DEFENSES

    flag(p, "bb_root", default=None, metavar="PATH", help="BackdoorBench checkout (holding defense/, config/defense/, "
         "record/); default $BACKDOORBENCH_ROOT")
    p.add_argument("--attacks", default=None, help="comma-separated attack folder names under record/ "
                   "(default: every folder there holding attack_result.pt)")
    p.add_argument("--defenses", default=",".join(DEFAULT_DEFENSES), help="comma-separated, from "
                   f"{', '.join(DEFENSES)} (default {','.join(DEFAULT_DEFENSES)})")
    p.add_argument("--device", default="cpu", help="passed to every defense: cpu, cuda, cuda:0 ... (default cpu)")
    p.add_argument("--fast", action="store_true", help="fewer epochs/rounds per defense (printed, and stored in "
                   "each run's sweep_run.json)")
    p.add_argument("--python", default=None, help="BackdoorBench's interpreter (default <bb-root>/.venv/bin/python "
                   "if there, else this one)")
    p.add_argument("--dataset", default=None, help="dataset name as BackdoorBench knows it (default: the record's)")
    p.add_argument("--model", default=None, help="model name (default: the record's model_name)")
    clean = p.add_mutually_exclusive_group()
    clean.add_argument("--ratio", type=float, default=None, help="share of clean_train in the clean subset every "
                       "defense gets (default 0.05, BackdoorBench's)")
    clean.add_argument("--index", default=None, help="file of clean_train indices, one per line, given to every "
                       "defense instead (default: drawn once per attack into record/<attack>/sweep/clean_index.txt)")
    flag(p, "random_seed", type=int, default=0, help="seed for every defense and the clean index (default 0)")
    p.add_argument("--rerun", action="store_true", help="run finished defenses again (their old folder is kept "
                   "under defense/.sweep_previous/)")
    flag(p, "dry_run", action="store_true", help="print the commands without running anything")
    flag(p, "trust_record", action="store_true", help="allow the full unpickler when reading the records here "
         "(only for records you made or trust)")
    flag(p, "no_compare", action="store_true", help="do not run burn compare at the end")
    flag(p, "no_reevaluate", action="store_true", help="compare from the defenses' summary CSVs only (fast)")
    flag(p, "no_plots", action="store_true", help="comparison tables only, no plots")
    p.add_argument("--out", default=None, help="folder for the comparison (default <bb-root>/record/comparison)")


cmd_sweep.configure = _configure_sweep
