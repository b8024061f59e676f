"""``burn sweep`` and ``bb_runner.py`` against a *fake* BackdoorBench checkout.

The checkout is built in a temporary folder: ``defense/<name>.py`` are tiny scripts that behave like
BackdoorBench's defenses where it matters here (they touch ``np.infty`` as its plot helper does, read
``--index``, write ``record/<attack>/defense/<name>/defense_result.pt`` and the summary CSV under the
defense's real file name, interface.md 1.5/1.6), or fail the ways real ones do (exit 1; an empty
``defense_result.pt`` as after a NaN loss). The attack record is the hand-built one of conftest.py.
``burn`` is replaced by a fake ``burn defend`` (``PLUGIN_COMMAND``) so that no model is trained.

One module-level fixture runs the sweep twice (the second run resumes) and keeps what each run left;
the tests check those snapshots. Only the fake I-BAU imports torch in its subprocess.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from burn_plugin.cli import main
from burn_plugin.backdoorbench import sweep as S

from conftest import build_hand_record

ATTACK = "badnet_hand"
BB_DEFENSES = ("fp", "nad", "anp", "i-bau", "ft-sam", "sau")
ALL = BB_DEFENSES + ("burn",)

#: (ACC, ASR, RA) each fake defense writes into its summary CSV
NUMBERS = {"fp": (0.8111, 0.1222, 0.7333), "anp": (0.8244, 0.0355, 0.7466), "i-bau": (0.8377, 0.0488, 0.7599),
           "ft-sam": (0.8511, 0.0622, 0.7733), "sau": (0.8644, 0.0755, 0.7866), "burn": (0.8777, 0.0888, 0.7999)}
#: BackdoorBench's summary file per defense (interface.md 1.6)
SUMMARY = {"fp": "finetune_df_summary.csv", "anp": "anp_df_summary.csv", "i-bau": "i-bau_df_summary.csv",
           "ft-sam": "log/d-sam_df_summary.csv", "sau": "sau_df_summary.csv", "nad": "nad_df_summary.csv"}
BURN_WALL = 12.5

# What every fake BackdoorBench defense does first: parse BackdoorBench's arguments, leave evidence of
# what it was given and where it ran, touch np.infty (as general_plot_for_epoch does: numpy 2 lacks it).
FAKE_HEAD = r'''
import argparse, json, os, shutil, sys
NAME, FIXTURES = {name!r}, {fixtures!r}
p = argparse.ArgumentParser()
for a in ("--result_file", "--yaml_path", "--dataset", "--dataset_path", "--model", "--device", "--num_workers",
          "--pin_memory", "--amp", "--random_seed", "--index", "--epochs", "--te_epochs", "--nb_iter",
          "--print_every", "--n_rounds"):
    p.add_argument(a)
args = p.parse_args()
assert os.path.isfile(args.yaml_path), args.yaml_path
out = os.path.join("record", args.result_file, "defense", NAME)
os.makedirs(out, exist_ok=True)
import numpy as np
evidence = dict(argv=sys.argv, cwd=os.getcwd(), sys_path0=sys.path[0], infty=float(np.infty),
                index=open(args.index).read())

def summary(acc, asr, ra):
    path = os.path.join(out, {summary!r})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if NAME == "anp":  # one row, index 0
        text = ",threshold,value,test_acc,test_asr,test_ra\n0,0.2,0.2,%s,%s,%s\n" % (acc, asr, ra)
    else:
        text = (",epoch,test_acc,test_asr,test_ra\nlast,1,%s,%s,%s\nvalid_max,1,0.99,0.99,0.99\n"
                "exist_nan_value,False,False,False,False\n" % (acc, asr, ra))
    open(path, "w").write(text)

def finish(result="ok.pt"):
    json.dump(evidence, open(os.path.join(out, "fake_evidence.json"), "w"))
    shutil.copy(os.path.join(FIXTURES, result), os.path.join(out, "defense_result.pt"))
'''

FAKE_BODY = {
    "fp": "summary(*{numbers}); finish()\n",
    "anp": "summary(*{numbers}); finish()\n",
    "nad": ("print('epoch 1: loss 0.3'); print('boom: simulated failure in nad', file=sys.stderr)\n"
            "json.dump(evidence, open(os.path.join(out, 'fake_evidence.json'), 'w')); sys.exit(1)\n"),
    # I-BAU: its hard-coded device='cuda', and BackdoorBench's own torch.load of the record (no weights_only)
    "i-bau": ("import torch\n"
              "t = torch.zeros_like(torch.ones(2), device='cuda')\n"
              "evidence['zeros_like_device'] = str(t.device)\n"
              "rec = torch.load('record/' + args.result_file + '/attack_result.pt')\n"
              "evidence['record_keys'] = sorted(rec)\n"
              "summary(*{numbers}); finish()\n"),
    # FT-SAM draws its subset with choose_by_class and ignores --index (the fake utils/choose_index.py does too)
    "ft-sam": ("from utils.choose_index import choose_by_class\n"
               "evidence['chosen'] = [int(i) for i in choose_by_class(args, list(range(40)))]\n"
               "summary(*{numbers}); finish()\n"),
    # SAU: the first time an empty result with exit status 0 (a NaN run), afterwards a good one
    "sau": ("flag = os.path.join(FIXTURES, 'sau_ran_once')\n"
            "if not os.path.exists(flag):\n"
            "    open(flag, 'w').close(); finish('empty.pt'); sys.exit(0)\n"
            "summary(*{numbers}); finish()\n"),
}

# BackdoorBench's utils/choose_index.py, reduced to its behaviour (our own code): choose_index reads --index,
# choose_by_class ignores it (returns a class-balanced draw; here a recognisable sentinel)
FAKE_CHOOSE_INDEX = '''
import numpy as np

def choose_index(args, n):
    return np.loadtxt(args.index, dtype=int) if args.index is not None else np.arange(int(n * args.ratio))

def choose_by_class(args, dataset):
    return [-1, -2]
'''

FAKE_BURN = r'''
import json, os, shutil, sys
argv = sys.argv[1:]
assert argv[:2] == ["-q", "defend"], argv
folder = argv[argv.index("--attack_folder") + 1]
method = argv[argv.index("--method") + 1]
out = os.path.join(folder, "defense", method)
os.makedirs(out, exist_ok=True)
json.dump({"argv": argv}, open(os.path.join(out, "fake_evidence.json"), "w"))
open(os.path.join(out, "burn_df_summary.csv"), "w").write(
    ",test_acc,test_asr,test_ra\nlast,%s,%s,%s\nvalid_max,0.9,0.9,0.9\nexist_nan_value,False,False,False\n" % NUMBERS)
json.dump({"method": method, "wall_seconds": WALL, "data_used": "poisoned training set (no clean data)"},
          open(os.path.join(out, "run.json"), "w"))
shutil.copy(os.path.join(FIXTURES, "ok.pt"), os.path.join(out, "defense_result.pt"))
from burn_plugin.fileio import finish_run, start_run   # what `burn defend` does: this run is burn's own
start_run(out)
finish_run(out)
'''


def make_fake_bb(tmp: Path, name: str = ATTACK) -> tuple[Path, Path, object]:
    """(root, fixtures folder, hand record): a fake checkout with one mnist record."""
    root = tmp / "BB"
    fixtures = tmp / "fixtures"
    fixtures.mkdir(parents=True)
    hr = build_hand_record(root, name)
    torch.save({"model_name": hr.obj["model_name"], "num_classes": 10, "model": hr.obj["model"]}, fixtures / "ok.pt")
    torch.save({}, fixtures / "empty.pt")  # what BackdoorBench writes before raising on a NaN loss
    (root / "defense").mkdir()
    (root / "defense" / "__init__.py").write_text("")
    for d in BB_DEFENSES:
        body = FAKE_BODY[d].format(numbers=NUMBERS.get(d))
        (root / "defense" / f"{d}.py").write_text(
            FAKE_HEAD.format(name=d, fixtures=str(fixtures), summary=SUMMARY[d]) + body)
        (root / "config" / "defense" / d).mkdir(parents=True)
        (root / "config" / "defense" / d / "cifar10.yaml").write_text("device: 'cuda'\ndataset: 'cifar10'\n")
    (root / "utils").mkdir()
    (root / "utils" / "__init__.py").write_text("")
    (root / "utils" / "choose_index.py").write_text(FAKE_CHOOSE_INDEX)
    (fixtures / "fake_burn.py").write_text(
        f"NUMBERS = {NUMBERS['burn']!r}\nWALL = {BURN_WALL!r}\nFIXTURES = {str(fixtures)!r}\n" + FAKE_BURN)
    return root, fixtures, hr


def bb_hashes(root: Path) -> dict:
    """sha256 of every file of the checkout itself (outputs under record/ and data/ excluded)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and rel.parts[0] not in ("record", "data"):
            out[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def run_cli(argv) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def sweep_runs(root: Path) -> dict:
    res = {}
    for d in ALL:
        f = root / "record" / ATTACK / "defense" / d / "sweep_run.json"
        res[d] = json.loads(f.read_text()) if f.is_file() else None
    return res


def evidence(root: Path) -> dict:
    res = {}
    for d in ALL:
        f = root / "record" / ATTACK / "defense" / d / "fake_evidence.json"
        res[d] = json.loads(f.read_text()) if f.is_file() else None
    return res


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Two sweeps over the fake checkout: the first (CSV numbers only), then a resumed one (re-evaluated)."""
    tmp = tmp_path_factory.mktemp("sweep")
    root, fixtures, hr = make_fake_bb(tmp)
    before = bb_hashes(root)
    args = ["sweep", "--bb-root", str(root), "--attacks", ATTACK, "--defenses", ",".join(ALL),
            "--python", sys.executable, "--no-plots"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(S, "PLUGIN_COMMAND", [sys.executable, str(fixtures / "fake_burn.py")])
        first = run_cli(args + ["--no-reevaluate"])
        runs1, ev1 = sweep_runs(root), evidence(root)
        run_json1 = {d: (root / "record" / ATTACK / "defense" / d / "run.json") for d in ALL}
        run_json1 = {d: json.loads(p.read_text()) if p.is_file() else None for d, p in run_json1.items()}
        csv1 = pd.read_csv(root / "record" / "comparison" / "comparison.csv")
        second = run_cli(args)
        runs2, ev2 = sweep_runs(root), evidence(root)
        csv2 = pd.read_csv(root / "record" / "comparison" / "comparison.csv")
    return dict(root=root, hr=hr, before=before, after=bb_hashes(root), first=first, second=second,
                runs1=runs1, runs2=runs2, ev1=ev1, ev2=ev2, run_json1=run_json1, csv1=csv1, csv2=csv2)


# ------------------------------------------------------------------------------------------------
# the first sweep

def test_failures_do_not_stop_the_sweep_and_exit_nonzero(swept):
    rc, out, err = swept["first"]
    assert rc == 1
    status = {d: r["status"] for d, r in swept["runs1"].items()}
    assert status == {"fp": "ok", "nad": "failed", "anp": "ok", "i-bau": "ok", "ft-sam": "ok", "sau": "failed",
                      "burn": "ok"}
    nad = swept["runs1"]["nad"]
    assert nad["returncode"] == 1
    assert any("boom: simulated failure in nad" in ln for ln in nad["log_tail"])
    assert "boom: simulated failure in nad" in out  # the end of the failed run's log is shown
    # an empty defense_result.pt is a failure even with exit status 0 (BackdoorBench's NaN marker)
    sau = swept["runs1"]["sau"]
    assert sau["returncode"] == 0 and sau["result"] == "empty" and "empty" in sau["note"]
    assert "2 of 7 run(s) failed" in err


def test_commands_are_backdoorbench_s_own(swept):
    root = swept["root"]
    for d in BB_DEFENSES:
        cmd = swept["runs1"][d]["command"]
        assert cmd[:4] == [sys.executable, str(S.RUNNER), "--root", str(root)]
        script_at = cmd.index(f"defense/{d}.py")
        a = cmd[script_at + 1:]
        pairs = dict(zip(a[::2], a[1::2]))
        assert pairs["--result_file"] == ATTACK
        assert pairs["--yaml_path"] == f"./config/defense/{d}/cifar10.yaml"  # no mnist.yaml: cifar10's
        assert pairs["--dataset"] == "mnist" and pairs["--model"] == "smallresnet"  # read from the record
        assert pairs["--device"] == "cpu" and pairs["--num_workers"] == "0"
        assert pairs["--pin_memory"] == "False" and pairs["--amp"] == "False" and pairs["--random_seed"] == "0"
        assert swept["runs1"][d]["cwd"] == str(root)
        ev = swept["ev1"][d]
        assert ev["argv"] == [f"defense/{d}.py", *a]  # the script sees exactly its own arguments
        assert Path(ev["cwd"]) == root and Path(ev["sys_path0"]) == root
    burn = swept["ev1"]["burn"]["argv"]
    assert burn[:5] == ["-q", "defend", "--attack_folder", str(root / "record" / ATTACK), "--method"]
    assert "--index" not in burn  # BURN uses no clean data


def test_every_defense_gets_the_same_index_file(swept):
    root = swept["root"]
    index = root / "record" / ATTACK / "sweep" / "clean_index.txt"
    expected = sorted(random.Random(0).sample(range(40), int(40 * 0.05)))
    assert sorted(np.loadtxt(index, dtype=int, ndmin=1).tolist()) == expected
    text = index.read_text()
    for d in BB_DEFENSES:
        cmd = swept["runs1"][d]["command"]
        assert cmd[cmd.index("--index") + 1] == str(index)
        assert swept["ev1"][d]["index"] == text
        assert swept["runs1"][d]["index"]["sha256"] == hashlib.sha256(text.encode()).hexdigest()
    # FT-SAM ignores --index upstream; the runner's fix makes it use the file
    assert sorted(swept["ev1"]["ft-sam"]["chosen"]) == expected


def test_fixes_are_applied_and_recorded(swept):
    runs = swept["runs1"]
    for d in BB_DEFENSES:
        r = runs[d]
        assert {"np-infty", "torch-load", "mnist-rgb", "mnist-denorm"} <= set(r["fixes"])  # mnist record
        assert r["fixes_acted"]["np-infty"] == 1, d  # numpy 2: every fake script touched np.infty
        assert swept["ev1"][d]["infty"] == float("inf")
    assert "cuda-fallback" in runs["i-bau"]["fixes"] and "hardsigmoid" not in runs["i-bau"]["fixes"]
    assert runs["i-bau"]["fixes_acted"]["cuda-fallback"] == 1
    assert swept["ev1"]["i-bau"]["zeros_like_device"] == "cpu"
    assert runs["i-bau"]["fixes_acted"]["torch-load"] == 1  # the record has numpy arrays: allowed, nothing else
    assert "bd_train" in swept["ev1"]["i-bau"]["record_keys"]
    assert runs["ft-sam"]["fixes_acted"]["ftsam-index"] == 1
    assert runs["fp"]["fixes_acted"]["torch-load"] == 0  # recorded honestly: the fake FP never loads a file
    assert runs["burn"]["fixes"] == [] and runs["burn"]["fixes_acted"] == {}
    # the runner's own report lies beside the results
    rep = json.loads((swept["root"] / "record" / ATTACK / "defense" / "i-bau" / "sweep_fixes.json").read_text())
    assert "cuda-fallback" in rep["fixes_that_acted"] and rep["exit_status"] == 0


def test_wall_time_recorded_where_compare_reads_it(swept):
    for d in ("fp", "anp", "i-bau", "ft-sam"):
        r = swept["runs1"][d]
        assert r["wall_s"] > 0 and r["started"] <= r["ended"]
        rj = swept["run_json1"][d]
        assert rj["written_by"] == "burn sweep" and rj["wall_seconds"] == r["wall_s"]
        assert rj["data_used"].startswith("5.0% clean subset (2 samples")
    assert swept["run_json1"]["nad"] is None  # failed: no time for the table
    # BURN's own run.json (written by `burn defend`) is not replaced
    assert swept["run_json1"]["burn"]["wall_seconds"] == BURN_WALL and "written_by" not in swept["run_json1"]["burn"]
    csv = swept["csv1"].set_index("defense")
    assert csv.loc["fp", "wall_seconds"] == pytest.approx(swept["runs1"]["fp"]["wall_s"])
    assert csv.loc["burn", "wall_seconds"] == BURN_WALL


def test_final_table_has_the_swept_numbers(swept):
    _, out, _ = swept["first"]
    csv = swept["csv1"].set_index("defense")
    for d, (acc, asr, ra) in NUMBERS.items():
        if d == "sau":
            continue  # its first run failed (empty result); its numbers come in the second sweep
        assert csv.loc[d, "test_acc"] == pytest.approx(acc) and csv.loc[d, "test_asr"] == pytest.approx(asr)
        assert csv.loc[d, "test_ra"] == pytest.approx(ra)
        assert f"{100 * acc:.2f}" in out and f"{100 * asr:.2f}" in out
    assert "| attack | defense | status |" in out  # the run summary
    assert "| Attack |" in out and "BURN ACC" in out and "FP ACC" in out  # the comparison table


def test_fast_off_means_no_fast_settings(swept):
    assert all(r["fast"] is False and r["fast_settings"] == [] for r in swept["runs1"].values())


# ------------------------------------------------------------------------------------------------
# the second sweep: resumed

def test_second_sweep_skips_finished_and_reruns_failed(swept):
    rc, out, err = swept["second"]
    r1, r2 = swept["runs1"], swept["runs2"]
    for d in ("fp", "anp", "i-bau", "ft-sam", "burn"):
        assert r2[d] == r1[d], d  # untouched
        assert swept["ev2"][d] == swept["ev1"][d]
        assert f"{ATTACK} / {d}: finished before, skipped" in err
    assert r2["sau"]["status"] == "ok" and r2["sau"]["started"] >= r1["sau"]["ended"]
    assert r2["nad"]["status"] == "failed" and r2["nad"]["started"] >= r1["nad"]["ended"]
    assert rc == 1
    prev = list((swept["root"] / "record" / ATTACK / "defense" / ".sweep_previous").iterdir())
    assert sorted(p.name.split("-2")[0] for p in prev) == ["nad", "sau"]  # old folders kept, aside
    assert all((p / "sweep_run.json").is_file() for p in prev)


def test_second_sweep_reevaluates(swept):
    csv = swept["csv2"].set_index("defense")
    for d in ("fp", "anp", "i-bau", "ft-sam", "sau", "burn"):
        assert csv.loc[d, "source"] == "re-evaluated", d
        # every fake result holds the attack's own weights: the same numbers as no defense
        assert csv.loc[d, "test_acc"] == pytest.approx(csv.loc["no_defense", "test_acc"])
    assert "nad" in csv.index and csv.loc["nad", "source"] != "re-evaluated"


def test_backdoorbench_files_untouched(swept):
    assert swept["before"] == swept["after"]
    assert len(swept["before"]) >= 2 * len(BB_DEFENSES)


# ------------------------------------------------------------------------------------------------
# dry run, planning, bad input (no subprocess)

@pytest.fixture
def fake_bb(tmp_path):
    root, fixtures, hr = make_fake_bb(tmp_path)
    return root


def test_dry_run_prints_commands_and_writes_nothing(fake_bb):
    before = sorted(p for p in fake_bb.rglob("*"))
    (fake_bb / "config" / "defense" / "sau" / "mnist.yaml").write_text("dataset: mnist\n")
    rc, out, err = run_cli(["sweep", "--bb-root", str(fake_bb), "--attacks", ATTACK, "--fast", "--dry-run",
                            "--python", sys.executable])
    assert rc == 0
    lines = [ln for ln in out.splitlines() if ln.startswith("cd ")]
    assert len(lines) == len(ALL)
    index = str(fake_bb / "record" / ATTACK / "sweep" / "clean_index.txt")
    for d, ln in zip(ALL, lines):
        if d == "burn":
            assert f"-m burn_plugin -q defend --attack_folder {fake_bb / 'record' / ATTACK} --method burn" in ln
            assert ln.endswith("--rounds 5 --epochs 2 --candidates 3 --candidate_mode adaptive")
            continue
        assert f"defense/{d}.py --result_file {ATTACK}" in ln and f"--index {index}" in ln
        assert ln.endswith(" ".join(S.DEFENSES[d].fast))
        yaml = "mnist" if d == "sau" else "cifar10"  # the dataset's own YAML where the checkout has one
        assert f"--yaml_path ./config/defense/{d}/{yaml}.yaml" in ln
    assert "--n_rounds 2" in out and "--te_epochs 2" in out and "--nb_iter 50 --print_every 25" in out
    assert "fast settings" in err and "nad --te_epochs 2" in err
    after = sorted(p for p in fake_bb.rglob("*") if p.name != "mnist.yaml")
    assert after == before  # no index file, no defense folder


def test_given_index_is_used_and_checked(fake_bb, tmp_path):
    idx = tmp_path / "my_index.txt"
    idx.write_text("5\n7\n9\n")
    rc, out, _ = run_cli(["sweep", "--bb-root", str(fake_bb), "--attacks", ATTACK, "--dry-run", "--defenses",
                          "fp,sau", "--index", str(idx), "--python", sys.executable])
    assert rc == 0 and out.count(f"--index {idx}") == 2
    idx.write_text("5\n70\n")  # clean_train has 40 samples
    rc, _, err = run_cli(["sweep", "--bb-root", str(fake_bb), "--attacks", ATTACK, "--dry-run", "--defenses",
                          "fp", "--index", str(idx), "--python", sys.executable])
    assert rc == 2 and "outside 0..39" in err


@pytest.mark.parametrize("case,needle", [
    ("not_a_checkout", "does not look like a BackdoorBench checkout"),
    ("unknown_defense", "unknown defense(s) magic"),
    ("missing_attack", "attack record 'nope' not found"),
    ("missing_python", "python interpreter not found"),
    ("missing_script", "has no anp defense"),
    ("bad_ratio", "--ratio must be in (0, 1]"),
])
def test_bad_input_is_one_clear_line(fake_bb, tmp_path, case, needle):
    args = ["sweep", "--bb-root", str(fake_bb), "--attacks", ATTACK, "--dry-run", "--python", sys.executable]
    if case == "not_a_checkout":
        args[2] = str(tmp_path)
    elif case == "unknown_defense":
        args += ["--defenses", "fp,magic"]
    elif case == "missing_attack":
        args[4] = "nope"
    elif case == "missing_python":
        args[-1] = str(tmp_path / "no" / "python")
    elif case == "missing_script":
        (fake_bb / "defense" / "anp.py").unlink()
    elif case == "bad_ratio":
        args += ["--ratio", "0"]
    rc, out, err = run_cli(args)
    assert rc == 2
    errors = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and needle in errors[0], err


def test_ratio_and_index_together_are_refused(fake_bb):
    with pytest.raises(SystemExit) as exc, contextlib.redirect_stderr(io.StringIO()):
        main(["sweep", "--bb-root", str(fake_bb), "--ratio", "0.1", "--index", "x.txt"])
    assert exc.value.code == 2


def test_dataset_flag_must_agree_with_the_record(fake_bb):
    rc, _, err = run_cli(["sweep", "--bb-root", str(fake_bb), "--attacks", ATTACK, "--dry-run", "--dataset",
                          "cifar10", "--python", sys.executable])
    assert rc == 2 and "disagrees with record" in err


def test_which_defense_gets_which_fix():
    assert S.fixes_for("fp", "cifar10", "preactresnet18") == ["np-infty", "torch-load"]
    assert S.fixes_for("i-bau", "cifar10", "mobilenet_v3_large") == ["np-infty", "torch-load", "cuda-fallback",
                                                                      "hardsigmoid"]
    assert "hardsigmoid" not in S.fixes_for("i-bau", "mnist", "preactresnet18")
    assert S.fixes_for("ft-sam", "mnist", "x")[-3:] == ["ftsam-index", "mnist-rgb", "mnist-denorm"]
    assert S.fixes_for("burn", "mnist", "mobilenet_v3_large") == []


    assert S.fixes_for("fp", "mnist", "x", trusted=True)[:2] == ["np-infty", "torch-load-trusted"]


class Planted:
    """Unpickling this creates the marker folder (code from the file running)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.mkdir, (self.marker,))


