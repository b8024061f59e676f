"""The benchmark scripts run end to end on a tiny hand-built record (seconds, peers optional)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod        # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_stratified_sample_and_agreement():
    bs = _load("boundary_speed")
    poison = torch.zeros(100, dtype=torch.bool)
    poison[:10] = True
    idx = bs.stratified_sample(poison, 20, 0.25, seed=1)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20 and int(poison[idx].sum()) == 5
    assert torch.equal(idx, bs.stratified_sample(poison, 20, 0.25, seed=1))
    ref = {"distance": torch.tensor([1.0, 2.0]), "adv_label": torch.tensor([1, 2]), "converged": torch.tensor([True, False])}
    other = {"distance": torch.tensor([1.1, 2.0]), "adv_label": torch.tensor([1, 3]), "converged": torch.tensor([True, True])}
    a = bs.agreement(ref, other)
    assert a["same_adv_label"] == 0.5 and a["same_adv_label_both_converged"] == 1.0 and a["both_converged"] == 0.5
    assert abs(a["median_rel_diff_both_converged"] - 0.1) < 1e-6


def test_counter_counts_rows():
    bs = _load("boundary_speed")
    model = bs.Counted(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3)))
    x = torch.rand(5, 3, 2, 2, requires_grad=True)
    out = model(x)
    torch.autograd.grad(out[:, 0].sum(), x, retain_graph=True)
    torch.autograd.grad(out[:, 1].sum(), x)
    assert (model.forward_rows, model.forward_calls, model.backward_rows, model.backward_calls) == (5, 1, 10, 2)


def test_boundary_speed_runs(hand_record, tmp_path, capsys):
    bs = _load("boundary_speed")
    out = tmp_path / "bs.json"
    rc = bs.main(["--record", str(hand_record.folder), "-n", "8", "--ta-n", "2", "--repeat", "1",
                  "--batch-size", "4", "--threads", "1", "--sdf", "6", "--json", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    for key in ("throughput", "speed-up", "agreement with ours", "each setting's effect",
                "agreement of the candidate modes and model variants"):
        assert key in text
    d = json.loads(out.read_text())
    assert d["runs"]["ours box_aware=False"]["n"] == 8
    assert "ours superdeepfool it6 vs default" in d["agreement"]
    sdf, df = d["runs"]["ours superdeepfool it6"], d["runs"]["ours box_aware=True"]
    assert max(sdf["iterations"]) <= 6
    # SDF starts from DeepFool's crossing and only shortens it (both converged)
    assert all(s <= f * (1 + 1e-5) for s, f, cs, cf in zip(sdf["distance"], df["distance"], sdf["converged"],
                                                          df["converged"]) if cs and cf)
    assert d["agreement"]["ours batched box_aware=False"]["median_rel_diff"] == pytest.approx(0.0, abs=1e-6)


def test_end_to_end_record_and_tiny(hand_record, capsys):
    e2e = _load("burn_end_to_end")
    before = sorted(p.name for p in hand_record.folder.iterdir())
    assert e2e.main(["--record", str(hand_record.folder), "--rounds", "1", "--epochs", "1", "--train-subset", "0",
                     "--threads", "1", "--set", "k_p0=5", "--set", "k_pT=5", "--set", "k_c0=10",
                     "--set", "k_cT=10"]) == 0
    assert sorted(p.name for p in hand_record.folder.iterdir()) == before  # the record is never written to
    assert e2e.main(["--synthetic-tiny", "--tiny-n", "300", "--tiny-slice", "4", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "boundary_s" in text and "peak RSS" in text and "predict over 300" in text


def test_oracle_distance_diagnostic(hand_record, tmp_path, capsys):
    od = _load("oracle_distance")
    before = sorted(p.name for p in hand_record.folder.iterdir())
    out = tmp_path / "oracle.json"
    # 40 training samples, 6 poisoned: relabel the top 10% (4 samples), keep the bottom 20% (8) as clean
    assert od.main(["--record", str(hand_record.folder), "--real", "--json", str(out),
                    "--set", "rounds=1", "--set", "epochs=1", "--set", "k_p0=10", "--set", "k_pT=10",
                    "--set", "k_c0=20", "--set", "k_cT=20", "--set", "max_iter=5"]) == 0
    assert sorted(p.name for p in hand_record.folder.iterdir()) == before   # nothing written into the record
    d = json.loads(out.read_text())
    # raised distances put exactly the poisoned samples in phase 1's relabelled set
    assert d["oracle"][0]["relabelled_poison_share"] == 1.0
    assert d["oracle"][1]["clean_set_poison"] == 0   # BD ranks every poisoned sample top, so none is kept as clean
    assert [r["round"] for r in d["oracle"]] == [0, 1] and [r["round"] for r in d["real"]] == [0, 1]
    assert "oracle distances" in capsys.readouterr().out
    # evaluated after the last round only (a 60,000-image run's usual setting): rows without test metrics
    assert od.main(["--record", str(hand_record.folder), "--json", str(out), "--set", "eval_every_round=false",
                    "--set", "rounds=2", "--set", "epochs=1", "--set", "max_iter=5", "--set", "k_p0=10",
                    "--set", "k_pT=10", "--set", "k_c0=20", "--set", "k_cT=20"]) == 0
    rows = json.loads(out.read_text())["oracle"]
    assert [r["test_acc"] is None for r in rows] == [True, True, False] and 0 <= rows[-1]["test_asr"] <= 1


def test_detector_benchmark_precision_and_auroc_say_none_without_such_poison():
    dt = _load("detectors")
    score = torch.tensor([0.9, 0.8, 0.1, 0.2])
    flagged = torch.tensor([True, False, False, True])
    assert dt.precision_at(score, flagged, 2) == 0.5 and dt.auroc(score, flagged) == 0.75   # 3 of 4 pairs
    none = torch.zeros(4, dtype=torch.bool)       # a clean-label record has no label-flipped poison
    assert dt.precision_at(score, none, 2) is None and dt.auroc(score, none) is None


def test_detectors_benchmark(hand_record, tmp_path, capsys):
    from burn_plugin.core.detectors import list_detectors

    dt = _load("detectors")
    out, md = tmp_path / "det.json", tmp_path / "det.md"
    settings = ["--set", "rounds=1", "--set", "epochs=1", "--set", "k_p0=10", "--set", "k_pT=10",
                "--set", "k_c0=20", "--set", "k_cT=20", "--set", "max_iter=5"]
    assert dt.main(["--record", str(hand_record.folder), "--defend", "--boundary-variants", "12", "--sdf-max-iter", "3",
                    "--json", str(out), "--markdown", str(md)] + settings) == 0
    (r,) = json.loads(out.read_text())
    assert [d["detector"] for d in r["detectors"]] == list_detectors() and "oracle" not in list_detectors()
    for d in r["detectors"]:
        assert 0 <= d["auroc_poison"] <= 1 and "test_asr" in d["after"]
        folder = "burn" if d["detector"] == "boundary" else f"burn_{d['detector']}"
        run = json.loads((hand_record.folder / "defense" / folder / "run.json").read_text())
        assert run["config"]["detector"] == d["detector"]
    # the oracle ranks exactly the 6 poisoned samples first: phase 1 (top 4) relabels poison only
    oracle = json.loads((hand_record.folder / "defense" / "burn_oracle" / "run.json").read_text())
    assert oracle["detection"]["auroc_detector_poison"] == 1.0
    assert oracle["detection"]["rounds"][0]["poison_set"]["precision"] == 1.0
    assert [v["variant"].split()[0] for v in r["boundary_variants"]] == ["box_aware=True", "box_aware=False",
                                                                         "superdeepfool"]
    # each variant ran with the setting its name says, whatever the default (the default's row once ran twice)
    assert [(v["box_aware"], v["boundary_method"]) for v in r["boundary_variants"]] == [
        (True, "deepfool"), (False, "deepfool"), (True, "superdeepfool")]
    assert "| oracle (diagnostic) |" in md.read_text()
    assert md.read_text().count("| box_aware=") == 2 and "| superdeepfool max_iter=3 | 12 |" in md.read_text()
    # the tables again from the JSON, twice over: nothing measured, every row of both copies
    again = tmp_path / "again.md"
    assert dt.main(["--from-json", str(out), "--from-json", str(out), "--markdown", str(again)]) == 0
    assert again.read_text().count("| superdeepfool") == 2
    assert again.read_text().count("| oracle (diagnostic) |") == 2
    # --runs: the same "after BURN" column read back from the runs --defend left, matched by settings
    read = tmp_path / "read.md"
    assert dt.main(["--from-json", str(out), "--runs", "--markdown", str(read)] + settings) == 0
    defended = [ln.split(" | ")[4] for ln in md.read_text().splitlines() if ln.startswith(f"| {hand_record.folder.name} |")]
    assert [ln.split(" | ")[4] for ln in read.read_text().splitlines()
            if ln.startswith(f"| {hand_record.folder.name} |")][:len(r["detectors"]) + 1] == defended[:len(r["detectors"]) + 1]
    assert "| - | - |" not in read.read_text().split("| oracle")[0]
    # other settings than the runs': no run matches, nothing is filled in
    other = tmp_path / "other.md"
    assert dt.main(["--from-json", str(out), "--runs", "--markdown", str(other)] + settings[:-2] + ["--set", "max_iter=6"]) == 0
    assert other.read_text().count("| - | - |") == len(r["detectors"])
    with pytest.raises(Exception, match="give one of them"):
        dt.main(["--record", str(hand_record.folder), "--runs", "--defend"])


def test_reproduce_plan_commands_parse_and_done_steps_are_skipped(tmp_path, capsys):
    """Every command of the rebuild recipe parses with today's CLI (a renamed flag fails here, not after
    hours of attacks), names a registered attack and detector, and a step whose result exists is done."""
    from burn_plugin.bench.attacks import list_attacks
    from burn_plugin.cli import build_parser
    from burn_plugin.core.detectors import list_detectors

    rr = _load("reproduce_results")
    det = _load("detectors")
    root = tmp_path / "record"
    steps = rr.plan(root, list(rr.RECORDS), ["spectral", "scan"])
    parser = build_parser()
    finals = [rr.Step("-", "compare", rr.compare_argv(root), root),
              rr.Step("-", "compare", rr.compare_argv(root, tuple(rr.RUNS_20K)), root),
              rr.Step("-", "table", rr.detector_table_argv(root, list(rr.RECORDS)), root)]
    steps_20k = rr.plan_20k(root, list(rr.RECORDS_20K))
    assert len(steps_20k) == len(rr.RECORDS_20K) * (1 + len(rr.RUNS_20K))
    for s in steps + steps_20k + finals:
        if s.argv[0] == "burn":
            args = parser.parse_args(list(s.argv[1:]))
            if args.command == "attack":
                assert args.attack in list_attacks()
            if getattr(args, "detector", None):
                assert args.detector in list_detectors()
        else:
            assert Path(s.argv[1]).name == "detectors.py"
            det.parse_args(list(s.argv[2:]))
    assert [s.name for s in steps if s.record == "badnet_fm"] == [
        "attack", "burn", "ft", "ulrl", "ulrl_on_burn", "detectors", "burn_spectral", "burn_scan"]
    assert not any(s.is_done() for s in steps)

    attack = next(s for s in steps if s.record == "sig_fm" and s.name == "attack")
    burn = next(s for s in steps if s.record == "sig_fm" and s.name == "burn")
    attack.done_when.parent.mkdir(parents=True)
    attack.done_when.write_bytes(b"")
    burn.done_when.parent.mkdir(parents=True)
    burn.done_when.write_text("{}")
    assert attack.is_done() and not burn.is_done()          # run.json without its summary: not finished
    (burn.done_when.parent / "burn_df_summary.csv").write_text("")
    assert burn.is_done()
    assert rr.main(["--root", str(root), "--records", "sig_fm", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("done  burn -q attack") and out[1].startswith("done  burn -q defend")
    assert out[2].startswith("todo  ") and out[-2].startswith("then  burn -q compare")
    assert out[-1].startswith("then  ") and "detectors.py --from-json" in out[-1] and "--runs" in out[-1]
    assert rr.main(["--records", "nope_fm", "--dry-run"]) == 2


def test_reproduce_lanes_write_whole_lines(tmp_path, monkeypatch):
    """Lanes are threads sharing stdout: each progress line must reach it in one write (``print`` makes
    two, the text and the newline, and two lanes' lines ran together in a real rebuild's log)."""
    rr = _load("reproduce_results")
    writes = []

    class Recorder:
        def write(self, text):
            writes.append(text)

        def flush(self):
            pass

    monkeypatch.setattr(sys, "stdout", Recorder())
    done = tmp_path / "done"
    done.write_bytes(b"")
    steps = [rr.Step("r", f"s{i}", ("true",), done) for i in range(3)]
    assert rr.run_chain(steps, tmp_path, threads=1) == []
    assert len(writes) == 3 and all(w.startswith("[skip] r s") and w.endswith("exists\n") for w in writes)


@pytest.mark.parametrize("script, says", [
    (None, "no `burn` command on PATH"),
    ("echo \"ModuleNotFoundError: No module named 'burn_plugin'\" >&2; exit 1", "No module named 'burn_plugin'"),
    ("echo 'burn-plugin 0.1.0 (/elsewhere/burn_plugin)'", "/elsewhere/burn_plugin, not this checkout"),
])
def test_reproduce_refuses_to_start_when_burn_is_not_this_checkout(tmp_path, monkeypatch, capsys, script, says):
    """A `burn` command that is missing, broken, or another clone's stops the recipe before any step
    (exit 2, one line with the fix) instead of failing every record or building them with other code."""
    rr = _load("reproduce_results")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if script is not None:
        fake = bin_dir / "burn"
        fake.write_text("#!/bin/sh\n" + script + "\n")
        fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    root = tmp_path / "record"
    assert rr.main(["--root", str(root), "--records", "sig_fm"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0] and "pip install -e" in err[0]
    assert not root.exists()                      # nothing started, nothing written


def test_burn_version_names_the_package_it_runs(capsys):
    import burn_plugin
    from burn_plugin.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == f"burn-plugin {burn_plugin.__version__} ({Path(burn_plugin.__file__).resolve().parent})"
