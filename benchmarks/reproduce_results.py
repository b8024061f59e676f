"""Rebuild every record and run behind the README's cross-attack results, then the comparison.

The README's tables come from nine Fashion-MNIST records and the defenses run on each; their files
(hundreds of MB per record) are not kept in the repository. This script is the recipe: for every
record, one after another, the attack, then BURN (the paper's settings with ``box_aware: true``, as
the tables measured), FT (evaluated after its last epoch only: the per-epoch evaluation took more
CPU than FT's training and changes nothing of it), ULRL, ULRL on BURN's selection, the detector
benchmark and BURN with each ``--detectors`` entry; at the end one ``burn compare`` and the detector
table (``comparison/detectors.md``: ``benchmarks/detectors.py --from-json ... --runs``). A step whose
result is already there is skipped, so an interrupted rebuild continues where it stopped; a failed
step stops its record's chain (the others go on) and the script exits 1.

    python benchmarks/reproduce_results.py --dry-run                   # print the plan, run nothing
    python benchmarks/reproduce_results.py --root record --lanes 2 --threads 1
    python benchmarks/reproduce_results.py --records badnet_fm,blended_fm --detectors spectral,scan
    python benchmarks/reproduce_results.py --set 20k --root record20k    # docs/results/burn_20k

``--set 20k`` is the recipe of ``docs/results/burn_20k``: thirteen records of 20,000 training images (15
epochs), each defended by BURN with the paper's loop and with the SCAn configurations of that page
(``RUNS_20K``), then ``burn compare`` over those runs alone.

``--lanes 2 --threads 1`` runs two records at a time with one thread each, the right use of a 2-core
CPU (two 2-thread torch jobs there thrash). On that CPU a record with its four defenses takes 1-2
hours (the attack 7-60 min, BURN 17-60 min, FT 7-13 min, ULRL 1-2 min), the nine about 13 hours of
one-thread work, about 7 hours on two lanes. Each step's output goes to ``<root>/.reproduce_logs/<record>.<step>.log``.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent

#: record folder -> (attack, extra ``burn attack`` arguments): the README's records
RECORDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "badnet_fm": ("badnet", ()),
    "blended_fm": ("blended", ()),
    "lc_fm": ("lc", ()),
    "lf_fm": ("lf", ()),
    "sig_fm": ("sig", ()),
    "trojannn_fm": ("trojannn", ()),
    "ssba_fm": ("ssba", ()),
    "wanet_fm": ("wanet", ()),
    "inputaware10g10_fm": ("inputaware", ("--epochs", "10", "--generator_epochs", "10")),
}
#: docs/results/burn_20k: record folder -> (attack, extra ``burn attack`` arguments); ``_r``: made again
#: with another target class, poison ratio and seed
RECORDS_20K: dict[str, tuple[str, tuple[str, ...]]] = {
    **{a: (a, ("--target", "0", "--pratio", "0.1")) for a in ("badnet", "blended", "lf", "wanet", "ssba", "trojannn")},
    "sig": ("sig", ("--target", "0", "--pratio", "0.09")),    # clean-label: only the target class can be poisoned
    "lc": ("lc", ("--target", "0", "--pratio", "0.09")),
    "inputaware": ("inputaware", ("--target", "0", "--pratio", "0.1", "--generator_epochs", "10")),
    "badnet_r": ("badnet", ("--target", "3", "--pratio", "0.05", "--random_seed", "11")),
    "blended_r": ("blended", ("--target", "7", "--pratio", "0.15", "--random_seed", "12")),
    "sig_r": ("sig", ("--target", "5", "--pratio", "0.08", "--random_seed", "13")),
    "wanet_r": ("wanet", ("--target", "2", "--pratio", "0.12", "--random_seed", "14")),
}
_SCAN = ("--detector", "scan", "--clean_selection", "per_label", "--clean_ranking", "boundary", "--clean_veto", "20",
         "--suspect_side", "decisive")
#: docs/results/burn_20k's runs: result folder -> ``burn defend`` flags (all box-aware, evaluated at the end)
RUNS_20K: dict[str, tuple[str, ...]] = {
    "paper": (),
    "rule7": (*_SCAN, "--k_pT", "5"),
    "rule10": (*_SCAN, "--k_pT", "10", "--k_c0", "10", "--k_cT", "20"),
    "rule11": (*_SCAN, "--k_pT_estimate", "1.25", "--k_c0", "10", "--k_cT", "20"),
    "rule12": (*_SCAN, "--k_pT_estimate", "1", "--k_c0", "10", "--k_cT", "20", "--w0", "0", "--wT", "0"),
}


@dataclass(frozen=True)
class Step:
    record: str
    name: str
    argv: tuple[str, ...]
    done_when: Path            # the step is done when this file exists
    done_also: str = ""        # and, for a defense, a *_df_summary.csv beside run.json

    def is_done(self) -> bool:
        if not self.done_when.is_file():
            return False
        return not self.done_also or any(self.done_when.parent.glob(self.done_also))


def _defense(record: str, root: Path, name: str, *flags: str) -> Step:
    out = root / record / "defense" / name
    return Step(record, name, ("burn", "-q", "defend", "--attack_folder", str(root / record),
                               "--output_dir", str(out), *flags), out / "run.json", "*_df_summary.csv")


def plan_20k(root: Path, records: list[str]) -> list[Step]:
    """Every step of ``--set 20k`` for ``records``, record by record in order."""
    steps = []
    for record in records:
        attack, extra = RECORDS_20K[record]
        folder = root / record
        steps.append(Step(record, "attack", ("burn", "-q", "attack", "--dataset", "fashionmnist", "--attack", attack,
                                             "--model", "smallresnet", "--train_subset", "20000", "--epochs", "15",
                                             *extra, "--out", str(folder)), folder / "attack_result.pt"))
        steps += [_defense(record, root, name, "--box_aware", "true", "--eval_every_round", "false", *flags)
                  for name, flags in RUNS_20K.items()]
    return steps


def plan(root: Path, records: list[str], detectors: list[str], dataset: str = "fashionmnist") -> list[Step]:
    """Every step for ``records``, record by record in order; the comparison is not among them."""
    steps = []
    for record in records:
        attack, extra = RECORDS[record]
        folder = root / record
        steps.append(Step(record, "attack", ("burn", "-q", "attack", "--dataset", dataset, "--attack", attack,
                                             "--model", "smallresnet", "--pratio", "0.1", "--target", "0",
                                             "--clean_reference", "--out", str(folder), *extra),
                          folder / "attack_result.pt"))
        steps += [_defense(record, root, "burn", "--box_aware", "true"),
                  _defense(record, root, "ft", "--method", "ft", "--eval_every_epoch", "false"),
                  _defense(record, root, "ulrl", "--method", "ulrl"),
                  _defense(record, root, "ulrl_on_burn", "--method", "ulrl", "--clean_source", "burn",
                           "--burn_result", str(folder / "defense" / "burn"))]
        det_json = root / ".reproduce_logs" / f"detectors_{record}.json"
        steps.append(Step(record, "detectors", (sys.executable, str(HERE / "detectors.py"), "--record", str(folder),
                                                "--set", "box_aware=true", "--json", str(det_json),
                                                "--markdown", str(det_json.with_suffix(".md"))), det_json))
        steps += [_defense(record, root, f"burn_{d}", "--box_aware", "true", "--detector", d) for d in detectors]
    return steps


def compare_argv(root: Path, defenses: tuple[str, ...] = ()) -> tuple[str, ...]:
    only = ("--defenses", ",".join(defenses)) if defenses else ()
    return ("burn", "-q", "compare", str(root), *only, "--no-reevaluate", "--metrics", "acc,asr,ra",
            "--out", str(root / "comparison"))


def detector_table_argv(root: Path, records: list[str]) -> tuple[str, ...]:
    """The README's detector table: every record's detector benchmark with ACC / ASR / RA read from its
    BURN runs (``--runs``: each detector's run with the recipe's settings, whatever else ran there)."""
    jsons = [a for r in records for a in ("--from-json", str(root / ".reproduce_logs" / f"detectors_{r}.json"))]
    return (sys.executable, str(HERE / "detectors.py"), *jsons, "--runs", "--set", "box_aware=true",
            "--markdown", str(root / "comparison" / "detectors.md"))


_SAY = threading.Lock()


def _say(line: str) -> None:
    """One whole progress line: lanes are threads, and ``print`` writes a line and its newline
    separately, so two lanes' lines could run together."""
    with _SAY:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()


