"""``burn sweep --executor slurm``: every run of a sweep as one task of a Slurm job array.

    burn sweep --bb-root ~/BackdoorBench --attacks badnet_fm,blended_fm --device cuda \\
        --executor slurm --partition gpu --gpus-per-job 1 --time-limit 4:00:00 --array-parallelism 8
    burn sweep --bb-root ~/BackdoorBench --attacks badnet_fm,blended_fm --status   # states; table when done

The runs are the local sweep's own (:func:`~burn_plugin.backdoorbench.sweep.plan_sweep`: same commands,
same clean index, same skip-what-is-done rule). Submitting writes, under
``<root>/record/.sweep_slurm/<timestamp>/``, ``manifest.json`` (the plan and its runs) and
``array.sbatch`` (``#SBATCH --array=0-<n-1>%<parallelism>`` and one line: ``python -m
burn_plugin.backdoorbench.slurm task manifest.json``), then calls ``sbatch --parsable`` once. Task
``$SLURM_ARRAY_TASK_ID`` runs its run through :func:`~burn_plugin.backdoorbench.sweep.execute`, so it
writes ``sweep_log.txt``, ``sweep_run.json`` and the result exactly as a local sweep does. Every
submission is appended to ``record/.sweep_slurm/jobs.json`` (job id, task -> run).

State comes from the results themselves and from ``squeue``: a run is *done* when its
``defense_result.pt`` holds a result, *queued* / *running* while its task is in ``squeue``, and
*failed* when its last task left the queue without a result. Running the same ``burn sweep
--executor slurm`` again submits only the runs that are neither done nor in the queue.

Plain ``sbatch``, not submitit: the runs are already shell commands whose results are files, so
nothing needs pickling; the array is one readable file a user can inspect and resubmit by hand; and
submitit learns job states from ``sacct``, which answers "Slurm accounting storage is disabled" on
clusters without slurmdbd (the single-node cluster of our tests is one), whereas ``squeue`` and the
result files answer everywhere.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path

from ..errors import BadInputError, BurnError, CorruptFileError, run_reporting_errors
from ..fileio import save_json, save_text
from .sweep import AttackInfo, SweepPlan, SweepRun, execute, is_done, result_state

#: the Slurm commands (names on PATH)
SBATCH, SQUEUE = "sbatch", "squeue"

# every value written into the array script is matched whole (re.fullmatch, ASCII digits only), then quoted
_TIME = re.compile(r"([0-9]+-)?[0-9]+(:[0-9]{1,2}){0,2}")
_PARTITION = re.compile(r"[A-Za-z0-9_.+-]+(,[A-Za-z0-9_.+-]+)*")
#: ``--name`` or ``--name=value``; the value without whitespace, control characters, quotes, ``\`` or ``#``
#: (which sbatch's reading of ``#SBATCH`` lines would treat specially)
_OPTION = re.compile(r"--[A-Za-z][A-Za-z0-9-]*(=[^\s\x00-\x1f\x7f'\"\\#]+)?")
JOB_NAME = "burn-sweep"


def check_script_path(path, what: str) -> str:
    """``path`` as text, refused (one line, exit 2) if it holds a control character (a newline would end
    the line of the script it is written on) or a backslash (sbatch's ``#SBATCH`` reader drops it even
    inside quotes)."""
    text = str(path)
    bad = [c for c in text if not c.isprintable() or c == "\\"]
    if bad:
        raise BadInputError(f"{what} {text!r} holds {bad[0]!r}, which cannot be written safely into the Slurm "
                            f"array script; use a folder whose path has no control characters or backslashes")
    return text


@dataclass
class SlurmOptions:
    """What each array task asks Slurm for."""

    partition: str | None = None
    gpus_per_job: int = 0
    cpus_per_job: int | None = None
    time_limit: str = "4:00:00"
    array_parallelism: int | None = None    # at most this many tasks at once (``%N``); None: Slurm's limit
    extra: list[str] = field(default_factory=list)   # further ``#SBATCH`` options, e.g. --account=lab

    def check(self) -> None:
        if self.gpus_per_job < 0:
            raise BadInputError(f"--gpus-per-job must be 0 or more, got {self.gpus_per_job}")
        if self.cpus_per_job is not None and self.cpus_per_job < 1:
            raise BadInputError(f"--cpus-per-job must be 1 or more, got {self.cpus_per_job}")
        if self.array_parallelism is not None and self.array_parallelism < 1:
            raise BadInputError(f"--array-parallelism must be 1 or more, got {self.array_parallelism}")
        if not isinstance(self.time_limit, str) or not _TIME.fullmatch(self.time_limit):
            raise BadInputError(f"--time-limit {self.time_limit!r} is not a Slurm time; use minutes, H:MM:SS or "
                                f"D-HH:MM:SS (e.g. 4:00:00), nothing else (no spaces or newlines)")
        if self.partition is not None and not _PARTITION.fullmatch(str(self.partition)):
            raise BadInputError(f"--partition {self.partition!r} is not a Slurm partition name; use letters, digits "
                                f"and . _ + - (several separated by commas, e.g. gpu or gpu,long), nothing else")
        for opt in self.extra:
            if not isinstance(opt, str) or not _OPTION.fullmatch(opt):
                raise BadInputError(f"--slurm-option {opt!r} is not one sbatch option; pass --name or --name=value "
                                    f"without spaces, quotes, backslashes, '#' or newlines, e.g. --account=lab")


def sbatch_script(manifest: Path, n_tasks: int, opts: SlurmOptions, *, python: str = sys.executable) -> str:
    """The job-array script for ``n_tasks`` runs described by ``manifest``.

    Every value is checked whole first (:meth:`SlurmOptions.check`, :func:`check_script_path`) and written
    quoted (``shlex.quote``, which both bash and sbatch's ``#SBATCH`` reader undo), so no value can end its
    line or add a word to it."""
    opts.check()
    q = shlex.quote
    folder = check_script_path(manifest.parent, "the sweep folder (under --bb-root)")
    manifest_text = check_script_path(manifest, "the sweep manifest (under --bb-root)")
    python = check_script_path(python, "the Python interpreter")
    n_tasks, parallel = int(n_tasks), (int(opts.array_parallelism) if opts.array_parallelism else None)
    array = f"0-{n_tasks - 1}" + (f"%{parallel}" if parallel else "")
    # '%' in the folder is literal; Slurm's output pattern reads %a (task id) and writes '%' as %%
    lines = ["#!/bin/bash", f"#SBATCH --job-name={q(JOB_NAME)}", f"#SBATCH --array={array}",
             f"#SBATCH --time={q(opts.time_limit)}",
             f"#SBATCH --output={q(folder.replace('%', '%%') + '/task_%a.out')}", "#SBATCH --ntasks=1"]
    if opts.partition:
        lines.append(f"#SBATCH --partition={q(opts.partition)}")
    if opts.gpus_per_job:
        lines.append(f"#SBATCH --gres=gpu:{int(opts.gpus_per_job)}")
    if opts.cpus_per_job:
        lines.append(f"#SBATCH --cpus-per-task={int(opts.cpus_per_job)}")
    lines += [f"#SBATCH {q(o)}" for o in opts.extra]
    lines += ["", "# one run of a burn sweep per array task (burn_plugin.backdoorbench.slurm)",
              f"exec {q(python)} -m burn_plugin.backdoorbench.slurm task {q(manifest_text)} "
              f"\"$SLURM_ARRAY_TASK_ID\"", ""]
    return "\n".join(lines)


def _run_dict(run: SweepRun) -> dict:
    d = {k: getattr(run, k) for k in ("defense", "command", "cwd", "out_dir", "fixes", "fast", "state", "action",
                                      "env")}
    d["attack"] = asdict(run.attack)
    return json.loads(json.dumps(d, default=str))


def _plan_dict(plan: SweepPlan, runs: list[SweepRun]) -> dict:
    return {"root": str(plan.root), "python": plan.python, "device": plan.device, "fast": plan.fast,
            "defenses": plan.defenses, "ratio": plan.ratio, "seed": plan.seed, "trusted": plan.trusted,
            "runs": [_run_dict(r) for r in runs]}


def _attack(d: dict) -> AttackInfo:
    d = dict(d)
    d["folder"] = Path(d["folder"])
    d["index"] = Path(d["index"]) if d.get("index") else None
    return AttackInfo(**d)


def load_manifest(path: Path) -> tuple[SweepPlan, list[SweepRun]]:
    """The plan and runs of a ``manifest.json`` written by :func:`submit`; a missing, unreadable or
    malformed one is one line (exit 2), never a traceback."""
    path = Path(path)
    fix = "pass the manifest.json that burn sweep --executor slurm wrote, or submit the sweep again"
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise BadInputError(f"cannot read the sweep manifest {path} ({why}); {fix}") from None
    try:
        m = json.loads(text)
        if not isinstance(m, dict) or not isinstance(m.get("runs"), list) \
                or not all(isinstance(r, dict) and isinstance(r.get("attack"), dict) for r in m["runs"]):
            raise ValueError("not an object with a list of runs")
        runs = [SweepRun(_attack(r["attack"]), r["defense"], r["command"], Path(r["cwd"]), Path(r["out_dir"]),
                         r["fixes"], r["fast"], r["state"], r["action"], env=r["env"]) for r in m["runs"]]
        attacks = list({r.attack.name: r.attack for r in runs}.values())
        plan = SweepPlan(Path(m["root"]), m["python"], m["device"], m["fast"], attacks, m["defenses"], runs,
                         m["ratio"], m["seed"], m["trusted"])
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CorruptFileError(f"{path} is not a burn sweep manifest ({type(exc).__name__}: {exc}); {fix}") from None
    return plan, runs


def ledger_path(plan: SweepPlan) -> Path:
    return plan.root / "record" / ".sweep_slurm" / "jobs.json"


def read_ledger(plan: SweepPlan) -> list[dict]:
    try:
        return json.loads(ledger_path(plan).read_text())
    except (OSError, ValueError):
        return []


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """``{"<job>_<task>": state}`` of the array tasks still in Slurm's queue (PENDING, RUNNING, ...)."""
    if not job_ids:
        return {}
    try:
        out = subprocess.run([SQUEUE, "-h", "-r", "-j", ",".join(job_ids), "-o", "%i %T"], capture_output=True,
                             text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BurnError(f"cannot ask Slurm for the sweep's jobs ({SQUEUE}: {exc}); run on a machine with Slurm's "
                        f"commands, or check the cluster") from None
    if out.returncode != 0 and "Invalid job id" not in out.stderr:
        raise BurnError(f"{SQUEUE} failed: {out.stderr.strip() or out.stdout.strip()}; check the cluster")
    rows = [line.split() for line in out.stdout.splitlines()]
    return {row[0]: row[1] for row in rows if len(row) == 2}


def run_states(plan: SweepPlan) -> list[tuple[SweepRun, str, str]]:
    """``(run, state, detail)`` for every planned run: done / queued / running / failed / not submitted.
    A task still in the queue is queued or running whatever files it has written so far; a run is done by
    the sweep's own rule (:func:`~burn_plugin.backdoorbench.sweep.is_done`: this tool finished it, with
    these settings), so a status that says done never races the task's last writes."""
    last: dict[str, tuple[str, int]] = {}
    for sub in read_ledger(plan):
        for task, out_dir in enumerate(sub["runs"]):
            last[out_dir] = (str(sub["job_id"]), task)
    queue = queue_states(sorted({j for j, _ in last.values()}))
    rows = []
    for run in plan.runs:
        job = last.get(str(run.out_dir))
        tid = f"{job[0]}_{job[1]}" if job is not None else None
        state = queue.get(tid) if tid is not None else None
        if state is not None:
            rows.append((run, "running" if state in ("RUNNING", "COMPLETING") else "queued", f"job {tid} {state}"))
            continue
        if result_state(run.out_dir) == "ok" and is_done(run.out_dir, run.command):
            rows.append((run, "done", ""))
            continue
        if job is None:
            rows.append((run, "not submitted", ""))
            continue
        try:
            rec = json.loads((run.out_dir / "sweep_run.json").read_text())
            note = rec.get("note") or rec.get("status") or ""
        except (OSError, ValueError):
            note = f"no sweep_run.json (see {plan.root / 'record' / '.sweep_slurm'})"
        rows.append((run, "failed", f"job {tid}: {note}"))
    return rows


def submit(plan: SweepPlan, opts: SlurmOptions, *, say=print) -> tuple[str | None, list[SweepRun]]:
    """Submit every run that is neither done nor in the queue as one job array; returns (job id, runs)."""
    opts.check()
    check_script_path(plan.root, "--bb-root")  # written into the array script: refused before anything is written
    check_script_path(sys.executable, "the Python interpreter")
    states = run_states(plan)
    todo = [r for r, state, _ in states if state in ("not submitted", "failed")
            or (state == "done" and r.action == "run")]  # --rerun
    chosen = {id(r) for r in todo}
    for r, state, detail in states:
        if id(r) not in chosen:
            say(f"{r.label}: {state}{' (' + detail + ')' if detail else ''}; not submitted again")
    if not todo:
        return None, []
    for info in plan.attacks:
        if info.index_text is not None:
            save_text(info.index_text, info.index)
    folder = plan.root / "record" / ".sweep_slurm" / datetime.now().strftime("%Y%m%d_%H%M%S_%f")
    folder.mkdir(parents=True)
    manifest = save_json(_plan_dict(plan, todo), folder / "manifest.json")
    script = save_text(sbatch_script(manifest, len(todo), opts), folder / "array.sbatch")
    try:
        out = subprocess.run([SBATCH, "--parsable", str(script)], capture_output=True, text=True, timeout=120,
                             cwd=plan.root)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BurnError(f"cannot submit the sweep ({SBATCH}: {exc}); run on a Slurm login node, or use "
                        f"--executor local") from None
    if out.returncode != 0:
        raise BurnError(f"sbatch refused the job array: {out.stderr.strip() or out.stdout.strip()} "
                        f"(script {script}); fix the Slurm options and run the sweep again")
    job_id = out.stdout.strip().split(";")[0]
    ledger = read_ledger(plan) + [{"job_id": job_id, "folder": str(folder), "submitted": datetime.now().isoformat(
        timespec="seconds"), "runs": [str(r.out_dir) for r in todo]}]
    save_json(ledger, ledger_path(plan))
    for task, r in enumerate(todo):
        say(f"{r.label}: submitted as job {job_id}_{task}")
    return job_id, todo


def task_main(manifest: str, task: str) -> int:
    """Array task ``task``: run its run as the local sweep would (logs, sweep_run.json, result)."""
    task = str(task)
    if not re.fullmatch(r"[0-9]+", task):
        raise BadInputError(f"task id {task!r} is not a whole number 0 or more; the array script passes "
                            f"$SLURM_ARRAY_TASK_ID (run it as a Slurm array task, or pass e.g. 0)")
    plan, runs = load_manifest(Path(manifest))
    if int(task) >= len(runs):
        raise BadInputError(f"task id {int(task)} is out of range: {manifest} holds {len(runs)} run(s) "
                            f"(ids 0-{len(runs) - 1}); pass an id of that range" if runs else
                            f"task id {int(task)} is out of range: {manifest} holds no runs; submit the sweep again")
    run = runs[int(task)]
    print(f"{run.label}: {run.command_line()}", flush=True)
    execute(run, plan)
    print(f"{run.label}: {run.status} in {run.wall_s} s" + (f" ({run.note})" if run.note else ""), flush=True)
    return 0 if run.status == "ok" else 1


def main(argv: list[str] | None = None) -> int:
    """``python -m burn_plugin.backdoorbench.slurm task MANIFEST TASK_ID`` (what the array script runs): a
    bad id or manifest is one ``error: ...`` line and exit 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) != 3 or argv[0] != "task":
        print("error: usage: python -m burn_plugin.backdoorbench.slurm task MANIFEST TASK_ID", file=sys.stderr)
        return 2
    return run_reporting_errors(lambda: task_main(argv[1], argv[2]))


if __name__ == "__main__":
    sys.exit(main())
