"""A new defense is one module: registered once, it is found by ``burn defend --method``, installed by
``burn register``, planned by ``burn sweep`` and listed in ``burn compare``'s table."""
from __future__ import annotations

import importlib
import json
import sys
import textwrap

import pytest

from burn_plugin.cli import main
from burn_plugin.defenses import _DEFENSES, get_defense, list_defenses

TOY = '''
"""A toy defense: scales the final layer's weights by `scale`."""
from dataclasses import dataclass

import torch

from burn_plugin.core.config import ConfigBase, need
from burn_plugin.defenses import defense


@dataclass
class ToyConfig(ConfigBase):
    label = "Toy"
    scale: float = 0.5
    random_seed: int = 0

    def validate(self) -> None:
        need(isinstance(self.scale, (int, float)) and self.scale > 0, f"scale must be > 0, got {self.scale!r}")


@defense("toy", ToyConfig, label="Toy", uses_clean_data=False, fast=("--scale", "0.9"), yaml_dir=YAML_DIR)
def run(*, record, model, config, device, evaluator, out, resume, progress, extra) -> dict:
    with torch.no_grad():
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(config.scale)
    return {"model": model, "history": [], "timings": {}, "data_used": "nothing"}
'''


@pytest.fixture
def toy(tmp_path, monkeypatch):
    yaml_dir = tmp_path / "toy_yaml"
    yaml_dir.mkdir()
    for name in ("config", "cifar10", "cifar100", "gtsrb", "tiny", "mnist"):
        (yaml_dir / f"{name}.yaml").write_text("scale: 0.25\n")
    (tmp_path / "toy_defense.py").write_text(TOY.replace("YAML_DIR", repr(str(yaml_dir))))
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("toy_defense")
    yield module
    from burn_plugin.backdoorbench import sweep

    _DEFENSES.pop("toy", None)
    sweep.DEFENSES.pop("toy", None)   # the sweep adds the plugin's defenses it sees to its own registry
    sys.modules.pop("toy_defense", None)


def _run(argv, capsys):
    rc = main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_a_toy_defense_in_one_module_is_found_everywhere(toy, trained_record, tmp_path, capsys):
    import shutil

    assert "toy" in list_defenses() and get_defense("toy").display == "Toy"
    record = tmp_path / "record" / trained_record.name      # a copy: the shared record stays as it is
    shutil.copytree(trained_record, record, ignore=shutil.ignore_patterns("defense"))
    shutil.copytree(trained_record.parents[1] / "data", tmp_path / "data")

    # burn defend --method toy: its settings are flags, its YAML the defaults
    with pytest.raises(SystemExit):
        main(["defend", "--help"])
    out = capsys.readouterr().out
    assert "burn, ft, toy, ulrl" in out and "--scale" in out
    rc, out, err = _run(["-q", "defend", "--attack_folder", str(record), "--method", "toy"], capsys)
    assert rc == 0, err
    result = record / "defense" / "toy"
    run = json.loads((result / "run.json").read_text())
    assert run["method"] == "toy" and run["config"]["scale"] == 0.25      # from the YAML (mnist.yaml)
    assert (result / "defense_result.pt").is_file() and (result / "toy_df_summary.csv").is_file()

    assert (run["label"], run["named_settings"]) == ("Toy", [])              # what a table names it by

    # burn compare: a column of its own, under its registered label
    rc, out, err = _run(["-q", "compare", str(record.parent), "--no-plots", "--out", str(tmp_path / "cmp")], capsys)
    assert rc == 0, err
    assert "| Toy ACC | Toy ASR |" in out.splitlines()[0]

    # burn register: defense/toy.py and config/defense/toy/*.yaml
    bb = tmp_path / "BB"
    for d in ("defense", "config/defense", "utils", "record"):
        (bb / d).mkdir(parents=True)
    rc, out, err = _run(["register", "--bb-root", str(bb)], capsys)
    assert rc == 0, err
    assert (bb / "defense" / "toy.py").is_file()
    assert (bb / "config" / "defense" / "toy" / "cifar10.yaml").read_text() == "scale: 0.25\n"
    assert "defense/toy.py" in out

    # burn sweep --dry-run: planned as a plugin defense with its --fast settings
    shutil.copytree(trained_record, bb / "record" / trained_record.name, ignore=shutil.ignore_patterns("defense"))
    rc, out, err = _run(["sweep", "--bb-root", str(bb), "--defenses", "toy", "--fast", "--dry-run"], capsys)
    assert rc == 0, err
    line = next(ln for ln in out.splitlines() if "--method toy" in ln)
    assert line.endswith("--scale 0.9") and "-m burn_plugin" in line


def test_the_entry_script_runs_the_defense_it_is_named_after(toy):
    from burn_plugin.backdoorbench.defense import Burn, defense_class

    cls = defense_class("toy")
    assert cls is not Burn and issubclass(cls, Burn) and (cls.name, cls.label) == ("toy", "Toy")
    assert cls.config_class() is toy.ToyConfig and defense_class("toy") is cls
    assert defense_class("burn") is Burn
    text = textwrap.dedent(open(__import__("burn_plugin.backdoorbench.register", fromlist=["x"]).bundled_script())
                           .read())
    assert "main(method=method)" in text and "os.path.basename(__file__)" in text
