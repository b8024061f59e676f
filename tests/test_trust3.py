"""Third pass on trust (issue 35): a downloaded record runs no code, nothing it ships is taken as a result,
``--overwrite`` touches only records and results, and two runs into one folder do not collide.

Each test plays a hostile record's author (or a second run) against what a user does with the record.
The Slurm and ``--uninstall`` cases are in ``test_trust3_slurm_register.py``, the traceback and hang
cases in ``test_trust3_inputs.py``.
"""
from __future__ import annotations

import json
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from burn_plugin.backdoorbench import sweep as S
from burn_plugin.bench.records import record_dataset, resolve_data_root
from burn_plugin.errors import BurnError, ConfigError, CorruptFileError
from burn_plugin.fileio import boundary_cache_dir, finished_here, load_settings_file, torch_load
from burn_plugin.settings import resolve_yaml
from test_cli_errors import assert_one_error_line, run
from test_sweep import make_fake_bb, run_cli
from synthetic import make_cifar_layout

FAST = ["--rounds", "1", "--epochs", "1", "--k_p0", "5", "--k_pT", "5", "--k_c0", "10", "--k_cT", "10",
        "--max_iter", "3", "--lr", "0.001", "--device", "cpu"]


def copy_record(src: Path, dest_root: Path) -> Path:
    """A private copy of ``src`` (a record under ``<R>/record/``) with its data, as a download would be."""
    root = src.parent.parent
    shutil.copytree(root / "data", dest_root / "data")
    dest = dest_root / "record" / src.name
    shutil.copytree(src, dest, ignore=shutil.ignore_patterns("defense"))
    return dest


@pytest.fixture
def record(trained_record, tmp_path):
    return copy_record(trained_record, tmp_path / "BB")


# ------------------------------------------------------------------------------------------------
# 1. pickles: an exact allow-list, no dotted-name walk, no module wildcard

def sentinel_expr(marker: Path) -> bytes:
    return f"open({str(marker)!r}, 'w').close()".encode()


def _str(s: bytes) -> bytes:
    return b"\x8c" + bytes([len(s)]) + s if len(s) < 256 else b"\x8d" + len(s).to_bytes(8, "little") + s


def gadget(module: bytes, name: bytes, arg: bytes) -> bytes:
    """Protocol 4: STACK_GLOBAL(module, name)(arg) -- a dotted ``name`` is walked by the stock unpickler."""
    return b"\x80\x04" + _str(module) + _str(name) + b"\x93" + _str(arg) + b"\x85R."


def dtypes_walk(marker: Path) -> bytes:
    """``numpy.dtypes.__builtins__.get('eval')(expr)``: the walk the old fallback allowed."""
    return (b"\x80\x04" + _str(b"numpy.dtypes") + _str(b"__builtins__.get") + b"\x93" + _str(b"eval") + b"\x85R"
            + _str(sentinel_expr(marker)) + b"\x85R.")


GADGETS = {
    "numpy.dtypes walk": dtypes_walk,
    "builtins.eval": lambda m: gadget(b"builtins", b"eval", sentinel_expr(m)),
    "builtins dotted": lambda m: gadget(b"builtins", b"dict.__class__.__subclasses__", b""),
    "os.system": lambda m: gadget(b"os", b"system", f"touch {m}".encode()),
    "numpy wildcard": lambda m: gadget(b"numpy", b"testing.assert_", b"x"),
    "numpy.dtypes non-dtype": lambda m: gadget(b"numpy.dtypes", b"_add_dtype_helper", b"x"),
}


@pytest.mark.parametrize("name", GADGETS)
def test_a_planted_info_pickle_runs_no_code(capsys, hand_record, tmp_path, name):
    marker = tmp_path / "PWNED"
    (hand_record.folder / "info.pickle").write_bytes(GADGETS[name](marker))
    rc, _, err = run(capsys, "info", hand_record.folder)
    assert not marker.exists(), "the payload ran"
    assert_one_error_line(rc, err, "info.pickle", "--trust-record")


