"""Files and values a stranger may have written: ``burn register --uninstall`` with a tampered manifest, and
the Slurm array script of ``burn sweep --executor slurm`` with values that would add lines to it.

- ``--uninstall`` removes only files ``register`` installs, inside the checkout; a manifest naming anything
  else refuses the whole uninstall in one line (exit 2) before anything is removed, ``--force`` or not.
- Every value written into ``array.sbatch`` is checked whole and quoted; a newline where it would add a
  line is refused in one line (exit 2); the task command is one line (exit 2) for a bad id or manifest.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from burn_plugin.backdoorbench import register as R
from burn_plugin.backdoorbench import slurm as SL
from burn_plugin.backdoorbench import sweep as S
from burn_plugin.cli import main

sys.path.insert(0, str(Path(__file__).parent))
from test_cli_errors import assert_one_error_line  # noqa: E402
from test_sweep import ATTACK, make_fake_bb  # noqa: E402

EMPTY_SHA = hashlib.sha256(b"").hexdigest()


def cli(*argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, out.getvalue(), err.getvalue()




def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


# ------------------------------------------------------------------------------------------------
# burn register --uninstall

def registered_checkout(tmp_path: Path) -> Path:
    root = tmp_path / "bb"
    for d in ("record", "config/defense", "defense", "utils"):
        (root / d).mkdir(parents=True)
    rc, _, err = cli("register", "--bb-root", root)
    assert rc == 0, err
    return root


def tamper(root: Path, *, files: dict | None = None, created_dirs: list | None = None) -> None:
    path = root / R.MANIFEST
    m = json.loads(path.read_text())
    m["files"].update(files or {})
    if created_dirs is not None:
        m["created_dirs"] = created_dirs
    path.write_text(json.dumps(m))


def test_uninstall_refuses_a_manifest_naming_a_file_outside_the_checkout(tmp_path):
    root = registered_checkout(tmp_path)
    victim = tmp_path / "victim2" / "notes.txt"
    victim.parent.mkdir()
    victim.write_bytes(b"")  # an empty file matches the empty-file hash: no --force needed before
    tamper(root, files={"../victim2/notes.txt": EMPTY_SHA})
    before = tree(root)
    rc, _, err = cli("register", "--bb-root", root, "--uninstall")
    assert_one_error_line(rc, err, "../victim2/notes.txt", "nothing was removed", "delete")
    assert victim.is_file()
    assert tree(root) == before  # not one of register's own files was removed either


def test_uninstall_refuses_a_file_inside_the_checkout_that_register_never_installs(tmp_path):
    root = registered_checkout(tmp_path)
    mine = root / "utils" / "mine.py"
    mine.write_text("# the user's own code\n")
    tamper(root, files={"utils/mine.py": R.sha256(mine)})
    before = tree(root)
    rc, _, err = cli("register", "--bb-root", root, "--uninstall")
    assert_one_error_line(rc, err, "utils/mine.py", "never installs")
    assert mine.read_text() == "# the user's own code\n"
    assert tree(root) == before


@pytest.mark.parametrize("entry", ["../victim2/notes.txt", "utils/mine.py", "absolute"])
def test_force_does_not_widen_uninstall(tmp_path, entry):
    root = registered_checkout(tmp_path)
    victim = tmp_path / "victim2" / "notes.txt" if entry != "utils/mine.py" else root / "utils" / "mine.py"
    victim.parent.mkdir(exist_ok=True)
    victim.write_text("keep me\n")
    key = str(victim) if entry == "absolute" else entry
    tamper(root, files={key: "0" * 64})  # a hash that does not match: exactly what --force overrides
    before = tree(root)
    rc, _, err = cli("register", "--bb-root", root, "--uninstall", "--force")
    assert_one_error_line(rc, err, key, "nothing was removed")
    assert victim.read_text() == "keep me\n"
    assert tree(root) == before


def test_uninstall_refuses_a_created_folder_outside_the_checkout(tmp_path):
    root = registered_checkout(tmp_path)
    victim = tmp_path / "victim_dir"
    victim.mkdir()  # empty: rmdir would take it
    tamper(root, created_dirs=["config/defense/burn", "../victim_dir"])
    rc, _, err = cli("register", "--bb-root", root, "--uninstall", "--force")
    assert_one_error_line(rc, err, "../victim_dir", "never creates")
    assert victim.is_dir()
    assert (root / "defense" / "burn.py").is_file()


def test_uninstall_refuses_a_config_folder_that_links_outside_the_checkout(tmp_path):
    """config/defense/burn is a symbolic link to the user's folder, with a manifest placed there naming one
    of register's file names: the paths are register's, but they resolve outside the checkout."""
    root = tmp_path / "bb"
    for d in ("record", "config/defense", "defense", "utils"):
        (root / d).mkdir(parents=True)
    outside = tmp_path / "important"
    outside.mkdir()
    (outside / "config.yaml").write_text("my settings\n")
    (outside / R.MANIFEST_NAME).write_text(json.dumps({
        "files": {"config/defense/burn/config.yaml": R.sha256(outside / "config.yaml")},
        "created_dirs": []}))
    (root / "config/defense/burn").symlink_to(outside, target_is_directory=True)
    rc, _, err = cli("register", "--bb-root", root, "--uninstall", "--force")
    assert_one_error_line(rc, err, "outside the checkout")
    assert (outside / "config.yaml").read_text() == "my settings\n"
    assert (outside / R.MANIFEST_NAME).is_file()


# ------------------------------------------------------------------------------------------------
# burn sweep --executor slurm: the array script

@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch):
    """An ``sbatch`` that accepts any script and answers job id 4242."""
    exe = tmp_path / "fake-sbatch"
    exe.write_text("#!/bin/sh\necho 4242\n")
    exe.chmod(0o755)
    monkeypatch.setattr(SL, "SBATCH", str(exe))
    return exe


def sweep_args(root: Path, *extra) -> list:
    return ["sweep", "--bb-root", root, "--attacks", ATTACK, "--defenses", "fp", "--python", sys.executable,
            "--executor", "slurm", *extra]


def test_newline_in_partition_is_refused(tmp_path, fake_sbatch):
    root, _, _ = make_fake_bb(tmp_path)
    rc, _, err = cli(*sweep_args(root, "--partition", "gpu\n#SBATCH --output=/tmp/x\nrm -rf ~"))
    assert_one_error_line(rc, err, "--partition", "partition name")
    assert not (root / "record" / ".sweep_slurm").exists()  # nothing submitted, nothing written


def test_time_limit_with_a_trailing_newline_is_refused(tmp_path, fake_sbatch):
    root, _, _ = make_fake_bb(tmp_path)
    rc, _, err = cli(*sweep_args(root, "--time-limit", "1:00:00\n"))
    assert_one_error_line(rc, err, "--time-limit", "not a Slurm time")
    assert not (root / "record" / ".sweep_slurm").exists()


def test_slurm_option_with_a_second_option_in_it_is_refused(tmp_path, fake_sbatch):
    root, _, _ = make_fake_bb(tmp_path)
    rc, _, err = cli(*sweep_args(root, "--slurm-option", "--account=lab --output=/etc/x"))
    assert_one_error_line(rc, err, "--slurm-option", "not one sbatch option")
    assert not (root / "record" / ".sweep_slurm").exists()


def test_a_backdoorbench_root_with_a_space_is_quoted_in_the_script(tmp_path, fake_sbatch):
    root, _, _ = make_fake_bb(tmp_path / "my runs #1")
    rc, _, err = cli(*sweep_args(root, "--partition", "gpu"))
    assert rc == 0, err
    ledger = json.loads((root / "record" / ".sweep_slurm" / "jobs.json").read_text())
    folder = Path(ledger[0]["folder"])
    script = (folder / "array.sbatch").read_text()
    assert subprocess.run(["bash", "-n", str(folder / "array.sbatch")], capture_output=True).returncode == 0
    lines = script.splitlines()
    sbatch = [ln for ln in lines if ln.startswith("#SBATCH ")]
    # each #SBATCH line is one word once quoting is undone (sbatch's reader quotes as the shell does)
    assert all(len(shlex.split(ln[len("#SBATCH "):])) == 1 for ln in sbatch), script
    assert f"--output={folder}/task_%a.out" in [shlex.split(ln[len("#SBATCH "):])[0] for ln in sbatch]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    assert len(commands) == 1, script  # the exec line and nothing else
    assert shlex.split(commands[0]) == ["exec", sys.executable, "-m", "burn_plugin.backdoorbench.slurm", "task",
                                        str(folder / "manifest.json"), "$SLURM_ARRAY_TASK_ID"]


def test_a_backdoorbench_root_with_a_newline_is_refused(tmp_path, fake_sbatch):
    root, _, _ = make_fake_bb(tmp_path / "runs\necho owned")
    rc, _, err = cli(*sweep_args(root))
    assert_one_error_line(rc, err, "--bb-root", "Slurm array script")
    assert not (root / "record" / ".sweep_slurm").exists()


# ------------------------------------------------------------------------------------------------
# python -m burn_plugin.backdoorbench.slurm task MANIFEST TASK_ID

def write_manifest(tmp_path: Path, n_runs: int = 2) -> Path:
    info = S.AttackInfo(ATTACK, tmp_path / "record" / ATTACK, "mnist", "preactresnet18", 100)
    runs = [S.SweepRun(info, f"d{i}", [sys.executable, "-c", "pass"], tmp_path, tmp_path / f"out{i}", [], [],
                       "missing", "run") for i in range(n_runs)]
    plan = S.SweepPlan(tmp_path, sys.executable, "cpu", False, [info], [r.defense for r in runs], runs, 0.05, 0)
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(SL._plan_dict(plan, runs)))
    return path


def run_task(manifest, task) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "burn_plugin.backdoorbench.slurm", "task", str(manifest), task],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("task, needle", [("x", "not a whole number"), ("-1", "not a whole number"),
                                          ("2", "out of range"), ("1\n", "not a whole number")])
def test_task_with_a_bad_id_is_one_line(tmp_path, task, needle):
    manifest = write_manifest(tmp_path)
    proc = run_task(manifest, task)
    assert_one_error_line(proc.returncode, proc.stderr, needle)
    assert not (tmp_path / "out0").exists() and not (tmp_path / "out1").exists()  # no run was started


@pytest.mark.parametrize("content, needle", [(None, "cannot read the sweep manifest"),
                                             ("{", "not a burn sweep manifest"),
                                             ("[1, 2]", "not a burn sweep manifest"),
                                             ('{"runs": [1]}', "not a burn sweep manifest"),
                                             ('{"runs": [{"attack": {}}]}', "not a burn sweep manifest")])
def test_task_with_a_bad_manifest_is_one_line(tmp_path, content, needle):
    manifest = tmp_path / "manifest.json"
    if content is not None:
        manifest.write_text(content)
    proc = run_task(manifest, "0")
    assert_one_error_line(proc.returncode, proc.stderr, needle)