EVIL_FP = """import sys, torch
torch.load("record/%s/attack_result.pt")   # as BackdoorBench's load_attack_result does
""" % "evil"


def plant_evil_record(root: Path, marker: Path) -> Path:
    """record/evil/: the hand record's files, its attack_result.pt carrying a planted object."""
    src, dst = root / "record" / ATTACK, root / "record" / "evil"
    import shutil

    shutil.copytree(src, dst)
    obj = torch.load(src / "attack_result.pt", weights_only=False)
    obj["evil"] = Planted(marker)
    torch.save(obj, dst / "attack_result.pt")
    torch.save({"dataset": "mnist"}, dst / "info.pickle")
    (root / "defense" / "fp.py").write_text(EVIL_FP)
    return dst


def test_sweep_refuses_a_record_that_would_run_code_unless_trusted(fake_bb, tmp_path):
    marker = tmp_path / "PWNED"
    evil = plant_evil_record(fake_bb, marker)
    before = sorted(p.relative_to(evil) for p in evil.rglob("*"))
    args = ["sweep", "--bb-root", str(fake_bb), "--attacks", "evil", "--defenses", "fp", "--dataset", "mnist",
            "--model", "smallresnet", "--python", sys.executable, "--no-plots"]
    for extra in ([], ["--dry-run"]):
        rc, out, err = run_cli(args + extra)
        assert rc == 2 and err.count("\n") == 1 and "--trust-record" in err and "run code" in err, err
        assert not marker.exists()
    assert sorted(p.relative_to(evil) for p in evil.rglob("*")) == before   # nothing written
    rc, out, _ = run_cli(args + ["--dry-run", "--trust-record"])   # the user vouches for it: full unpickler
    assert rc == 0 and "torch-load-trusted" in out