def test_the_dtypes_walk_is_refused_at_the_loader(tmp_path):
    marker = tmp_path / "PWNED"
    f = tmp_path / "info.pickle"
    f.write_bytes(dtypes_walk(marker))
    with pytest.raises(BurnError, match="numpy.dtypes.__builtins__.get"):
        load_settings_file(f)
    assert not marker.exists()
    f.write_bytes(pickle.dumps({"dataset": "mnist", "pratio": np.float64(0.1), "shape": np.zeros((2, 3))}))
    got = load_settings_file(f)
    assert got["dataset"] == "mnist" and got["shape"].shape == (2, 3)


# A grammar of pickle programs: globals from the modules a hostile author would reach for, arguments,
# calls, containers; written into info.pickle (plain pickle) and attack_result.pt (torch's legacy format).
MODULES = [b"numpy", b"numpy.dtypes", b"numpy._core.multiarray", b"numpy.core.multiarray", b"builtins", b"os",
           b"torch", b"collections", b"posix", b"subprocess"]
NAMES = [b"ndarray", b"dtype", b"_reconstruct", b"scalar", b"Float64DType", b"__builtins__.get", b"eval", b"exec",
         b"system", b"getattr", b"load", b"_utils._rebuild_tensor_v2", b"OrderedDict", b"dict", b"Popen",
         b"testing.assert_", b"__import__", b"dtypes.__builtins__.get"]


def _ops(marker: Path):
    arg = st.sampled_from([b"", b"eval", b"os", sentinel_expr(marker), f"touch {marker}".encode(), b"f8", b"O"])
    return st.one_of(
        st.tuples(st.sampled_from(MODULES), st.sampled_from(NAMES)).map(lambda t: _str(t[0]) + _str(t[1]) + b"\x93"),
        st.tuples(st.sampled_from(MODULES), st.sampled_from(NAMES)).map(lambda t: b"c" + t[0] + b"\n" + t[1] + b"\n"),
        arg.map(_str),
        st.sampled_from([b"\x85", b"\x86", b"R", b"b", b"}", b"]", b")", b"N", b"K\x01", b"(", b"t", b"s", b"e",
                         b"\x94", b"h\x00", b"0", b"2", b"\x88", b"G?\xf0\x00\x00\x00\x00\x00\x00"]),
    )


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_fuzz_pickle_programs_run_no_code(tmp_path, data):
    """Random opcode programs with a known gadget's core (``GADGETS``, without its PROTO and STOP) placed
    among them: whatever the surroundings, the payload never runs, and a load either succeeds or is one
    error line."""
    marker = tmp_path / "PWNED"
    ops = data.draw(st.lists(_ops(marker), max_size=10))
    core = GADGETS[data.draw(st.sampled_from(sorted(GADGETS)))](marker)[2:-1]
    at = data.draw(st.integers(0, len(ops)))
    blob = b"\x80\x04" + b"".join(ops[:at]) + core + b"".join(ops[at:]) + b"."
    for name, load in (("info.pickle", load_settings_file),
                       ("attack_result.pt", lambda p: torch_load(p, what="attack record"))):
        f = tmp_path / name
        f.write_bytes(blob)
        try:
            load(f)
        except BurnError as exc:
            assert "\n" not in str(exc).strip()
        assert not marker.exists(), f"payload ran from {name}: {blob!r}"


# ------------------------------------------------------------------------------------------------
# record paths stay where they belong; dataset files keep their md5 check

def test_a_data_path_leading_out_of_the_data_folder_is_refused(tmp_path):
    folder = tmp_path / "BB" / "record" / "x"
    with pytest.raises(CorruptFileError, match="data_path"):
        resolve_data_root(folder, "./data/../record/x/payload", "cifar10")
    assert resolve_data_root(folder, "./data/cifar10", "cifar10") == tmp_path / "BB" / "data" / "cifar10"


