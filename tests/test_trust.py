"""Second pass on trust (issue 17): each defect a new user found, reproduced, and what happens now.

- ``burn attack --overwrite`` builds the new record beside the old one and swaps it in whole; a run
  killed half-way leaves the old record as it was;
- ``--resume`` refuses a checkpoint of other settings, an unreadable or code-carrying checkpoint, and
  a finished result, each in one line before any work;
- a record that cannot be written still runs with a writable ``--output_dir`` (the boundary cache
  moves there);
- bad paths (a component over the file-name limit, a file given as a folder), bad flag values, a
  closed stdout pipe, records that ``burn defend`` would reject, scripts without ``--record``: one
  line and exit 2 (0 for the closed pipe), never a traceback.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from burn_plugin.cli import main
from burn_plugin.fileio import boundary_cache_dir
from conftest import small_state_dict
from test_cli_errors import assert_one_error_line, run
from synthetic import make_mnist_layout

REPO = Path(__file__).resolve().parents[1]
FAST = ["--rounds", "1", "--epochs", "1", "--k_p0", "5", "--k_pT", "5", "--k_c0", "10", "--k_cT", "10",
        "--max_iter", "3", "--lr", "0.001", "--device", "cpu"]


def digest(folder: Path) -> dict:
    """sha256 of every file under ``folder`` (relative path -> hash)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def record(trained_record):
    return trained_record


# ------------------------------------------------------------------------------------------------
# burn attack --overwrite

def attack_args(root: Path, out: Path, *extra) -> list[str]:
    return ["attack", "--dataset", "mnist", "--dataset_path", str(root / "data"), "--epochs", "1",
            "--batch_size", "32", "--out", str(out), *extra]


def test_overwrite_swaps_the_record_in_whole_and_moves_old_defense_results_aside(capsys, tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=60, n_test=20, seed=1)
    out = tmp_path / "record" / "r"
    assert run(capsys, *attack_args(tmp_path, out))[0] == 0
    (out / "defense" / "burn").mkdir(parents=True)
    (out / "defense" / "burn" / "run.json").write_text("{}")
    rc, stdout, err = run(capsys, *attack_args(tmp_path, out, "--attack", "blended", "--overwrite"))
    assert rc == 0, err
    assert torch.load(out / "info.pickle", weights_only=True)["attack"] == "blended"
    assert not (out / "defense").exists()   # the old attack's results are not left beside the new one
    aside = list(tmp_path.glob("record/r.defense-replaced-*"))
    assert len(aside) == 1 and (aside[0] / "burn" / "run.json").is_file()
    assert str(aside[0]) in stdout
    assert sorted(p.name for p in (tmp_path / "record").iterdir() if p.name.startswith(".")) == []
    rc, stdout, _ = run(capsys, "info", out)
    assert rc == 0 and "attack:       blended" in stdout


def test_failed_overwrite_leaves_the_old_record_untouched(capsys, tmp_path, monkeypatch):
    from burn_plugin.bench.attacks import run as attacks

    make_mnist_layout(tmp_path / "data" / "mnist", n_train=60, n_test=20, seed=1)
    out = tmp_path / "record" / "r"
    assert run(capsys, *attack_args(tmp_path, out))[0] == 0
    before = digest(out)

    def boom(*a, **k):
        raise KeyboardInterrupt   # as Ctrl-C during training, after the new PNGs were written

    monkeypatch.setattr(attacks, "_train", boom)
    rc, _, err = run(capsys, *attack_args(tmp_path, out, "--attack", "blended", "--overwrite"))
    assert rc == 130 and digest(out) == before
    assert [p.name for p in (tmp_path / "record").iterdir()] == ["r"]   # no staging folder left