def run_chain(steps: list[Step], logs: Path, threads: int) -> list[str]:
    """Run one record's steps in order, skipping those done; returns the failures (``record.step``)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    for step in steps:
        if step.is_done():
            _say(f"[skip] {step.record} {step.name}: {step.done_when} exists")
            continue
        log = logs / f"{step.record}.{step.name}.log"
        t0 = time.time()
        _say(f"[run ] {step.record} {step.name} (log {log})")
        with open(log, "w") as fh:
            rc = subprocess.run(step.argv, stdout=fh, stderr=subprocess.STDOUT, env=env).returncode
        if rc != 0 or not step.is_done():
            _say(f"[FAIL] {step.record} {step.name}: exit {rc} after {time.time() - t0:.0f} s; the rest of "
                 f"{step.record} is not run (see {log})")
            return [f"{step.record}.{step.name}"]
        _say(f"[done] {step.record} {step.name} in {time.time() - t0:.0f} s")
    return []


def preflight() -> str:
    """Why the recipe cannot start, or ''. Every step runs the ``burn`` command, which must import this
    checkout's ``burn_plugin``: an editable install left pointing at another (or a deleted) clone
    would otherwise fail every step after the first seconds, or build the records with other code."""
    here = (HERE.parent / "burn_plugin").resolve()
    fix = f"install this checkout: python -m pip install -e {HERE.parent}"
    try:
        probe = subprocess.run(["burn", "--version"], capture_output=True, text=True)
    except FileNotFoundError:
        return f"no `burn` command on PATH; {fix}"
    line = (probe.stdout or probe.stderr).strip().splitlines()[-1:] or [""]
    if probe.returncode != 0:
        return f"`burn --version` failed ({line[0]}); {fix}"
    where = line[0].partition(" (")[2].removesuffix(")")   # "burn-plugin <version> (<folder>)"; the folder may hold "("
    if Path(where).resolve() != here:
        return f"`burn` runs the burn_plugin in {where}, not this checkout's {here}; {fix}"
    return ""


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--set", choices=("60k", "20k"), default="60k", dest="which",
                    help="60k: the README's nine records and defenses (default); 20k: docs/results/burn_20k")
    ap.add_argument("--root", default="record", help="record folder to fill (default ./record)")
    ap.add_argument("--records", default=None,
                    help=f"comma list of records to rebuild (default all: {','.join(RECORDS)}; with --set 20k "
                         f"{','.join(RECORDS_20K)})")
    ap.add_argument("--detectors", default="spectral",
                    help="BURN runs with these detectors besides the paper's (comma list; '' for none; "
                         "default spectral)")
    ap.add_argument("--lanes", type=int, default=1, help="records run at the same time (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per lane (default 1)")
    ap.add_argument("--dry-run", action="store_true", help="print every command and whether it is done; run nothing")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    known = RECORDS_20K if args.which == "20k" else RECORDS
    records = [r for r in (args.records or ",".join(known)).split(",") if r]
    unknown = [r for r in records if r not in known]
    if unknown:
        print(f"error: unknown record(s) {', '.join(unknown)} in --set {args.which}; choose from "
              f"{', '.join(known)}", file=sys.stderr)
        return 2
    if args.lanes < 1 or args.threads < 1:
        print("error: --lanes and --threads must be 1 or more", file=sys.stderr)
        return 2
    root = Path(args.root)
    twenty = args.which == "20k"
    steps = plan_20k(root, records) if twenty else plan(root, records, [d for d in args.detectors.split(",") if d])
    compare = compare_argv(root, tuple(RUNS_20K) if twenty else ())
    if args.dry_run:
        for s in steps:
            print(f"{'done' if s.is_done() else 'todo'}  {shlex.join(s.argv)}")
        print(f"then  {shlex.join(compare)}")
        if not twenty:
            print(f"then  {shlex.join(detector_table_argv(root, records))}")
        return 0
    problem = preflight()
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    logs = root / ".reproduce_logs"
    logs.mkdir(parents=True, exist_ok=True)
    chains = [[s for s in steps if s.record == r] for r in records]
    with ThreadPoolExecutor(max_workers=args.lanes) as pool:
        failed = [f for fs in pool.map(lambda c: run_chain(c, logs, args.threads), chains) for f in fs]
    with open(logs / "compare.log", "w") as fh:
        rc = subprocess.run(compare, stdout=fh, stderr=subprocess.STDOUT).returncode
    measured = [r for r in records if (logs / f"detectors_{r}.json").is_file()] if not twenty else []
    rc_table = 0
    if measured:
        with open(logs / "detector_table.log", "w") as fh:
            rc_table = subprocess.run(detector_table_argv(root, measured), stdout=fh, stderr=subprocess.STDOUT).returncode
    print(f"comparison: {root / 'comparison'} (exit {rc}; detector table detectors.md exit {rc_table})"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed or rc or rc_table else 0


if __name__ == "__main__":
    sys.exit(main())