def test_runner_torch_load_fix_never_runs_code_from_a_record(fake_bb, tmp_path):
    marker = tmp_path / "PWNED"
    plant_evil_record(fake_bb, marker)
    report = tmp_path / "report.json"
    p = subprocess.run([sys.executable, str(S.RUNNER), "--root", str(fake_bb), "--fix", "torch-load", "--report",
                        str(report), "defense/fp.py"], capture_output=True, text=True, timeout=120)
    assert p.returncode != 0 and "UnpicklingError" in p.stderr and not marker.exists()
    assert json.loads(report.read_text())["fixes"]["torch-load"]["acted"] == 1
    # the hand record (numpy arrays only) loads under the same fix
    (fake_bb / "defense" / "fp.py").write_text(EVIL_FP.replace("evil", ATTACK))
    p = subprocess.run([sys.executable, str(S.RUNNER), "--root", str(fake_bb), "--fix", "torch-load", "defense/fp.py"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    # trusted: the full unpickler, as BackdoorBench was written for (the code runs: only for trusted records)
    p = subprocess.run([sys.executable, str(S.RUNNER), "--root", str(fake_bb), "--fix", "torch-load-trusted",
                        "defense/fp.py"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# ------------------------------------------------------------------------------------------------
# the runner on its own (fixes that need torch / torchvision, in one subprocess)

RUNNER_CHECK = r'''
import json, sys
import torch
from torchvision import transforms
import torch.nn.functional as F
from utils.aggregate_block.dataset_and_transform_generate import get_dataset_denormalization
res = {}
z = torch.randn(6, requires_grad=True)
g, = torch.autograd.grad(torch.nn.Hardsigmoid()(2 * z).sum() + (z ** 3).sum(), z, create_graph=True)
g.sum().backward()  # double backward through hardsigmoid: not implemented for the real one
res["hardsigmoid_equal"] = bool(torch.allclose(F.hardsigmoid(z.detach()), torch.clamp(z.detach() + 3, 0, 6) / 6))
norm = transforms.Normalize([0.5], [0.5])
x = torch.rand(3, 4, 4)
res["denorm_err"] = float((get_dataset_denormalization(norm)(norm(x)) - x).abs().max())
import torchvision.datasets
ds = torchvision.datasets.MNIST(sys.argv[1], train=True, download=False)
res["mnist_mode"] = ds[0][0].mode
res["mnist_class"] = type(ds).__name__
json.dump(res, open(sys.argv[2], "w"))
'''

# BackdoorBench's 1-element bug, reduced (our own code): negating the list as a whole
FAKE_DENORM = '''
from torchvision import transforms

def get_dataset_denormalization(normalization):
    mean, std = normalization.mean, normalization.std
    mean = -mean if len(mean) == 1 else [-m for m in mean]
    std = 1 / std if len(std) == 1 else [1 / s for s in std]
    return transforms.Compose([transforms.Normalize([0.0] * 3, std), transforms.Normalize(mean, [1.0] * 3)])
'''


def test_runner_fixes_that_need_torch(tmp_path):
    from synthetic import make_mnist_layout

    root = tmp_path / "BB"
    pkg = root / "utils" / "aggregate_block"
    pkg.mkdir(parents=True)
    (root / "utils" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "dataset_and_transform_generate.py").write_text(FAKE_DENORM)
    (root / "check.py").write_text(RUNNER_CHECK)
    make_mnist_layout(root / "data" / "mnist", n_train=4, n_test=2)
    report, result = tmp_path / "report.json", tmp_path / "result.json"
    p = subprocess.run([sys.executable, str(S.RUNNER), "--root", str(root), "--report", str(report),
                        "--fix", "hardsigmoid,mnist-denorm,mnist-rgb", "check.py", str(root / "data" / "mnist"),
                        str(result)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    res = json.loads(result.read_text())
    assert res == {"hardsigmoid_equal": True, "denorm_err": pytest.approx(0.0, abs=1e-6), "mnist_mode": "RGB",
                   "mnist_class": "MNIST"}
    acted = json.loads(report.read_text())["fixes"]
    assert all(acted[n]["acted"] >= 1 for n in ("hardsigmoid", "mnist-denorm", "mnist-rgb"))


def test_runner_passes_the_script_exit_status_and_refuses_unknown_fixes(tmp_path):
    (tmp_path / "s.py").write_text("import sys\nprint(sys.argv)\nsys.exit(3)\n")
    p = subprocess.run([sys.executable, str(S.RUNNER), "--root", str(tmp_path), "s.py", "--fix", "x"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 3 and "['s.py', '--fix', 'x']" in p.stdout  # options after the script are its own
    p = subprocess.run([sys.executable, str(S.RUNNER), "--fix", "magic", "s.py"], capture_output=True, text=True,
                       timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and "unknown fix(es) magic" in p.stderr


def test_runner_imports_nothing_from_the_plugin():
    src = S.RUNNER.read_text()
    assert "burn_plugin" not in src.replace("``burn_plugin``", "")
    tops = {ln.split()[1].split(".")[0] for ln in src.splitlines() if ln.startswith(("import ", "from "))}
    assert tops <= {"__future__", "functools", "importlib", "json", "os", "platform", "runpy", "sys", "time"}