def test_a_defend_with_a_traversing_data_path_is_one_line(capsys, hand_record_factory):
    hr = hand_record_factory("T", data_path="./data/../record/x")
    rc, _, err = run(capsys, "defend", "--attack_folder", hr.folder, *FAST)
    assert_one_error_line(rc, err, "data_path", "--dataset_path")


def test_a_poisoned_image_path_leading_out_of_the_record_is_refused(capsys, hand_record, tmp_path):
    from PIL import Image

    outside = tmp_path / "elsewhere" / "x.png"
    outside.parent.mkdir(parents=True)
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(outside)
    pt = hand_record.folder / "attack_result.pt"
    obj = torch.load(pt, weights_only=False)
    entry = next(iter(obj["bd_train"]["bd_data_container"]["data_dict"].values()))
    entry["path"] = str(outside)   # an absolute path to an image out of the record
    torch.save(obj, pt)
    rc, _, err = run(capsys, "defend", "--attack_folder", hand_record.folder, *FAST)
    assert_one_error_line(rc, err, "poisoned image", str(outside))


def test_a_poisoned_image_path_is_read_from_inside_the_record(hand_record, tmp_path):
    from burn_plugin.bench.records import _png_resolver

    resolve = _png_resolver(hand_record.folder)
    name = hand_record.name
    # a '..' that climbs out of the checkout to another bd_train_dataset/ is read from the record's own
    (tmp_path / "elsewhere" / "bd_train_dataset").mkdir(parents=True)
    (tmp_path / "elsewhere" / "bd_train_dataset" / "0.png").write_bytes(b"x")
    got = resolve(f"./record/{name}/bd_train_dataset/../../../../elsewhere/bd_train_dataset/0.png")
    assert got == hand_record.folder / "bd_train_dataset" / "0.png"
    for bad in ("/etc/hostname", f"./record/{name}/bd_train_dataset/../../../x.png"):
        with pytest.raises(CorruptFileError, match="poisoned image path"):
            resolve(bad)


def test_cifar_batch_files_are_checked_and_run_no_code(tmp_path, monkeypatch):
    from burn_plugin.bench import datasets as D

    make_cifar_layout(tmp_path / "cifar10", n_train=20, n_test=10)
    ds = D.load_raw("cifar10", tmp_path / "cifar10", train=False)
    assert len(ds) == 10
    monkeypatch.delenv("BURN_UNVERIFIED_DATA")
    with pytest.raises(BurnError, match="md5"):
        D.load_raw("cifar10", tmp_path / "cifar10", train=False)
    monkeypatch.setenv("BURN_UNVERIFIED_DATA", "1")
    marker = tmp_path / "PWNED"
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "test_batch").write_bytes(
        gadget(b"builtins", b"eval", sentinel_expr(marker)))
    with pytest.raises(BurnError, match="test_batch"):
        D.load_raw("cifar10", tmp_path / "cifar10", train=False)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------
# 2. nothing a record ships is taken as a result

def test_a_planted_boundary_cache_is_not_read(capsys, record, tmp_path):
    out1, out2 = tmp_path / "one", tmp_path / "two"
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out1)[0] == 0
    # the record now ships a cache with every distance set to zero, under every name a cache could have
    planted = record / "defense" / ".burn_cache"
    planted.mkdir(parents=True, exist_ok=True)
    for f in list(boundary_cache_dir().glob("boundary_*.pt")) + list(planted.glob("boundary_*.pt")):
        entry = torch.load(f, weights_only=True)
        for k, v in entry.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                entry[k] = torch.zeros_like(v)
        torch.save(entry, planted / f.name)
    for f in boundary_cache_dir().glob("boundary_*.pt"):
        f.unlink()
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out2)[0] == 0
    a, b = np.load(out1 / "scores.npz"), np.load(out2 / "scores.npz")
    assert np.array_equal(a["distance"], b["distance"]) and b["distance"].max() > 0