@pytest.mark.skipif(os.name != "posix", reason="uses SIGKILL")
def test_killed_overwrite_leaves_the_old_record_untouched(capsys, tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=60, n_test=20, seed=1)
    out = tmp_path / "record" / "r"
    assert run(capsys, *attack_args(tmp_path, out))[0] == 0
    before = digest(out)
    cmd = [sys.executable, "-m", "burn_plugin", "-q", *attack_args(tmp_path, out, "--attack", "blended",
                                                                   "--overwrite")]
    cmd[cmd.index("--epochs") + 1] = "500"   # still training when killed
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        stage = None
        while time.time() < deadline and stage is None:
            staged = list((tmp_path / "record").glob(".r.partial-*/bd_test_dataset"))
            stage = staged[0].parent if staged else None
            time.sleep(0.05)
        assert stage is not None, "the new record was never staged"
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert digest(out) == before   # PNGs, attack_result.pt and info.pickle: all still the old attack's
    # the next attack into the same folder clears the dead run's staging folder
    assert run(capsys, *attack_args(tmp_path, out, "--overwrite"))[0] == 0
    assert not list((tmp_path / "record").glob(".r.partial-*"))


def test_attack_into_a_non_empty_folder_needs_overwrite(capsys, tmp_path):
    make_mnist_layout(tmp_path / "data" / "mnist", n_train=60, n_test=20, seed=1)
    out = tmp_path / "record" / "r"
    out.mkdir(parents=True)
    (out / "notes.txt").write_text("mine")
    rc, _, err = run(capsys, *attack_args(tmp_path, out))
    assert_one_error_line(rc, err, "not empty", "--overwrite")
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


# ------------------------------------------------------------------------------------------------
# burn defend --resume

def test_resume_refuses_other_settings_and_never_replaces_a_finished_result(capsys, record, tmp_path):
    out = tmp_path / "K"
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out)[0] == 0
    finished = digest(out)
    changed = [*FAST, "--output_dir", out, "--resume"]
    changed[changed.index("--rounds") + 1] = "2"
    changed[changed.index("--lr") + 1] = "0.01"
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *changed)
    assert_one_error_line(rc, err, "already holds a finished burn result", "--overwrite")
    assert digest(out) == finished
    # an unfinished run (no defense_result.pt) with other settings: the checkpoint says so
    (out / "defense_result.pt").unlink()
    unfinished = digest(out)
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *changed)
    assert_one_error_line(rc, err, "other settings", "lr 0.001 -> 0.01", "rounds 1 -> 2", "--overwrite")
    assert digest(out) == unfinished
    assert json.loads((out / "run.json").read_text())["config"]["rounds"] == 1
    # the same settings resume (and finish) it
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out, "--resume")
    assert rc == 0, err and (out / "defense_result.pt").is_file()


def test_resume_refuses_a_checkpoint_of_another_record(capsys, record, tmp_path):
    from burn_plugin.fileio import FileCheckpoint

    out = tmp_path / "K"
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out)[0] == 0
    (out / "defense_result.pt").unlink()
    ck = FileCheckpoint(out / "checkpoint")
    state = ck.load()
    ck.save(dict(state, run_key="0" * 20))   # as if made from other weights or data
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out, "--resume")
    assert_one_error_line(rc, err, "another model or training set")


class Planted:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


@pytest.mark.parametrize("damage", ["truncated", "code"])
def test_resume_with_a_broken_checkpoint_is_one_line_before_any_work(capsys, record, tmp_path, damage):
    out = tmp_path / "K"
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out)[0] == 0
    (out / "defense_result.pt").unlink()
    last = out / "checkpoint" / "last.pt"
    marker = tmp_path / "PWNED"
    if damage == "truncated":
        last.write_bytes(last.read_bytes()[:200])
    else:
        torch.save({"round": 0, "evil": Planted(marker)}, last)
    cache = boundary_cache_dir()
    cached = sorted(cache.glob("*")) if cache.is_dir() else []
    logs = sorted((out / "log").glob("*"))
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out, "--resume")
    assert_one_error_line(rc, err, str(last), "--overwrite")
    assert "weights_only" not in err and not marker.exists()
    assert sorted((out / "log").glob("*")) == logs   # stopped before the run began: not even a log file
    assert (sorted(cache.glob("*")) if cache.is_dir() else []) == cached


