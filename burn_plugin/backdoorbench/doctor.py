"""``burn doctor``: is a BackdoorBench checkout ready to run BURN (and its own defenses)?

:func:`diagnose` returns one :class:`Check` per item; :func:`report` turns them into plain lines
``<status> <what>: <detail>`` and an exit code (0 when everything *required* is there, else 1).

Required: the checkout shape, BURN's installed files (``burn register``), the Python packages BURN
needs, and the clean data of every dataset some record under ``record/`` was made on. Reported but
not required: the other datasets, BackdoorBench's own extra packages (needed by its attack scripts,
interface.md 6.3), CUDA, records without ``attack_result.pt``, version notes (interface.md 10).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from ..bench.datasets import get_spec, known_dataset, list_datasets
from ..fileio import load_settings_file
from .register import check_bb_root, installed_state

# import name -> pip name
BURN_PACKAGES = {"torch": "torch", "torchvision": "torchvision", "numpy": "numpy", "yaml": "pyyaml",
                 "pandas": "pandas", "PIL": "pillow", "scipy": "scipy", "tqdm": "tqdm"}
BB_PACKAGES = {"kornia": "kornia", "cv2": "opencv-python-headless", "pytorch_wavelets": "pytorch_wavelets",
               "imageio": "imageio", "matplotlib": "matplotlib", "sklearn": "scikit-learn"}


@dataclass
class Check:
    status: str    # ok / missing / warn / info
    what: str
    detail: str = ""
    required: bool = False

    def line(self) -> str:
        tag = "MISSING" if self.failed else self.status
        return f"{tag:8} {self.what}" + (f": {self.detail}" if self.detail else "")

    @property
    def failed(self) -> bool:
        return self.required and self.status == "missing"


def _data_layouts() -> dict[str, tuple]:
    """BackdoorBench's on-disk layouts under ``<root>/data/`` (interface.md 3.2), from the dataset registry:
    name -> alternative file sets."""
    specs = [get_spec(n) for n in list_datasets()]
    return {s.bb_name: s.bb_files for s in specs if s.bb_name and s.bb_files}


def _data_check(root: Path, name: str, file_sets: tuple, needed: bool) -> Check:
    base = root / "data" / name
    for files in file_sets:
        if all((base / f).is_dir() if f.endswith("/") else (base / f).is_file() for f in files):
            detail = f"data/{name}/ ({files[0].split('/')[0]}/...)"
            if name == "tiny" and (base / "tiny-imagenet-200/val/images").is_dir():
                return Check("warn", f"data {name}", detail + "; val/ is flat (val/images + val_annotations.txt): "
                             "burn reads it, BackdoorBench's loader needs per-class folders", needed)
            return Check("ok", f"data {name}", detail)
    want = ", ".join(f"data/{name}/{f}" for f in file_sets[0][:2]) + ", ..."
    why = "needed by a record below" if needed else "only needed for records on this dataset"
    return Check("missing", f"data {name}", f"expected {want} ({why})", needed)


def _record_dataset(folder: Path) -> str | None:
    info = folder / "info.pickle"
    try:
        ds = load_settings_file(info).get("dataset") if info.is_file() else None
    except Exception:  # noqa: BLE001 - an unreadable info.pickle is reported as "dataset unknown"
        return None
    return ds if known_dataset(ds) else None   # a record's name forms a path only once it is checked


def diagnose(bb_root: str | os.PathLike) -> list[Check]:
    root = check_bb_root(bb_root)
    checks = [Check("ok", "BackdoorBench checkout", str(root))]
    for path, state in installed_state(root):
        checks.append({
            "current": Check("ok", path, "installed by burn register, current"),
            "outdated": Check("warn", path, "installed by an older burn_plugin; run burn register to update"),
            "modified": Check("warn", path, "changed since burn register installed it"),
            "foreign": Check("warn", path, "present but not written by burn register"),
            "missing": Check("missing", path, "not installed; run burn register --bb-root " + str(root),
                             required=path.startswith("defense/") or path.endswith("/config.yaml")),
        }[state])
    records = sorted(p for p in (root / "record").iterdir() if p.is_dir()) if (root / "record").is_dir() else []
    used = {}
    for rec in records:
        if not (rec / "attack_result.pt").is_file():
            checks.append(Check("warn", f"record {rec.name}", "no attack_result.pt (an unfinished attack?)"))
            continue
        ds = _record_dataset(rec)
        defenses = sorted(p.name for p in (rec / "defense").iterdir() if p.is_dir() and not p.name.startswith(".")) \
            if (rec / "defense").is_dir() else []
        checks.append(Check("ok", f"record {rec.name}", f"attack_result.pt, dataset {ds or 'unknown'}, defenses: "
                            f"{', '.join(defenses) or 'none yet'}"))
        if ds:
            used.setdefault(ds, []).append(rec.name)
    if not records:
        checks.append(Check("info", "records", "none under record/ yet (run an attack first)"))
    layouts = _data_layouts()
    for name, file_sets in layouts.items():
        checks.append(_data_check(root, name, file_sets, name in used))
    for name in sorted(set(used) - set(layouts)):
        checks.append(Check("info", f"data {name}", f"used by {', '.join(used[name])}; not a BackdoorBench "
                            "dataset, not checked"))
    for packages, needed_by, required in ((BURN_PACKAGES, "BURN", True),
                                          (BB_PACKAGES, "BackdoorBench's own attacks/defenses, not by BURN", False)):
        for mod, pip in packages.items():
            found = importlib.util.find_spec(mod) is not None
            checks.append(Check("ok" if found else "missing", f"python {mod}",
                                _version(pip) if found else f"pip install {pip} (needed by {needed_by})", required))
    checks += _notes()
    return checks


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "installed"


def _notes() -> list[Check]:
    out = []
    try:
        import torch

        if torch.cuda.is_available():
            out.append(Check("ok", "cuda", f"{torch.cuda.device_count()} device(s)"))
        else:
            out.append(Check("info", "cuda", "not available; pass --device cpu (every YAML says cuda)"))
        major, minor = (int(x) for x in torch.__version__.split(".")[:2])
        if (major, minor) >= (2, 6):
            out.append(Check("info", "torch", f"{torch.__version__}: BackdoorBench's own load_attack_result fails "
                             "(weights_only); BURN uses its own loader"))
    except Exception:  # noqa: BLE001 - torch missing is reported above
        pass
    try:
        import numpy

        if int(numpy.__version__.split(".")[0]) >= 2:
            out.append(Check("info", "numpy", f"{numpy.__version__}: BackdoorBench's sau/i-bau/fp/anp crash on "
                             "np.infty at their first plot; BURN is unaffected"))
    except Exception:  # noqa: BLE001
        pass
    return out


def report(checks: list[Check]) -> tuple[list[str], int]:
    lines = [c.line() for c in checks]
    failed = [c for c in checks if c.failed]
    lines.append(f"doctor: {len(failed)} required item(s) missing: {', '.join(c.what for c in failed)}" if failed
                 else "doctor: everything BURN needs is in place")
    return lines, 1 if failed else 0
