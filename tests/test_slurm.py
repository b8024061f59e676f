"""``burn sweep --executor slurm`` against a real single-node Slurm cluster.

The fixture starts Debian's ``munged``, ``slurmctld`` and ``slurmd`` (packages ``munge`` and
``slurm-wlm``, which the README's test command installs) as root in a temporary folder: its own
munge key and socket, its own ports, no accounting (no slurmdbd: ``sacct`` answers that accounting is
disabled, which is one reason the executor reads ``squeue`` and the result files). The sweep runs over
test_sweep.py's fake BackdoorBench checkout: the fake FP and BURN succeed, the fake SAU leaves an
empty result the first time (as BackdoorBench does after a NaN loss) and a good one the next.
"""
from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from burn_plugin.backdoorbench import slurm as SL
from burn_plugin.backdoorbench import sweep as S
from burn_plugin.cli import main

from test_sweep import ATTACK, make_fake_bb

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing() -> str | None:
    if os.geteuid() != 0:
        return "the test cluster's daemons are started as root"
    gone = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    return f"{', '.join(gone)} not installed (apt-get install slurm-wlm munge)" if gone else None


def _exe(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    why = _missing()
    if why:
        pytest.skip(why)
    d = tmp_path_factory.mktemp("slurm")
    for sub in ("state", "spool", "log", "munge"):
        (d / sub).mkdir()
    (d / "munge").chmod(0o700)
    sock = d / "munge" / "munge.sock"
    subprocess.run([_exe("mungekey"), "-c", "-k", str(d / "munge" / "munge.key")], check=True)
    subprocess.run([_exe("munged"), "--force", "-S", str(sock), "--key-file", str(d / "munge" / "munge.key"),
                    "--pid-file", str(d / "munge" / "munged.pid"), "--log-file", str(d / "munge" / "munged.log"),
                    "--seed-file", str(d / "munge" / "seed")], check=True)
    host = socket.gethostname()
    conf = d / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=burntest", f"SlurmctldHost={host}", "SlurmUser=root", "SlurmdUser=root",
        "AuthType=auth/munge", f"AuthInfo=socket={sock}", "CredType=cred/munge",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
        f"StateSaveLocation={d / 'state'}", f"SlurmdSpoolDir={d / 'spool'}",
        f"SlurmctldPidFile={d / 'slurmctld.pid'}", f"SlurmdPidFile={d / 'slurmd.pid'}",
        f"SlurmctldLogFile={d / 'log' / 'slurmctld.log'}", f"SlurmdLogFile={d / 'log' / 'slurmd.log'}",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "MpiDefault=none", "ReturnToService=2",
        "SchedulerType=sched/builtin", "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core",
        "JobAcctGatherType=jobacct_gather/none", "AccountingStorageType=accounting_storage/none",
        "JobCompType=jobcomp/none", "MailProg=/bin/true",
        f"NodeName={host} CPUs={os.cpu_count() or 1} State=UNKNOWN",
        "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP", ""]))
    env = dict(os.environ, SLURM_CONF=str(conf))
    started = time.time()
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)  # sbatch and squeue, called by the sweep, read it
    try:
        subprocess.run([_exe("slurmctld"), "-c"], check=True, env=env)
        subprocess.run([_exe("slurmd")], check=True, env=env)
        for _ in range(60):
            out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, env=env).stdout
            if out.strip() in ("idle", "mixed", "allocated"):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the test cluster's node did not come up (sinfo says {out.strip()!r}); "
                        f"logs in {d / 'log'}")
        yield d
    finally:
        _stop_cluster(d, env, started)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _stop_cluster(d: Path, env: dict, started: float) -> None:
    """Cancel the jobs, stop the daemons (SIGTERM, then SIGKILL after 10 s), and kill the job-step
    daemons (slurmstepd) this cluster started: one left waiting for a stopped controller lives on."""
    subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
    pids = []
    for pid_file in (d / "slurmd.pid", d / "slurmctld.pid", d / "munge" / "munged.pid"):
        with contextlib.suppress(OSError, ValueError):
            pids.append(int(pid_file.read_text().split()[0]))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    age = time.time() - started + 1
    steps = subprocess.run(["ps", "-eo", "pid=,etimes=,comm="], capture_output=True, text=True).stdout.split("\n")
    for line in steps:
        parts = line.split()
        if len(parts) == 3 and parts[2] == "slurmstepd" and int(parts[1]) <= age:
            pids.append(int(parts[0]))
    for pid in pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:  # a zombie (exited, not yet reaped by init) counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    print(f"$ burn {' '.join(a for a in argv if '/' not in a)}  -> exit {code}\n{err.getvalue()}{out.getvalue()}")
    return code, out.getvalue(), err.getvalue()


