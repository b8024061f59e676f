"""The ``burn`` command.

Subcommands: ``attack`` (make a backdoored record), ``info`` (describe a record), ``defend`` (run BURN
or a baseline on a record), ``register``/``doctor`` (install into / check a BackdoorBench checkout),
``compare`` (side-by-side table), ``sweep`` (BackdoorBench's defenses over a checkout), ``demo`` (everything on the embedded Fashion-MNIST data).

Every deliberate error is one line ``error: ...`` naming the problem and the fix; exit code 2 for
bad input, 1 for runtime failures; ``--debug`` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import BadInputError, run_reporting_errors
from .flags import SUBCOMMANDS, OneLineErrorParser, add_settings_flags, flag, settings_from_flags, subcommand
# Imports of torch-heavy modules sit inside the functions that need them: this module stays free of torch and
# pandas so that `burn --help` and argument errors answer at once (tests/test_import_cycles.py holds it to that).


# ------------------------------------------------------------------------------------------------
@subcommand("attack", "train a backdoored model and write a BackdoorBench record folder")
def cmd_attack(args) -> int:
    from .bench.attacks import AttackSettings, attack_params, run_attack

    settings = settings_from_flags(AttackSettings, args,
                                   extra={k: getattr(args, k) for k in attack_params() if hasattr(args, k)})
    out = Path(args.out) if args.out else Path("record") / f"{args.attack}_{args.dataset}_{args.model}"
    final = run_attack(settings, out, overwrite=args.overwrite, clean_reference=args.clean_reference,
                       progress=not args.quiet)
    print(f"record: {out}")
    if final.get("replaced_defense_results"):
        print(f"replaced the old record; its defense results (made on the old attack) were moved to "
              f"{final['replaced_defense_results']}")
    print(f"ACC {final['test_acc']:.4f}  ASR {final['test_asr']:.4f}  RA {final['test_ra']:.4f}  "
          f"(training {final['train_seconds']:.0f}s)")
    if "clean_reference_test_acc" in final:
        print(f"clean-trained reference: ACC {final['clean_reference_test_acc']:.4f}  "
              f"(difference {100 * (final['clean_reference_test_acc'] - final['test_acc']):+.2f} points)")
    return 0


def _configure_attack(p):
    from .bench.attacks import AttackSettings, attack_params
    from .bench.attacks.base import describe_defaults

    add_settings_flags(p, AttackSettings)
    p.add_argument("--out", default=None, help="record folder to write (default record/<attack>_<dataset>_<model>)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing record in --out")
    flag(p, "clean_reference", action="store_true",
         help="also train the same model on clean data and print its accuracy for comparison")
    for k, (typ, defaults, hlp, owners) in attack_params().items():
        flag(p, k, type=typ, default=argparse.SUPPRESS, help=f"{'/'.join(owners)}: {hlp} ({describe_defaults(defaults)})")


cmd_attack.configure = _configure_attack


# ------------------------------------------------------------------------------------------------
@subcommand("info", "describe an attack record (or list models/datasets)")
def cmd_info(args) -> int:
    if args.models or args.datasets or not args.record:
        from .bench.datasets import get_spec, list_datasets
        from .bench.models import list_models

        if args.models or not args.record:
            print("models:", ", ".join(list_models()))
        if args.datasets or not args.record:
            for n in list_datasets():
                s = get_spec(n)
                print(f"dataset {n}: {s.num_classes} classes, {s.img_size}, layout {s.layout}")
        return 0
    from .bench.records import load_record

    rec = load_record(args.record, trusted=args.trust_record, dataset_path=args.dataset_path)
    rec.build_model()  # what `burn defend` checks first: a known model whose weights fit the record
    tr = rec.bd_train.label_arrays() if rec.bd_train is not None else None
    te = rec.bd_test.label_arrays()
    print(f"record:       {rec.folder}")
    print(f"model:        {rec.model_name} ({rec.num_classes} classes, {len(rec.state_dict)} tensors)")
    print(f"dataset:      {rec.dataset} {rec.img_size}, data at {rec.data_root or 'default location'}")
    if tr is not None:
        flipped = int((tr["poison"] & (tr["label"] != tr["original_label"])).sum())
        print(f"bd_train:     {len(tr['label'])} samples, {int(tr['poison'].sum())} poisoned "
              f"({flipped} with a flipped label)")
    print(f"bd_test:      {len(te['label'])} samples, {int(te['poison'].sum())} poisoned")
    for k in ("attack", "attack_label_trans", "attack_target", "pratio"):
        if k in rec.settings:
            print(f"{k + ':':13} {rec.settings[k]}")
    if rec.baseline:
        b = rec.baseline
        print(f"no defense:   ACC {b.get('test_acc', float('nan')):.4f}  ASR {b.get('test_asr', float('nan')):.4f}  "
              f"RA {b.get('test_ra', float('nan')):.4f}  (attack_df_summary.csv, row last)")
    return 0


def _configure_info(p):
    p.add_argument("record", nargs="?", help="attack folder (holding attack_result.pt)")
    flag(p, "trust_record", action="store_true", help="allow the full unpickler (only for files you trust)")
    flag(p, "dataset_path", default=None, help="folder holding <dataset>/ if not <R>/data")
    p.add_argument("--models", action="store_true", help="list model names")
    p.add_argument("--datasets", action="store_true", help="list datasets")


cmd_info.configure = _configure_info


# ------------------------------------------------------------------------------------------------
@subcommand("defend", "run BURN (or another method) on an attack record and write results beside it")
def cmd_defend(args) -> int:
    from .bench.records import record_dataset, resolve_attack_folder
    from .defend import defend, print_summary
    from .defenses import all_defenses, get_defense
    from .flags import given_flags
    from .settings import RUN_KEYS, merge_settings, resolve_yaml

    method = args.method
    config_cls = get_defense(method).config_class
    folder = args.attack_folder or args.result_file
    if not folder:
        raise BadInputError("no record given; pass --attack_folder PATH (the folder holding attack_result.pt)")
    folder = resolve_attack_folder(folder)
    if getattr(args, "dataset", None):
        from .bench.datasets import get_spec

        get_spec(args.dataset)  # an unknown name is the first thing to report
    yaml_path = args.yaml_path or resolve_yaml(method, getattr(args, "dataset", None) or record_dataset(folder))
    all_keys = {k for d in all_defenses() for k in d.config_class.keys()}
    given = given_flags(args, sorted(all_keys) + list(RUN_KEYS))
    cfg, run, ignored, _ = merge_settings(config_cls, yaml_path, given)
    # the YAML's dataset is a default, not a claim about the record; only a --dataset flag is checked
    summary = defend(folder, method=method, config=cfg, device=run.get("device") or "cpu",
                     dataset=given.get("dataset"), model_name=run.get("model"), dataset_path=run.get("dataset_path"),
                     trusted=args.trust_record, output_dir=args.output_dir, overwrite=args.overwrite,
                     resume=args.resume, progress=not args.quiet,
                     run_info={"yaml_path": str(yaml_path) if yaml_path else None, "ignored_keys": ignored})
    if summary is not None:  # torchrun's other ranks leave the summary to rank 0
        print_summary(summary)
    return 0


def _configure_defend(p):
    from .defenses import all_defenses, list_defenses
    from .flags import add_algorithm_flags
    from .settings import RUN_KEYS

    flag(p, "attack_folder", default=None, help="attack record folder (holding attack_result.pt), or a folder "
         "name under ./record/ as in BackdoorBench")
    flag(p, "result_file", default=None, help="alias of --attack_folder (BackdoorBench's name)")
    p.add_argument("--method", default="burn", help=f"defense to run: {', '.join(list_defenses())} (default burn)")
    flag(p, "yaml_path", default=None, help="YAML settings (default: the bundled bb_configs/<method>/<dataset>.yaml); "
         "flags given on the command line override it")
    for k, (typ, _default, hlp) in RUN_KEYS.items():
        flag(p, k, type=typ, default=argparse.SUPPRESS, help=hlp)
    flag(p, "trust_record", action="store_true", help="allow the full unpickler for this record (runs code in "
         "the file; only for records you made or trust)")
    flag(p, "output_dir", default=None, help="where to write (default <attack_folder>/defense/<method>/)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing result in the output folder "
                   "(without it an existing result is never touched)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run from its last round checkpoint")
    add_algorithm_flags(p, [d.config_class for d in all_defenses()])   # BURN's first


cmd_defend.configure = _configure_defend


# ------------------------------------------------------------------------------------------------
# burn compare: every defense on every attack under a record/ folder (burn_plugin.report.compare), written to
# --out (default RECORD_ROOT/comparison): comparison.{csv,md,tex}, radar_<attack>, per-run detection plots,
# and across attacks detection.{csv,md}, radar_by_defense and roc_by_attack (PNG and PDF each)
@subcommand("compare", "side-by-side table (attack x defense: ACC / ASR / RA / DER / wall time) and plots "
                       "for every defense result under a BackdoorBench record/ folder")
def cmd_compare(args) -> int:
    from .defend import resolve_device
    from .report.compare import DEFAULT_METRICS, gather_results, parse_metrics, render_markdown, write_comparison

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
@subcommand("results", "render the results pages (docs/results/*.md, the README's results block, the summary "
                       "figure) from the committed comparison.csv; --check fails when a page differs")
def cmd_results(args) -> int:
    """See :mod:`burn_plugin.report.pages`."""
    from .report.pages import FIGURE, plot_summary, read_comparison, render_pages, stale_pages

    results = Path(args.results_dir)
    readme = None if args.no_readme else Path(args.readme)
    pages = render_pages(results, readme)
    if args.check:
        stale = stale_pages(pages)
        for p in stale:
            print(f"{p} differs from what `burn results` renders from {results / 'comparison.csv'}", file=sys.stderr)
        if stale:
            print("run `burn results` and commit the pages", file=sys.stderr)
        return 1 if stale else 0
    from .fileio import save_text

    for p in pages:
        save_text(p.text, p.path)
    figures = [] if args.no_plots else plot_summary(read_comparison(results / "comparison.csv"), results / FIGURE)
    print("written: " + ", ".join(str(p.path) for p in pages) + "".join(f", {f}" for f in figures))
    return 0


def _configure_results(p) -> None:
    p.add_argument("--results-dir", default="docs/results", help="folder holding comparison.csv (written by "
                   "`burn compare --out`); the pages are written beside it (default docs/results)")
    p.add_argument("--readme", default="README.md", help="README whose generated blocks (between the "
                   "'<!-- verdict:begin -->'/'<!-- verdict:end -->' and '<!-- results:begin -->'/'<!-- results:end -->' "
                   "lines) are rendered (default README.md)")
    p.add_argument("--no-readme", action="store_true", help="leave the README alone")
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 naming each page that differs "
                   "from its rendering (the test suite runs this)")
    p.add_argument("--no-plots", action="store_true", help="write the pages only, not the summary figure")


cmd_results.configure = _configure_results


# ------------------------------------------------------------------------------------------------
@subcommand("demo", "attack -> BURN and FT -> table -> plots on the embedded Fashion-MNIST, in minutes")
def cmd_demo(args) -> int:
    from .demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet, device=args.device)
    return 0


def _configure_demo(p):
    p.add_argument("--out", default="burn_demo", help="folder for the record, results, table and plots "
                   "(default ./burn_demo)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")


cmd_demo.configure = _configure_demo


# ------------------------------------------------------------------------------------------------
# burn sweep: backdoorbench/ runs the defenses, report/ compares them; neither imports the other, this composes
# them (registered by _load_plugins, after register and doctor)
SWEEP_HELP = ("run BackdoorBench's own defenses (fp, nad, anp, i-bau, ft-sam, sau) and BURN on attack records "
              "from a checkout, unmodified, then print the comparison table")


def cmd_sweep(args) -> int:
    """See :mod:`burn_plugin.backdoorbench.sweep`."""
    from .backdoorbench.commands import sweep

    return sweep(args, compare=lambda plan, progress: compare_sweep(plan, args, progress))


def compare_sweep(plan, args, progress) -> tuple[str, Path]:
    """``burn compare`` on ``<root>/record`` restricted to the swept attacks and defenses (those with a
    folder); returns (the Markdown table, the output folder)."""
    from .bench.runs import find_defense_folders
    from .errors import BurnError
    from .report.compare import gather_results, render_markdown, write_comparison

    record_root = plan.root / "record"
    present = {d.name for a in plan.attacks for d in find_defense_folders(a.folder)}
    defenses = [d for d in plan.defenses if d in present]
    if not defenses:
        raise BurnError("no swept defense left a result folder; nothing to compare (see the logs above)")
    df = gather_results(record_root, attacks=[a.name for a in plan.attacks], defenses=defenses,
                        reevaluate=not args.no_reevaluate, device=plan.device, trusted=plan.trusted, progress=progress)
    out_dir = Path(args.out) if args.out else record_root / "comparison"
    write_comparison(df, out_dir, plots=not args.no_plots, root=record_root)
    return render_markdown(df), out_dir


# ------------------------------------------------------------------------------------------------
def _version_line() -> str:
    """``burn-plugin 0.1.0 (/path/to/burn_plugin)``: which copy of the code a run uses (several clones
    with an editable install each are common)."""
    import burn_plugin

    return f"burn-plugin {burn_plugin.__version__} ({Path(burn_plugin.__file__).resolve().parent})"


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(
        prog="burn", description="BURN backdoor defense: BackdoorBench-compatible records, attacks, defense, "
        "comparison tables.", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show tracebacks instead of one-line errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--version", action="version", version=_version_line(),
                        help="print the version and where the package is imported from, then exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, fn) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        p.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        fn.configure(p)
        p.set_defaults(_fn=fn)
    return parser


def _load_plugins() -> None:
    """Import the module that registers ``burn register`` and ``burn doctor`` (kept out of the import path of
    `burn --help`), then register ``burn sweep``, which needs it, after them."""
    import importlib

    mod = "burn_plugin.backdoorbench.commands"
    try:
        commands = importlib.import_module(mod)
    except ModuleNotFoundError as exc:
        if exc.name != mod:
            raise
        return
    cmd_sweep.configure = commands.configure_sweep
    subcommand("sweep", SWEEP_HELP)(cmd_sweep)


def main(argv=None) -> int:
    _load_plugins()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_fn", None):
        parser.print_help()
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    return run_reporting_errors(lambda: args._fn(args), debug=args.debug)


if __name__ == "__main__":
    from burn_plugin.cli import main as _main  # one module instance, so plugin subcommands register on it

    sys.exit(_main())
