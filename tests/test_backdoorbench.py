"""BURN as a registered BackdoorBench defense: ``burn register``/``doctor``, ``defense/burn.py``, the class.

The BackdoorBench checkout is built by hand in a temp folder (``record/``, ``data/``, ``config/defense/``,
``defense/``, ``utils/``) with none of BackdoorBench's code: synthetic MNIST-layout data and a record
made by the plugin's own ``run_attack``. The defense runs are tiny (1 round, 1 epoch, 2 DeepFool steps).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from burn_plugin.backdoorbench import register as R
from burn_plugin.backdoorbench.defense import Burn, build_parser, make_defense_class
from burn_plugin.cli import main as burn_main
from burn_plugin.fileio import boundary_cache_dir

sys.path.insert(0, str(Path(__file__).parent))
from synthetic import make_mnist_layout  # noqa: E402

METRICS = ["test_acc", "test_asr", "test_ra", "clean_test_loss_avg_over_batch", "bd_test_loss_avg_over_batch",
           "ra_test_loss_avg_over_batch"]
DETECTION = ["record", "TN", "FP", "FN", "TP", "TPR", "FPR", "AUC", "target"]
# cheap BURN settings for a 100-image train set (5% = 5 relabelled, 10% = 10 kept)
FAST = ["--device", "cpu", "--rounds", "1", "--epochs", "1", "--k_p0", "5", "--k_pT", "5", "--k_c0", "10",
        "--k_cT", "10", "--max_iter", "2", "--candidates", "2", "--boundary_batch_size", "100", "--batch_size", "50",
        "-q"]
FAST_NS = dict(device="cpu", rounds=1, epochs=1, k_p0=5.0, k_pT=5.0, k_c0=10.0, k_cT=10.0, max_iter=2, candidates=2,
               boundary_batch_size=100, batch_size=50, quiet=True)
CONFIG = "config/defense/burn/config.yaml"  # says device 'cuda' and dataset cifar10: the flags must win


def make_checkout(root: Path) -> Path:
    for d in ("record", "data", "config/defense", "defense", "utils"):
        (root / d).mkdir(parents=True, exist_ok=True)
    (root / "defense" / "__init__.py").write_text("")
    return root


def tree(root: Path) -> dict:
    """Every file and folder under root -> content hash (None for folders)."""
    return {p.relative_to(root).as_posix(): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(root.rglob("*"))}


def run_script(root: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "defense/burn.py", *args], cwd=root, capture_output=True, text=True,
                          timeout=600, env=env)


def assert_one_line_error(rc: int, stderr: str, *needles: str) -> str:
    assert rc != 0
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def bb_root(tmp_path_factory) -> Path:
    from burn_plugin.bench.attacks import AttackSettings, run_attack

    root = make_checkout(tmp_path_factory.mktemp("backdoorbench"))
    # a module in BackdoorBench's defense/ folder must never shadow a real package for defense/burn.py
    (root / "defense" / "yaml.py").write_text("raise SystemExit('defense/yaml.py shadowed PyYAML')\n")
    make_mnist_layout(root / "data" / "mnist", n_train=100, n_test=50)
    run_attack(AttackSettings(dataset="mnist", dataset_path=str(root / "data"), epochs=1, model="smallresnet",
                              pratio=0.1), root / "record" / "badnet_0_1", progress=False)
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    return root


@pytest.fixture(scope="module")
def burn_run(bb_root):
    proc = run_script(bb_root, "--attack_folder", "badnet_0_1", "--dataset", "mnist", "--yaml_path", CONFIG, *FAST)
    assert proc.returncode == 0, proc.stderr
    return bb_root / "record" / "badnet_0_1" / "defense" / "burn", proc


# ------------------------------------------------------------------------------------------------
# defense/burn.py end to end

def test_script_writes_every_backdoorbench_file(burn_run):
    out, proc = burn_run
    assert "Traceback" not in proc.stderr
    assert "burn on" in proc.stdout and "after:" in proc.stdout
    for name in ("defense_result.pt", "burn_df.csv", "burn_df_summary.csv", "detection_info.csv", "scores.npz",
                 "run.json"):
        assert (out / name).is_file(), name
    assert len(list((out / "log").glob("*.log"))) == 1

    res = torch.load(out / "defense_result.pt", weights_only=True)
    assert set(res) == {"model_name", "num_classes", "model"}
    assert res["model_name"] == "smallresnet" and res["num_classes"] == 10

    summary = pd.read_csv(out / "burn_df_summary.csv", index_col=0)
    assert list(summary.index) == ["last", "valid_max", "exist_nan_value"]
    assert list(summary.columns) == METRICS
    df = pd.read_csv(out / "burn_df.csv")
    assert "epoch" in df.columns and set(METRICS) <= set(df.columns)
    assert float(summary.loc["last", "test_acc"]) == pytest.approx(float(df["test_acc"].iloc[-1]))

    det = pd.read_csv(out / "detection_info.csv")
    assert list(det.columns) == DETECTION and len(det) == 2
    assert (det[["TN", "FP", "FN", "TP"]].sum(axis=1) == 100).all()

    with np.load(out / "scores.npz") as z:
        assert len(z["final_score"]) == 100

    run = json.loads((out / "run.json").read_text())
    assert run["method"] == "burn" and run["device"] == "cpu"  # the YAML's 'cuda' was overridden
    assert run["yaml_path"].endswith(CONFIG)
    assert run["config"]["rounds"] == 1 and run["config"]["max_iter"] == 2
    assert run["config"]["lr"] == 5e-5  # from the YAML: not given on the command line
    assert {"device", "dataset", "rounds"} <= set(run["command_line_settings"])
    assert "amp" in run["ignored_keys"]


def test_the_entry_script_under_torchrun_gives_the_one_process_result(bb_root, burn_run):
    """``torchrun --nproc_per_node 2 defense/burn.py ...``: two gloo processes, 4-image boundary batches
    (64-image chunks, so the 100 images split over the ranks), against one process with the same settings."""
    split = ["--boundary_batch_size", "4", "--random_seed", "1"]
    args = ["--attack_folder", "badnet_0_1", "--dataset", "mnist", "--yaml_path", CONFIG, *FAST, *split]
    # one thread in every process: torchrun's default, and the float arithmetic must be the same in both runs
    one = run_script(bb_root, *args, "--output_dir", "record/badnet_0_1/defense/burn_one",
                     env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert one.returncode == 0, one.stderr
    shutil.rmtree(boundary_cache_dir())  # the two-process run must analyse, not read the user's cache
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "defense/burn.py", *args, "--output_dir", "record/badnet_0_1/defense/burn_two"],
                         cwd=bb_root, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-3000:]
    a = np.load(bb_root / "record" / "badnet_0_1" / "defense" / "burn_one" / "scores.npz")
    b = np.load(bb_root / "record" / "badnet_0_1" / "defense" / "burn_two" / "scores.npz")
    assert sorted(a.files) == sorted(b.files) and all(np.array_equal(a[k], b[k]) for k in a.files)
    wa, wb = (torch.load(bb_root / "record" / "badnet_0_1" / "defense" / d / "defense_result.pt",
                         weights_only=True)["model"] for d in ("burn_one", "burn_two"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    run = json.loads((bb_root / "record" / "badnet_0_1" / "defense" / "burn_two" / "run.json").read_text())
    assert run["entry"] == "backdoorbench"


def test_defense_result_loads_into_the_record_model(burn_run):
    from burn_plugin.bench.models import build_model, load_weights

    out, _ = burn_run
    res = torch.load(out / "defense_result.pt", weights_only=True)
    model = load_weights(build_model(res["model_name"], res["num_classes"]), res["model"])
    assert set(model.state_dict()) == set(res["model"])


def test_preactresnet18_defense_result_round_trips(tmp_path):
    from burn_plugin.bench.models import build_model, load_weights
    from burn_plugin.fileio import save_torch

    src = build_model("preactresnet18", 10)
    save_torch({"model_name": "preactresnet18", "num_classes": 10, "model": src.state_dict()},
               tmp_path / "defense_result.pt")
    res = torch.load(tmp_path / "defense_result.pt", weights_only=True)
    dst = load_weights(build_model(res["model_name"], res["num_classes"]), res["model"])
    assert set(dst.state_dict()) == set(build_model("preactresnet18", 10).state_dict())
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_second_run_without_overwrite_fails_and_keeps_the_result(bb_root, burn_run):
    out, _ = burn_run
    before = tree(out)
    proc = run_script(bb_root, "--attack_folder", "badnet_0_1", "--dataset", "mnist", "--yaml_path", CONFIG,
                      *FAST)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, "already holds a finished burn result", "--overwrite")
    assert tree(out) == before


def test_missing_record_is_one_line(bb_root):
    proc = run_script(bb_root, "--attack_folder", "no_such_attack", "--dataset", "mnist", *FAST)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, "no_such_attack", "not found")


def test_unknown_yaml_key_is_named(bb_root, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((bb_root / CONFIG).read_text() + "\nk_p_zero: 3\n")
    proc = run_script(bb_root, "--attack_folder", "badnet_0_1", "--yaml_path", str(bad), "--output_dir",
                      str(tmp_path / "out"), *FAST)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, "'k_p_zero'", str(bad))
    assert not (tmp_path / "out").exists()


def test_dataset_disagreeing_with_record(bb_root, tmp_path):
    proc = run_script(bb_root, "--result_file", "badnet_0_1", "--dataset", "cifar10", "--yaml_path", CONFIG,
                      "--output_dir", str(tmp_path / "out"), *FAST)
    assert proc.returncode == 2
    assert_one_line_error(proc.returncode, proc.stderr, "cifar10", "mnist")
    assert not (tmp_path / "out" / "defense_result.pt").exists()


# ------------------------------------------------------------------------------------------------
# the class, driven from Python

def test_result_file_and_attack_folder_are_one_flag():
    p = build_parser()
    a = p.parse_args(["--result_file", "badnet_0_1"])
    b = p.parse_args(["--attack_folder", "badnet_0_1"])
    c = p.parse_args(["--attack-folder", "badnet_0_1", "--trust-record"])
    assert a.result_file == b.result_file == c.result_file == "badnet_0_1" and c.trust_record
    assert not hasattr(a, "rounds") and not hasattr(a, "device")  # unset flags never beat the YAML


def test_burn_class_in_process(bb_root, tmp_path, monkeypatch, burn_run):
    monkeypatch.chdir(bb_root)
    args = argparse.Namespace(dataset="mnist", yaml_path=CONFIG, output_dir=str(tmp_path / "a"), **FAST_NS)
    burn = Burn(args)
    assert burn.config.rounds == 1 and burn.run_options["device"] == "cpu" and burn.attack_folder is None
    summary = burn.defense("badnet_0_1")
    assert burn.save_path == str(tmp_path / "a") + "/"
    assert summary["method"] == "burn" and summary["after"]["test_acc"] is not None
    assert torch.load(tmp_path / "a" / "defense_result.pt", weights_only=True).keys() == {
        "model_name", "num_classes", "model"}

    # --result_file through the parser, the record found under record/, the default save_path
    parsed = build_parser().parse_args(["--result_file", "badnet_0_1", "--dataset", "mnist", "--yaml_path", CONFIG,
                                        *FAST, "--overwrite"])
    b = Burn(parsed)
    assert b.attack_folder == bb_root / "record" / "badnet_0_1"
    assert b.save_path == str(bb_root / "record" / "badnet_0_1" / "defense" / "burn") + "/"
    assert b.args.log.endswith("defense/burn/log/")


def test_default_yaml_is_picked_by_dataset(bb_root, monkeypatch):
    monkeypatch.chdir(bb_root)
    b = Burn(argparse.Namespace(result_file="badnet_0_1", output_dir="unused_out"))
    # no --dataset: the record says mnist; mnist.yaml is not installed, so the bundled copy is used
    assert b.yaml_path.name == "mnist.yaml" and CONFIG not in str(b.yaml_path)
    assert b.args.dataset == "mnist" and b.args.save_path.endswith("unused_out/")
    c = Burn(argparse.Namespace(dataset="cifar10"))
    assert c.yaml_path == bb_root / "config/defense/burn/cifar10.yaml"  # the checkout's copy wins


def test_make_defense_class_subclasses_backdoorbench_base(tmp_path, monkeypatch, capsys):
    assert make_defense_class() is Burn  # no BackdoorBench on sys.path here
    fake = make_checkout(tmp_path / "bb")
    # BackdoorBench's base (interface.md 1.1) is a stub whose __init__ prints 1; a stand-in with that shape
    (fake / "defense" / "base.py").write_text("class defense(object):\n    def __init__(self):\n        print(1)\n")
    saved = {k: v for k, v in sys.modules.items() if k == "defense" or k.startswith("defense.")}
    for k in saved:
        del sys.modules[k]
    monkeypatch.syspath_prepend(str(fake))
    try:
        cls = make_defense_class()
        base = sys.modules["defense.base"].defense
        assert issubclass(cls, Burn) and issubclass(cls, base) and cls.__name__ == "Burn"
        assert make_defense_class() is cls
        obj = cls(argparse.Namespace(dataset="cifar10"), cwd=fake)
        assert isinstance(obj, base) and obj.config.rounds == 20
        assert capsys.readouterr().out == ""  # upstream's base __init__ is not run
    finally:
        for k in [k for k in sys.modules if k == "defense" or k.startswith("defense.")]:
            del sys.modules[k]
        sys.modules.update(saved)


# ------------------------------------------------------------------------------------------------
# burn register / doctor

def test_register_installs_the_packaged_files(bb_root):
    manifest = json.loads((bb_root / R.MANIFEST).read_text())
    expected = {"defense/burn.py"} | {f"config/defense/burn/{n}.yaml" for n in
                                      ("config", "cifar10", "cifar100", "gtsrb", "tiny")}
    assert set(manifest["files"]) == expected
    for rel, src in R.managed_files().items():
        assert (bb_root / rel).read_bytes() == src.read_bytes()
        assert manifest["files"][rel.as_posix()] == R.sha256(bb_root / rel)
    assert manifest["created_dirs"] == ["config/defense/burn"]


def test_register_is_idempotent(tmp_path, capsys):
    root = make_checkout(tmp_path)
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    first = tree(root)
    stamps = {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}
    capsys.readouterr()
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    out = capsys.readouterr().out
    actions = [line.split()[0] for line in out.splitlines()[:7]]
    assert actions == ["unchanged"] * 6 + ["manifest"]
    assert tree(root) == first
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())


def test_register_refuses_a_foreign_file_unless_forced(tmp_path, capsys):
    root = make_checkout(tmp_path)
    (root / "defense" / "burn.py").write_text("print('my own burn')\n")
    before = tree(root)
    assert burn_main(["register", "--bb-root", str(root)]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "defense/burn.py", "not written by burn register", "--force")
    assert tree(root) == before  # nothing at all was written
    assert burn_main(["register", "--bb-root", str(root), "--force"]) == 0
    assert "replaced  defense/burn.py" in capsys.readouterr().out
    assert (root / "defense" / "burn.py").read_bytes() == R.bundled_script().read_bytes()


def test_register_updates_its_own_older_files_but_not_edited_ones(tmp_path, capsys):
    root = make_checkout(tmp_path)
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    # an older plugin version wrote config.yaml: the manifest matches the file, the package differs
    old = root / "config/defense/burn/config.yaml"
    old.write_text("rounds: 3\n")
    m = json.loads((root / R.MANIFEST).read_text())
    m["files"]["config/defense/burn/config.yaml"] = R.sha256(old)
    (root / R.MANIFEST).write_text(json.dumps(m))
    capsys.readouterr()
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    assert "updated   config/defense/burn/config.yaml" in capsys.readouterr().out
    # the user edits a file burn register wrote: register and uninstall both refuse without --force
    edited = root / "config/defense/burn/cifar10.yaml"
    edited.write_text(edited.read_text() + "\nrounds: 2\n")
    before = tree(root)
    assert burn_main(["register", "--bb-root", str(root)]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "cifar10.yaml", "changed since")
    assert burn_main(["register", "--bb-root", str(root), "--uninstall"]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "cifar10.yaml", "nothing was removed")
    assert tree(root) == before
    assert burn_main(["register", "--bb-root", str(root), "--uninstall", "--force"]) == 0
    assert not (root / "config/defense/burn").exists() and not (root / "defense/burn.py").exists()


def test_uninstall_removes_exactly_what_was_installed(tmp_path, capsys):
    root = make_checkout(tmp_path)
    (root / "defense" / "ft.py").write_text("# another defense\n")
    (root / "config/defense/ft").mkdir()
    (root / "config/defense/ft/config.yaml").write_text("epochs: 1\n")
    (root / "utils" / "x.py").write_text("")
    before = tree(root)
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    assert burn_main(["register", "--bb-root", str(root), "--uninstall"]) == 0
    assert tree(root) == before
    # a second uninstall has nothing to do
    assert burn_main(["register", "--bb-root", str(root), "--uninstall"]) == 0
    assert "nothing removed" in capsys.readouterr().out

    # a file the user put into config/defense/burn/ keeps that folder alive
    assert burn_main(["register", "--bb-root", str(root)]) == 0
    (root / "config/defense/burn/mine.yaml").write_text("rounds: 1\n")
    capsys.readouterr()
    assert burn_main(["register", "--bb-root", str(root), "--uninstall"]) == 0
    assert "kept" in capsys.readouterr().out
    assert tree(root) == {**before, "config/defense/burn": None,
                          "config/defense/burn/mine.yaml": tree(root)["config/defense/burn/mine.yaml"]}


@pytest.mark.parametrize("make", ["empty", "missing", "file"])
def test_register_rejects_what_is_not_a_checkout(tmp_path, capsys, make):
    target = tmp_path / "x"
    if make == "empty":
        target.mkdir()
        (target / "defense").mkdir()
    elif make == "file":
        target.write_text("")
    assert burn_main(["register", "--bb-root", str(target)]) == 2
    line = assert_one_line_error(2, capsys.readouterr().err, str(target))
    assert "BackdoorBench checkout" in line
    if make == "empty":
        assert "config/defense/" in line and sorted(p.name for p in target.iterdir()) == ["defense"]


def test_register_needs_a_root(monkeypatch, capsys):
    monkeypatch.delenv(R.ROOT_ENV, raising=False)
    assert burn_main(["register"]) == 2
    assert_one_line_error(2, capsys.readouterr().err, "--bb-root", R.ROOT_ENV)


def test_doctor_on_a_ready_checkout(bb_root, burn_run, capsys):
    assert burn_main(["doctor", "--bb-root", str(bb_root)]) == 0
    out = capsys.readouterr().out
    assert "ok       defense/burn.py: installed by burn register, current" in out
    assert "ok       record badnet_0_1: attack_result.pt, dataset mnist, defenses: burn" in out
    assert "ok       data mnist" in out and "missing  data cifar10" in out
    assert "ok       python torch" in out
    assert out.strip().splitlines()[-1] == "doctor: everything BURN needs is in place"


def test_doctor_reports_what_is_missing(tmp_path, capsys):
    from burn_plugin.fileio import save_torch

    root = make_checkout(tmp_path)
    rec = root / "record" / "blended_cifar"
    rec.mkdir()
    save_torch({"dataset": "cifar10"}, rec / "info.pickle")
    (rec / "attack_result.pt").write_bytes(b"")
    (root / "record" / "half_done").mkdir()
    assert burn_main(["doctor", "--bb-root", str(root)]) == 1
    out = capsys.readouterr().out
    assert "MISSING  defense/burn.py: not installed; run burn register" in out
    assert "MISSING  data cifar10" in out and "needed by a record below" in out
    assert "warn     record half_done: no attack_result.pt" in out
    assert "required item(s) missing" in out.strip().splitlines()[-1]