def test_a_planted_checkpoint_is_not_resumed(capsys, record, tmp_path):
    made = tmp_path / "made"
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", made)[0] == 0
    shipped = record / "defense" / "burn"
    shipped.mkdir(parents=True)
    shutil.copytree(made / "checkpoint", shipped / "checkpoint")
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--resume")
    assert_one_error_line(rc, err, "not written by a run", "--resume")
    assert not (shipped / "defense_result.pt").exists()
    # and a run of our own is resumed
    mine = tmp_path / "mine"
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", mine)[0] == 0
    (mine / "defense_result.pt").unlink()
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", mine, "--resume")
    assert rc == 0, err


def test_a_record_s_dataset_name_never_forms_a_path(hand_record, tmp_path):
    (hand_record.folder / "info.pickle").write_bytes(pickle.dumps({"dataset": "../../../record/x/evil"}))
    assert record_dataset(hand_record.folder) == "mnist"   # from attack_result.pt, whose name is checked
    planted = hand_record.root / "record" / "x" / "evil.yaml"
    planted.parent.mkdir(parents=True)
    planted.write_text("rounds: 1\n")
    with pytest.raises(ConfigError, match="not a dataset name"):
        resolve_yaml("burn", "../../../record/x/evil", hand_record.root)


def test_a_sweep_does_not_take_a_shipped_result_as_done(tmp_path):
    root, fixtures, hr = make_fake_bb(tmp_path)
    shipped = hr.folder / "defense" / "burn"
    shipped.mkdir(parents=True)
    torch.save({"model_name": hr.obj["model_name"], "num_classes": 10, "model": hr.obj["model"]},
               shipped / "defense_result.pt")
    (shipped / "checkpoint").mkdir()
    torch.save({"round": 0}, shipped / "checkpoint" / "last.pt")
    plan = S.plan_sweep(root, attacks=hr.name, defenses="burn", python=sys.executable)
    (r,) = plan.runs
    assert r.action == "run" and "--resume" not in r.command and "--overwrite" in r.command
    (shipped / "sweep_run.json").write_text(json.dumps({"status": "ok", "command": r.command}))
    assert S.plan_sweep(root, attacks=hr.name, defenses="burn", python=sys.executable).runs[0].action == "run"


def test_a_sweep_reruns_a_result_made_with_other_settings(tmp_path, monkeypatch):
    root, fixtures, hr = make_fake_bb(tmp_path)
    monkeypatch.setattr(S, "PLUGIN_COMMAND", [sys.executable, str(fixtures / "fake_burn.py")])
    args = ["sweep", "--bb-root", str(root), "--attacks", hr.name, "--defenses", "burn", "--python",
            sys.executable, "--no-compare", "--fast"]
    rc, _, err = run_cli(args)
    assert rc == 0, err
    out = hr.folder / "defense" / "burn"
    assert finished_here(out)
    plan = S.plan_sweep(root, attacks=hr.name, defenses="burn", python=sys.executable, fast=True)
    assert plan.runs[0].action == "skip"   # the same settings: done
    plan = S.plan_sweep(root, attacks=hr.name, defenses="burn", python=sys.executable, fast=False)
    assert plan.runs[0].action == "run"    # the sweep's settings differ from those the result was made with


def test_ulrl_does_not_read_a_shipped_burn_result(capsys, record, tmp_path):
    from burn_plugin.bench.records import load_record

    bd = load_record(record).tensors("bd_train")
    shipped = record / "defense" / "burn"
    shipped.mkdir(parents=True)
    np.savez(shipped / "scores.npz", round1_clean=np.flatnonzero(bd.poison.numpy()), label=bd.label.numpy())
    rc, _, err = run(capsys, "defend", "--attack_folder", record, "--method", "ulrl", "--clean_source", "burn",
                     "--unlearning_epochs", "1", "--relearn_epochs", "1", "--device", "cpu", "--output_dir", tmp_path / "u")
    assert_one_error_line(rc, err, "scores.npz", "--burn_result")


