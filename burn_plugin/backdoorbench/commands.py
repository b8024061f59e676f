"""``burn register``, ``burn doctor`` and the runs of ``burn sweep`` (imported by :func:`burn_plugin.cli.main` at
start-up; the command line composes the sweep with the comparison, which this package never imports)."""
from __future__ import annotations

import contextlib
import sys
from collections import Counter

from ..errors import BurnError
from ..fileio import folder_lock
from ..flags import flag, subcommand
from .register import methods, register, resolve_bb_root, unregister
# Imports of torch-heavy modules sit inside the functions that need them: this module stays free of torch and
# pandas so that `burn --help` and argument errors answer at once (tests/test_import_cycles.py holds it to that).


def _bb_root_flag(p) -> None:
    flag(p, "bb_root", default=None, metavar="PATH",
         help="BackdoorBench checkout (holding defense/, config/defense/, utils/ or record/); "
              "default $BACKDOORBENCH_ROOT")


@subcommand("register", "install the plugin's defenses (BURN, ULRL) into a BackdoorBench checkout "
                        "(defense/<name>.py + config/defense/<name>/)")
def cmd_register(args) -> int:
    root = resolve_bb_root(args.bb_root)
    if args.uninstall:
        actions = unregister(root, force=args.force)
    else:
        actions = register(root, force=args.force)
    for a in actions:
        print(a.line())
    if not args.uninstall:
        print(f"registered in {root}; run from there: python defense/burn.py --attack_folder <attack> "
              f"--dataset <dataset> --yaml_path config/defense/burn/<dataset>.yaml --device cuda:0 "
              f"(also: {', '.join(f'defense/{m}.py' for m in methods() if m != 'burn')})")
    return 0


def _configure_register(p) -> None:
    _bb_root_flag(p)
    p.add_argument("--uninstall", action="store_true",
                   help="remove exactly the files burn register installed (and folders it created, if empty)")
    p.add_argument("--force", action="store_true",
                   help="replace (or on --uninstall, remove) files that burn register did not write or that "
                        "were changed since")


cmd_register.configure = _configure_register


@subcommand("doctor", "check a BackdoorBench checkout: BURN installed, data, records, Python packages")
def cmd_doctor(args) -> int:
    from .doctor import diagnose, report

    lines, code = report(diagnose(resolve_bb_root(args.bb_root)))
    print("\n".join(lines))
    return code


cmd_doctor.configure = _bb_root_flag


# ------------------------------------------------------------------------------------------------
def sweep(args, compare) -> int:
    """``burn sweep``'s runs (see :mod:`burn_plugin.backdoorbench.sweep`), then ``compare(plan, progress) ->
    (Markdown table, output folder)`` unless ``--no-compare``."""
    from ..defend import resolve_device

    quiet = getattr(args, "quiet", False)
    # a login node submitting GPU jobs has no GPU itself: with Slurm only the name is checked here
    device = args.device if args.executor == "slurm" and str(args.device).startswith("cuda") \
        else resolve_device(args.device)

    def progress(msg: str) -> None:
        if not quiet:
            print(msg, file=sys.stderr, flush=True)

    if args.dry_run or args.status:
        lock = contextlib.nullcontext()
    else:   # one sweep at a time on a checkout: a second one would take the first's live runs, or submit them twice

        lock = folder_lock(resolve_bb_root(args.bb_root) / "record", what="burn sweep")
    with lock:
        return _sweep(args, device, progress, quiet, compare)


def _sweep(args, device, progress, quiet, compare) -> int:
    from .sweep import plan_sweep, run_sweep, summary_lines

    plan = plan_sweep(args.bb_root, attacks=args.attacks, defenses=args.defenses, device=device, fast=args.fast,
                      python=args.python, dataset=args.dataset, model=args.model,
                      ratio=0.05 if args.ratio is None else args.ratio, index=args.index, seed=args.random_seed,
                      rerun=args.rerun, trusted=args.trust_record)
    if args.status or args.executor == "slurm":
        return _slurm_sweep(args, plan, progress, compare)
    runs = run_sweep(plan, dry_run=args.dry_run, progress=not quiet,
                     say=lambda m: print(m, file=sys.stderr, flush=True))
    if args.dry_run:
        return 0
    print("\n".join(summary_lines(runs)))
    failed = [r for r in runs if r.status != "ok" and r.status != "skipped"]
    return _compare_at_end(args, plan, progress, failed, len(runs), compare)