def _wait_until_settled(args, timeout_s: float = 240) -> tuple[int, str, str]:
    """``--status`` until no run is queued or running."""
    deadline = time.time() + timeout_s
    while True:
        code, out, err = _cli(args + ["--status"])
        if "| queued |" not in out and "| running |" not in out:
            return code, out, err
        if time.time() > deadline:
            pytest.fail(f"the sweep's jobs did not finish in {timeout_s} s:\n{out}")
        time.sleep(1)


def test_a_sweep_runs_as_a_job_array_and_a_rerun_resubmits_only_the_failed(cluster, tmp_path, monkeypatch):
    root, fixtures, _ = make_fake_bb(tmp_path)
    monkeypatch.setattr(S, "PLUGIN_COMMAND", [sys.executable, str(fixtures / "fake_burn.py")])
    args = ["sweep", "--bb-root", str(root), "--attacks", ATTACK, "--defenses", "fp,sau,burn",
            "--python", sys.executable, "--no-plots", "--no-reevaluate"]

    code, out, err = _cli(args + ["--executor", "slurm", "--array-parallelism", "2", "--time-limit", "10"])
    assert code == 0, err
    assert "submitted 3 run(s) as Slurm job array" in err
    ledger = SL.read_ledger(S.plan_sweep(root, attacks=ATTACK, defenses="fp,sau,burn", python=sys.executable))
    assert len(ledger) == 1 and len(ledger[0]["runs"]) == 3
    script = Path(ledger[0]["folder"], "array.sbatch").read_text()
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --time=10" in script

    code, out, err = _wait_until_settled(args)
    assert f"| {ATTACK} | fp | done |" in out and f"| {ATTACK} | burn | done |" in out
    assert f"| {ATTACK} | sau | failed |" in out and "defense_result.pt is empty" in out
    assert code == 1  # a failed run
    assert "\n2 done, 1 failed\n" in out  # the states counted, in the table's order
    sau = root / "record" / ATTACK / "defense" / "sau"
    assert (sau / "sweep_run.json").is_file() and (sau / "sweep_log.txt").is_file()  # written by the array task

    code, out, err = _cli(args + ["--executor", "slurm"])
    assert code == 0, err
    assert "fp: done; not submitted again" in err and "burn: done; not submitted again" in err
    assert "submitted 1 run(s) as Slurm job array" in err
    assert len(SL.read_ledger(S.plan_sweep(root, attacks=ATTACK, defenses="fp,sau,burn",
                                           python=sys.executable))) == 2

    code, out, err = _wait_until_settled(args)
    assert code == 0, out + err
    assert out.count("| done |") == 3 and "\n3 done\n" in out
    assert "comparison written to" in out  # every run done: the results are collected into the table
    assert "0.8644" in out or "86.44" in out  # the fake SAU's ACC, now in the comparison

    code, out, err = _cli(args + ["--executor", "slurm"])
    assert code == 0 and "nothing to submit" in err


@pytest.mark.parametrize("opt, needle", [(["--time-limit", "soon"], "--time-limit 'soon' is not a Slurm time"),
                                         (["--gpus-per-job", "-1"], "--gpus-per-job must be 0 or more"),
                                         (["--slurm-option", "account=lab"], "is not one sbatch option")])
def test_bad_slurm_options_are_one_line_before_anything_is_submitted(tmp_path, opt, needle, monkeypatch):
    root, fixtures, _ = make_fake_bb(tmp_path)
    monkeypatch.setattr(SL, "SBATCH", str(tmp_path / "no-sbatch-here"))
    code, out, err = _cli(["sweep", "--bb-root", str(root), "--attacks", ATTACK, "--defenses", "burn",
                           "--executor", "slurm", *opt])
    assert code == 2
    assert err.count("error:") == 1 and needle in err
    assert not (root / "record" / ".sweep_slurm").exists()