# ------------------------------------------------------------------------------------------------
# 3. --overwrite replaces records and results only

def test_attack_overwrite_never_deletes_a_folder_that_is_not_a_record(capsys, tmp_path):
    from synthetic import make_mnist_layout

    make_mnist_layout(tmp_path / "data" / "mnist", n_train=60, n_test=20, seed=1)
    thesis = tmp_path / "thesis"
    (thesis / "src").mkdir(parents=True)
    (thesis / "src" / "thesis.tex").write_text("\\chapter{One}")
    (thesis / "notes.md").write_text("notes")
    rc, _, err = run(capsys, "attack", "--dataset", "mnist", "--dataset_path", tmp_path / "data", "--epochs", "1",
                     "--batch_size", "32", "--out", thesis, "--overwrite")
    assert_one_error_line(rc, err, str(thesis), "attack_result.pt")
    assert (thesis / "src" / "thesis.tex").read_text() == "\\chapter{One}" and (thesis / "notes.md").is_file()


def test_defend_overwrite_never_writes_over_a_folder_that_is_not_a_result(capsys, record, tmp_path):
    other = tmp_path / "thesis"
    other.mkdir()
    (other / "notes.md").write_text("notes")
    rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", other, "--overwrite")
    assert_one_error_line(rc, err, str(other), "--output_dir")
    assert sorted(p.name for p in other.iterdir()) == ["notes.md"]


# ------------------------------------------------------------------------------------------------
# 4. concurrent runs: a lock per output folder and per sweep

def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process that holds the lock on ``folder`` (as a running ``burn defend`` would)."""
    code = ("import sys, time\nfrom burn_plugin.fileio import folder_lock\n"
            f"with folder_lock({str(folder)!r}):\n    print('held', flush=True)\n    time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_defend_into_a_busy_folder_is_refused(capsys, record, tmp_path):
    out = tmp_path / "out"
    proc = hold_lock(out)
    try:
        rc, _, err = run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out)
    finally:
        proc.kill()
        proc.wait()
    assert_one_error_line(rc, err, "another", str(out))
    assert not (out / "defense_result.pt").exists()
    assert run(capsys, "defend", "--attack_folder", record, *FAST, "--output_dir", out)[0] == 0  # lock gone with it


def test_a_second_sweep_on_a_checkout_is_refused(tmp_path, monkeypatch):
    root, fixtures, hr = make_fake_bb(tmp_path)
    monkeypatch.setattr(S, "PLUGIN_COMMAND", [sys.executable, str(fixtures / "fake_burn.py")])
    proc = hold_lock(root / "record")
    try:
        rc, _, err = run_cli(["sweep", "--bb-root", str(root), "--attacks", hr.name, "--defenses", "burn",
                              "--python", sys.executable, "--no-compare"])
    finally:
        proc.kill()
        proc.wait()
    assert_one_error_line(rc, err, "another burn sweep")
    assert not (hr.folder / "defense" / "burn").exists()


def test_a_second_attack_into_a_busy_folder_is_refused(capsys, tmp_path):
    from synthetic import make_mnist_layout

    make_mnist_layout(tmp_path / "data" / "mnist", n_train=60, n_test=20, seed=1)
    out = tmp_path / "record" / "r"
    proc = hold_lock(out)
    try:
        rc, _, err = run(capsys, "attack", "--dataset", "mnist", "--dataset_path", tmp_path / "data",
                         "--epochs", "1", "--batch_size", "32", "--out", out)
    finally:
        proc.kill()
        proc.wait()
    assert_one_error_line(rc, err, "another", str(out))
    assert not out.exists()
