"""The package as a user gets it: the sdist and a wheel built from it, installed without -e into a fresh virtual
environment and run from outside the checkout.

An editable install (how the tests usually run) imports burn_plugin from the checkout itself, so a subpackage
left out of the wheel goes unnoticed there; ``burn_plugin.defenses`` once was, and ``burn defend``, ``burn
register`` and BackdoorBench's ``defense/burn.py`` failed on import for everyone who installed the wheel.
"""
from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run(cmd: list, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (f"{' '.join(map(str, cmd))} (in {cwd}) exited {proc.returncode}\n"
                                  f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def snapshot_checkout(dest: Path) -> Path:
    """The checkout's files (tracked, and untracked ones git does not ignore) copied to dest. Building there
    leaves the checkout untouched: a build writes build/ and burn_plugin.egg-info/ into the folder it builds,
    and several test runs may share one checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, check=True, timeout=60).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"needs a git checkout to know which files a build would see ({exc})")
    for rel in filter(None, out.decode().split("\0")):
        src = ROOT / rel
        if src.is_file():  # a tracked file deleted in the work tree is still listed
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


def source_version(src: Path) -> str:
    """``burn_plugin.__version__`` as written in the built source (setup.cfg reads the same assignment)."""
    tree = ast.parse((src / "burn_plugin" / "__init__.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("burn_plugin/__init__.py assigns no __version__")


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(source snapshot, sdist, wheel). ``python -m build`` with neither --sdist nor --wheel builds the sdist and
    then the wheel *from the sdist*, as pip does when it installs from an sdist, so the wheel's contents also
    prove the sdist complete. --no-isolation builds with this Python's setuptools instead of installing
    setuptools into a throwaway environment on every run (which needs the network or a package index and takes
    longer); pyproject.toml's build requirements are still checked against what is installed."""
    src = snapshot_checkout(tmp_path_factory.mktemp("source"))
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, src], cwd=src)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return src, sdists[0], wheels[0]


def test_twine_check_passes_on_the_sdist_and_the_wheel(dists):
    _, sdist, wheel = dists
    proc = run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel], cwd=sdist.parent)
    assert proc.stdout.count("PASSED") == 2, proc.stdout


def test_the_wheel_holds_every_subpackage_module_and_data_file(dists):
    src, _, wheel = dists
    version = source_version(src)
    assert wheel.name == f"burn_plugin-{version}-py3-none-any.whl"
    names = set(zipfile.ZipFile(wheel).namelist())
    pkg = src / "burn_plugin"
    packages = sorted(p.parent for p in pkg.rglob("__init__.py") if "__pycache__" not in p.parts)
    assert pkg / "defenses" in packages  # the one the hand-written package list left out
    missing = [".".join(p.relative_to(src).parts) for p in packages
               if f"{p.relative_to(src).as_posix()}/__init__.py" not in names]
    assert not missing, f"subpackages not in {wheel.name}: {missing}"
    modules = [p.relative_to(src).as_posix() for p in pkg.rglob("*.py") if "__pycache__" not in p.parts]
    assert not [m for m in modules if m not in names], f"modules not in {wheel.name}"
    # the two packages mapped from folders outside burn_plugin/ (setup.cfg's package_dir)
    yamls = sorted((src / "bb_configs").glob("*/*.yaml"))
    scripts = sorted((src / "defense").glob("*.py"))
    assert yamls and scripts
    expected = ([f"burn_plugin/bb_configs/{p.relative_to(src / 'bb_configs').as_posix()}" for p in yamls]
                + [f"burn_plugin/bb_scripts/{p.name}" for p in scripts])
    assert not [e for e in expected if e not in names], f"data files not in {wheel.name}"
    entry_points = zipfile.ZipFile(wheel).read(f"burn_plugin-{version}.dist-info/entry_points.txt").decode()
    assert "burn = burn_plugin.cli:main" in entry_points


def venv_env() -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP", "VIRTUAL_ENV", "BACKDOORBENCH_ROOT")}
    env.update(PYTHONNOUSERSITE="1", PIP_DISABLE_PIP_VERSION_CHECK="1", PIP_NO_INPUT="1")
    return env


def test_the_installed_wheel_runs_outside_the_checkout(dists, tmp_path):
    src, _, wheel = dists
    version = source_version(src)
    env = venv_env()
    # The venv reuses the torch/torchvision (and every other dependency) this Python already has rather than
    # installing them again (several GB for a CUDA build of torch) on every run. It does not use
    # --system-site-packages: that would run this Python's site-packages .pth files in the venv, among them the
    # editable install's, whose import hook serves any burn_plugin submodule the venv's copy lacks from the
    # checkout; the missing burn_plugin.defenses would be imported from the checkout, and this test would pass.
    # A .pth file that lists those site-packages folders puts them on the venv's sys.path after its own
    # site-packages and runs none of their .pth files. No pip in the venv (--without-pip): the venv's own
    # pip and setuptools would shadow this Python's, and torch needs the newer setuptools installed here.
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=tmp_path, env=env)
    py = venv / "bin" / "python"
    purelib = Path(run([py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path,
                       env=env).stdout.strip()).resolve()
    system_sites = [p for p in sys.path if Path(p).name in ("site-packages", "dist-packages") and Path(p).is_dir()]
    (purelib / "_burn_test_base_site.pth").write_text("".join(f"{p}\n" for p in system_sites))
    # Not --no-deps: pip resolves every dependency and finds it installed. --no-index: a dependency that is not
    # installed fails the test instead of being downloaded.
    run([py, "-m", "pip", "install", "--no-index", wheel], cwd=tmp_path, env=env)

    elsewhere = tmp_path / "elsewhere"  # a cwd outside the checkout, so nothing imports from it
    elsewhere.mkdir()
    subpackages = sorted(".".join(p.parent.relative_to(src).parts) for p in (src / "burn_plugin").rglob("__init__.py")
                         if "__pycache__" not in p.parts)
    check = ("import importlib, sys\n"
             "assert not [f for f in sys.meta_path if 'editable' in type(f).__module__ + repr(f)], sys.meta_path\n"
             f"for name in {subpackages!r}:\n"
             "    print(importlib.import_module(name).__file__)\n")
    files = run([py, "-c", check], cwd=elsewhere, env=env).stdout.split()
    assert len(files) == len(subpackages)
    assert all(Path(f).resolve().is_relative_to(purelib) for f in files), files

    burn = venv / "bin" / "burn"
    run([burn, "--help"], cwd=elsewhere, env=env)
    line = run([burn, "--version"], cwd=elsewhere, env=env).stdout.strip()
    assert line.startswith(f"burn-plugin {version} ("), line
    assert Path(line.split(" (", 1)[1].rstrip(")")).is_relative_to(purelib), line
    run([burn, "defend", "--help"], cwd=elsewhere, env=env)
    run([py, "-m", "burn_plugin", "--help"], cwd=elsewhere, env=env)

    # the least a folder must hold to pass register's BackdoorBench check (register.check_bb_root)
    bb = tmp_path / "BackdoorBench"
    for d in ("defense", "config/defense", "utils"):
        (bb / d).mkdir(parents=True)
    run([burn, "register", "--bb-root", bb], cwd=elsewhere, env=env)
    script = bb / "defense" / "burn.py"
    assert script.read_bytes() == (purelib / "burn_plugin" / "bb_scripts" / "entry.py").read_bytes()
    assert (bb / "config" / "defense" / "burn" / "config.yaml").is_file()
    proc = run([py, "defense/burn.py", "--help"], cwd=bb, env=env)  # BackdoorBench runs it from its root
    assert "--attack_folder" in proc.stdout