def _compare_at_end(args, plan, progress, failed: list, n_runs: int, compare) -> int:
    """The comparison table after a sweep (unless --no-compare); exit status 1 if a run failed."""
    code = 1 if failed else 0
    if not args.no_compare:
        try:
            table, out = compare(plan, progress)
            print()
            print(table, end="")
            print(f"\ncomparison written to {out}")
        except BurnError as exc:
            print(f"error: comparison failed: {exc}", file=sys.stderr)
            code = 1
    if failed:
        print(f"\n{len(failed)} of {n_runs} run(s) failed: " + ", ".join(r.label for r in failed)
              + " (see above; run the sweep again to retry them, finished runs are skipped)", file=sys.stderr)
    return code


def _slurm_sweep(args, plan, progress, compare) -> int:
    """``--executor slurm``: submit the runs not done as one job array; ``--status``: their states, and
    the comparison once every run is done."""
    from . import slurm

    say = (lambda m: print(m, file=sys.stderr, flush=True))
    opts = slurm.SlurmOptions(partition=args.partition, gpus_per_job=args.gpus_per_job,
                              cpus_per_job=args.cpus_per_job, time_limit=args.time_limit,
                              array_parallelism=args.array_parallelism, extra=list(args.slurm_option or []))
    if args.status:
        rows = slurm.run_states(plan)
        print("| attack | defense | state | detail |\n|---|---|---|---|")
        for run, state, detail in rows:
            print(f"| {run.attack.name} | {run.defense} | {state} | {detail or '–'} |")
        counts = Counter(state for _, state, _ in rows)
        print("\n" + ", ".join(f"{counts[k]} {k}" for k in ("done", "queued", "running", "failed", "not submitted")
                                if counts[k]))
        if counts["done"] < len(rows):
            if counts["failed"] or counts["not submitted"]:
                say("run the same `burn sweep ... --executor slurm` (without --status) to submit the failed and "
                    "unsubmitted runs again")
            return 1 if counts["failed"] else 0
        return _compare_at_end(args, plan, progress, [], len(rows), compare)
    if args.dry_run:
        opts.check()
        print(slurm.sbatch_script(plan.root / "record" / ".sweep_slurm" / "<timestamp>" / "manifest.json",
                                  max(1, sum(1 for r in plan.runs if r.action == "run")), opts))
        return 0
    job, runs = slurm.submit(plan, opts, say=say)
    if job is None:
        say("nothing to submit: every run is done or still in the queue")
    else:
        say(f"submitted {len(runs)} run(s) as Slurm job array {job}; the same `burn sweep ...` with --status shows "
            f"their states and writes the comparison once all are done")
    return 0


def configure_sweep(p) -> None:
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
    g = p.add_argument_group("running on a cluster (Slurm)")
    g.add_argument("--executor", choices=("local", "slurm"), default="local", help="local: one run after another "
                   "here (default); slurm: submit every run not done as one task of a Slurm job array (sbatch)")
    g.add_argument("--status", action="store_true", help="with Slurm: each run's state (done / queued / running / "
                   "failed / not submitted) from the result files and squeue; the comparison once all are done")
    g.add_argument("--partition", default=None, help="Slurm partition (default: the cluster's default)")
    g.add_argument("--gpus-per-job", type=int, default=0, help="GPUs per run (--gres=gpu:N; default 0)")
    g.add_argument("--cpus-per-job", type=int, default=None, help="CPU cores per run (--cpus-per-task)")
    g.add_argument("--time-limit", default="4:00:00", help="wall-clock limit per run (default 4:00:00)")
    g.add_argument("--array-parallelism", type=int, default=None, help="at most this many runs at once (%%N)")
    g.add_argument("--slurm-option", action="append", default=None, metavar="--OPT=VALUE",
                   help="a further sbatch option for every run, e.g. --slurm-option=--account=lab (repeatable)")

