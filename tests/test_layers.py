"""DESIGN.md's layers, checked by import-linter (the contracts are in setup.cfg)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _lint(cwd: Path, pythonpath: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(pythonpath))
    code = "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())"
    return subprocess.run([sys.executable, "-c", code, "--no-cache"], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


def test_the_package_keeps_its_layer_contracts():
    res = _lint(ROOT, ROOT)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "3 kept, 0 broken" in res.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("core/boundary.py", "from ..bench import records", ("layers point downward", "core is framework-free")),
    ("defenses/burn.py", "from ..report import compare", ("layers point downward",)),
    ("backdoorbench/sweep.py", "from ..report import compare", ("layers point downward",)),  # siblings
    ("core/scores.py", "from .. import fileio", ("core is framework-free",)),
    ("fileio.py", "from .bench import datasets", ("the shared modules",)),
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "burn_plugin", tmp_path / "burn_plugin",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "setup.cfg", tmp_path / "setup.cfg")
    f = tmp_path / "burn_plugin" / module
    f.write_text(f.read_text() + f"\n{line}  # an upward import\n")
    res = _lint(tmp_path, tmp_path)
    assert res.returncode != 0
    verdicts = [ln for ln in res.stdout.splitlines() if ln.endswith((" KEPT", " BROKEN"))]
    assert [ln for ln in verdicts if ln.endswith("BROKEN")] == [ln for ln in verdicts if ln.startswith(broken)], \
        res.stdout[-3000:]      # the contracts named, and no other
