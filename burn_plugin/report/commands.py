"""``burn compare``: the side-by-side table of every defense on every attack, and its plots.

Imported by :func:`burn_plugin.cli.main` at start-up, which registers the subcommand.

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
