"""The results pages are data: ``burn results`` renders them from the committed ``comparison.csv``, and
a page that differs from its rendering fails here."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd

from test_cli_errors import run

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "docs" / "results"


def test_committed_pages_equal_their_rendering(capsys):
    rc, _, err = run(capsys, "results", "--check", "--results-dir", RESULTS, "--readme", REPO / "README.md")
    assert rc == 0, err


def test_a_changed_number_is_caught_and_rendered_again(capsys, tmp_path):
    res = tmp_path / "results"
    shutil.copytree(RESULTS, res)
    readme = tmp_path / "README.md"
    shutil.copy(REPO / "README.md", readme)
    df = pd.read_csv(res / "comparison.csv")
    row = (df["attack"] == "sig_fm") & (df["defense"] == "burn[box-aware]")
    assert row.sum() == 1
    df.loc[row, "test_asr"] = 0.0123   # BURN now removes SIG's backdoor (ASR 1.23 %, ACC kept)
    df.to_csv(res / "comparison.csv", index=False)
    rc, _, err = run(capsys, "results", "--check", "--results-dir", res, "--readme", readme)
    assert rc == 1 and str(res / "comparison.md") in err and str(readme) in err
    rc, out, err = run(capsys, "results", "--results-dir", res, "--readme", readme)
    assert rc == 0, err
    text = readme.read_text()
    assert "**80.71 / 1.23 / 35.58**" in text and "on 1 of 9 (sig_fm) records of 60,000 training images" in text
    assert (res / "summary.png").stat().st_size > 10_000
    assert run(capsys, "results", "--check", "--results-dir", res, "--readme", readme)[0] == 0


def test_a_readme_without_the_markers_is_one_line(capsys, tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# nothing here\n")
    rc, _, err = run(capsys, "results", "--check", "--results-dir", RESULTS, "--readme", readme)
    assert rc == 2 and err.startswith("error: ") and "verdict:begin" in err


def test_the_readme_is_a_front_door():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_screen = "\n".join(lines[:60])
    assert "burn demo" in first_screen and "python -m pytest -q" in first_screen
    assert "burn register" in first_screen and "defense/burn.py" in first_screen


def test_a_changed_detector_number_is_caught(capsys, tmp_path):
    import json

    res = tmp_path / "results"
    shutil.copytree(RESULTS, res)
    path = res / "detectors_20k" / "badnet_infected.json"
    data = json.loads(path.read_text())
    scan = next(d for d in data[0]["detectors"] if d["detector"] == "scan")
    scan["auroc_poison"] = 0.4321
    path.write_text(json.dumps(data))
    rc, _, err = run(capsys, "results", "--check", "--results-dir", res, "--no-readme")
    assert rc == 1 and str(res / "detectors_20k" / "detectors.md") in err
    assert run(capsys, "results", "--results-dir", res, "--no-readme", "--no-plots")[0] == 0
    assert "| scan | 0.432 / " in (res / "detectors_20k" / "detectors.md").read_text()


def test_detector_matrix_marks_each_models_best():
    from burn_plugin.report.detectors import detector_matrix

    def rec(model, aurocs):
        return {"record": "/x/rec/badnet", "n_train": 100, "n_poison": 10, "detection_model": model,
                "detection_model_seconds": 3.0, "detectors": [
                    {"detector": d, "auroc_poison": a, "auroc_flipped": None, "phase1_precision": 0.5} for d, a in aurocs]}
    text = detector_matrix([rec("sam", [("scan", 0.9), ("flare", 0.95)]), rec("infected", [("scan", 0.99), ("flare", 0.1)])])
    assert "| detector | infected | sam |" in text                       # the paper's model first
    assert "| scan | **0.990** /   -   (0.500) | 0.900 /   -   (0.500) |" in text
    assert "| flare | 0.100 /   -   (0.500) | **0.950** /   -   (0.500) |" in text