def test_a_record_that_cannot_be_written_runs_with_a_writable_output_dir(capsys, record, tmp_path):
    import shutil

    ro = tmp_path / "record" / "ro"
    shutil.copytree(record, ro, ignore=shutil.ignore_patterns("defense"))
    (ro / "defense").write_text("a file where the record's defense/ folder would go: nothing can be made there")
    out = tmp_path / "out"
    rc, stdout, err = run(capsys, "defend", "--attack_folder", ro, *FAST, "--output_dir", out,
                          "--dataset_path", record.parent.parent / "data")
    assert rc == 0, err
    assert (out / "defense_result.pt").is_file() and list(boundary_cache_dir().glob("boundary_*.pt"))
    assert not (ro / "defense").is_dir()   # nothing was written into the record
    rc, _, err = run(capsys, "defend", "--attack_folder", ro, *FAST, "--dataset_path", record.parent.parent / "data")
    assert_one_error_line(rc, err, "cannot write results", "--output_dir", code=1)


# ------------------------------------------------------------------------------------------------
# bad paths, flags, pipes and records: one line

LONG = "x" * 300


@pytest.mark.parametrize("argv", [
    ["info", "{tmp}/" + LONG],
    ["defend", "--attack_folder", "{tmp}/" + LONG],
    ["compare", "{tmp}/" + LONG],
    ["register", "--bb-root", "{tmp}/" + LONG],
    ["attack", "--dataset", "mnist", "--out", "{tmp}/" + LONG + "/r"],
    ["defend", "--attack_folder", "{record}", "--output_dir", "{tmp}/" + LONG],
])
def test_a_path_component_over_the_name_limit_is_one_line(capsys, tmp_path, record, argv):
    argv = [a.format(tmp=tmp_path, record=record) for a in argv]
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith("error: ")


def test_a_bad_flag_value_is_one_line(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["defend", "--rounds", "abc"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1
    assert "--rounds: invalid int value: 'abc'" in err and "burn defend --help" in err


def test_a_file_given_as_the_record_folder(capsys, record, tmp_path):
    f = tmp_path / "notes.txt"
    f.write_text("x")
    rc, _, err = run(capsys, "defend", "--attack_folder", f)
    assert_one_error_line(rc, err, "is a file, not a folder")
    rc, _, err = run(capsys, "info", f)
    assert_one_error_line(rc, err, "not a folder")


def test_info_rejects_what_defend_rejects(capsys, hand_record):
    obj = dict(hand_record.obj, model=small_state_dict(5))   # 5-class weights in a 10-class record
    torch.save(obj, hand_record.pt)
    rc, _, err = run(capsys, "info", hand_record.folder)
    assert_one_error_line(rc, err, "class-count")
    torch.save(dict(hand_record.obj, model_name="nope"), hand_record.pt)
    rc, _, err = run(capsys, "info", hand_record.folder)
    assert_one_error_line(rc, err, "nope")


def test_info_refuses_a_code_carrying_plain_pickle(capsys, hand_record, tmp_path, recwarn):
    marker = tmp_path / "PWNED"
    with open(hand_record.folder / "info.pickle", "wb") as fh:
        pickle.dump({"attack": "badnet", "evil": Planted(marker)}, fh)
    rc, _, err = run(capsys, "info", hand_record.folder)
    assert_one_error_line(rc, err, "info.pickle", "--trust-record")
    assert not marker.exists()
    assert not [w for w in recwarn if "pickle protocol" in str(w.message)]   # torch's warning would be lines more


class ClosedPipe(io.TextIOWrapper):
    def write(self, s):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_closed_stdout_pipe_ends_quietly(capsys, hand_record, monkeypatch):
    monkeypatch.setattr(sys, "stdout", ClosedPipe(io.BytesIO()))
    assert main(["info", str(hand_record.folder)]) == 0
    assert capsys.readouterr().err == ""


def test_a_closed_stdout_pipe_in_a_real_process(hand_record):
    proc = subprocess.Popen([sys.executable, "-m", "burn_plugin", "info", str(hand_record.folder)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()   # the reader has gone before the first line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""


@pytest.mark.parametrize("script", ["boundary_speed", "burn_end_to_end", "oracle_distance"])
def test_benchmarks_without_a_record_name_the_command_that_makes_one(script):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / f"{script}.py")], capture_output=True, text=True,
                       timeout=120)
    assert_one_error_line(p.returncode, p.stderr, "burn attack", "--record")
